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
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import cache
from .allocation import compute_optimal_by_group
from .data import DataError, ScalingData, check_labels
from .laws import Law, get_law
from .likelihoods import Likelihood, get_likelihood
from .model import Spec, bucket_size, check_data, make_spec, model_data, potential_fn
from .posterior import (
    LEVEL, STRUCTURAL_METHOD, Diagnostics, FitResult, fit_idata, load, spec_to_json, summaries_by_group,
)
from .sampling import Draws, SamplerSettings, check_seed, fit_keys, resolve_strategy, sample_lanes, sampler_settings
from .start import initial_points
from .store import MANIFEST, Manifest, ResumeWarning, data_hash, file_hash, group_file, label_from_json

__all__ = ["fit_batch", "BatchResult", "load_batch", "fingerprint"]

_MEMORY_FRACTION = 0.25


def _plain(label: Any) -> Any:
    return label.item() if isinstance(label, np.generic) else label


def split_groups(
    data: Any, group: str | None, columns: Mapping[str, Any]
) -> tuple[dict[Any, ScalingData], dict[Any, str], list[Any]]:
    """Groups by label (labels keep their type), the reasons of groups that fail validation, all labels in order.

    Raises:
        DataError: a DataFrame without the group column, or with rows whose group label is missing.
    """
    failures: dict[Any, str] = {}
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, ScalingData):
        items = list(data.groups().items())
    elif isinstance(data, pd.DataFrame):
        if group is None or group not in data.columns:
            raise DataError(f"group column {group!r} not found; columns are {list(map(str, data.columns))}")
        if data.shape[0] == 0:
            raise DataError("the table has no rows")
        labels = check_labels(data[group], group)
        items = []
        for name, frame in data.groupby(pd.Series(labels, index=data.index, dtype=object), sort=False):
            try:
                items.append((name, ScalingData.from_table(frame.drop(columns=group), **columns)))
            except ValueError as err:
                failures[_plain(name)] = f"invalid data: {err}"
                items.append((name, None))
    elif isinstance(data, Sequence) and not isinstance(data, str):
        items = list(enumerate(data))
    else:
        raise DataError("data must be a DataFrame with a group column, a dict of name -> ScalingData, or a list")
    groups, order = {}, []
    for name, d in items:
        name = _plain(name)
        order.append(name)
        if isinstance(d, ScalingData):
            groups[name] = d
        elif name not in failures:
            failures[name] = f"not ScalingData but {type(d).__name__}"
    return groups, failures, order


def _chunk_size(lanes_per_group: int, k: int, iterations: int, strategy: str) -> int:
    if strategy == "loop":  # lanes run a thread per core and each group is saved as soon as its chains finish
        return 64
    per_group = lanes_per_group * iterations * (k + 6) * 8 * 3
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, int(_MEMORY_FRACTION * limit / per_group))


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Fits of many groups.

    Group labels keep their type: ``1`` and ``"1"`` are different groups.

    Attributes:
        results: group label -> :class:`~bayescale.posterior.FitResult`.
        failures: group label -> reason, for groups that could not be fitted.
        order: group labels in input order.
        stats: run statistics: wall time, lane efficiency (mean over max leapfrog
            steps per iteration across lanes of a chunk; 1 is perfect).
        resume: with ``out_dir``: group label -> ``"reused"``, ``"fitted"``, or
            ``"refitted: <why the saved result could not be reused>"``.
    """

    results: dict[Any, FitResult]
    failures: dict[Any, str]
    order: list[Any]
    stats: dict[str, float] = dataclasses.field(default_factory=dict)
    resume: dict[Any, str] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: Any) -> FitResult:
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
        """Per group: status (ok / warning / failed), reason, max R-hat, min bulk ESS, divergences (and resume)."""
        rows = []
        for name in self.order:
            row: dict[str, Any] = {"group": name}
            if name in self.failures:
                row |= {"status": "failed", "reason": self.failures[name]}
            else:
                d = self.results[name].diagnostics
                row |= {
                    "status": "ok" if d.ok else "warning",
                    "reason": "; ".join(d.problems),
                    "max_r_hat": d.max_r_hat,
                    "min_ess_bulk": d.min_ess_bulk,
                    "divergences": d.divergences,
                }
            if self.resume:
                row["resume"] = self.resume.get(name, "")
            rows.append(row)
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
        """Write every group and the manifest to ``out_dir`` (read with :func:`load_batch`)."""
        manifest = Manifest(out_dir)
        manifest.start(self.order)
        for name in self.order:
            if name in self.results:
                fit = self.results[name]
                _save(manifest, name, fit, fingerprint(fit.spec, fit.settings, fit.data, name, fit.misfit is not None))
            else:
                manifest.record(name, "failed", {}, self.failures[name])


def fingerprint(spec: Spec, settings: SamplerSettings, data: ScalingData, label: Any, structural: bool = False
                ) -> dict[str, Any]:
    """What a group's result depends on: its data and label (hash), law, likelihood, priors, sampler
    settings with seed, and whether it carries the structural error (the planning mode), by
    :data:`~bayescale.posterior.STRUCTURAL_METHOD`.

    The progress bar is left out; the strategy is recorded as resolved on this machine.
    """
    run = {**settings.to_dict(), "strategy": resolve_strategy(settings.strategy)}
    del run["progress"]
    return {"data": data_hash(data, label), **spec_to_json(spec), "settings": run,
            "structural": STRUCTURAL_METHOD if structural else False}


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Why a saved fingerprint differs from a new one, in words ("" when equal)."""
    if old.get("data") != new["data"]:
        return "its data changed"
    old_mode, new_mode = old.get("structural", False), new.get("structural", False)
    if old_mode != new_mode:
        if old_mode and new_mode:
            return f"its structural error was learned by an older method ({old_mode!r}; now {new_mode!r})"
        return "the planning mode (structural error) was switched " + ("on" if new_mode else "off")
    for key in ("law", "likelihood", "priors", "roles"):
        if old.get(key) != new[key]:
            return f"its {key} changed"
    before, now = old.get("settings", {}), new["settings"]
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
    return f"sampler settings changed ({', '.join(changed)})" if changed else ""


def _save(manifest: Manifest, name: Any, fit: FitResult, inputs: Mapping[str, Any]) -> None:
    path = os.path.join(manifest.folder, group_file(name))
    manifest.record(name, "fitted", inputs, write=lambda: fit.save(path))


def _reuse(manifest: Manifest, recorded: Mapping[str, Any], name: Any, inputs: Mapping[str, Any],
           law: Law) -> tuple[FitResult | None, str]:
    """The saved result of group ``name`` if it can be reused, else ``None`` and why not ("" for a new group)."""
    entry = recorded.get(group_file(name))
    if entry is None:
        return None, ""
    if entry["status"] != "fitted":
        return None, f"it failed before ({entry['reason']})"
    why = _changes(entry["fingerprint"], inputs)
    if why:
        return None, why
    try:
        fit = _load_group(manifest.folder, name, entry, law)
    except DataError as err:
        return None, str(err)
    return fit, ""


def _load_group(folder: str, name: Any, entry: Mapping[str, Any], law: Law | None) -> FitResult:
    """The saved result of group ``name``, checked against its manifest entry (file bytes, label and data).

    Raises:
        DataError: the file is unreadable, or is not the one the manifest recorded for this group (a file
            copied over it, another group's result), naming it.
    """
    path = os.path.join(folder, group_file(name))
    recorded = entry.get("sha256")
    if recorded is not None and os.path.isfile(path) and file_hash(path) != recorded:
        raise DataError(f"{path}: not the file the manifest recorded for group {name!r} (its bytes changed since"
                        " it was written: another group's result copied over it, or an edit)")
    fit = load(path, law=law)
    if not isinstance(fit, FitResult) or data_hash(fit.data, name) != entry["fingerprint"]["data"]:
        raise DataError(f"{path}: holds another result than the manifest records for group {name!r}"
                        " (its data or label differ)")
    return fit


def _resume(
    manifest: Manifest, order: list[Any], names: list[Any], inputs_of: Mapping[Any, Mapping[str, Any]], law: Law
) -> tuple[dict[Any, FitResult], dict[Any, str]]:
    """Start ``order`` as the folder's batch; the saved results of ``names`` that can be reused, and per name
    ``"reused"``, ``"fitted"`` (new) or ``"refitted: <why>"``; warns about refits and left-out groups."""
    stale = manifest.start(order)
    if stale:
        warnings.warn(
            f"{manifest.folder}: {len(stale)} saved groups are not in this batch ({stale[:5]!r}"
            f"{' ...' if len(stale) > 5 else ''}); their files stay, but load_batch no longer lists them",
            ResumeWarning, stacklevel=3,
        )
    recorded = manifest.read()["groups"]
    results, resume = {}, {}
    for name in names:
        fit, why = _reuse(manifest, recorded, name, inputs_of[name], law)
        if fit is not None:
            results[name] = fit
        resume[name] = "reused" if fit is not None else f"refitted: {why}" if why else "fitted"
    refits = {n: r for n, r in resume.items() if r.startswith("refitted")}
    if refits:
        warnings.warn(
            f"{manifest.folder}: {len(refits)} saved groups are refitted: "
            + "; ".join(f"{n!r} {r[len('refitted: '):]}" for n, r in list(refits.items())[:5])
            + (" ..." if len(refits) > 5 else ""),
            ResumeWarning, stacklevel=3,
        )
    return results, resume


def load_batch(out_dir: str | os.PathLike[str], law: Law | None = None) -> BatchResult:
    """Read the latest batch written to ``out_dir`` by ``fit_batch(out_dir=...)`` or ``BatchResult.save``.

    Groups of the batch that have no result yet (an interrupted run, a shard
    still running) are listed in ``failures`` with that reason.

    Raises:
        DataError: no batch in ``out_dir``, or a saved group that cannot be read
            (named; rerunning ``fit_batch`` with this ``out_dir`` refits it).
    """
    manifest = Manifest(out_dir)
    if not os.path.exists(manifest.path):
        raise DataError(f"{os.fspath(out_dir)}: no {MANIFEST}, so no bayescale batch")
    recorded = manifest.read()
    results, failures, order = {}, {}, []
    for item in recorded["order"]:
        name = label_from_json(item)
        order.append(name)
        entry = recorded["groups"].get(group_file(name))
        if entry is None:
            failures[name] = "no result saved (the batch was interrupted, or its shard has not finished)"
        elif entry["status"] == "failed":
            failures[name] = entry["reason"]
        else:
            try:
                results[name] = _load_group(manifest.folder, name, entry, law)
            except DataError as err:
                raise DataError(f"{err}; rerunning fit_batch with this out_dir refits the group") from None
    return BatchResult(results, failures, order)


def _fit_chunk(
    spec: Spec, chunk: list[tuple[int, Any, ScalingData]], size: int, own: Mapping[Any, SamplerSettings],
    strategy: str, on_group: Callable[[Any, FitResult], None] | None = None,
) -> tuple[dict[Any, FitResult], float]:
    """Fit one chunk of groups padded to ``size`` rows, each with its own settings (seed); returns results and
    lane efficiency.

    ``on_group(name, result)`` is called as soon as each group's chains have all finished.
    """
    settings = own[chunk[0][1]]
    num_chains = settings.num_chains
    mds = [model_data(d, spec.law, size=size) for _, _, d in chunk]
    stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *mds)
    keys = [fit_keys(own[name].seed, num_chains) for _, name, _ in chunk]  # exactly as `fit` derives them
    if strategy == "loop":  # per group, exactly as `fit` does: results do not depend on the chunk's make-up
        one = lambda a: a[None]  # noqa: E731
        inits = np.concatenate([initial_points(spec, jax.tree_util.tree_map(one, m), one(k.init), num_chains)
                                for m, k in zip(mds, keys)])
    else:
        inits = initial_points(spec, stacked, np.stack([k.init for k in keys]), num_chains)
    lanes = jax.tree_util.tree_map(lambda a: np.repeat(a, num_chains, axis=0), stacked)
    lane_keys = np.concatenate([k.chains for k in keys])
    results: dict[Any, FitResult] = {}
    finished: dict[int, dict[int, Draws]] = {}
    lock = threading.Lock()

    def lane_done(lane: int, draws: Draws) -> None:
        j, chain = divmod(lane, num_chains)
        with lock:
            finished.setdefault(j, {})[chain] = draws
            if len(finished[j]) < num_chains:
                return
        part = Draws(*(np.stack(field) for field in zip(*(finished[j][c] for c in range(num_chains)))))
        i, name, data = chunk[j]
        idata = fit_idata(spec, data, mds[j], part, keys[j].predictive)
        results[name] = FitResult(idata=idata, data=data, settings=own[name], spec=spec)
        if on_group is not None:
            on_group(name, results[name])

    draws = sample_lanes(
        potential_fn(spec), inits.reshape(-1, inits.shape[-1]), lanes, lane_keys, settings.nuts,
        strategy=strategy, progress=settings.progress, desc=f"{len(chunk)} groups x {num_chains} chains",
        on_lane=lane_done,
    )
    steps = draws.num_steps.astype(float)
    return {name: results[name] for _, name, _ in chunk}, float(np.mean(steps.mean(axis=0) / steps.max(axis=0)))


def _plan(results: dict[Any, FitResult], new: list[Any], failures: dict[Any, str], manifest: Manifest | None,
          inputs_of: Mapping[Any, Mapping[str, Any]]) -> tuple[dict[Any, FitResult], dict[Any, str]]:
    """The structural error of the groups fitted now (``new``), saved when there is a folder; reused ones have it."""
    from .extrapolation import structural_error  # extrapolation refits through fit_batch

    fitted = [n for n in new if n in results]
    planned = structural_error(BatchResult({n: results[n] for n in fitted}, {}, fitted))
    results, failures = {**results, **planned.results}, {**failures, **planned.failures}
    for name in fitted:
        if name in planned.failures:
            del results[name]
        if manifest is not None:
            if name in planned.results:
                _save(manifest, name, planned.results[name], inputs_of[name])
            else:
                manifest.record(name, "failed", inputs_of[name], planned.failures[name])
    return results, failures


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
    seeds: Mapping[Any, int] | None = None,
    structural: bool = False,
    pad_to: int | None = None,
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
            seed ``settings.seed + i`` (unless ``seeds`` names it); ``progress`` shows bars
            over chunks and iterations.
        chunk_size: groups per chunk; default from device memory (vmap) or as many
            as keep the CPU cores busy (loop).
        out_dir: save each group here as soon as its chains finish, with a
            manifest of what each result depends on (see :mod:`bayescale.store`).
            Rerunning resumes: a saved group is reused only when its data, law,
            likelihood, priors, sampler settings and seed all match and its file
            reads back; otherwise it is refitted and a :class:`ResumeWarning`
            says why. Groups of an earlier batch that are not in this one are
            no longer listed (a warning names them).
        shard: ``(index, count)``: fit only groups ``i`` with ``i % count == index``
            (one share per process under ``jax.distributed``).
        seeds: label -> seed of that group, instead of ``settings.seed + i``: its result
            then does not depend on its position in the batch (without ``pad_to``, each group
            is sampled exactly as ``bs.fit(its_data, seed=seeds[label])``).
        structural: the planning mode: every group gets its structural error
            (:func:`bayescale.extrapolation.structural_error`), the rolling-origin refits of
            all groups and cuts as one more batch; each group equals ``bs.fit(its_data,
            structural=True, seed=...)``. With ``out_dir``, a group is saved once its
            structural error is learned (after the whole batch's sampling), and a saved group
            of the other mode is refitted. A group too small for the refits is a failure that says so.
        pad_to: pad every group to at least the shape bucket of this many runs (padded runs are
            masked out): the groups then run the programs compiled for a table of that size
            (rolling-origin refits use their fit's, so they compile nothing).
        **options: :class:`~bayescale.sampling.SamplerSettings` fields as keywords,
            then column options as for ``ScalingData.from_table``.

    Returns:
        :class:`BatchResult`. Groups with invalid data or a failed fit are listed
        in ``failures`` with the reason; the others finish. Unconverged groups
        have status ``"warning"`` in :meth:`BatchResult.status`.

    Raises:
        DataError: rows without a group label (named), or data of no usable shape.
        ValueError: a ``shard`` that selects nothing.
    """
    settings = sampler_settings(settings, options)
    if shard is not None:
        index, count = shard
        if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
            raise ValueError(f"shard must be (index, count) with count >= 1 and 0 <= index < count, got {shard!r}")
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
        todo = [t for t in todo if t[0] % count == index]
    seeds = dict(seeds or {})
    own = {n: dataclasses.replace(settings, seed=check_seed(seeds[n], f"seed of group {n!r}") if n in seeds
                                  else settings.seed + i) for i, n, _ in todo}
    results: dict[Any, FitResult] = {}
    resume: dict[Any, str] = {}
    manifest = None if out_dir is None else Manifest(out_dir)
    inputs_of = {} if manifest is None else {n: fingerprint(spec, own[n], d, n, structural) for _, n, d in todo}
    if manifest is not None:
        results, resume = _resume(manifest, order, [n for _, n, _ in todo], inputs_of, spec.law)
        todo = [t for t in todo if t[1] not in results]
        for name, reason in failures.items():
            manifest.record(name, "failed", {}, reason)

    buckets: dict[int, list] = {}
    for item in todo:
        buckets.setdefault(bucket_size(max(item[2].n, pad_to or 0)), []).append(item)
    iterations = settings.num_warmup + settings.num_samples
    size_of_chunk = chunk_size or _chunk_size(settings.num_chains, len(spec.latents), iterations, strategy)
    chunks = [(size, items[i:i + size_of_chunk]) for size, items in sorted(buckets.items())
              for i in range(0, len(items), size_of_chunk)]
    efficiencies = []
    start = time.perf_counter()
    with jax.enable_x64(settings.x64):
        for size, chunk in tqdm(chunks, desc="chunks", disable=not settings.progress or len(chunks) < 2):
            save = None if manifest is None or structural else lambda name, fit: _save(manifest, name, fit,
                                                                                       inputs_of[name])
            try:
                fitted, efficiency = _fit_chunk(spec, chunk, size, own, strategy, save)
            except Exception as err:  # noqa: BLE001 - one failing chunk must not stop the batch
                reason = f"sampler failed: {type(err).__name__}: {err}"
                for _, name, _ in chunk:
                    failures[name] = reason
                    if manifest is not None:
                        manifest.record(name, "failed", inputs_of[name], reason)
                continue
            efficiencies.append(efficiency)
            results.update(fitted)
    if structural:
        results, failures = _plan(results, [n for _, n, _ in todo], failures, manifest, inputs_of)
    stats = {"wall_s": time.perf_counter() - start}
    if efficiencies:
        stats["lane_efficiency"] = float(np.mean(efficiencies))
    return BatchResult(results, failures, [n for n in order if n in results or n in failures], stats, resume)
