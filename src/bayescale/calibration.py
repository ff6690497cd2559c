"""Calibration: do the credible intervals mean what they say?

Simulation-based calibration (Talts et al. 2018): draw true parameters, simulate
a dataset from the model, fit it, and record where each true value falls among
its posterior draws. Over many datasets a calibrated posterior gives uniform
ranks and intervals that cover the truth at their nominal rate.

True values are drawn either from the priors the fit uses (``source="prior"``,
textbook SBC: ranks must be uniform, or the model code or the sampler is wrong;
pass your own ``priors`` to calibrate them), or from documented realistic ranges
(:data:`RANGES`) while fitting with the deliberately wide default priors (a prior
draw of the Chinchilla law can put the loss of a 1e8-parameter model at 1e6
nats). The latter is frequentist coverage averaged over those ranges: what a
planner who keeps the defaults relies on, and not guaranteed to be nominal.
Noise follows the fitted likelihood: Student-t with the same ``nu`` for
``student_t``, Gaussian for ``normal``, on log-loss, with scale uniform in
[0.01, 0.03] (or drawn from the ``sigma`` prior).

Derived quantities are checked too: for laws in N and D, the compute-optimal
``N_opt`` and ``D_opt`` at a far-out budget (1e24 FLOPs by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import jax
import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.axes import Axes

from .allocation import has_allocation, optimal_allocation
from .batch import BatchResult, fit_batch
from .data import ScalingData
from .laws import get_law
from .likelihoods import Likelihood, get_likelihood
from .model import make_spec
from .posterior import FitResult
from .simulate import chinchilla_design, simulate

__all__ = ["RANGES", "Calibration", "draw_truths", "simulate_datasets", "rank_statistics", "sbc"]

_C0 = 1e20  # FLOPs at the centre of the default design

Sampler = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


def _uniform(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, n)


def _log_uniform(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _offset_power(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    alpha = _uniform(rng, n, 0.1, 0.3)
    reducible = _uniform(rng, n, 0.5, 1.5)  # A·C0^-alpha, the reducible loss at 1e20 FLOPs
    return {"E": _uniform(rng, n, 1.5, 2.2), "alpha": alpha, "A": reducible * _C0**alpha}


def _broken_power(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    truths = _offset_power(rng, n)
    return {**truths, "delta": _uniform(rng, n, -0.1, 0.1), "X_b": _log_uniform(rng, n, 1e19, 1e21)}


def _m4(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    truths = _offset_power(rng, n)  # A·C0^-alpha is the reducible loss at 1e20 FLOPs of the power-law part
    gamma, delta = _log_uniform(rng, n, 0.3, 3.0), _uniform(rng, n, 4.0, 10.0)
    return {**truths, "gamma": gamma, "Delta": delta, "A": truths["A"] / delta**gamma}


def _power(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    a = _uniform(rng, n, 0.1, 0.5)
    at_c0 = _log_uniform(rng, n, 1e5, 1e7)  # e.g. a batch size in tokens at 1e20 FLOPs
    return {"a": a, "K": at_c0 * _C0**-a}


RANGES: dict[str, Sampler] = {
    "chinchilla": lambda rng, n: {
        "E": _uniform(rng, n, 1.5, 2.2),
        "alpha": _uniform(rng, n, 0.25, 0.45),
        "beta": _uniform(rng, n, 0.2, 0.4),
        "A": _log_uniform(rng, n, 100, 1000),
        "B": _log_uniform(rng, n, 100, 1000),
    },
    "kaplan_n": lambda rng, n: {"alpha_N": _uniform(rng, n, 0.05, 0.1), "N_c": _log_uniform(rng, n, 1e13, 1e14)},
    "kaplan_d": lambda rng, n: {"alpha_D": _uniform(rng, n, 0.07, 0.12), "D_c": _log_uniform(rng, n, 1e13, 1e14)},
    "kaplan_c": lambda rng, n: {"alpha_C": _uniform(rng, n, 0.04, 0.07), "C_c": _log_uniform(rng, n, 1e27, 1e29)},
    "kaplan_nd": lambda rng, n: {
        "alpha_N": _uniform(rng, n, 0.06, 0.09),
        "alpha_D": _uniform(rng, n, 0.08, 0.11),
        "N_c": _log_uniform(rng, n, 3e13, 3e14),
        "D_c": _log_uniform(rng, n, 1e13, 1e14),
    },
    "moe": lambda rng, n: {**RANGES["chinchilla"](rng, n), "w": _uniform(rng, n, 0.1, 0.9)},
    "offset_power": _offset_power,
    "broken_power": _broken_power,
    "m4": _m4,
    "data_constrained": lambda rng, n: {
        **RANGES["chinchilla"](rng, n), "R_D": _log_uniform(rng, n, 5, 50), "R_N": _log_uniform(rng, n, 2, 20),
    },
    "overtrain": lambda rng, n: {
        "E": _uniform(rng, n, 1.5, 2.2),
        "eta": _uniform(rng, n, 0.12, 0.2),
        "A": _log_uniform(rng, n, 100, 1000),
        "B": _log_uniform(rng, n, 100, 1000),
    },
    "power": _power,
}
"""Built-in law name -> sampler of realistic true values ``(rng, n) -> {param: (n,)}``.

Chinchilla: E ~ U(1.5, 2.2), alpha ~ U(0.25, 0.45), beta ~ U(0.2, 0.4),
A, B log-uniform on [100, 1000]. Kaplan: exponents around the published ones,
N_c, D_c, C_c log-uniform over a decade around them. offset_power: the
reducible loss at 1e20 FLOPs U(0.5, 1.5), alpha ~ U(0.1, 0.3). power: a ~
U(0.1, 0.5), Y at 1e20 FLOPs log-uniform on [1e5, 1e7]. moe: as chinchilla, w ~
U(0.1, 0.9), half the runs dense and half with 4, 8 or 16 times as many total
as active parameters. data_constrained: as chinchilla, R_D* log-uniform on [5, 50],
R_N* on [2, 20], unique tokens a log-uniform 1/60 to 1 of each run's tokens (1-60
epochs). m4: as offset_power (A·Delta^gamma·C0^-alpha the reducible loss of the power-law
part), gamma log-uniform on [0.3, 3], Delta ~ U(4, 10) nats. overtrain: E as chinchilla, eta ~ U(0.12, 0.2), A, B log-uniform on [100, 1000]."""


def draw_truths(
    law: str, num: int, seed: int = 0, source: str = "ranges", priors: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """``num`` true parameter sets of a built-in law, plus a noise scale ``sigma``.

    Args:
        law: a built-in law.
        num: number of sets.
        seed: seed of the draws.
        source: ``"ranges"`` for :data:`RANGES` (sigma uniform in [0.01, 0.03]),
            or ``"prior"`` for the priors the fit uses (textbook SBC: any
            deviation from uniform ranks is then a fault of the model code or
            the sampler, not of the prior).
        priors: overrides of the law's default priors, as for
            :func:`bayescale.fit`; only with ``source="prior"``.
    """
    if law not in RANGES:
        raise ValueError(f"no realistic range for law {law!r}; calibrated laws are {sorted(RANGES)}")
    if source == "ranges":
        if priors:
            raise ValueError("draw_truths: priors are drawn from only with source='prior'")
        rng = np.random.default_rng(seed)
        truths = pd.DataFrame(RANGES[law](rng, num))
        truths["sigma"] = _uniform(rng, num, 0.01, 0.03)
    elif source == "prior":
        spec = make_spec(get_law(law), get_likelihood("normal"), priors)
        keys = jax.random.split(jax.random.PRNGKey(seed), len(spec.latents))
        with jax.enable_x64(True):
            truths = pd.DataFrame({n: np.asarray(spec.priors[n].sample(k, (num,)), dtype=float)
                                   for n, k in zip(spec.latents, keys)})
    else:
        raise ValueError(f"source must be 'ranges' or 'prior', got {source!r}")
    truths.index = [f"sim{i:04d}" for i in range(num)]
    return truths


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Where each true value fell among its posterior draws, over many simulated datasets.

    Attributes:
        law: the law's name.
        truths: one row per dataset, one column per quantity (parameters, and
            ``N_opt``/``D_opt`` for laws in N and D).
        ranks: normalised ranks in [0, 1]: the fraction of posterior draws below
            the truth, same shape as ``truths``.
        diagnostics: per-dataset convergence, as :meth:`BatchResult.diagnostics`.
    """

    law: str
    truths: pd.DataFrame
    ranks: pd.DataFrame
    diagnostics: pd.DataFrame

    def coverage(self, levels: Sequence[float] = (0.5, 0.9, 0.95)) -> pd.DataFrame:
        """Fraction of datasets whose central interval at each level covers the truth (rows: quantities)."""
        return pd.DataFrame(
            {f"{level:g}": ((self.ranks > (1 - level) / 2) & (self.ranks < (1 + level) / 2)).mean() for level in levels}
        )

    def uniformity(self, bins: int = 10) -> pd.DataFrame:
        """Chi-square test of uniform ranks per quantity: statistic and p-value (small p: miscalibrated)."""
        rows = {}
        for name, u in self.ranks.items():
            counts = np.histogram(u, bins=bins, range=(0, 1))[0]
            test = scipy.stats.chisquare(counts)
            rows[name] = {"chi2": float(test.statistic), "p_value": float(test.pvalue)}
        return pd.DataFrame.from_dict(rows, orient="index")

    def problems(self, level: float = 0.9, tolerance: float | None = None, alpha: float = 0.001) -> list[str]:
        """Quantities whose coverage at ``level`` is off, or whose ranks fail the uniformity test.

        Args:
            level: the interval checked.
            tolerance: allowed distance of coverage from ``level``; default three
                binomial standard errors for this number of datasets.
            alpha: significance level of the chi-square uniformity test.
        """
        n = len(self.ranks)
        tol = tolerance if tolerance is not None else 3 * np.sqrt(level * (1 - level) / n)
        found = []
        for name, value in self.coverage([level]).iloc[:, 0].items():
            if abs(value - level) > tol:
                found.append(f"{name}: {level:.0%} intervals cover {value:.0%} of {n} datasets (tolerance {tol:.0%})")
        for name, p in self.uniformity()["p_value"].items():
            if p < alpha:
                found.append(f"{name}: ranks not uniform (chi-square p = {p:.2g})")
        return found

    def plot_ranks(self, bins: int = 10, axes: Sequence[Axes] | None = None) -> np.ndarray:
        """Rank histograms, one panel per quantity, with the 99% band of counts under uniform ranks."""
        names = list(self.ranks.columns)
        if axes is None:
            cols = min(4, len(names))
            rows = -(-len(names) // cols)
            axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), constrained_layout=True,
                                squeeze=False)[1].ravel()
        n = len(self.ranks)
        lo, hi = scipy.stats.binom.ppf([0.005, 0.995], n, 1 / bins)
        for ax, name in zip(axes, names):
            ax.axhspan(lo, hi, color="0.85", zorder=0)
            ax.hist(self.ranks[name], bins=bins, range=(0, 1), color="C0", edgecolor="white")
            ax.set(title=name, xlabel="normalised rank")
        for ax in list(axes)[len(names):]:
            ax.set_visible(False)
        return np.asarray(axes)


def rank_statistics(
    fits: Mapping[str, FitResult] | BatchResult,
    truths: pd.DataFrame,
    compute: float = 1e24,
) -> Calibration:
    """Normalised ranks of the true values among the posterior draws of each fitted dataset.

    Args:
        fits: dataset name -> fit (or a :class:`BatchResult`); datasets missing
            from it (failed fits) are left out and listed in the diagnostics.
        truths: true parameters, one row per dataset name.
        compute: budget (FLOPs) at which ``N_opt`` and ``D_opt`` are checked, for
            laws in N and D.
    """
    if isinstance(fits, BatchResult):
        diagnostics, fits = fits.status(), fits.results
    else:
        diagnostics = pd.DataFrame({"status": ["ok" if f.diagnostics.ok else "warning" for f in fits.values()]},
                                   index=pd.Index(list(fits), name="group"))
    names = [n for n in truths.index if n in fits]
    if not names:
        raise ValueError("no dataset of `truths` was fitted")
    law = fits[names[0]].law
    quantities = list(law.params) + ["sigma"]
    table = truths.loc[names, quantities].copy()
    ranks = pd.DataFrame(index=names, columns=quantities, dtype=float)
    for name in names:
        draws = fits[name].draws()
        for q in quantities:
            ranks.loc[name, q] = np.mean(draws[q] < table.loc[name, q])
    if has_allocation(law):
        true_opt = optimal_allocation(law, {p: table[p].to_numpy() for p in law.params}, [compute])
        fitted_opt = {n: optimal_allocation(fits[n].law, fits[n].draws(), [compute]) for n in names}
        for q in ("N_opt", "D_opt"):
            table[q] = true_opt[q][:, 0]
            ranks[q] = [np.mean(fitted_opt[n][q][:, 0] < table.loc[n, q]) for n in names]
    return Calibration(law=law.name, truths=table, ranks=ranks, diagnostics=diagnostics)


def sbc(
    law: str = "chinchilla",
    likelihood: str | Likelihood = "student_t",
    num_datasets: int = 100,
    runs_per_dataset: int = 60,
    compute: float = 1e24,
    seed: int = 0,
    source: str = "ranges",
    priors: Mapping[str, Any] | None = None,
    **fit_options: Any,
) -> Calibration:
    """Simulate ``num_datasets`` datasets from a built-in law, fit them with :func:`fit_batch`, rank the truths.

    Args:
        law: a built-in law with a realistic range in :data:`RANGES`.
        likelihood: the likelihood fitted, and the noise simulated.
        num_datasets: datasets simulated (>= 100 for the published check).
        runs_per_dataset: runs per dataset, on :func:`chinchilla_design`.
        compute: budget (FLOPs) where ``N_opt``/``D_opt`` are checked.
        seed: seed of the truths, designs, noise and sampler.
        source: where truths come from, ``"ranges"`` or ``"prior"`` (see :func:`draw_truths`).
        priors: overrides of the default priors, used by the fits and, with
            ``source="prior"``, to draw the truths: calibrate the priors you fit with.
        **fit_options: passed to :func:`fit_batch` (``num_warmup``, ``num_samples``, ...).

    Returns:
        :class:`Calibration`; see :meth:`Calibration.coverage` and :meth:`Calibration.problems`.
    """
    lik = get_likelihood(likelihood)
    truths = draw_truths(law, num_datasets, seed, source, priors if source == "prior" else None)
    datasets = simulate_datasets(law, truths, lik, runs_per_dataset, seed)
    batch = fit_batch(datasets, law=law, likelihood=lik, priors=priors, seed=seed,
                      **{"progress": False, **fit_options})
    return rank_statistics(batch, truths, compute)


def simulate_datasets(
    law: str, truths: pd.DataFrame, likelihood: str | Likelihood = "student_t", runs_per_dataset: int = 60,
    seed: int = 0,
) -> dict[str, ScalingData]:
    """One dataset per row of ``truths`` on :func:`chinchilla_design`, noise as the likelihood assumes."""
    lik = get_likelihood(likelihood)
    law_obj = get_law(law)
    datasets = {}
    for i, (name, row) in enumerate(truths.iterrows()):
        # independent streams for the design, the MoE total sizes or unique tokens, and the noise
        design_rng, total_rng, noise_rng = np.random.SeedSequence([seed, i]).spawn(3)
        N, D = chinchilla_design(runs_per_dataset, seed=_int_seed(design_rng))
        n_total = unique = None
        rng = np.random.default_rng(total_rng)
        if "N_total" in law_obj.covariates:
            n_total = N * np.where(rng.random(N.size) < 0.5, 1.0, rng.choice([4.0, 8.0, 16.0], N.size))
        if "U" in law_obj.covariates:
            unique = D / np.exp(rng.uniform(0.0, np.log(60.0), N.size))
        params = {p: float(row[p]) for p in law_obj.params}
        datasets[name] = simulate(law_obj, params, N=N, D=D, N_total=n_total, U=unique, noise=float(row["sigma"]),
                                  nu=lik.nu if lik.name == "student_t" else None, seed=_int_seed(noise_rng))
    return datasets


def _int_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, np.uint64)[0])
