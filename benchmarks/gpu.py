"""Accelerator benchmark: batch throughput, lane efficiency and float32 against float64.

Records, as JSON:
- the device, backend and versions;
- ``bs.fit_batch`` on ``--k`` datasets (default 1000) of 100 Chinchilla-like runs each
  (``benchmarks/batch.py``'s generator), 4 chains x ``--draws`` draws after as many warmup
  iterations, vmapped lanes in float32: wall time (compile included), datasets per
  minute, lane efficiency (mean over max leapfrog steps across lanes) and the share of
  datasets at R-hat <= 1.01;
- float32 against float64 on the first ``--compare`` datasets: per parameter, the largest
  difference of posterior medians in posterior sds, and the range of sd ratios.

Run: ``bash benchmarks/gpu.sh`` (it calls this script with ``PYTHONPATH=src``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import jax
import numpy as np
import numpyro

import bayescale as bs
from batch import datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--compare", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    device = jax.devices()[0]
    record = {
        "date": datetime.date.today().isoformat(),
        "device": getattr(device, "device_kind", str(device)),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpyro": numpyro.__version__,
                     "bayescale": bs.__version__},
    }
    print(record)
    data = datasets(args.k)
    settings = bs.SamplerSettings(num_warmup=args.draws, num_samples=args.draws, strategy="vmap")
    start = time.perf_counter()
    batch = bs.fit_batch(data, settings=settings, precision="float32")
    wall = time.perf_counter() - start
    status = batch.status()
    record["throughput"] = {
        "datasets": args.k, "chains": 4, "draws": args.draws, "wall_s": wall,
        "datasets_per_min": 60 * args.k / wall, "lane_efficiency": batch.stats.get("lane_efficiency"),
        "r_hat_ok": float((status["max_r_hat"] <= 1.01).mean()),
    }
    print(record["throughput"])
    names = list(data)[: args.compare]
    subset = {n: data[n] for n in names}
    double = bs.fit_batch(subset, settings=settings, precision="float64")
    agreement = {}
    for param in ("E", "alpha", "beta", "A", "B", "sigma"):
        shift, ratio = [], []
        for n in names:
            d32, d64 = batch[n].draws(param), double[n].draws(param)
            shift.append(abs(np.median(d32) - np.median(d64)) / d64.std())
            ratio.append(d32.std() / d64.std())
        agreement[param] = {"max_median_shift_sd": float(max(shift)), "sd_ratio": [float(min(ratio)), float(max(ratio))]}
    record["float32_vs_float64"] = agreement
    print(agreement)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu_{record['date']}.json")
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
