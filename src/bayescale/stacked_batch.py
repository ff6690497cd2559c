"""Stacking several laws in every group of a batch (:func:`stack_batch`).

Each law is fitted to every group with :func:`bayescale.fit_batch`; :func:`stack_batch`
stacks them group by group as :func:`bayescale.stack` does one fit. With leave-future-out
weights (the default) the rolling-origin refits of all groups and cuts of one law run as
one more batch (:func:`bayescale.extrapolation.rolling_record`), so the sampler compiles once
per law, not once per group, and each group is stacked exactly as it would be alone.

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd

from .allocation import compute_optimal_by_group
from .batch import BatchResult
from .data import DataError
from .extrapolation import CUTS, rolling_record
from .posterior import LEVEL, Diagnostics
from .stacking import METHODS, StackedResult, check_stack, mix, stack_by_record, stacking_weights

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


def stack_batch(
    batches: Mapping[str, BatchResult],
    seed: int = 0,
    method: Literal["future", "loo"] = "future",
    cuts: Sequence[float] = CUTS,
    structural: bool = False,
) -> StackedBatch:
    """Stack several laws in every group of a batch, as :func:`bayescale.stack` does for one fit.

    Args:
        batches: law name -> :class:`~bayescale.batch.BatchResult` of that law, all of the
            same groups (e.g. ``fit_batch(table, "dataset", law=name)`` for each name).
        seed: seed of each group's draw slots' assignment to members.
        method: ``"future"`` (leave-future-out weights; the refits of every group and cut
            run as one :func:`~bayescale.batch.fit_batch` per law) or ``"loo"``.
        cuts: quantiles of compute at which ``"future"`` cuts.
        structural: give each law in each group its structural error, learned from the same
            refits (``"future"`` only), as :func:`bayescale.stack` does.

    Returns:
        :class:`StackedBatch`: per group a :class:`~bayescale.stacking.StackedResult`;
        groups any law failed on, or that no cut leaves enough runs to refit, in ``failures``.

    Raises:
        ValueError: batches of other groups, or as :func:`bayescale.stack`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if structural and method != "future":
        raise ValueError("structural=True learns each law's structural error from its leave-future-out refits: "
                         "use method='future'")
    names = list(batches)
    order = batches[names[0]].order
    for name in names[1:]:
        if batches[name].order != order:
            raise ValueError(f"batch {name!r} has other groups than {names[0]!r}: stacking needs the same groups")
    # a group failed by several laws is reported with the first law's reason
    failures = {label: f"{n}: {why}" for n in reversed(names) for label, why in batches[n].failures.items()}
    labels = [label for label in order if label not in failures]
    future = method == "future" and labels
    records = {n: rolling_record({label: batches[n].results[label] for label in labels}, cuts) for n in names
               } if future else {}
    results = {}
    for label in labels:
        fits = {n: batches[n].results[label] for n in names}
        try:
            check_stack(fits, method)
            if future:
                results[label] = stack_by_record(fits, {n: records[n][label] for n in names}, seed, structural)
            else:
                results[label] = mix(fits, stacking_weights(fits, None)[0], seed, method)
        except (ValueError, DataError) as err:
            failures[label] = str(err)
    return StackedBatch(results, failures, [label for label in order if label in results or label in failures])
