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
import functools
from collections.abc import Sequence
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd

from .allocation import allocation_exponents, compute_optimal
from .data import DataError, ScalingData, as_data
from .inference import check_sampler_args, sample_numpyro
from .likelihoods import Likelihood, get_likelihood
from .results import LEVEL, Diagnostics, FitResult, describe_draws, diagnose, table_of_draws, warn_unconverged
from .sampling import NUTSConfig

__all__ = ["IsoFlopResult", "fit_isoflop"]

_LATENTS = ("log_n_opt", "loss_opt", "curvature", "sigma")


def _model(x: jax.Array, index: jax.Array, log_y: jax.Array | None, loc0: jax.Array, scale0: jax.Array,
           log_floor: jax.Array, likelihood: Likelihood) -> None:
    with numpyro.plate("budget", loc0.shape[0]):
        log_n_opt = numpyro.sample("log_n_opt", dist.Normal(loc0, scale0))
        loss_opt = numpyro.sample("loss_opt", dist.LogNormal(log_floor, 0.5))
        curvature = numpyro.sample("curvature", dist.LogNormal(jnp.log(0.05), 1.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(jnp.log(0.01), 1.0))
    mean = loss_opt[index] + curvature[index] * (x - log_n_opt[index]) ** 2
    with numpyro.plate("run", x.shape[0]):
        numpyro.sample("log_loss", likelihood.distribution(jnp.log(mean), sigma), obs=log_y)


@dataclasses.dataclass(frozen=True, eq=False)
class IsoFlopResult:
    """Posterior of a Bayesian iso-FLOP analysis.

    Attributes:
        idata: ``arviz.InferenceData``; posterior ``log_n_opt``, ``loss_opt``,
            ``curvature`` (dim ``budget``) and ``sigma``.
        compute: the budgets in FLOPs, one per ``budget`` coordinate.
        data: the runs fitted.
        flops_per_token: k in ``C = k·N·D``.
    """

    idata: az.InferenceData
    compute: np.ndarray
    data: ScalingData
    flops_per_token: float

    @functools.cached_property
    def diagnostics(self) -> Diagnostics:
        """R-hat, bulk ESS and divergences of the per-budget parabolas."""
        return diagnose(self.idata, _LATENTS)

    def _draws(self, name: str) -> np.ndarray:
        values = self.idata.posterior[name].values
        return values.reshape(-1, *values.shape[2:])

    def exponent_draws(self) -> dict[str, np.ndarray]:
        """Draws of ``a`` and the intercept ``log N_opt`` at ``C = 1`` FLOP of the line ``log N_opt = g + a·log C``."""
        log_c = np.log(self.compute)
        centred = log_c - log_c.mean()
        m = self._draws("log_n_opt")
        a = (m - m.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
        return {"a": a, "intercept": m.mean(axis=1) - a * log_c.mean()}

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Per budget: ``N_opt``, ``D_opt`` (= C/(k·N_opt)), ``tokens_per_param`` and ``loss_opt`` with intervals."""
        n = np.exp(self._draws("log_n_opt"))
        d = self.compute / (self.flops_per_token * n)
        draws = {"N_opt": n, "D_opt": d, "tokens_per_param": d / n, "loss_opt": self._draws("loss_opt")}
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
    num_warmup: int = 1000,
    num_samples: int = 2000,
    num_chains: int = 4,
    seed: int = 0,
    progress: bool = False,
    **columns: Any,
) -> IsoFlopResult:
    """Fit a parabola in log N to each compute budget's runs and a power law through the optima.

    Args:
        data: runs with N, loss and a budget per run: :class:`ScalingData` with
            ``group`` set, or a table (then ``group`` names the budget column;
            with no group column, runs are grouped by their compute ``C``).
        group: column holding each run's budget in FLOPs.
        likelihood: observation model on log-loss (default Student-t, nu = 4).
        flops_per_token: k in ``C = k·N·D``, for ``D_opt``.
        num_warmup, num_samples, num_chains: NUTS settings (dense mass matrix,
            target acceptance 0.95). The default 2000 draws per chain are
            cheap here and needed: with three or four runs per budget the
            noise scale is weakly identified and mixes slowly.
        seed: PRNG seed; the same seed gives the same draws.
        progress: show NumPyro's progress bar.
        **columns: column names for :meth:`ScalingData.from_table`.

    Returns:
        An :class:`IsoFlopResult`; diagnostics warn as for :func:`bayescale.fit`.

    Raises:
        DataError: a budget with fewer than three runs (a parabola needs three),
            fewer than two budgets, runs without N, or budget labels that are
            not positive numbers.
    """
    check_sampler_args(num_warmup, num_samples, num_chains, seed)
    if not isinstance(data, ScalingData):
        data = as_data(data, group=group, **columns)
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
    model = functools.partial(_model, likelihood=get_likelihood(likelihood))
    config = NUTSConfig(num_warmup, num_samples, target_accept_prob=0.95, dense_mass=True)
    with jax.enable_x64(True):
        args = (jnp.asarray(x), jnp.asarray(index), jnp.asarray(np.log(loss)), jnp.asarray(loc0),
                jnp.asarray(scale0), jnp.asarray(floor))
        idata = sample_numpyro(model, args, config, num_chains, seed, progress, ("budget", compute))
    result = IsoFlopResult(idata=idata, compute=compute, data=data, flops_per_token=float(flops_per_token))
    warn_unconverged(result.diagnostics, "iso-FLOP fit")
    return result
