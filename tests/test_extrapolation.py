"""Structural error: zero inside the data, learned from the fit's own extrapolation record, honest beyond it."""

import dataclasses
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.posterior import MISFIT
from conftest import SMALL, TINY


def runs(kind: str, seed: int) -> tuple[bs.ScalingData, np.ndarray, np.ndarray]:
    """40 runs at 1e18-1e21 FLOPs and 10 held out at 2e21-1e23, 0.5% log-noise: from the offset power law
    itself (``"law"``), or from a curve whose exponent steepens with scale (``"bend"``, outside the law)."""

    def curve(C: np.ndarray) -> np.ndarray:
        x = np.log(C / 1e18)
        alpha = 0.10 + 0.012 * x if kind == "bend" else 0.15
        return 1.8 + 3.0 * np.exp(-alpha * x)

    rng = np.random.default_rng(seed)
    C = np.exp(rng.uniform(np.log(1e18), np.log(1e21), 40))
    held = np.geomspace(2e21, 1e23, 10)
    loss = curve(C) * np.exp(0.005 * rng.standard_normal(40))
    truth = curve(held) * np.exp(0.005 * rng.standard_normal(10))
    return bs.ScalingData.from_arrays(loss=loss, C=C), held, truth


CASES = [("bend", 0), ("bend", 1), ("law", 0), ("law", 1), ("law", 2)]


@pytest.fixture(scope="module")
def planning() -> dict[tuple[str, int], tuple[bs.FitResult, bs.FitResult, np.ndarray, np.ndarray]]:
    """Every case's single-law fit and its planning mode: the fits as one batch, their refits as one more."""
    cases = {case: runs(*case) for case in CASES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        single = bs.fit_batch({f"{k}{s}": d for (k, s), (d, _, _) in cases.items()}, law="offset_power", **SMALL)
        structural = bs.extrapolation.structural_error(single)
    return {(k, s): (single[f"{k}{s}"], structural[f"{k}{s}"], held, truth)
            for (k, s), (_, held, truth) in cases.items()}


def coverage(result: bs.FitResult, held: np.ndarray, truth: np.ndarray) -> float:
    band = result.predict(C=held)
    return float(np.mean((band["pred_lower"] <= truth) & (truth <= band["pred_upper"])))


def width(result: bs.FitResult, held: np.ndarray | dict) -> float:
    band = result.predict(**held) if isinstance(held, dict) else result.predict(C=held)
    return float(np.median((band["pred_upper"] - band["pred_lower"]) / band["median"]))


def test_zero_inside_the_data_and_saved(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    """A fit with a structural-error scale predicts exactly as before inside the data, wider beyond it,
    and saves and loads with it."""
    idata = chinchilla_fit.idata.copy()
    idata.posterior[MISFIT] = (("chain", "draw"), np.full(idata.posterior["E"].shape, 0.05))
    structural = dataclasses.replace(chinchilla_fit, idata=idata)
    data = chinchilla_fit.data
    inside = {"N": data.N[:5], "D": data.D[:5]}
    np.testing.assert_array_equal(structural.predict_draws(**inside), chinchilla_fit.predict_draws(**inside))
    beyond = {"N": [1e11, 1e12], "D": [2e12, 2e13]}
    assert width(structural, beyond) > 2 * width(chinchilla_fit, beyond)
    structural.save(tmp_path / "s.nc")
    loaded = bs.load(tmp_path / "s.nc")
    np.testing.assert_array_equal(loaded.predict_draws(**beyond, seed=3), structural.predict_draws(**beyond, seed=3))
    with pytest.raises(ValueError, match="cuts must be quantiles"):
        bs.extrapolation.structural_error(chinchilla_fit, cuts=(0.5, 1.5))


def test_structural_error_grows_as_the_square_root_of_distance(chinchilla_fit: bs.FitResult) -> None:
    """Each draw deviates from its mean curve by ``tau·z·sqrt(d)`` at ``d`` e-folds beyond the runs: the random
    walk whose variance ``tau^2·d`` the scale is learned under (the predictive grew like ``d`` instead)."""
    idata = chinchilla_fit.idata.copy()
    idata.posterior[MISFIT] = (("chain", "draw"), np.full(idata.posterior["E"].shape, 0.05))
    structural = dataclasses.replace(chinchilla_fit, idata=idata)
    top = bs.posterior.data_top(chinchilla_fit.law, chinchilla_fit.data)
    d = np.array([0.25, 1.0, 4.0])
    log_x = {"N": top["N"] + d, "D": np.full(3, top["D"])}
    deviation = structural.log_mean_draws(log_x, seed=3) - chinchilla_fit.log_mean_draws(log_x, seed=3)
    np.testing.assert_allclose(deviation, structural.shock(3)[:, None] * np.sqrt(d), rtol=1e-9, atol=1e-12)
    assert np.std(structural.shock(3)) == pytest.approx(0.05, rel=0.1)


@pytest.mark.parametrize("tau", [0.0, 0.01, 0.03])
def test_the_scale_is_recovered_from_a_record_with_known_truth(tau: float) -> None:
    """Records simulated with a known scale, from refits whose mean curves are uncertain (sd 0.01): the scale's
    90% interval covers it (a zero scale stays well under the refits' spread), whether the refits' errors are
    their own parameter error plus the misfit (the law holds inside) or the misfit alone (a wrong law, whose
    posterior spread measures nothing). Either estimator alone fails one of the two."""
    rng = np.random.default_rng(int(tau * 1000))
    n = 3 * 40
    table = pd.DataFrame({"cut": np.repeat([0.5, 0.6, 0.7], 40), "distance": rng.uniform(0.1, 1.5, n),
                          "noise": np.full(n, 0.002**2), "curve": np.full(n, 0.01**2)})
    for own in (True, False):
        spread = table["noise"] + (table["curve"] if own else 0) + tau**2 * table["distance"]
        table["error"] = np.sqrt(spread) * rng.standard_normal(n)
        cdf = np.cumsum(bs.extrapolation.misfit_posterior(table))
        lo, hi = np.interp([0.05, 0.95], cdf, bs.extrapolation.MISFIT_GRID)
        # a weight column: equal weights are the default; a row repeated k times at 1/k of its weight is one row
        repeated = table.loc[table.index.repeat(3)].assign(weight=1 / 9)
        np.testing.assert_allclose(bs.extrapolation.misfit_posterior(repeated), np.diff(cdf, prepend=0.0), atol=1e-12)
        if tau == 0:  # below the prior's support: the scale shrinks to its floor, far under the refits' spread
            assert hi < 0.006, (own, lo, hi)
        else:
            assert lo <= tau <= hi, (own, lo, hi)
        if tau == 0.03:
            assert hi < 0.06 and lo > 0.015, (own, lo, hi)


def test_every_planning_number_carries_the_structural_error(chinchilla_fit: bs.FitResult) -> None:
    """loss_opt at 1e24 FLOPs was the plain fit's (0.0237 wide) on a planning-mode fit, and loss_at subtracted
    an optimum without the structural error from a loss with it."""
    idata = chinchilla_fit.idata.copy()
    idata.posterior[MISFIT] = (("chain", "draw"), np.full(idata.posterior["E"].shape, 0.05))
    structural = dataclasses.replace(chinchilla_fit, idata=idata)

    def spread(table: pd.DataFrame, column: str) -> float:
        return float((table[(column, "95%")] - table[(column, "5%")]).iloc[0])

    plain, planning = (bs.compute_optimal(f, [1e24]) for f in (chinchilla_fit, structural))
    assert spread(planning, "loss_opt") > 3 * spread(plain, "loss_opt")
    pd.testing.assert_frame_equal(planning["N_opt"], plain["N_opt"])  # the optimum is the law's
    n_opt = float(plain[("N_opt", "median")].iloc[0])
    at = bs.loss_at(structural, N=[n_opt], C=[1e24])  # at the optimum: loss and loss_opt share their error
    assert abs(float(at[("penalty", "median")].iloc[0])) < 0.01 * spread(planning, "loss_opt")
    assert spread(at, "loss") > 3 * spread(bs.loss_at(chinchilla_fit, N=[n_opt], C=[1e24]), "loss")
    target = float(plain[("loss_opt", "median")].iloc[0])
    plain_c, planning_c = (bs.compute_for_loss(f, [target]) for f in (chinchilla_fit, structural))
    ratio = [float((t[("C", "95%")] / t[("C", "5%")]).iloc[0]) for t in (plain_c, planning_c)]
    assert ratio[1] > 1.5 * ratio[0]  # the compute for a loss is far less certain with the structural error
    reachable = [float(t[("p_reachable", "")].iloc[0]) for t in (plain_c, planning_c)]
    assert reachable[0] == 1.0 and 0.3 < reachable[1] < 0.9  # ... and a draw whose curve turns up never reaches it
    aware = bs.inference_optimal(structural, 1.02 * target, inference_tokens=1e13)
    assert aware.loc["N", "95%"] / aware.loc["N", "5%"] > 1.5 * (
        bs.inference_optimal(chinchilla_fit, 1.02 * target, inference_tokens=1e13).loc["N", "95%"]
        / bs.inference_optimal(chinchilla_fit, 1.02 * target, inference_tokens=1e13).loc["N", "5%"])


def test_planning_mode_batch_is_each_member_alone(tiny_batch: bs.BatchResult,
                                                  tiny_structural_batch: bs.BatchResult) -> None:
    """The structural error of every group of a batch (its refits as one batch) equals each group's alone."""
    assert tiny_structural_batch.order == tiny_batch.order
    for label in tiny_batch.order:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.ConvergenceWarning)
            alone = bs.extrapolation.structural_error(tiny_batch[label], cuts=(0.6, 0.8))
        np.testing.assert_array_equal(tiny_structural_batch[label].misfit, alone.misfit)
        np.testing.assert_array_equal(tiny_structural_batch[label].draws("E"), tiny_batch[label].draws("E"))
        np.testing.assert_array_equal(tiny_structural_batch[label].predict_draws(N=[1e11], D=[2e12], seed=1),
                                      alone.predict_draws(N=[1e11], D=[2e12], seed=1))


def test_refits_run_the_programs_compiled_for_their_fit(chinchilla_data: bs.ScalingData) -> None:
    """Rolling-origin refits are padded to their fit's shape bucket: the sampler is not lowered again (the
    programs lowered while the record is made are counted by name)."""
    lowered = []

    def listener(name: str, *args: object, fun_name: str = "", **kwargs: object) -> None:
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(fun_name)

    jax.clear_caches()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.ConvergenceWarning)
            fit = bs.fit(chinchilla_data, settings=TINY)
            assert "advance" in " ".join(lowered), f"the fit lowered no sampler: {lowered}"
            lowered.clear()
            record = bs.extrapolation.rolling_record({0: fit}, cuts=(0.5, 0.7))[0]
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert [r.fit.data.n for r in record] == [100, 140]
    assert not [name for name in lowered if "advance" in name], lowered


@pytest.mark.slow
def test_covers_a_law_outside_the_candidate_set(planning: dict) -> None:
    """A curve that bends away from the law: the single law's 90% bands cover under 0.6 of the held-out
    runs, the structural error's at least 0.8."""
    single_cover, structural_cover = [], []
    for seed in range(2):
        single, structural, held, truth = planning["bend", seed]
        single_cover.append(coverage(single, held, truth))
        structural_cover.append(coverage(structural, held, truth))
    assert np.mean(single_cover) < 0.6
    assert np.mean(structural_cover) >= 0.8


@pytest.mark.slow
def test_costs_little_when_the_law_is_right(planning: dict) -> None:
    """Data from the law itself: the structural error's bands are at most 1.3x the single law's."""
    ratios = []
    for seed in range(3):
        single, structural, held, truth = planning["law", seed]
        ratios.append(width(structural, held) / width(single, held))
        assert coverage(structural, held, truth) >= 0.8
    assert np.mean(ratios) <= 1.3, ratios
