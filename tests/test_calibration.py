"""Fast simulation-based calibration: honest intervals pass, a shrunk posterior fails."""

import dataclasses

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.stats  # noqa: E402

import bayescale as bs  # noqa: E402
from bayescale import calibration  # noqa: E402
from conftest import SMALL, TINY  # noqa: E402

NUM = 20


@pytest.fixture(scope="module")
def simulated() -> tuple:
    truths = calibration.draw_truths("chinchilla", NUM, seed=0)
    datasets = calibration.simulate_datasets("chinchilla", truths, "student_t", runs_per_dataset=40, seed=0)
    batch = bs.fit_batch(datasets, seed=0, settings=TINY)
    return truths, batch


def shrink(fit: bs.FitResult, factor: float) -> bs.FitResult:
    """The posterior squeezed around its median: intervals `factor` times as wide (overconfident)."""
    idata = fit.idata.copy()
    for name in fit.spec.latents:
        x = idata.posterior[name]
        idata.posterior[name] = x.median() + factor * (x - x.median())
    return dataclasses.replace(fit, idata=idata)


@pytest.mark.slow
def test_intervals_cover_at_nominal_rate(simulated: tuple) -> None:
    truths, batch = simulated
    cal = calibration.rank_statistics(batch, truths, compute=1e24)
    assert len(cal.ranks) == NUM and list(cal.ranks.columns)[-2:] == ["N_opt", "D_opt"]
    assert cal.problems(level=0.9) == []
    coverage = cal.coverage()
    # pooled over quantities the coverage is close to nominal at every level
    np.testing.assert_allclose(coverage.mean(), [0.5, 0.9, 0.95], atol=0.1)
    assert cal.plot_ranks().size >= len(cal.ranks.columns)


@pytest.mark.slow
def test_overconfident_posterior_is_caught(simulated: tuple) -> None:
    truths, batch = simulated
    squeezed = {name: shrink(fit, 0.3) for name, fit in batch.results.items()}
    cal = calibration.rank_statistics(squeezed, truths, compute=1e24)
    found = cal.problems(level=0.9)
    assert len(found) >= 4 and any("intervals cover" in p for p in found)
    assert cal.coverage()["0.9"].mean() < 0.6


def test_truth_ranges_documented_for_every_builtin_law() -> None:
    assert set(calibration.RANGES) == set(bs.laws.list_laws())
    for law in bs.laws.list_laws():
        truths = calibration.draw_truths(law, 5, seed=1)
        assert set(bs.laws.get_law(law).params) | {"sigma"} == set(truths.columns)
        data = calibration.simulate_datasets(law, truths, "normal", runs_per_dataset=10)
        assert all(np.all(np.isfinite(d.loss)) and np.all(d.loss > 0) for d in data.values())
    with pytest.raises(ValueError, match="no realistic range"):
        calibration.draw_truths("mine", 3)


def test_prior_truths() -> None:
    truths = calibration.draw_truths("power", 500, seed=2, source="prior")
    assert set(truths.columns) == {"a", "K", "sigma"}
    # draws follow the law's priors: a ~ Normal(0, 1), sigma ~ HalfNormal
    assert abs(truths["a"].mean()) < 0.15 and 0.85 < truths["a"].std() < 1.15 and (truths["sigma"] > 0).all()
    with pytest.raises(ValueError, match="source must be"):
        calibration.draw_truths("power", 3, source="posterior")
    # priors the fit would use replace the defaults, and are checked like fit's
    narrow = calibration.draw_truths("power", 200, seed=2, source="prior", priors={"a": dist.Uniform(0.2, 0.3)})
    assert narrow["a"].between(0.2, 0.3).all() and not narrow["a"].equals(truths["a"].iloc[:200])
    with pytest.raises(ValueError, match="unknown parameter 'b'"):
        calibration.draw_truths("power", 3, source="prior", priors={"b": dist.Normal(0, 1)})
    with pytest.raises(ValueError, match="only with source='prior'"):
        calibration.draw_truths("power", 3, priors={"a": dist.Normal(0, 1)})


def test_moe_sizes_independent_of_model_size() -> None:
    """MoE total sizes come from their own stream: dense runs are not just the small ones."""
    truths = calibration.draw_truths("moe", 20, seed=3)
    data = calibration.simulate_datasets("moe", truths, "normal", runs_per_dataset=60, seed=3)
    log_n = np.concatenate([np.log(d.N) for d in data.values()])
    dense = np.concatenate([d.N_total == d.N for d in data.values()])
    assert 0.4 < dense.mean() < 0.6 and abs(np.corrcoef(log_n, dense)[0, 1]) < 0.1


def exact_power_posterior(
    data: bs.ScalingData, draws: int, rng: np.random.Generator, nu: float | None = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance-sampled posterior of the power law, written independently in SciPy.

    Noise on log Y: Student-t with ``nu`` degrees of freedom, or Gaussian for ``nu=None``.

    Priors as documented: a ~ Normal(0, 1), log K ~ Normal(0, 10), sigma ~ HalfNormal(0.5).
    Proposal: a multivariate t around the mode, 1.5 times the Laplace scale. Returns draws of
    (a, log K, sigma) and their normalised weights.
    """
    x, y = np.log(data.C), np.log(data.loss)
    xc = x.mean()
    noise = scipy.stats.norm() if nu is None else scipy.stats.t(nu)

    def log_post(t: np.ndarray) -> np.ndarray:  # t = (a, log Y at the centre, log sigma)
        a, u, log_s = t[..., 0], t[..., 1], t[..., 2]
        log_k = u - a * xc
        resid = y - (log_k[..., None] + a[..., None] * x)
        return (scipy.stats.norm.logpdf(a) + scipy.stats.norm.logpdf(log_k, 0, 10)
                + scipy.stats.halfnorm.logpdf(np.exp(log_s), scale=0.5) + log_s
                + (noise.logpdf(resid / np.exp(log_s)[..., None]) - log_s[..., None]).sum(-1))

    slope, intercept = np.polyfit(x - xc, y, 1)
    start = [slope, intercept, np.log(np.std(y - intercept - slope * (x - xc)))]
    mode = scipy.optimize.minimize(lambda t: -log_post(t), start, method="BFGS").x
    h, eye = 1e-4, np.eye(3) * 1e-4
    hess = np.array([[-(log_post(mode + eye[i] + eye[j]) - log_post(mode + eye[i] - eye[j])
                        - log_post(mode - eye[i] + eye[j]) + log_post(mode - eye[i] - eye[j])) / (4 * h * h)
                      for j in range(3)] for i in range(3)])
    proposal = scipy.stats.multivariate_t(mode, 2.25 * np.linalg.inv(hess), df=5, seed=rng)
    t = proposal.rvs(draws)
    log_w = log_post(t) - proposal.logpdf(t)
    w = np.exp(log_w - log_w.max())
    return np.stack([t[:, 0], t[:, 1] - t[:, 0] * xc, np.exp(t[:, 2])], -1), w / w.sum()


@pytest.mark.slow
def test_posterior_equals_exact_importance_sampling() -> None:
    """NUTS through bayescale's model matches an independent exact posterior, dataset by dataset.

    Truths from the priors, Student-t noise: the rank of each truth among the NUTS draws
    equals its rank under the importance-sampled posterior up to Monte Carlo error, and so
    do posterior means and standard deviations. A wrong Jacobian, prior or likelihood would
    shift them (SBC on a few datasets could not see it).
    """
    truths = calibration.draw_truths("power", 10, seed=4, source="prior")
    datasets = calibration.simulate_datasets("power", truths, "student_t", runs_per_dataset=40, seed=4)
    batch = bs.fit_batch(datasets, law="power", seed=4, **SMALL)
    rng = np.random.default_rng(0)
    for name, data in datasets.items():
        ref, w = exact_power_posterior(data, 20_000, rng)
        assert 1 / np.sum(w**2) > 5_000  # the proposal covers the posterior
        draws = batch.results[name].draws()
        ours = np.stack([draws["a"], np.log(draws["K"]), draws["sigma"]], -1)
        mean = w @ ref
        sd = np.sqrt(w @ (ref - mean) ** 2)
        assert np.all(np.abs(ours.mean(0) - mean) < 0.2 * sd), (name, ours.mean(0), mean, sd)
        np.testing.assert_allclose(ours.std(0), sd, rtol=0.15)
        truth = [truths.loc[name, "a"], np.log(truths.loc[name, "K"]), truths.loc[name, "sigma"]]
        np.testing.assert_allclose(np.mean(ours < truth, 0), w @ (ref < truth), atol=0.08)
