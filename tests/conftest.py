"""Shared fixtures: simulated Chinchilla runs and a small fitted posterior."""

import numpy as np
import pytest

import bayescale as bs

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
SMALL = {"num_warmup": 500, "num_samples": 500, "num_chains": 4}


@pytest.fixture(scope="session")
def chinchilla_data() -> bs.ScalingData:
    """200 runs from the published Chinchilla law, 2% log-noise."""
    N, D = bs.chinchilla_design(200, seed=1)
    return bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, noise=0.02, seed=2)


@pytest.fixture(scope="session")
def chinchilla_fit(chinchilla_data: bs.ScalingData) -> bs.FitResult:
    """Student-t posterior of the 200 simulated runs (small draws)."""
    return bs.fit(chinchilla_data, seed=0, **SMALL)


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
