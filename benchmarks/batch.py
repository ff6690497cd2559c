"""Batch fitting against a loop of plain NumPyro MCMC fits, timed in the same run.

Datasets of 100 runs each, simulated from spread-out Chinchilla-like laws
(alpha, beta in 0.25-0.40, E in 1.5-2.0). For each K: ``bs.fit_batch`` (4 chains
x 1000 draws after 1000 warmup, compile included) against a loop of fresh
``numpyro.infer.MCMC(NUTS(...))`` objects on the same model and data (vectorised
chains, dense mass, the same target acceptance and number of draws). The loop is timed on the first
``--loop-max`` datasets and scaled per dataset.

Run: ``python benchmarks/batch.py --k 8 64``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import jax
import numpy as np
import numpyro
from numpyro.infer import MCMC, NUTS

import bayescale as bs
from bayescale.model import build_model, make_spec, model_data
from bayescale.sampling import SamplerSettings
from bayescale.start import initial_points


def datasets(k: int, seed: int = 0) -> dict[str, bs.ScalingData]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(k):
        truth = {"E": rng.uniform(1.5, 2.0), "A": rng.uniform(200, 600), "B": rng.uniform(200, 600),
                 "alpha": rng.uniform(0.25, 0.40), "beta": rng.uniform(0.25, 0.40)}
        N, D = bs.chinchilla_design(100, seed=seed * 10_000 + i)
        out[f"d{i}"] = bs.simulate("chinchilla", truth, N=N, D=D, noise=0.02, seed=i)
    return out


def mcmc_loop(data: dict[str, bs.ScalingData], draws: int) -> float:
    spec = make_spec(bs.laws.get_law("chinchilla"), bs.likelihoods.student_t())
    model = build_model(spec)
    start = time.perf_counter()
    with jax.enable_x64(True):
        for i, d in enumerate(data.values()):
            md = model_data(d, spec.law)
            one = jax.tree_util.tree_map(lambda a: a[None], md)
            z0 = initial_points(spec, one, np.asarray(jax.random.PRNGKey(i))[None], 4)[0]
            kernel = NUTS(model, dense_mass=True, target_accept_prob=SamplerSettings().target_accept_prob)
            mcmc = MCMC(kernel, num_warmup=draws, num_samples=draws, num_chains=4,
                        chain_method="vectorized", progress_bar=False)
            mcmc.run(jax.random.PRNGKey(i), md, init_params={"z": z0})
            jax.block_until_ready(mcmc.get_samples())
    return (time.perf_counter() - start) / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--loop-max", type=int, default=8)
    parser.add_argument("--strategy", default="auto")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, backend {jax.default_backend()}, devices {jax.device_count()}")
    print(f"versions: jax {jax.__version__}, numpyro {numpyro.__version__}, bayescale {bs.__version__}")
    for k in args.k:
        data = datasets(k)
        loop_s = mcmc_loop(dict(list(data.items())[: args.loop_max]), args.draws)
        start = time.perf_counter()
        result = bs.fit_batch(data, num_warmup=args.draws, num_samples=args.draws, num_chains=4,
                              strategy=args.strategy, progress=False)
        batch_s = time.perf_counter() - start
        diag = result.status()
        ok = (diag["max_r_hat"] <= 1.01).mean()
        min_ess = diag["min_ess_bulk"].min()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"K={k}: batch {batch_s:.1f} s ({60 * k / batch_s:.1f} datasets/min, {batch_s / k:.2f} s/dataset);"
              f" MCMC loop {loop_s:.2f} s/dataset -> speed-up {loop_s * k / batch_s:.1f}x;"
              f" R-hat<=1.01 on {ok:.0%}; min bulk ESS {min_ess:.0f} ({min_ess / (batch_s / k):.0f}/s per dataset);"
              f" lane efficiency {result.stats.get('lane_efficiency', float('nan')):.2f}; peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
