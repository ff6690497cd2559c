"""Whole loss curves across learning-rate schedules (issue 28), on the curves of Luo et al. 2025 (bundled).

For one model size: fit a curve law to the three fitting schedules (cosine_24000, constant_24000,
wsdcon_9), predict the other six at every logged step, and score the median curve's mean relative
error, the pointwise 90% coverage, and whether each held-out run's final loss lies inside its 90% band.
With ``--prefix``, also each held-out run predicted from the three curves plus its first 30/50/70%.

    python benchmarks/curves.py --size 25M --law multi_power --noise ar1 --out benchmarks/results/curves.csv
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayescale as bs
from bayescale.curve_fit import fit_curves

FITTING = ("cosine_24000", "constant_24000", "wsdcon_9")


def score(result, curves: bs.curves.LossCurves, run: str, *, after: int = -1, seed: int = 0) -> dict:  # noqa: ANN001
    """Median's mean relative error, 90% pointwise coverage and the final point's 90% band, over ``run``'s
    logged points after step ``after`` (a new run's schedule when ``after`` < 0, else the fitted prefix continued)."""
    rows = curves.table[(curves.table["run"] == run) & (curves.table["step"] > after)]
    steps, loss = rows["step"].to_numpy(), rows["loss"].to_numpy()
    if after < 0:
        draws = result.predict_draws(steps, schedule=curves.schedules[run], seed=seed)
    else:
        draws = result.predict_draws(steps, run=run, seed=seed)
    lo, med, hi = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
    inside = (lo <= loss) & (loss <= hi)
    return {"run": run, "points": len(steps), "mre": float(np.mean(np.abs(med - loss) / loss)),
            "cover90": float(inside.mean()), "final_inside": bool(inside[-1]),
            "final_error": float(med[-1] / loss[-1] - 1), "final_width": float((hi[-1] - lo[-1]) / loss[-1])}


def fit_and_show(data: bs.curves.LossCurves, what: str, settings: bs.SamplerSettings, law: str, **options: object):  # noqa: ANN201
    """Fit ``data`` (convergence warnings silenced: the R-hat is printed and returned), print its time,
    diagnostics and summary; return the result, its seconds and its largest R-hat."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        result = fit_curves(data, law, settings=settings, **options)
    seconds = time.perf_counter() - start
    table = result.diagnostics.table
    print(f"{what}: {seconds:.0f} s, points {len(data.table)}, r_hat max {table['r_hat'].max():.3f}, "
          f"ess min {table['ess_bulk'].min():.0f}, divergences {result.diagnostics.divergences}", flush=True)
    print(result.summary().round(5).to_string(), flush=True)
    if result.misfit is not None:
        print("structural error tau (5/50/95%):", np.quantile(result.misfit, [0.05, 0.5, 0.95]).round(5), flush=True)
    if result.schedule_misfit is not None:
        print("across schedules tau_s (5/50/95%):", np.quantile(result.schedule_misfit, [0.05, 0.5, 0.95]).round(5),
              flush=True)
    return result, seconds, float(table["r_hat"].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="25M")
    parser.add_argument("--law", default="multi_power")
    parser.add_argument("--noise", default="ar1")
    parser.add_argument("--block", type=int, default=bs.curves.BLOCK, help="steps per block of the multi-power sum")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--prefix", action="store_true", help="also predict each held-out run from a prefix")
    parser.add_argument("--structural", action="store_true",
                        help="the planning mode: the structural error learned from refits in steps and across schedules")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    curves = bs.datasets.loss_curves(args.size)
    settings = bs.SamplerSettings(num_warmup=args.draws, num_samples=args.draws, num_chains=args.chains, seed=0)
    rows = []

    def fit(data: bs.curves.LossCurves, what: str):  # noqa: ANN202
        return fit_and_show(data, what, settings, args.law, noise=args.noise, block=args.block,
                            structural=args.structural)

    base, seconds, r_hat = fit(curves.subset(list(FITTING)), "three fitting curves")
    held = [r for r in curves.runs if r not in FITTING]
    for run in held:
        rows.append({"size": args.size, "law": args.law, "noise": args.noise, "block": args.block,
                     "structural": args.structural, "mode": "new schedule",
                     "fit_s": seconds, "r_hat": r_hat, **score(base, curves, run)})
    if args.prefix:
        for run in held:
            last = curves.table.loc[curves.table["run"] == run, "step"].max()
            for fraction in (0.3, 0.5, 0.7):
                data = bs.curves.LossCurves(
                    pd.concat([curves.subset(list(FITTING)).table,
                               curves.prefix(run, fraction).subset([run]).table], ignore_index=True),
                    {**{r: curves.schedules[r] for r in FITTING}, run: curves.schedules[run]})
                result, s, rh = fit(data, f"{run} prefix {fraction}")
                rows.append({"size": args.size, "law": args.law, "noise": args.noise, "block": args.block,
                             "structural": args.structural, "mode": f"prefix {fraction}",
                             "fit_s": s, "r_hat": rh, **score(result, curves, run, after=int(fraction * last))})
    table = pd.DataFrame(rows)
    print(table.round(4).to_string())
    summary = table.groupby("mode").agg(mre=("mre", "mean"), cover90=("cover90", "mean"),
                                        finals_inside=("final_inside", "sum"), runs=("run", "size"))
    print(summary.round(4).to_string())
    if args.out:
        table.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)


if __name__ == "__main__":
    main()
