"""The ``bayescale`` command line.

Examples::

    bayescale demo --out bayescale-demo
    bayescale fit runs.csv --law chinchilla --params-col N --tokens-col D --loss-col loss --out results/
    bayescale datasets
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import pandas as pd

from . import datasets
from .data import DataError, ScalingData
from .inference import fit
from .laws import list_laws
from .results import FitResult

__all__ = ["main"]


def _write(result: FitResult, out: str, compute: Sequence[float]) -> None:
    from .allocation import compute_optimal

    os.makedirs(out, exist_ok=True)
    result.save(os.path.join(out, "fit.nc"))
    summary = result.summary()
    summary.to_csv(os.path.join(out, "summary.csv"))
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(summary.round(4).to_string())
        diag = result.diagnostics
        status = "ok" if diag.ok else "WARNING: " + "; ".join(diag.problems)
        print(f"\ndiagnostics: max R-hat {diag.max_r_hat:.3f}, min bulk ESS {diag.min_ess_bulk:.0f},"
              f" divergences {diag.divergences} -> {status}")
        if compute and set(result.law.covariates) == {"N", "D"}:
            plan = compute_optimal(result, compute=compute)
            plan.to_csv(os.path.join(out, "plan.csv"))
            print("\ncompute-optimal allocation (median and 90% interval):")
            print(plan.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"\nwrote {out}/fit.nc, summary.csv" + (", plan.csv" if compute else ""))


def _sampler_args(args: argparse.Namespace) -> dict:
    return {
        "num_warmup": args.warmup,
        "num_samples": args.samples,
        "num_chains": args.chains,
        "seed": args.seed,
        "progress": not args.quiet,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayescale",
        description="Bayesian fits of neural scaling laws (N in parameters, D in tokens, C in FLOPs, loss in nats).",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def sampler(p: argparse.ArgumentParser) -> None:
        p.add_argument("--samples", type=int, default=1000, help="draws per chain (default 1000)")
        p.add_argument("--warmup", type=int, default=1000, help="warmup iterations per chain (default 1000)")
        p.add_argument("--chains", type=int, default=4, help="chains (default 4)")
        p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--compute", type=float, nargs="*", default=[1e20, 1e21, 1e22, 1e23, 1e24, 1e25],
                       help="budgets in FLOPs for the planning table")

    demo = sub.add_parser("demo", help="fit the bundled Chinchilla-synthetic runs and write the results")
    demo.add_argument("--out", default="bayescale-demo", help="output folder (default bayescale-demo)")
    sampler(demo)

    fit_p = sub.add_parser("fit", help="fit a law to a CSV of training runs")
    fit_p.add_argument("csv", help="CSV file, one row per training run")
    fit_p.add_argument("--law", default="chinchilla", choices=list_laws())
    fit_p.add_argument("--likelihood", default="student_t", choices=["student_t", "normal"])
    fit_p.add_argument("--params-col", default=None, help="column of parameters N")
    fit_p.add_argument("--tokens-col", default=None, help="column of tokens D")
    fit_p.add_argument("--compute-col", default=None, help="column of FLOPs C")
    fit_p.add_argument("--loss-col", default="loss", help="column of final loss (default 'loss')")
    fit_p.add_argument("--out", default="results", help="output folder (default results)")
    sampler(fit_p)

    sub.add_parser("datasets", help="list the bundled datasets")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "datasets":
            with pd.option_context("display.max_colwidth", 120):
                print(datasets.list().to_string(index=False))
            return 0
        if args.command == "demo":
            data = datasets.load("chinchilla_synthetic")
            print(f"bayescale demo: fitting the Chinchilla law to {data.n} bundled runs ({data.source})")
            result = fit(data, law="chinchilla", **_sampler_args(args))
        else:
            data = ScalingData.from_table(
                args.csv, params=args.params_col, tokens=args.tokens_col, compute=args.compute_col, loss=args.loss_col
            )
            result = fit(data, law=args.law, likelihood=args.likelihood, **_sampler_args(args))
        _write(result, args.out, args.compute)
        return 0
    except (DataError, ValueError, OSError) as err:
        print(f"bayescale: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
