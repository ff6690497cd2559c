"""The bundled datasets."""

import numpy as np
import pytest

import bayescale as bs


def test_datasets_load_and_match_recipes() -> None:
    assert set(bs.datasets.list()["name"]) == {"palm2", "chinchilla_synthetic", "kaplan_synthetic"}
    palm = bs.datasets.load("palm2")
    assert palm.n == 12 and sorted(set(palm.group.astype(float))) == [1e20, 1e21, 1e22]
    np.testing.assert_allclose(6 * palm.N * palm.D, palm.C, rtol=0.1)
    for name in ("chinchilla_synthetic", "kaplan_synthetic"):
        shipped = bs.datasets.load_frame(name)
        np.testing.assert_allclose(shipped.to_numpy(), bs.datasets.make(name).to_numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown dataset 'palm3'"):
        bs.datasets.load("palm3")
