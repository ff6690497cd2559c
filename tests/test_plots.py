"""Plots draw what they claim."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402

import bayescale as bs  # noqa: E402
from conftest import unconverged  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():  # noqa: ANN201
    yield
    plt.close("all")


def bands(ax) -> list:  # noqa: ANN001
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_plot_fit_variants(chinchilla_fit: bs.FitResult) -> None:
    ax = bs.plots.plot_fit(chinchilla_fit)  # frontier against C
    assert len(bands(ax)) == 1 and ax.get_xscale() == "log" and ax.get_yscale() == "log"
    scatter = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatter) == 1 and len(scatter[0].get_offsets()) == chinchilla_fit.data.n
    ax = bs.plots.plot_fit(chinchilla_fit, x="N", curves=[1e19, 1e20, 1e21])
    assert len(bands(ax)) == 3 and len(ax.get_lines()) == 3
    ax = bs.plots.plot_fit(chinchilla_fit, x="D", curves=[1e8, 1e9])
    assert len(bands(ax)) == 2
    # the band holds the median line: the median curve lies between the band's edges
    line = ax.get_lines()[0]
    verts = bands(ax)[0].get_paths()[0].vertices
    assert verts[:, 1].min() <= np.median(line.get_ydata()) <= verts[:, 1].max()


def test_plot_isoflop_marks_optimum(chinchilla_fit: bs.FitResult) -> None:
    budgets = [1e19, 1e20, 1e21]
    ax = bs.plots.plot_isoflop(chinchilla_fit, compute=budgets)
    assert len(bands(ax)) == 3 and len(ax.containers) == 3  # one error bar per optimum
    table = bs.compute_optimal(chinchilla_fit, budgets)
    marked = [c.lines[0].get_xdata()[0] for c in ax.containers]
    np.testing.assert_allclose(marked, table[("N_opt", "median")], rtol=0.05)


def test_plot_isoflop_of_isoflop_result(tiny_isoflop: bs.IsoFlopResult) -> None:
    iso = tiny_isoflop
    ax = bs.plots.plot_isoflop(iso)
    assert len(ax.containers) == 3 and len(bands(ax)) == 3
    with pytest.raises(ValueError, match="were not fitted"):
        bs.plots.plot_isoflop(iso, compute=[1e23])


def test_allocation_residuals_pair_trace(chinchilla_fit: bs.FitResult) -> None:
    axes = bs.plots.plot_allocation(chinchilla_fit, compute=np.logspace(19, 25, 20))
    assert axes.shape == (3,) and all(len(bands(a)) == 1 for a in axes)
    ax = bs.plots.plot_residuals(chinchilla_fit)
    offsets = ax.collections[0].get_offsets()
    assert len(offsets) == chinchilla_fit.data.n and abs(np.median(offsets[:, 1])) < 0.01
    assert bs.plots.plot_pair(chinchilla_fit, var_names=["alpha", "beta"]).size >= 1
    assert np.asarray(bs.plots.plot_trace(chinchilla_fit)).shape[0] == len(chinchilla_fit.spec.latents)


def test_plot_forest_marks_unconverged(chinchilla_fit: bs.FitResult) -> None:
    batch = bs.BatchResult({"good": chinchilla_fit, "bad": unconverged(chinchilla_fit)},
                           {"broken": "invalid data"}, ["good", "bad", "broken"])
    axes = bs.plots.plot_forest(batch, params=("alpha", "a"))
    assert len(axes) == 2
    colors = {tuple(c.lines[0].get_color()) if not isinstance(c.lines[0].get_color(), str)
              else c.lines[0].get_color(): len(c.lines[0].get_xdata()) for c in axes[0].containers}
    assert colors == {"C0": 1, "C3": 1}
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["good", "bad"]
