"""Extrapolation check: held-out largest runs against predictive intervals."""

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bayescale as bs  # noqa: E402
from conftest import SMALL  # noqa: E402


@pytest.mark.slow
def test_correct_law_covers_held_out_runs(chinchilla_fit: bs.FitResult) -> None:
    check = bs.validate(chinchilla_fit, holdout="largest compute", fraction=0.2)
    n_held = int(round(0.2 * chinchilla_fit.data.n))
    assert len(check.table) == n_held
    assert check.table["C"].min() >= np.sort(chinchilla_fit.data.C)[-n_held]
    assert check.fit.data.n == chinchilla_fit.data.n - n_held
    assert 0.75 <= check.coverage <= 1.0
    assert len(check.plot().containers) == 2


def test_a_break_in_trend_is_caught(chinchilla_data: bs.ScalingData) -> None:
    """The largest runs 8% worse than the law predicts (a regime change) fall outside the intervals."""
    big = chinchilla_data.N >= np.quantile(chinchilla_data.N, 0.8)
    broken = bs.ScalingData.from_arrays(loss=np.where(big, 1.08, 1.0) * chinchilla_data.loss,
                                        N=chinchilla_data.N, D=chinchilla_data.D)
    check = bs.validate(broken, holdout="largest params", **SMALL)
    assert check.coverage < 0.5 and check.table["log_error"].median() > 0.04


def test_bad_holdouts(chinchilla_data: bs.ScalingData) -> None:
    with pytest.raises(ValueError, match="holdout must be one of"):
        bs.validate(chinchilla_data, holdout="random")
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        bs.validate(chinchilla_data, fraction=1.5)
    with pytest.raises(ValueError, match="holdout mask must be booleans"):
        bs.validate(chinchilla_data, holdout=np.ones(3, dtype=bool))


def test_scores_against_exact_values() -> None:
    draws = np.random.default_rng(0).standard_normal((200_000, 2))
    s = bs.validation.scores(draws, np.array([0.0, 2.0]))
    assert s["n"] == 2 and s["cover50"] == 0.5 and s["cover90"] == 0.5
    z90 = 1.6449
    expected_interval = 2 * z90 + 20 * (2.0 - z90) / 2  # width at both points, one miss of 2 - 1.645
    assert s["interval_score"] == pytest.approx(expected_interval, rel=0.01)
    expected_lpd = np.mean([-0.5 * np.log(2 * np.pi), -0.5 * np.log(2 * np.pi) - 2.0])
    assert s["lpd"] == pytest.approx(expected_lpd, abs=0.03)


@pytest.mark.slow
def test_backtest_says_when_bands_under_cover(chinchilla_data: bs.ScalingData, chinchilla_fit: bs.FitResult) -> None:
    held = bs.backtest(chinchilla_fit, cuts=(0.6,))  # 120 runs: the same shape bucket as both cuts below
    assert not held.under_covers and "they held" in held.message
    assert list(held.table.index) == [0.6] and held.table["train"].tolist() == [120]
    big = chinchilla_data.C >= np.quantile(chinchilla_data.C, 0.7)
    broken = bs.ScalingData.from_arrays(loss=np.where(big, 1.06, 1.0) * chinchilla_data.loss,
                                        N=chinchilla_data.N, D=chinchilla_data.D)
    fit = bs.fit(broken, seed=0, **SMALL)
    check = bs.backtest(fit, cuts=(0.5, 0.6))
    assert check.under_covers and "UNDER-COVER" in check.message and "structural_error" in check.message
