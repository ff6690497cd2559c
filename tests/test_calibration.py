"""Fast simulation-based calibration: honest intervals pass, a shrunk posterior fails."""

import dataclasses

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402

import bayescale as bs  # noqa: E402
from bayescale import calibration  # noqa: E402

NUM = 20


@pytest.fixture(scope="module")
def simulated() -> tuple:
    truths = calibration.draw_truths("chinchilla", NUM, seed=0)
    datasets = calibration.simulate_datasets("chinchilla", truths, "student_t", runs_per_dataset=40, seed=0)
    batch = bs.fit_batch(datasets, num_warmup=300, num_samples=300, seed=0, progress=False)
    return truths, batch


def shrink(fit: bs.FitResult, factor: float) -> bs.FitResult:
    """The posterior squeezed around its median: intervals `factor` times as wide (overconfident)."""
    idata = fit.idata.copy()
    for name in fit.spec.latents:
        x = idata.posterior[name]
        idata.posterior[name] = x.median() + factor * (x - x.median())
    return dataclasses.replace(fit, idata=idata)


def test_intervals_cover_at_nominal_rate(simulated: tuple) -> None:
    truths, batch = simulated
    cal = calibration.rank_statistics(batch, truths, compute=1e24)
    assert len(cal.ranks) == NUM and list(cal.ranks.columns)[-2:] == ["N_opt", "D_opt"]
    assert cal.problems(level=0.9) == []
    coverage = cal.coverage()
    # pooled over quantities the coverage is close to nominal at every level
    np.testing.assert_allclose(coverage.mean(), [0.5, 0.9, 0.95], atol=0.1)
    assert cal.plot_ranks().size >= len(cal.ranks.columns)


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
