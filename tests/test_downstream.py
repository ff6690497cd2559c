"""Downstream accuracy in two stages: the link, propagation of stage 1, bad input."""

import warnings

import numpy as np
import pytest

import bayescale as bs
from conftest import CHINCHILLA, TINY, interval, sigmoid_accuracy


def test_link_is_floored_at_chance_and_falls_with_loss(tiny_downstream: bs.DownstreamResult) -> None:
    loss = np.linspace(1.0, 4.0, 50)
    acc = np.asarray(bs.downstream.sigmoid(loss, 0.9, 8.0, 2.6, 0.25))
    np.testing.assert_allclose(acc, sigmoid_accuracy(loss), rtol=1e-6)
    assert np.all(np.diff(acc) < 0) and acc.min() > 0.25
    assert float(bs.downstream.sigmoid(8.0, 0.9, 8.0, 2.6, 0.25)) == pytest.approx(0.25, abs=1e-6)
    draws = tiny_downstream.predict_draws(N=[1e8, 1e9, 1e10], D=[2e9, 2e10, 2e11])
    assert np.all(draws > 0.25) and np.all(draws < 1)
    assert np.all(np.median(draws, axis=0)[1:] > np.median(draws, axis=0)[:-1])  # larger runs: more accurate


def test_propagated_bands_are_wider_than_plugin_bands(tiny_downstream: bs.DownstreamResult) -> None:
    """Far beyond the runs in N (a loss inside the link's data), stage 1's uncertainty widens the bands."""
    table = tiny_downstream.predict(N=[1e12], D=[1e10], seed=3)
    assert table["upper"].item() - table["lower"].item() > table["plugin_upper"].item() - table["plugin_lower"].item()
    assert tiny_downstream.loss_fit.draws("E").shape == tiny_downstream.draws("k").shape  # draws pair one to one


def test_planning_table_gains_accuracy(tiny_downstream: bs.DownstreamResult) -> None:
    table = tiny_downstream.compute_optimal([1e21, 1e23])
    assert set(table.columns.get_level_values(0)) == {"N_opt", "D_opt", "loss_opt", "accuracy"}
    np.testing.assert_allclose(table["N_opt"], bs.compute_optimal(tiny_downstream.loss_fit, [1e21, 1e23])["N_opt"])
    assert (table[("accuracy", "median")].diff().dropna() > 0).all()  # more compute, lower loss, higher accuracy


@pytest.mark.parametrize(
    ("accuracy", "chance", "match"),
    [
        (np.full(9, 0.5), 0.25, "9 values for the 10 runs"),
        (np.full(10, 50.0), 0.25, "percentages"),
        (np.full(10, 0.2), 0.25, "above chance"),
        (np.r_[np.nan, np.full(9, 0.5)], 0.25, "'accuracy'.*NaN"),
        (np.full(10, 0.5), 1.5, "chance"),
    ],
)
def test_bad_accuracies_are_named(small_groups: dict, accuracy: np.ndarray, chance: float, match: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        stage1 = bs.fit(small_groups["g0"], settings=TINY)
    with pytest.raises(bs.DataError, match=match):
        bs.fit_downstream(stage1, accuracy, chance=chance)


@pytest.mark.slow
def test_propagated_bands_cover_the_truth_and_plugin_bands_do_not() -> None:
    """Twelve simulated ladders: fit both stages on runs up to 1e9 parameters, predict accuracy at 3e10.

    The target losses lie inside the link's data, so the link is well known there and stage 1's
    extrapolation in N dominates. The propagated 90% bands of the mean accuracy cover the truth at about
    the nominal rate; the plug-in bands (stage-1 median pushed through the link) ignore stage 1's error
    and under-cover.
    """
    covered = {"propagated": [], "plugin": []}
    target = {"N": [3e10, 3e10], "D": [2e10, 4e10]}
    truth_loss = np.exp(np.asarray(bs.laws.get_law("chinchilla").log_mean(
        CHINCHILLA, {k: np.log(v) for k, v in target.items()})))
    truth = sigmoid_accuracy(truth_loss)
    for rep in range(12):
        N, D = bs.chinchilla_design(40, seed=100 + rep)
        keep = np.flatnonzero(N < 1e9)[:14]  # 14 runs in every ladder: one compiled program for all twelve
        runs = bs.simulate("chinchilla", CHINCHILLA, N=N[keep], D=D[keep], noise=0.02, seed=200 + rep)
        acc = sigmoid_accuracy(runs.loss) * np.exp(0.01 * np.random.default_rng(rep).standard_normal(runs.n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.ConvergenceWarning)
            result = bs.fit_downstream(bs.fit(runs, settings=TINY, seed=rep), acc, chance=0.25)
        for name, plugin in (("propagated", False), ("plugin", True)):
            draws = result.predict_draws(**target, plugin=plugin)
            lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
            covered[name].extend((lo <= truth) & (truth <= hi))
    rate = {k: float(np.mean(v)) for k, v in covered.items()}
    assert rate["propagated"] >= 0.8, rate
    assert rate["plugin"] <= 0.6, rate


def test_exponential_link_of_gadre_et_al(small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    """err = eps - k·exp(-gamma·L), as accuracy chance + k·exp(-gamma·L): fitted, predicted, saved and loaded."""
    data = small_groups["g1"]
    acc = np.asarray(bs.downstream.exponential(data.loss, 8.0, 1.5, 0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        noisy = acc * np.exp(0.01 * np.random.default_rng(0).standard_normal(data.n))
        result = bs.fit_downstream(bs.fit(data, settings=TINY), noisy, chance=0.25, link="exponential")
    assert result.latents[-3:] == ("k", "gamma", "acc_sigma")
    for name, truth in (("k", 8.0), ("gamma", 1.5)):
        lo, hi = interval(result.draws(name))
        assert lo < truth < hi, (name, lo, hi)
    result.save(tmp_path / "down.nc")
    loaded = bs.load(tmp_path / "down.nc")
    assert loaded.link == "exponential"
    np.testing.assert_array_equal(loaded.predict_draws(N=[1e10], D=[2e11]), result.predict_draws(N=[1e10], D=[2e11]))
    with pytest.raises(ValueError, match="link must be one of"):
        bs.fit_downstream(result.loss_fit, acc, chance=0.25, link="logistic")
