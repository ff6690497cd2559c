"""Which runs to add: ``bs.design`` against an iso-FLOP grid and random runs of the same compute.

Simulation study with a known truth (the published Chinchilla law, 2% log-normal noise). Each
replication starts from a ladder of 16 runs below 1e9 parameters, fits it, and spends an
experiment budget of ``--budget`` FLOPs on new runs chosen three ways:

- design: ``bs.design(fit, compute=1e24, budget=..., k=4)`` (greedy, largest expected reduction
  of the width among the runs the remaining budget can pay for);
- iso-FLOP grid: four runs at a quarter of the budget each, sizes 1/4, 1/2, 2 and 4 times the
  current posterior-median N_opt at that compute;
- random: runs drawn from the same candidate grid as design until the budget is spent.

The new runs' losses are simulated from the truth, every augmented ladder is refitted
(``bs.fit_batch``), and the 90% interval of log N_opt at 1e24 FLOPs is measured. Reported: the
share of replications where design's interval is the narrowest, coverage of the true N_opt, and
how well design's expected width predicted the realised one.

Run: ``python benchmarks/design.py [--reps 50]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import bayescale as bs

TRUTH = bs.datasets.CHINCHILLA_PARAMS
TARGET = 1e24
SETTINGS = bs.SamplerSettings()  # 4 chains x 1000 draws: the ladders are weakly identified and mix slowly


def ladder(rep: int) -> bs.ScalingData:
    N, D = bs.chinchilla_design(80, seed=1000 + rep)
    keep = N < 1e9
    return bs.simulate("chinchilla", TRUTH, N=N[keep][:16], D=D[keep][:16], noise=0.02, seed=2000 + rep)


def isoflop_runs(fit: bs.FitResult, budget: float) -> pd.DataFrame:
    c = budget / 4
    n_opt = bs.compute_optimal(fit, [c])[("N_opt", "median")].item()
    n = n_opt * np.array([0.25, 0.5, 2.0, 4.0])
    return pd.DataFrame({"N": n, "D": c / (6 * n)})


def random_runs(fit: bs.FitResult, budget: float, rng: np.random.Generator) -> pd.DataFrame:
    grid = bs.experiments.candidate_grid(fit.data)
    grid = grid[6 * grid["N"] * grid["D"] <= budget].reset_index(drop=True)
    rows, spent = [], 0.0
    for i in rng.permutation(len(grid)):
        cost = 6 * grid.at[i, "N"] * grid.at[i, "D"]
        if spent + cost <= budget:
            rows.append(grid.loc[i])
            spent += cost
        if len(rows) == 4:
            break
    return pd.DataFrame(rows).reset_index(drop=True)


def add_runs(data: bs.ScalingData, runs: pd.DataFrame, seed: int) -> bs.ScalingData:
    new = bs.simulate("chinchilla", TRUTH, N=runs["N"].to_numpy(), D=runs["D"].to_numpy(), noise=0.02, seed=seed)
    return bs.ScalingData.from_arrays(loss=np.r_[data.loss, new.loss], N=np.r_[data.N, new.N], D=np.r_[data.D, new.D])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--budget", type=float, default=1e21, help="experiment FLOPs per replication")
    args = parser.parse_args()
    start = time.perf_counter()
    truth = np.log(bs.optimal_allocation(bs.laws.get_law("chinchilla"), {k: np.array([v]) for k, v in TRUTH.items()},
                                         [TARGET])["N_opt"][0, 0])
    warnings.simplefilter("ignore", bs.ConvergenceWarning)
    ladders = {rep: ladder(rep) for rep in range(args.reps)}
    first = bs.fit_batch(ladders, settings=SETTINGS)
    augmented, predicted, spent = {}, {}, {}
    rng = np.random.default_rng(0)
    for rep, data in ladders.items():
        fit = first[rep]
        plan = bs.design(fit, compute=TARGET, budget=args.budget, k=4, seed=rep)
        predicted[rep] = plan.selected["width_after"].iloc[-1]
        choices = {"design": plan.selected[["N", "D"]], "isoflop": isoflop_runs(fit, args.budget),
                   "random": random_runs(fit, args.budget, rng)}
        for name, runs in choices.items():
            augmented[f"{rep}/{name}"] = add_runs(data, runs, seed=3000 + rep)
            spent[f"{rep}/{name}"] = float((6 * runs["N"] * runs["D"]).sum())
    print(f"designed {args.reps} replications ({time.perf_counter() - start:.0f} s); refitting {len(augmented)}",
          flush=True)
    refits = bs.fit_batch(augmented, settings=SETTINGS)
    rows = []
    for key in augmented:
        rep, name = key.split("/")
        log_n = np.log(bs.optimal_allocation(refits[key].law, refits[key].draws(), [TARGET])["N_opt"][:, 0])
        lo, hi = np.quantile(log_n, [0.05, 0.95])
        rows.append({"rep": int(rep), "strategy": name, "width": hi - lo, "covers": lo <= truth <= hi,
                     "spent": spent[key], "converged": refits[key].diagnostics.ok,
                     "predicted": predicted[int(rep)] if name == "design" else np.nan})
    table = pd.DataFrame(rows)
    wide = table.pivot(index="rep", columns="strategy", values="width")
    before = pd.Series({rep: np.diff(np.quantile(np.log(bs.optimal_allocation(
        first[rep].law, first[rep].draws(), [TARGET])["N_opt"][:, 0]), [0.05, 0.95]))[0] for rep in ladders})
    summary = table.groupby("strategy").agg(width_median=("width", "median"), coverage90=("covers", "mean"),
                                            spent_median=("spent", "median"), converged=("converged", "mean"))
    print(summary.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"\nwidth before the new runs (median): {before.median():.3g}")
    narrowest = (wide["design"] < wide[["isoflop", "random"]].min(axis=1)).mean()
    print(f"design narrowest in {narrowest:.0%} of {args.reps} replications "
          f"(vs iso-FLOP {(wide['design'] < wide['isoflop']).mean():.0%}, vs random {(wide['design'] < wide['random']).mean():.0%})")
    design_rows = table[table["strategy"] == "design"]
    error = np.abs(design_rows["predicted"] / design_rows["width"] - 1)
    print(f"expected vs realised width (design): mean |predicted/realised - 1| = {error.mean():.2f}, "
          f"mean ratio {np.mean(design_rows['predicted'] / design_rows['width']):.2f}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
