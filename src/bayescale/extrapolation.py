"""Structural error: bands that widen with the distance of a prediction from the data.

A law never fits real runs exactly, and its misfit, not the noise, dominates the
error of an extrapolation (on real learning curves the fitted noise is 0.3-0.5%,
the extrapolation error 2-3%). :func:`structural_error` adds to a fit a
discrepancy ``delta(x)`` on the log target that is zero inside the data and grows
like a random walk beyond it,

    delta(x) ~ Normal(0, tau^2 · d(x)),

where ``d(x)`` is how far ``x`` lies beyond the fitted runs, in e-folds: the
Euclidean norm over the law's covariates of ``max(0, log x_c - max log x_c)``.

The scale ``tau`` (log-loss per square-root e-fold) is learned from the data's
own extrapolation record, rolling origin: for several cut points the same model
(law, likelihood, priors) is refitted to the runs below the cut, and for each run
above it the error ``e`` of the predictive mean of its log-loss, the variances of
a new run's noise ``n`` and of the refit's mean curve ``c`` there, and its distance
``d`` are kept. Then ``e ~ Normal(0, n + a·c + tau^2 d)``, averaged over ``a`` in
{0, 1} (:func:`misfit_posterior`): when the law holds, a refit's parameter
uncertainty explains part of its error (``a = 1``, and ``tau`` measures what the
Bayesian bands miss); under a law that misfits, the spread of its mean curve
measures nothing (it shrinks as runs are added, the misfit does not), and the whole
error of the mean curve is structural (``a = 0``). Each alone fails one of the two
(tested on simulated records; on ColPret's real curves ``a = 1`` alone left bands
too narrow at every level, and ``a = 0`` alone widened bands 1.85x on data from the
law itself: ``benchmarks/RESULTS.md``). ``tau`` gets a grid posterior under a
log-uniform prior on :data:`MISFIT_PRIOR_RANGE` (its scale is unknown over orders of magnitude, and where
the record shows no misfit the posterior shrinks towards the lower end instead of
spreading over the prior's flat part), each cut's runs weighted by one over the
number of cuts (the cuts reuse the same runs).

The result is the same :class:`~bayescale.posterior.FitResult` with a posterior
variable ``misfit_scale``; its ``predict`` and ``predict_draws`` include
``delta`` (in the mean curve and in a new run's band) and it saves and loads like
any fit. Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.stats

from .data import DataError, ScalingData
from .laws import Law
from .batch import BatchResult, fit_batch
from .model import bucket_size
from .posterior import ConvergenceWarning, FitResult, distance, with_misfit
from .sampling import SamplerSettings
from .store import data_hash

__all__ = [
    "structural_error",
    "rolling_record",
    "structural_backtest_record",
    "Refit",
    "cut_masks",
    "refit_settings",
    "log_predictive",
    "scale_covariate",
    "log_density",
    "misfit_posterior",
    "misfit_draws",
    "MISFIT_PRIOR_RANGE",
    "MISFIT_GRID",
    "CUTS",
]

MISFIT_PRIOR_RANGE = (1e-4, 1.0)
"""Support of the log-uniform prior on ``tau`` (log-loss per square-root e-fold)."""
CUTS = (0.4, 0.5, 0.6, 0.7, 0.8)
"""Default cut points: quantiles of the scale covariate below which runs are fitted."""
MISFIT_GRID = np.geomspace(*MISFIT_PRIOR_RANGE, 600)
"""Grid of ``tau`` values its posterior is computed on (log-spaced over :data:`MISFIT_PRIOR_RANGE`)."""


def scale_covariate(law: Law) -> str:
    """The covariate runs are ordered by for rolling-origin cuts: C for laws in N and D (or C), else the law's first."""
    if "C" in law.covariates or {"N", "D"} <= set(law.covariates):
        return "C"
    return law.covariates[0]


def log_density(log_draws: np.ndarray, log_observed: np.ndarray) -> np.ndarray:
    """Log predictive density of each observed log-loss ``(points,)`` under its draws ``(draws, points)``.

    A Gaussian kernel density estimate of each point's draws (Scott's bandwidth), so it
    applies to any predictive (noise, parameter uncertainty, structural error, mixtures).
    """
    y = np.asarray(log_observed, dtype=float)
    return np.array([np.log(scipy.stats.gaussian_kde(log_draws[:, j])(y[j])[0] + 1e-300) for j in range(y.size)])


def cut_masks(data: ScalingData, law: Law, cuts: Sequence[float], min_train: int) -> Iterator[tuple[float, np.ndarray]]:
    """For each cut quantile ``q`` of the scale covariate: the mask of the runs at or below it.

    Cuts that leave fewer than ``min_train`` runs below or none above are skipped.

    Raises:
        ValueError: a cut outside (0, 1).
    """
    if any(not 0 < q < 1 for q in cuts):
        raise ValueError(f"cuts must be quantiles in (0, 1), got {list(cuts)}")
    order_by = data.covariate(scale_covariate(law))
    for q in cuts:
        below = order_by <= np.quantile(order_by, q)
        if below.sum() >= min_train and not below.all():
            yield q, below


def refit_settings(settings: SamplerSettings) -> SamplerSettings:
    """Settings of rolling-origin refits: the fit's warmup and draws (so they run the sampler compiled for the fit)
    on one chain. A refit serves only the mean and variance of its predictive at the held-out runs; sampling
    the refits is the planning mode's cost (240 runs: 2.9x a plain fit with four chains of 500 draws per
    refit, 1.9x with one chain of the fit's 1000; benchmarks/RESULTS.md)."""
    return dataclasses.replace(settings, num_chains=1, progress=False)


class Refit(NamedTuple):
    """One rolling-origin refit of a fit.

    Attributes:
        cut: the quantile of the scale covariate at or below which runs were refitted.
        fit: the refit (the same model, :func:`refit_settings`, the fit's seed).
        held: mask of the fit's runs above the cut.
        draws: the refit's predictive draws of the held-out runs' log-loss ``(draws, held runs)``
            (a new run's, noise included, seeded by the fit's seed).
    """

    cut: float
    fit: FitResult
    held: np.ndarray
    draws: np.ndarray


def rolling_record(fits: Mapping[Any, FitResult], cuts: Sequence[float] = CUTS) -> dict[Any, list[Refit]]:
    """The rolling-origin refits of every fit at every cut, run as one :func:`~bayescale.fit_batch` per model.

    This is the one refit loop of the package: the backtest, the structural error, ``stack``
    and ``stack_batch`` all read it. The refit of fit ``label`` below cut ``q`` is group
    ``(label, q)`` of the batch, with the fit's own seed and padded to the fit's shape bucket (the
    same posterior as ``bs.fit(runs_below, seed=fit.seed)`` at :func:`refit_settings`, computed
    on the sampler compiled for the fit): a fit's record depends on nothing but the fit, not on
    the fits beside it. Fits of one model (law, likelihood, priors, sampler settings but the
    seed) and shape bucket share one batch.

    Args:
        fits: label -> fit (a single fit, or the members of a batch).
        cuts: quantiles of the scale covariate (:func:`scale_covariate`); a cut that leaves
            no more runs below it than the law has latents plus one, or none above it, is skipped.

    The records of the last :data:`_KEEP` single fits are kept in memory, keyed by what they
    depend on (model, sampler settings with seed, the runs' numbers, cuts), so that a fit's
    structural error, stacking and backtest run its refits once.

    Returns:
        label -> its refits in the order of ``cuts`` (empty when no cut leaves enough runs).
        A refit the sampler failed on is left out with a warning naming it.
    """
    if len(fits) != 1:
        return _run_record(fits, cuts)[0]
    (label, fit), = fits.items()
    key = _record_key(fit, cuts)
    if key in _KEPT_RECORDS:
        _KEPT_RECORDS.move_to_end(key)
        return {label: list(_KEPT_RECORDS[key])}
    record, failed = _run_record(fits, cuts)
    if not failed:
        _KEPT_RECORDS[key] = tuple(record[label])
        while len(_KEPT_RECORDS) > _KEEP:
            _KEPT_RECORDS.popitem(last=False)
    return record


_KEEP = 8
"""Single fits whose rolling refits stay in memory (least recently used out first): a fit's structural
error, its stacking and its backtest read the same refits, which depend on nothing but the fit's model,
sampler settings with seed, and runs (:func:`_record_key`), so a second reader reuses them instead of
refitting. Records of several fits at once (batches) and records with a failed refit are not kept."""
_KEPT_RECORDS: collections.OrderedDict[tuple[Any, ...], tuple[Refit, ...]] = collections.OrderedDict()


def _record_key(fit: FitResult, cuts: Sequence[float]) -> tuple[Any, ...]:
    """What a fit's rolling refits depend on: model, refit settings (seed included), the runs' numbers, cuts."""
    return fit.spec, refit_settings(fit.settings), data_hash(fit.data), tuple(float(q) for q in cuts)


def _run_record(fits: Mapping[Any, FitResult], cuts: Sequence[float]) -> tuple[dict[Any, list[Refit]], set[Any]]:
    """:func:`rolling_record` without the kept records: the refits, as one batch per model, and the labels
    of the fits a refit failed for."""
    models: dict[tuple[Any, SamplerSettings, int], dict[tuple[Any, float], np.ndarray]] = {}
    for label, fit in fits.items():
        key = (fit.spec, dataclasses.replace(refit_settings(fit.settings), seed=0), bucket_size(fit.data.n))
        for q, below in cut_masks(fit.data, fit.law, cuts, len(fit.spec.latents) + 2):
            models.setdefault(key, {})[(label, q)] = below
    refits: dict[tuple[Any, float], FitResult] = {}
    failed: set[Any] = set()
    for (spec, settings, size), masks in models.items():
        with warnings.catch_warnings():  # a small refit that mixes less well still scores its extrapolation
            warnings.simplefilter("ignore", ConvergenceWarning)
            batch = fit_batch({key: fits[key[0]].data.subset(below) for key, below in masks.items()},
                              law=spec.law, likelihood=spec.likelihood, priors=dict(spec.priors), settings=settings,
                              seeds={key: fits[key[0]].seed for key in masks}, pad_to=size)
        failed.update(key[0] for key in batch.failures)
        for key, why in batch.failures.items():
            warnings.warn(f"rolling-origin refit of {key[0]!r} below cut {key[1]} failed and is left out: {why}",
                          stacklevel=2)
        refits.update(batch.results)
    record: dict[Any, list[Refit]] = {label: [] for label in fits}
    for masks in models.values():
        for (label, q), below in masks.items():
            if (label, q) in refits:
                fit, refit = fits[label], refits[(label, q)]
                draws, held = log_predictive(refit, fit.data.subset(~below), fit.seed), ~below
                draws.setflags(write=False)  # records may be kept and read again (_KEPT_RECORDS)
                held.setflags(write=False)
                record[label].append(Refit(q, refit, held, draws))
    return record, failed


def structural_backtest_record(fit: FitResult, cuts: Sequence[float] = CUTS) -> list[Refit]:
    """The fit's rolling refits, each with its own structural error learned from its own rolling refits (the
    refits of all cuts' refits as one more batch); cuts whose refit has too few runs to learn it are left out."""
    record = rolling_record({0: fit}, cuts)[0]
    inner = rolling_record({i: r.fit for i, r in enumerate(record)}, cuts)
    out = []
    for i, r in enumerate(record):
        if inner[i]:
            refit = _with_misfit(r.fit, inner[i])
            out.append(Refit(r.cut, refit, r.held, log_predictive(refit, fit.data.subset(r.held), fit.seed)))
    return out


def log_predictive(fit: FitResult, runs: ScalingData, seed: int) -> np.ndarray:
    """A new run's predictive draws of log-loss at the covariates of ``runs``, ``(draws, runs)`` (noise included)."""
    return np.log(fit.predict_draws(**{c: runs.covariate(c) for c in fit.law.covariates}, noise=True, seed=seed))


def _backtest(fit: FitResult, record: Sequence[Refit]) -> pd.DataFrame:
    """The fit's own extrapolation record: for each held-out run of each cut, the error of the predictive
    mean of log-loss, the variances of a new run's noise (the predictive's variance less its mean curve's)
    and of the refit's mean curve, and the distance beyond the refit's runs."""
    law = fit.law
    rows = []
    for q, refit, held, draws in record:
        test = fit.data.subset(held)
        log_x = {c: np.log(test.covariate(c)) for c in law.covariates}
        curve = refit.log_mean_draws(log_x, fit.seed)
        rows.append(pd.DataFrame({
            "cut": q,
            "error": np.log(test.loss) - draws.mean(axis=0),
            "noise": np.maximum(draws.var(axis=0) - curve.var(axis=0), 0.0),
            "curve": curve.var(axis=0),
            "distance": distance(law, refit.data, log_x),
        }))
    return pd.concat(rows, ignore_index=True)


def structural_error(
    fit: FitResult | BatchResult, cuts: Sequence[float] = CUTS, record: Sequence[Refit] | None = None
) -> FitResult | BatchResult:
    """The fit (or every group of a batch) with a structural-error term learned from its own rolling-origin
    extrapolations.

    Args:
        fit: a fit of any law (N in parameters, D in tokens, C in FLOPs, loss in nats), or a
            :class:`~bayescale.batch.BatchResult`: the refits of all its groups and cuts then run
            as one more batch (:func:`rolling_record`), and each group equals the structural error
            of that group's fit alone, draw for draw.
        cuts: quantiles of the scale covariate (:func:`scale_covariate`) at which to cut;
            each must leave more runs below it than the law has latents, plus two.
        record: a single fit's rolling refits when already run (``rolling_record({0: fit}, cuts)[0]``),
            so that stacking and the structural error share them; ``cuts`` is then unused.

    Returns:
        A :class:`~bayescale.posterior.FitResult` equal to ``fit`` with a posterior
        variable ``misfit_scale`` (``tau``, one draw per posterior draw, from its grid
        posterior). Its predictions widen with distance from the data, and it saves
        and loads like any fit. For a batch, a :class:`~bayescale.batch.BatchResult` of
        such fits; a group no cut leaves enough runs for is listed in ``failures``, saying so.

    Raises:
        DataError: (a single fit) no cut leaves enough runs on both sides.
    """
    if isinstance(fit, BatchResult):
        records = rolling_record(fit.results, cuts)
        results, failures = {}, dict(fit.failures)
        for label, member in fit.results.items():
            if records[label]:
                results[label] = _with_misfit(member, records[label])
            else:
                failures[label] = f"structural error: {_too_few(cuts, member.law)}"
        return dataclasses.replace(fit, results=results, failures=failures)
    record = rolling_record({0: fit}, cuts)[0] if record is None else record
    if not record:
        raise DataError(_too_few(cuts, fit.law))
    return _with_misfit(fit, record)


def _too_few(cuts: Sequence[float], law: Law) -> str:
    return f"no cut in {list(cuts)} leaves enough runs to refit {law.name!r} and some to hold out"


def misfit_posterior(table: pd.DataFrame) -> np.ndarray:
    """Posterior probabilities of the structural-error scale ``tau`` on :data:`MISFIT_GRID`, given an
    extrapolation record (columns ``cut``, ``error``, ``noise``, ``curve``, ``distance``: the error of a refit's
    predictive mean of log-loss at a held-out run, the variance there of a new run's noise and of the refit's
    mean curve, and the run's distance beyond the refit's runs in e-folds; optionally ``weight``, each row's
    weight in the likelihood, by default one over the number of cuts).

    ``error ~ Normal(0, noise + a·curve + tau^2·distance)``, averaged over ``a`` in {0, 1} with equal prior
    weight: whether the refits' own parameter uncertainty explains part of their error (the law holds) or not
    (it misfits, and the spread of its mean curve measures nothing). Log-uniform prior on ``tau`` over
    :data:`MISFIT_PRIOR_RANGE`; each cut's runs weighted by one over the number of cuts (the cuts reuse the
    same runs).
    """
    weight = (table["weight"].to_numpy(dtype=float)[None, :] if "weight" in table
              else 1.0 / len(set(table["cut"])))
    error, noise, curve, dist = (table[c].to_numpy(dtype=float)[None, :]
                                 for c in ("error", "noise", "curve", "distance"))
    # The grid is log-spaced, so equal prior mass per point is the log-uniform prior: the posterior is the likelihood.
    parts = [(weight * scipy.stats.norm.logpdf(error, scale=np.sqrt(noise + a * curve + MISFIT_GRID[:, None] ** 2 * dist))
              ).sum(axis=1) for a in (0.0, 1.0)]
    log_post = np.logaddexp(*parts)
    weights = np.exp(log_post - log_post.max())
    return weights / weights.sum()


def misfit_draws(table: pd.DataFrame, shape: tuple[int, ...], seed: int | Sequence[int]) -> np.ndarray:
    """Draws of ``tau`` of the given ``shape`` from its grid posterior given an extrapolation record
    (:func:`misfit_posterior`), seeded by ``seed`` (an integer or a sequence of them, as NumPy seeds)."""
    cdf = np.cumsum(misfit_posterior(table))
    return np.interp(np.random.default_rng(seed).random(shape), cdf, MISFIT_GRID)


def _with_misfit(fit: FitResult, record: Sequence[Refit]) -> FitResult:
    """``fit`` with ``misfit_scale`` draws from the grid posterior of ``tau`` given its rolling refits."""
    post = fit.idata.posterior
    return with_misfit(fit, misfit_draws(_backtest(fit, record), (post.sizes["chain"], post.sizes["draw"]), fit.seed))
