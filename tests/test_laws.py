"""Every built-in law recovers known parameters from simulated runs."""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bayescale as bs
from conftest import CHINCHILLA, SMALL, interval

RNG = np.random.default_rng(7)
LOG_UNIFORM = lambda lo, hi, n=120: np.exp(RNG.uniform(np.log(lo), np.log(hi), n))  # noqa: E731
N_DES, D_DES = bs.chinchilla_design(200, seed=3)

# (law, truth, covariates, noise): Kaplan constants from Kaplan et al. (2020);
# C_c = 3.1e8 PF-days = 2.7e28 FLOPs.
CASES = {
    "kaplan_n": ({"alpha_N": 0.076, "N_c": 8.8e13}, {"N": LOG_UNIFORM(1e6, 1e10)}, 0.02),
    "kaplan_d": ({"alpha_D": 0.095, "D_c": 5.4e13}, {"D": LOG_UNIFORM(1e8, 1e11)}, 0.02),
    "kaplan_c": ({"alpha_C": 0.050, "C_c": 2.7e28}, {"C": LOG_UNIFORM(1e17, 1e21)}, 0.01),
    "kaplan_nd": ({"alpha_N": 0.076, "alpha_D": 0.095, "N_c": 8.8e13, "D_c": 5.4e13}, {"N": N_DES, "D": D_DES}, 0.01),
    "offset_power": ({"E": 1.7, "alpha": 0.15, "A": 1000.0}, {"C": LOG_UNIFORM(1e18, 1e22)}, 0.01),
    "power": ({"a": 0.3, "K": 0.1}, {"C": LOG_UNIFORM(1e18, 1e22, 60)}, 0.1),
    "broken_power": ({"E": 1.7, "alpha": 0.2, "delta": 0.15, "X_b": 1e20, "A": 5000.0},
                     {"C": LOG_UNIFORM(1e17, 1e23, 120)}, 0.005),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_recovers_truth(name: str) -> None:
    truth, covariates, noise = CASES[name]
    data = bs.simulate(name, truth, noise=noise, seed=11, **covariates)
    result = bs.fit(data, law=name, seed=1, **SMALL)
    assert result.diagnostics.max_r_hat <= 1.01
    for param, value in truth.items():
        lo, hi = interval(result.draws(param))
        assert lo < value < hi, f"{name}: {param}={value} outside 95% interval [{lo:.4g}, {hi:.4g}]"


@pytest.mark.slow
def test_chinchilla_recovers_published_values(chinchilla_fit: bs.FitResult) -> None:
    assert chinchilla_fit.diagnostics.max_r_hat <= 1.01
    for param, value in CHINCHILLA.items():
        lo, hi = interval(chinchilla_fit.draws(param))
        assert lo < value < hi, f"{param}={value} outside [{lo:.4g}, {hi:.4g}]"


@pytest.mark.slow
def test_custom_law_fits_like_builtin(chinchilla_data: bs.ScalingData) -> None:
    def log_mean(p, x):  # noqa: ANN001, ANN202
        return jnp.logaddexp(jnp.log(p["E"]), jnp.log(p["A"]) - p["alpha"] * x["N"])

    law = bs.laws.custom(
        "n_only",
        ("E", "alpha", "A"),
        ("N",),
        log_mean,
        {"E": dist.LogNormal(0.5, 1.0), "alpha": dist.LogNormal(-1.0, 1.0), "A": dist.LogNormal(5.0, 5.0)},
    )
    truth = {"E": 2.0, "alpha": 0.3, "A": 300.0}
    N = np.exp(np.random.default_rng(21).uniform(np.log(1e7), np.log(1e11), 80))
    data = bs.simulate(law, truth, N=N, noise=0.01, seed=5)
    result = bs.fit(data, law=law, seed=2, **SMALL)
    for param, value in truth.items():
        lo, hi = interval(result.draws(param))
        assert lo < value < hi


def test_registry_and_bad_names() -> None:
    assert set(bs.laws.list_laws()) >= {"chinchilla", "kaplan_n", "kaplan_d", "kaplan_c", "kaplan_nd", "offset_power", "power"}
    with pytest.raises(ValueError, match="unknown law 'chinchila'"):
        bs.laws.get_law("chinchila")
    with pytest.raises(ValueError, match="covariate must be one of"):
        bs.laws.power("X")
    assert bs.laws.get_law("offset_power", covariate="N").covariates == ("N",)


def test_law_log_mean_matches_formula() -> None:
    law = bs.laws.get_law("chinchilla")
    n, d = 1e9, 2e10
    expected = 1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28
    got = np.exp(law.log_mean({k: jnp.asarray(v) for k, v in CHINCHILLA.items()}, {"N": jnp.log(n), "D": jnp.log(d)}))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    kaplan = bs.laws.get_law("kaplan_nd")
    p = {"alpha_N": 0.076, "alpha_D": 0.095, "N_c": 8.8e13, "D_c": 5.4e13}
    expected = ((8.8e13 / n) ** (0.076 / 0.095) + 5.4e13 / d) ** 0.095
    got = np.exp(kaplan.log_mean({k: jnp.asarray(v) for k, v in p.items()}, {"N": jnp.log(n), "D": jnp.log(d)}))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.slow
def test_moe_and_dense_runs_fitted_together(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    N, D = bs.chinchilla_design(120, seed=0)
    experts = np.where(rng.random(120) < 0.5, 1.0, rng.choice([4.0, 8.0, 16.0], 120))  # half dense
    truth = {**CHINCHILLA, "w": 0.4}
    data = bs.simulate("moe", truth, N=N, D=D, N_total=N * experts, noise=0.02, seed=1)
    fit = bs.fit(data, law="moe", seed=0, **SMALL)
    summary = fit.summary(level=0.95)
    for name in ("w", "alpha", "beta", "E"):
        assert summary.loc[name, "2.5%"] <= truth[name] <= summary.loc[name, "97.5%"], name
    # an MoE model predicts a lower loss than a dense model with the same active parameters
    moe, dense = fit.predict_draws(N=[1e9, 1e9], D=[2e10, 2e10], N_total=[8e9, 1e9]).T
    assert np.mean(moe < dense) == 1.0
    fit.save(tmp_path / "moe.nc")
    np.testing.assert_array_equal(bs.load(tmp_path / "moe.nc").data.N_total, data.N_total)
    with pytest.raises(bs.DataError, match="below active parameters"):
        bs.ScalingData.from_arrays(loss=[3.0, 2.9], N=[2e8, 1e8], D=[1e9, 1e9], N_total=[1e8, 1e8])


def test_broken_power_matches_its_formula() -> None:
    law = bs.laws.get_law("broken_power", covariate="D")
    p = {"E": 1.7, "alpha": 0.2, "delta": 0.15, "X_b": 1e11, "A": 300.0}
    d = np.array([1e9, 1e11, 1e13])
    expected = 1.7 + 300.0 * d**-0.2 * (1 + d / 1e11) ** -0.15
    got = np.exp(law.log_mean({k: jnp.asarray(v) for k, v in p.items()}, {"D": jnp.log(d)}))
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # float32 outside the fits
