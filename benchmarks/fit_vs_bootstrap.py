"""One Bayesian fit against the bootstrap it replaces, timed in the same run; and refit speed.

Data: 240 runs simulated from the published Chinchilla law (N in 7e7-1.6e10,
C in 6e18-3e21, 2% log-noise, seed 0); with ``--outliers f`` a fraction f of the
runs is shifted by +-5-15% in loss, as mislogged or diverged real runs are.

- bayescale: ``bs.fit`` with the default Student-t (nu=4), 4 chains x 1000 draws
  after 1000 warmup. Cold: the first fit in a fresh process with an empty
  persistent compilation cache (a fresh temporary folder); warm: the same fit
  again with another seed; refit: the table one run shorter, another seed;
  second process: a new process fitting the same table with the cache the first
  one filled.
- baseline: the fair modern bootstrap, 4000 resamples of the Huber fit
  (delta=1e-3) on log-loss, each minimised by SciPy L-BFGS-B with a
  JIT-compiled JAX value-and-gradient, started from the full-data fit.

Prints wall times, their ratios and the posterior's bulk ESS per second.
Run: ``python benchmarks/fit_vs_bootstrap.py [--resamples 4000] [--outliers 0.05]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy
import scipy.optimize

import bayescale as bs


def simulate(n: int = 240, seed: int = 0, outliers: float = 0.0) -> bs.ScalingData:
    """Chinchilla-law runs with 2% log-normal noise; a fraction ``outliers`` shifted by +-5-15%."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    C = np.exp(rng.uniform(np.log(6e18), np.log(3e21), n))
    D = C / (6 * N)
    loss = (1.69 + 406.4 * N**-0.34 + 410.7 * D**-0.28) * np.exp(0.02 * rng.standard_normal(n))
    bad = np.random.default_rng(seed + 1).random(n) < outliers
    shift = np.random.default_rng(seed + 2).uniform(0.05, 0.15, n) * np.random.default_rng(seed + 3).choice([-1, 1], n)
    loss = np.where(bad, loss * (1 + shift), loss)
    return bs.ScalingData.from_arrays(loss=loss, N=N, D=D)


def timed_fit(data: bs.ScalingData, seed: int) -> tuple[bs.FitResult, float]:
    start = time.perf_counter()
    result = bs.fit(data, seed=seed)
    return result, time.perf_counter() - start


def bootstrap(data: bs.ScalingData, resamples: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Huber/L-BFGS-B bootstrap in the published parametrisation (e, a, b, alpha, beta)."""
    with jax.enable_x64(True):
        log_n, log_d, log_y = (jnp.asarray(np.log(v)) for v in (data.N, data.D, data.loss))
        delta = 1e-3

        def objective(theta: jax.Array, weights: jax.Array) -> jax.Array:
            e, a, b, alpha, beta = theta
            pred = jnp.logaddexp(e, jnp.logaddexp(a - alpha * log_n, b - beta * log_d))
            r = jnp.abs(pred - log_y)
            return jnp.sum(weights * jnp.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)))

        value_and_grad = jax.jit(jax.value_and_grad(objective))

        def solve(x0: np.ndarray, weights: np.ndarray) -> np.ndarray:
            fun = lambda x: tuple(np.asarray(v, dtype=float) for v in value_and_grad(jnp.asarray(x), weights))  # noqa: E731
            return scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B").x

        start = time.perf_counter()
        full = solve(np.array([0.5, 6.0, 6.0, 0.34, 0.28]), jnp.ones(data.n))
        rng = np.random.default_rng(seed)
        out = np.empty((resamples, 5))
        for i in range(resamples):
            counts = np.bincount(rng.integers(0, data.n, data.n), minlength=data.n)
            out[i] = solve(full, jnp.asarray(counts, dtype=float))
        return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resamples", type=int, default=4000)
    parser.add_argument("--outliers", type=float, default=0.0)
    parser.add_argument("--second-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = simulate(outliers=args.outliers)
    if args.second_process:
        print(timed_fit(data, seed=0)[1])
        return
    cache_dir = tempfile.mkdtemp(prefix="bayescale-cache-")
    os.environ[bs.cache.ENV] = cache_dir

    result, fit_s = timed_fit(data, seed=0)
    diag = result.diagnostics
    _, warm_s = timed_fit(data, seed=1)
    _, refit_s = timed_fit(data.subset(np.arange(data.n) < data.n - 1), seed=2)
    second = subprocess.run([sys.executable, __file__, "--second-process", "--outliers", str(args.outliers)],
                            capture_output=True, text=True, check=True, env=os.environ)
    second_s = float(second.stdout.strip().splitlines()[-1])

    boot, boot_s = bootstrap(data, args.resamples)
    ess_per_s = diag.min_ess_bulk / fit_s

    print(f"machine: {platform.machine()} {platform.processor() or ''} cores={jax.local_device_count()}/{os.cpu_count()}")
    print(f"versions: python {platform.python_version()}, jax {jax.__version__}, numpyro {__import__('numpyro').__version__},"
          f" scipy {scipy.__version__}, bayescale {bs.__version__}")
    print(f"data: {data.n} runs, outlier fraction {args.outliers}")
    print(f"bayescale fit (4x1000, cold: fresh process, empty cache): {fit_s:.1f} s; max R-hat {diag.max_r_hat:.3f},"
          f" min bulk ESS {diag.min_ess_bulk:.0f}, divergences {diag.divergences}, mean leapfrog steps {diag.mean_steps:.1f}")
    print(f"warm (same table, seed 1): {warm_s:.1f} s; refit one run shorter, seed 2: {refit_s:.1f} s"
          f" ({refit_s / warm_s:.2f}x warm); second process with the cache: {second_s:.1f} s ({second_s / fit_s:.2f}x cold)")
    print(f"bootstrap ({args.resamples} Huber/L-BFGS-B resamples): {boot_s:.1f} s ({1e3 * boot_s / args.resamples:.1f} ms each)")
    print(f"speed-up (bootstrap / posterior): {boot_s / fit_s:.1f}x cold; {boot_s / warm_s:.1f}x warm;"
          f" {boot_s / second_s:.1f}x second process")
    print(f"posterior min bulk ESS per second: {ess_per_s:.0f}")
    print("alpha: posterior 95% [{:.3f}, {:.3f}], bootstrap 95% [{:.3f}, {:.3f}]".format(
        *np.quantile(result.draws("alpha"), [0.025, 0.975]), *np.quantile(boot[:, 3], [0.025, 0.975])))


if __name__ == "__main__":
    main()
