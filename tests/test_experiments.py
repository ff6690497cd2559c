"""Which runs to do next: the preposterior estimator against a closed form, and the choice of runs."""

import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.experiments import expected_width
from conftest import SMALL, TINY


def test_expected_width_matches_the_linear_gaussian_closed_form() -> None:
    """y = t0 + t1·x + N(0, s²) with a Gaussian posterior: after a run at x the posterior covariance is
    (Σ⁻¹ + h hᵀ/s²)⁻¹ whatever y turns out to be, so the 90% width of t1 is known exactly."""
    rng = np.random.default_rng(0)
    mean, cov, s = np.array([1.0, 0.5]), np.array([[0.04, -0.01], [-0.01, 0.02]]), 0.1
    theta = rng.multivariate_normal(mean, cov, size=20000)
    for x in (0.0, 1.0, 4.0):
        h = np.array([1.0, x])
        after = np.linalg.inv(np.linalg.inv(cov) + np.outer(h, h) / s**2)
        exact = 2 * 1.6448536 * np.sqrt(after[1, 1])
        source = rng.integers(0, theta.shape[0], 256)
        with jax.enable_x64(True):
            width, se, ess, _ = expected_width(
                theta[:, 1], theta[:, 0] + theta[:, 1] * x, np.full(theta.shape[0], s), np.full(theta.shape[0], 4.0),
                np.zeros((256, theta.shape[0])), source, rng.standard_normal(256), level=0.9, student=False)
        assert float(width) == pytest.approx(exact, rel=0.05), (x, float(width), exact)
        assert float(se) < 0.02 * exact and float(ess) > 100
    # A run at x = 4 tells more about the slope than one at x = 0 (the closed form agrees).


@pytest.fixture(scope="module")
def ladder_fit() -> bs.FitResult:
    """A small ladder: 12 runs below 3e8 parameters."""
    N, D = bs.chinchilla_design(40, seed=4)
    keep = N < 3e8
    runs = bs.simulate("chinchilla", bs.datasets.CHINCHILLA_PARAMS, N=N[keep][:12], D=D[keep][:12], seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        return bs.fit(runs, seed=1, **SMALL)


def test_design_values_candidates_and_respects_the_budget(ladder_fit: bs.FitResult) -> None:
    plan = bs.design(ladder_fit, compute=1e24, budget=3e20, k=3, seed=0)
    table = plan.candidates
    assert {"N", "D", "cost", "width", "reduction", "per_eflop", "ess"} <= set(table.columns)
    assert table["per_eflop"].is_monotonic_decreasing
    assert np.all(table["width"] <= plan.width * 1.05)  # a run cannot be expected to widen the interval
    assert plan.selected["cumulative_cost"].iloc[-1] <= 3e20
    assert plan.selected["width_after"].is_monotonic_decreasing and plan.selected["width_after"].iloc[0] < plan.width
    # bigger runs (beyond the ladder) narrow N_opt at 1e24 FLOPs more than the smallest ones
    big, small = table.loc[table["N"].idxmax(), "width"], table.loc[table["N"].idxmin(), "width"]
    assert big < small
    same = bs.design(ladder_fit, compute=1e24, budget=3e20, k=3, seed=0)
    pd.testing.assert_frame_equal(same.selected, plan.selected)  # reproducible from the seed


def test_design_for_a_planned_run_and_for_stacked_laws(ladder_fit: bs.FitResult, tiny_stacked: bs.StackedResult) -> None:
    candidates = pd.DataFrame({"N": [1e8, 1e9, 4e9], "D": [2e9, 2e10, 8e10]})
    plan = bs.design(ladder_fit, planned={"N": 4e9, "D": 8e10}, candidates=candidates)
    assert "loss at N = 4e+09" in plan.target
    # running the planned model itself narrows its loss most; per FLOP, the cheap run wins
    assert plan.candidates.loc[plan.candidates["reduction"].idxmax(), "N"] == 4e9
    assert plan.selected["N"].iloc[0] == 4e9
    cheap = bs.design(ladder_fit, planned={"N": 4e9, "D": 8e10}, candidates=candidates, rule="per_flop")
    assert cheap.selected["N"].iloc[0] == cheap.candidates["N"].iloc[0] == 1e8
    stacked = bs.design(tiny_stacked, compute=1e23, candidates=candidates, k=2)
    assert len(stacked.selected) == 2 and np.isfinite(stacked.candidates["width"]).all()


def test_design_for_a_hierarchical_member_and_a_data_constrained_law(tiny_hierarchical: bs.HierarchicalResult,
                                                                     ) -> None:
    candidates = pd.DataFrame({"N": [1e8, 1e9, 4e9], "D": [2e9, 2e10, 8e10]})
    member = bs.design(tiny_hierarchical["g2"], compute=1e23, candidates=candidates, k=2)  # borrows strength
    assert len(member.selected) == 2 and np.isfinite(member.candidates["width"]).all()
    N, D = bs.chinchilla_design(30, seed=2)
    truth = {**bs.datasets.CHINCHILLA_PARAMS, "R_D": 15.4, "R_N": 5.3}
    runs = bs.simulate("data_constrained", truth, N=N, D=D, U=D / 4, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        fit = bs.fit(runs, law="data_constrained", settings=TINY)
    with pytest.raises(ValueError, match="unique_tokens"):
        bs.design(fit, compute=1e22, candidates=candidates)
    plan = bs.design(fit, compute=1e22, candidates=candidates, unique_tokens=5e10)
    assert (plan.candidates["U"] == 5e10).all() and np.isfinite(plan.candidates["width"]).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "one target"),
        ({"compute": 1e24, "planned": {"N": 1e9, "D": 1e10}}, "one target"),
        ({"compute": 1e24, "k": 0}, "k must be"),
        ({"compute": 1e24, "candidates": pd.DataFrame({"N": [1e9, -1.0], "D": [1e10, 1e10]})}, "'N'"),
        ({"compute": 1e24, "budget": 1.0}, "no candidate fits the budget"),
    ],
)
def test_design_bad_arguments(ladder_fit: bs.FitResult, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bs.design(ladder_fit, **kwargs)
