"""Iso-FLOP analysis (Chinchilla's approach 2), Bayesian.

Runs are grouped by compute budget. Within budget ``j`` the loss is modelled as
a parabola in ``x = log N``,

    log L_i ~ Likelihood(log(L_j + c_j·(x_i − m_j)²), sigma),

so ``N_opt(C_j) = exp(m_j)`` and ``L_j`` is the loss at that optimum, fitted
jointly for all budgets with one noise scale. The exponent ``a`` of
``N_opt ∝ C^a`` is the least-squares slope of ``m_j`` against ``log C_j``,
computed draw by draw, so its interval carries the uncertainty of every
per-budget optimum. With ``C = k·N·D``, ``D_opt ∝ C^b`` with ``b = 1 − a``.

The parabola is the published approach's approximation of the iso-FLOP curve;
it is accurate when the model sizes bracket the optimum. Priors (weak, on the
scale of each budget's data): ``m_j ~ Normal(mean x_j, range x_j)``,
``c_j ~ LogNormal(log 0.05, 1)`` (nats per squared e-fold of N),
``L_j ~ LogNormal(log min L_j, 0.5)``, ``sigma ~ LogNormal(log 0.01, 1)`` on
log-loss (kept away from zero: with three or four runs per budget the residual
degrees of freedom are few, and a half-normal noise prior made a funnel with
divergences on the PaLM 2 table).

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import arviz as az
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd

from .allocation import allocation_exponents, compute_optimal
from .data import DataError, ScalingData, as_data, check_positive
from .fit import sample_model
from .likelihoods import Likelihood, get_likelihood
from .model import OBSERVED
from .posterior import (
    LEVEL,
    FitResult,
    Posterior,
    constant_data,
    data_from_idata,
    describe_draws,
    settings_from_meta,
    table_of_draws,
    warn_unconverged,
)
from .sampling import SamplerSettings, sampler_settings

__all__ = ["IsoFlopResult", "fit_isoflop"]


class IsoFlopData(NamedTuple):
    """Arrays of the iso-FLOP model: log N and budget index per run, log loss, and per-budget prior scales."""

    x: Any
    index: Any
    log_y: Any
    loc0: Any
    scale0: Any
    log_floor: Any


@dataclasses.dataclass(frozen=True)
class IsoFlopModel:
    """The NumPyro model of the iso-FLOP parabolas, ``model(data: IsoFlopData)``."""

    likelihood: Likelihood

    def __call__(self, data: IsoFlopData) -> None:
        with numpyro.plate("budget", data.loc0.shape[0]):
            log_n_opt = numpyro.sample("log_n_opt", dist.Normal(data.loc0, data.scale0))
            loss_opt = numpyro.sample("loss_opt", dist.LogNormal(data.log_floor, 0.5))
            curvature = numpyro.sample("curvature", dist.LogNormal(jnp.log(0.05), 1.0))
        sigma = numpyro.sample("sigma", dist.LogNormal(jnp.log(0.01), 1.0))
        mean = loss_opt[data.index] + curvature[data.index] * (data.x - log_n_opt[data.index]) ** 2
        with numpyro.plate("run", data.x.shape[0]):
            numpyro.sample(OBSERVED, self.likelihood.distribution(jnp.log(mean), sigma), obs=data.log_y)


@dataclasses.dataclass(frozen=True, eq=False)
class IsoFlopResult(Posterior):
    """Posterior of a Bayesian iso-FLOP analysis.

    Attributes:
        idata: ``arviz.InferenceData``; posterior ``log_n_opt``, ``loss_opt``,
            ``curvature`` (dim ``budget``) and ``sigma``, with log-likelihood,
            predictive, observed and constant data of every run.
        data: the runs fitted.
        settings: sampler settings, seed included.
        compute: the budgets in FLOPs, one per ``budget`` coordinate.
        likelihood: the observation model.
        flops_per_token: k in ``C = k·N·D``.
    """

    compute: np.ndarray = dataclasses.field(kw_only=True)
    likelihood: Likelihood = dataclasses.field(kw_only=True)
    flops_per_token: float = dataclasses.field(kw_only=True)

    kind: ClassVar[str] = "isoflop"
    latents: ClassVar[tuple[str, ...]] = ("log_n_opt", "loss_opt", "curvature", "sigma")

    def predict_draws(self, N: Any, C: Any) -> np.ndarray:
        """Posterior draws ``(draws, points)`` of the loss (nats) of N parameters on a fitted budget C (FLOPs).

        The parabolas describe only the budgets fitted; ``C`` must be one of them.
        """
        n, c = np.broadcast_arrays(np.atleast_1d(np.asarray(N, dtype=float)), np.atleast_1d(np.asarray(C, dtype=float)))
        check_positive(n.copy(), range(n.size), "N", "prediction input")
        budget = np.searchsorted(self.compute, c)
        known = (budget < self.compute.size) & np.isclose(self.compute[np.minimum(budget, self.compute.size - 1)], c)
        if not known.all():
            raise ValueError(f"C must be one of the fitted budgets {self.compute.tolist()}; got {c[~known].tolist()}")
        m, loss, curv = (self.draws(v)[:, budget] for v in ("log_n_opt", "loss_opt", "curvature"))
        return loss + curv * (np.log(n) - m) ** 2

    def predict(self, N: Any, C: Any, level: float = LEVEL) -> pd.DataFrame:
        """Median and interval at ``level`` of the iso-FLOP curve's loss (nats) at (N, C), one row per point."""
        draws = self.predict_draws(N, C)
        n, c = np.broadcast_arrays(np.atleast_1d(np.asarray(N, dtype=float)), np.atleast_1d(np.asarray(C, dtype=float)))
        lo, med, hi = np.quantile(draws, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
        return pd.DataFrame({"N": n, "C": c, "median": med, "lower": lo, "upper": hi})

    def _meta(self) -> dict[str, Any]:
        return {
            "compute": self.compute.tolist(),
            "likelihood": {"name": self.likelihood.name, "nu": self.likelihood.nu},
            "flops_per_token": self.flops_per_token,
        }

    @classmethod
    def _restore(cls, idata: az.InferenceData, meta: Mapping[str, Any], law: Any) -> IsoFlopResult:
        return cls(
            idata=idata,
            data=data_from_idata(idata, meta),
            settings=settings_from_meta(meta),
            compute=np.asarray(meta["compute"], dtype=float),
            likelihood=Likelihood(meta["likelihood"]["name"], meta["likelihood"]["nu"]),
            flops_per_token=float(meta["flops_per_token"]),
        )

    def exponent_draws(self) -> dict[str, np.ndarray]:
        """Draws of ``a`` and the intercept ``log N_opt`` at ``C = 1`` FLOP of the line ``log N_opt = g + a·log C``."""
        log_c = np.log(self.compute)
        centred = log_c - log_c.mean()
        m = self.draws("log_n_opt")
        a = (m - m.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
        return {"a": a, "intercept": m.mean(axis=1) - a * log_c.mean()}

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Per budget: ``N_opt``, ``D_opt`` (= C/(k·N_opt)), ``tokens_per_param`` and ``loss_opt`` with intervals."""
        n = np.exp(self.draws("log_n_opt"))
        d = self.compute / (self.flops_per_token * n)
        draws = {"N_opt": n, "D_opt": d, "tokens_per_param": d / n, "loss_opt": self.draws("loss_opt")}
        return table_of_draws(draws, pd.Index(self.compute, name="compute"), level)

    def exponents(self, level: float = LEVEL) -> pd.DataFrame:
        """``a`` in ``N_opt ∝ C^a`` and ``b = 1 − a`` in ``D_opt ∝ C^b``, with intervals."""
        if self.compute.size < 2:
            raise ValueError("the exponent needs at least two budgets")
        a = self.exponent_draws()["a"]
        return describe_draws({"a": a, "b": 1.0 - a}, level)

    def n_opt(self, compute: Sequence[float] | np.ndarray, level: float = LEVEL) -> pd.DataFrame:
        """``N_opt`` at any budget from the fitted power law through the per-budget optima (extrapolation)."""
        c = np.atleast_1d(np.asarray(compute, dtype=float))
        if c.ndim != 1 or not np.all(np.isfinite(c) & (c > 0)):
            raise ValueError(f"compute must be positive finite FLOPs, got {compute!r}")
        line = self.exponent_draws()
        n = np.exp(line["intercept"][:, None] + line["a"][:, None] * np.log(c))
        return table_of_draws({"N_opt": n}, pd.Index(c, name="compute"), level)

    def compare(self, fit: FitResult, level: float = LEVEL) -> pd.DataFrame:
        """The iso-FLOP answer beside a parametric fit's: ``N_opt`` per budget and the exponent ``a``.

        Returns:
            DataFrame indexed by budget (FLOPs) plus a last row ``"a"``, with
            column groups ``isoflop`` and ``parametric`` (median and interval).
        """
        iso = self.summary(level)["N_opt"]
        para = compute_optimal(fit, self.compute, self.flops_per_token, level)["N_opt"]
        table = pd.concat({"isoflop": iso, "parametric": para}, axis=1)
        exps = pd.concat(
            {"isoflop": self.exponents(level).loc[["a"]], "parametric": allocation_exponents(fit, level).loc[["a"]]},
            axis=1,
        )
        exps = exps.drop(columns=[(s, c) for s in ("isoflop", "parametric") for c in ("mean", "sd")])
        table.index = table.index.astype(object)
        return pd.concat([table, exps])


def fit_isoflop(
    data: ScalingData | pd.DataFrame | str,
    group: str | None = None,
    *,
    likelihood: str | Likelihood = "student_t",
    flops_per_token: float = 6.0,
    settings: SamplerSettings | None = None,
    **options: Any,
) -> IsoFlopResult:
    """Fit a parabola in log N to each compute budget's runs and a power law through the optima.

    Args:
        data: runs with N, loss and a budget per run: :class:`ScalingData` with
            ``group`` set, or a table (then ``group`` names the budget column;
            with no group column, runs are grouped by their compute ``C``).
        group: column holding each run's budget in FLOPs.
        likelihood: observation model on log-loss (default Student-t, nu = 4).
        flops_per_token: k in ``C = k·N·D``, for ``D_opt``.
        settings: sampler settings, as for :func:`bayescale.fit`. With three or
            four runs per budget the noise scale is weakly identified and mixes
            slowly; more draws (``num_samples=2000``) are cheap here.
        **options: :class:`~bayescale.sampling.SamplerSettings` fields as keywords,
            then column names for :meth:`ScalingData.from_table`.

    Returns:
        An :class:`IsoFlopResult`; diagnostics warn as for :func:`bayescale.fit`.

    Raises:
        DataError: a budget with fewer than three runs (a parabola needs three),
            fewer than two budgets, runs without N, or budget labels that are
            not positive numbers.
    """
    settings = sampler_settings(settings, options)
    lik = get_likelihood(likelihood)
    if not isinstance(data, ScalingData):
        data = as_data(data, group=group, **options)
    if data.N is None:
        raise DataError("iso-FLOP analysis needs model sizes N (the params column)")
    labels = data.group if data.group is not None else data.C
    if labels is None:
        raise DataError("iso-FLOP analysis needs a budget per run: a group column of FLOPs, or C")
    try:
        budget_of_run = np.asarray(labels, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"budget labels must be FLOPs (numbers); got {sorted(set(map(str, labels)))[:5]}") from None
    if not np.all(np.isfinite(budget_of_run) & (budget_of_run > 0)):
        raise DataError("budget labels must be positive finite FLOPs")
    compute, index = np.unique(budget_of_run, return_inverse=True)
    counts = np.bincount(index, minlength=compute.size)
    if compute.size < 2:
        raise DataError(f"iso-FLOP analysis needs at least two budgets, got {compute.size}")
    if (counts < 3).any():
        few = {f"{c:g}": int(k) for c, k in zip(compute, counts) if k < 3}
        raise DataError(f"each budget needs at least three runs for a parabola; budgets with fewer: {few}")
    x = np.log(data.N)
    loss = np.asarray(data.loss, dtype=float)
    loc0 = np.array([x[index == j].mean() for j in range(compute.size)])
    scale0 = np.array([max(np.ptp(x[index == j]), 0.1) for j in range(compute.size)])
    floor = np.log([loss[index == j].min() for j in range(compute.size)])
    model_input = IsoFlopData(x=x, index=index, log_y=np.log(loss), loc0=loc0, scale0=scale0, log_floor=floor)
    idata = sample_model(IsoFlopModel(lik), model_input, settings, observed=model_input.log_y,
                         constant=constant_data(data), dim=("budget", compute), desc="iso-FLOP fit")
    result = IsoFlopResult(idata=idata, data=data, settings=settings, compute=compute, likelihood=lik,
                           flops_per_token=float(flops_per_token))
    warn_unconverged(result.diagnostics, "iso-FLOP fit")
    return result
