"""The bundled datasets."""

import numpy as np
import pytest

import bayescale as bs


def test_datasets_load_and_match_recipes() -> None:
    assert set(bs.datasets.list()["name"]) == {"palm2", "chinchilla_synthetic", "kaplan_synthetic", "olmo_ladder",
                                               "overtrain", "datablations_final", "loss_curves"}
    palm = bs.datasets.load("palm2")
    assert palm.n == 12 and sorted(set(palm.group.astype(float))) == [1e20, 1e21, 1e22]
    np.testing.assert_allclose(6 * palm.N * palm.D, palm.C, rtol=0.1)
    for name in ("chinchilla_synthetic", "kaplan_synthetic"):
        shipped = bs.datasets.load_frame(name)
        np.testing.assert_allclose(shipped.to_numpy(), bs.datasets.make(name).to_numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown dataset 'palm3'"):
        bs.datasets.load("palm3")


def test_real_runs_load_with_their_licences() -> None:
    from importlib import resources

    olmo = bs.datasets.load("olmo_ladder")
    assert olmo.n == 30 and olmo.N.max() > 3e9 and 2.3 < olmo.loss.min() < olmo.loss.max() < 4.0
    assert bs.datasets.load("olmo_ladder", loss="val_loss_mean11").loss.max() < olmo.loss.max()
    assert bs.datasets.load("overtrain").n == 95
    assert bs.datasets.load("datablations_final").n == len(bs.datasets.load_frame("datablations_final"))
    folder = resources.files("bayescale").joinpath("data")
    with pytest.raises(ValueError, match="use bayescale.datasets.loss_curves"):
        bs.datasets.load("loss_curves")
    for name in ("olmo_ladder", "overtrain", "datablations", "loss_curves"):
        assert folder.joinpath("licenses", name, "LICENSE").is_file(), name
    assert "allenai/OLMo" in folder.joinpath("SOURCES.md").read_text()
    assert "thu-yao-01-luo/MultiPowerLaw" in folder.joinpath("SOURCES.md").read_text()
