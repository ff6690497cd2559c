"""Bayesian stacking of several laws fitted to the same runs (Yao et al. 2018).

No single law is right for real runs, and which one extrapolates best is itself
uncertain. :func:`stack` weighs the candidate fits by stacking their
leave-one-out predictive densities (PSIS-LOO, through ``arviz.compare(...,
method="stacking")``): the weights maximise the LOO log score of the mixture
predictive, so a law that adds nothing gets weight near zero and laws that
predict different runs well share the weight. The stacked posterior is a
mixture: each posterior draw slot ``(chain, draw)`` belongs to one member, picked
with probability equal to its weight (seeded), and every prediction or
allocation takes that member's draw in that slot.

Leave-one-out scores interpolation, not extrapolation: on the real OLMo ladder
runs LOO stacking gave all the weight to Kaplan's joint law, which predicted the
held-out larger models worst (benchmarks/RESULTS.md). For planning beyond the
data prefer :func:`bayescale.extrapolation.structural_error`.

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from .laws import Law
from .model import OBSERVED
from .posterior import LEVEL, Diagnostics, FitResult, Posterior, data_from_idata, settings_from_meta, summaries_by_group

__all__ = ["StackedResult", "stack"]

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
    """

    members: Mapping[str, FitResult] = dataclasses.field(kw_only=True)
    weights: Mapping[str, float] = dataclasses.field(kw_only=True)

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

    def predict_draws(self, noise: bool = False, seed: int = 0, **points: Any) -> np.ndarray:
        """Draws ``(draws, points)`` of the mixture's loss (nats) at new points (covariates as for
        :meth:`FitResult.predict_draws`)."""
        return self.combine({n: m.predict_draws(**points, noise=noise, seed=seed) for n, m in self.members.items()})

    def predict(self, level: float = LEVEL, seed: int = 0, **points: Any) -> pd.DataFrame:
        """Bands of the mixture at new points: as :meth:`FitResult.predict`, the law uncertainty included."""
        first = next(iter(self.members.values()))
        covariates = first._covariates(*(points.get(k) for k in ("N", "D", "C", "flops_per_token", "N_total", "U")))
        table = pd.DataFrame({k: v for k, v in covariates.items() if v is not None})
        lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
        mean, new = self.predict_draws(**points), self.predict_draws(**points, noise=True, seed=seed)
        table["median"] = np.median(mean, axis=0)
        table["lower"], table["upper"] = np.quantile(mean, [lo_q, hi_q], axis=0)
        table["pred_lower"], table["pred_upper"] = np.quantile(new, [lo_q, hi_q], axis=0)
        return table

    def _meta(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
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
                   members=members, weights=dict(meta["weights"]))


def stack(fits: Mapping[str, FitResult], seed: int = 0) -> StackedResult:
    """Stack fits of the same runs by their PSIS-LOO predictive densities.

    Args:
        fits: name -> fit (each a :class:`~bayescale.posterior.FitResult` of a law, e.g. the
            Chinchilla law and a law that bends), all of the same runs in the same order and
            with the same numbers of chains and draws.
        seed: seed of the draw slots' assignment to members.

    Returns:
        :class:`StackedResult`; its weights are in ``weights`` and in ``summary()``.

    Raises:
        ValueError: fewer than two fits, fits of other runs, or other chain/draw counts.
    """
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
    with warnings.catch_warnings():  # high Pareto k is reported by bs.compare; stacking still uses the estimate
        warnings.simplefilter("ignore")
        weights = az.compare({n: fits[n].idata for n in names}, ic="loo", method="stacking")["weight"]
    w = np.array([max(float(weights[n]), 0.0) for n in names])
    w = w / w.sum()
    model = np.random.default_rng(seed).choice(len(names), size=shape, p=w)

    def mix(group: str) -> np.ndarray:
        values = np.stack([fits[n].idata[group][OBSERVED].values for n in names])
        return np.take_along_axis(values, model[None, :, :, None], axis=0)[0]

    posterior = {"model": model, **{f"{n}{_SEP}{p}": fits[n].idata.posterior[p].values
                                    for n in names for p in fits[n].latents}}
    stats = {f"{n}{_SEP}{s}": fits[n].idata.sample_stats[s].values for n in names for s in _STATS
             if s in fits[n].idata.sample_stats}
    constant = {k: v.values for k, v in first.idata.constant_data.items()}
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        log_likelihood={OBSERVED: mix("log_likelihood")},
        posterior_predictive={OBSERVED: mix("posterior_predictive")},
        observed_data={OBSERVED: first.idata.observed_data[OBSERVED].values},
        constant_data=constant,
        coords={"run": np.arange(first.data.n)},
        dims={OBSERVED: ["run"], **{k: ["run"] for k in constant}},
    )
    settings = dataclasses.replace(first.settings, seed=seed)
    return StackedResult(idata=idata, data=first.data, settings=settings, members=dict(fits),
                         weights=dict(zip(names, w.tolist())))
