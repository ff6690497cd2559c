"""bs.fit and bs.fit_map: robustness, agreement, reproducibility, diagnostics, I/O."""

import warnings

import numpy as np
import numpyro.distributions as dist
import pytest

import bayescale as bs
from conftest import CHINCHILLA, SMALL, interval


def test_student_t_resists_outliers_normal_does_not() -> None:
    N, D = bs.chinchilla_design(200, seed=4)
    data = bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, noise=0.02, outlier_fraction=0.05, seed=6)
    robust = bs.fit(data, likelihood="student_t", seed=0, **SMALL)
    with warnings.catch_warnings():  # outliers also hurt the Gaussian fit's mixing; not what is tested here
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        gauss = bs.fit(data, likelihood="normal", seed=0, **SMALL)
    for param, value in CHINCHILLA.items():
        lo, hi = interval(robust.draws(param))
        assert lo < value < hi, f"student_t: {param} outside [{lo:.4g}, {hi:.4g}]"
    # The Gaussian fit is pulled: its E moves up by more than twice the robust fit's error.
    err_t = abs(np.median(robust.draws("E")) - CHINCHILLA["E"])
    err_n = abs(np.median(gauss.draws("E")) - CHINCHILLA["E"])
    assert err_n > 2 * err_t
    # ...and it blames the outliers on noise: sigma more than doubles.
    assert np.median(gauss.draws("sigma")) > 2 * np.median(robust.draws("sigma"))


def test_fit_map_agrees_with_posterior_median(chinchilla_data: bs.ScalingData, chinchilla_fit: bs.FitResult) -> None:
    point = bs.fit_map(chinchilla_data)
    assert point.converged
    for param in CHINCHILLA:
        draws = chinchilla_fit.draws(param)
        # Huber (close to L1) and the Student-t posterior differ a little; both sit on the truth.
        assert abs(point.params[param] - np.median(draws)) < 2.0 * draws.std(), param


def test_fit_map_matches_scipy_on_same_objective(chinchilla_data: bs.ScalingData) -> None:
    scipy_opt = pytest.importorskip("scipy.optimize")
    point = bs.fit_map(chinchilla_data)
    logn, logd, logy = np.log(chinchilla_data.N), np.log(chinchilla_data.D), np.log(chinchilla_data.loss)

    def huber(theta: np.ndarray) -> float:
        e, a, b, alpha, beta = theta
        r = np.abs(np.logaddexp(e, np.logaddexp(a - alpha * logn, b - beta * logd)) - logy)
        return float(np.sum(np.where(r <= 1e-3, 0.5 * r**2, 1e-3 * (r - 0.5e-3))))

    best = min(
        (scipy_opt.minimize(huber, x0, method="L-BFGS-B") for x0 in ([0.5, 6, 6, 0.3, 0.3], [1.0, 4, 8, 0.5, 0.2])),
        key=lambda r: r.fun,
    )
    assert point.objective <= best.fun * (1 + 1e-6)


def test_same_seed_identical_draws_other_seed_differs(chinchilla_data: bs.ScalingData, chinchilla_fit: bs.FitResult) -> None:
    again = bs.fit(chinchilla_data, seed=0, **SMALL)
    other = bs.fit(chinchilla_data, seed=1, **SMALL)
    np.testing.assert_array_equal(again.posterior["alpha"].values, chinchilla_fit.posterior["alpha"].values)
    assert not np.array_equal(other.posterior["alpha"].values, chinchilla_fit.posterior["alpha"].values)


def test_idata_groups_and_summary(chinchilla_fit: bs.FitResult) -> None:
    idata = chinchilla_fit.idata
    for group in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data", "constant_data"):
        assert group in idata.groups(), group
    assert idata.log_likelihood["log_loss"].shape == (4, 500, 200)
    table = chinchilla_fit.summary(level=0.9)
    assert list(table.index) == ["E", "alpha", "beta", "A", "B", "sigma"]
    assert {"mean", "sd", "median", "5%", "95%", "r_hat", "ess_bulk", "ess_tail"} <= set(table.columns)
    assert (table["5%"] < table["median"]).all() and (table["median"] < table["95%"]).all()


def test_loo_works_on_idata(chinchilla_fit: bs.FitResult) -> None:
    import arviz as az

    loo = az.loo(chinchilla_fit.idata)
    assert np.isfinite(loo.elpd_loo)


def test_predict_bands_contain_truth_and_widen_when_extrapolating(chinchilla_fit: bs.FitResult) -> None:
    N = np.array([1e9, 1e11])
    D = 20 * N
    table = chinchilla_fit.predict(N=N, D=D, level=0.95)
    truth = CHINCHILLA["E"] + CHINCHILLA["A"] * N ** -CHINCHILLA["alpha"] + CHINCHILLA["B"] * D ** -CHINCHILLA["beta"]
    assert ((table["lower"] < truth) & (truth < table["upper"])).all()
    assert (table["pred_lower"] <= table["lower"]).all() and (table["pred_upper"] >= table["upper"]).all()
    width = (table["upper"] - table["lower"]) / table["median"]
    assert width[1] > width[0]
    by_compute = chinchilla_fit.predict(N=N, C=6 * N * D)
    np.testing.assert_allclose(by_compute["median"], chinchilla_fit.predict(N=N, D=D)["median"])
    with pytest.raises(ValueError, match="needs \\['D'\\]"):
        chinchilla_fit.predict(N=N)
    with pytest.raises(ValueError, match="'N'.*must be > 0"):
        chinchilla_fit.predict(N=[-1.0], D=[1e10])


def test_save_load_round_trip(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "fit.nc"
    chinchilla_fit.save(path)
    loaded = bs.load(path)
    for name in chinchilla_fit.spec.latents:
        np.testing.assert_array_equal(loaded.posterior[name].values, chinchilla_fit.posterior[name].values)
    np.testing.assert_array_equal(loaded.data.N, chinchilla_fit.data.N)
    np.testing.assert_array_equal(loaded.data.loss, chinchilla_fit.data.loss)
    assert loaded.spec == chinchilla_fit.spec and loaded.law.name == "chinchilla"
    assert loaded.config == chinchilla_fit.config and loaded.seed == chinchilla_fit.seed
    assert loaded.summary().equals(chinchilla_fit.summary())


def test_learned_nu_and_prior_overrides(chinchilla_data: bs.ScalingData) -> None:
    result = bs.fit(
        chinchilla_data,
        likelihood=bs.likelihoods.student_t(nu=None),
        priors={"E": dist.LogNormal(0.5, 0.5)},
        seed=3,
        num_warmup=300,
        num_samples=300,
        num_chains=2,
    )
    assert "nu" in result.posterior and result.spec.priors["E"].scale == 0.5


@pytest.mark.parametrize(
    "priors, match",
    [
        ({"gamma": dist.Normal(0, 1)}, "unknown parameter 'gamma'"),
        ({"E": 1.7}, "must be a numpyro Distribution"),
        ({"A": dist.Normal(0, 1)}, "positive numbers"),
        ({"alpha": dist.Normal(np.zeros(2), 1)}, "must be scalar"),
        ({"sigma": dist.Normal(0, 1)}, "sigma.*positive"),
    ],
)
def test_bad_priors(chinchilla_data: bs.ScalingData, priors: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bs.fit(chinchilla_data, priors=priors, num_warmup=5, num_samples=5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"num_chains": 2.5}, "num_chains must be an integer"),
        ({"likelihood": "cauchy"}, "unknown likelihood 'cauchy'"),
        ({"precision": "float16"}, "precision must be"),
        ({"strategy": "pmap"}, "strategy must be"),
    ],
)
def test_bad_arguments(chinchilla_data: bs.ScalingData, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bs.fit(chinchilla_data, **{"num_warmup": 5, "num_samples": 5, **kwargs})


def test_unconverged_fit_warns(chinchilla_data: bs.ScalingData) -> None:
    with pytest.warns(bs.ConvergenceWarning, match="may not have converged"):
        result = bs.fit(chinchilla_data, num_warmup=5, num_samples=20, num_chains=2, seed=0)
    assert not result.diagnostics.ok and result.diagnostics.problems


def test_converged_fit_is_silent(chinchilla_data: bs.ScalingData) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", bs.ConvergenceWarning)
        result = bs.fit(chinchilla_data, seed=0, **SMALL)
    assert result.diagnostics.ok


def test_float32_matches_float64(chinchilla_data: bs.ScalingData, chinchilla_fit: bs.FitResult) -> None:
    single = bs.fit(chinchilla_data, seed=0, precision="float32", **SMALL)
    for param in CHINCHILLA:
        d64, d32 = chinchilla_fit.draws(param), single.draws(param)
        assert abs(np.median(d32) - np.median(d64)) < 0.25 * d64.std(), param
        assert 0.8 < d32.std() / d64.std() < 1.25, param
