"""Which runs to add: ``bs.design`` against an iso-FLOP grid of the same cost, in two settings.

Simulation study with a known truth (the published Chinchilla law, 2% log-normal noise). Each
replication fits a ladder of seed runs, spends an experiment budget on new runs chosen two ways,
simulates their losses from the truth, refits (one ``bs.fit_batch`` per setting) and measures the 90%
interval of log N_opt at 1e24 FLOPs:

- design: ``bs.design(fit, compute=1e24, budget=..., k=4)`` (defaults: the set of at most four runs
  with the narrowest expected interval for the whole budget; refit forecasts when importance weights
  degenerate);
- iso-FLOP grid: four runs at a quarter of the budget each.

Settings:

- ``ladder`` (the benchmark of 2026-11-30): 16 runs below 1e9 parameters on ``bs.chinchilla_design``,
  budget 1e21 FLOPs, grid sizes 1/4, 1/2, 2 and 4 times the posterior-median N_opt at a quarter of the budget;
- ``wide``: 12 small runs (50M-500M parameters, about 20 tokens per parameter), budget 1.9e21 FLOPs,
  grid 0.5B, 1B, 2B and 4B parameters: a posterior so wide that importance weights degenerate.

Reported per setting: the share of replications where design's interval is narrower than the grid's,
coverage of the true N_opt, budget spent, and design's forecast against the realised width (median
ratio; share of replications whose realised width lies in the forecast's 90% range, and within two
Monte Carlo standard errors of the expected width). Per-replication rows go to
``benchmarks/results/design_<setting>.csv``.

Run: ``python benchmarks/design.py [--reps 50] [--settings ladder wide]``; ``--first 20 --reps 30`` runs
replications 20-49 (written to ``design_<setting>_from20.csv``), so a study can be run in parts;
``--report`` reports every saved part of each setting together. ``--draws 1000`` samples every fit (seed
runs, forecasts' refits and the realised refits) at 4 x 1000/1000, the package's default, instead of
4 x 500/500 (files ``design_<setting>_draws1000*.csv``).
"""

from __future__ import annotations

import argparse
import glob
import os
import time
import warnings

import numpy as np
import pandas as pd

import bayescale as bs

TRUTH = bs.datasets.CHINCHILLA_PARAMS
TARGET = 1e24
SETTINGS = bs.SamplerSettings(num_warmup=500, num_samples=500)  # 4 chains; forecast refits use the same
OUT = os.path.join(os.path.dirname(__file__), "results")


def seed_runs(setting: str, rep: int) -> bs.ScalingData:
    if setting == "ladder":
        N, D = bs.chinchilla_design(80, seed=1000 + rep)
        keep = N < 1e9
        N, D = N[keep][:16], D[keep][:16]
    else:
        rng = np.random.default_rng(5000 + rep)
        N = np.exp(rng.uniform(np.log(5e7), np.log(5e8), 12))
        D = 20 * N * np.exp(rng.normal(0, 0.3, 12))
    return bs.simulate("chinchilla", TRUTH, N=N, D=D, noise=0.02, seed=2000 + rep)


def grid_runs(setting: str, fit: bs.FitResult, budget: float) -> pd.DataFrame:
    c = budget / 4
    if setting == "ladder":
        n = bs.compute_optimal(fit, [c])[("N_opt", "median")].item() * np.array([0.25, 0.5, 2.0, 4.0])
    else:
        n = np.array([0.5e9, 1e9, 2e9, 4e9])
    return pd.DataFrame({"N": n, "D": c / (6 * n)})


def add_runs(data: bs.ScalingData, runs: pd.DataFrame, seed: int) -> bs.ScalingData:
    new = bs.simulate("chinchilla", TRUTH, N=runs["N"].to_numpy(), D=runs["D"].to_numpy(), noise=0.02, seed=seed)
    return bs.ScalingData.from_arrays(loss=np.r_[data.loss, new.loss], N=np.r_[data.N, new.N], D=np.r_[data.D, new.D])


def width_of(fit: bs.FitResult) -> tuple[float, float, float]:
    log_n = np.log(bs.optimal_allocation(fit.law, fit.draws(), [TARGET])["N_opt"][:, 0])
    lo, hi = np.quantile(log_n, [0.05, 0.95])
    return hi - lo, lo, hi


def run(setting: str, reps: range, budget: float, truth: float, settings: bs.SamplerSettings) -> pd.DataFrame:
    start = time.perf_counter()
    ladders = {rep: seed_runs(setting, rep) for rep in reps}
    first = bs.fit_batch(ladders, settings=settings)
    augmented, plans, rows = {}, {}, []
    for rep, data in ladders.items():
        fit = first[rep]
        plans[rep] = plan = bs.design(fit, compute=TARGET, budget=budget, k=4, seed=rep)
        for name, runs in {"design": plan.selected[["N", "D"]], "grid": grid_runs(setting, fit, budget)}.items():
            augmented[f"{rep}/{name}"] = add_runs(data, runs, seed=3000 + rep)
        print(f"{setting} rep {rep}: {plan.forecast.method}, {len(plan.selected)} runs, "
              f"{plan.spent / budget:.0%} of the budget ({time.perf_counter() - start:.0f} s)", flush=True)
    refits = bs.fit_batch(augmented, settings=settings)
    for rep, plan in plans.items():
        before = width_of(first[rep])[0]
        for name in ("design", "grid"):
            fit = refits[f"{rep}/{name}"]
            width, lo, hi = width_of(fit)
            spent = plan.spent if name == "design" else budget
            f = plan.forecast
            rows.append({"setting": setting, "rep": rep, "strategy": name, "before": before, "width": width,
                         "covers": lo <= truth <= hi, "budget_share": spent / budget, "converged": fit.diagnostics.ok,
                         "runs": len(plan.selected) if name == "design" else 4,
                         **({"forecast": f.width, "forecast_se": f.se, "forecast_low": f.low,
                             "forecast_high": f.high, "method": f.method, "pareto_k": f.pareto_k,
                             "chosen_set": plan.sets.loc[plan.sets["chosen"], "set"].item()}
                            if name == "design" else {})})
    print(f"{setting}: {time.perf_counter() - start:.0f} s", flush=True)
    return pd.DataFrame(rows)


def report(table: pd.DataFrame) -> None:
    setting = table["setting"].iloc[0]
    wide = table.pivot(index="rep", columns="strategy", values="width")
    summary = table.groupby("strategy").agg(width_median=("width", "median"), coverage90=("covers", "mean"),
                                            budget_share_median=("budget_share", "median"),
                                            budget_share_min=("budget_share", "min"), converged=("converged", "mean"))
    print(f"\n== {setting}: {wide.shape[0]} replications; width before the new runs (median) "
          f"{table['before'].median():.3g}")
    print(summary.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"design narrower than the grid in {(wide['design'] < wide['grid']).mean():.0%}")
    d = table[table["strategy"] == "design"]
    ratio = d["forecast"] / d["width"]
    inside = ((d["width"] >= d["forecast_low"]) & (d["width"] <= d["forecast_high"])).mean()
    within_se = (np.abs(d["width"] - d["forecast"]) <= 2 * d["forecast_se"]).mean()
    print(f"forecast / realised width: median {ratio.median():.2f}; realised inside the forecast's 90% range "
          f"{inside:.0%}; within 2 MC standard errors of the expected width {within_se:.0%}")
    print("forecast method:", d["method"].value_counts().to_dict())
    print("chosen set:", d["chosen_set"].value_counts().to_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--first", type=int, default=0, help="first replication (to run a study in parts)")
    parser.add_argument("--report", action="store_true", help="only report the saved parts of each setting, together")
    parser.add_argument("--settings", nargs="+", default=["ladder", "wide"], choices=["ladder", "wide"])
    parser.add_argument("--draws", type=int, default=SETTINGS.num_samples, help="warmup and draws of every fit")
    args = parser.parse_args()
    settings = bs.SamplerSettings(num_warmup=args.draws, num_samples=args.draws)
    tag = "" if args.draws == SETTINGS.num_samples else f"_draws{args.draws}"
    truth = np.log(bs.optimal_allocation(bs.laws.get_law("chinchilla"), {k: np.array([v]) for k, v in TRUTH.items()},
                                         [TARGET])["N_opt"][0, 0])
    if args.report:
        for setting in args.settings:
            parts = [p for p in sorted(glob.glob(os.path.join(OUT, f"design_{setting}{tag}*.csv")))
                     if tag or "_draws" not in p]
            report(pd.concat([pd.read_csv(p) for p in parts], ignore_index=True))
        return
    warnings.simplefilter("ignore", bs.ConvergenceWarning)
    os.makedirs(OUT, exist_ok=True)
    for setting in args.settings:
        reps = range(args.first, args.first + args.reps)
        table = run(setting, reps, 1e21 if setting == "ladder" else 1.9e21, truth, settings)
        part = "" if args.first == 0 else f"_from{args.first}"
        table.to_csv(os.path.join(OUT, f"design_{setting}{tag}{part}.csv"), index=False)
        report(table)


if __name__ == "__main__":
    main()
