"""Stacking laws: a mixture whose every draw is one member's, weighted by leave-future-out or PSIS-LOO stacking."""

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.posterior import MISFIT
from conftest import TINY


def test_every_draw_is_its_members(tiny_stacked: bs.StackedResult) -> None:
    assert sum(tiny_stacked.weights.values()) == pytest.approx(1.0)
    assert set(tiny_stacked.names) == {"chinchilla", "kaplan_nd"}
    owner = tiny_stacked.assignment
    points = {"N": [1e9, 1e10], "D": [2e10, 2e11]}
    mixed = tiny_stacked.predict_draws(**points, seed=2)
    for i, (name, member) in enumerate(tiny_stacked.members.items()):
        own = member.predict_draws(**points, seed=2)
        np.testing.assert_array_equal(mixed[owner == i], own[owner == i])
    shares = np.bincount(owner, minlength=2) / owner.size
    np.testing.assert_allclose(shares, [tiny_stacked.weights[n] for n in tiny_stacked.names], atol=0.05)
    summary = tiny_stacked.summary()
    assert set(summary["member"]) == {"chinchilla", "kaplan_nd"} and "weight" in summary.columns
    with pytest.raises(TypeError, match="mixes laws"):
        tiny_stacked.law


def test_allocation_is_the_mixture_of_members(tiny_stacked: bs.StackedResult) -> None:
    table = bs.compute_optimal(tiny_stacked, [1e22])
    per_member = [bs.optimal_allocation(m.law, m.draws(), [1e22])["N_opt"][:, 0] for m in tiny_stacked.members.values()]
    mixed = np.choose(tiny_stacked.assignment, per_member)
    assert table.loc[1e22, ("N_opt", "median")] == pytest.approx(np.median(mixed))


def test_bad_stacks(chinchilla_fit: bs.FitResult, tiny_batch: bs.BatchResult) -> None:
    with pytest.raises(ValueError, match="at least two"):
        bs.stack({"only": chinchilla_fit})
    with pytest.raises(ValueError, match="other runs"):
        bs.stack({"a": chinchilla_fit, "b": tiny_batch["g0"]})
    with pytest.raises(ValueError, match="method must be one of"):
        bs.stack({"a": chinchilla_fit, "b": chinchilla_fit}, method="waic")
    with pytest.raises(ValueError, match="different covariates"):
        bs.stack({"a": tiny_batch["g0"], "b": _quiet_fit(tiny_batch["g0"].data, "kaplan_n")})


def _quiet_fit(data: bs.ScalingData, law: str, **options: object) -> bs.FitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        return bs.fit(data, law=law, settings=TINY, **options)


def test_method_is_saved(tiny_stacked: bs.StackedResult, tmp_path) -> None:  # noqa: ANN001
    tiny_stacked.save(tmp_path / "s.nc")
    loaded = bs.load(tmp_path / "s.nc")
    assert tiny_stacked.method == loaded.method == "loo"
    assert loaded.weights == pytest.approx(tiny_stacked.weights)


def bent_runs(seed: int) -> bs.ScalingData:
    """60 runs at 1e17-1e21 FLOPs from a broken power law whose exponent steepens from 0.1 to 0.3 at 1e19."""
    rng = np.random.default_rng(seed)
    C = np.exp(rng.uniform(np.log(1e17), np.log(1e21), 60))
    truth = {"E": 1.8, "alpha": 0.1, "delta": 0.2, "X_b": 1e19, "A": 3.0 * 1e17**0.1}
    return bs.simulate("broken_power", truth, C=C, noise=0.005, seed=seed)


@pytest.mark.slow
def test_future_weights_go_to_the_law_that_extrapolates() -> None:
    """Runs that bend: leave-future-out stacking gives the bending law most of the weight, because the
    straight power law, refitted below each cut, misses the runs above it."""
    data = bent_runs(3)
    fits = {law: _quiet_fit(data, law)
            for law in ("offset_power", "broken_power")}
    refits = {law: bs.extrapolation.rolling_record({0: fit}, bs.extrapolation.CUTS)[0] for law, fit in fits.items()}
    stacked = bs.stacking.stack_by_record(fits, refits)  # what bs.stack(fits) runs after these refits
    assert stacked.method == "future"
    assert stacked.weights["broken_power"] > 0.8
    record = {law: bs.stacking.future_elpd(fit, record=refits[law]) for law, fit in fits.items()}
    assert record["broken_power"].mean() > record["offset_power"].mean()


def test_future_record_is_the_backtests() -> None:
    """The leave-future-out densities stacking uses are the rolling-origin backtest's, cut by cut."""
    fit = _quiet_fit(bent_runs(4), "offset_power")
    record = bs.stacking.future_elpd(fit, cuts=(0.5, 0.75))
    table = bs.backtest(fit, cuts=(0.5, 0.75)).table
    np.testing.assert_allclose(record.groupby(level="cut").mean().to_numpy(), table["lpd"].to_numpy())
    assert list(record.groupby(level="cut").size()) == list(table["n"])


def test_structural_members_share_the_refits_that_score_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """structural=True gives each law the structural error it would get alone (the same refits, reused), and
    scores it with that error: its leave-future-out densities differ from the plain law's. A fit's refits are
    kept: reading them again (its structural error, its backtest) refits nothing until its runs change."""
    data = bent_runs(5)
    fits = {law: _quiet_fit(data, law) for law in ("offset_power", "m4")}
    stacked = bs.stack(fits, structural=True, cuts=(0.5, 0.75))
    runs, real = [], bs.extrapolation._run_record
    counting = lambda fits, cuts: runs.append(len(fits)) or real(fits, cuts)  # noqa: E731
    monkeypatch.setattr(bs.extrapolation, "_run_record", counting)
    bs.extrapolation.rolling_record({0: fits["m4"]}, (0.5, 0.75))
    bs.backtest(fits["m4"], cuts=(0.5, 0.75))
    assert runs == []
    edited = dataclasses.replace(fits["m4"], data=dataclasses.replace(data, loss=data.loss * 1.001))
    with monkeypatch.context() as patch:  # edited runs are refitted (not run here: only that they would be)
        patch.setattr(bs.extrapolation, "_run_record", lambda fits, cuts: runs.append(len(fits)) or ({0: []}, {0}))
        bs.extrapolation.rolling_record({0: edited}, (0.5, 0.75))
    assert runs == [1]
    bs.extrapolation._KEPT_RECORDS.clear()
    refits = {law: bs.extrapolation.rolling_record({0: fit}, (0.5, 0.75))[0] for law, fit in fits.items()}
    assert runs == [1, 1, 1]
    for law, fit in fits.items():
        alone = bs.extrapolation.structural_error(fit, record=refits[law])  # refitted apart from the stack's
        np.testing.assert_array_equal(stacked.members[law].idata.posterior[MISFIT].values,
                                      alone.idata.posterior[MISFIT].values)
    plain = bs.stacking.future_elpd(fits["offset_power"], record=refits["offset_power"])
    assert not np.allclose(stacked.record["offset_power"].to_numpy(), plain.loc[stacked.record.index].to_numpy())
    with pytest.raises(ValueError, match="method='future'"):
        bs.stack(fits, method="loo", structural=True)


def test_stack_batch(small_groups: dict) -> None:
    """Every group stacked with its own weights; a group one law failed on is listed with the reason."""
    groups = {**small_groups, "bad": small_groups["g0"].subset(np.arange(10) < 3)}  # 3 runs: too few to fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        batches = {law: bs.fit_batch(groups, law=law, settings=TINY) for law in ("chinchilla", "kaplan_nd")}
    for method in ("future", "loo"):
        stacked = bs.stack_batch(batches, method=method)
        assert list(stacked.weights.index) == ["g0", "g1", "g2"]
        np.testing.assert_allclose(stacked.weights.sum(axis=1), 1.0)
        assert stacked.failures["bad"].startswith("chinchilla: invalid data")
        assert stacked["g1"].members["kaplan_nd"] is batches["kaplan_nd"]["g1"]
        assert stacked["g1"].method == method
    # a group stacked inside the batch is the group stacked alone, draw for draw (one refit record, seeded by
    # each member's own seed), with and without the structural error
    for structural in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.ConvergenceWarning)
            inside = bs.stack_batch(batches, structural=structural)["g1"]
            alone = bs.stack({law: batches[law]["g1"] for law in batches}, structural=structural)
        assert dict(inside.weights) == dict(alone.weights)
        np.testing.assert_array_equal(inside.assignment, alone.assignment)
        pd.testing.assert_frame_equal(inside.record, alone.record)
        for law in batches:
            assert (inside.members[law].misfit is None) == (not structural)
            if structural:
                np.testing.assert_array_equal(inside.members[law].misfit, alone.members[law].misfit)
        np.testing.assert_array_equal(inside.predict_draws(N=[1e11], D=[2e12]), alone.predict_draws(N=[1e11], D=[2e12]))
    table = stacked.compute_optimal([1e22])
    assert list(table.index.get_level_values("group")) == ["g0", "g1", "g2"]
    assert set(stacked.summary()["group"]) == {"g0", "g1", "g2"}
    with pytest.raises(ValueError, match="other groups"):
        bs.stack_batch({"a": batches["chinchilla"], "b": bs.fit_batch({"g0": small_groups["g0"]}, settings=TINY)})


@pytest.mark.slow
def test_weight_goes_to_the_true_law(chinchilla_fit: bs.FitResult, kaplan_fit: bs.FitResult) -> None:
    stacked = bs.stack({"chinchilla": chinchilla_fit, "kaplan_nd": kaplan_fit})
    assert stacked.weights["chinchilla"] > 0.9
    table = bs.compute_optimal(stacked, [1e23])
    alone = bs.compute_optimal(chinchilla_fit, [1e23])
    ratio = table[("N_opt", "median")] / alone[("N_opt", "median")]
    assert float(ratio.iloc[0]) == pytest.approx(1.0, rel=0.05)
    assert isinstance(table, pd.DataFrame)
