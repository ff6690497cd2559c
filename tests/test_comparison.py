"""Model comparison by PSIS-LOO."""

import pytest

import bayescale as bs
from conftest import CHINCHILLA, SMALL


@pytest.mark.slow
def test_compare_ranks_true_law_first(chinchilla_data: bs.ScalingData, chinchilla_fit: bs.FitResult,
                                      kaplan_fit: bs.FitResult) -> None:
    kaplan = kaplan_fit
    table = bs.compare({"chinchilla": chinchilla_fit, "kaplan_nd": kaplan})
    assert table.index[0] == "chinchilla"
    assert table.loc["kaplan_nd", "elpd_diff"] > 2 * table.loc["kaplan_nd", "dse"]
    assert {"max_pareto_k", "bad_k"} <= set(table.columns)
    other = bs.fit(bs.simulate("chinchilla", CHINCHILLA, N=chinchilla_data.N[:50], D=chinchilla_data.D[:50]),
                   seed=0, **SMALL)
    with pytest.raises(ValueError, match="other runs"):
        bs.compare({"a": chinchilla_fit, "b": other})
