"""Planning report: one fit written as HTML (self-contained), Markdown and JSON.

The HTML page embeds its figures as PNG data URIs and loads nothing from the
network; the Markdown version links PNG files written beside it; the JSON file
holds the same numbers for programs (planning table, parameter summary,
diagnostics, data source, versions). A fit whose diagnostics failed says so at
the top of every version.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib.metadata
import io
import json
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import plots
from .allocation import allocation_exponents, compute_optimal, has_allocation, plannable
from .curve_fit import CurveResult
from .envelope import curve_envelope
from .posterior import LEVEL, FitResult, Posterior
from .stacking import StackedResult
from .store import atomic_write, write_text
from .experiments import Design
from .validation import Backtest

__all__ = ["report", "curve_report", "DEFAULT_COMPUTE"]

DEFAULT_COMPUTE = (1e20, 1e21, 1e22, 1e23, 1e24, 1e25)
"""Budgets (FLOPs) of the planning table when none are given."""

_PACKAGES = ("bayescale", "jax", "jaxlib", "numpyro", "arviz", "numpy", "pandas", "matplotlib")

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
.status{padding:0.7em 1em;border-radius:4px;font-weight:600}
.ok{background:#e6f4ea;border:1px solid #34a853}.fail{background:#fde7e7;border:1px solid #d93025}
img{max-width:100%}
"""


_UNITS = {"N_opt": "parameters", "D_opt": "tokens", "N": "parameters", "D": "tokens", "N_train_optimal": "parameters",
          "C": "FLOPs", "compute": "FLOPs", "total_compute": "FLOPs"}
"""Columns (and index names) of planning tables and their units, for :func:`planner_units`."""


def human(value: Any, unit: str) -> Any:
    """A number as a planner reads it: parameters and tokens in M, B or T (``0.65B``, ``25.5B``), FLOPs as
    ``1e21`` or ``3.2e21``; anything else (and non-numbers) unchanged."""
    if not isinstance(value, (int, float, np.number)) or isinstance(value, bool) or not np.isfinite(value):
        return value
    value = float(value)
    if unit in ("parameters", "tokens"):
        for size, suffix in ((1e12, "T"), (1e8, "B"), (1e5, "M")):
            if abs(value) >= size:
                scale = 1e9 if suffix == "B" else size if suffix == "T" else 1e6
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    if unit == "FLOPs" and value > 0:
        exponent = int(np.floor(np.log10(value)))
        mantissa = round(value / 10.0**exponent, 2)
        if mantissa >= 10:
            mantissa, exponent = mantissa / 10, exponent + 1
        return f"{mantissa:g}e{exponent}"
    return value


def planner_units(table: pd.DataFrame) -> pd.DataFrame:
    """A planning table for display: N and D columns in M/B/T parameters and tokens, compute in ``1e21``
    FLOPs, other numbers at four significant digits (:func:`human`)."""
    shown = table.copy().astype(object)
    for column in shown.columns:
        unit = _UNITS.get(column[0] if isinstance(column, tuple) else column, "")
        shown[column] = [human(v, unit) if unit else (f"{v:.4g}" if isinstance(v, (float, np.floating)) else v)
                         for v in shown[column]]
    unit = _UNITS.get(str(shown.index.name), "")
    shown.index = pd.Index([human(v, unit) if unit else v for v in shown.index], name=shown.index.name)
    return shown


def mode(fit: Posterior) -> str:
    """Which bands a result gives, in words: the planning mode (structural error) or the law taken as exact."""
    try:
        members = fit.components()
    except TypeError:
        return "bands assume the model holds beyond the data"
    if all(m.misfit is not None for m in members.values()):
        return "planning mode: structural error beyond the data"
    if any(m.misfit is not None for m in members.values()):
        return "planning mode in some members only"
    return "law assumed to hold beyond the data (no structural error)"


def curve_bands(result: CurveResult) -> str:
    """Which bands a curve fit gives, in words: its structural errors with their scales, or none."""
    if result.misfit is None:
        return "none (the law assumed to hold beyond the fitted steps and on new schedules)"
    sizes = " and sizes" if result.size_ref is not None else ""
    steps = (f"random walk beyond the fitted steps{sizes}, scale {np.median(result.misfit):.3g} log-loss per sqrt"
             " e-fold (rolling-origin refits in steps)")
    if result.schedule_misfit is None:
        return steps + "; none on new schedules (one schedule fitted)"
    return (steps + f"; on a new schedule, from where it departs from the fitted ones, scale"
            f" {np.median(result.schedule_misfit):.3g} log-loss (refits without each schedule)")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _flat_columns(table: pd.DataFrame, sep: str) -> pd.DataFrame:
    """A copy with grouped columns joined into one name (``("N_opt", "median")`` -> ``"N_opt<sep>median"``)."""
    flat = table.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [sep.join(str(p) for p in c if p != "") for c in flat.columns]
    return flat


def _records(table: pd.DataFrame, index_name: str) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (NaN -> None, grouped columns joined with '_')."""
    flat = _flat_columns(table, "_").reset_index(names=index_name)
    return [{k: _jsonable(v) for k, v in row.items()} for row in flat.to_dict(orient="records")]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _figures(fit: FitResult | StackedResult, compute: Sequence[float], level: float) -> dict[str, tuple[str, plt.Figure]]:
    """Figure name -> (caption, figure)."""
    figures: dict[str, tuple[str, plt.Figure]] = {}
    ax = plots.plot_fit(fit, level=level)
    if isinstance(fit, StackedResult):  # members' own figures are in their own reports
        return {"fit": ("Runs with the stacked mixture's median and credible band of the lowest loss per budget.",
                        ax.figure)}
    figures["fit"] = ("Runs with the posterior median and credible band.", ax.figure)
    if has_allocation(fit.law):
        ax = plots.plot_isoflop(fit, level=level)
        figures["isoflop"] = ("Iso-FLOP curves of the fitted law; diamonds: optimum with interval.", ax.figure)
        budgets = np.logspace(np.log10(min(compute)) - 1, np.log10(max(compute)) + 0.5, 50)
        axes = plots.plot_allocation(fit, budgets, level=level)
        figures["allocation"] = ("Compute-optimal allocation extrapolated from the data's compute (grey).",
                                 axes[0].figure)
    ax = plots.plot_residuals(fit)
    figures["residuals"] = ("Log residuals against fitted loss.", ax.figure)
    axes = plots.plot_trace(fit)
    figures["trace"] = ("Rank plots per chain (flat bars: chains agree).", np.ravel(axes)[0].figure)
    return figures


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _law(fit: FitResult | StackedResult) -> dict[str, Any]:
    """The law (or for a stacked result the laws and their weights) as the report's JSON states it."""
    if not isinstance(fit, StackedResult):
        return {"name": fit.law.name, "formula": fit.law.formula, "params": list(fit.law.params)}
    members = [{"name": n, "law": m.law.name, "formula": m.law.formula, "weight": fit.weights[n],
                "structural_error": m.misfit is not None} for n, m in fit.members.items()]
    return {"name": "stacked", "method": fit.method, "members": members,
            "formula": "; ".join(f"{m['weight']:.2f} x {m['name']} ({m['formula']})" for m in members)}


def _stacking_tables(fit: StackedResult) -> list[tuple[str, pd.DataFrame]]:
    weights = pd.DataFrame([{"law": m.law.name, "formula": m.law.formula, "weight": fit.weights[n],
                             "structural error": m.misfit is not None} for n, m in fit.members.items()],
                           index=pd.Index(fit.names, name="member"))
    source = "leave-future-out densities (rolling origin)" if fit.method == "future" else "PSIS leave-one-out densities"
    tables = [(f"Stacked laws: weights from {source}", weights)]
    if fit.record is not None:
        by_cut = fit.record.groupby(level="cut").mean()
        by_cut.insert(0, "held-out runs", fit.record.groupby(level="cut").size())
        tables.append(("Leave-future-out record: mean log predictive density of held-out log-loss per cut", by_cut))
    return tables


def report(
    fit: FitResult | StackedResult,
    path: str | os.PathLike[str],
    compute: Sequence[float] | None = None,
    level: float = LEVEL,
    title: str | None = None,
    backtest: Backtest | None = None,
    design: Design | None = None,
) -> dict[str, Path]:
    """Write the planning report of ``fit`` into the folder ``path``.

    Args:
        fit: a fitted law, or laws stacked by :func:`bayescale.stack` (then the weights,
            their leave-future-out record and the mixture's planning table are reported).
        path: output folder (created if needed).
        compute: budgets in FLOPs for the planning table (default 1e20 to 1e25);
            used only for laws in N and D.
        level: credible level of every interval.
        title: page title (default names the law and the data source).
        backtest: a rolling-origin check of the fit (:func:`bayescale.backtest`): its
            table and its plain verdict on the bands go into the report.
        design: next runs chosen by :func:`bayescale.design`: the chosen runs, the
            best candidates and a figure of all candidates go into the report.

    Returns:
        Paths of the files written: ``html``, ``markdown``, ``json`` (and the
        Markdown's PNG figures under ``figures/``).
    """
    budgets = [float(c) for c in (compute if compute is not None else DEFAULT_COMPUTE)]
    out = Path(path)
    diag = fit.diagnostics
    stacked = isinstance(fit, StackedResult)
    law = _law(fit)
    spec = next(iter(fit.members.values())).spec if stacked else fit.spec
    name = "stacked " + ", ".join(fit.names) if stacked else law["name"]
    title = title or f"bayescale report: {name} fitted to {fit.data.source}"
    summary = fit.summary(level).set_index("parameter") if stacked else fit.summary(level)
    nd = plannable(fit)
    plan = compute_optimal(fit, budgets, level=level) if nd else None
    exponents = allocation_exponents(fit, level) if nd and not stacked else None
    status = "Diagnostics OK" if diag.ok else "DIAGNOSTICS FAILED: " + "; ".join(diag.problems)
    meta = {
        "title": title,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "level": level,
        "data": {"source": fit.data.source, "n_runs": fit.data.n, "target": fit.data.target,
                 "covariates": list(fit.data.available())},
        "law": law,
        "likelihood": {"name": spec.likelihood.name, "nu": spec.likelihood.nu},
        "sampler": fit.settings.to_dict(),
        "diagnostics": {
            "ok": diag.ok,
            "problems": list(diag.problems),
            "max_r_hat": _jsonable(diag.max_r_hat),
            "min_ess_bulk": _jsonable(diag.min_ess_bulk),
            "divergences": diag.divergences,
            "mean_leapfrog_steps": diag.mean_steps,
        },
        "parameters": _records(summary, "parameter"),
        "plan": _records(plan, "compute") if plan is not None else None,
        "exponents": _records(exponents, "exponent") if exponents is not None else None,
        "extrapolation": {
            "mode": mode(fit),
            "structural_error": not stacked and fit.misfit is not None,
            "misfit_scale_median": (_jsonable(float(np.median(fit.misfit)))
                                    if not stacked and fit.misfit is not None else None),
            "backtest": _records(backtest.table, "cut") if backtest is not None else None,
            "backtest_message": backtest.message if backtest is not None else None,
            "backtest_under_covers": backtest.under_covers if backtest is not None else None,
        },
        "design": None if design is None else {
            "target": design.target, "level": design.level, "width": design.width, "budget": design.budget,
            "rule": design.rule, "forecast": {k: _jsonable(v) for k, v in design.forecast._asdict().items()},
            "grid_forecast": None if design.grid is None else {
                k: _jsonable(v) for k, v in design.grid[1]._asdict().items()},
            "selected": _records(design.selected, "order"),
        },
        "versions": _versions(),
    }
    figures = {name: (f"{caption} Bands: {mode(fit)}.", figure)
               for name, (caption, figure) in _figures(fit, budgets, level).items()}
    if design is not None:
        figures["design"] = (f"Candidate runs coloured by how much each narrows the interval of {design.target};"
                             " circled: the runs chosen, in order.", plots.plot_design(design).figure)
    images = {name: (caption, _png(figure)) for name, (caption, figure) in figures.items()}
    tables = [*(_stacking_tables(fit) if stacked else []), ("Parameters", summary)]
    if plan is not None:
        tables.append((f"Compute-optimal allocation ({mode(fit)})", planner_units(plan)))
    if exponents is not None:
        tables.append(("Allocation exponents (N_opt ∝ C^a, D_opt ∝ C^b)", exponents))
    if backtest is not None:
        tables.append(("Extrapolation check (rolling origin): " + backtest.message, backtest.table))
    if design is not None:
        heading = f"Next runs for {design.target} (current {design.level:.0%} width {design.width:.3g}, log scale)"
        f = design.forecast
        expected = (f"expected width after them {f.width:.3g} ± {f.se:.2g}, {design.level:.0%} of outcomes in"
                    f" [{f.low:.3g}, {f.high:.3g}], by {f.method}")
        tables += [(f"{heading}: {expected}", design.selected),
                   ("Sets of runs compared (expected width by importance sampling)", design.sets),
                   ("Best candidates per FLOP", design.candidates.head(10))]
    texts = {
        "json": json.dumps(meta, indent=2, allow_nan=False),
        "markdown": _markdown(title, _intro(meta), status, tables, images),
        "html": _html(title, _intro(meta), status, diag.ok, tables, images),
    }
    return _write(out, texts, images)


def _write(out: Path, texts: dict[str, str], images: dict[str, tuple[str, bytes]]) -> dict[str, Path]:
    """Write the rendered report: figures first, then each text file whole (all was rendered before)."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, (_, png) in images.items():
        atomic_write(out / "figures" / f"{name}.png", lambda tmp, png=png: Path(tmp).write_bytes(png))
    files = {"html": out / "report.html", "markdown": out / "report.md", "json": out / "report.json"}
    for key, text in texts.items():
        write_text(files[key], text)
    return files


def curve_report(
    result: CurveResult,
    path: str | os.PathLike[str],
    *,
    schedules: Mapping[str, np.ndarray] | None = None,
    N: float | None = None,
    compute: Sequence[float] | None = None,
    tokens_per_step: float | None = None,
    level: float = LEVEL,
    title: str | None = None,
) -> dict[str, Path]:
    """Write the report of a loss-curve fit into the folder ``path`` (HTML, Markdown, JSON as :func:`report`).

    Args:
        result: a fit of :func:`bayescale.fit_curves`.
        path: output folder (created if needed).
        schedules: candidate schedules (name to learning rate at every step) whose final losses are compared
            (runs of ``N`` parameters for a fit across sizes).
        compute: budgets (FLOPs) for the envelope's planning table, for a fit across sizes; needs
            ``tokens_per_step`` (tokens per optimiser step).
        level: credible level of every interval.
        title: page title.
    """
    if compute is not None and tokens_per_step is None:
        raise ValueError("the envelope's table (compute=) needs tokens_per_step (tokens per optimiser step)")
    diag = result.diagnostics
    status = "Diagnostics OK" if diag.ok else "DIAGNOSTICS FAILED: " + "; ".join(diag.problems)
    curves = result.curves
    sizes = sorted(set(curves.sizes.values())) if result.size_ref is not None else []
    title = title or f"bayescale report: {result.law.name} fitted to {len(curves.runs)} loss curves"
    summary = result.summary(level)
    tables: list[tuple[str, pd.DataFrame]] = [("Parameters", summary.join(diag.table))]
    choice = envelope = None
    if schedules:
        choice = result.compare_schedules(schedules, N=N, level=level)
        tables.append((f"Final loss (nats) of each candidate schedule, {level:.0%} interval, probability of the"
                       " lowest (same draws)", choice))
    if compute is not None:
        envelope = curve_envelope(result, compute, tokens_per_step=tokens_per_step, level=level)
        tables.append((f"Compute-optimal allocation read from the envelope of the curves (cosine runs of"
                       f" {human(sizes[0], 'parameters')}-{human(sizes[-1], 'parameters')} parameters,"
                       f" {human(tokens_per_step, 'tokens')} tokens per step)", planner_units(envelope)))
    ax = plots.plot_curves(result, schedules=schedules, N=N, level=level)
    images = {"curves": (f"Logged points with the {level:.0%} band of a new run of each schedule; learning rates"
                         " underneath.", _png(ax.figure))}
    sampler = result.settings
    intro = [
        ("Data", f"{len(curves.runs)} curves, {len(curves.table)} logged points"
                 + (f", sizes {', '.join(human(n, 'parameters') for n in sizes)}" if sizes else "")),
        ("Law", f"{result.law.name}: {result.law.formula}"
                + (f"; every parameter theta (N / {human(result.size_ref, 'parameters')})^slope" if sizes else "")),
        ("Residuals", "AR(1) along each run plus white noise" if result.noise == "ar1" else "independent"),
        ("Structural error", curve_bands(result)),
        ("Sampler", f"NUTS, {sampler.num_chains} chains x {sampler.num_samples} draws ({sampler.num_warmup} warmup),"
                    f" seed {sampler.seed}"),
        ("Intervals", f"equal-tailed, {level:.0%}"),
        ("Versions", ", ".join(f"{k} {v}" for k, v in _versions().items())),
    ]
    meta = {"title": title, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "level": level, "law": result.law.name, "noise": result.noise, "runs": [str(r) for r in curves.runs],
            "sizes": sizes, "size_ref": result.size_ref, "sampler": sampler.to_dict(),
            "misfit_scale_median": None if result.misfit is None else _jsonable(float(np.median(result.misfit))),
            "schedule_misfit_scale_median": (None if result.schedule_misfit is None
                                             else _jsonable(float(np.median(result.schedule_misfit)))),
            "diagnostics": {"ok": diag.ok, "problems": list(diag.problems), "divergences": diag.divergences},
            "parameters": _records(summary, "parameter"),
            "schedules": _records(choice, "schedule") if choice is not None else None,
            "envelope": _records(envelope, "compute") if envelope is not None else None,
            "versions": _versions()}
    texts = {"json": json.dumps(meta, indent=2, allow_nan=False),
             "markdown": _markdown(title, intro, status, tables, images),
             "html": _html(title, intro, status, diag.ok, tables, images)}
    return _write(Path(path), texts, images)


def _fmt(table: pd.DataFrame, flat: bool = False) -> pd.DataFrame:
    """Four significant digits; with ``flat``, grouped columns joined into one header ("N_opt median")."""
    table = table.map(lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else v)
    table.index = [f"{v:.3g}" if isinstance(v, (float, np.floating)) else v for v in table.index]
    return _flat_columns(table, " ") if flat else table


def _intro(meta: dict) -> list[tuple[str, str]]:
    lik, sampler = meta["likelihood"], meta["sampler"]
    return [
        ("Data", f"{meta['data']['n_runs']} runs from {meta['data']['source']}"),
        ("Law", f"{meta['law']['name']}: {meta['law']['formula']}"),
        ("Likelihood", lik["name"] + (f" (nu = {lik['nu']:g})" if lik["nu"] else "")),
        ("Sampler", f"NUTS, {sampler['num_chains']} chains x {sampler['num_samples']} draws "
                    f"({sampler['num_warmup']} warmup), seed {sampler['seed']}"),
        ("Intervals", f"equal-tailed, {meta['level']:.0%}"),
        ("Bands", meta["extrapolation"]["mode"]),
        ("Structural error", _structural_line(meta)),
        ("Versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())),
    ]


def _structural_line(meta: dict) -> str:
    members = [m["name"] for m in meta["law"].get("members", []) if m["structural_error"]]
    extra = meta["extrapolation"]
    if members:
        return "random walk beyond the data, learned rolling origin, in members " + ", ".join(members)
    if not extra["structural_error"]:
        return "none: bands assume the law holds beyond the data"
    return f"random walk beyond the data, scale {extra['misfit_scale_median']:.3g} log-loss per sqrt e-fold"


def _md(text: Any) -> str:
    """``text`` with Markdown's active characters escaped, so user strings (paths, column names) print as given."""
    return re.sub(r"([\\`*_\[\]<>#!|~])", r"\\\1", str(text))


def _markdown(title: str, intro: list[tuple[str, str]], status: str, tables: list, images: dict) -> str:
    lines = [f"# {_md(title)}", "", f"**{_md(status)}**", ""]
    lines += [f"- **{_md(k)}**: {_md(v)}" for k, v in intro]
    for heading, table in tables:
        table = _fmt(table, flat=True)
        table.index = [_md(i) for i in table.index]
        table.columns = [_md(c) for c in table.columns]
        lines += ["", f"## {_md(heading)}", "", table.to_markdown()]
    for name, (caption, _) in images.items():
        lines += ["", f"![{_md(caption)}](figures/{name}.png)", "", f"*{_md(caption)}*"]
    return "\n".join(lines) + "\n"


def _html(title: str, intro: list[tuple[str, str]], status: str, ok: bool, tables: list, images: dict) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style></head><body>',
        f"<h1>{e(title)}</h1>",
        f'<p class="status {"ok" if ok else "fail"}" id="status">{e(status)}</p>',
        "<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in intro) + "</ul>",
    ]
    for heading, table in tables:
        parts += [f"<h2>{e(heading)}</h2>", _fmt(table).to_html(border=0)]
    parts.append("<h2>Figures</h2>")
    for name, (caption, png) in images.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="fig-{name}"><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
