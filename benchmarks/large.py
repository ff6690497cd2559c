"""One fit of a very large table: time, peak memory and the saved file's size.

50,000 runs simulated from the Chinchilla law, fitted with the default sampler (4 chains x 1000
draws), saved to netCDF. Peak memory is the process's maximum resident set size.

Run: ``python benchmarks/large.py [--runs 50000]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import bayescale as bs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50_000)
    args = parser.parse_args()
    N, D = bs.chinchilla_design(args.runs, seed=0)
    data = bs.simulate("chinchilla", bs.datasets.CHINCHILLA_PARAMS, N=N, D=D, noise=0.02, seed=1)
    start = time.perf_counter()
    fit = bs.fit(data, seed=0)
    fitted = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fit.nc")
        fit.save(path)
        size = os.path.getsize(path)
        start = time.perf_counter()
        bs.load(path)
        loaded = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"{args.runs} runs, 4 x 1000 draws: fit {fitted:.0f} s, peak RSS {peak:.2f} GiB, "
          f"file {size / 2**20:.0f} MiB, load {loaded:.1f} s; converged {fit.diagnostics.ok}")


if __name__ == "__main__":
    main()
