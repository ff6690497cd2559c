"""The loss-compute envelope of loss curves: each draw's optimum against numerical minimisation, the truth
inside its interval, and the budgets and fits it refuses."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.optimize

import bayescale as bs
from bayescale import schedules
from bayescale.curves import curve_inputs, lr_annealing
from bayescale.envelope import curve_envelope, envelope_draws
from conftest import SIZE_SLOPES, SIZE_TRUTH


@pytest.mark.slow
def test_the_envelope_reads_the_optimum_of_every_draw(sizes_fit: bs.CurveResult) -> None:
    """Each draw's N_opt from the 41-size grid (refined by a parabola) equals a bounded numerical minimisation
    of that draw's final loss over log N within 2%, and its loss within 1e-4; the true N_opt lies inside the
    90% interval; budgets too small for any run and fits of one size are refused."""
    result = sizes_fit
    budget, batch = 3e18, 2**18
    draws = envelope_draws(result, [budget], tokens_per_step=batch)
    refs = {n: result.draws(n) for n in SIZE_TRUTH}
    slopes = {n: result.draws(f"{n}_slope") for n in SIZE_TRUTH}

    def final_loss(log_n: float, p: dict[str, float], b: dict[str, float], ref: float) -> float:
        total = int(np.rint(budget / (6 * np.exp(log_n) * batch)))
        x = curve_inputs({0: schedules.cosine(total)}, pd.DataFrame({"run": [0], "step": [total - 1]}))
        q = {n: p[n] * np.exp(b[n] * (log_n - np.log(ref))) for n in p}
        return float(lr_annealing().mean(q, x)[0])

    bounds = (np.log(25e6), np.log(400e6))
    for i in (0, 500, 1999):
        p, b = {n: v[i] for n, v in refs.items()}, {n: v[i] for n, v in slopes.items()}
        best = scipy.optimize.minimize_scalar(final_loss, bounds=bounds, args=(p, b, result.size_ref),
                                              method="bounded", options={"xatol": 1e-4})
        assert draws["N_opt"][i, 0] == pytest.approx(np.exp(best.x), rel=0.02)
        assert draws["loss_opt"][i, 0] == pytest.approx(best.fun, abs=1e-4)
    true = scipy.optimize.minimize_scalar(final_loss, bounds=bounds, args=(SIZE_TRUTH, SIZE_SLOPES, result.size_ref),
                                          method="bounded")
    table = curve_envelope(result, [budget], tokens_per_step=batch, level=0.9)
    assert table.loc[budget, ("N_opt", "5%")] <= np.exp(true.x) <= table.loc[budget, ("N_opt", "95%")], table
    assert table.loc[budget, ("edge_share", "")] < 0.05
    wider = envelope_draws(result, [budget], tokens_per_step=batch, sizes=np.geomspace(25e6, 4e9, 41))
    assert all(np.isfinite(v).all() for v in wider.values())  # sizes too large to pass warmup are no runs
    np.testing.assert_allclose(np.median(wider["N_opt"]), np.median(draws["N_opt"]), rtol=0.03)
    with pytest.raises(ValueError, match="too small for any size"):
        envelope_draws(result, [1e14], tokens_per_step=batch)
    with pytest.raises(ValueError, match="across model sizes"):
        envelope_draws(dataclasses.replace(result, size_ref=None), [budget], tokens_per_step=batch)
