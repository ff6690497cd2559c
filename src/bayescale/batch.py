"""Batch fits: many datasets through one compiled NUTS kernel.

Datasets (groups) are padded to a shape bucket (:func:`bayescale.model.bucket_size`)
with padded rows masked out of the likelihood, so one compiled program per law
and bucket serves every group. Each group keeps its
own initial point, PRNG keys, step size and mass matrix: group ``i`` (in input
order) is sampled exactly as ``bs.fit(group_data, seed=seed + i)`` would be
(bit-identical with the ``"loop"`` strategy: both pad to the same bucket).

Lanes (groups x chains) run with :func:`bayescale.sampling.sample_lanes`:
vectorised and sharded over devices on accelerators, one compiled program per
CPU core otherwise. Groups are processed in chunks that bound memory; with
``out_dir`` every finished group is saved and an interrupted run resumes.

For several hosts, start JAX's own multi-process runtime
(``jax.distributed.initialize()``) and give each process its share with
``shard=(jax.process_index(), jax.process_count())``; each process writes its
groups to the shared ``out_dir`` and :func:`load_batch` reads them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import cache
from .allocation import compute_optimal_by_group
from .data import ScalingData
from .laws import Law, get_law
from .likelihoods import Likelihood, get_likelihood
from .model import Spec, bucket_size, check_data, make_spec, model_data, potential_fn
from .posterior import LEVEL, Diagnostics, FitResult, fit_idata, load, summaries_by_group
from .sampling import SamplerSettings, resolve_strategy, sample_lanes, sampler_settings
from .start import initial_points

__all__ = ["fit_batch", "BatchResult", "load_batch"]

_MEMORY_FRACTION = 0.25


def split_groups(
    data: Any, group: str | None, columns: Mapping[str, Any]
) -> tuple[dict[str, ScalingData], dict[str, str], list[str]]:
    """Groups by name, the reasons of groups that fail validation, and all names in input order."""
    failures: dict[str, str] = {}
    order: list[str] = []
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, ScalingData):
        items = list(data.groups().items())
    elif isinstance(data, pd.DataFrame):
        if group is None or group not in data.columns:
            raise ValueError(f"group column {group!r} not found; columns are {list(map(str, data.columns))}")
        items = []
        for name, frame in data.groupby(group, sort=False):
            order.append(str(name))
            try:
                items.append((name, ScalingData.from_table(frame.drop(columns=group), **columns)))
            except ValueError as err:
                failures[str(name)] = f"invalid data: {err}"
    elif isinstance(data, Sequence) and not isinstance(data, str):
        items = [(str(i), d) for i, d in enumerate(data)]
    else:
        raise ValueError("data must be a DataFrame with a group column, a dict of name -> ScalingData, or a list")
    groups = {}
    for name, d in items:
        if str(name) not in order:
            order.append(str(name))
        if not isinstance(d, ScalingData):
            failures[str(name)] = f"not ScalingData but {type(d).__name__}"
        else:
            groups[str(name)] = d
    return groups, failures, order


def _chunk_size(lanes_per_group: int, k: int, iterations: int, strategy: str) -> int:
    if strategy == "loop":
        return 64
    per_group = lanes_per_group * iterations * (k + 6) * 8 * 3
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, int(_MEMORY_FRACTION * limit / per_group))


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Fits of many groups.

    Attributes:
        results: group name -> :class:`~bayescale.posterior.FitResult`.
        failures: group name -> reason, for groups that could not be fitted.
        order: group names in input order.
        stats: run statistics: wall time, lane efficiency (mean over max leapfrog
            steps per iteration across lanes of a chunk; 1 is perfect).
    """

    results: dict[str, FitResult]
    failures: dict[str, str]
    order: list[str]
    stats: dict[str, float] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> FitResult:
        if name in self.failures:
            raise KeyError(f"group {name!r} failed: {self.failures[name]}")
        return self.results[name]

    def __len__(self) -> int:
        return len(self.order)

    @property
    def diagnostics(self) -> Diagnostics:
        """Diagnostics of every fitted group as one :class:`Diagnostics` (table indexed by group, parameter)."""
        return Diagnostics.combine({n: self.results[n].diagnostics for n in self._fitted()})

    def status(self) -> pd.DataFrame:
        """Per group: status (ok / warning / failed), reason, max R-hat, min bulk ESS, divergences."""
        rows = []
        for name in self.order:
            if name in self.failures:
                rows.append({"group": name, "status": "failed", "reason": self.failures[name]})
                continue
            d = self.results[name].diagnostics
            rows.append({
                "group": name,
                "status": "ok" if d.ok else "warning",
                "reason": "; ".join(d.problems),
                "max_r_hat": d.max_r_hat,
                "min_ess_bulk": d.min_ess_bulk,
                "divergences": d.divergences,
            })
        return pd.DataFrame(rows).set_index("group")

    def _fitted(self) -> list[str]:
        names = [n for n in self.order if n in self.results]
        if not names:
            raise ValueError("no group of the batch was fitted: " + "; ".join(f"{k}: {v}" for k, v in self.failures.items()))
        return names

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Long table: one row per (group, parameter) with statistics, r_hat and ESS."""
        return summaries_by_group({n: self.results[n] for n in self._fitted()}, level)

    def compute_optimal(self, compute: Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL) -> pd.DataFrame:
        """Compute-optimal allocation of every fitted group in one table (group, compute)."""
        return compute_optimal_by_group({n: self.results[n] for n in self._fitted()}, compute, flops_per_token, level)

    def save(self, out_dir: str | os.PathLike[str]) -> None:
        """Write each group's result and the failures to ``out_dir`` (read with :func:`load_batch`)."""
        for name in self.order:
            if name in self.results:
                _save_group(out_dir, self.order.index(name), name, self.results[name])
            else:
                _save_failure(out_dir, self.order.index(name), name, self.failures[name])


def _group_file(out_dir: str | os.PathLike[str], index: int) -> str:
    return os.path.join(os.fspath(out_dir), f"group_{index:06d}")


def _save_group(out_dir: Any, index: int, name: str, result: FitResult) -> None:
    os.makedirs(out_dir, exist_ok=True)
    base = _group_file(out_dir, index)
    result.save(base + ".nc")
    with open(base + ".json", "w") as handle:
        json.dump({"name": name, "status": "fitted"}, handle)


def _save_failure(out_dir: Any, index: int, name: str, reason: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(_group_file(out_dir, index) + ".json", "w") as handle:
        json.dump({"name": name, "status": "failed", "reason": reason}, handle)


def load_batch(out_dir: str | os.PathLike[str], law: Law | None = None) -> BatchResult:
    """Read a :class:`BatchResult` from the folder written by ``fit_batch(out_dir=...)`` or ``save``."""
    names = sorted(f for f in os.listdir(out_dir) if f.startswith("group_") and f.endswith(".json"))
    results, failures, order = {}, {}, []
    for file in names:
        with open(os.path.join(out_dir, file)) as handle:
            meta = json.load(handle)
        order.append(meta["name"])
        if meta["status"] == "failed":
            failures[meta["name"]] = meta["reason"]
        else:
            results[meta["name"]] = load(os.path.join(out_dir, file[:-5] + ".nc"), law=law)
    return BatchResult(results, failures, order)


def _fit_chunk(
    spec: Spec, chunk: list[tuple[int, str, ScalingData]], size: int, settings: SamplerSettings, strategy: str
) -> tuple[dict[str, FitResult], float]:
    """Fit one chunk of groups padded to ``size`` rows; returns results and lane efficiency."""
    num_chains, seed = settings.num_chains, settings.seed
    mds = [model_data(d, spec.law, size=size) for _, _, d in chunk]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *mds)
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(seed + i), 3) for i, _, _ in chunk])
    if strategy == "loop":  # per group, exactly as `fit` does: results do not depend on the chunk's make-up
        inits = jnp.stack([initial_points(spec, m, k, num_chains) for m, k in zip(mds, keys[:, 0])])
    else:
        inits = jax.vmap(lambda m, k: initial_points(spec, m, k, num_chains))(stacked, keys[:, 0])
    lanes = jax.tree_util.tree_map(lambda a: jnp.repeat(a, num_chains, axis=0), stacked)
    lane_keys = jax.vmap(lambda k: jax.random.split(k, num_chains))(keys[:, 1]).reshape(-1, 2)
    draws = sample_lanes(
        potential_fn(spec), inits.reshape(-1, inits.shape[-1]), lanes, lane_keys, settings.nuts,
        strategy=strategy, progress=settings.progress, desc=f"{len(chunk)} groups x {num_chains} chains",
    )
    steps = draws.num_steps.astype(float)
    efficiency = float(np.mean(steps.mean(axis=0) / steps.max(axis=0)))
    results = {}
    for j, (i, name, data) in enumerate(chunk):
        part = jax.tree_util.tree_map(lambda a: a[j * num_chains:(j + 1) * num_chains], draws)
        idata = fit_idata(spec, data, mds[j], part, keys[j, 2])
        own = dataclasses.replace(settings, seed=seed + i)
        results[name] = FitResult(idata=idata, data=data, settings=own, spec=spec)
    return results, efficiency


def fit_batch(
    data: Any,
    group: str | None = None,
    law: str | Law = "chinchilla",
    likelihood: str | Likelihood = "student_t",
    priors: Mapping[str, Any] | None = None,
    *,
    settings: SamplerSettings | None = None,
    chunk_size: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    shard: tuple[int, int] | None = None,
    **options: Any,
) -> BatchResult:
    """Fit one law to many datasets with one compiled sampler.

    Args:
        data: a DataFrame with a ``group`` column (column options as for
            ``ScalingData.from_table`` in ``**columns``), a dict of name ->
            :class:`~bayescale.data.ScalingData`, a list of them, or a
            ``ScalingData`` with a group column.
        group: the group column of a DataFrame.
        law, likelihood, priors: as for :func:`bayescale.fit`.
        settings: sampler settings as for :func:`bayescale.fit`; group ``i`` uses
            seed ``settings.seed + i``; ``progress`` shows bars over chunks and iterations.
        chunk_size: groups per chunk; default from device memory (vmap) or 64 (loop).
        out_dir: save each finished group here and skip groups already saved
            (resume after an interruption).
        shard: ``(index, count)``: fit only groups ``i`` with ``i % count == index``
            (one share per process under ``jax.distributed``).
        **options: :class:`~bayescale.sampling.SamplerSettings` fields as keywords,
            then column options as for ``ScalingData.from_table``.

    Returns:
        :class:`BatchResult`. Groups with invalid data or a failed fit are listed
        in ``failures`` with the reason; the others finish. Unconverged groups
        have status ``"warning"`` in :meth:`BatchResult.diagnostics`.
    """
    settings = sampler_settings(settings, options)
    cache.ensure()
    spec = make_spec(get_law(law), get_likelihood(likelihood), priors)
    groups, failures, order = split_groups(data, group, options)
    for name, d in groups.items():
        try:
            check_data(d, spec)
        except ValueError as err:
            failures[name] = f"invalid data: {err}"
    strategy = resolve_strategy(settings.strategy)
    todo = [(i, n, groups[n]) for i, n in enumerate(order) if n in groups and n not in failures]
    if shard is not None:
        index, count = shard
        todo = [t for t in todo if t[0] % count == index]
    results: dict[str, FitResult] = {}
    if out_dir is not None:
        for i, name, _ in list(todo):
            base = _group_file(out_dir, i)
            if os.path.exists(base + ".json") and os.path.exists(base + ".nc"):
                results[name] = load(base + ".nc", law=spec.law)
        todo = [t for t in todo if t[1] not in results]
        for name, reason in failures.items():
            _save_failure(out_dir, order.index(name), name, reason)

    buckets: dict[int, list] = {}
    for item in todo:
        buckets.setdefault(bucket_size(item[2].n), []).append(item)
    iterations = settings.num_warmup + settings.num_samples
    size_of_chunk = chunk_size or _chunk_size(settings.num_chains, len(spec.latents), iterations, strategy)
    chunks = [(size, items[i:i + size_of_chunk]) for size, items in sorted(buckets.items())
              for i in range(0, len(items), size_of_chunk)]
    efficiencies = []
    start = time.perf_counter()
    with jax.enable_x64(settings.x64):
        for size, chunk in tqdm(chunks, desc="chunks", disable=not settings.progress or len(chunks) < 2):
            try:
                fitted, efficiency = _fit_chunk(spec, chunk, size, settings, strategy)
            except Exception as err:  # noqa: BLE001 - one failing chunk must not stop the batch
                reason = f"sampler failed: {type(err).__name__}: {err}"
                for i, name, _ in chunk:
                    failures[name] = reason
                    if out_dir is not None:
                        _save_failure(out_dir, i, name, reason)
                continue
            efficiencies.append(efficiency)
            for i, name, _ in chunk:
                results[name] = fitted[name]
                if out_dir is not None:
                    _save_group(out_dir, i, name, fitted[name])
    stats = {"wall_s": time.perf_counter() - start}
    if efficiencies:
        stats["lane_efficiency"] = float(np.mean(efficiencies))
    return BatchResult(results, failures, [n for n in order if n in results or n in failures], stats)
