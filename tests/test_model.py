"""The model: input checks, the potential over a flat vector, and its guards."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.data import DataWarning
from bayescale.laws import get_law
from bayescale.likelihoods import get_likelihood
from bayescale.model import make_spec, model_data, potential_fn
from conftest import CHINCHILLA


def runs(n: int = 40, seed: int = 0) -> pd.DataFrame:
    N, D = bs.chinchilla_design(n, seed=seed)
    return bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, seed=seed).to_frame()[["N", "D", "loss"]]


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


def test_overflowing_jacobian_is_a_rejected_point() -> None:
    """Far out, a centred amplitude's Jacobian D_c / alpha overflows before D_c does, and the log density
    is +inf: NUTS accepted such a point and never left it (a chain stuck at D_c = 1e308). It must be rejected."""
    data = bs.simulate("kaplan_d", {"alpha_D": 0.1, "D_c": 5e13}, D=np.geomspace(1e9, 1e12, 20), noise=0.01, seed=0)
    spec = make_spec(get_law("kaplan_d"), get_likelihood("normal"))
    potential = potential_fn(spec)
    with jax.enable_x64(True):
        md = model_data(data, spec.law)
        alpha = 0.1
        z = lambda u: jnp.array([np.log(alpha), u, np.log(0.01)])  # noqa: E731
        assert np.isfinite(float(potential(z(0.0), md)))
        u = alpha * (709.5 - float(md.centre["D"]))  # D_c = e^709.5 is finite, D_c / alpha is not
        assert float(potential(z(u), md)) == np.inf
