"""Starting points: the Huber point fit (bs.fit_map) and where chains begin."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import bayescale as bs
from conftest import CHINCHILLA, TINY


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


def test_bounded_law_prior_that_the_data_push_against() -> None:
    """A uniform prior whose lower edge is above the data's exponent: the point fit ignores the prior and
    drives the logit of a to about -1e4; chains must still start inside and explore, not stick there."""
    C = np.geomspace(1e18, 1e22, 20)
    data = bs.simulate("power", {"a": 0.3, "K": 1e-3}, C=C, N=C / 6e10, noise=0.01, seed=0)
    fit = bs.fit(data, law="power", priors={"a": dist.Uniform(0.32, 0.5)}, seed=0, settings=TINY)
    a = fit.draws()["a"]
    assert 0.32 < a.min() and a.mean() < 0.33 and a.std() > 1e-4
    assert fit.diagnostics.max_r_hat < 1.05 and fit.diagnostics.table["ess_bulk"].min() > 60  # was 1.07-1.17, ESS 9-24


def test_bounded_noise_priors_that_exclude_the_default_start() -> None:
    """User priors sigma on [0.1, 0.2] (the data's noise is 0.01) and nu on [1, 3] (the start is 4):
    chains start inside them, no NaN."""
    C = np.geomspace(1e18, 1e22, 20)
    data = bs.simulate("power", {"a": 0.3, "K": 1e-3}, C=C, N=C / 6e10, noise=0.01, seed=0)
    fit = bs.fit(data, law="power", likelihood=bs.likelihoods.student_t(nu=None),
                 priors={"sigma": dist.Uniform(0.1, 0.2), "nu": dist.Uniform(1.0, 3.0)}, seed=0, settings=TINY)
    sigma, nu = fit.draws()["sigma"], fit.draws()["nu"]
    assert np.all(np.isfinite(sigma)) and 0.1 < sigma.min() and sigma.mean() < 0.12
    assert np.all(np.isfinite(nu)) and 1.0 < nu.min() and nu.max() < 3.0


def test_starts_of_stacked_datasets_equal_their_own() -> None:
    """A batch places the chains of all its datasets in one call (one compiled program over the stacked
    datasets, the point fit's steps on the host): each dataset's starts equal those of the dataset alone
    with its key, and another dataset's key moves them."""
    from bayescale.model import make_spec, model_data
    from bayescale.start import initial_points

    spec = make_spec(bs.laws.get_law("chinchilla"), bs.likelihoods.student_t())
    keys = np.stack([np.asarray(jax.random.PRNGKey(seed)) for seed in range(3)])
    with jax.enable_x64(True):  # as fits run on CPU (tables in float64): the 100-step point fit agrees to rounding
        mds = []
        for seed in range(3):
            N, D = bs.chinchilla_design(20, seed=seed)
            mds.append(model_data(bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, seed=seed), spec.law, size=24))
        assert mds[0].log_y.dtype == np.float64
        stacked = initial_points(spec, jax.tree_util.tree_map(lambda *a: np.stack(a), *mds), keys, 2)
        alone = [initial_points(spec, jax.tree_util.tree_map(lambda a: a[None], md), keys[i:i + 1], 2)[0]
                 for i, md in enumerate(mds)]
        swapped = initial_points(spec, jax.tree_util.tree_map(lambda a: a[None], mds[0]), keys[1:2], 2)[0]
    assert stacked.shape == (3, 2, len(spec.latents))
    np.testing.assert_allclose(stacked, np.stack(alone), rtol=1e-7)
    assert not np.allclose(swapped, alone[0])


@dataclasses.dataclass(frozen=True)
class _HalfLine:
    """A model whose density is finite only where ``x`` (uniform in (-2, 2) unconstrained) is above ``edge``
    (its data: ``(edge, y)``, so that every edge runs one compiled program)."""

    def __call__(self, data: tuple[jax.Array, jax.Array]) -> None:
        edge, y = data
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.factor("edge", jnp.where(x[0] > edge, 0.0, -jnp.inf))
        numpyro.sample("y", dist.Normal(x.sum(), 1.0), obs=y)


def test_prior_points_are_valid_uniform_and_seeded() -> None:
    """Chains start uniformly in (-2, 2) where the potential and its gradient are finite (half of the draws
    here, a twentieth at 1.8); the same key gives the same points; nowhere finite raises, naming the model."""
    from bayescale.model import layout_of

    model = _HalfLine()
    layout = layout_of(model, (jnp.asarray(0.0), jnp.asarray(0.3)))
    for edge in (0.0, 1.8):
        data = (jnp.asarray(edge), jnp.asarray(0.3))
        z = bs.start.prior_points(model, layout, data, jax.random.PRNGKey(1), 8)
        assert z.shape == (8, 2) and (np.abs(z) < 2).all() and (z[:, 0] > edge).all()
        assert len(np.unique(z[:, 0])) == 8
        np.testing.assert_array_equal(z, bs.start.prior_points(model, layout, data, jax.random.PRNGKey(1), 8))
    with pytest.raises(RuntimeError, match="_HalfLine: its potential or gradient is not finite at 100 points"):
        bs.start.prior_points(model, layout, (jnp.asarray(2.0), jnp.asarray(0.3)), jax.random.PRNGKey(1), 8)
