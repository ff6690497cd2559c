"""Loss curves across model sizes (issue 28), on the curves of Luo et al. 2025 (bundled).

1. Across sizes: the annealing law with N as a covariate, fitted to the three fitting curves of 25M and
   100M plus the first 20% of each 400M fitting curve; each 400M curve's rest predicted (continued from its
   prefix), scored as ``curves.py`` scores (mean relative error of the median, pointwise 90% coverage,
   final loss inside its band). Beside it: the three 400M prefixes fitted alone.
2. Envelope (Chinchilla's first approach): the cosine curves of all three sizes (25M and 100M to 24k and 72k
   steps, 400M to 24k) fitted across sizes; N_opt(C) read from the envelope of predicted cosine runs, beside
   a parametric fit (Chinchilla's law, 4 x 500/500) of the final losses of the nine runs whose schedule
   decays to its end, and the iso-FLOP answer read from checkpoints of the same cosine curves (the only
   way these runs give iso-FLOP profiles: the sizes are 4x apart and the curves end at 24k or 72k steps).

The data give no batch size: ``--tokens-per-step`` (default 2**19) sets D = B x steps for every method
alike, so the comparison holds for any B while the absolute N_opt scales with it.

    python benchmarks/curve_sizes.py --out benchmarks/results/curve_sizes.csv
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from curves import FITTING, fit_and_show, score

import bayescale as bs

SIZES = {"25M": 25e6, "100M": 100e6, "400M": 400e6}
DECAYED = ("cosine_24000", "cosine_72000", "wsd_20000_24000", "wsdld_20000_24000")


def fit(curves: bs.LossCurves, what: str, settings: bs.SamplerSettings, noise: str = "ar1") -> tuple:
    return fit_and_show(curves, what, settings, "lr_annealing", noise=noise)


def across_sizes(settings: bs.SamplerSettings, prefix: float) -> pd.DataFrame:
    curves = bs.datasets.loss_curves(list(SIZES))
    big = [f"400M {f}" for f in FITTING]
    seen = curves.subset([f"{s} {f}" for s in ("25M", "100M") for f in FITTING] + big)
    for run in big:
        seen = seen.prefix(run, prefix)
    last = {run: int(seen.table.loc[seen.table["run"] == run, "step"].max()) for run in big}
    rows = []
    for what, data, noise in [("25M + 100M + 400M prefixes", seen, "ar1"),
                              ("25M + 100M + 400M prefixes", seen, "independent"),
                              ("400M prefixes alone", seen.subset(big), "ar1")]:
        result, seconds, r_hat = fit(data, f"{what} ({noise})", settings, noise)
        for run in big:
            rows.append({"fit": what, "noise": noise, "fit_s": seconds, "r_hat": r_hat,
                         **score(result, curves, run, after=last[run])})
    return pd.DataFrame(rows)


def envelope(settings: bs.SamplerSettings, batch: float, budgets: np.ndarray) -> pd.DataFrame:
    curves = bs.datasets.loss_curves(list(SIZES))
    cosine = [r for r in curves.runs if r.split()[1].startswith("cosine_")]
    result, seconds, _ = fit(curves.subset(cosine), "cosine curves of three sizes", settings)
    start = time.perf_counter()
    env = bs.curve_envelope(result, budgets, tokens_per_step=batch)
    print(f"envelope: {time.perf_counter() - start:.1f} s", flush=True)
    parts = {"envelope (cosine curves)": env["N_opt"]}
    # Parametric: the final loss of every run whose schedule decays to its end.
    finals = curves.table.groupby("run").tail(1)
    finals = finals[finals["run"].str.split().str[1].isin(DECAYED)]
    table = pd.DataFrame({"N": finals["N"], "D": (finals["step"] + 1) * batch, "loss": finals["loss"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        param = bs.fit(table, law="chinchilla", seed=0, num_warmup=500, num_samples=500, num_chains=4)
    parts[f"parametric ({len(table)} final losses)"] = bs.compute_optimal(param, budgets)["N_opt"]
    # Iso-FLOP from checkpoints: 25M cosine_72000, 100M and 400M cosine_24000, at budgets they all reach.
    runs = {"25M": "25M cosine_72000", "100M": "100M cosine_24000", "400M": "400M cosine_24000"}
    rows = []
    for steps_400 in (2400, 2800, 3200, 3600, 4000, 4400):
        c = 6 * SIZES["400M"] * batch * steps_400
        for size, run in runs.items():
            logged = curves.table[curves.table["run"] == run]
            at = logged.iloc[int(np.argmin(np.abs(logged["step"] * 6 * SIZES[size] * batch - c)))]
            rows.append({"N": SIZES[size], "D": at["step"] * batch, "loss": at["loss"], "budget": c})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        iso = bs.fit_isoflop(pd.DataFrame(rows), group="budget", seed=0, num_warmup=500, num_samples=2000,
                             num_chains=4)
    parts["iso-FLOP (checkpoints, 6 budgets)"] = iso.n_opt(budgets)["N_opt"]
    out = pd.concat(parts, names=["method"]).reset_index()
    out["edge_share"] = np.r_[env[("edge_share", "")].to_numpy(), np.full(len(out) - len(env), np.nan)]
    out["curve_fit_s"] = seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--prefix", type=float, default=0.2)
    parser.add_argument("--tokens-per-step", type=float, default=2.0**19)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = bs.SamplerSettings(num_warmup=args.draws, num_samples=args.draws, num_chains=args.chains, seed=0)
    pd.set_option("display.width", 200)
    sizes = across_sizes(settings, args.prefix)
    print(sizes.round(4).to_string())
    print(sizes.groupby(["fit", "noise"]).agg(mre=("mre", "mean"), cover90=("cover90", "mean"),
                                              finals_inside=("final_inside", "sum")).round(4).to_string())
    env = envelope(settings, args.tokens_per_step, np.array([3e18, 1e19, 3e19, 1e20]))
    print(env.to_string())
    if args.out:
        sizes.assign(part="across sizes").to_csv(args.out, index=False)
        env.to_csv(args.out.with_name(args.out.stem + "_envelope.csv"), index=False)


if __name__ == "__main__":
    main()
