"""Atomic files, group labels that keep their type, the batch manifest."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

import bayescale as bs
from bayescale import store


def test_atomic_write_leaves_old_file_or_new_file_never_a_partial_one(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "result.txt"
    store.write_text(path, "old")

    def dies_half_way(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("half of the new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        store.atomic_write(path, dies_half_way)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.txt"]  # no temporary file left behind
    store.write_text(path, "new")
    assert path.read_text() == "new"


def test_labels_keep_their_type() -> None:
    labels = [1, "1", 1.0, True, "g/1", np.int64(7)]
    files = {store.group_file(label) for label in labels}
    assert len(files) == len(labels)  # 1, "1", 1.0 and True are four groups, four files
    for label in labels:
        back = store.label_from_json(store.label_to_json(label))
        assert back == label and type(back) is type(label.item() if isinstance(label, np.generic) else label)
    assert all("/" not in f for f in files)
    with pytest.raises(bs.DataError, match="tuple"):
        store.group_file(("a", 1))


def test_unreadable_manifest_is_named_and_replaced(tmp_path) -> None:  # noqa: ANN001
    manifest = store.Manifest(tmp_path)
    manifest.start(["a", "b"])
    manifest.record("a", "failed", {}, "reason")
    (tmp_path / store.MANIFEST).write_text("")  # as a 0-byte file left by a kill mid-write would be
    with pytest.raises(bs.DataError, match="manifest.json"):
        manifest.read()
    with pytest.warns(bs.ResumeWarning, match="manifest.json.*refitted"):
        assert manifest.start(["b"]) == []
    assert manifest.read()["order"] == [{"value": "b", "type": "str"}]


def test_data_hash_covers_every_covariate_and_the_label() -> None:
    """U was left out of the hash: a data-constrained batch rerun after editing U reused stale groups."""
    data = bs.ScalingData.from_arrays(loss=[3.0, 2.9, 2.8], N=[1e8, 2e8, 4e8], D=[4e9, 8e9, 1.6e10],
                                      U=[1e9, 1e9, 2e9], N_total=[1e8, 3e8, 4e8])
    base = store.data_hash(data)
    for name in bs.data.COVARIATES:
        edited = dataclasses.replace(data, **{name: getattr(data, name) * 1.01})
        assert store.data_hash(edited) != base, name
    assert store.data_hash(data, "g0") != store.data_hash(data, "g1") != base
    assert store.data_hash(data, 1) != store.data_hash(data, "1")


def test_partial_files_of_dead_writers_are_cleaned_on_the_next_write(tmp_path) -> None:  # noqa: ANN001
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    left = tmp_path / f".group-g0-abc.nc.{store._HOST}.{pid}.1.tmp"
    mine = tmp_path / f".other.nc.{store._HOST}.{os.getpid()}.1.tmp"  # a writer still running: kept
    elsewhere = tmp_path / f".other.nc.another-host.{pid}.1.tmp"  # another host's writer (a shared folder): kept
    for path in (left, mine, elsewhere):
        path.write_text("half")
    store.write_text(tmp_path / "result.txt", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, elsewhere.name, "result.txt"])
