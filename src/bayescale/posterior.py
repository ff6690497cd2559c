"""Posteriors: InferenceData built in one place, the result contract, and exact save/load.

Every result of bayescale (:class:`FitResult` of one dataset, a member of a batch
or of a hierarchical fit, the hierarchical and iso-FLOP results themselves)
derives from :class:`Posterior` and so honours one contract:

- ``idata``: ``arviz.InferenceData`` with ``posterior``, ``sample_stats``,
  ``log_likelihood`` and ``posterior_predictive`` of the observed ``log_loss``,
  ``observed_data`` and ``constant_data`` (the runs: N, D, C, loss);
- ``draws()``, ``summary()``, ``diagnostics`` (a :class:`Diagnostics`);
- ``predict_draws()`` / ``predict()`` of the loss at new points;
- ``save(path)`` and :func:`load` give back an equal result.

:func:`build_idata` is the one place that turns sampler draws of a NumPyro model
into InferenceData.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from .data import COVARIATES, DataError, ScalingData, check_positive, fill_covariates
from .laws import Law, get_law
from .likelihoods import Likelihood, draw_noise
from .model import (
    OBSERVED, Layout, ModelData, Spec, bucket_size, build_model, make_spec, prior_from_json, prior_to_json, unflatten,
)
from .sampling import Draws, SamplerSettings
from .store import atomic_write

__all__ = [
    "Posterior",
    "FitResult",
    "Diagnostics",
    "ConvergenceWarning",
    "build_idata",
    "fit_idata",
    "lower_fit_idata",
    "load",
    "spec_to_json",
    "spec_from_json",
    "LEVEL",
    "RHAT_MAX",
    "ESS_MIN",
    "MISFIT",
    "STRUCTURAL_METHOD",
    "reach",
    "structural_deviation",
    "shock_draws",
    "misfit_of",
    "with_misfit",
    "data_top",
    "distance",
]

LEVEL = 0.9
"""Default credible level of intervals."""
RHAT_MAX = 1.01
"""Split R-hat above this is flagged."""
ESS_MIN = 400
"""Bulk effective sample size below this is flagged."""

_FORMAT_VERSION = 2

POINTWISE_DTYPE = np.float32
"""Storage type of the per-run groups (log_likelihood, posterior_predictive) of every result: they scale
with draws x runs, and float32 halves their memory and files, far inside the precision LOO needs."""
POINTWISE_ELEMENTS = 2**22
"""Draws x runs computed per call of the pointwise program (about 1 GB of intermediates at most)."""
DRAW_BLOCK = 1024
"""Draws per call of the pointwise program (fewer when draws x runs would pass :data:`POINTWISE_ELEMENTS`):
the last block is padded, so every draw count of a model and shape runs one compiled program."""

MISFIT = "misfit_scale"
"""Posterior variable of the structural-error scale (see :mod:`bayescale.extrapolation`)."""
STRUCTURAL_METHOD = "tau*z*sqrt(d); tau from the record, mixed over the refits' parameter spread; one-chain refits"
"""How the structural error is learned and applied, kept in a batch's manifest: resuming a planning-mode batch
refits the groups an older method made (before 2026-12-02 the manifest held ``true``)."""


class ConvergenceWarning(UserWarning):
    """The sampler did not converge: high R-hat, low ESS or divergences."""


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Convergence diagnostics of one fit.

    Attributes:
        table: per parameter ``r_hat``, ``ess_bulk``, ``ess_tail``.
        divergences: number of divergent post-warmup transitions.
        num_draws: post-warmup draws over all chains.
        mean_steps: mean leapfrog steps per iteration.
        problems: human-readable problems; empty when the fit looks converged.
    """

    table: pd.DataFrame
    divergences: int
    num_draws: int
    mean_steps: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """No R-hat above 1.01, no bulk ESS below 400 and no divergence."""
        return not self.problems

    @classmethod
    def combine(cls, parts: Mapping[str, Diagnostics]) -> Diagnostics:
        """Diagnostics of several fits as one: table indexed by (group, parameter), problems named by group."""
        if not parts:
            raise ValueError("no diagnostics to combine")
        return cls(
            table=pd.concat({name: d.table for name, d in parts.items()}, names=["group", "parameter"]),
            divergences=sum(d.divergences for d in parts.values()),
            num_draws=sum(d.num_draws for d in parts.values()),
            mean_steps=float(np.mean([d.mean_steps for d in parts.values()])),
            problems=tuple(f"{name}: {p}" for name, d in parts.items() for p in d.problems),
        )

    @property
    def max_r_hat(self) -> float:
        """Largest split R-hat over parameters."""
        return float(self.table["r_hat"].max())

    @property
    def min_ess_bulk(self) -> float:
        """Smallest bulk ESS over parameters."""
        return float(self.table["ess_bulk"].min())


def diagnose(idata: az.InferenceData, names: tuple[str, ...]) -> Diagnostics:
    """Compute :class:`Diagnostics` from the posterior and sample stats of ``idata``."""
    table = az.summary(idata, var_names=list(names), kind="diagnostics")[["r_hat", "ess_bulk", "ess_tail"]]
    stats = idata.sample_stats
    divergences = int(stats["diverging"].sum())
    problems = []
    rhat = table["r_hat"]
    if stats.sizes["chain"] < 2:
        problems.append("only one chain: R-hat cannot be computed; use num_chains >= 2")
    elif (rhat > RHAT_MAX).any() or rhat.isna().any():
        bad = rhat[(rhat > RHAT_MAX) | rhat.isna()]
        problems.append(f"R-hat > {RHAT_MAX} for " + ", ".join(f"{k} ({v:.3f})" for k, v in bad.items()))
    ess = table["ess_bulk"]
    if (ess < ESS_MIN).any() or ess.isna().any():
        bad = ess[(ess < ESS_MIN) | ess.isna()]
        problems.append(f"bulk ESS < {ESS_MIN} for " + ", ".join(f"{k} ({v:.0f})" for k, v in bad.items()))
    if divergences:
        problems.append(f"{divergences} divergent transitions (refit with target_accept_prob=0.99 or more runs)")
    return Diagnostics(
        table=table,
        divergences=divergences,
        num_draws=int(stats.sizes["chain"] * stats.sizes["draw"]),
        mean_steps=float(stats["n_steps"].mean()),
        problems=tuple(problems),
    )


def warn_unconverged(diagnostics: Diagnostics, subject: str, stacklevel: int = 2) -> None:
    """Emit a :class:`ConvergenceWarning` "``subject`` may not have converged: ..." when checks failed.

    ``stacklevel`` counts from the caller of this function, as for ``warnings.warn``.
    """
    if not diagnostics.ok:
        warnings.warn(
            f"{subject} may not have converged: " + "; ".join(diagnostics.problems),
            ConvergenceWarning,
            stacklevel=stacklevel + 1,
        )


def reach(log_x: Mapping[str, Any], top: Mapping[str, Any], xp: Any = jnp) -> Any:
    """E-folds beyond the runs whose largest log covariates are ``top``: the norm over the covariates of
    ``max(0, log x - top)`` (any array shape; ``xp`` is ``jax.numpy`` inside programs, or ``numpy``)."""
    excess = [xp.maximum(0.0, xp.asarray(log_x[c]) - top[c]) for c in top]
    return xp.sqrt(sum(xp.square(e) for e in excess))


def structural_deviation(shock: Any, log_x: Mapping[str, Any], top: Mapping[str, Any]) -> jax.Array:
    """A draw's structural error at ``log_x``: ``shock·sqrt(d)`` at ``d`` e-folds beyond the runs (:func:`reach`),
    the random walk whose variance ``tau^2·d`` the scale is learned under (pure JAX; ``shock`` broadcasts
    against the points' shape)."""
    return shock * jnp.sqrt(reach(log_x, top))


def misfit_of(idata: az.InferenceData, name: str = MISFIT) -> np.ndarray | None:
    """The structural error's scale ``tau`` per draw (chains concatenated), or ``None`` when ``idata`` has none
    (``name``: its posterior variable)."""
    if name not in idata.posterior:
        return None
    return idata.posterior[name].values.reshape(-1)


def with_misfit(result: Any, tau: np.ndarray, name: str = MISFIT) -> Any:
    """``result`` (a result dataclass holding ``idata``: a law's fit, a curve fit) with ``tau`` ``(chains, draws)``
    as its structural error's scale (posterior variable ``name``, default :data:`MISFIT`); ``idata`` is copied,
    not changed."""
    idata = result.idata.copy()
    idata.posterior[name] = (("chain", "draw"), tau)
    return dataclasses.replace(result, idata=idata)


def shock_draws(tau: np.ndarray, seed: int) -> np.ndarray:
    """``tau·z`` with ``z ~ Normal(0, 1)`` per draw of the structural error's scale ``tau``, seeded by ``seed``:
    each draw's deviation from its mean curve at one e-fold beyond the data (:func:`structural_deviation`)."""
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 1), tau.shape, jnp.float64)
    return tau * np.asarray(z)


def _pad_points(values: np.ndarray) -> np.ndarray:
    """``values`` with the last axis (points) padded to its shape bucket by repeating the last point, so the
    compiled predictive serves tables of nearby sizes (results are sliced back)."""
    points = values.shape[-1]
    extra = bucket_size(points) - points
    return np.concatenate([values, np.repeat(values[..., -1:], extra, axis=-1)], axis=-1) if extra else values


@functools.partial(jax.jit, static_argnums=0)
def _log_mean(law: Law, params: Mapping[str, Any], log_x: Mapping[str, Any], shock: Any,
              top: Mapping[str, Any]) -> jax.Array:
    """Mean curve of log-loss per draw plus the structural error ``shock·sqrt(reach)``, ``(draws, points)``."""
    per_draw = {c: 0 if jnp.ndim(v) == 2 else None for c, v in log_x.items()}
    loc = jax.vmap(law.log_mean, in_axes=(0, per_draw))(params, log_x)
    return loc + structural_deviation(shock[:, None], log_x, top)


def data_top(law: Law, data: ScalingData) -> dict[str, float]:
    """The largest log value of each of the law's covariates over the runs of ``data``."""
    return {c: float(np.log(data.covariate(c)).max()) for c in law.covariates}


def distance(law: Law, data: ScalingData, log_x: Mapping[str, Any]) -> np.ndarray:
    """E-folds beyond the runs of ``data`` (:func:`reach` from their largest covariates), in NumPy on the host
    (eager JAX would compile a program per operation and shape)."""
    return reach({c: np.asarray(v, dtype=float) for c, v in log_x.items()}, data_top(law, data), np)


def _interval_columns(level: float) -> tuple[str, str]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    lo = (1 - level) / 2
    return f"{100 * lo:g}%", f"{100 * (1 - lo):g}%"


def describe_draws(draws: Mapping[str, np.ndarray], level: float = LEVEL) -> pd.DataFrame:
    """Mean, sd, median and equal-tailed interval at ``level`` of each flat array of draws."""
    lo_name, hi_name = _interval_columns(level)
    rows = {}
    for name, values in draws.items():
        v = np.asarray(values, dtype=float).reshape(-1)
        lo, med, hi = np.quantile(v, [(1 - level) / 2, 0.5, (1 + level) / 2])
        rows[name] = {"mean": v.mean(), "sd": v.std(ddof=1), "median": med, lo_name: lo, hi_name: hi}
    return pd.DataFrame.from_dict(rows, orient="index")


def table_of_draws(draws: Mapping[str, np.ndarray], index: pd.Index, level: float = LEVEL) -> pd.DataFrame:
    """Median and interval of draws ``(n, len(index))`` per quantity, one row per index entry, grouped columns."""
    parts = []
    for name, values in draws.items():
        rows = [describe_draws({name: values[:, j]}, level).iloc[0] for j in range(values.shape[1])]
        part = pd.DataFrame(rows, index=index).drop(columns=["mean", "sd"])
        part.columns = pd.MultiIndex.from_product([[name], part.columns])
        parts.append(part)
    return pd.concat(parts, axis=1)


def _trace_at(model: Any, layout: Layout, v: jax.Array, data: Any) -> dict[str, Any]:
    """The trace of ``model`` at the flat unconstrained draw ``v``, its observations in place."""
    unconstrained = unflatten(v, layout)

    def constrain(site: dict[str, Any]) -> Any:
        if site["type"] == "sample" and site["name"] in unconstrained:
            return biject_to(site["fn"].support)(unconstrained[site["name"]])
        return None

    return handlers.trace(handlers.substitute(model, substitute_fn=constrain)).get_trace(data)


def _noise_of(fn: Any) -> tuple[Any, Any, Any] | None:
    """``(loc, scale, df)`` of an observation distribution that :func:`draw_noise` draws on the host
    (Normal: ``df`` None; Student-t), broadcast to its batch shape; ``None`` for any other."""
    base = fn
    while isinstance(base, (dist.ExpandedDistribution, dist.MaskedDistribution)):  # plates and masks wrap it
        base = base.base_dist
    if type(base) not in (dist.Normal, dist.StudentT):
        return None
    shape = fn.batch_shape
    df = jnp.broadcast_to(base.df, shape) if isinstance(base, dist.StudentT) else None
    return jnp.broadcast_to(base.loc, shape), jnp.broadcast_to(base.scale, shape), df


@functools.partial(jax.jit, static_argnums=(0, 1))
def _pointwise(model: Any, layout: Layout, z: jax.Array, data: Any, key: jax.Array, block: jax.Array):  # noqa: ANN202
    """Sample and deterministic sites, pointwise log-likelihood and the observations' noise, for flat
    unconstrained draws ``z`` ``(S, k)`` (block ``block`` of a posterior's draws), in one program (one trace
    of the model per draw).

    The noise comes back as ``(loc, scale, df)`` per draw and run, for the host to draw a new run's
    observations from (:func:`draw_noise`); an observation model of another family is sampled here.
    """
    def one(v: jax.Array, k: jax.Array):  # noqa: ANN202
        trace = _trace_at(model, layout, v, data)
        site = trace[OBSERVED]
        sites = {name: s["value"] for name, s in trace.items()
                 if s["type"] == "deterministic" or (s["type"] == "sample" and not s["is_observed"])}
        noise = _noise_of(site["fn"])
        return sites, site["fn"].log_prob(site["value"]), noise if noise is not None else site["fn"].sample(k)

    return jax.vmap(one)(z, jax.random.split(jax.random.fold_in(key, block), z.shape[0]))


def draws_per_call(runs: int) -> int:
    """Draws per call of the pointwise program: :data:`DRAW_BLOCK`, or fewer so that draws x runs stays
    within :data:`POINTWISE_ELEMENTS` (memory bounded on any table)."""
    return max(1, min(DRAW_BLOCK, POINTWISE_ELEMENTS // runs))


def _pointwise_draws(model: Any, layout: Layout, z: np.ndarray, data: Any, key: jax.Array, runs: int):  # noqa: ANN202
    """:func:`_pointwise` over all draws ``z``, in calls of one compiled shape (:func:`draws_per_call`, the
    last block padded): the sites, the posterior predictive of the observations and the log-likelihood
    (per-run arrays as float32).

    Noise drawn on the host comes from one generator seeded by ``key``, in draw order, whatever the blocks;
    a noise family sampled in the program gets ``fold_in(key, block)`` per block.
    """
    total = z.shape[0]
    size = draws_per_call(runs)
    blocks = []
    for index, start in enumerate(range(0, total, size)):
        block = z[start:start + size]
        keep = block.shape[0]
        if keep < size:  # the last block, padded to the compiled shape
            block = np.concatenate([block, np.repeat(block[-1:], size - keep, axis=0)])
        out = _pointwise(model, layout, block, data, key, np.int32(index))
        blocks.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:keep], out))
    sites, loglik, noise = (jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *part)
                            for part in zip(*blocks))
    if isinstance(noise, tuple):
        noise = draw_noise(np.random.default_rng(np.asarray(key)), *noise)
    return sites, noise.astype(POINTWISE_DTYPE), loglik.astype(POINTWISE_DTYPE)


def build_idata(
    model: Any,
    layout: Layout,
    draws: Draws,
    data: Any,
    key: jax.Array,
    *,
    observed: np.ndarray,
    constant: Mapping[str, np.ndarray],
    exclude: tuple[str, ...] = (),
    dim: tuple[str, Any] | None = None,
    width: int | None = None,
) -> az.InferenceData:
    """InferenceData from the draws of one model's chains (leading axis = chain).

    Args:
        model: the NumPyro model ``model(data)``, its observed site named ``log_loss``.
        layout: its flat vector's sites (see :func:`bayescale.model.layout_of`).
        draws: the sampler's output, ``z`` of shape ``(chains, samples, k)``.
        data: the model's data, possibly padded.
        key: PRNG key of the posterior predictive.
        observed: the observed log target of the real runs, ``(n,)``; padded runs
            beyond ``n`` are dropped.
        constant: per-run arrays ``(n,)`` for ``constant_data``.
        exclude: sites left out of the posterior (e.g. the flat vector ``z``).
        dim: ``(name, labels)``: variables with one value per label get that dimension.
        width: array elements the model computes per draw, when more than the runs (bounds the
            draws per call of the pointwise program).

    Returns:
        ``arviz.InferenceData`` with posterior, posterior_predictive, log_likelihood,
        sample_stats, observed_data and constant_data.
    """
    chains, samples, k = draws.z.shape
    n = observed.shape[0]
    sites, predictive, loglik = _pointwise_draws(model, layout, np.asarray(draws.z).reshape(chains * samples, k),
                                                 data, key, max(n, width or 0))
    shape = lambda a: np.asarray(a).reshape(chains, samples, *np.shape(a)[1:])  # noqa: E731
    posterior = {name: shape(value) for name, value in sites.items() if name not in exclude}
    coords: dict[str, Any] = {"run": np.arange(n)}
    dims: dict[str, list[str]] = {OBSERVED: ["run"], **{name: ["run"] for name in constant}}
    if dim is not None:
        label, values = dim
        coords[label] = list(values)
        dims.update({name: [label] for name, v in posterior.items() if v.shape[2:] == (len(values),)})
    return az.from_dict(
        posterior=posterior,
        posterior_predictive={OBSERVED: shape(predictive)[..., :n]},
        log_likelihood={OBSERVED: shape(loglik)[..., :n]},
        sample_stats={
            "diverging": draws.diverging,
            "n_steps": draws.num_steps,
            "acceptance_rate": draws.accept_prob,
            "lp": -draws.potential_energy,
            "step_size": np.broadcast_to(draws.step_size[:, None], draws.diverging.shape),
        },
        observed_data={OBSERVED: observed},
        constant_data=dict(constant),
        coords=coords,
        dims=dims,
    )


def constant_data(data: ScalingData) -> dict[str, np.ndarray]:
    """The per-run arrays of ``data`` stored in ``constant_data``: loss, covariates, M and group."""
    constant = {"loss": data.loss}
    constant.update({c: getattr(data, c) for c in data.available()})
    if data.flops_per_token is not None:
        constant["M"] = data.flops_per_token
    if data.group is not None:
        constant["group"] = np.asarray(data.group).astype(str)
    return constant


def fit_idata(spec: Spec, data: ScalingData, md: ModelData, draws: Draws, key: jax.Array) -> az.InferenceData:
    """InferenceData of one dataset's flat fit (``md`` may be padded; the first ``data.n`` runs are kept)."""
    model = build_model(spec)
    return build_idata(model, model.layout(), draws, md, key, observed=np.log(data.loss),
                       constant=constant_data(data), exclude=("z",))


def lower_fit_idata(spec: Spec, md: ModelData, key: jax.Array) -> jax.stages.Lowered:
    """The program :func:`fit_idata` runs (for any number of draws), traced and lowered: its ``compile()``
    (XLA only, no tracing) may run beside another thread's tracing."""
    model = build_model(spec)
    runs = int(np.sum(np.asarray(md.mask)))  # as fit_idata counts them: the real runs
    z = jax.ShapeDtypeStruct((draws_per_call(runs), len(spec.latents)), md.log_y.dtype)
    return _pointwise.lower(model, model.layout(), z, md, key, np.int32(0))


_KINDS: dict[str, type[Posterior]] = {}


@dataclasses.dataclass(frozen=True, eq=False)
class Posterior:
    """The contract every bayescale result honours (see the module docs).

    Attributes:
        idata: ``arviz.InferenceData``, the one container of draws.
        data: the fitted runs.
        settings: the sampler settings, seed included.
    """

    idata: az.InferenceData
    data: ScalingData
    settings: SamplerSettings

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    @property
    def latents(self) -> tuple[str, ...]:
        """Names of the posterior variables that diagnostics cover."""
        raise NotImplementedError

    @property
    def seed(self) -> int:
        """The seed the fit was run with."""
        return self.settings.seed

    def draws(self, name: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """Posterior draws with chains concatenated, ``(draws, *shape)``: one array, or a dict of all latents."""
        if name is not None:
            if name not in self.latents:
                raise KeyError(f"unknown parameter {name!r}; parameters are {list(self.latents)}")
            values = self.idata.posterior[name].values
            return values.reshape(-1, *values.shape[2:])
        return {n: self.draws(n) for n in self.latents}

    @functools.cached_property
    def diagnostics(self) -> Diagnostics:
        """R-hat, bulk/tail ESS and divergences (computed once)."""
        return diagnose(self.idata, self.latents)

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Posterior table: mean, sd, median, equal-tailed interval at ``level``, r_hat, ess_bulk, ess_tail."""
        return describe_draws(self.draws(), level).join(self.diagnostics.table)

    def predict_draws(
        self,
        N: Any = None,
        D: Any = None,
        C: Any = None,
        *,
        N_total: Any = None,
        U: Any = None,
        flops_per_token: Any = None,
        noise: bool = False,
        seed: int = 0,
    ) -> np.ndarray:
        """Posterior draws of the predicted loss at new points: the one predictive of every result.

        Built in one order: each component's mean curve, its structural error when it has one
        (zero inside the data, growing with the distance beyond it), with ``noise`` a new run's
        noise (:meth:`FitResult.law_draws`), then the mixing across components (:meth:`combine`).

        Args:
            N: parameters; D: tokens; C: FLOPs (arrays broadcast together). Missing
                covariates are derived with ``C = 6·N·D`` (or ``M·D``).
            N_total: total parameters, for the mixture-of-experts law.
            U: unique tokens, for the data-constrained law.
            flops_per_token: M for ``C = M·D``.
            noise: add observation noise (posterior predictive for a new run)
                instead of the law's mean curve.
            seed: PRNG seed for the noise and the structural error.

        Returns:
            Array ``(draws, points)`` in the target's units (nats).
        """
        return self.combine({name: member.law_draws(N, D, C, N_total=N_total, U=U, flops_per_token=flops_per_token,
                                                    noise=noise, seed=seed)
                             for name, member in self.components().items()})

    def predict(
        self,
        N: Any = None,
        D: Any = None,
        C: Any = None,
        *,
        N_total: Any = None,
        U: Any = None,
        flops_per_token: Any = None,
        level: float = LEVEL,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Credible bands of the loss at new points (extrapolation), from :meth:`predict_draws`.

        Args:
            N, D, C, N_total, U: covariates as for :meth:`predict_draws`.
            flops_per_token: M for ``C = M·D``.
            level: credible level of the intervals.
            seed: seed of the predictive noise and the structural error.

        Returns:
            DataFrame, one row per point: the covariates, ``median``, ``lower`` and
            ``upper`` of the mean loss, and ``pred_lower``/``pred_upper`` of a new run's
            observed loss (noise included). Loss in nats.
        """
        lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
        _interval_columns(level)
        points = {"N_total": N_total, "U": U, "flops_per_token": flops_per_token}
        mean = self.predict_draws(N, D, C, **points, seed=seed)
        new = self.predict_draws(N, D, C, **points, noise=True, seed=seed)
        covs = next(iter(self.components().values()))._covariates(N, D, C, flops_per_token, N_total, U)
        table = pd.DataFrame({k: v for k, v in covs.items() if v is not None})
        table["median"] = np.median(mean, axis=0)
        table["lower"], table["upper"] = np.quantile(mean, [lo_q, hi_q], axis=0)
        table["pred_lower"], table["pred_upper"] = np.quantile(new, [lo_q, hi_q], axis=0)
        return table

    def components(self) -> Mapping[str, FitResult]:
        """The fits of single laws whose predictions this result mixes, by name: one for a fit, the members
        of a stack. Every planning function reads a result through these and :meth:`combine`.

        Raises:
            TypeError: a result that is not a mixture of fits of laws (hierarchical as a whole, iso-FLOP).
        """
        raise TypeError(f"a {self.kind} result is not read law by law; plan with one of its fits")

    def combine(self, per_component: Mapping[str, np.ndarray]) -> np.ndarray:
        """Mix arrays ``(draws, ...)`` computed for each of :meth:`components` into this result's draws."""
        (only,) = per_component.values()
        return np.asarray(only)

    def _meta(self) -> dict[str, Any]:
        """What ``save`` records beyond ``idata`` (JSON-ready)."""
        raise NotImplementedError

    @classmethod
    def _restore(cls, idata: az.InferenceData, meta: Mapping[str, Any], law: Law | None) -> Posterior:
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the result to a netCDF file; :func:`load` reads it back exactly.

        The file is written under a temporary name in the same folder and renamed
        into place, so a reader never sees a partial file.
        """
        meta = {
            "format": _FORMAT_VERSION,
            "kind": self.kind,
            "settings": self.settings.to_dict(),
            "data": {
                "target": self.data.target,
                "source": self.data.source,
                "counts_embeddings": self.data.counts_embeddings,
                "index": [str(i) for i in (self.data.index if self.data.index is not None else [])],
            },
            **self._meta(),
        }
        idata = self.idata.copy()
        idata.posterior.attrs["bayescale"] = json.dumps(meta)
        atomic_write(path, lambda tmp: idata.to_netcdf(tmp, engine="h5netcdf"))


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult(Posterior):
    """The posterior of one scaling-law fit to one dataset (alone, or as a member of a batch or hierarchy).

    Attributes:
        idata: ``arviz.InferenceData`` with groups ``posterior`` (natural
            parameters, plus ``sigma`` and ``nu`` when learned), ``sample_stats``,
            ``log_likelihood``, ``posterior_predictive``, ``observed_data``
            (``log_loss``) and ``constant_data`` (N, D, C, loss per run).
        data: the fitted runs.
        settings: sampler settings, seed included.
        spec: law, likelihood and priors.
    """

    spec: Spec = dataclasses.field(kw_only=True)

    kind: ClassVar[str] = "fit"

    @property
    def law(self) -> Law:
        """The fitted law."""
        return self.spec.law

    @property
    def latents(self) -> tuple[str, ...]:
        """Natural parameters, ``sigma`` (and ``nu`` when learned)."""
        return self.spec.latents

    @property
    def posterior(self) -> xr.Dataset:
        """Posterior draws of the natural parameters, dims ``(chain, draw)``."""
        return self.idata.posterior[list(self.spec.latents)]

    def warn_if_unconverged(self, label: str = "") -> None:
        """Emit a :class:`ConvergenceWarning` listing the problems, if any."""
        where = f" ({label})" if label else ""
        warn_unconverged(self.diagnostics, f"fit of {self.law.name!r}{where}", stacklevel=3)

    def params(self, stat: str = "median") -> dict[str, float]:
        """Point summary (``"median"`` or ``"mean"``) of every parameter."""
        if stat not in ("median", "mean"):
            raise ValueError(f"stat must be 'median' or 'mean', got {stat!r}")
        agg = np.median if stat == "median" else np.mean
        return {k: float(agg(v)) for k, v in self.draws().items()}

    def components(self) -> Mapping[str, FitResult]:
        """This fit alone."""
        return {self.law.name: self}

    @property
    def misfit(self) -> np.ndarray | None:
        """Draws of the structural error's scale ``tau`` (log-loss per square-root e-fold), flat, or ``None``
        for a fit without one (:func:`bayescale.extrapolation.structural_error`)."""
        return misfit_of(self.idata)

    def shock(self, seed: int = 0) -> np.ndarray:
        """The structural error's scale per draw, ``tau·z`` with ``z ~ Normal(0, 1)`` seeded by ``seed``
        (zeros without a structural error), shape ``(draws,)``: draw ``s`` deviates from its mean curve by
        ``shock[s]·sqrt(d)`` at ``d`` e-folds beyond the runs (:func:`reach`)."""
        tau = self.misfit
        if tau is None:
            return np.zeros(self.idata.posterior.sizes["chain"] * self.idata.posterior.sizes["draw"])
        return shock_draws(tau, seed)

    def log_mean_draws(self, log_x: Mapping[str, Any], seed: int = 0) -> np.ndarray:
        """The mean curve of log-loss, then the structural error, per draw: the first two steps of every
        prediction (noise is added by :meth:`law_draws`, mixing by :meth:`Posterior.combine`).

        Args:
            log_x: log covariates of the law, each ``(points,)`` (shared by every draw) or
                ``(draws, points)`` (one point per draw, e.g. each draw's own optimum).
            seed: seed of the structural error (:meth:`shock`).

        Returns:
            ``(draws, points)`` log-loss (nats).
        """
        x = {c: np.asarray(log_x[c], dtype=float) for c in self.law.covariates}
        points = max(v.shape[-1] if v.ndim else 1 for v in x.values())
        padded = {c: _pad_points(np.broadcast_to(v, v.shape[:-1] + (points,)) if v.ndim else np.full(points, v))
                  for c, v in x.items()}
        with jax.enable_x64(True):
            loc = _log_mean(self.law, self.draws(), padded, self.shock(seed), data_top(self.law, self.data))
        return np.asarray(loc)[:, :points]

    def law_draws(
        self,
        N: Any = None,
        D: Any = None,
        C: Any = None,
        *,
        N_total: Any = None,
        U: Any = None,
        flops_per_token: Any = None,
        noise: bool = False,
        seed: int = 0,
    ) -> np.ndarray:
        """This law's draws of the loss (nats) at new points, ``(draws, points)``: the mean curve, the
        structural error when the fit has one (:meth:`log_mean_draws`), then with ``noise`` a new run's
        noise. Arguments as for :meth:`Posterior.predict_draws`, which mixes these across components."""
        log_x = self._log_covariates(N, D, C, flops_per_token, N_total, U)
        loc = self.log_mean_draws(log_x, seed)
        if noise:
            draws = self.draws()
            nu = draws["nu"] if self.spec.likelihood.learns_nu else None
            rng = np.random.default_rng([seed, 1])
            loc = self.spec.likelihood.sample(rng, loc, draws["sigma"][:, None], None if nu is None else nu[:, None])
        return np.exp(np.asarray(loc))

    def _covariates(
        self, N: Any, D: Any, C: Any, flops_per_token: Any, N_total: Any = None, U: Any = None
    ) -> dict[str, np.ndarray | None]:
        given = {"N": N, "D": D, "C": C, "flops_per_token": flops_per_token, "N_total": N_total, "U": U}
        present = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in given.items() if v is not None}
        if not present:
            raise ValueError(f"give covariates for the law {self.law.name!r}: it uses {self.law.covariates}")
        arrays = np.broadcast_arrays(*present.values())
        checked = {
            k: check_positive(a.copy(), range(a.size), k, "prediction input") for k, a in zip(present, arrays)
        }
        n, d, c = fill_covariates(checked.get("N"), checked.get("D"), checked.get("C"), checked.get("flops_per_token"))
        derived = {"N": n, "D": d, "C": c}
        for name, value in derived.items():
            if value is not None and name not in checked:
                check_positive(value, range(value.size), f"{name} (derived)", "prediction input")
        return {name: derived.get(name, checked.get(name)) for name in COVARIATES}

    def _log_covariates(
        self, N: Any, D: Any, C: Any, flops_per_token: Any, N_total: Any = None, U: Any = None
    ) -> dict[str, np.ndarray]:
        covs = self._covariates(N, D, C, flops_per_token, N_total, U)
        missing = [c for c in self.law.covariates if covs[c] is None]
        if missing:
            raise ValueError(
                f"law {self.law.name!r} needs {missing}: give them, or two of N, D, C to derive them"
            )
        return {c: np.log(covs[c]) for c in self.law.covariates}

    def _meta(self) -> dict[str, Any]:
        return spec_to_json(self.spec)

    @classmethod
    def _restore(cls, idata: az.InferenceData, meta: Mapping[str, Any], law: Law | None) -> FitResult:
        return cls(idata=idata, data=data_from_idata(idata, meta), settings=settings_from_meta(meta),
                   spec=spec_from_json(meta, law))


def spec_to_json(spec: Spec) -> dict[str, Any]:
    """The law (name and options), likelihood, priors and roles of ``spec`` as JSON, as ``save`` records them."""
    return {
        "law": {"name": spec.law.name, "options": dict(spec.law.options)},
        "likelihood": {"name": spec.likelihood.name, "nu": spec.likelihood.nu},
        "priors": {k: prior_to_json(v) for k, v in spec.priors.items()},
        "roles": [list(r) for r in spec.roles],
    }


def spec_from_json(meta: Mapping[str, Any], law: Law | None = None) -> Spec:
    """Inverse of :func:`spec_to_json`; ``law`` is required for a custom law (functions are not saved)."""
    law = _law_from_meta(meta, law)
    likelihood = Likelihood(meta["likelihood"]["name"], meta["likelihood"]["nu"])
    priors = {k: prior_from_json(v) for k, v in meta["priors"].items()}
    roles = tuple(tuple(r) for r in meta.get("roles", ()))
    return Spec(law, likelihood, priors, roles) if roles else make_spec(law, likelihood, priors)


def _law_from_meta(meta: Mapping[str, Any], law: Law | None) -> Law:
    if law is not None:
        return law
    try:
        return get_law(meta["law"]["name"], **meta["law"]["options"])
    except ValueError:
        raise ValueError(
            f"the result uses the custom law {meta['law']['name']!r}: pass it as load(path, law=...)"
        ) from None


def settings_from_meta(meta: Mapping[str, Any]) -> SamplerSettings:
    """The sampler settings recorded by ``save`` (format 1 files kept NUTS settings and seed apart)."""
    if "settings" in meta:
        return SamplerSettings(**meta["settings"])
    return SamplerSettings(**meta["config"], seed=meta["seed"])


def data_from_idata(idata: az.InferenceData, meta: Mapping[str, Any]) -> ScalingData:
    """The runs stored in ``idata.constant_data`` and the metadata written by ``save``."""
    const = idata.constant_data
    optional = lambda name: const[name].values if name in const else None  # noqa: E731
    return ScalingData(
        loss=const["loss"].values,
        **{c: optional(c) for c in COVARIATES},
        group=optional("group"),
        flops_per_token=optional("M"),
        counts_embeddings=meta["data"]["counts_embeddings"],
        index=np.asarray(meta["data"]["index"], dtype=object),
        target=meta["data"]["target"],
        source=meta["data"]["source"],
    )


def load(path: str | os.PathLike[str], law: Any = None) -> Any:
    """Read any result written by its ``save`` method (a fit, batch member, hierarchical, iso-FLOP, stacked,
    downstream result, or a fit of loss curves: :class:`~bayescale.curve_fit.CurveResult`).

    Args:
        path: the netCDF file.
        law: the law object (a :class:`~bayescale.laws.Law`, or a curve law for a curve fit), required
            for custom laws (functions are not saved).

    Returns:
        The result, equal to the one saved: the same draws, data, law, likelihood,
        priors and settings.

    Raises:
        DataError: the file is missing, damaged or not a bayescale result, names an
            unknown law, prior or settings, or uses a custom law and ``law`` was not
            given (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        idata = az.from_netcdf(path, engine="h5netcdf")
    except Exception as err:  # noqa: BLE001 - HDF5 and xarray raise many types for one cause: a damaged file
        raise DataError(f"{path}: unreadable, damaged or not netCDF ({type(err).__name__})") from err
    if "posterior" not in idata.groups() or "bayescale" not in idata.posterior.attrs:
        raise DataError(f"{path}: a netCDF file without a bayescale posterior (not written by bayescale)")
    try:
        meta = json.loads(idata.posterior.attrs["bayescale"])
        if not isinstance(meta, dict):
            raise TypeError(f"a JSON {type(meta).__name__}, not an object")
        del idata.posterior.attrs["bayescale"]
        kind = meta.get("kind", "fit")
        if kind == "curves":
            from .curve_fit import CurveResult  # curve fits are not Posterior results of final losses

            return CurveResult.restore(idata, meta, law)
        if kind not in _KINDS:
            raise DataError(f"{path}: a result of unknown kind {kind!r}")
        return _KINDS[kind]._restore(idata, meta, law)
    except DataError:
        raise
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: damaged bayescale metadata ({type(err).__name__}: {err})") from None
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None


def summaries_by_group(fits: Mapping[str, FitResult], level: float = LEVEL) -> pd.DataFrame:
    """Long table of several fits' summaries: one row per (group, parameter)."""
    parts = [fit.summary(level).rename_axis("parameter").reset_index().assign(group=name) for name, fit in fits.items()]
    table = pd.concat(parts, ignore_index=True)
    return table[["group", "parameter", *[c for c in table.columns if c not in ("group", "parameter")]]]
