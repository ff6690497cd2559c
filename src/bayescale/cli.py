"""The ``bayescale`` command line.

Examples::

    bayescale demo --out bayescale-demo
    bayescale fit runs.csv --law chinchilla --params-col N --tokens-col D --loss-col loss --out results/
    bayescale fit runs.csv --backtest --out results/   # planning bands (structural error), checked rolling origin
    bayescale fit runs.csv --no-structural-error      # bands that assume the law holds beyond the data
    bayescale fit runs.csv --law chinchilla kaplan_nd --out results/     # laws stacked by their extrapolations
    bayescale plan results/ --compute 1e22 1e23 1e24
    bayescale plan results/ --target-loss 2.0 1.9
    bayescale design results/ --target-compute 1e24 --budget 1e21 -k 4   # which runs to do next
    bayescale report results/
    bayescale batch runs.csv --group-col arch --out batch-results/
    bayescale batch runs.csv --group-col arch --law chinchilla kaplan_nd   # one folder per law, weights.csv
    bayescale curves points.csv --law lr_annealing --predict cosine_72000 wsd_60000_72000 --out curves/
    bayescale datasets
    bayescale info          # versions, devices, compilation cache folder

``fit``, ``batch``, ``demo`` and ``curves`` use the planning mode by default: bands carry the structural
error learned from rolling-origin refits, so they widen beyond the data; ``plan`` and
``report`` read the mode a result was saved with. Bad input exits with status 2 and a
one-line reason; ``--strict`` makes a fit that did not converge exit with status 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from collections.abc import Sequence

import arviz as az
import jax
import numpyro
import pandas as pd

from . import __version__, cache, datasets, schedules
from .allocation import compute_for_loss, compute_optimal, plannable
from .curve_fit import NOISES, CurveResult, curve_structural_error, fit_curves
from .curves import LossCurves, named_schedules
from .envelope import curve_envelope
from .batch import BatchResult, fit_batch, load_batch
from .data import DataError, ScalingData, read_csv
from .experiments import Forecast, design
from .extrapolation import structural_error
from .fit import fit
from .laws import list_laws
from .reporting import DEFAULT_COMPUTE, curve_bands, curve_report, mode, planner_units, report
from .validation import backtest
from .posterior import FitResult, load
from .stacked_batch import stack_batch
from .stacking import METHODS, StackedResult, stack
from .store import MANIFEST, write_text

__all__ = ["main"]

_FIT_FILE = "fit.nc"


def _print(table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))


def _status(result: FitResult) -> str:
    diag = result.diagnostics
    status = "ok" if diag.ok else "WARNING: " + "; ".join(diag.problems)
    return (f"diagnostics: max R-hat {diag.max_r_hat:.3f}, min bulk ESS {diag.min_ess_bulk:.0f}, "
            f"divergences {diag.divergences} -> {status}")


def _write_csv(table: pd.DataFrame, path: str, index: bool = True) -> None:
    write_text(path, table.to_csv(index=index))


def _write_fit(result: FitResult | StackedResult, out: str, compute: Sequence[float]) -> None:
    os.makedirs(out, exist_ok=True)
    result.save(os.path.join(out, _FIT_FILE))
    summary = result.summary()
    _write_csv(summary, os.path.join(out, "summary.csv"))
    _print(summary)
    print("\n" + _status(result))
    planned = bool(compute) and plannable(result)
    if planned:
        plan = compute_optimal(result, compute=compute)
        _write_csv(plan, os.path.join(out, "plan.csv"))
        print(f"\ncompute-optimal allocation (median and 90% interval; {mode(result)}):")
        _print(planner_units(plan))
    print(f"\nwrote {out}/{_FIT_FILE}, summary.csv" + (", plan.csv" if planned else ""))


def _load_results(folder: str) -> FitResult | BatchResult:
    if os.path.isfile(folder):
        return load(folder)
    if os.path.isfile(os.path.join(folder, _FIT_FILE)):
        return load(os.path.join(folder, _FIT_FILE))
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        return load_batch(folder)
    raise DataError(f"{folder}: holds no bayescale results (expected {_FIT_FILE} or a batch's {MANIFEST})")


def _plan(args: argparse.Namespace) -> int:
    results = _load_results(args.results)
    if args.target_loss:
        if isinstance(results, BatchResult):
            raise DataError("--target-loss takes a single fit's folder, not a batch")
        table = compute_for_loss(results, args.target_loss, flops_per_token=args.flops_per_token)
        name = "compute_for_loss.csv"
    else:
        table = (results.compute_optimal(args.compute, args.flops_per_token) if isinstance(results, BatchResult)
                 else compute_optimal(results, args.compute, args.flops_per_token))
        name = "plan.csv"
    modes = {mode(r) for r in (results.results.values() if isinstance(results, BatchResult) else [results])}
    print(f"bands: {'; '.join(sorted(modes))}")
    _print(planner_units(table))
    if os.path.isdir(args.results):
        _write_csv(table, os.path.join(args.results, name))
        print(f"\nwrote {os.path.join(args.results, name)}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    frame = read_csv(args.csv, group=args.group_col)
    several = len(args.law) > 1
    batches = {}
    unhealthy = False
    for law in args.law:
        out = os.path.join(args.out, law) if several else args.out
        result = fit_batch(
            frame, group=args.group_col, law=law, likelihood=args.likelihood, out_dir=out,
            params=args.params_col, tokens=args.tokens_col, compute=args.compute_col, loss=args.loss_col,
            structural=args.structural_error, **_sampler_args(args),
        )
        diag = result.status()
        _write_csv(diag, os.path.join(out, "diagnostics.csv"))
        if result.results:
            _write_csv(result.summary(), os.path.join(out, "summary.csv"), index=False)
        _print(diag)
        counts = diag["status"].value_counts()
        unhealthy = unhealthy or bool(counts.get("warning", 0) or counts.get("failed", 0))
        print(f"\n{law}: {len(result)} groups: "
              + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "warning", "failed")))
        print(f"wrote {out}/diagnostics.csv, summary.csv and one file per group")
        if not result.results:
            raise DataError(f"{law}: no group could be fitted; see {out}/diagnostics.csv for the reasons")
        batches[law] = result
    if several:
        stacked = stack_batch(batches, method=args.stack_method, structural=args.structural_error and
                              args.stack_method == "future")
        weights = stacked.weights.reindex(stacked.order)
        weights["failure"] = [stacked.failures.get(g, "") for g in stacked.order]
        _write_csv(weights, os.path.join(args.out, "weights.csv"))
        print("\nstacking weights per group:")
        _print(weights)
        print(f"wrote {args.out}/weights.csv")
    return 1 if args.strict and unhealthy else 0


def _report(args: argparse.Namespace) -> int:
    result = _load_results(args.results)
    if isinstance(result, BatchResult):
        raise DataError("report takes a single fit's folder; for a batch, report each group: bs.report(batch[name])")
    out = args.out or (args.results if os.path.isdir(args.results) else os.path.dirname(args.results) or ".")
    files = report(result, out, compute=args.compute)
    print(_status(result))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _design(args: argparse.Namespace) -> int:
    result = _load_results(args.results)
    if isinstance(result, BatchResult):
        raise DataError("design takes a single fit's folder; for a batch, use bs.design(batch[name], ...)")
    candidates = None
    if args.candidates:
        if not os.path.isfile(args.candidates):
            raise DataError(f"{args.candidates}: no such file")
        candidates = pd.read_csv(args.candidates)
    plan = design(result, compute=args.target_compute, candidates=candidates, budget=args.budget, k=args.k,
                  rule=args.rule, forecast=args.forecast, refits=args.refits, seed=args.seed)
    print(f"{plan.target}: current {plan.level:.0%} interval width {plan.width:.3g} (log scale)\n")
    print("runs to do next, in order (width after each, with the ones before; importance sampling):")
    _print(plan.selected)
    print(f"\n{_forecast_line('chosen runs', plan.forecast, plan.level)}")
    if plan.grid is not None:
        print(_forecast_line("best iso-FLOP grid of the budget", plan.grid[1], plan.level))
    print("\nsets of runs compared (expected width by importance sampling):")
    _print(plan.sets)
    print("\nbest candidates per FLOP:")
    _print(plan.candidates.head(10))
    if os.path.isdir(args.results):
        for table, name in ((plan.candidates, "design_candidates"), (plan.selected, "design"),
                            (plan.sets, "design_sets")):
            _write_csv(table, os.path.join(args.results, f"{name}.csv"), index=False)
        print(f"\nwrote {args.results}/design.csv, design_sets.csv, design_candidates.csv")
    return 0


def _forecast_line(what: str, forecast: Forecast, level: float) -> str:
    return (f"{what}: expected width {forecast.width:.3g} ± {forecast.se:.2g} (MC error), {level:.0%} of outcomes"
            f" in [{forecast.low:.3g}, {forecast.high:.3g}]; forecast by {forecast.method}"
            f" (Pareto k > 0.7 for {forecast.pareto_k:.0%} of simulated outcomes)")


def _planned(result: FitResult | CurveResult, structural: bool) -> FitResult | CurveResult:
    """The planning mode of a fit (its structural error), or the fit as it is when asked, or when the runs are
    too few for the rolling-origin refits (said on stderr; the report says which bands it shows)."""
    if not structural:
        return result
    try:
        return curve_structural_error(result) if isinstance(result, CurveResult) else structural_error(result)
    except DataError as err:
        print(f"bayescale: planning mode unavailable ({err}); bands assume the law holds beyond the data",
              file=sys.stderr)
        return result


def _sampler_args(args: argparse.Namespace) -> dict:
    return {
        "num_warmup": args.warmup,
        "num_samples": args.samples,
        "num_chains": args.chains,
        "seed": args.seed,
        "progress": not args.quiet,
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayescale",
        description="Bayesian fits of neural scaling laws (N in parameters, D in tokens, C in FLOPs, loss in nats).",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bayescale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def sampler(p: argparse.ArgumentParser) -> None:
        p.add_argument("--samples", type=_positive_int, default=1000, help="draws per chain (default 1000)")
        p.add_argument("--warmup", type=_positive_int, default=1000, help="warmup iterations per chain (default 1000)")
        p.add_argument("--chains", type=_positive_int, default=4, help="chains (default 4)")
        p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--strict", action="store_true", help="exit with status 1 when a fit did not converge")

    def planning(p: argparse.ArgumentParser) -> None:
        p.add_argument("--structural-error", action=argparse.BooleanOptionalAction, default=True,
                       help="planning mode (default): bands widen beyond the data (and, for curves, on new schedules) by "
                            "the law's misfit, learned from its own refits; --no-structural-error gives bands that "
                            "assume the law holds")

    def budgets(p: argparse.ArgumentParser) -> None:
        p.add_argument("--compute", type=float, nargs="+", default=list(DEFAULT_COMPUTE),
                       help="budgets in FLOPs for the planning table (default 1e20 ... 1e25)")

    def table(p: argparse.ArgumentParser) -> None:
        p.add_argument("csv", help="CSV file, one row per training run")
        p.add_argument("--law", nargs="+", default=["chinchilla"], choices=list_laws(), metavar="LAW",
                       help="law to fit (default chinchilla); several laws are fitted and stacked, "
                            f"weights from their leave-future-out record. Built-in: {', '.join(list_laws())}")
        p.add_argument("--likelihood", default="student_t", choices=["student_t", "normal"])
        p.add_argument("--params-col", default=None, help="column of parameters N")
        p.add_argument("--tokens-col", default=None, help="column of tokens D")
        p.add_argument("--compute-col", default=None, help="column of FLOPs C")
        p.add_argument("--loss-col", default="loss", help="column of final loss (default 'loss')")

    demo = sub.add_parser("demo", help="fit the bundled Chinchilla-synthetic runs and write the report")
    demo.add_argument("--out", default="bayescale-demo", help="output folder (default bayescale-demo)")
    planning(demo)
    sampler(demo)
    budgets(demo)

    fit_p = sub.add_parser("fit", help="fit a law to a CSV of training runs")
    table(fit_p)
    fit_p.add_argument("--out", default="results", help="output folder (default results)")
    planning(fit_p)
    fit_p.add_argument("--backtest", action="store_true",
                       help="refit below several cut points and score the runs above; verdict in the report "
                            "(one law; a stack's report carries each law's leave-future-out record)")
    fit_p.add_argument("--stack-method", choices=list(METHODS), default="future",
                       help="with several laws: stacking weights from leave-future-out (default) or PSIS-LOO densities")
    sampler(fit_p)
    budgets(fit_p)

    plan = sub.add_parser("plan", help="compute-optimal allocation (or compute for a target loss) from saved results")
    plan.add_argument("results", help="folder written by 'bayescale fit' or 'bayescale batch' (or a fit.nc)")
    budgets(plan)
    plan.add_argument("--target-loss", type=float, nargs="+", default=None,
                      help="instead of budgets: the compute needed to reach these losses (nats)")
    plan.add_argument("--flops-per-token", type=float, default=6.0, help="k in C = k*N*D (default 6)")

    des = sub.add_parser("design", help="which runs to do next: the most narrowing of N_opt's interval per budget")
    des.add_argument("results", help="folder written by 'bayescale fit' (or a fit.nc)")
    des.add_argument("--target-compute", type=float, required=True, help="budget (FLOPs) whose N_opt to pin down")
    des.add_argument("--budget", type=float, default=None, help="FLOPs available for the new runs (default: no limit)")
    des.add_argument("-k", type=_positive_int, default=4, help="runs to choose (default 4)")
    des.add_argument("--candidates", default=None, help="CSV of candidate runs (columns N, D; optional cost)")
    des.add_argument("--rule", choices=["width", "per_flop"], default="width",
                     help="the set with the narrowest expected interval for the whole budget (default), or runs"
                          " one at a time by narrowing per FLOP")
    des.add_argument("--forecast", choices=["auto", "importance", "refit"], default="auto",
                     help="importance sampling, refits of simulated outcomes, or refits when the weights degenerate"
                          " (default)")
    des.add_argument("--refits", type=_positive_int, default=16, help="simulated outcomes refitted per forecast"
                     " set when refitting (default 16)")
    des.add_argument("--seed", type=int, default=0, help="PRNG seed of the simulated outcomes (default 0)")

    batch = sub.add_parser("batch", help="fit a law (or several, stacked per group) to every group of a CSV")
    table(batch)
    batch.add_argument("--stack-method", choices=list(METHODS), default="future",
                       help="with several laws: stacking weights from leave-future-out (default) or PSIS-LOO densities")
    batch.add_argument("--group-col", required=True, help="column naming each run's group")
    batch.add_argument("--out", default="batch-results", help="output folder; rerunning resumes (default batch-results)")
    planning(batch)
    sampler(batch)

    rep = sub.add_parser("report", help="write the HTML, Markdown and JSON planning report of a saved fit")
    rep.add_argument("results", help="folder written by 'bayescale fit' (or a fit.nc)")
    rep.add_argument("--out", default=None, help="output folder (default: the results folder)")
    budgets(rep)

    cur = sub.add_parser("curves", help="fit a curve law to logged loss curves; compare schedules' final losses")
    cur.add_argument("csv", help="CSV of logged points: one row per (run, step), with the loss and the run's schedule")
    cur.add_argument("--law", default="lr_annealing", choices=["lr_annealing", "multi_power"],
                     help="curve law (default lr_annealing: seconds per fit, bands that held on held-out schedules;"
                          " multi_power: minutes per fit)")
    cur.add_argument("--noise", default="ar1", choices=list(NOISES),
                     help="residuals along a run: AR(1) plus white noise (default) or independent")
    cur.add_argument("--run-col", default="run", help="column naming each point's run (default 'run')")
    cur.add_argument("--step-col", default="step", help="column of optimiser steps (default 'step')")
    cur.add_argument("--loss-col", default="loss", help="column of logged loss in nats (default 'loss')")
    cur.add_argument("--schedule-col", default="schedule",
                     help="column naming each run's schedule: constant_T, cosine_T, wsd_S_T, wsdld_S_T (default 'schedule')")
    cur.add_argument("--peak", type=float, default=schedules.PEAK, help=f"peak learning rate (default {schedules.PEAK:g})")
    cur.add_argument("--final", type=float, default=schedules.FINAL,
                     help=f"final learning rate of cosine and WSD schedules (default {schedules.FINAL:g})")
    cur.add_argument("--lr-warmup", type=int, default=schedules.WARMUP,
                     help=f"learning-rate warmup steps of the schedules (default {schedules.WARMUP})")
    cur.add_argument("--params-col", default=None,
                     help="column of each run's model size N (parameters): curves of several sizes are fitted with N"
                          " as a covariate of the law")
    cur.add_argument("--predict", nargs="+", default=None, metavar="SCHEDULE",
                     help="schedules (named as in the schedule column) whose final losses to compare")
    cur.add_argument("--predict-N", type=float, default=None,
                     help="model size (parameters) of the compared schedules' runs, for curves of several sizes")
    cur.add_argument("--envelope", nargs="+", type=float, default=None, metavar="FLOPS",
                     help="budgets (FLOPs) at which to read N_opt, D_opt and the loss from the envelope of the"
                          " curves (several sizes; needs --tokens-per-step)")
    cur.add_argument("--tokens-per-step", type=float, default=None, help="tokens per optimiser step (batch size)")
    cur.add_argument("--out", default="curves", help="output folder (default curves)")
    planning(cur)
    sampler(cur)

    sub.add_parser("datasets", help="list the bundled datasets")
    sub.add_parser("info", help="versions, devices and the compilation cache's location")
    return parser


def _info() -> int:
    folder = cache.ensure()
    lines = {
        "bayescale": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "arviz": az.__version__,
        "devices": ", ".join(f"{d.platform}:{d.id}" for d in jax.devices()),
        "compilation cache": str(folder) if folder else f"off (set {cache.ENV} to a folder to switch it on)",
    }
    for key, value in lines.items():
        print(f"{key + ':':20s}{value}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    """Fit loss curves, print and write the posterior, and the compared schedules' final losses."""
    table = read_csv(args.csv, group=args.run_col)
    shape = {"peak": args.peak, "final": args.final, "warmup": args.lr_warmup}
    if args.envelope and args.tokens_per_step is None:
        raise ValueError("--envelope needs --tokens-per-step (tokens per optimiser step)")
    curves = LossCurves.from_table(table, named_schedules(table, run=args.run_col, schedule=args.schedule_col, **shape),
                                   run=args.run_col, step=args.step_col, loss=args.loss_col, params=args.params_col)
    result = _planned(fit_curves(curves, args.law, noise=args.noise, **_sampler_args(args)), args.structural_error)
    os.makedirs(args.out, exist_ok=True)
    result.save(os.path.join(args.out, "curves.nc"))
    summary = result.summary().join(result.diagnostics.table)
    _write_csv(summary, os.path.join(args.out, "summary.csv"))
    print(f"{args.law} fitted to {len(curves.runs)} curves ({len(curves.table)} logged points), noise {args.noise}")
    _print(summary)
    print(f"bands: {'planning mode, ' if result.misfit is not None else ''}structural error {curve_bands(result)}")
    candidates = None
    if args.predict:
        candidates = {name: schedules.from_name(name, **shape) for name in args.predict}
        choice = result.compare_schedules(candidates, N=args.predict_N)
        _write_csv(choice, os.path.join(args.out, "schedules.csv"))
        print("final loss (nats) of each schedule, 90% interval, probability of the lowest:")
        _print(choice)
    if args.envelope:
        plan = curve_envelope(result, args.envelope, tokens_per_step=args.tokens_per_step)
        _write_csv(plan, os.path.join(args.out, "envelope.csv"))
        print("from the envelope of the curves (cosine runs to each horizon), 90% intervals:")
        _print(planner_units(plan))
    curve_report(result, args.out, schedules=candidates, N=args.predict_N, compute=args.envelope,
                 tokens_per_step=args.tokens_per_step)
    extra = (", schedules.csv" if args.predict else "") + (", envelope.csv" if args.envelope else "")
    print(f"written to {args.out}: curves.nc, summary.csv{extra}, report.html (.md, .json, figures/)")
    return 1 if args.strict and not result.diagnostics.ok else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 not converged with ``--strict``, 2 bad input).

    Deprecation notices of dependencies are not shown (they concern this package's code, not the
    user's data); bayescale's own warnings about data and convergence are.
    """
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "info":
            return _info()
        if args.command == "datasets":
            with pd.option_context("display.max_colwidth", 120):
                print(datasets.list().to_string(index=False))
            return 0
        if args.command == "plan":
            return _plan(args)
        if args.command == "design":
            return _design(args)
        if args.command == "batch":
            return _batch(args)
        if args.command == "report":
            return _report(args)
        if args.command == "curves":
            return _curves(args)
        if args.command == "demo":
            data = datasets.load("chinchilla_synthetic")
            print(f"bayescale demo: fitting the Chinchilla law to {data.n} bundled runs ({data.source})")
            result = _planned(fit(data, law="chinchilla", **_sampler_args(args)), args.structural_error)
        else:
            data = ScalingData.from_table(
                args.csv, params=args.params_col, tokens=args.tokens_col, compute=args.compute_col, loss=args.loss_col
            )
            if len(args.law) > 1 and args.backtest:
                raise ValueError("--backtest checks one law; with several laws the report carries each law's "
                                 "leave-future-out record")
            fits = {law: fit(data, law=law, likelihood=args.likelihood, **_sampler_args(args)) for law in args.law}
            if len(fits) > 1:
                result = stack(fits, method=args.stack_method,
                               structural=args.structural_error and args.stack_method == "future")
            else:
                result = _planned(fits[args.law[0]], args.structural_error)
        check = None
        if getattr(args, "backtest", False):
            check = backtest(result, structural=args.structural_error)
            print(check.message)
        _write_fit(result, args.out, args.compute)
        if check is not None:
            _write_csv(check.table, os.path.join(args.out, "backtest.csv"))
        files = report(result, args.out, compute=args.compute, backtest=check)
        print(f"report: {files['html']}")
        return 1 if args.strict and not result.diagnostics.ok else 0
    except (DataError, ValueError, OSError) as err:
        print("bayescale: error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
