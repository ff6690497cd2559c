"""Plots draw what they claim; the report writes parseable, self-contained files that state failures."""

import dataclasses
import json
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402

import bayescale as bs  # noqa: E402
from bayescale.reporting import report  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():  # noqa: ANN201
    yield
    plt.close("all")


def unconverged(fit: bs.FitResult) -> bs.FitResult:
    """The same fit with chain 0 of alpha shifted: R-hat far above 1.01."""
    idata = fit.idata.copy()
    idata.posterior["alpha"][0] = idata.posterior["alpha"][0] + 0.2
    return dataclasses.replace(fit, idata=idata)


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


def test_plot_isoflop_of_isoflop_result() -> None:
    iso = bs.fit_isoflop(bs.datasets.load("palm2"), num_warmup=300, num_samples=300)
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


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.status = ""
        self._in_status = False

    def handle_starttag(self, tag, attrs):  # noqa: ANN001, ANN201
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self._in_status = attrs.get("id") == "status"

    def handle_endtag(self, tag):  # noqa: ANN001, ANN201
        self._in_status = False

    def handle_data(self, data):  # noqa: ANN001, ANN201
        if self._in_status:
            self.status += data


def test_report_files(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    files = report(chinchilla_fit, tmp_path / "rep", compute=[1e21, 1e23])
    page = _Collect()
    page.feed(files["html"].read_text())
    assert len(page.images) == 5 and all(src.startswith("data:image/png;base64,") for src in page.images)
    text = files["html"].read_text()
    assert 'src="http' not in text and 'href="http' not in text and "@import" not in text  # self-contained
    assert page.status == "Diagnostics OK"
    meta = json.loads(files["json"].read_text())
    assert {"title", "data", "law", "likelihood", "sampler", "diagnostics", "parameters", "plan", "exponents",
            "versions"} <= set(meta)
    assert [row["compute"] for row in meta["plan"]] == [1e21, 1e23]
    assert meta["diagnostics"]["ok"] is True and meta["data"]["n_runs"] == chinchilla_fit.data.n
    plan = bs.compute_optimal(chinchilla_fit, [1e21])
    assert meta["plan"][0]["N_opt_median"] == pytest.approx(plan[("N_opt", "median")].iloc[0])
    md = files["markdown"].read_text()
    for name in ("fit", "isoflop", "allocation", "residuals", "trace"):
        assert f"(figures/{name}.png)" in md and (tmp_path / "rep" / "figures" / f"{name}.png").exists()


def test_report_states_failed_diagnostics(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    files = report(unconverged(chinchilla_fit), tmp_path, compute=[1e22])
    page = _Collect()
    page.feed(files["html"].read_text())
    assert page.status.startswith("DIAGNOSTICS FAILED") and "alpha" in page.status
    assert "DIAGNOSTICS FAILED" in files["markdown"].read_text()
    meta = json.loads(files["json"].read_text())
    assert meta["diagnostics"]["ok"] is False and meta["diagnostics"]["max_r_hat"] > 1.01
