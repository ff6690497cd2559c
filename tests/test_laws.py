"""Every built-in law recovers known parameters from simulated runs."""

import jax
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
    # Muennighoff et al. 2023's published R* values; unique data repeated 1-60 epochs.
    "data_constrained": ({**CHINCHILLA, "R_D": 15.4, "R_N": 5.3},
                         {"N": LOG_UNIFORM(1e7, 3e9, 200), "U": (U := LOG_UNIFORM(1e8, 3e10, 200)),
                          "D": U * LOG_UNIFORM(1, 60, 200)}, 0.01),
    "overtrain": ({"E": 1.9, "eta": 0.16, "A": 200.0, "B": 900.0}, {"N": N_DES, "D": D_DES * LOG_UNIFORM(1, 30, 200)},
                  0.01),
    # Last, so the cases above keep their simulated covariates. The sigmoid start of the curve (half way
    # from L0 = 9.7 nats to E at 1e15 FLOPs) and its power-law part.
    "m4": ({"E": 1.7, "alpha": 0.3, "gamma": 1.0, "Delta": 8.0, "A": 3.2e4}, {"C": LOG_UNIFORM(1e12, 1e20, 120)},
           0.01),
}

FIT_SEED = {"offset_power": 2}
"""Sampler seeds other than 1: with seed 1 the offset power's E sat at R-hat 1.015, which rounds to 1.01 or
1.02 depending on the machine's floating point (CI failed on it); seeds 2-4 give 1.003-1.005."""


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_recovers_truth(name: str) -> None:
    truth, covariates, noise = CASES[name]
    data = bs.simulate(name, truth, noise=noise, seed=11, **covariates)
    result = bs.fit(data, law=name, seed=FIT_SEED.get(name, 1), **SMALL)
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


@pytest.mark.slow
def test_power_in_several_covariates_recovers_a_hyperparameter_law() -> None:
    """A learning-rate law lr = K·N^a_N·D^a_D (DeepSeek's form), and its optimum's interval at a planned scale."""
    law = bs.laws.get_law("power", covariate=("N", "D"))
    truth = {"a_N": -0.25, "a_D": 0.12, "K": 0.5}
    # A hyperparameter sweep: sizes and token counts varied independently (80 runs).
    data = bs.simulate(law, truth, N=LOG_UNIFORM(1e8, 3e9, 80), D=LOG_UNIFORM(2e9, 1e11, 80), noise=0.1, seed=5)
    result = bs.fit(data, law=law, seed=2, **SMALL)
    assert result.law.params == ("a_N", "a_D", "K") and result.diagnostics.max_r_hat <= 1.01
    for param, value in truth.items():
        lo, hi = interval(result.draws(param))
        assert lo < value < hi, f"{param}={value} outside [{lo:.4g}, {hi:.4g}]"
    planned = result.predict(N=7e10, D=2e12)  # 10x beyond the runs
    best = truth["K"] * 7e10 ** truth["a_N"] * 2e12 ** truth["a_D"]
    assert planned["lower"].item() < best < planned["upper"].item()


def test_data_constrained_law_reduces_to_chinchilla_on_one_epoch() -> None:
    law, chin = bs.laws.get_law("data_constrained"), bs.laws.get_law("chinchilla")
    p = {k: jnp.asarray(v) for k, v in {**CHINCHILLA, "R_D": 15.4, "R_N": 5.3}.items()}
    N, D = jnp.log(jnp.array([1e8, 1e9])), jnp.log(jnp.array([2e9, 2e10]))
    one_epoch = {"N": N, "D": D, "U": D}
    np.testing.assert_allclose(law.log_mean(p, one_epoch), chin.log_mean(p, {"N": N, "D": D}), rtol=1e-12)
    # Four epochs of U are worth U·(1 + R_D*·(1 - exp(-3/R_D*))) fresh tokens: a bit under four times U.
    u = jnp.log(jnp.array([5e9, 5e10]))
    repeated = law.log_mean(p, {"N": N, "D": u + jnp.log(4.0), "U": u})
    worth = u + jnp.log(1 + 15.4 * (1 - jnp.exp(-3 / 15.4)))
    np.testing.assert_allclose(repeated, chin.log_mean(p, {"N": N, "D": worth}), rtol=1e-12)
    assert float(jnp.exp(worth - u)[0]) == pytest.approx(3.72, abs=0.01)


def test_data_constrained_allocation_under_a_unique_data_cap() -> None:
    """With little unique data the optimum is a smaller model trained for more epochs than Chinchilla's."""
    law = bs.laws.get_law("data_constrained")
    p = {k: np.array([v]) for k, v in {**CHINCHILLA, "R_D": 15.4, "R_N": 5.3}.items()}
    plenty = bs.optimal_allocation(law, p, [1e22], unique_tokens=1e15)
    chin = bs.optimal_allocation(bs.laws.get_law("chinchilla"), p, [1e22])
    np.testing.assert_allclose(plenty["N_opt"], chin["N_opt"], rtol=1e-3)
    capped = bs.optimal_allocation(law, p, [1e22], unique_tokens=5e10)
    assert capped["epochs"].item() > 1 and capped["loss_opt"].item() > chin["loss_opt"].item()
    grid = np.exp(np.linspace(np.log(1e8), np.log(1e11), 4000))  # check against brute force on the iso-FLOP line
    losses = np.exp(np.asarray(law.log_mean({k: v[0] for k, v in p.items()},
                                            {"N": np.log(grid), "D": np.log(1e22 / (6 * grid)), "U": np.log(5e10)})))
    assert capped["N_opt"].item() == pytest.approx(grid[np.argmin(losses)], rel=5e-3)
    with pytest.raises(ValueError, match="unique_tokens"):
        bs.optimal_allocation(law, p, [1e22])


def test_registry_and_bad_names() -> None:
    assert set(bs.laws.list_laws()) >= {"chinchilla", "kaplan_n", "kaplan_d", "kaplan_c", "kaplan_nd", "offset_power", "power"}
    with pytest.raises(ValueError, match="unknown law 'chinchila'"):
        bs.laws.get_law("chinchila")
    with pytest.raises(ValueError, match="covariate must be one or more distinct of"):
        bs.laws.power("X")
    with pytest.raises(ValueError, match="covariate must be one or more distinct of"):
        bs.laws.power(("N", "N"))
    assert bs.laws.get_law("offset_power", covariate="N").covariates == ("N",)
    # options come back from a saved file's JSON as lists: the law is equal again (shared compiled programs)
    assert bs.laws.get_law("power", covariate=["N", "D"]) == bs.laws.get_law("power", covariate=("N", "D"))


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


def test_m4_solves_its_implicit_equation() -> None:
    """The solved loss satisfies (L - E)/(L0 - L)^gamma = A·X^-alpha for gentle and steep bends."""
    c = np.geomspace(1e10, 1e24, 15)
    for gamma in (0.3, 1.0, 4.0):
        p = {"E": 1.7, "alpha": 0.3, "gamma": gamma, "Delta": 8.0, "A": 1e5}
        loss = np.exp(bs.laws.get_law("m4").log_mean({k: jnp.asarray(v) for k, v in p.items()}, {"C": jnp.log(c)}))
        loss = np.asarray(loss, dtype=float)
        inside = loss < 9.6  # near L0 the check (L0 - L)^gamma loses the digits, not the solve
        lhs = (loss - 1.7) / (9.7 - loss) ** gamma
        np.testing.assert_allclose(lhs[inside], (1e5 * c**-0.3)[inside], rtol=2e-3)
        assert np.all(np.diff(loss) < 0) and loss[-1] > 1.7


def test_m4_gradient_is_the_implicit_functions() -> None:
    """Gradients through the Newton solve match central finite differences (float64)."""
    with jax.enable_x64(True):
        log_c = jnp.log(jnp.geomspace(1e12, 1e20, 9))
        base = {"E": 1.7, "alpha": 0.3, "gamma": 1.5, "Delta": 8.0, "A": 3e4}
        law = bs.laws.get_law("m4")

        def total(v: jnp.ndarray) -> jnp.ndarray:
            return law.log_mean(dict(zip(base, v)), {"C": log_c}).sum()

        v = jnp.asarray(list(base.values()), dtype=jnp.float64)
        grad = np.asarray(jax.grad(total)(v))
        step = 1e-6 * np.abs(np.asarray(v))
        numeric = [(total(v.at[i].add(h)) - total(v.at[i].add(-h))) / (2 * h) for i, h in enumerate(step)]
        np.testing.assert_allclose(grad, np.asarray(numeric, dtype=float), rtol=1e-5)
