"""Cost of the planning mode: one cold fit of 240 Chinchilla-like runs (5% outliers), plain or with the
structural error, in a fresh process with the persistent compilation cache off.

Run each as its own process and compare whole-process times (for example with ``/usr/bin/time -v``):
``BAYESCALE_COMPILATION_CACHE=0 python benchmarks/planning_cost.py [--structural]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import bayescale as bs
from fit_vs_bootstrap import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--structural", action="store_true", help="the planning mode (bs.fit(structural=True))")
    args = parser.parse_args()
    data = simulate(outliers=0.05)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        result = bs.fit(data, seed=0, structural=args.structural)
    mode = "planning" if args.structural else "plain"
    print(f"{mode}: {time.perf_counter() - start:.1f} s in the fit, {data.n} runs, misfit {result.misfit is not None}")


if __name__ == "__main__":
    main()
