"""Partial pooling across groups, and model comparison by PSIS-LOO."""

import warnings

import numpy as np
import pytest

import bayescale as bs
from conftest import CHINCHILLA, SMALL, TINY

TAU_E, TAU_A = 0.08, 0.3  # true population spreads of log E and log A


@pytest.fixture(scope="module")
def groups() -> tuple[dict, dict]:
    rng = np.random.default_rng(3)
    data, truth = {}, {}
    for g in range(5):
        t = {**CHINCHILLA, "E": 1.8 * np.exp(TAU_E * rng.standard_normal()),
             "A": 406.4 * np.exp(TAU_A * rng.standard_normal()), "B": 410.7 * np.exp(0.2 * rng.standard_normal())}
        N, D = bs.chinchilla_design(8, seed=10 + g)
        data[f"g{g}"] = bs.simulate("chinchilla", t, N=N, D=D, noise=0.02, seed=20 + g)
        truth[f"g{g}"] = t
    return data, truth


@pytest.fixture(scope="module")
def hierarchical(groups: tuple) -> bs.HierarchicalResult:
    return bs.fit_hierarchical(groups[0], shared=["alpha", "beta"], pooled=["E", "A", "B"], seed=0, **SMALL)


@pytest.mark.slow
def test_recovers_shared_exponents_and_group_values(groups: tuple, hierarchical: bs.HierarchicalResult) -> None:
    _, truth = groups
    summary = hierarchical.summary(level=0.95).set_index(["group", "parameter"])
    inside = [summary.loc[(g, p), "2.5%"] <= t[p] <= summary.loc[(g, p), "97.5%"]
              for g, t in truth.items() for p in ("E", "alpha", "beta", "A", "B")]
    assert np.mean(inside) >= 0.9
    # shared: one value for every group
    alpha = hierarchical.idata.posterior["alpha"]
    assert float(np.ptp(alpha.values, axis=-1).max()) == 0.0
    # the population spread is estimated near the spread of the groups' true values
    pop = hierarchical.population(level=0.95)
    for name in ("E", "A"):
        spread = np.std(np.log([t[name] for t in truth.values()]), ddof=1)
        assert pop.loc[f"{name}_scale", "2.5%"] <= spread <= pop.loc[f"{name}_scale", "97.5%"]
    assert hierarchical.diagnostics.divergences == 0


@pytest.mark.slow
def test_pooling_narrows_n_opt_and_covers_truth(groups: tuple, hierarchical: bs.HierarchicalResult) -> None:
    data, truth = groups
    separate = bs.fit_batch(data, seed=0, progress=False, **SMALL)
    pooled_plan = hierarchical.compute_optimal([1e23])["N_opt"]
    separate_plan = separate.compute_optimal([1e23])["N_opt"]
    width = lambda t: np.log(t["95%"] / t["5%"]).to_numpy()  # noqa: E731
    assert np.mean(width(pooled_plan) < width(separate_plan)) >= 0.8
    true_n = np.array([bs.optimal_allocation(bs.laws.get_law("chinchilla"), {k: [v] for k, v in t.items()}, [1e23])
                       ["N_opt"][0, 0] for t in truth.values()])
    covered = (pooled_plan["5%"].to_numpy() <= true_n) & (true_n <= pooled_plan["95%"].to_numpy())
    assert covered.mean() >= 0.8


@pytest.mark.slow
def test_group_result_is_a_fit_result(hierarchical: bs.HierarchicalResult) -> None:
    one = hierarchical["g2"]
    assert isinstance(one, bs.FitResult) and one.data.n == 8
    assert set(one.draws()) == {"E", "alpha", "beta", "A", "B", "sigma"}
    with pytest.raises(KeyError, match="unknown group"):
        hierarchical["g9"]


def test_bad_roles(groups: tuple) -> None:
    data, _ = groups
    with pytest.raises(ValueError, match="unknown parameters \\['gamma'\\]"):
        bs.fit_hierarchical(data, shared=["gamma"])
    with pytest.raises(ValueError, match="both shared and pooled"):
        bs.fit_hierarchical(data, shared=["E"], pooled=["E"])
    with pytest.raises(ValueError, match="at least two groups"):
        bs.fit_hierarchical({"only": data["g0"]})


@pytest.mark.slow
def test_hierarchical_moe_keeps_total_parameters() -> None:
    """Every covariate reaches the pooled fit: the moe law's N_total included."""
    data = {}
    for g in range(2):
        N, D = bs.chinchilla_design(20, seed=30 + g)
        data[f"g{g}"] = bs.simulate("moe", {**CHINCHILLA, "w": 0.4}, N=N, D=D, N_total=4 * N, seed=40 + g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        result = bs.fit_hierarchical(data, law="moe", settings=TINY)
    np.testing.assert_array_equal(result["g1"].data.N_total, data["g1"].N_total)
    assert result.idata.posterior["w"].shape == (TINY.num_chains, TINY.num_samples, 2)
