"""Results on disk: atomic files and the manifest that makes a batch folder safe to resume.

Every file bayescale writes goes to a temporary name in the destination folder
and is renamed into place (:func:`atomic_write`), so a reader, a second writer
or a kill never leaves a partial file under the real name.

A batch folder holds one netCDF file per fitted group and ``manifest.json``:
the groups of the latest batch in order, and per group its label (with its
type), status, file and *fingerprint*: a hash of its data, the law,
likelihood, priors, sampler settings and seed. Resume reuses a group only when
the fingerprint matches and its file reads back. The manifest is updated under
a file lock, so several processes (the shards of one batch) can share a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from filelock import FileLock

from .data import COVARIATES, DataError, ScalingData

__all__ = [
    "ResumeWarning",
    "atomic_write",
    "write_text",
    "data_hash",
    "file_hash",
    "clean_partial_files",
    "label_to_json",
    "label_from_json",
    "group_file",
    "Manifest",
    "MANIFEST",
]

MANIFEST = "manifest.json"
"""File name of a batch folder's manifest."""
_FORMAT = 1
_LABEL_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}
_HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()) or "host"
_PARTIAL = re.compile(r"\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.\d+\.tmp")
"""Temporary names of :func:`atomic_write`: ``.<name>.<host>.<pid>.<thread>.tmp``."""


class ResumeWarning(UserWarning):
    """Saved results that a rerun could not reuse (refitted, with the reason), or older groups it left out."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    Args:
        path: the destination; its folder must exist.
        write: writes the complete file at the path it is given.

    Temporary files that killed writers on this host left in the folder are removed first
    (:func:`clean_partial_files`).

    Raises:
        Whatever ``write`` raises; the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    clean_partial_files(folder)
    tmp = os.path.join(folder, f".{name}.{_HOST}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def data_hash(data: ScalingData, label: Any = None) -> str:
    """SHA-256 of the runs' numbers (loss, every covariate, M), in row order, and of the group ``label``.

    Every covariate of :data:`~bayescale.data.COVARIATES` is covered, so no edit of a
    column a law may read leaves the hash unchanged.
    """
    digest = hashlib.sha256()
    for name in ("loss", *COVARIATES, "flops_per_token"):
        value = getattr(data, name)
        digest.update(name.encode())
        if value is not None:
            digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
    if label is not None:
        digest.update(json.dumps(label_to_json(label), sort_keys=True).encode())
    return digest.hexdigest()


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_partial_files(folder: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files that writers killed mid-write left in ``folder``; return their names.

    A temporary name carries its writer's host and process id (see :func:`atomic_write`);
    files of processes still running (this one included) and of other hosts (the shards
    of a batch on a shared folder) are left to them.
    """
    removed = []
    for name in os.listdir(folder):
        match = _PARTIAL.fullmatch(name)
        if match is None or match["host"] != _HOST or _running(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def label_to_json(label: Any) -> dict[str, Any]:
    """A group label as JSON that keeps its type (``1`` and ``"1"`` stay apart).

    Raises:
        DataError: a label that is not a string, integer, float or boolean.
    """
    value = label.item() if isinstance(label, np.generic) else label
    kind = _LABEL_TYPES.get(type(value))
    if kind is None:
        raise DataError(
            f"group label {label!r} is a {type(label).__name__}; saved groups need str, int, float or bool labels"
        )
    return {"value": value, "type": kind}


def label_from_json(item: Mapping[str, Any]) -> Any:
    """Inverse of :func:`label_to_json`."""
    kinds = {v: k for k, v in _LABEL_TYPES.items()}
    return kinds[item["type"]](item["value"])


def group_file(label: Any) -> str:
    """The file name of a group's result: readable, and distinct for labels of different types."""
    item = label_to_json(label)
    digest = hashlib.sha1(json.dumps(item, sort_keys=True).encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(item["value"]))[:40]
    return f"group-{readable}-{digest}.nc"


class Manifest:
    """The manifest of a batch folder; every read-modify-write holds the folder's lock.

    Args:
        folder: the batch folder (created if missing).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, MANIFEST)
        self._lock = FileLock(self.path + ".lock")

    def read(self) -> dict[str, Any]:
        """The manifest: ``{"format", "order": [label JSON], "groups": {file: entry}}`` (empty if none yet).

        Raises:
            DataError: the manifest exists but cannot be read (the message names it).
        """
        if not os.path.exists(self.path):
            return {"format": _FORMAT, "order": [], "groups": {}}
        try:
            with open(self.path, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (OSError, ValueError) as err:
            raise DataError(f"{self.path}: unreadable batch manifest ({type(err).__name__}: {err})") from None
        if not isinstance(manifest, dict) or not {"order", "groups"} <= manifest.keys():
            raise DataError(f"{self.path}: not a bayescale batch manifest")
        return manifest

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            manifest = self.read()
            yield manifest
            write_text(self.path, json.dumps(manifest, indent=1))

    def start(self, order: Sequence[Any]) -> list[Any]:
        """Make ``order`` the folder's batch; return the labels of older groups left out of it.

        Their files stay on disk but are no longer part of the batch.
        """
        listed = [label_to_json(label) for label in order]
        try:
            self.read()
        except DataError as err:
            warnings.warn(f"{err}; starting a new manifest: every group is refitted", ResumeWarning, stacklevel=3)
            os.remove(self.path)
        with self._update() as manifest:
            manifest["order"] = listed
            keep = {group_file(label) for label in order}
            return [label_from_json(e["label"]) for f, e in manifest["groups"].items() if f not in keep]

    def entry(self, label: Any) -> dict[str, Any] | None:
        """The recorded entry of group ``label``, or ``None``."""
        return self.read()["groups"].get(group_file(label))

    def record(
        self, label: Any, status: str, fingerprint: Mapping[str, Any], reason: str = "",
        write: Callable[[], None] | None = None,
    ) -> None:
        """Record group ``label`` as ``"fitted"`` or ``"failed"``.

        Args:
            label: the group label.
            status: ``"fitted"`` or ``"failed"``.
            fingerprint: what the result depends on (compared on resume).
            reason: why the group failed.
            write: writes the group's file (atomically); called under the lock, before the
                manifest names it, so file and entry always agree. The entry records the
                file's SHA-256, so a file copied over it later is recognised.
        """
        with self._update() as manifest:
            entry = {"label": label_to_json(label), "status": status, "reason": reason,
                     "fingerprint": dict(fingerprint)}
            if write is not None:
                write()
                entry["sha256"] = file_hash(os.path.join(self.folder, group_file(label)))
            manifest["groups"][group_file(label)] = entry
