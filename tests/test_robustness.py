"""A corpus of bad inputs, each with a specific readable error or warning; property tests over random tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayescale as bs
from bayescale.data import DataError, DataWarning
from bayescale.laws import get_law
from bayescale.likelihoods import get_likelihood
from bayescale.model import make_spec, model_data
from conftest import CHINCHILLA, SMALL

BAD_CELLS = {
    "NaN": (np.nan, "missing values"),
    "inf": (np.inf, "infinite"),
    "zero": (0.0, "must be > 0"),
    "negative": (-3.0, "must be > 0"),
    "string": ("n/a", "non-numeric"),
    "boolean": (True, "booleans"),
}


@st.composite
def valid_tables(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 30))
    positive = st.floats(1e-6, 1e30, allow_nan=False, allow_infinity=False)
    columns = {c: draw(st.lists(positive, min_size=n, max_size=n)) for c in ("N", "D", "loss")}
    index = draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n, unique=True))
    return pd.DataFrame(columns, index=index)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_tables())
def test_valid_tables_load_unchanged(frame: pd.DataFrame) -> None:
    data = bs.ScalingData.from_table(frame)
    np.testing.assert_array_equal(data.loss, frame["loss"].to_numpy())
    np.testing.assert_array_equal(data.N, frame["N"].to_numpy())
    np.testing.assert_allclose(data.C, 6 * frame["N"].to_numpy() * frame["D"].to_numpy(), rtol=1e-12)
    assert np.all(np.isfinite(data.C))
    assert list(data.index) == list(frame.index)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_tables(), st.sampled_from(["N", "D", "loss"]), st.sampled_from(sorted(BAD_CELLS)), st.data())
def test_one_bad_cell_names_column_and_row(frame: pd.DataFrame, column: str, kind: str, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(list(frame.index)))
    value, message = BAD_CELLS[kind]
    frame = frame.astype(object)
    frame.loc[row, column] = value
    with pytest.raises(DataError) as err:
        bs.ScalingData.from_table(frame)
    text = str(err.value)
    assert f"'{column}'" in text and message in text
    if kind != "boolean":  # a boolean anywhere makes the whole column suspect
        assert f"rows {row!r}" in text or f"rows {row}" in text


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
        bs.fit(frame, num_warmup=5, num_samples=5, **kwargs)


def test_duplicated_columns() -> None:
    frame = runs()
    frame = pd.concat([frame, frame[["N"]]], axis=1)
    with pytest.raises(DataError, match=r"duplicated column names: \['N'\]"):
        bs.fit(frame)


def test_swapped_params_and_tokens_warn() -> None:
    frame = runs(60)
    frame = frame[frame["D"] > frame["N"]].rename(columns={"N": "D", "D": "N"})
    with pytest.warns(DataWarning, match="swapped"):
        bs.fit_map(frame)


def test_accuracy_instead_of_loss_warns() -> None:
    frame = runs()
    frame["loss"] = 1.0 / frame["loss"]  # in (0, 1) and rising with scale, like an accuracy
    with pytest.warns(DataWarning, match="is it an accuracy"):
        bs.fit_map(frame)


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


def test_bounded_law_prior_that_the_data_push_against() -> None:
    """A uniform prior whose lower edge is above the data's exponent: the point fit ignores the prior and
    drives the logit of a to about -1e4; chains must still start inside and explore, not stick there."""
    C = np.geomspace(1e18, 1e22, 20)
    data = bs.simulate("power", {"a": 0.3, "K": 1e-3}, C=C, N=C / 6e10, noise=0.01, seed=0)
    fit = bs.fit(data, law="power", priors={"a": dist.Uniform(0.32, 0.5)}, seed=0,
                 num_warmup=200, num_samples=200, num_chains=2)
    a = fit.draws()["a"]
    assert 0.32 < a.min() and a.mean() < 0.33 and a.std() > 1e-4
    assert fit.diagnostics.max_r_hat < 1.05 and fit.diagnostics.table["ess_bulk"].min() > 60  # was 1.07-1.17, ESS 9-24


def test_bounded_noise_priors_that_exclude_the_default_start() -> None:
    """User priors sigma on [0.1, 0.2] (the data's noise is 0.01) and nu on [1, 3] (the start is 4):
    chains start inside them, no NaN."""
    C = np.geomspace(1e18, 1e22, 20)
    data = bs.simulate("power", {"a": 0.3, "K": 1e-3}, C=C, N=C / 6e10, noise=0.01, seed=0)
    fit = bs.fit(data, law="power", likelihood=bs.likelihoods.student_t(nu=None),
                 priors={"sigma": dist.Uniform(0.1, 0.2), "nu": dist.Uniform(1.0, 3.0)}, seed=0,
                 num_warmup=200, num_samples=200, num_chains=2)
    sigma, nu = fit.draws()["sigma"], fit.draws()["nu"]
    assert np.all(np.isfinite(sigma)) and 0.1 < sigma.min() and sigma.mean() < 0.12
    assert np.all(np.isfinite(nu)) and 1.0 < nu.min() and nu.max() < 3.0


def test_overflowing_jacobian_is_a_rejected_point() -> None:
    """Far out, a centred amplitude's Jacobian D_c / alpha overflows before D_c does, and the log density
    is +inf: NUTS accepted such a point and never left it (a chain stuck at D_c = 1e308). It must be rejected."""
    data = bs.simulate("kaplan_d", {"alpha_D": 0.1, "D_c": 5e13}, D=np.geomspace(1e9, 1e12, 20), noise=0.01, seed=0)
    spec = make_spec(get_law("kaplan_d"), get_likelihood("normal"))
    potential = bs.inference.potential_fn(spec)
    with jax.enable_x64(True):
        md = model_data(data, spec.law)
        alpha = 0.1
        z = lambda u: jnp.array([np.log(alpha), u, np.log(0.01)])  # noqa: E731
        assert np.isfinite(float(potential(z(0.0), md)))
        u = alpha * (709.5 - float(md.centre["D"]))  # D_c = e^709.5 is finite, D_c / alpha is not
        assert float(potential(z(u), md)) == np.inf
