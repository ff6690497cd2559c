"""Which runs to do next: the preposterior estimator against a closed form, and the choice of runs."""

import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    """12 small runs (50M-500M parameters, about 20 tokens per parameter, 2% noise): N_opt at 1e24 FLOPs
    is uncertain over orders of magnitude, since runs on one tokens-per-parameter line hardly tell the
    exponents of N and D apart."""
    rng = np.random.default_rng(7)
    N = np.exp(rng.uniform(np.log(5e7), np.log(5e8), 12))
    runs = bs.simulate("chinchilla", bs.datasets.CHINCHILLA_PARAMS, N=N, D=20 * N * np.exp(rng.normal(0, 0.3, 12)),
                       noise=0.02, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        return bs.fit(runs, seed=1, **SMALL)


def test_design_compares_whole_sets_and_reports_the_budget_share(ladder_fit: bs.FitResult) -> None:
    plan = bs.design(ladder_fit, compute=1e24, budget=3e20, k=3, forecast="importance", seed=0)
    table = plan.candidates
    assert {"N", "D", "cost", "width", "reduction", "per_eflop", "ess"} <= set(table.columns)
    assert table["per_eflop"].is_monotonic_decreasing
    assert np.all(table["width"] <= plan.width * 1.05)  # a run cannot be expected to widen the interval
    assert plan.selected["cumulative_cost"].iloc[-1] <= 3e20
    assert plan.selected["budget_share"].iloc[-1] == pytest.approx(plan.spent / 3e20)
    assert plan.selected["width_after"].iloc[0] < plan.width
    # bigger runs (beyond the ladder) narrow N_opt at 1e24 FLOPs more than the smallest ones
    big, small = table.loc[table["N"].idxmax(), "width"], table.loc[table["N"].idxmin(), "width"]
    assert big < small
    # the sets compared: greedy, every split of the budget, iso-FLOP grids; the chosen one is the narrowest
    sets = plan.sets
    assert {"greedy", "budget split 3 (of 3)", "budget split 1+1+1 (of 3)"} <= set(sets["set"])
    assert sets["set"].str.startswith("iso-FLOP grid").any() and (sets["cost"] <= 3e20).all()
    assert sets.loc[sets["chosen"], "width"].item() == sets["width"].min()
    assert sets.loc[sets["set"] == "budget split 1+1+1 (of 3)", "budget_share"].item() == pytest.approx(1.0)
    runs, grid = plan.grid
    assert len(runs) >= 2 and runs["cost"].sum() <= 3e20 and grid.width >= plan.forecast.width
    assert plan.forecast.method == "importance" and 0 <= plan.forecast.pareto_k <= 1
    assert plan.forecast.low <= plan.forecast.width <= plan.forecast.high
    same = bs.design(ladder_fit, compute=1e24, budget=3e20, k=3, forecast="importance", seed=0)
    pd.testing.assert_frame_equal(same.selected, plan.selected)  # reproducible from the seed


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.floats(1e19, 1e22), k=st.integers(1, 4), rule=st.sampled_from(["width", "per_flop"]))
def test_the_chosen_set_never_exceeds_the_budget(ladder_fit: bs.FitResult, budget: float, k: int,
                                                 rule: str) -> None:
    plan = bs.design(ladder_fit, compute=1e24, budget=budget, k=k, rule=rule, forecast="importance", seed=1)
    assert 1 <= len(plan.selected) <= k
    assert plan.spent <= budget and plan.selected["budget_share"].iloc[-1] <= 1.0
    assert (plan.sets["cost"] <= budget).all()


def test_a_budget_that_buys_one_large_run_spends_it_on_that_run(ladder_fit: bs.FitResult) -> None:
    """Four cheap small runs or one large run that costs the whole budget, to narrow the loss of that large
    run: the large run narrows it most, so the whole-budget rule takes it; ranking by reduction per FLOP
    takes the cheap runs first."""
    small = [(6e7, 1.2e9), (8e7, 1.6e9), (1e8, 2e9), (1.2e8, 2.4e9)]
    candidates = pd.DataFrame([*small, (3e9, 6e10)], columns=["N", "D"])
    budget, planned = 6 * 3e9 * 6e10, {"N": 3e9, "D": 6e10}
    plan = bs.design(ladder_fit, planned=planned, candidates=candidates, budget=budget, k=4, forecast="importance")
    assert plan.selected["N"].tolist() == [3e9] and plan.selected["budget_share"].item() == pytest.approx(1.0)
    cheap = bs.design(ladder_fit, planned=planned, candidates=candidates, budget=budget, k=4, rule="per_flop",
                      forecast="importance")
    assert cheap.selected["N"].iloc[0] < 3e9 and cheap.spent < 0.01 * budget
    assert plan.forecast.width < cheap.forecast.width  # and the large run was worth it


def test_a_wide_posterior_switches_the_forecast_to_refits(ladder_fit: bs.FitResult) -> None:
    """The ladder leaves N_opt at 1e24 FLOPs uncertain over orders of magnitude: the importance weights
    after four new runs degenerate (Pareto k), and the forecast refits instead."""
    wide = bs.design(ladder_fit, compute=1e24, budget=1.9e21, k=4, refits=2, seed=3)
    assert wide.forecast.pareto_k > 0.1 and wide.forecast.method == "refit"
    assert wide.grid[1].method == "refit" and np.isfinite(wide.forecast.width) and 0 <= wide.forecast.converged <= 1
    # one more tiny run barely moves the posterior: importance sampling is reliable and kept
    tiny = pd.DataFrame({"N": [5e7], "D": [5e8]})
    plain = bs.design(ladder_fit, compute=1e24, candidates=tiny, seed=3)
    assert plain.forecast.method == "importance" and plain.forecast.pareto_k <= 0.1


def test_design_for_a_planned_run_and_for_stacked_laws(ladder_fit: bs.FitResult, tiny_stacked: bs.StackedResult) -> None:
    candidates = pd.DataFrame({"N": [1e8, 1e9, 4e9], "D": [2e9, 2e10, 8e10]})
    plan = bs.design(ladder_fit, planned={"N": 4e9, "D": 8e10}, candidates=candidates)
    assert "loss at N = 4e+09" in plan.target
    # running the planned model itself narrows its loss most; per FLOP, the top of the ranked table wins
    assert plan.candidates.loc[plan.candidates["reduction"].idxmax(), "N"] == 4e9
    assert plan.selected["N"].iloc[0] == 4e9
    cheap = bs.design(ladder_fit, planned={"N": 4e9, "D": 8e10}, candidates=candidates, rule="per_flop")
    assert cheap.selected["N"].iloc[0] == cheap.candidates["N"].iloc[0] < 4e9
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
        ({"compute": 1e24, "budget": -1.0}, "budget must be"),
        ({"compute": 1e24, "forecast": "guess"}, "forecast must be"),
        ({"compute": 1e24, "refits": 1}, "refits must be"),
    ],
)
def test_design_bad_arguments(ladder_fit: bs.FitResult, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bs.design(ladder_fit, **kwargs)
