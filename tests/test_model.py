"""The model: input checks, the potential over a flat vector, and its guards."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bayescale as bs
from bayescale.data import DataWarning
from bayescale.laws import get_law
from bayescale.likelihoods import get_likelihood
from bayescale.model import make_spec, model_data, potential_fn
from bayescale.posterior import spec_from_json, spec_to_json
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


def test_two_priors_of_one_family_are_two_models(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    """TruncatedNormal keeps loc and scale in its base distribution: two of them compared equal, shared one
    compiled potential (the second fit sampled the first fit's prior) and failed to load back."""
    law, lik = get_law("chinchilla"), get_likelihood("student_t")
    narrow = make_spec(law, lik, {"alpha": dist.TruncatedNormal(0.3, 0.01, low=0.0)})
    wide = make_spec(law, lik, {"alpha": dist.TruncatedNormal(0.3, 1.0, low=0.0)})
    assert narrow != wide and hash(narrow) != hash(wide)
    assert potential_fn(narrow) is not potential_fn(wide)
    md = model_data(chinchilla_fit.data, law)
    z = jnp.zeros(len(narrow.latents)).at[1].set(jnp.log(0.5))  # alpha = 0.5, far out for the narrow prior
    assert float(potential_fn(narrow)(z, md)) > float(potential_fn(wide)(z, md)) + 100
    dataclasses.replace(chinchilla_fit, spec=narrow).save(tmp_path / "fit.nc")
    loaded = bs.load(tmp_path / "fit.nc").spec
    assert loaded == narrow and loaded != wide


_FAMILIES = {
    "Normal": lambda a, b: dist.Normal(a, b),
    "LogNormal": lambda a, b: dist.LogNormal(a, b),
    "StudentT": lambda a, b: dist.StudentT(3.0, a, b),
    "TruncatedNormal": lambda a, b: dist.TruncatedNormal(a, b, low=0.0),
    "TwoSidedTruncatedNormal": lambda a, b: dist.TruncatedNormal(a, b, low=-1.0, high=2.0),
    "Uniform": lambda a, b: dist.Uniform(a, a + b),
    "Gamma": lambda a, b: dist.Gamma(b, b + abs(a)),
    "Exp(Normal)": lambda a, b: dist.TransformedDistribution(dist.Normal(a, b), dist.transforms.ExpTransform()),
}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(_FAMILIES)), st.floats(-3, 3), st.floats(0.05, 3), st.floats(-3, 3), st.floats(0.05, 3))
def test_priors_of_one_family_compare_by_every_parameter_and_survive_save(
    family: str, a1: float, b1: float, a2: float, b2: float
) -> None:
    law, lik = get_law("chinchilla"), get_likelihood("student_t")
    p1, p2 = _FAMILIES[family](a1, b1), _FAMILIES[family](a2, b2)
    first, second = make_spec(law, lik, {"E": p1}), make_spec(law, lik, {"E": p2})
    # equal exactly when the distributions' parameters are (read as pytree leaves, not through the JSON the
    # specs compare by): distinct (a, b) can give one distribution, e.g. Gamma's rate b + |a| rounds alike
    same = all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)))
    assert (first == second) == same
    for spec in (first, second):
        back = spec_from_json(json.loads(json.dumps(spec_to_json(spec))))
        assert back == spec and hash(back) == hash(spec)


def test_a_prior_that_cannot_be_saved_is_refused_when_given() -> None:
    class Mine(dist.Normal):
        def __init__(self, centre: float) -> None:
            super().__init__(centre, 1.0)

    with pytest.raises(ValueError, match=r"prior for 'E' cannot be saved.*Mine keeps no attribute 'centre'"):
        make_spec(get_law("chinchilla"), get_likelihood("student_t"), {"E": Mine(1.0)})
