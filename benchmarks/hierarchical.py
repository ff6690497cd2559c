"""Hierarchical fit: time, leapfrog steps and mixing on 5 groups x 8 Chinchilla runs.

The data are those of tests/test_hierarchical.py (E, A, B drawn per group around the
published law, 2% log-noise); alpha and beta shared, E, A and B pooled, 4 chains x 1000
draws after 1000 warmup. Two fits in one process: the first includes compilation.
Run: ``python benchmarks/hierarchical.py``.
"""

from __future__ import annotations

import platform
import time
import warnings

import jax
import numpy as np
import numpyro

import bayescale as bs

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def groups() -> dict[str, bs.ScalingData]:
    rng = np.random.default_rng(3)
    data = {}
    for g in range(5):
        t = {**CHINCHILLA, "E": 1.8 * np.exp(0.08 * rng.standard_normal()),
             "A": 406.4 * np.exp(0.3 * rng.standard_normal()), "B": 410.7 * np.exp(0.2 * rng.standard_normal())}
        N, D = bs.chinchilla_design(8, seed=10 + g)
        data[f"g{g}"] = bs.simulate("chinchilla", t, N=N, D=D, noise=0.02, seed=20 + g)
    return data


def main() -> None:
    print(f"python {platform.python_version()}, jax {jax.__version__}, numpyro {numpyro.__version__},"
          f" {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)")
    data = groups()
    for label, seed in (("cold", 0), ("warm", 1)):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = bs.fit_hierarchical(data, shared=["alpha", "beta"], pooled=["E", "A", "B"], seed=seed)
        wall = time.perf_counter() - start
        diag = result.diagnostics
        stats = result.idata.sample_stats
        steps = float((stats["n_steps"] if "n_steps" in stats else stats["tree_depth"]).mean())
        print(f"{label}: {wall:.1f} s, max R-hat {diag.max_r_hat:.3f}, min bulk ESS {diag.min_ess_bulk:.0f},"
              f" {diag.divergences} divergences, {steps:.0f} leapfrog steps/iteration,"
              f" min ESS/s {diag.min_ess_bulk / wall:.0f}")


if __name__ == "__main__":
    main()
