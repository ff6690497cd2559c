"""Simulation-based calibration of every built-in law, both likelihoods (the full version of the test).

For each law and likelihood: ``--num`` datasets of ``--runs`` runs simulated from
realistic true values (``bs.calibration.RANGES``), fitted with ``fit_batch``
(4 chains x ``--draws`` after as many warmup), truths ranked among the draws.
Prints the coverage of the 50/90/95% intervals per quantity (N_opt and D_opt at
1e24 FLOPs for laws in N and D), the chi-square uniformity p-values, and the
share of fits that passed the convergence checks; writes a CSV and a figure of
rank histograms per law.

Run: ``python benchmarks/calibration.py --num 100 [--laws chinchilla kaplan_nd] [--likelihoods student_t normal]``;
``--source prior`` draws the truths from the priors instead of the realistic ranges;
``--source realistic`` fits with informative priors shaped like the realistic ranges and
draws the truths from them (exact SBC in the regime users fit; laws in ``REALISTIC``).
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib
import numpy as np
import numpyro.distributions as dist

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import bayescale as bs  # noqa: E402
from bayescale import calibration  # noqa: E402


def _log_normal(lo: float, hi: float) -> dist.LogNormal:
    """Log-normal with 95% of its mass in [lo, hi]."""
    return dist.LogNormal(np.log(lo * hi) / 2, np.log(hi / lo) / (2 * 1.96))


_SIGMA = dist.Uniform(0.01, 0.03)
_CHINCHILLA = {"E": dist.Uniform(1.5, 2.2), "alpha": dist.Uniform(0.25, 0.45), "beta": dist.Uniform(0.2, 0.4),
               "A": _log_normal(100, 1000), "B": _log_normal(100, 1000), "sigma": _SIGMA}
REALISTIC = {
    "chinchilla": _CHINCHILLA,
    "moe": {**_CHINCHILLA, "w": dist.Uniform(0.1, 0.9)},
    "kaplan_n": {"alpha_N": dist.Uniform(0.05, 0.1), "N_c": _log_normal(1e13, 1e14), "sigma": _SIGMA},
    "kaplan_d": {"alpha_D": dist.Uniform(0.07, 0.12), "D_c": _log_normal(1e13, 1e14), "sigma": _SIGMA},
    "kaplan_c": {"alpha_C": dist.Uniform(0.04, 0.07), "C_c": _log_normal(1e27, 1e29), "sigma": _SIGMA},
    "kaplan_nd": {"alpha_N": dist.Uniform(0.06, 0.09), "alpha_D": dist.Uniform(0.08, 0.11),
                  "N_c": _log_normal(3e13, 3e14), "D_c": _log_normal(1e13, 1e14), "sigma": _SIGMA},
    # A = (reducible loss at 1e20 FLOPs, 0.5-1.5) x 1e20^alpha; K = (Y at 1e20 FLOPs, 1e5-1e7) x 1e20^-a
    "offset_power": {"E": dist.Uniform(1.5, 2.2), "alpha": dist.Uniform(0.1, 0.3), "A": _log_normal(1e2, 1e6),
                     "sigma": _SIGMA},
    "power": {"a": dist.Uniform(0.1, 0.5), "K": _log_normal(1e-5, 1e5), "sigma": _SIGMA},
}
"""Informative priors shaped like ``bs.calibration.RANGES`` (amplitudes log-normal, as centred
amplitudes need a prior on all positive numbers)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--laws", nargs="+", default=bs.laws.list_laws())
    parser.add_argument("--likelihoods", nargs="+", default=["student_t", "normal"])
    parser.add_argument("--source", default="ranges", choices=["ranges", "prior", "realistic"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/calibration")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows = []
    if args.source == "realistic":
        args.laws = [law for law in args.laws if law in REALISTIC]
    for law in args.laws:
        for likelihood in args.likelihoods:
            start = time.perf_counter()
            source, priors = ("prior", REALISTIC[law]) if args.source == "realistic" else (args.source, None)
            cal = calibration.sbc(law, likelihood, num_datasets=args.num, runs_per_dataset=args.runs,
                                  num_warmup=args.draws, num_samples=args.draws, seed=args.seed,
                                  source=source, priors=priors)
            coverage = cal.coverage()
            uniform = cal.uniformity()
            converged = float((cal.diagnostics["status"] == "ok").mean())
            for name in coverage.index:
                rows.append({"law": law, "likelihood": likelihood, "source": args.source, "quantity": name, "datasets": len(cal.ranks),
                             **{f"cover_{k}": v for k, v in coverage.loc[name].items()},
                             "uniformity_p": uniform.loc[name, "p_value"], "converged": converged})
            cal.ranks.join(cal.diagnostics, rsuffix="_diag").to_csv(f"{args.out}_{law}_{likelihood}_ranks.csv")
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
