"""Bayesian iso-FLOP analysis (Chinchilla's approach 2)."""

import dataclasses

import numpy as np
import pytest

import bayescale as bs
from conftest import CHINCHILLA, SMALL


def isoflop_runs(budgets: np.ndarray, sizes: int = 7, noise: float = 0.005, seed: int = 0) -> bs.ScalingData:
    """Runs on iso-FLOP lines of the published Chinchilla law, sizes spread evenly around the optimum."""
    p = CHINCHILLA
    s = p["alpha"] + p["beta"]
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s)
    n_opt = g * (budgets / 6) ** (p["beta"] / s)
    N = (n_opt[:, None] * np.exp(np.linspace(-1.5, 1.5, sizes))[None, :]).ravel()
    C = np.repeat(budgets, sizes)
    sim = bs.simulate("chinchilla", p, N=N, D=C / (6 * N), noise=noise, seed=seed)
    return dataclasses.replace(sim, group=C)


def true_n_opt(budgets: np.ndarray) -> np.ndarray:
    p = CHINCHILLA
    s = p["alpha"] + p["beta"]
    return (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s) * (budgets / 6) ** (p["beta"] / s)


@pytest.fixture(scope="module")
def isoflop_fit() -> bs.IsoFlopResult:
    return bs.fit_isoflop(isoflop_runs(np.array([1e18, 1e19, 1e20, 1e21, 1e22])), seed=0, **SMALL)


@pytest.mark.slow
def test_recovers_optimum_and_exponent(isoflop_fit: bs.IsoFlopResult) -> None:
    table = isoflop_fit.summary(level=0.95)["N_opt"]
    truth = true_n_opt(isoflop_fit.compute)
    # the parabola approximates the iso-FLOP curve; the truth must still be inside every interval
    assert np.all((table["2.5%"] <= truth) & (truth <= table["97.5%"]))
    assert np.all(table["97.5%"] / table["2.5%"] < 2.0)
    exps = isoflop_fit.exponents(level=0.95)
    a_true = CHINCHILLA["beta"] / (CHINCHILLA["alpha"] + CHINCHILLA["beta"])
    assert exps.loc["a", "2.5%"] <= a_true <= exps.loc["a", "97.5%"]
    assert exps.loc["a", "sd"] < 0.05
    assert exps.loc["a", "median"] + exps.loc["b", "median"] == pytest.approx(1.0)
    assert isoflop_fit.diagnostics.ok, isoflop_fit.diagnostics.problems


@pytest.mark.slow
def test_extrapolated_n_opt_follows_the_line(isoflop_fit: bs.IsoFlopResult) -> None:
    far = isoflop_fit.n_opt([1e24])["N_opt"]
    assert far["5%"].iloc[0] < true_n_opt(np.array([1e24]))[0] < far["95%"].iloc[0]


@pytest.mark.slow
def test_compare_with_parametric_fit(isoflop_fit: bs.IsoFlopResult, chinchilla_fit: bs.FitResult) -> None:
    table = isoflop_fit.compare(chinchilla_fit)
    assert list(table.index) == [*isoflop_fit.compute, "a"]
    assert set(table.columns.get_level_values(0)) == {"isoflop", "parametric"}
    # both fits see data from the same law: their exponents agree within a few hundredths
    assert table.loc["a", ("isoflop", "median")] == pytest.approx(table.loc["a", ("parametric", "median")], abs=0.05)


@pytest.mark.slow
def test_palm2_matches_least_squares_vertices() -> None:
    frame = bs.datasets.load_frame("palm2")
    result = bs.fit_isoflop(bs.datasets.load("palm2"), seed=0, **SMALL)
    table = result.summary()
    assert list(table.index) == [1e20, 1e21, 1e22]
    # the classic approach 2: least-squares parabola of loss in log N per budget, vertex = N_opt
    vertices = []
    for _, runs in frame.groupby("budget"):
        c2, c1, _ = np.polyfit(np.log(runs["N"]), runs["loss"], 2)
        vertices.append(np.exp(-c1 / (2 * c2)))
    np.testing.assert_allclose(table[("N_opt", "median")], vertices, rtol=0.1)
    # the report's optimal sizes are within a factor 1.6 of these four-point estimates
    reported = np.array(list(bs.datasets.PALM2_OPTIMAL_PARAMS.values()))
    assert np.all(np.abs(np.log(table[("N_opt", "median")] / reported)) < np.log(1.6))


def test_bad_budgets() -> None:
    runs = isoflop_runs(np.array([1e19, 1e20]), sizes=3)
    with pytest.raises(bs.DataError, match="at least two budgets"):
        bs.fit_isoflop(runs.subset(runs.group == 1e19))
    keep = np.ones(runs.n, bool)
    keep[0] = False
    with pytest.raises(bs.DataError, match=r"at least three runs.*1e\+19"):
        bs.fit_isoflop(runs.subset(keep))
    with pytest.raises(bs.DataError, match="budget labels must be FLOPs"):
        bs.fit_isoflop(dataclasses.replace(runs, group=np.array(["small"] * 3 + ["big"] * 3, dtype=object)))
