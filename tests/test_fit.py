"""bs.fit: robustness, reproducibility, settings, priors, diagnostics, precision."""

import dataclasses
import warnings

import jax
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest

import bayescale as bs
from bayescale.data import DataError
from bayescale.fit import PROGRAMS_PER_FIT
from conftest import CHINCHILLA, SMALL, TINY, interval


@pytest.mark.slow
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


def test_same_seed_identical_draws_other_seed_differs(chinchilla_data: bs.ScalingData, chinchilla_fit: bs.FitResult) -> None:
    again = bs.fit(chinchilla_data, seed=0, **SMALL)
    other = bs.fit(chinchilla_data, seed=1, **SMALL)
    np.testing.assert_array_equal(again.posterior["alpha"].values, chinchilla_fit.posterior["alpha"].values)
    assert not np.array_equal(other.posterior["alpha"].values, chinchilla_fit.posterior["alpha"].values)


def test_learned_nu_and_prior_overrides(chinchilla_data: bs.ScalingData) -> None:
    result = bs.fit(
        chinchilla_data,
        likelihood=bs.likelihoods.student_t(nu=None),
        priors={"E": dist.LogNormal(0.5, 0.5)},
        settings=TINY,
        seed=3,
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
        bs.fit(chinchilla_data, priors=priors, settings=TINY)


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
        bs.fit(chinchilla_data, settings=TINY, **kwargs)


def test_unconverged_fit_warns(small_groups: dict) -> None:
    """Ten runs, five law parameters, 150 draws per chain: the chains have not mixed, and the fit says so."""
    with pytest.warns(bs.ConvergenceWarning, match="may not have converged"):
        result = bs.fit(small_groups["g0"], settings=TINY, seed=0)
    assert not result.diagnostics.ok and result.diagnostics.problems


def test_converged_fit_is_silent(chinchilla_data: bs.ScalingData) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", bs.ConvergenceWarning)
        result = bs.fit(chinchilla_data, seed=0, **SMALL)
    assert result.diagnostics.ok


@pytest.mark.slow
def test_float32_matches_float64(chinchilla_data: bs.ScalingData, chinchilla_fit: bs.FitResult) -> None:
    single = bs.fit(chinchilla_data, seed=0, precision="float32", **SMALL)
    for param in CHINCHILLA:
        d64, d32 = chinchilla_fit.draws(param), single.draws(param)
        assert abs(np.median(d32) - np.median(d64)) < 0.25 * d64.std(), param
        assert 0.8 < d32.std() / d64.std() < 1.25, param


def runs(n: int = 40, seed: int = 0) -> pd.DataFrame:
    N, D = bs.chinchilla_design(n, seed=seed)
    return bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, seed=seed).to_frame()[["N", "D", "loss"]]


@pytest.mark.parametrize(
    "frame, kwargs, match",
    [
        (runs().iloc[:0], {}, "no rows"),
        (runs().iloc[:1], {}, "1 runs are too few.*6 parameters"),
        (runs().iloc[:5], {}, "5 runs are too few"),
        (runs().drop(columns="D"), {}, "needs covariate 'D'"),
        (runs(), {"loss": "final_loss"}, "'final_loss' \\(for loss\\) not found"),
        (runs(), {"law": "chinchila"}, "unknown law 'chinchila'"),
        (runs(), {"priors": {"alpha": bs.laws.get_law("chinchilla").priors["A"], "E": None}}, "must be a numpyro"),
        (runs(), {"seed": -1}, "seed"),
    ],
)
def test_bad_inputs_to_fit(frame: pd.DataFrame, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bs.fit(frame, settings=TINY, **kwargs)


def test_duplicated_columns() -> None:
    frame = runs()
    frame = pd.concat([frame, frame[["N"]]], axis=1)
    with pytest.raises(DataError, match=r"duplicated column names: \['N'\]"):
        bs.fit(frame)


@pytest.mark.slow
def test_extreme_magnitudes_give_finite_posterior() -> None:
    """Runs at 1e27-1e31 FLOPs: no overflow, no NaN, and the truth still inside the intervals."""
    N = np.geomspace(1e12, 1e14, 30)
    D = np.geomspace(1e14, 1e16, 30)[np.random.default_rng(0).permutation(30)]
    truth = {"E": 1.0, "A": 1e4, "B": 1e4, "alpha": 0.3, "beta": 0.3}
    data = bs.simulate("chinchilla", truth, N=N, D=D, noise=0.002, seed=1)
    assert data.C.max() > 1e29
    fit = bs.fit(data, seed=0, **SMALL)
    draws = fit.draws()
    assert all(np.all(np.isfinite(v)) for v in draws.values())
    lo, hi = np.quantile(draws["E"], [0.005, 0.995])
    assert lo < truth["E"] < hi


def test_a_first_fit_builds_its_stated_number_of_programs(chinchilla_data: bs.ScalingData) -> None:
    """With every in-memory program dropped, one fit builds at most ``PROGRAMS_PER_FIT`` programs (counted as
    lowerings to XLA: each is then compiled or read back from the persistent cache). Eager operations on device
    arrays would each add one (a first fit built 43 before they moved to NumPy)."""
    built = []

    def listener(name: str, *args: object, **kwargs: object) -> None:
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            built.append(name)

    jax.clear_caches()
    bs.start.start_bounds.cache_clear()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.ConvergenceWarning)
            bs.fit(chinchilla_data, settings=TINY, seed=2)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert 0 < len(built) <= PROGRAMS_PER_FIT, f"{len(built)} programs"


def test_refit_of_an_edited_table_compiles_nothing(chinchilla_data: bs.ScalingData) -> None:
    """Tables are padded to shape buckets and the sampler's warmup and draw counts are data: a table one run
    shorter, fitted with another seed and the other sampler size, reuses every compiled program (counted as
    XLA backend compilations)."""
    compiles = []

    def listener(name: str, *args: object, **kwargs: object) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.ConvergenceWarning)
            bs.fit(chinchilla_data.subset(np.arange(chinchilla_data.n) < 190), settings=TINY)
            assert compiles, "the listener saw no compilation"
            compiles.clear()
            other_size = dataclasses.replace(TINY, seed=1, num_warmup=SMALL["num_warmup"],
                                             num_samples=SMALL["num_samples"])
            refit = bs.fit(chinchilla_data.subset(np.arange(chinchilla_data.n) < 189), settings=other_size)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == [], f"{len(compiles)} programs compiled again"
    assert refit.data.n == 189 and refit.idata.log_likelihood["log_loss"].shape == (2, SMALL["num_samples"], 189)


