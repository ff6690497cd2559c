"""Figures of fits, allocations and batches (matplotlib; each returns its Axes).

Every band is an equal-tailed credible interval at ``level`` over posterior
draws, around the posterior median. Axes are logarithmic where the quantity is
(N, D, C, loss). ArviZ draws the sampler plots (pairs, traces, ranks).

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from .allocation import allocation_draws, allocation_exponent_draws, has_allocation, optimal_allocation
from .batch import BatchResult
from .curve_fit import CurveResult
from .curves import LossCurves
from .experiments import Design
from .isoflop import IsoFlopResult
from .posterior import LEVEL, FitResult, Posterior
from .stacking import StackedResult

__all__ = [
    "plot_fit",
    "frontier_draws",
    "plot_isoflop",
    "plot_allocation",
    "plot_residuals",
    "plot_pair",
    "plot_trace",
    "plot_forest",
    "plot_design",
    "plot_curves",
]

_LABELS = {"N": "parameters N", "D": "tokens D", "C": "compute C (FLOPs)"}
_POINTS = 120


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=(6, 4))[1]


def _band(ax: Axes, x: np.ndarray, draws: np.ndarray, level: float, color: Any, label: str | None) -> None:
    lo, med, hi = np.quantile(draws, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
    ax.fill_between(x, lo, hi, color=color, alpha=0.25, linewidth=0)
    ax.plot(x, med, color=color, label=label)


def _span(values: np.ndarray, extend: float = 1.0) -> np.ndarray:
    lo, hi = np.log(values.min()), np.log(values.max())
    return np.exp(np.linspace(lo - extend, hi + extend, _POINTS))


def _colors(count: int) -> np.ndarray:
    return plt.cm.viridis(np.linspace(0, 0.9, count))


def _levels(values: np.ndarray, count: int) -> np.ndarray:
    """``count`` levels spread over ``values`` (log scale), rounded to two significant digits, at any magnitude."""
    raw = np.exp(np.quantile(np.log(values), np.linspace(0.1, 0.9, count)))
    scale = 10.0 ** np.floor(np.log10(raw))
    return np.unique(np.round(raw / scale, 1) * scale)


def plot_fit(
    fit: FitResult,
    x: str | None = None,
    curves: Sequence[float] | None = None,
    level: float = LEVEL,
    ax: Axes | None = None,
) -> Axes:
    """Observed losses with the posterior median curve and credible band.

    For a law in one covariate the curve is along it. For a law in N and D,
    ``x="N"`` draws iso-FLOP curves (loss against N at each compute in
    ``curves``), ``x="D"`` draws loss against D at each model size in
    ``curves``, and ``x="C"`` (the default) the compute-optimal frontier,
    i.e. the loss at the optimum of each budget. Data points are coloured by
    the nearest curve.

    A stacked result (:func:`bayescale.stack`) is drawn against compute: the
    mixture's band of the lowest loss each budget reaches (at the optimum for
    members in N and D, the law itself for members in C).

    Args:
        fit: a fit, or a stacked result.
        x: covariate on the horizontal axis (``"N"``, ``"D"`` or ``"C"``).
        curves: values of the held covariate (FLOPs for ``x="N"``, parameters
            for ``x="D"``); default four quantiles of the data.
        level: credible level of the bands.
        ax: axes to draw on (a new figure otherwise).
    """
    if isinstance(fit, StackedResult):
        return _plot_stacked(fit, level, ax)
    ax = _axes(ax)
    law, data = fit.law, fit.data
    nd = has_allocation(law)
    x = x or ("C" if nd else law.covariates[0])
    if not (x in law.covariates or (nd and x == "C")):
        raise ValueError(f"x must be one of {law.covariates} for law {law.name!r}, got {x!r}")
    observed = data.covariate(x)
    grid = _span(observed)
    if nd and x in ("N", "D"):
        held = "C" if x == "N" else "N"
        values = np.asarray(curves if curves is not None else _levels(data.covariate(held), 4), dtype=float)
        colors = _colors(values.size)
        nearest = np.abs(np.log(data.covariate(held))[:, None] - np.log(values)[None, :]).argmin(axis=1)
        ax.scatter(observed, data.loss, c=colors[nearest], s=12, alpha=0.7, zorder=3)
        for value, color in zip(values, colors):
            if held == "C":
                on_line = grid[grid < value / 6]
                _band(ax, on_line, fit.predict_draws(N=on_line, C=value), level, color, f"{held} = {value:.2g}")
            else:
                _band(ax, grid, fit.predict_draws(N=value, D=grid), level, color, f"{held} = {value:.2g}")
    else:
        ax.scatter(observed, data.loss, s=12, alpha=0.6, color="k", zorder=3, label="runs")
        if nd:
            _band(ax, grid, frontier_draws(fit, grid), level, "C0", "loss at the optimum")
        else:
            _band(ax, grid, fit.predict_draws(**{x: grid}), level, "C0", f"posterior median, {level:.0%} band")
    ax.legend(fontsize="small")
    ax.set(xscale="log", yscale="log", xlabel=_LABELS.get(x, x), ylabel=f"{data.target}")
    plain_loss_ticks(ax)
    ax.set_title(f"{law.name}: {law.formula}", fontsize="medium")
    return ax


def plot_isoflop(
    result: FitResult | IsoFlopResult,
    compute: Sequence[float] | None = None,
    level: float = LEVEL,
    ax: Axes | None = None,
) -> Axes:
    """Loss against N at fixed compute, with the posterior optimum and its interval marked.

    Args:
        result: a parametric fit in N and D (curves from the law), or an
            :class:`IsoFlopResult` (the per-budget parabolas and its runs).
        compute: budgets in FLOPs (default: the iso-FLOP result's budgets, or
            four quantiles of the fit's compute).
        level: credible level.
        ax: axes to draw on.
    """
    ax = _axes(ax)
    if isinstance(result, IsoFlopResult):
        budgets = np.asarray(compute if compute is not None else result.compute, dtype=float)
        unknown = set(budgets) - set(result.compute)
        if unknown:
            raise ValueError(f"budgets {sorted(unknown)} were not fitted; fitted: {list(result.compute)}")
        post = result.idata.posterior
        table = result.summary(level)["N_opt"]
        colors = _colors(budgets.size)
        labels = result.data.group if result.data.group is not None else result.data.C
        for c, color in zip(budgets, colors):
            runs = np.asarray(labels, dtype=float) == c
            n = result.data.N[runs]
            ax.scatter(n, result.data.loss[runs], color=color, s=16, zorder=3)
            grid = _span(n, 0.3)
            sel = post.sel(budget=c)
            m, l0, k = (sel[v].values.reshape(-1, 1) for v in ("log_n_opt", "loss_opt", "curvature"))
            _band(ax, grid, l0 + k * (np.log(grid)[None, :] - m) ** 2, level, color, f"C = {c:.2g}")
            _mark_optimum(ax, tuple(table.loc[c].to_numpy()), float(np.median(l0)), color)
    else:
        budgets = np.asarray(compute if compute is not None else _levels(result.data.covariate("C"), 4), dtype=float)
        opt = optimal_allocation(result.law, result.draws(), budgets)
        colors = _colors(budgets.size)
        for j, (c, color) in enumerate(zip(budgets, colors)):
            n_med = np.median(opt["N_opt"][:, j])
            grid = np.exp(np.linspace(np.log(n_med) - 2.5, np.log(n_med) + 2.5, _POINTS))
            _band(ax, grid, result.predict_draws(N=grid, C=c), level, color, f"C = {c:.2g}")
            lo, hi = np.quantile(opt["N_opt"][:, j], [(1 - level) / 2, (1 + level) / 2])
            _mark_optimum(ax, (n_med, lo, hi), float(np.median(opt["loss_opt"][:, j])), color)
    ax.set(xscale="log", xlabel=_LABELS["N"], ylabel="loss")
    ax.set_title(f"iso-FLOP curves; optimum with {level:.0%} interval", fontsize="medium")
    ax.legend(fontsize="small")
    return ax


def _mark_optimum(ax: Axes, n: tuple[float, float, float], loss: float, color: Any) -> None:
    """Diamond at the median optimum (``n = (median, lower, upper)``) with its interval as an x error bar."""
    median, lo, hi = n
    ax.errorbar([median], [loss], xerr=[[median - lo], [hi - median]], fmt="D", color=color, ms=6,
                markeredgecolor="k", capsize=3, zorder=4)


def plain_loss_ticks(ax: Axes) -> None:
    """Label a log-scaled loss axis in plain numbers (2.5, 3), not powers of ten (3x10^0)."""
    for formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


def frontier_draws(fit: Posterior, compute: np.ndarray) -> np.ndarray:
    """Draws ``(draws, budgets)`` of the lowest loss (nats) at each budget (FLOPs), through the one predictive
    (structural error included): the optimum's for a law in N and D, the law's own for a law in C; a stacked
    result mixes its members'."""

    def one(member: FitResult) -> np.ndarray:
        if has_allocation(member.law):
            return allocation_draws(member, compute)["loss_opt"]
        if member.law.covariates != ("C",):
            raise ValueError(f"law {member.law.name!r} reads {member.law.covariates}: no loss per budget without"
                             " N and D")
        return member.predict_draws(C=compute)

    return fit.combine({name: one(member) for name, member in fit.components().items()})


def _plot_stacked(fit: StackedResult, level: float, ax: Axes | None) -> Axes:
    ax = _axes(ax)
    data = fit.data
    grid = _span(data.covariate("C"))
    ax.scatter(data.covariate("C"), data.loss, s=12, alpha=0.6, color="k", zorder=3, label="runs")
    _band(ax, grid, frontier_draws(fit, grid), level, "C0", f"mixture, {level:.0%} band")
    ax.legend(fontsize="small")
    ax.set(xscale="log", yscale="log", xlabel=_LABELS["C"], ylabel=f"{data.target}")
    plain_loss_ticks(ax)
    weights = ", ".join(f"{n} {w:.2f}" for n, w in fit.weights.items())
    ax.set_title(f"stacked ({fit.method}): {weights}", fontsize="medium")
    return ax


def plot_allocation(
    fit: FitResult,
    compute: Sequence[float] | None = None,
    flops_per_token: float = 6.0,
    level: float = LEVEL,
    axes: Sequence[Axes] | None = None,
) -> np.ndarray:
    """N_opt, D_opt and tokens per parameter against compute, with bands.

    Args:
        fit: a fit of a law in N and D.
        compute: budgets to extrapolate to (default 1e18 to 1e26 FLOPs).
        flops_per_token: k in ``C = k·N·D``.
        level: credible level.
        axes: three axes to draw on.

    Returns:
        The three axes.
    """
    budgets = np.asarray(compute if compute is not None else np.logspace(18, 26, 60), dtype=float)
    if budgets.size < 2:
        raise ValueError("plot_allocation needs at least two budgets")
    draws = optimal_allocation(fit.law, fit.draws(), budgets, flops_per_token)
    if axes is None:
        axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)[1]
    data_c = fit.data.covariate("C")
    for ax, (name, label) in zip(axes, [("N_opt", "N_opt (parameters)"), ("D_opt", "D_opt (tokens)"),
                                       ("tokens_per_param", "tokens per parameter")]):
        _band(ax, budgets, draws[name], level, "C0", f"median, {level:.0%} band")
        ax.axvspan(data_c.min(), data_c.max(), color="0.85", zorder=0, label="compute of the data")
        ax.set(xscale="log", yscale="log", xlabel=_LABELS["C"], ylabel=label)
    axes[0].legend(fontsize="small")
    return np.asarray(axes)


def plot_residuals(fit: FitResult, ax: Axes | None = None) -> Axes:
    """Log residuals (observed − posterior median prediction) against the fitted loss."""
    ax = _axes(ax)
    fitted = np.median(fit.predict_draws(**{c: fit.data.covariate(c) for c in fit.law.covariates}), axis=0)
    residual = np.log(fit.data.loss) - np.log(fitted)
    sigma = float(np.median(fit.draws("sigma")))
    ax.scatter(fitted, residual, s=12, color="k", alpha=0.6)
    for s in (-2 * sigma, 0.0, 2 * sigma):
        ax.axhline(s, color="C3" if s else "0.5", lw=1, ls="--" if s else "-")
    ax.set(xscale="log", xlabel="fitted loss (posterior median)", ylabel="log residual")
    ax.set_title("residuals; dashed: ±2 sigma", fontsize="medium")
    return ax


def plot_pair(fit: FitResult, var_names: Sequence[str] | None = None, **kwargs: Any) -> np.ndarray:
    """Pair (corner) plot of the posterior via ``arviz.plot_pair``; divergences marked."""
    names = list(var_names) if var_names is not None else list(fit.law.params)
    return az.plot_pair(fit.idata, var_names=names, kind="kde", marginals=True, divergences=True, **kwargs)


def plot_trace(fit: FitResult, kind: str = "rank_bars", **kwargs: Any) -> np.ndarray:
    """Trace plot via ``arviz.plot_trace`` (``kind="trace"`` or rank plots, the default)."""
    return az.plot_trace(fit.idata, var_names=list(fit.spec.latents), kind=kind, **kwargs)


def plot_forest(
    batch: BatchResult,
    params: Sequence[str] = ("alpha", "beta", "a"),
    level: float = LEVEL,
    axes: Sequence[Axes] | None = None,
) -> np.ndarray:
    """Median and interval of each parameter across the groups of a batch, one panel per parameter.

    ``a`` and ``b`` are the allocation exponents (``N_opt ∝ C^a``); groups whose
    fit did not converge are drawn in red.
    """
    names = [n for n in batch.order if n in batch.results]
    if not names:
        raise ValueError("the batch has no successful fits to plot")
    if axes is None:
        height = 1.0 + 0.28 * len(names)
        axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), height), sharey=True,
                            constrained_layout=True)[1]
    axes = np.atleast_1d(axes)
    q = [(1 - level) / 2, 0.5, (1 + level) / 2]
    y = np.arange(len(names))[::-1]
    bad = np.array([not batch[n].diagnostics.ok for n in names])
    for ax, param in zip(axes, params):
        stats = np.array([np.quantile(_param_draws(batch[n], param), q) for n in names])
        for mask, color in ((~bad, "C0"), (bad, "C3")):
            ax.errorbar(stats[mask, 1], y[mask], xerr=[stats[mask, 1] - stats[mask, 0], stats[mask, 2] - stats[mask, 1]],
                        fmt="o", color=color, ms=4, capsize=2)
        ax.set(xlabel=param)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names)
    return axes


def _param_draws(fit: FitResult, name: str) -> np.ndarray:
    if name in ("a", "b") and name not in fit.spec.latents:
        return allocation_exponent_draws(fit)[name]
    return fit.draws(name)


def plot_design(plan: Design, ax: Axes | None = None) -> Axes:
    """Candidate runs on the (N, D) plane coloured by their expected width reduction, the chosen ones numbered.

    Dashed grey lines are iso-FLOP lines (C = 6·N·D) through the chosen runs; grey squares mark the best
    iso-FLOP grid of the same budget (when the design had a budget), the legend gives both forecast widths.
    """
    ax = _axes(ax)
    table = plan.candidates
    points = ax.scatter(table["N"], table["D"], c=table["reduction"], cmap="viridis", s=40, zorder=2)
    plt.colorbar(points, ax=ax, label=f"expected narrowing of the {plan.level:.0%} interval (log)")
    n = np.exp(np.linspace(np.log(table["N"].min()), np.log(table["N"].max()), _POINTS))
    for i, row in enumerate(plan.selected.itertuples(), start=1):
        ax.plot(n, row.N * row.D / n, color="0.6", linestyle="--", linewidth=0.8, zorder=1)
        ax.scatter([row.N], [row.D], s=160, facecolors="none", edgecolors="C3", linewidths=1.5, zorder=3)
        ax.annotate(str(i), (row.N, row.D), textcoords="offset points", xytext=(6, 6), color="C3")
    ax.scatter([], [], s=160, facecolors="none", edgecolors="C3", label=f"chosen: width {plan.forecast.width:.3g}")
    if plan.grid is not None:
        runs, forecast = plan.grid
        ax.scatter(runs["N"], runs["D"], marker="s", s=90, facecolors="none", edgecolors="0.4", zorder=3,
                   label=f"best iso-FLOP grid: width {forecast.width:.3g}")
    ax.legend(loc="best", fontsize="small")
    ax.set(xscale="log", yscale="log", xlabel=_LABELS["N"], ylabel=_LABELS["D"],
           ylim=(table["D"].min() / 2, table["D"].max() * 2), title=f"next runs for {plan.target}")
    return ax


def plot_curves(result: CurveResult, held_out: LossCurves | None = None, *,
                schedules: Mapping[Any, np.ndarray] | None = None, N: float | None = None, level: float = LEVEL,
                points: int = 200, seed: int = 0, ax: Axes | None = None) -> Axes:
    """Loss curves (nats) against step with the posterior's bands, each run's schedule underneath.

    Every fitted run is drawn as its logged points (dots) and the band of a new run of its schedule;
    every run of ``held_out`` (curves not fitted: other schedules or horizons) as its logged points
    (crosses) and its predicted band; every one of ``schedules`` (name to learning rate at every step)
    as its predicted band alone (dashed median), for runs of ``N`` parameters when the fit spans model sizes
    (fitted and held-out runs use their own sizes). The learning rates share the x axis on a right-hand scale.
    """
    ax = _axes(ax)
    rates = ax.twinx()
    runs = [(run, result.curves.schedules[run], result.curves.table, "fitted") for run in result.curves.runs]
    if held_out is not None:
        runs += [(run, held_out.schedules[run], held_out.table, "held out") for run in held_out.runs]
    runs += [(name, np.asarray(lr, dtype=float), None, "predicted") for name, lr in (schedules or {}).items()]
    for (run, lr, table, kind), color in zip(runs, _colors(len(runs))):
        logged = table[table["run"] == run] if table is not None else None
        first = int(np.argmax(lr)) if logged is None else max(int(logged["step"].min()), int(np.argmax(lr)))
        steps = np.unique(np.linspace(first, lr.size - 1, points).astype(np.int64))
        size = None
        if result.size_ref is not None:
            size = N if logged is None else float(logged["N"].iloc[0])
        _band(ax, steps, result.predict_draws(steps, schedule=lr, N=size, seed=seed), level, color, f"{run} ({kind})")
        if logged is not None:
            ax.scatter(logged["step"], logged["loss"], s=8, marker="o" if kind == "fitted" else "x", color=color, zorder=3)
        else:
            ax.lines[-1].set_linestyle("--")
        rates.plot(np.arange(lr.size), lr, color=color, linewidth=0.8, alpha=0.4)
    rates.set(ylabel="learning rate", ylim=(0, 4 * max(lr.max() for _, lr, _, _ in runs)))
    ax.set(xlabel="step", ylabel="loss (nats)", title=f"{result.law.name} curves, {level:.0%} bands")
    ax.legend(loc="upper right", fontsize="small")
    return ax
