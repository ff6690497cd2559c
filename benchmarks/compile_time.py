"""Where a cold fit's compilation goes, program by program, and what one leapfrog step costs.

On 240 Chinchilla-like runs (``fit_vs_bootstrap.simulate`` with 5% outliers), in a fresh
process with the persistent cache off: the programs a first fit builds and their backend
compile seconds (JAX's own counters); compile time of the point-fit initialiser, the
NUTS init and sampling programs, and the program that builds InferenceData; then the
cost of one gradient of the potential against the measured time per leapfrog step.
Run: ``BAYESCALE_COMPILATION_CACHE=0 python benchmarks/compile_time.py``.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import bayescale as bs
from bayescale.model import bucket_size, make_spec, model_data, potential_fn
from bayescale.posterior import lower_fit_idata
from bayescale.sampling import SamplerSettings, compile_ahead
from bayescale.start import _gauss_newton, initial_points, start_bounds
from fit_vs_bootstrap import simulate


def timed(label: str, fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"{label:45s} {seconds:6.2f} s")
    return seconds


def count_first_fit(data: bs.ScalingData) -> None:
    """Programs built (lowered to XLA) and backend compile seconds of one fit in a process that has compiled nothing."""
    built, seconds = [], []

    def listener(name: str, duration: float, **kwargs: object) -> None:
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            built.append(duration)
        elif name == "/jax/core/compile/backend_compile_duration":
            seconds.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    start = time.perf_counter()
    bs.fit(data, seed=0)
    wall = time.perf_counter() - start
    jax.monitoring.unregister_event_duration_listener(listener)
    print(f"first fit: {wall:.2f} s wall, {len(built)} programs, {sum(seconds):.2f} s of backend compilation"
          f" (on two threads), {sum(built):.2f} s lowering")


def main() -> None:
    data = simulate(outliers=0.05)
    count_first_fit(data)
    jax.clear_caches()
    settings = SamplerSettings()
    spec = make_spec(bs.laws.get_law("chinchilla"), bs.likelihoods.student_t())
    chains, k = settings.num_chains, len(spec.latents)
    with jax.enable_x64(True):
        md = model_data(data, spec.law, size=bucket_size(data.n))
        lanes = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (chains, *a.shape)), md)
        keys = jax.random.split(jax.random.PRNGKey(0), chains)
        z_shape = jax.ShapeDtypeStruct((chains, k), md.log_y.dtype)
        potential = potential_fn(spec)
        total = 0.0
        one = jax.tree_util.tree_map(lambda a: a[None], md)
        total += timed("priors' bounds (start_bounds)", lambda: start_bounds(spec))
        total += timed("point fit's Gauss-Newton terms (32 starts)", lambda: _gauss_newton.lower(
            spec, one, jax.ShapeDtypeStruct((1, 32, len(spec.law.params)), md.log_y.dtype), "huber", 1e-3).compile())
        total += timed("NUTS init + sampling programs",
                       lambda: compile_ahead(potential, z_shape, lanes, keys, settings.nuts, strategy="loop"))
        total += timed("InferenceData program (predictive, log-lik)",
                       lambda: lower_fit_idata(spec, md, keys[1]).compile())
        print(f"{'sum':45s} {total:6.2f} s")
        grad = jax.grad(potential)
        z = initial_points(spec, one, np.asarray(keys[:1]), chains)[0, 0]

        @jax.jit
        def many(z: jax.Array) -> jax.Array:  # 1000 gradients inside one program: no dispatch cost
            return jax.lax.fori_loop(0, 1000, lambda i, v: v + 1e-9 * grad(v, md), z)

        many(z).block_until_ready()
        start = time.perf_counter()
        many(z).block_until_ready()
        per_grad = (time.perf_counter() - start) / 1000
    start = time.perf_counter()
    fit = bs.fit(data, seed=0)
    wall = time.perf_counter() - start
    per_iteration = float(fit.idata.sample_stats["n_steps"].mean())
    total_steps = per_iteration * chains * (settings.num_warmup + settings.num_samples)
    cores = min(chains, os.cpu_count() or 1)
    print(f"one gradient of the potential (in a compiled loop)  {1e6 * per_grad:6.1f} us")
    print(f"warm fit: {wall:.2f} s, {per_iteration:.1f} leapfrog steps/iteration, {1e6 * wall * cores / total_steps:.1f} us"
          f" per leapfrog step per core (everything in the fit included)")


if __name__ == "__main__":
    main()
