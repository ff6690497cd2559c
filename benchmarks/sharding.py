"""Lanes over several devices: the vectorised sampler split over devices against the loop, same run.

Run with host devices standing in for accelerators (the machine's cores are shared between them):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/sharding.py

Two datasets of 48 Chinchilla-like runs, 4 chains x 500/500 each (8 lanes, 2 per device): wall time of
a batch fitted with ``strategy="vmap"`` (lanes split over the devices) and with ``strategy="loop"``,
each once cold (compilation included) and once warm, and the largest R-hat of each.
"""

from __future__ import annotations

import time

import jax

import bayescale as bs

def main() -> None:
    data = {}
    for g in range(2):
        N, D = bs.chinchilla_design(48, seed=g)
        data[f"g{g}"] = bs.simulate("chinchilla", bs.datasets.CHINCHILLA_PARAMS, N=N, D=D, seed=g)
    print(f"devices: {jax.device_count()} ({jax.default_backend()})")
    for strategy in ("vmap", "loop"):
        for run in ("cold", "warm"):
            start = time.perf_counter()
            result = bs.fit_batch(data, strategy=strategy, num_warmup=500, num_samples=500, num_chains=4,
                                  seed=0 if run == "cold" else 1)
            seconds = time.perf_counter() - start
            r_hat = max(result[g].diagnostics.max_r_hat for g in result.order)
            print(f"{strategy:5s} {run}: {seconds:6.1f} s, R-hat max {r_hat:.3f}", flush=True)


if __name__ == "__main__":
    main()
