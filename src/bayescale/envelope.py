"""The loss-compute envelope of loss curves (Chinchilla's first approach), with intervals from the curve posterior.

Chinchilla's first approach trains several sizes, each to several horizons, and reads the lowest loss reached
at each compute and the size that reaches it. With a curve law fitted across model sizes
(:func:`bayescale.fit_curves` on curves carrying ``N``), every (size, horizon) run is a prediction: a run of
``N`` parameters trained for ``T = C / (k N B)`` steps under a schedule of that horizon (cosine by default,
decaying to its end as Chinchilla's runs did), ``B`` tokens per step. For each posterior draw the envelope at
``C`` is the lowest final loss over a grid of sizes and ``N_opt(C)`` the size that reaches it (refined by a
parabola in log N through the grid's three best points), so its interval comes from the posterior of the
curves, not from checkpoints treated as independent runs.

Units: N parameters, D tokens, C FLOPs (``C = k N D``, ``D = B T``), loss nats (the law's mean curve: a run's own
departure from it, the residual path, is left out as it is in :func:`bayescale.compute_optimal`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from . import schedules as _schedules
from .curve_fit import CurveResult
from .posterior import LEVEL, table_of_draws

__all__ = ["envelope_draws", "curve_envelope"]

GRID = 41
"""Sizes in the default grid, evenly spaced in log N between the smallest and largest fitted size."""


def _check(result: CurveResult, compute: Sequence[float] | np.ndarray, tokens_per_step: float,
           sizes: Sequence[float] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(result, CurveResult) or result.size_ref is None:
        raise ValueError("the envelope needs a curve fit across model sizes (curves of two sizes or more with N)")
    c = np.atleast_1d(np.asarray(compute, dtype=float))
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c) & (c > 0)):
        raise ValueError(f"compute must be positive finite FLOPs, got {compute!r}")
    if not (np.isfinite(tokens_per_step) and tokens_per_step > 0):
        raise ValueError(f"tokens_per_step must be a positive number of tokens, got {tokens_per_step!r}")
    if sizes is None:
        fitted = list(result.curves.sizes.values())
        grid = np.geomspace(min(fitted), max(fitted), GRID)
    else:
        grid = np.asarray(sizes, dtype=float)
        if grid.ndim != 1 or grid.size < 3 or not np.all(np.isfinite(grid) & (grid > 0)) or np.any(np.diff(grid) <= 0):
            raise ValueError("sizes must be at least 3 increasing positive model sizes (parameters)")
    return c, grid


def envelope_draws(result: CurveResult, compute: Sequence[float] | np.ndarray, *, tokens_per_step: float,
                   schedule: Callable[[int], np.ndarray] = _schedules.cosine,
                   sizes: Sequence[float] | np.ndarray | None = None, flops_per_token: float = 6.0,
                   ) -> dict[str, np.ndarray]:
    """Draws ``(draws, budgets)`` of ``N_opt``, ``D_opt``, ``tokens_per_param`` and ``loss_opt`` read from the
    envelope, and ``edge`` (1.0 where a draw's optimum lies at an end of the sizes searched, or beside a size
    whose run at that budget would end within its warmup: the optimum may lie beyond).

    Args:
        result: a curve fit across model sizes.
        compute: budgets C (FLOPs).
        tokens_per_step: tokens per optimiser step B of the runs (the batch size in tokens).
        schedule: the runs' schedule as a function of its horizon (steps); cosine by default.
        sizes: the grid of sizes (parameters) searched; by default 41 between the smallest and largest
            fitted size.
        flops_per_token: k in ``C = k N D``.

    Raises:
        ValueError: a fit of one size, a bad budget, batch or grid, or a budget too small for any size's run
            to pass its warmup.
    """
    budgets, grid = _check(result, compute, tokens_per_step, sizes)
    horizon = np.rint(budgets[:, None] / (flops_per_token * grid[None, :] * tokens_per_step)).astype(np.int64)
    lrs, rows = {}, []
    for run, total in enumerate(horizon.ravel()):  # run: the flat index of (budget, size)
        try:
            lrs[run] = schedule(int(total))
        except ValueError:  # a horizon shorter than the schedule's warmup: no such run
            continue
        rows.append({"run": run, "step": int(total) - 1, "N": grid[run % grid.size]})
    points = pd.DataFrame(rows)
    loss = np.full((result.draws("sigma").size, horizon.size), np.inf)
    if len(points):
        loss[:, points["run"].to_numpy()] = np.exp(result.log_mean_draws(lrs, points))
    loss = loss.reshape(-1, *horizon.shape)
    empty = [budgets[i] for i in range(len(budgets)) if not np.isfinite(loss[:, i]).any()]
    if empty:
        raise ValueError(f"budgets {empty} FLOPs are too small for any size's run to pass its warmup")
    best = np.argmin(loss, axis=2)
    inner = np.clip(best, 1, grid.size - 2)
    x = np.log(grid)
    take = (lambda k: np.take_along_axis(loss, (inner + k)[..., None], axis=2)[..., 0])
    y0, y1, y2 = take(-1), take(0), take(1)
    h = x[1:] - x[:-1]  # a parabola through the three points around the best (the grid may be uneven)
    ha, hb = h[inner - 1], h[inner]
    with np.errstate(invalid="ignore", divide="ignore"):  # neighbours too large to run have infinite loss
        a = ((y2 - y1) / hb - (y1 - y0) / ha) / (ha + hb)
        b = (y1 - y0) / ha + a * ha  # slope at the middle point
        curved = np.isfinite(a) & (a > 0)
        shift = np.clip(np.where(curved, -b / (2 * a), 0.0), -ha, hb)
        refined = np.where(curved, y1 + b * shift + a * shift**2, y1)
    # At an edge: the grid's end, or a neighbour whose horizon is too short to run (its loss infinite).
    edge = (best == 0) | (best == grid.size - 1) | ~np.isfinite(y0) | ~np.isfinite(y2)
    log_n = np.where(edge, x[best], x[inner] + shift)
    loss_opt = np.where(edge, np.min(loss, axis=2), refined)
    n_opt = np.exp(log_n)
    d_opt = budgets[None, :] / (flops_per_token * n_opt)
    return {"N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt, "loss_opt": loss_opt,
            "edge": edge.astype(float)}


def curve_envelope(result: CurveResult, compute: Sequence[float] | np.ndarray, *, tokens_per_step: float,
                   schedule: Callable[[int], np.ndarray] = _schedules.cosine,
                   sizes: Sequence[float] | np.ndarray | None = None, flops_per_token: float = 6.0,
                   level: float = LEVEL) -> pd.DataFrame:
    """Planning table read from the envelope of loss curves: compute-optimal N, D, tokens per parameter and
    loss, with intervals at ``level``, as :func:`bayescale.compute_optimal` gives them for a law in N and D.

    Arguments as :func:`envelope_draws`. The column ``edge_share`` is the share of draws whose optimum lies at
    an end of the sizes searched (where the envelope says only "at most" or "at least" that size).
    """
    draws = envelope_draws(result, compute, tokens_per_step=tokens_per_step, schedule=schedule, sizes=sizes,
                           flops_per_token=flops_per_token)
    edge = draws.pop("edge")
    table = table_of_draws(draws, pd.Index(np.atleast_1d(np.asarray(compute, dtype=float)), name="compute"), level)
    table[("edge_share", "")] = edge.mean(axis=0)
    return table
