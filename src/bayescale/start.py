"""Starting points: the published point fit (Huber + Levenberg-Marquardt) and where chains begin.

``fit_map`` reproduces the point estimate of published Chinchilla refits: a
Huber loss on log-loss residuals, minimised from a spread of starting points.
:func:`initial_points` starts the chains of a flat fit at that point estimate,
moved inside the priors; :func:`prior_points` starts the chains of any other
model (hierarchical, iso-FLOP) uniformly in (-2, 2) in unconstrained space, as
NumPyro's ``init_to_uniform`` does.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import initialize_model

from .data import ScalingData, as_data
from .laws import Law, get_law
from .likelihoods import get_likelihood
from .model import Layout, ModelData, Spec, check_data, make_spec, model_data, to_natural
from .sampling import SamplerSettings

__all__ = ["fit_map", "MapResult", "initial_points", "start_program", "start_bounds", "prior_points"]

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

    def summary(self) -> pd.DataFrame:
        """The point estimates, one row per parameter (column ``estimate``; natural units, loss in nats)."""
        return pd.DataFrame({"estimate": self.params}).rename_axis("parameter")


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
    check_data(data, spec)
    with jax.enable_x64(SamplerSettings(precision=precision).x64):
        md = model_data(data, spec.law)
        z, value, ok, sigma = _map_point_jit(spec, md, jax.random.PRNGKey(seed), loss, delta, num_starts)
        params, _ = to_natural(spec, z, md.centre)
    out = {k: float(v) for k, v in params.items()}
    out["sigma"] = float(sigma)
    return MapResult(params=out, objective=float(value), converged=bool(ok), z=np.asarray(z))


def initial_points(spec: Spec, md: ModelData, key: jax.Array, num_chains: int) -> jax.Array:
    """Per-chain starting coordinates ``(num_chains, k)``: the Huber point fit, inside the priors, plus jitter.

    The point fit ignores the priors. Where the data pull a parameter against a
    bounded prior (E on [1.5, 2.2], say) it drives the unconstrained coordinate to
    thousands, where the prior's Jacobian is flat and chains never move; so every
    latent except the centred amplitudes starts inside its prior's central 98%.
    One compiled program per model, padded size and chain count (vmappable over ``md`` and ``key``).
    """
    return start_program(spec, md, key, num_chains, start_bounds(spec))


@functools.partial(jax.jit, static_argnums=(0, 3))
def start_program(spec: Spec, md: ModelData, key: jax.Array, num_chains: int, bounds: jax.Array) -> jax.Array:
    """:func:`initial_points` with the priors' central 98% given, ``bounds`` of :func:`start_bounds`."""
    map_key, jitter_key = jax.random.split(key)
    z_law, _, _, sigma = _map_point(spec, md, map_key, "huber", 1e-3, 32)
    params, _ = to_natural(spec, z_law, md.centre)
    start = {**params, "sigma": sigma, "nu": jnp.asarray(_NU_INIT, sigma.dtype)}
    z0 = []
    for i, name in enumerate(spec.latents):
        if name in spec.law.centred:
            z0.append(z_law[i])
            continue
        lo, hi = bounds[i, 0], bounds[i, 1]
        z0.append(biject_to(spec.priors[name].support).inv(jnp.clip(start[name], lo, hi)).astype(sigma.dtype))
    z0 = jnp.stack(z0)
    return z0 + _JITTER * jax.random.normal(jitter_key, (num_chains, z0.shape[0]), z0.dtype)


@functools.lru_cache(maxsize=256)
def start_bounds(spec: Spec) -> np.ndarray:
    """The 1% and 99% quantiles of each latent's prior, ``(len(spec.latents), 2)`` (NaN for centred
    amplitudes, which start at the point fit): once per model, in one small program, compiled ahead and
    called directly, so that it runs also while a caller traces :func:`initial_points` (``jax.jit``, ``jax.vmap``)."""
    bounds = np.asarray(_prior_quantiles.lower(spec).compile()(), dtype=float)
    bounds.flags.writeable = False
    return bounds


@functools.partial(jax.jit, static_argnums=0)
def _prior_quantiles(spec: Spec) -> jax.Array:
    """Exact where the distribution has an inverse CDF, else from 4096 fixed draws (any prior works)."""
    levels = jnp.array([0.01, 0.99])
    out = []
    for name in spec.latents:
        prior = spec.priors[name]
        if name in spec.law.centred:
            out.append(jnp.full(2, jnp.nan))
            continue
        try:
            out.append(prior.icdf(levels))
        except (NotImplementedError, ImportError):  # NumPyro needs TensorFlow Probability for some inverses
            out.append(jnp.quantile(prior.sample(jax.random.PRNGKey(0), (4096,)), levels))
    return jnp.stack(out)


def prior_points(model: Any, layout: Layout, data: Any, key: jax.Array, num_chains: int) -> np.ndarray:
    """Per-chain starting vectors ``(num_chains, k)`` of a NumPyro model, uniform in (-2, 2) unconstrained.

    Each chain's point has a finite potential and gradient (NumPyro retries until so). One compiled
    program per model, data shape and chain count (``model`` hashable by value, as for ``sample_model``).

    Raises:
        RuntimeError: no valid starting point found for some chain (the model's density is not finite
            anywhere NumPyro looked).
    """
    z, valid = _prior_points(model, layout, data, key, num_chains)
    if not np.asarray(valid).all():
        raise RuntimeError(f"cannot find a valid starting point for {type(model).__name__}: its potential or "
                           "gradient is not finite at 100 points drawn uniformly in (-2, 2) unconstrained")
    return np.asarray(z)


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _prior_points(model: Any, layout: Layout, data: Any, key: jax.Array, num_chains: int):  # noqa: ANN202
    info = initialize_model(
        jax.random.split(key, num_chains), model, model_args=(data,), init_strategy=init_to_uniform
    )
    values, energy, grad = info.param_info
    finite = [jnp.isfinite(g).reshape(num_chains, -1).all(axis=1) for g in jax.tree_util.tree_leaves(grad)]
    valid = jnp.isfinite(energy) & jnp.stack(finite).all(axis=0)
    return jnp.concatenate([values[name].reshape(num_chains, -1) for name, _ in layout], axis=1), valid

