"""Extrapolation checks: refit without the largest runs and see whether they land in their intervals.

A scaling law is used to extrapolate, so the honest test of a fit is whether
its predictive intervals hold beyond the data. :func:`validate` holds out the
runs with the largest compute (or N, or D), refits on the rest with the same
law, likelihood, priors and sampler settings, and reports how often the
held-out losses fall inside their posterior predictive intervals.
:func:`backtest` does so rolling origin, over several cut points, and scores
each cut: 50% and 90% coverage, the width of the 90% band, the interval score
and the log predictive density; it says plainly when the bands under-cover.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from .data import DataError, ScalingData, as_data
from .extrapolation import CUTS, log_density, rolling_record, structural_backtest_record
from .fit import fit as fit_law
from .posterior import LEVEL, FitResult

__all__ = ["Validation", "validate", "HOLDOUTS", "Backtest", "backtest", "scores", "UNDER_COVERAGE"]

UNDER_COVERAGE = 0.8
"""Pooled 90% coverage below this is reported as under-coverage."""

HOLDOUTS = {"largest compute": "C", "largest params": "N", "largest tokens": "D"}
"""Names of the hold-out rules and the covariate each ranks runs by."""


@dataclasses.dataclass(frozen=True)
class Validation:
    """Held-out runs against the predictions of a fit that did not see them.

    Attributes:
        fit: the fit on the training runs.
        table: one row per held-out run: covariates, observed ``loss``,
            predicted ``median``, ``pred_lower``/``pred_upper`` (a new run's
            loss at ``level``), ``inside``, and ``log_error`` (log observed −
            log median).
        level: credible level of the intervals.
    """

    fit: FitResult
    table: pd.DataFrame
    level: float

    @property
    def coverage(self) -> float:
        """Fraction of held-out runs inside their predictive interval (nominal: ``level``)."""
        return float(self.table["inside"].mean())

    def plot(self, ax: Axes | None = None) -> Axes:
        """Observed against predicted loss of the held-out runs, with the predictive intervals."""
        ax = ax if ax is not None else plt.subplots(figsize=(5, 5))[1]
        t = self.table
        for inside, color, label in ((True, "C0", "inside"), (False, "C3", "outside")):
            part = t[t["inside"] == inside]
            ax.errorbar(part["median"], part["loss"], xerr=[part["median"] - part["pred_lower"],
                        part["pred_upper"] - part["median"]], fmt="o", color=color, ms=4, capsize=2,
                        label=f"{label} ({len(part)})")
        lims = [t[["loss", "pred_lower"]].min().min(), t[["loss", "pred_upper"]].max().max()]
        ax.plot(lims, lims, color="0.5", lw=1)
        ax.set(xlabel="predicted loss (median)", ylabel="observed loss",
               title=f"held-out runs: {self.coverage:.0%} inside {self.level:.0%} intervals")
        ax.legend(fontsize="small")
        return ax


def validate(
    fit_or_data: FitResult | ScalingData | pd.DataFrame,
    holdout: str | np.ndarray = "largest compute",
    fraction: float = 0.2,
    level: float = LEVEL,
    **fit_options: Any,
) -> Validation:
    """Refit without the largest runs and check their losses against the predictive intervals.

    Args:
        fit_or_data: a fit (its data, law, likelihood, priors and sampler
            settings are reused) or data (then ``fit_options`` choose the law etc.).
        holdout: ``"largest compute"``, ``"largest params"``, ``"largest tokens"``,
            or a boolean mask of the runs to hold out.
        fraction: share of runs held out by the named rules (0 < fraction < 1).
        level: credible level of the predictive intervals.
        **fit_options: options of :func:`bayescale.fit`, overriding the fit's.

    Returns:
        :class:`Validation`.
    """
    if isinstance(fit_or_data, FitResult):
        original = fit_or_data
        data = original.data
        options = {
            "law": original.law,
            "likelihood": original.spec.likelihood,
            "priors": dict(original.spec.priors),
            "settings": original.settings,
        }
    else:
        data = as_data(fit_or_data)
        options = {}
    options.update(fit_options)
    held = _holdout_mask(data, holdout, fraction)
    train_fit = fit_law(data.subset(~held), **options)
    test = data.subset(held)
    covs = {c: test.covariate(c) for c in train_fit.law.covariates}
    pred = train_fit.predict(**covs, level=level, seed=train_fit.seed)
    shown = {c: test.covariate(c) for c in test.available()}
    table = pd.DataFrame({**shown, "loss": test.loss}, index=test.index)
    table["median"] = pred["median"].to_numpy()
    table["pred_lower"], table["pred_upper"] = pred["pred_lower"].to_numpy(), pred["pred_upper"].to_numpy()
    table["inside"] = (table["loss"] >= table["pred_lower"]) & (table["loss"] <= table["pred_upper"])
    table["log_error"] = np.log(table["loss"] / table["median"])
    return Validation(fit=train_fit, table=table, level=level)


def _holdout_mask(data: ScalingData, holdout: str | np.ndarray, fraction: float) -> np.ndarray:
    if isinstance(holdout, str):
        if holdout not in HOLDOUTS:
            raise ValueError(f"holdout must be one of {list(HOLDOUTS)} or a boolean mask, got {holdout!r}")
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        key = data.covariate(HOLDOUTS[holdout])
        count = int(round(fraction * data.n))
        if count < 1:
            raise DataError(f"fraction {fraction} of {data.n} runs holds out none; raise it")
        mask = np.zeros(data.n, dtype=bool)
        mask[np.argsort(key, kind="stable")[-count:]] = True
        return mask
    mask = np.asarray(holdout)
    if mask.dtype != bool or mask.shape != (data.n,):
        raise ValueError(f"holdout mask must be booleans of shape ({data.n},), got {mask.dtype} {mask.shape}")
    if not mask.any() or mask.all():
        raise ValueError("holdout mask must hold out some runs and keep some")
    return mask


def scores(log_draws: np.ndarray, log_observed: np.ndarray) -> dict[str, float]:
    """Scores of predictive draws ``(draws, points)`` of log-loss against the observed log-losses ``(points,)``.

    Returns:
        ``n``; ``cover50`` and ``cover90`` (share inside the central intervals);
        ``width90`` (median width of the 90% band over the median prediction, on the
        loss scale); ``interval_score`` (Gneiting and Raftery 2007, 90%, on log-loss:
        width plus 20 times the miss, mean over points; lower is better); ``lpd``
        (mean log predictive density of log-loss, Gaussian KDE of the draws; higher is
        better); ``max_rel_error`` of the median prediction.
    """
    y = np.asarray(log_observed, dtype=float)
    lo50, hi50, lo90, med, hi90 = np.quantile(log_draws, [0.25, 0.75, 0.05, 0.5, 0.95], axis=0)
    interval = (hi90 - lo90) + 20 * np.maximum(lo90 - y, 0) + 20 * np.maximum(y - hi90, 0)
    return {
        "n": int(y.size),
        "cover50": float(np.mean((lo50 <= y) & (y <= hi50))),
        "cover90": float(np.mean((lo90 <= y) & (y <= hi90))),
        "width90": float(np.median(np.exp(hi90) - np.exp(lo90)) / np.median(np.exp(med))),
        "interval_score": float(np.mean(interval)),
        "lpd": float(np.mean(log_density(log_draws, y))),
        "max_rel_error": float(np.max(np.abs(np.exp(y - med) - 1))),
    }


@dataclasses.dataclass(frozen=True)
class Backtest:
    """Rolling-origin extrapolation scores of a model.

    Attributes:
        table: one row per cut (the quantile of the scale covariate below which runs
            were fitted): ``train`` runs, and the :func:`scores` of the held-out runs.
        structural: whether each refit carried the structural error.
    """

    table: pd.DataFrame
    structural: bool

    @property
    def coverage(self) -> float:
        """90% coverage pooled over every cut's held-out runs."""
        return float(np.average(self.table["cover90"], weights=self.table["n"]))

    @property
    def under_covers(self) -> bool:
        """Whether the pooled 90% coverage is below :data:`UNDER_COVERAGE`."""
        return self.coverage < UNDER_COVERAGE

    @property
    def message(self) -> str:
        """One plain sentence on whether the bands held."""
        held = int(self.table["n"].sum())
        text = f"90% bands covered {self.coverage:.0%} of {held} held-out runs over {len(self.table)} cuts"
        if not self.under_covers:
            return text + ": they held."
        advice = "" if self.structural else "; use bs.extrapolation.structural_error for planning"
        return text + f": they UNDER-COVER (below {UNDER_COVERAGE:.0%}){advice}."


def backtest(fit: FitResult, cuts: Sequence[float] = CUTS, structural: bool = False) -> Backtest:
    """Rolling-origin validation: refit below each cut, score the runs above it.

    Args:
        fit: the fit whose model (law, likelihood, priors, settings) is checked.
        cuts: quantiles of the scale covariate (C for laws in N and D, else the law's
            covariate) at which to cut.
        structural: give each refit the structural error before scoring.

    Returns:
        :class:`Backtest`; its ``message`` says plainly when the bands under-cover.
    """
    record = structural_backtest_record(fit, cuts) if structural else rolling_record({0: fit}, cuts)[0]
    rows = [{"cut": r.cut, "train": r.fit.data.n, **scores(r.draws, np.log(fit.data.loss[r.held]))} for r in record]
    if not rows:
        raise DataError(f"no cut in {list(cuts)} leaves enough runs to fit {fit.law.name!r} and some to hold out")
    return Backtest(table=pd.DataFrame(rows).set_index("cut"), structural=structural)

