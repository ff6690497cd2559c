"""Fitting: the published point fit (Huber + BFGS) and the Bayesian fit (NUTS).

``fit_map`` reproduces the point estimate of published Chinchilla refits: a
Huber loss on log-loss residuals, minimised from a spread of starting points.
``fit`` samples the posterior with NUTS, initialised at that point estimate.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import scipy.stats
from numpyro.distributions.transforms import biject_to
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import log_likelihood, potential_energy

from .data import DataError, DataWarning, ScalingData, as_data
from .laws import Law, get_law
from .likelihoods import Likelihood, get_likelihood
from .model import OBSERVED, ModelData, Spec, build_model, make_spec, model_data, to_natural
from .results import FitResult
from .sampling import Draws, NUTSConfig, compile_ahead, sample_lanes

__all__ = ["fit", "fit_map", "MapResult"]

_JITTER = 0.1
_NU_INIT = 4.0
_MAP_ITERATIONS = 100


class MapResult(NamedTuple):
    """A point fit.

    Attributes:
        params: natural parameters by name (plus ``sigma``, a robust scale of
            the log residuals).
        objective: the minimised loss (sum of Huber or squared log residuals).
        converged: whether the best start reported convergence.
        z: the law parameters in sampler coordinates (used to start NUTS).
    """

    params: dict[str, float]
    objective: float
    converged: bool
    z: np.ndarray


def _precision(precision: str) -> bool:
    """True for float64."""
    if precision == "auto":
        return jax.default_backend() == "cpu"
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'auto', 'float64' or 'float32', got {precision!r}")
    return precision == "float64"


def _check_fit_inputs(data: ScalingData, spec: Spec) -> None:
    """Raise on data the law cannot be fitted to; warn on data that looks mislabelled."""
    for c in spec.law.covariates:
        data.covariate(c)
    if data.n < len(spec.latents):
        raise DataError(
            f"{data.n} runs are too few to fit {spec.law.name!r}, which has {len(spec.latents)} parameters"
            f" {list(spec.latents)}"
        )
    if data.N is not None and data.D is not None and np.all(data.D < data.N):
        warnings.warn(
            "tokens D are fewer than parameters N in every run: are the params and tokens columns swapped?",
            DataWarning,
            stacklevel=3,
        )
    falling = spec.law.builtin and spec.law.name != "power"
    if falling and data.n >= 5:
        x = "C" if data.C is not None else spec.law.covariates[0]
        trend = scipy.stats.spearmanr(data.covariate(x), data.loss).statistic
        if trend > 0.5:
            warnings.warn(
                f"column {data.target!r} increases with {x} (rank correlation {trend:.2f}), but {spec.law.name!r}"
                " models a loss that falls with scale: is it an accuracy or a reward? Fit 1 - accuracy,"
                " or use the 'power' law",
                DataWarning,
                stacklevel=3,
            )


def _start_points(spec: Spec, md: ModelData, num_starts: int, key: jax.Array) -> jax.Array:
    """Starting coordinates: a reference point and uniform(-2, 2) offsets around it."""
    y_bar = jnp.sum(jnp.where(md.mask, md.log_y, 0.0)) / jnp.sum(md.mask)
    ref = []
    for name in spec.law.params:
        if name in spec.law.centred:
            ref.append(y_bar)
            continue
        prior = spec.priors[name]
        mean = jnp.asarray(prior.mean, dtype=y_bar.dtype)
        u = biject_to(prior.support).inv(mean)
        ref.append(jnp.where(jnp.isfinite(u), u, 0.0))
    ref_z = jnp.stack(ref)
    offsets = jax.random.uniform(key, (num_starts - 1, ref_z.shape[0]), ref_z.dtype, -2.0, 2.0)
    return jnp.concatenate([ref_z[None], ref_z + offsets])


def _map_point(spec: Spec, md: ModelData, key: jax.Array, loss: str, delta: float, num_starts: int):  # noqa: ANN202
    """Minimise the point-fit loss from ``num_starts`` starts; pure JAX, vmappable over ``md``.

    Each start runs Levenberg-Marquardt on iteratively reweighted least squares
    (Huber weights ``min(1, delta/|r|)``), accepting only steps that lower the
    objective, for a fixed number of iterations.
    """

    def residuals(z: jax.Array) -> jax.Array:
        params, _ = to_natural(spec, z, md.centre)
        return jnp.where(md.mask, spec.law.log_mean(params, md.log_x) - md.log_y, 0.0)

    def objective(r: jax.Array) -> jax.Array:
        if loss == "squared":
            return 0.5 * jnp.sum(r**2)
        a = jnp.abs(r)
        return jnp.sum(jnp.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta)))

    def solve(z0: jax.Array):  # noqa: ANN202
        def step(carry: tuple, _: None) -> tuple:
            z, lam, f, change = carry
            r, jac = residuals(z), jax.jacfwd(residuals)(z)
            w = jnp.minimum(1.0, delta / jnp.maximum(jnp.abs(r), 1e-300)) if loss == "huber" else jnp.ones_like(r)
            jtw = jac.T * w
            hess, grad = jtw @ jac, jtw @ r
            damping = lam * (jnp.diag(hess) + 1e-12)
            z_new = z - jnp.linalg.solve(hess + jnp.diag(damping), grad)
            f_new = objective(residuals(z_new))
            better = jnp.isfinite(f_new) & (f_new < f)
            return (
                jnp.where(better, z_new, z),
                jnp.where(better, lam * 0.3, lam * 10.0),
                jnp.where(better, f_new, f),
                jnp.where(better, (f - f_new) / (jnp.abs(f) + 1e-30), 0.0),
            ), None

        f0 = objective(residuals(z0))
        init = (z0, jnp.asarray(1e-2, z0.dtype), jnp.where(jnp.isfinite(f0), f0, jnp.inf), jnp.asarray(1.0, z0.dtype))
        (z, lam, f, change), _ = jax.lax.scan(step, init, None, length=_MAP_ITERATIONS)
        return z, f, jnp.isfinite(f) & ((change < 1e-8) | (lam > 1e8))

    z_all, f_all, ok_all = jax.vmap(solve)(_start_points(spec, md, num_starts, key))
    best = jnp.argmin(f_all)
    z = z_all[best]
    r = residuals(z)
    n = jnp.sum(md.mask)
    abs_r = jnp.where(md.mask, jnp.abs(r), jnp.inf)
    # Robust noise scale: 1.4826 x median absolute residual, floored to avoid log(0).
    sigma = jnp.maximum(1.4826 * jnp.sort(abs_r)[(n - 1) // 2], 1e-4)
    return z, f_all[best], ok_all[best], sigma


_map_point_jit = jax.jit(_map_point, static_argnums=(0, 3, 4, 5))


def fit_map(
    data: ScalingData | Any,
    law: str | Law = "chinchilla",
    *,
    loss: str = "huber",
    delta: float = 1e-3,
    num_starts: int = 64,
    seed: int = 0,
    precision: str = "auto",
    **columns: Any,
) -> MapResult:
    """Point fit by Huber (or squared) loss on log-loss residuals, as in published refits.

    Args:
        data: :class:`~bayescale.data.ScalingData`, a DataFrame or a CSV path.
        law: law name or :class:`~bayescale.laws.Law`.
        loss: ``"huber"`` (Hoffmann et al. 2022, with ``delta``) or ``"squared"``.
        delta: Huber threshold on log residuals.
        num_starts: BFGS starts (a reference point plus random offsets).
        seed: seed of the random starts.
        precision: ``"auto"`` (float64 on CPU), ``"float64"`` or ``"float32"``.
        **columns: column options for loading a table (see ``ScalingData.from_table``).

    Returns:
        :class:`MapResult` with natural parameters.
    """
    if loss not in ("huber", "squared"):
        raise ValueError(f"loss must be 'huber' or 'squared', got {loss!r}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")
    if num_starts < 1:
        raise ValueError(f"num_starts must be >= 1, got {num_starts!r}")
    data = as_data(data, **columns)
    spec = make_spec(get_law(law), get_likelihood("normal"))
    _check_fit_inputs(data, spec)
    with jax.enable_x64(_precision(precision)):
        md = model_data(data, spec.law)
        z, value, ok, sigma = _map_point_jit(spec, md, jax.random.PRNGKey(seed), loss, delta, num_starts)
        params, _ = to_natural(spec, z, md.centre)
    out = {k: float(v) for k, v in params.items()}
    out["sigma"] = float(sigma)
    return MapResult(params=out, objective=float(value), converged=bool(ok), z=np.asarray(z))


@functools.partial(jax.jit, static_argnums=(0, 3))
def initial_points(spec: Spec, md: ModelData, key: jax.Array, num_chains: int) -> jax.Array:
    """Per-chain starting coordinates ``(num_chains, k)``: the Huber point fit, inside the priors, plus jitter.

    The point fit ignores the priors. Where the data pull a parameter against a
    bounded prior (E on [1.5, 2.2], say) it drives the unconstrained coordinate to
    thousands, where the prior's Jacobian is flat and chains never move; so every
    latent except the centred amplitudes starts inside its prior's central 98%.
    """
    map_key, jitter_key = jax.random.split(key)
    z_law, _, _, sigma = _map_point(spec, md, map_key, "huber", 1e-3, 32)
    params, _ = to_natural(spec, z_law, md.centre)
    start = {**params, "sigma": sigma, "nu": jnp.asarray(_NU_INIT, sigma.dtype)}
    bounds = _start_bounds(spec)
    z0 = []
    for i, name in enumerate(spec.latents):
        if name in spec.law.centred:
            z0.append(z_law[i])
            continue
        lo, hi = bounds[name]
        z0.append(biject_to(spec.priors[name].support).inv(jnp.clip(start[name], lo, hi)).astype(sigma.dtype))
    z0 = jnp.stack(z0)
    return z0 + _JITTER * jax.random.normal(jitter_key, (num_chains, z0.shape[0]), z0.dtype)


@functools.lru_cache(maxsize=256)
def _start_bounds(spec: Spec) -> dict[str, tuple[float, float]]:
    """Central 98% of each non-centred latent's prior: quantiles of 4096 fixed draws (any prior works),
    computed once per model, eagerly, so they add nothing to the compiled start."""
    bounds = {}
    with jax.ensure_compile_time_eval():
        for name in spec.latents:
            if name not in spec.law.centred:
                draws = np.asarray(spec.priors[name].sample(jax.random.PRNGKey(0), (4096,)), dtype=float)
                lo, hi = np.quantile(draws, [0.01, 0.99])
                bounds[name] = (float(lo), float(hi))
    return bounds


@functools.lru_cache(maxsize=64)
def potential_fn(spec: Spec):  # noqa: ANN201
    """``potential(z, data) -> -log density`` of ``spec``'s model, pure JAX (one per model).

    A value that is not finite becomes ``+inf`` (a rejected proposal). Far out, a
    term can overflow before the density does (a centred amplitude's Jacobian
    ``X_c / alpha`` past the float range while ``X_c`` is not), giving ``-inf``:
    NUTS would accept that point and never leave it (seen in 5 of 800 kaplan_d and
    kaplan_c calibration fits, one chain each, step size adapted down to 1e-308).
    """
    model = build_model(spec)

    def potential(z: jax.Array, md: ModelData) -> jax.Array:
        value = potential_energy(model, (md,), {}, {"z": z})
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    return potential


@functools.partial(jax.jit, static_argnums=0)
def _pointwise(spec: Spec, flat: dict[str, jax.Array], md: ModelData, key: jax.Array):  # noqa: ANN202
    """Natural parameters, posterior predictive and pointwise log-likelihood for every draw."""
    model = build_model(spec)
    sites = list(spec.latents) + [OBSERVED]
    pred = Predictive(model, posterior_samples=flat, return_sites=sites, parallel=True)(key, md._replace(log_y=None))
    return pred, log_likelihood(model, flat, md, parallel=True)[OBSERVED]


def make_idata(spec: Spec, data: ScalingData, md: ModelData, draws: Draws, key: jax.Array) -> az.InferenceData:
    """Build InferenceData from the draws of one dataset's chains (leading axis = chain).

    ``md`` may be padded; only the first ``data.n`` runs are kept.
    """
    chains, samples, k = draws.z.shape
    n = data.n
    flat = {"z": jnp.asarray(draws.z.reshape(chains * samples, k), dtype=md.log_y.dtype)}
    pred, loglik = _pointwise(spec, flat, md, key)
    shape = lambda a: np.asarray(a).reshape(chains, samples, *np.shape(a)[1:])  # noqa: E731
    constant = {"loss": data.loss}
    constant.update({c: getattr(data, c) for c in data.available()})
    if data.flops_per_token is not None:
        constant["M"] = data.flops_per_token
    if data.group is not None:
        constant["group"] = data.group.astype(str)
    return az.from_dict(
        posterior={name: shape(pred[name]) for name in spec.latents},
        posterior_predictive={OBSERVED: shape(pred[OBSERVED])[..., :n]},
        log_likelihood={OBSERVED: shape(loglik)[..., :n]},
        sample_stats={
            "diverging": draws.diverging,
            "n_steps": draws.num_steps,
            "acceptance_rate": draws.accept_prob,
            "lp": -draws.potential_energy,
            "step_size": np.broadcast_to(draws.step_size[:, None], draws.diverging.shape),
        },
        observed_data={OBSERVED: np.log(data.loss)},
        constant_data=constant,
        coords={"run": np.arange(n)},
        dims={OBSERVED: ["run"], **{name: ["run"] for name in constant}},
    )


def check_sampler_args(num_warmup: int, num_samples: int, num_chains: int, seed: int = 0) -> None:
    """Raise ``ValueError`` naming the argument when a sampler size or the seed is invalid."""
    sizes = (("num_warmup", num_warmup, 0), ("num_samples", num_samples, 1), ("num_chains", num_chains, 1), ("seed", seed, 0))
    for name, value, least in sizes:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def sample_numpyro(
    model: Callable[..., None],
    args: tuple,
    config: NUTSConfig,
    num_chains: int,
    seed: int,
    progress: bool,
    group: tuple[str, Sequence[Any]],
) -> az.InferenceData:
    """NUTS on a plain NumPyro model (vectorised chains, float64), as InferenceData.

    For models outside the functional sampler (iso-FLOP parabolas, hierarchical
    fits). Build ``args`` under ``jax.enable_x64(True)``. Sites with one value
    per entry of ``group = (dim, labels)`` get that dimension and coordinate.
    """
    kernel = NUTS(model, target_accept_prob=config.target_accept_prob, max_tree_depth=config.max_tree_depth,
                  dense_mass=config.dense_mass)
    mcmc = MCMC(kernel, num_warmup=config.num_warmup, num_samples=config.num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress)
    dim, labels = group
    with jax.enable_x64(True):
        mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("num_steps",))
        per_group = [s for s, v in mcmc.get_samples().items() if v.shape[1:] == (len(labels),)]
        return az.from_numpyro(mcmc, coords={dim: labels}, dims={s: [dim] for s in per_group})


def fit(
    data: ScalingData | Any,
    law: str | Law = "chinchilla",
    likelihood: str | Likelihood = "student_t",
    priors: Mapping[str, dist.Distribution] | None = None,
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    progress: bool = False,
    dense_mass: bool = True,
    target_accept_prob: float = 0.95,
    max_tree_depth: int = 10,
    strategy: str = "auto",
    precision: str = "auto",
    **columns: Any,
) -> FitResult:
    """Bayesian fit of a scaling law with NUTS.

    Args:
        data: :class:`~bayescale.data.ScalingData`, a DataFrame or a CSV path.
        law: law name (see ``bs.laws.list_laws()``) or a :class:`~bayescale.laws.Law`.
        likelihood: ``"student_t"`` (default, nu=4), ``"normal"``, or a
            :class:`~bayescale.likelihoods.Likelihood`.
        priors: overrides of the default priors, by natural parameter name
            (also ``"sigma"``, and ``"nu"`` when learned).
        num_warmup: adaptation iterations per chain.
        num_samples: kept draws per chain.
        num_chains: independent chains.
        seed: PRNG seed; the same seed gives identical draws.
        progress: show a progress bar.
        dense_mass: adapt a dense mass matrix (default; the parameters of
            additive laws are strongly correlated and a diagonal one needs about
            six times more leapfrog steps).
        target_accept_prob: NUTS target acceptance (default 0.95: on datasets of tens
            of runs, 0.8 left divergences in most Chinchilla fits; on 240 runs 0.95
            costs about 20% more time than 0.8, see benchmarks/RESULTS.md).
        max_tree_depth: NUTS maximum tree depth.
        strategy: how chains run: ``"auto"``, ``"vmap"`` or ``"loop"`` (see
            :mod:`bayescale.sampling`).
        precision: ``"auto"`` (float64 on CPU, float32 on accelerators),
            ``"float64"`` or ``"float32"``.
        **columns: column options for loading a table (``params=``, ``tokens=``,
            ``compute=``, ``loss=``, ``flops_per_token=``...).

    Returns:
        :class:`~bayescale.results.FitResult`. A :class:`~bayescale.results.ConvergenceWarning`
        is emitted when R-hat > 1.01, bulk ESS < 400 or any transition diverged.
    """
    check_sampler_args(num_warmup, num_samples, num_chains, seed)
    data = as_data(data, **columns)
    spec = make_spec(get_law(law), get_likelihood(likelihood), priors)
    _check_fit_inputs(data, spec)
    config = NUTSConfig(num_warmup, num_samples, target_accept_prob, max_tree_depth, dense_mass)
    init_key, sample_key, predictive_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    x64 = _precision(precision)
    with jax.enable_x64(x64):
        md = model_data(data, spec.law)
        lanes = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (num_chains, *a.shape)), md)
        keys = jax.random.split(sample_key, num_chains)
        potential = potential_fn(spec)
        k = len(spec.latents)
        z_shape = jax.ShapeDtypeStruct((num_chains, k), md.log_y.dtype)
        flat_shape = {"z": jax.ShapeDtypeStruct((num_chains * num_samples, k), md.log_y.dtype)}

        def compile_rest() -> None:  # overlaps compilation with the point fit (2+ cores)
            with jax.enable_x64(x64):
                compile_ahead(potential, z_shape, lanes, keys, config, strategy=strategy, progress=progress)
                _pointwise.lower(spec, flat_shape, md, predictive_key).compile()

        with ThreadPoolExecutor(max_workers=1) as pool:
            compiled = pool.submit(compile_rest)
            inits = initial_points(spec, md, init_key, num_chains)
            compiled.result()
        draws = sample_lanes(
            potential, inits, lanes, keys, config, strategy=strategy, progress=progress, desc=f"fit {spec.law.name}"
        )
        idata = make_idata(spec, data, md, draws, predictive_key)
    result = FitResult(idata=idata, spec=spec, data=data, config=config, seed=seed)
    result.warn_if_unconverged()
    return result

