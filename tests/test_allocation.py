"""Compute-optimal allocation: closed form vs numerics, hand values, reachability, inference-aware."""

import dataclasses

import arviz as az
import numpy as np
import pytest

import bayescale as bs
from bayescale.model import make_spec
from conftest import CHINCHILLA, SMALL


def degenerate_fit(params: dict, law: str = "chinchilla", draws: int = 4) -> bs.FitResult:
    """A 'posterior' whose every draw is ``params`` (sigma 0.02)."""
    law_obj = bs.laws.get_law(law)
    values = {**params, "sigma": 0.02}
    idata = az.from_dict(posterior={k: np.full((1, draws), float(v)) for k, v in values.items()})
    data = bs.ScalingData.from_arrays(loss=[3.0, 2.9], N=[1e8, 2e8], D=[1e9, 2e9])
    spec = make_spec(law_obj, bs.likelihoods.student_t())
    return bs.FitResult(idata=idata, data=data, settings=bs.SamplerSettings(), spec=spec)


def test_published_chinchilla_by_hand() -> None:
    fit = degenerate_fit(CHINCHILLA)
    budgets = np.array([1e20, 1e21, 1e24])
    table = bs.compute_optimal(fit, budgets)
    e, A, B, alpha, beta = (CHINCHILLA[k] for k in ("E", "A", "B", "alpha", "beta"))
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n_hand = G * (budgets / 6) ** (beta / (alpha + beta))
    d_hand = (budgets / 6) ** (alpha / (alpha + beta)) / G
    np.testing.assert_allclose(table[("N_opt", "median")], n_hand, rtol=1e-9)
    np.testing.assert_allclose(table[("D_opt", "median")], d_hand, rtol=1e-9)
    np.testing.assert_allclose(6 * table[("N_opt", "median")] * table[("D_opt", "median")], budgets, rtol=1e-9)
    loss = e + A * n_hand**-alpha + B * d_hand**-beta
    np.testing.assert_allclose(table[("loss_opt", "median")], loss, rtol=1e-9)
    exps = bs.allocation_exponents(fit)
    assert exps.loc["a", "median"] == pytest.approx(beta / (alpha + beta))
    assert exps.loc["a", "median"] + exps.loc["b", "median"] == pytest.approx(1.0)


def test_closed_form_equals_numerical_minimisation_per_draw(chinchilla_fit: bs.FitResult) -> None:
    budgets = [1e19, 1e22, 1e25]
    closed = bs.optimal_allocation(chinchilla_fit.law, chinchilla_fit.draws(), budgets)
    numeric_law = dataclasses.replace(chinchilla_fit.law, builtin=False, log_optimum=None)
    numeric_fit = dataclasses.replace(chinchilla_fit, spec=dataclasses.replace(chinchilla_fit.spec, law=numeric_law))
    numeric = bs.optimal_allocation(numeric_law, numeric_fit.draws(), budgets)
    for key in ("N_opt", "D_opt", "loss_opt"):
        np.testing.assert_allclose(numeric[key], closed[key], rtol=1e-6)
    exps = bs.allocation_exponents(numeric_fit, compute=1e22)
    assert exps.loc["a", "median"] == pytest.approx(bs.allocation_exponents(chinchilla_fit).loc["a", "median"], rel=1e-4)


@pytest.mark.slow
def test_intervals_narrow_with_more_data() -> None:
    widths = []
    for n in (40, 400):
        N, D = bs.chinchilla_design(n, seed=9)
        data = bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, noise=0.02, seed=10)
        table = bs.compute_optimal(bs.fit(data, seed=0, **SMALL), [1e24])
        widths.append(float(np.log(table[("N_opt", "95%")] / table[("N_opt", "5%")]).iloc[0]))
    assert widths[1] < 0.6 * widths[0]


def test_target_below_irreducible_loss_is_a_probability(chinchilla_fit: bs.FitResult) -> None:
    with pytest.warns(UserWarning, match="not reachable"):
        table = bs.compute_for_loss(chinchilla_fit, [1.0, 2.0])
    assert table.loc[1.0, ("p_reachable", "")] == 0.0
    assert table.loc[2.0, ("p_reachable", "")] == 1.0
    assert np.isfinite(table.loc[2.0, ("C", "median")])
    # Consistency: the optimum at the returned compute has the target loss.
    c = table.loc[2.0, ("C", "median")]
    assert bs.compute_optimal(chinchilla_fit, [c])[("loss_opt", "median")].iloc[0] == pytest.approx(2.0, rel=2e-3)
    e = np.median(chinchilla_fit.draws("E"))
    p = bs.compute_for_loss(chinchilla_fit, [e]).loc[e, ("p_reachable", "")]
    assert 0.3 < p < 0.7


def test_overtraining_penalty_is_positive_and_zero_at_optimum(chinchilla_fit: bs.FitResult) -> None:
    over = bs.loss_at(chinchilla_fit, N=7e9, C=6 * 7e9 * 1e12)
    assert over[("penalty", "5%")].iloc[0] >= 0
    fit = degenerate_fit(CHINCHILLA)
    n_opt = bs.compute_optimal(fit, [1e22])[("N_opt", "median")].iloc[0]
    at_opt = bs.loss_at(fit, N=n_opt, C=1e22)
    assert abs(at_opt[("penalty", "median")].iloc[0]) < 1e-9


def test_inference_aware_optimum_shrinks_with_inference_tokens() -> None:
    fit = degenerate_fit(CHINCHILLA)
    sizes = [bs.inference_optimal(fit, 2.0, tokens).loc["N", "median"] for tokens in (1e9, 1e12, 1e14)]
    assert sizes[0] > sizes[1] > sizes[2]
    low = bs.inference_optimal(fit, 2.0, 1e9)
    assert low.loc["N", "median"] == pytest.approx(low.loc["N_train_optimal", "median"], rel=0.05)
    assert bs.inference_optimal(fit, 2.0, 1e14).loc["saving", "median"] > 0.1


def test_bad_allocation_inputs(chinchilla_fit: bs.FitResult) -> None:
    with pytest.raises(ValueError, match="compute must be positive"):
        bs.compute_optimal(chinchilla_fit, [-1e20])
    with pytest.raises(ValueError, match="flops_per_token must be a positive"):
        bs.compute_optimal(chinchilla_fit, [1e20], flops_per_token=0)
    with pytest.raises(ValueError, match="needs a law in N and D"):
        bs.compute_optimal(degenerate_fit({"alpha_N": 0.076, "N_c": 8.8e13}, law="kaplan_n"), [1e20])
