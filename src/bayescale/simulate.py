"""Simulated training runs from a law with known parameters (for tests, demos and calibration)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .data import ScalingData, fill_covariates
from .laws import Law, get_law

__all__ = ["simulate", "chinchilla_design"]


def chinchilla_design(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A Chinchilla-like design: N log-uniform in 7e7-1.6e10 parameters, C in 6e18-3e21 FLOPs.

    Returns:
        ``(N, D)`` with ``D = C/(6N)`` tokens, each of shape ``(n,)``.
    """
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    C = np.exp(rng.uniform(np.log(6e18), np.log(3e21), n))
    return N, C / (6.0 * N)


def simulate(
    law: str | Law,
    params: Mapping[str, float],
    *,
    N: Any = None,
    D: Any = None,
    C: Any = None,
    N_total: Any = None,
    U: Any = None,
    noise: float = 0.02,
    outlier_fraction: float = 0.0,
    outlier_scale: float = 0.3,
    nu: float | None = None,
    seed: int = 0,
) -> ScalingData:
    """Runs whose loss follows ``law`` with multiplicative log-normal noise.

    Args:
        law: law name or :class:`~bayescale.laws.Law`.
        params: true natural parameters, e.g. ``{"E": 1.69, "A": 406.4, ...}``.
        N, D, C: covariates (parameters, tokens, FLOPs); missing ones are derived
            with ``C = 6·N·D``.
        N_total: total parameters of mixture-of-experts runs (for the ``moe`` law).
        U: unique tokens (for the ``data_constrained`` law).
        noise: standard deviation of the noise on log-loss.
        outlier_fraction: fraction of runs whose log-loss is shifted up by
            ``outlier_scale`` (bad runs).
        outlier_scale: the shift of corrupted runs, on log-loss.
        nu: Student-t noise with ``nu`` degrees of freedom and scale ``noise``
            instead of Gaussian (the generative model of the default likelihood).
        seed: PRNG seed.

    Returns:
        :class:`~bayescale.data.ScalingData` of the simulated runs.
    """
    law = get_law(law)
    missing = [p for p in law.params if p not in params]
    if missing:
        raise ValueError(f"simulate: missing true values for {missing}")
    n_arr, d_arr, c_arr = (None if v is None else np.asarray(v, dtype=float) for v in (N, D, C))
    n_arr, d_arr, c_arr = fill_covariates(n_arr, d_arr, c_arr)
    n_total, u_arr = (None if v is None else np.asarray(v, dtype=float) for v in (N_total, U))
    covs = {"N": n_arr, "D": d_arr, "C": c_arr, "N_total": n_total, "U": u_arr}
    with jax.enable_x64(True):
        log_x = {c: jnp.log(jnp.asarray(covs[c])) for c in law.covariates}
        mean = np.asarray(law.log_mean({k: jnp.asarray(float(v)) for k, v in params.items()}, log_x))
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(mean.shape) if nu is None else rng.standard_t(nu, mean.shape)
    log_loss = mean + noise * eps
    bad = rng.random(mean.shape) < outlier_fraction
    log_loss = np.where(bad, log_loss + outlier_scale, log_loss)
    return ScalingData.from_arrays(loss=np.exp(log_loss), N=n_arr, D=d_arr, C=c_arr, N_total=n_total, U=u_arr)
