"""Stacking laws: a mixture whose every draw is one member's, weighted by PSIS-LOO stacking."""

import numpy as np
import pandas as pd
import pytest

import bayescale as bs


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


@pytest.mark.slow
def test_weight_goes_to_the_true_law(chinchilla_fit: bs.FitResult, kaplan_fit: bs.FitResult) -> None:
    stacked = bs.stack({"chinchilla": chinchilla_fit, "kaplan_nd": kaplan_fit})
    assert stacked.weights["chinchilla"] > 0.9
    table = bs.compute_optimal(stacked, [1e23])
    alone = bs.compute_optimal(chinchilla_fit, [1e23])
    ratio = table[("N_opt", "median")] / alone[("N_opt", "median")]
    assert float(ratio.iloc[0]) == pytest.approx(1.0, rel=0.05)
    assert isinstance(table, pd.DataFrame)
