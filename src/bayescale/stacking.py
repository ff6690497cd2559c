"""Bayesian stacking of several laws fitted to the same runs (Yao et al. 2018).

No single law is right for real runs, and which one extrapolates best is itself
uncertain. :func:`stack` weighs the candidate fits so that the mixture of their
predictive distributions scores best on runs they did not see, and the weights
come from one of two records:

- ``method="future"`` (the default): leave-future-out. Each law is
  refitted rolling origin (below several cuts of compute, as
  :func:`bayescale.backtest` does) and scored by the log predictive density of the
  larger runs above each cut. The weights favour the laws that *extrapolated* best
  within the data (Bürkner, Gabry and Vehtari 2020 give the leave-future-out
  estimate; stacking it is Yao et al.'s objective on that record).
- ``method="loo"``: PSIS leave-one-out densities. They score interpolation: on the
  real OLMo ladder runs LOO stacking gave all the weight to Kaplan's joint law,
  which predicted the held-out larger models worst (benchmarks/RESULTS.md).

With ``structural=True`` each law also gets its structural error
(:func:`bayescale.extrapolation.structural_error`), learned from the same refits. Either
way ArviZ (``arviz.compare(..., method="stacking")``) finds the weights. The
stacked posterior is a mixture: each posterior draw slot ``(chain, draw)`` belongs
to one member, picked with probability equal to its weight (seeded), and every
prediction or allocation takes that member's draw in that slot.

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from .data import DataError
from .extrapolation import (
    CUTS, Refit, log_density, log_predictive, rolling_record, scale_covariate, structural_error,
)
from .laws import Law
from .model import OBSERVED
from .posterior import (
    LEVEL, Diagnostics, FitResult, Posterior, data_from_idata, settings_from_meta, summaries_by_group, with_misfit,
)

__all__ = [
    "StackedResult",
    "stack",
    "stack_by_record",
    "future_elpd",
    "stacking_weights",
    "mix",
    "check_stack",
    "scored",
    "METHODS",
]

METHODS = ("future", "loo")
"""Records stacking weights can come from: leave-future-out (rolling origin) or PSIS leave-one-out."""

_SEP = "."
_STATS = ("diverging", "n_steps", "acceptance_rate", "lp", "step_size")


@dataclasses.dataclass(frozen=True, eq=False)
class StackedResult(Posterior):
    """The stacked mixture of several fits of the same runs.

    Attributes:
        idata: ``arviz.InferenceData``: posterior ``model`` (the member each draw slot
            belongs to, an index into ``names``) and every member's parameters as
            ``"{member}.{parameter}"``; ``log_likelihood`` and ``posterior_predictive``
            of the mixture; the members' sample stats as ``"{member}.{stat}"``;
            observed and constant data of the runs.
        data: the runs.
        settings: the first member's sampler settings; ``seed`` is the mixture's.
        members: name -> :class:`~bayescale.posterior.FitResult` (posterior and sample
            stats; a member read back by :func:`bayescale.load` has no pointwise groups).
        weights: name -> stacking weight (they sum to 1).
        method: the record the weights come from, one of :data:`METHODS`.
        record: with ``method="future"``, the leave-future-out log predictive densities the
            weights were computed from: one row per (cut, held-out run), one column per member.
    """

    members: Mapping[str, FitResult] = dataclasses.field(kw_only=True)
    weights: Mapping[str, float] = dataclasses.field(kw_only=True)
    method: str = dataclasses.field(kw_only=True, default="loo")
    record: pd.DataFrame | None = dataclasses.field(kw_only=True, default=None)

    kind: ClassVar[str] = "stacked"

    @property
    def names(self) -> list[str]:
        """Member names, in the order of the ``model`` index."""
        return list(self.members)

    @property
    def latents(self) -> tuple[str, ...]:
        return ("model", *(f"{n}{_SEP}{p}" for n, m in self.members.items() for p in m.latents))

    @property
    def law(self) -> Law:
        raise TypeError("a stacked result mixes laws; use predict, predict_draws or compute_optimal, "
                        "or one member's law through result.members[name]")

    @property
    def assignment(self) -> np.ndarray:
        """The member index of every flat draw, shape ``(draws,)``."""
        return self.idata.posterior["model"].values.reshape(-1)

    def components(self) -> Mapping[str, FitResult]:
        """The members, by name."""
        return dict(self.members)

    def combine(self, per_member: Mapping[str, np.ndarray]) -> np.ndarray:
        """Mix arrays ``(draws, ...)`` of each member into one: row ``s`` from the member that owns draw ``s``."""
        stacked = np.stack([np.asarray(per_member[n]) for n in self.names])
        return stacked[self.assignment, np.arange(stacked.shape[1])]

    @functools.cached_property
    def diagnostics(self) -> Diagnostics:
        """Every member's diagnostics, as one (table indexed by member, parameter)."""
        return Diagnostics.combine({n: m.diagnostics for n, m in self.members.items()})

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Long table: one row per (member, parameter) with the member's weight, statistics, r_hat and ESS."""
        table = summaries_by_group(self.members, level).rename(columns={"group": "member"})
        table.insert(1, "weight", table["member"].map(dict(self.weights)))
        return table

    def _meta(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "method": self.method,
            "record": None if self.record is None else self.record.reset_index().to_dict(orient="list"),
            "members": {n: {**m._meta(), "settings": m.settings.to_dict()} for n, m in self.members.items()},
        }

    @classmethod
    def _restore(cls, idata: az.InferenceData, meta: Mapping[str, Any], law: Law | None) -> StackedResult:
        members = {}
        for name, member_meta in meta["members"].items():
            prefix = f"{name}{_SEP}"

            def own(ds: xr.Dataset, prefix: str = prefix) -> xr.Dataset:
                names = [v for v in ds.data_vars if v.startswith(prefix)]
                return ds[names].rename({v: v[len(prefix):] for v in names})

            member_idata = az.InferenceData(posterior=own(idata.posterior), sample_stats=own(idata.sample_stats),
                                            observed_data=idata.observed_data, constant_data=idata.constant_data)
            members[name] = FitResult._restore(member_idata, {**meta, **member_meta}, None)
        return cls(idata=idata, data=data_from_idata(idata, meta), settings=settings_from_meta(meta),
                   members=members, weights=dict(meta["weights"]), method=meta.get("method", "loo"),
                   record=None if meta.get("record") is None else pd.DataFrame(meta["record"]).set_index(["cut", "run"]))


def future_elpd(fit: FitResult, cuts: Sequence[float] = CUTS, record: Sequence[Refit] | None = None) -> pd.Series:
    """Leave-future-out log predictive densities of a fit's model, one per (cut, held-out run).

    The model (law, likelihood, priors, settings) is refitted to the runs at or below each
    cut quantile of the scale covariate, and each larger run's log-loss is scored by the
    refit's predictive density (a new run's, noise included; Gaussian kernel estimate). A fit
    with a structural error is scored with its own scale ``tau``: each refit is given the fit's
    ``tau`` draws and predicts through the one predictive path (the discrepancy grows with the
    held-out runs' distance beyond the refit's runs). ``tau`` was learned from these same
    refits rather than again inside each one (six times cheaper; the record then slightly
    favours the structural error).

    Args:
        fit: a fit of any law (N in parameters, D in tokens, C in FLOPs, loss in nats).
        cuts: quantiles of the scale covariate (C for laws in N and D).
        record: the fit's rolling refits when already run (``rolling_record({0: fit}, cuts)[0]``).

    Returns:
        Log densities of log-loss, indexed by ``(cut, run)`` (``run``: the run's position).

    Raises:
        DataError: no cut leaves enough runs to refit the law and some to hold out.
    """
    record = rolling_record({0: fit}, cuts)[0] if record is None else record
    if not record:
        raise DataError(f"no cut in {list(cuts)} leaves enough runs to refit {fit.law.name!r} and some to hold out")
    rng = np.random.default_rng(fit.seed)
    parts = []
    for q, refit, held, draws in record:
        if fit.misfit is not None:
            post = refit.idata.posterior
            tau = rng.choice(fit.misfit, size=(post.sizes["chain"], post.sizes["draw"]))
            draws = log_predictive(with_misfit(refit, tau), fit.data.subset(held), fit.seed)
        parts.append(scored(fit, q, held, draws))
    return pd.concat(parts)


def scored(fit: FitResult, q: float, held: np.ndarray, draws: np.ndarray) -> pd.Series:
    index = pd.MultiIndex.from_product([[q], np.flatnonzero(held)], names=["cut", "run"])
    return pd.Series(log_density(draws, np.log(fit.data.loss[held])), index=index)


def _elpd_data(pointwise: pd.Series, draws: int) -> az.ELPDData:
    """Pointwise densities in the shape ``arviz.compare`` takes precomputed (its fields say ``loo``)."""
    values = pointwise.to_numpy()
    return az.ELPDData(
        data=[values.sum(), np.sqrt(values.size * values.var()), 0.0, draws, values.size, False,
              xr.DataArray(values, dims=["point"], name="loo_i"), xr.DataArray(np.zeros(values.size), dims=["point"]),
              "log", 0.7],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "pareto_k", "scale",
               "good_k"],
    )


def stacking_weights(fits: Mapping[str, FitResult], future: Mapping[str, pd.Series] | None
                     ) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Stacking weights from PSIS-LOO (``future`` None) or from each member's leave-future-out densities,
    and the leave-future-out record they came from (rows (cut, run) every member was scored on)."""
    names = list(fits)
    table = None
    if future is None:
        records: dict[str, Any] = {n: fits[n].idata for n in names}
    else:
        common = functools.reduce(lambda a, b: a.intersection(b), (future[n].index for n in names))
        if common.empty:
            raise DataError("no cut leaves enough runs to refit every law; use fewer latents or method='loo'")
        draws = fits[names[0]].idata.posterior.sizes["draw"] * fits[names[0]].idata.posterior.sizes["chain"]
        table = pd.DataFrame({n: future[n].loc[common] for n in names})
        records = {n: _elpd_data(table[n], draws) for n in names}
    with warnings.catch_warnings():  # high Pareto k is reported by bs.compare; stacking still uses the estimate
        warnings.simplefilter("ignore")
        weights = az.compare(records, ic="loo", method="stacking")["weight"]
    w = np.array([max(float(weights[n]), 0.0) for n in names])
    return w / w.sum(), table


def check_stack(fits: Mapping[str, FitResult], method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if len(fits) < 2:
        raise ValueError(f"stack needs at least two fits, got {len(fits)}")
    names = list(fits)
    first = fits[names[0]]
    shape = (first.idata.posterior.sizes["chain"], first.idata.posterior.sizes["draw"])
    for name in names[1:]:
        other = fits[name]
        if other.data.loss.shape != first.data.loss.shape or not np.array_equal(other.data.loss, first.data.loss):
            raise ValueError(f"fit {name!r} is of other runs than {names[0]!r}: stacking needs the same data")
        if (other.idata.posterior.sizes["chain"], other.idata.posterior.sizes["draw"]) != shape:
            raise ValueError(f"fit {name!r} has other chain/draw counts than {names[0]!r}: {shape} expected")
    orders = {n: scale_covariate(fits[n].law) for n in names}
    if method == "future" and len(set(orders.values())) > 1:
        raise ValueError(f"leave-future-out stacking cuts every law's runs at the same points; these laws order "
                         f"runs by different covariates: {orders} (use method='loo')")


def mix(fits: Mapping[str, FitResult], w: np.ndarray, seed: int, method: str,
        record: pd.DataFrame | None = None) -> StackedResult:
    """The mixture: draw slot ``(chain, draw)`` belongs to member ``k`` with probability ``w[k]`` (seeded)."""
    names = list(fits)
    first = fits[names[0]]
    shape = (first.idata.posterior.sizes["chain"], first.idata.posterior.sizes["draw"])
    model = np.random.default_rng(seed).choice(len(names), size=shape, p=w)

    def mixed(group: str) -> np.ndarray:
        values = np.stack([fits[n].idata[group][OBSERVED].values for n in names])
        return np.take_along_axis(values, model[None, :, :, None], axis=0)[0]

    # every posterior variable of every member (its structural error's scale too), so members load back whole
    posterior = {"model": model, **{f"{n}{_SEP}{p}": v.values for n in names
                                    for p, v in fits[n].idata.posterior.data_vars.items()}}
    stats = {f"{n}{_SEP}{s}": fits[n].idata.sample_stats[s].values for n in names for s in _STATS
             if s in fits[n].idata.sample_stats}
    constant = {k: v.values for k, v in first.idata.constant_data.items()}
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        log_likelihood={OBSERVED: mixed("log_likelihood")},
        posterior_predictive={OBSERVED: mixed("posterior_predictive")},
        observed_data={OBSERVED: first.idata.observed_data[OBSERVED].values},
        constant_data=constant,
        coords={"run": np.arange(first.data.n)},
        dims={OBSERVED: ["run"], **{k: ["run"] for k in constant}},
    )
    settings = dataclasses.replace(first.settings, seed=seed)
    return StackedResult(idata=idata, data=first.data, settings=settings, members=dict(fits),
                         weights=dict(zip(names, w.tolist())), method=method, record=record)


def stack(
    fits: Mapping[str, FitResult],
    seed: int = 0,
    method: Literal["future", "loo"] = "future",
    cuts: Sequence[float] = CUTS,
    structural: bool = False,
) -> StackedResult:
    """Stack fits of the same runs by their predictive densities on runs they did not see.

    Args:
        fits: name -> fit (each a :class:`~bayescale.posterior.FitResult` of a law, e.g. the
            Chinchilla law and a law that bends; a fit may carry a structural error), all of
            the same runs in the same order and with the same numbers of chains and draws
            (for batches see :func:`bayescale.stack_batch`).
        seed: seed of the draw slots' assignment to members.
        method: ``"future"`` (weights from leave-future-out densities: every law is
            refitted at each cut, so this costs ``len(cuts)`` small fits per law) or
            ``"loo"`` (PSIS leave-one-out, no refits; scores interpolation).
        cuts: quantiles of compute (the laws' scale covariate) at which ``"future"`` cuts.
        structural: give each member its structural error
            (:func:`bayescale.extrapolation.structural_error`), learned from the same
            refits that score it, so it costs nothing more (``"future"`` only).

    Returns:
        :class:`StackedResult`; its weights are in ``weights`` and in ``summary()``.

    Raises:
        ValueError: fewer than two fits, fits of other runs, other chain/draw counts, an
            unknown method, (``"future"``) laws that order runs by different covariates,
            or ``structural`` with ``"loo"``.
        DataError: (``"future"``) no cut leaves enough runs to refit every law.
    """
    check_stack(fits, method)
    if method == "loo":
        if structural:
            raise ValueError("structural=True learns each law's structural error from its leave-future-out refits: "
                             "use method='future'")
        w, record = stacking_weights(fits, None)
        return mix(fits, w, seed, method, record)
    return stack_by_record(fits, {n: rolling_record({0: f}, cuts)[0] for n, f in fits.items()}, seed, structural)


def stack_by_record(fits: Mapping[str, FitResult], records: Mapping[str, Sequence[Refit]], seed: int = 0,
                    structural: bool = False) -> StackedResult:
    """Leave-future-out stacking of ``fits`` given each one's rolling refits (:func:`rolling_record`).

    What :func:`stack` does after refitting, and what :func:`bayescale.stack_batch` does for
    each group with the refits of all groups run as one batch: so a group stacked in a batch
    is the same group stacked alone, draw for draw.

    Raises:
        DataError: a member whose record is empty (no cut leaves enough runs), or no cut every member was scored on.
    """
    if structural:
        fits = {n: f if f.misfit is not None else structural_error(f, record=records[n]) for n, f in fits.items()}
    future = {n: future_elpd(f, record=records[n]) for n, f in fits.items()}
    w, record = stacking_weights(fits, future)
    return mix(fits, w, seed, "future", record)
