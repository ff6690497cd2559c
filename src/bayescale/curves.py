"""Whole loss curves under learning-rate schedules: the data, the schedule sums and the curve laws.

A run is its logged points (step, loss in nats) and its learning rate at *every* step (a schedule
from :mod:`bayescale.schedules`, or any array). The laws read the schedule through sums, all
computed here on the host in float64 from cumulative sums (no loop over steps), with ``W`` the warmup
(the steps before the rate first reaches its maximum) and ``c(t) = sum_{s=W+1..t} lr[s]``:

- ``S1(t) = c(t)``, the area under the schedule after warmup, and ``S_W = sum_{s<=W} lr[s]``;
- multi-power law (Luo et al. 2025, arXiv 2503.12811)::

      L(t) = L0 + A (S1 + S_W)^-alpha - B sum_{k=W+1..t} (lr[k-1] - lr[k]) G(lr[k]^-gamma (c(t) - c(k-1)))
      G(x) = 1 - (C x + 1)^-beta      (sampled as K = C LR_REF^-gamma; see multi_power)

  The sum over steps is aggregated in blocks of ``block`` steps: per block and logged point, the
  drops are summed exactly and ``lr[k]`` and ``c(k-1)`` enter as drop-weighted means, so only the
  curvature of ``G`` within a block is approximated (``tests/test_curves.py`` bounds the error against
  the exact sum);
- learning-rate annealing law (Tissue et al. 2024, arXiv 2408.11029)::

      L(t) = L0 + A (S1 + S_W)^-alpha - C S2,   S2(t) = sum_{k=W+1..t} m_k,
      m_k = decay m_{k-1} + (lr[k-1] - lr[k])   (the annealing area with momentum ``decay``).

Units: steps are optimiser steps, learning rates as the optimiser uses them, loss in nats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import scipy.signal

from . import schedules as _schedules
from .data import DataError

__all__ = ["LossCurves", "CurveInputs", "CurveLaw", "curve_inputs", "multi_power", "lr_annealing",
           "get_curve_law", "named_schedules", "BLOCK"]

BLOCK = 256
"""Steps per block of the multi-power law's sum over the schedule's drops: on the bundled curves the mean
curve is within 2.6e-4 (relative) of the exact sum at a posterior point (64 steps: 3.9e-5, a gradient 4x
dearer: a fit of three 25M curves took a quarter of the time, the same held-out error)."""
LR_REF = 1e-4
"""Reference learning rate of the multi-power law's ``K`` (see :func:`multi_power`)."""
Array = Any


def warmup_of(lr: np.ndarray) -> int:
    """The warmup of a schedule: the first step at its maximum rate."""
    return int(np.argmax(lr))


def departure(lr: np.ndarray, known: Iterable[np.ndarray]) -> int:
    """The first step at which the schedule ``lr`` departs from every ``known`` schedule (differs from it, or
    runs past its end; relative tolerance 1e-6): before it, a run of ``lr`` is a run of a known schedule, since
    the loss at a step depends on the rates up to it. 0 when nothing is known."""
    first = 0
    for other in known:
        n = min(lr.size, other.size)
        differs = ~np.isclose(lr[:n], other[:n], rtol=1e-6, atol=0.0)
        first = max(first, int(np.argmax(differs)) if differs.any() else n)
    return first


@dataclasses.dataclass(frozen=True)
class LossCurves:
    """Logged loss curves and the learning rate of every run at every step.

    Attributes:
        table: one row per logged point, columns ``run``, ``step`` (int) and ``loss`` (nats), and
            ``N`` (the run's model size in parameters) when sizes were given; sorted by run then step.
        schedules: per run label, the learning rate at steps ``0 .. len - 1``.
    """

    table: pd.DataFrame
    schedules: Mapping[Any, np.ndarray]

    @classmethod
    def from_table(cls, table: pd.DataFrame, schedules: Mapping[Any, Sequence[float] | np.ndarray], *,
                   run: str = "run", step: str = "step", loss: str = "loss", params: str | None = None) -> LossCurves:
        """Check and sort a table of logged points (columns ``run``, ``step``, ``loss``) with each run's schedule.

        ``params`` names an optional column of each run's model size N (parameters): curves of several
        sizes are then fitted with N as a covariate of the law (:func:`bayescale.fit_curves`).

        Raises:
            DataError: a missing column, a loss that is not positive and finite, a step that is not a
                whole number, before the end of warmup or beyond the schedule, a repeated (run, step), a run
                without a schedule, a schedule that is not a 1-d array of finite rates >= 0 with a
                positive maximum, or a model size that is not positive and finite or not one value per run.
        """
        missing = [c for c in (run, step, loss, *([params] if params else [])) if c not in table.columns]
        if missing:
            raise DataError(f"loss curves need columns {missing}; the table has {list(table.columns)}")
        frame = pd.DataFrame({"run": table[run].to_numpy(), "step": pd.to_numeric(table[step], errors="coerce"),
                              "loss": pd.to_numeric(table[loss], errors="coerce")}, index=table.index)
        if params:
            frame["N"] = pd.to_numeric(table[params], errors="coerce")
            bad = frame.index[~(np.isfinite(frame["N"]) & (frame["N"] > 0))]
            if len(bad):
                raise DataError(f"column {params!r}: model sizes must be positive and finite; rows {list(bad[:5])}")
            mixed = [r for r, n in frame.groupby("run", sort=False)["N"].nunique().items() if n > 1]
            if mixed:
                raise DataError(f"column {params!r}: a run has one model size; runs {mixed[:3]} have several")
        bad = frame.index[~(np.isfinite(frame["loss"]) & (frame["loss"] > 0))]
        if len(bad):
            raise DataError(f"column {loss!r}: losses must be positive and finite; rows {list(bad[:5])}")
        whole = np.isfinite(frame["step"]) & (frame["step"] == np.round(frame["step"])) & (frame["step"] >= 0)
        if not whole.all():
            raise DataError(f"column {step!r}: steps must be whole numbers >= 0; rows {list(frame.index[~whole][:5])}")
        frame["step"] = frame["step"].astype(np.int64)
        repeated = frame.index[frame.duplicated(["run", "step"], keep=False)]
        if len(repeated):
            raise DataError(f"columns {run!r}, {step!r}: a run logs each step once; repeated in rows {list(repeated[:5])}")
        lrs: dict[Any, np.ndarray] = {}
        for label in pd.unique(frame["run"]):
            if label not in schedules:
                raise DataError(f"run {label!r} has no schedule; schedules are given for {list(schedules)}")
            lr = np.asarray(schedules[label], dtype=float)
            if lr.ndim != 1 or not np.all(np.isfinite(lr) & (lr >= 0)) or not lr.max(initial=0) > 0:
                raise DataError(f"schedule of run {label!r}: a 1-d array of finite learning rates >= 0 with a"
                                " positive maximum")
            steps = frame.loc[frame["run"] == label, "step"]
            outside = steps.index[(steps < warmup_of(lr)) | (steps >= lr.size)]
            if len(outside):
                raise DataError(f"run {label!r}: steps must lie at or after the end of warmup (step {warmup_of(lr)}) and within"
                                f" its schedule ({lr.size} steps); rows {list(outside[:5])}")
            lrs[label] = lr
        frame = frame.sort_values(["run", "step"], key=lambda c: c.map(str) if c.name == "run" else c)
        return cls(frame.reset_index(drop=True), lrs)

    @property
    def runs(self) -> list[Any]:
        """Run labels, in table order."""
        return list(pd.unique(self.table["run"]))

    @property
    def sizes(self) -> dict[Any, float] | None:
        """Each run's model size N (parameters), or None when the curves carry no sizes."""
        if "N" not in self.table.columns:
            return None
        return {r: float(n) for r, n in self.table.groupby("run", sort=False)["N"].first().items()}

    def subset(self, runs: Sequence[Any]) -> LossCurves:
        """The curves of ``runs`` only."""
        unknown = [r for r in runs if r not in self.schedules]
        if unknown:
            raise KeyError(f"unknown runs {unknown}; runs are {self.runs}")
        keep = self.table["run"].isin(list(runs))
        return LossCurves(self.table[keep].reset_index(drop=True), {r: self.schedules[r] for r in runs})

    def prefix(self, run: Any, fraction: float) -> LossCurves:
        """These curves with ``run`` cut to its points up to ``fraction`` of its last logged step."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        rows = self.table["run"] == run
        if not rows.any():
            raise KeyError(f"unknown run {run!r}; runs are {self.runs}")
        last = self.table.loc[rows, "step"].max()
        keep = ~rows | (self.table["step"] <= fraction * last)
        return LossCurves(self.table[keep].reset_index(drop=True), dict(self.schedules))


def named_schedules(table: pd.DataFrame, *, run: str = "run", schedule: str = "schedule",
                    **options: Any) -> dict[Any, np.ndarray]:
    """Each run's learning rates from a column naming its schedule (:func:`bayescale.schedules.from_name`:
    ``cosine_24000``, ``wsd_20000_24000``, ...); ``options``: its ``peak``, ``final`` and ``warmup``.

    Raises:
        DataError: a missing column, a run whose rows name two schedules, or a name that is no schedule
            (the message names the run).
    """
    missing = [c for c in (run, schedule) if c not in table.columns]
    if missing:
        raise DataError(f"named schedules need columns {missing}; the table has {list(table.columns)}")
    out = {}
    for label, rows in table.groupby(run, sort=False):
        names = pd.unique(rows[schedule])
        if len(names) != 1:
            raise DataError(f"column {schedule!r}: run {label!r} names {len(names)} schedules {list(names)[:3]}; give one")
        try:
            out[label] = _schedules.from_name(str(names[0]), **options)
        except ValueError as err:
            raise DataError(f"column {schedule!r}, run {label!r}: {err}") from None
    return out


class CurveInputs(NamedTuple):
    """Schedule sums at each point, for the curve laws (float64 on the host; see the module docstring).

    ``s1``, ``sw``, ``s2``: ``(P,)``. The multi-power sum over blocks of drops is stored sparsely, one
    entry per (point, block) pair with a drop before the point: ``point`` (its row), ``drop`` (the
    block's drop up to the point), ``eta`` (drop-weighted rate) and ``tail`` (drop-weighted
    ``c(t) - c(k-1)``), all ``(M,)``.
    """

    s1: Array
    sw: Array
    s2: Array
    point: Array
    drop: Array
    eta: Array
    tail: Array


def _run_inputs(lr: np.ndarray, steps: np.ndarray, block: int, decay: float) -> CurveInputs:
    """The sums of one run at its ``steps``; ``point`` indexes ``steps``."""
    w = warmup_of(lr)
    after = np.zeros_like(lr)
    after[w + 1:] = lr[w + 1:]
    c = np.cumsum(after)  # c[t] = sum_{s=W+1..t} lr[s]
    delta = np.zeros_like(lr)
    delta[w + 1:] = lr[w:-1] - lr[w + 1:]
    if np.any(delta < 0):
        raise DataError(f"the learning rate rises after warmup (step {w + 1 + int(np.argmax(delta[w + 1:] < 0))}): the"
                        " curve laws describe schedules that do not rise after their warmup")
    s2 = np.cumsum(scipy.signal.lfilter([1.0], [1.0, -decay], delta))
    c_before = np.r_[0.0, c[:-1]]  # c(k - 1)
    # per block, exact partial sums up to each point: cumulative sums of drop, drop*lr, drop*c(k-1)
    sums = [np.cumsum(v) for v in (delta, delta * lr, delta * c_before)]
    starts = np.arange(w + 1, lr.size, block)
    ends = np.minimum(starts + block - 1, lr.size - 1)
    active = sums[0][ends] - sums[0][starts - 1] > 0
    starts, ends = starts[active], ends[active]
    point, k = np.nonzero(steps[:, None] >= starts[None, :])  # the blocks begun by each point
    upto = np.minimum(ends[k], steps[point])
    part = [s[upto] - s[starts[k] - 1] for s in sums]
    live = part[0] > 0
    point, drop = point[live], part[0][live]
    return CurveInputs(c[steps], np.full(steps.size, lr[: w + 1].sum()), s2[steps], point, drop,
                       part[1][live] / drop, c[steps][point] - part[2][live] / drop)


def curve_inputs(schedules: Mapping[Any, np.ndarray], points: pd.DataFrame, block: int = BLOCK,
                 decay: float = 0.999) -> CurveInputs:
    """The schedule sums at every point of ``points`` (columns ``run``, ``step``), in its row order."""
    if not (isinstance(block, int) and block >= 1):
        raise ValueError(f"block must be a positive whole number of steps, got {block!r}")
    steps = points["step"].to_numpy(dtype=np.int64)
    labels = points["run"].to_numpy()
    per_point: list[list[np.ndarray]] = [[], [], []]
    entries: list[list[np.ndarray]] = [[], [], [], []]
    order = []
    for label in pd.unique(labels):
        rows = np.flatnonzero(labels == label)
        run = _run_inputs(schedules[label], steps[rows], block, decay)
        for store, values in zip(per_point, run[:3]):
            store.append(values)
        for store, values in zip(entries, (rows[run.point], run.drop, run.eta, run.tail)):
            store.append(values)
        order.append(rows)
    inverse = np.argsort(np.concatenate(order))
    return CurveInputs(*(np.concatenate(v)[inverse] for v in per_point), *(np.concatenate(v) for v in entries))


class CurveLaw(NamedTuple):
    """A law of the loss along a run: ``mean(params, inputs) -> loss`` (nats) at each point, JAX-traceable;
    each parameter is a scalar or one value per point ``(P,)`` (curves of several model sizes).

    Attributes:
        name: registry name.
        params: parameter names, in sampling order.
        priors: prior per parameter (positive support: each is sampled on the log scale).
        mean: the law, from parameters and :class:`CurveInputs`.
        formula: the law in words.
        sparse: whether the law reads the sparse sum over blocks of drops (``point``, ``drop``, ``eta``,
            ``tail`` of :class:`CurveInputs`), whose size grows with the points' steps.
    """

    name: str
    params: tuple[str, ...]
    priors: Mapping[str, dist.Distribution]
    mean: Callable[[Mapping[str, Array], CurveInputs], Array]
    formula: str
    sparse: bool = True


def _common_priors() -> dict[str, dist.Distribution]:
    return {"L0": dist.LogNormal(jnp.log(2.5), 0.5), "A": dist.LogNormal(jnp.log(0.5), 1.0),
            "alpha": dist.LogNormal(jnp.log(0.5), 0.5)}


def multi_power() -> CurveLaw:
    """Multi-power law (Luo et al. 2025), with ``C lr^-gamma`` written ``K (lr / LR_REF)^-gamma`` (``K = C
    LR_REF^-gamma``, ``LR_REF = 1e-4``: ``K`` and ``gamma`` are then nearly independent in the posterior,
    where ``C`` and ``gamma`` lie on a curved ridge). Priors: ``L0 ~ LogNormal(log 2.5, 0.5)`` nats,
    ``A ~ LogNormal(log 0.5, 1)``, ``alpha ~ LogNormal(log 0.5, 0.5)``, ``B ~ LogNormal(log 300, 1.5)``,
    ``K ~ LogNormal(log 100, 2)``, ``beta ~ LogNormal(log 0.5, 0.7)``, ``gamma ~ LogNormal(log 0.5, 0.7)``
    (the published fits: B of a few hundred, beta and gamma near 0.5, with peak rates near 3e-4)."""

    def mean(p: Mapping[str, Array], x: CurveInputs) -> Array:
        k, gamma, beta = (p[n][x.point] if jnp.ndim(p[n]) else p[n] for n in ("K", "gamma", "beta"))
        g = 1.0 - (k * (x.eta / LR_REF) ** -gamma * x.tail + 1.0) ** -beta
        decay = jax.ops.segment_sum(x.drop * g, x.point, num_segments=x.s1.shape[0])
        return p["L0"] + p["A"] * (x.s1 + x.sw) ** -p["alpha"] - p["B"] * decay

    priors = {**_common_priors(), "B": dist.LogNormal(jnp.log(300.0), 1.5), "K": dist.LogNormal(jnp.log(100.0), 2.0),
              "beta": dist.LogNormal(jnp.log(0.5), 0.7), "gamma": dist.LogNormal(jnp.log(0.5), 0.7)}
    return CurveLaw("multi_power", tuple(priors), priors, mean,
                    "L0 + A (S1 + S_W)^-alpha - B sum_k (lr[k-1] - lr[k]) (1 - (K (lr[k]/1e-4)^-gamma S_k(t) + 1)^-beta)")


def lr_annealing() -> CurveLaw:
    """Learning-rate annealing law (Tissue et al. 2024). Priors as :func:`multi_power` for ``L0``, ``A`` and
    ``alpha``; ``C ~ LogNormal(log 1, 1.5)`` (nats per unit of annealing area: with peak rates near 3e-4 a
    whole decay gives an area of a few tenths, and an annealing gain of a few tenths of a nat)."""

    def mean(p: Mapping[str, Array], x: CurveInputs) -> Array:
        return p["L0"] + p["A"] * (x.s1 + x.sw) ** -p["alpha"] - p["C"] * x.s2

    priors = {**_common_priors(), "C": dist.LogNormal(0.0, 1.5)}
    return CurveLaw("lr_annealing", tuple(priors), priors, mean, "L0 + A (S1 + S_W)^-alpha - C S2", sparse=False)


_LAWS = {"multi_power": multi_power, "lr_annealing": lr_annealing}


def get_curve_law(law: str | CurveLaw) -> CurveLaw:
    """A curve law by name (``"multi_power"``, ``"lr_annealing"``) or itself."""
    if isinstance(law, CurveLaw):
        return law
    if law not in _LAWS:
        raise ValueError(f"unknown curve law {law!r}; curve laws are {list(_LAWS)}")
    return _LAWS[law]()
