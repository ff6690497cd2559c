"""Atomic files, group labels that keep their type, the batch manifest."""

import os

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
