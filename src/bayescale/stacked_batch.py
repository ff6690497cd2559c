"""Stacking several laws in every group of a batch (:func:`stack_batch`).

Each law is fitted to every group with :func:`bayescale.fit_batch`; :func:`stack_batch`
stacks them group by group as :func:`bayescale.stack` does one fit. With leave-future-out
weights (the default) the rolling-origin refits of all groups and cuts of one law run as
one more batch, so the sampler compiles once per law, not once per group.

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from .allocation import compute_optimal_by_group
from .batch import BatchResult, fit_batch
from .data import DataError
from .extrapolation import CUTS, cut_masks, log_predictive, refit_settings
from .posterior import LEVEL, ConvergenceWarning, Diagnostics
from .stacking import METHODS, StackedResult, check_stack, mix, scored, stacking_weights

__all__ = ["StackedBatch", "stack_batch"]


@dataclasses.dataclass(frozen=True)
class StackedBatch:
    """Per-group stacks of several laws, each law fitted to the same groups by :func:`bayescale.fit_batch`.

    Attributes:
        results: group label -> :class:`StackedResult` (each saves and loads like any result).
        failures: group label -> reason, for groups that could not be stacked (a member's
            fit failed, or no cut left runs to refit every law).
        order: group labels in input order.
    """

    results: dict[Any, StackedResult]
    failures: dict[Any, str]
    order: list[Any]

    def __getitem__(self, name: Any) -> StackedResult:
        if name in self.failures:
            raise KeyError(f"group {name!r} failed: {self.failures[name]}")
        return self.results[name]

    def __len__(self) -> int:
        return len(self.order)

    def _stacked(self) -> dict[Any, StackedResult]:
        if not self.results:
            raise ValueError("no group was stacked: " + "; ".join(f"{k}: {v}" for k, v in self.failures.items()))
        return {n: self.results[n] for n in self.order if n in self.results}

    @property
    def weights(self) -> pd.DataFrame:
        """Stacking weights, one row per stacked group, one column per law."""
        return pd.DataFrame({n: dict(r.weights) for n, r in self._stacked().items()}).T.rename_axis("group")

    @property
    def diagnostics(self) -> Diagnostics:
        """Every member's diagnostics in every group (table indexed by group, member, parameter)."""
        return Diagnostics.combine({n: r.diagnostics for n, r in self._stacked().items()})

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Long table: one row per (group, member, parameter) with the member's weight and statistics."""
        parts = {n: r.summary(level) for n, r in self._stacked().items()}
        return pd.concat(parts, names=["group"]).reset_index(level=0).reset_index(drop=True)

    def compute_optimal(self, compute: Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL) -> pd.DataFrame:
        """Compute-optimal allocation of every stacked group, the law uncertainty included (group, compute)."""
        return compute_optimal_by_group(self._stacked(), compute, flops_per_token, level)


def _future_elpd_batch(batch: BatchResult, labels: Sequence[Any], cuts: Sequence[float]) -> dict[Any, pd.Series]:
    """:func:`future_elpd` of every listed group, the refits of all groups and cuts as one :func:`fit_batch`."""
    first = batch.results[labels[0]]
    spec = first.spec
    held: dict[tuple[Any, float], np.ndarray] = {}
    for label in labels:
        data = batch.results[label].data
        for q, below in cut_masks(data, spec.law, cuts, len(spec.latents) + 2):
            held[(label, q)] = ~below
    if not held:
        return {}
    with warnings.catch_warnings():  # small refits that mix less well still score their extrapolation
        warnings.simplefilter("ignore", ConvergenceWarning)
        refits = fit_batch({key: batch.results[key[0]].data.subset(~mask) for key, mask in held.items()},
                           law=spec.law, likelihood=spec.likelihood, priors=dict(spec.priors),
                           settings=refit_settings(first.settings))
    parts: dict[Any, list[pd.Series]] = {}
    for (label, q), mask in held.items():
        if (label, q) in refits.results:
            fit = batch.results[label]
            draws = log_predictive(refits.results[(label, q)], fit.data.subset(mask), fit.seed)
            parts.setdefault(label, []).append(scored(fit, q, mask, draws))
    return {label: pd.concat(p) for label, p in parts.items()}


def stack_batch(
    batches: Mapping[str, BatchResult],
    seed: int = 0,
    method: Literal["future", "loo"] = "future",
    cuts: Sequence[float] = CUTS,
) -> StackedBatch:
    """Stack several laws in every group of a batch, as :func:`bayescale.stack` does for one fit.

    Args:
        batches: law name -> :class:`~bayescale.batch.BatchResult` of that law, all of the
            same groups (e.g. ``fit_batch(table, "dataset", law=name)`` for each name).
        seed: seed of each group's draw slots' assignment to members.
        method: ``"future"`` (leave-future-out weights; the refits of every group and cut
            run as one :func:`~bayescale.batch.fit_batch` per law) or ``"loo"``.
        cuts: quantiles of compute at which ``"future"`` cuts.

    Returns:
        :class:`StackedBatch`: per group a :class:`~bayescale.stacking.StackedResult`;
        groups any law failed on, or that no cut leaves enough runs to refit, in ``failures``.

    Raises:
        ValueError: batches of other groups, or as :func:`bayescale.stack`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    names = list(batches)
    order = batches[names[0]].order
    for name in names[1:]:
        if batches[name].order != order:
            raise ValueError(f"batch {name!r} has other groups than {names[0]!r}: stacking needs the same groups")
    # a group failed by several laws is reported with the first law's reason
    failures = {label: f"{n}: {why}" for n in reversed(names) for label, why in batches[n].failures.items()}
    labels = [label for label in order if label not in failures]
    future = {n: _future_elpd_batch(batches[n], labels, cuts) for n in names} if method == "future" and labels else None
    results = {}
    for label in labels:
        fits = {n: batches[n].results[label] for n in names}
        try:
            check_stack(fits, method)
            own = None if future is None else {n: future[n].get(label, pd.Series(dtype=float)) for n in names}
            w, record = stacking_weights(fits, own)
            results[label] = mix(fits, w, seed, method, record)
        except (ValueError, DataError) as err:
            failures[label] = str(err)
    return StackedBatch(results, failures, [label for label in order if label in results or label in failures])
