"""Is the Student-t over-coverage in the SBC tables real? Exact posteriors on many datasets.

The power law has three latents, so its posterior can be computed exactly by importance
sampling (the SciPy reference of ``tests/test_calibration.py``). For ``--num`` datasets
with truths from the priors (textbook SBC: the exact posterior must cover at the nominal
rate), this prints the coverage of the exact posterior, then fits the first ``--nuts``
datasets with ``fit_batch`` and prints how far NUTS's ranks are from the exact ones.

Run: ``python benchmarks/exact_sbc.py --num 1000 --nuts 300 [--likelihood normal]``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import pandas as pd

import bayescale as bs
from bayescale import calibration

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from test_calibration import exact_power_posterior  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--nuts", type=int, default=300)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--likelihood", default="student_t", choices=["student_t", "normal"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    truths = calibration.draw_truths("power", args.num, seed=args.seed, source="prior")
    datasets = calibration.simulate_datasets("power", truths, args.likelihood, args.runs, seed=args.seed)
    truth = np.stack([truths["a"], np.log(truths["K"]), truths["sigma"]], -1)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    exact = []
    for i, data in enumerate(datasets.values()):
        ref, w = exact_power_posterior(data, 40_000, rng, nu=4.0 if args.likelihood == "student_t" else None)
        exact.append(w @ (ref < truth[i]))
    exact = pd.DataFrame(exact, index=truths.index, columns=["a", "K", "sigma"])
    print(f"exact posterior, {args.num} datasets, {args.likelihood} ({time.perf_counter() - start:.0f} s)")
    cal = calibration.Calibration("power", truths, exact, pd.DataFrame())
    print(pd.concat([cal.coverage(), cal.uniformity()["p_value"]], axis=1).round(3).to_string())
    names = list(truths.index[: args.nuts])
    start = time.perf_counter()
    batch = bs.fit_batch({n: datasets[n] for n in names}, law="power", likelihood=args.likelihood,
                         num_warmup=500, num_samples=500, seed=args.seed, progress=False)
    nuts = calibration.rank_statistics(batch, truths.loc[names])
    same_exact = calibration.Calibration("power", truths.loc[names], exact.loc[names], pd.DataFrame())
    print(f"\nNUTS (fit_batch 4x500) on the first {len(names)} ({time.perf_counter() - start:.0f} s)")
    print(pd.concat([nuts.coverage(), same_exact.coverage().add_prefix("exact ")], axis=1).round(3).to_string())
    diff = nuts.ranks[["a", "K", "sigma"]] - exact.loc[names]
    print("rank(NUTS) - rank(exact): mean", diff.mean().round(4).to_dict(), "sd", diff.std().round(4).to_dict(),
          "max |.|", diff.abs().max().round(3).to_dict())


if __name__ == "__main__":
    main()
