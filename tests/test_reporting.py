"""The report writes parseable, self-contained files that state failures."""

import json
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import bayescale as bs  # noqa: E402
from bayescale.reporting import report  # noqa: E402
from conftest import unconverged  # noqa: E402


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


def test_report_carries_the_extrapolation_check(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    check = bs.Backtest(table=pd.DataFrame({"train": [120], "n": [80], "cover50": [0.2], "cover90": [0.5],
                                            "width90": [0.01], "interval_score": [0.3], "lpd": [1.0],
                                            "max_rel_error": [0.05]}, index=pd.Index([0.6], name="cut")),
                        structural=False)
    files = report(chinchilla_fit, tmp_path, compute=[1e22], backtest=check)
    meta = json.loads(files["json"].read_text())
    assert meta["extrapolation"]["backtest_under_covers"] is True and meta["extrapolation"]["structural_error"] is False
    assert "UNDER-COVER" in meta["extrapolation"]["backtest_message"]
    for name in ("html", "markdown"):
        text = files[name].read_text()
        assert "UNDER-COVER" in text and "bands assume the law holds beyond the data" in text


def test_report_carries_the_design(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    plan = bs.design(chinchilla_fit, compute=1e24, budget=1e21, k=2, forecast="importance")
    files = bs.report(chinchilla_fit, tmp_path, compute=[1e22], design=plan)
    page = files["html"].read_text()
    assert "Next runs for N_opt at 1e+24 FLOPs" in page and 'id="fig-design"' in page
    assert "Sets of runs compared" in page and "by importance" in page
    saved = json.loads(files["json"].read_text())["design"]
    assert len(saved["selected"]) == len(plan.selected) and saved["width"] == pytest.approx(plan.width)
    assert saved["forecast"]["width"] == pytest.approx(plan.forecast.width) and saved["budget"] == 1e21


def test_report_of_a_stack_names_laws_weights_and_record(chinchilla_fit: bs.FitResult, kaplan_fit: bs.FitResult,
                                                         tmp_path) -> None:  # noqa: ANN001
    """A stacked result's report states each law with its weight, the leave-future-out record per cut,
    and the mixture's planning table."""
    record = pd.DataFrame({"chinchilla": [2.0, 2.2], "kaplan_nd": [1.0, 1.5]},
                          index=pd.MultiIndex.from_tuples([(0.5, 150), (0.8, 190)], names=["cut", "run"]))
    stacked = bs.stacking.mix({"chinchilla": chinchilla_fit, "kaplan_nd": kaplan_fit}, np.array([0.75, 0.25]),
                              seed=0, method="future", record=record)
    files = report(stacked, tmp_path, compute=[1e22])
    meta = json.loads(files["json"].read_text())
    members = {m["name"]: m["weight"] for m in meta["law"]["members"]}
    assert members == {"chinchilla": 0.75, "kaplan_nd": 0.25} and meta["law"]["method"] == "future"
    assert meta["plan"][0]["N_opt_median"] == pytest.approx(
        float(bs.compute_optimal(stacked, [1e22])[("N_opt", "median")].iloc[0]))
    for name in ("html", "markdown"):
        text = files[name].read_text()
        assert "weights from leave-future-out densities" in text and "Leave-future-out record" in text
        assert "kaplan" in text and "0.75" in text
