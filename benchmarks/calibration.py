"""Simulation-based calibration of every built-in law, both likelihoods (the full version of the test).

For each law and likelihood: ``--num`` datasets of ``--runs`` runs simulated from
realistic true values (``bs.calibration.RANGES``), fitted with ``fit_batch``
(4 chains x ``--draws`` after as many warmup), truths ranked among the draws.
Prints the coverage of the 50/90/95% intervals per quantity (N_opt and D_opt at
1e24 FLOPs for laws in N and D), the chi-square uniformity p-values, and the
share of fits that passed the convergence checks; writes a CSV and a figure of
rank histograms per law.

Run: ``python benchmarks/calibration.py --num 100 [--laws chinchilla kaplan_nd] [--likelihoods student_t normal]``;
``--source prior`` draws the truths from the priors instead of the realistic ranges.
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import bayescale as bs  # noqa: E402
from bayescale import calibration  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--laws", nargs="+", default=bs.laws.list_laws())
    parser.add_argument("--likelihoods", nargs="+", default=["student_t", "normal"])
    parser.add_argument("--source", default="ranges", choices=["ranges", "prior"])
    parser.add_argument("--out", default="benchmarks/results/calibration")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows = []
    for law in args.laws:
        for likelihood in args.likelihoods:
            start = time.perf_counter()
            cal = calibration.sbc(law, likelihood, num_datasets=args.num, runs_per_dataset=args.runs,
                                  num_warmup=args.draws, num_samples=args.draws, seed=0, source=args.source)
            coverage = cal.coverage()
            uniform = cal.uniformity()
            converged = float((cal.diagnostics["status"] == "ok").mean())
            for name in coverage.index:
                rows.append({"law": law, "likelihood": likelihood, "source": args.source, "quantity": name, "datasets": len(cal.ranks),
                             **{f"cover_{k}": v for k, v in coverage.loc[name].items()},
                             "uniformity_p": uniform.loc[name, "p_value"], "converged": converged})
            axes = cal.plot_ranks()
            axes[0].figure.suptitle(f"{law}, {likelihood}: {len(cal.ranks)} datasets")
            axes[0].figure.savefig(f"{args.out}_{law}_{likelihood}.png", dpi=80)
            plt.close("all")
            print(f"{law} / {likelihood}: {time.perf_counter() - start:.0f} s, converged {converged:.0%}", flush=True)
            print(pd.DataFrame(rows[-len(coverage):]).drop(columns=["law", "likelihood", "source"]).round(3).to_string(index=False),
                  flush=True)
            pd.DataFrame(rows).to_csv(f"{args.out}.csv", index=False)  # after every law: a stopped run keeps its rows
    table = pd.DataFrame(rows)
    worst = table.loc[(table["cover_0.9"] - 0.9).abs().idxmax()]
    print(f"\n90% coverage across all: min {table['cover_0.9'].min():.3f}, max {table['cover_0.9'].max():.3f};"
          f" worst {worst['law']}/{worst['likelihood']}/{worst['quantity']} at {worst['cover_0.9']:.3f}")


if __name__ == "__main__":
    main()
