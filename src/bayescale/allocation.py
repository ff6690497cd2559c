"""Compute-optimal allocation, propagated from the posterior draw by draw.

Every answer here is a distribution: each posterior draw of the law's
parameters gives its own optimum, and tables report the median and an
equal-tailed interval. :func:`optimal_allocation` is a pure function of a law
and parameter values; the table functions take any posterior that honours the
result contract (it has ``law`` and ``draws()``: a fit, a batch or hierarchical
member). A law that declares a closed-form optimum (``Law.log_optimum``, e.g.
Chinchilla's) uses it; any other law in N and D is minimised numerically along
the iso-FLOP line. Compute is ``C = k·N·D`` with ``k = flops_per_token``
FLOPs per parameter per token (6 for dense transformers; use ``k = 1`` when the
fit's N column holds DeepSeek's non-embedding FLOPs per token M, so C = M·D).

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .laws import Law
from .posterior import LEVEL, FitResult, describe_draws, table_of_draws
from .stacking import StackedResult

__all__ = [
    "compute_optimal",
    "optimal_allocation",
    "has_allocation",
    "plannable",
    "compute_optimal_by_group",
    "allocation_exponents",
    "allocation_exponent_draws",
    "compute_for_loss",
    "loss_at",
    "inference_optimal",
]

_GRID = 256
_REFINE = 80
_LOG_C_RANGE = (math.log(1e6), math.log(1e60))
_GOLDEN = (math.sqrt(5.0) - 1) / 2


def has_allocation(law: Law) -> bool:
    """Whether compute-optimal allocation applies to ``law``: it is a law in N and D."""
    return set(law.covariates) == {"N", "D"}


def plannable(fit: FitResult) -> bool:
    """Whether :func:`compute_optimal` applies to ``fit``: a law in N and D, or a stack of such laws only."""
    if isinstance(fit, StackedResult):
        return all(has_allocation(m.law) for m in fit.members.values())
    return has_allocation(fit.law)


def _check_nd(law: Law, fixed: Mapping[str, Any] | None = None) -> Law:
    """``law`` if it is a law in N and D besides the covariates held ``fixed``; else raise naming what is missing."""
    fixed = fixed or {}
    if set(law.covariates) != {"N", "D", *fixed}:
        extra = sorted(set(law.covariates) - {"N", "D", *fixed})
        hint = "; give unique_tokens (the unique data available, tokens)" if extra == ["U"] else ""
        raise ValueError(f"allocation needs a law in N and D; {law.name!r} uses {law.covariates}{hint}")
    return law


def _fixed(unique_tokens: float | None) -> dict[str, float]:
    """Covariates held fixed along the iso-FLOP line, as logs."""
    if unique_tokens is None:
        return {}
    (u,) = _budgets(unique_tokens, "unique_tokens", "tokens")
    return {"U": float(np.log(u))}


def _check_k(k: float) -> float:
    if not (isinstance(k, (int, float)) and k > 0):
        raise ValueError(f"flops_per_token must be a positive number, got {k!r}")
    return float(k)


def _budgets(compute: Any, name: str = "compute", unit: str = "FLOPs") -> np.ndarray:
    """``compute`` as a 1-d float array of positive finite numbers, or ValueError naming ``name`` and its ``unit``."""
    c = np.atleast_1d(np.asarray(compute, dtype=float))
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"{name} must be positive finite numbers ({unit}), got {compute!r}")
    return c


def _params(fit: FitResult) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, dtype=jnp.float64) for k, v in fit.draws().items()}


def _minimise_1d(f: Any, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Minimiser of a unimodal ``f`` on ``[lo, hi]``: grid search, then golden section around the best point."""
    grid = jnp.linspace(lo, hi, _GRID)
    i = jnp.argmin(jax.vmap(f)(grid))
    a, b = grid[jnp.maximum(i - 1, 0)], grid[jnp.minimum(i + 1, _GRID - 1)]

    def step(carry: tuple, _: None) -> tuple:
        a, b = carry
        c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        left = f(c) < f(d)
        return (jnp.where(left, a, c), jnp.where(left, d, b)), None

    (a, b), _ = jax.lax.scan(step, (a, b), None, length=_REFINE)
    return (a + b) / 2


def _crossing(f: Any, target: jax.Array, lo: jax.Array, hi: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """Bracket ``(lo, hi)`` of where a decreasing ``f`` falls to ``target``, by bisection."""

    def step(carry: tuple, _: None) -> tuple:
        lo, hi = carry
        mid = (lo + hi) / 2
        above = f(mid) > target
        return (jnp.where(above, mid, lo), jnp.where(above, hi, mid)), None

    (lo, hi), _ = jax.lax.scan(step, (lo, hi), None, length=steps)
    return lo, hi


def _optimum(
    law: Law, p: dict, log_c: jax.Array, log_k: float, fixed: Mapping[str, Any] | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(log N_opt, log D_opt, log L_opt)`` for one draw and one budget, other covariates at ``fixed`` (logs)."""
    fixed = fixed or {}
    if law.log_optimum is not None and not fixed:
        log_n = law.log_optimum(p, log_c - log_k)
    else:
        loss = lambda x: law.log_mean(p, {"N": x, "D": log_c - log_k - x, **fixed})  # noqa: E731
        log_n = _minimise_1d(loss, jnp.asarray(0.0), log_c - log_k)
    log_d = log_c - log_k - log_n
    return log_n, log_d, law.log_mean(p, {"N": log_n, "D": log_d, **fixed})


@functools.partial(jax.jit, static_argnums=0)
def _optimum_draws(law: Law, p: dict, log_c: jax.Array, log_k: float, fixed: dict) -> tuple[jax.Array, ...]:
    per_draw = jax.vmap(lambda q: jax.vmap(lambda c: _optimum(law, q, c, log_k, fixed))(log_c))
    return per_draw(p)


def optimal_allocation(
    law: Law, params: Mapping[str, Any], compute: Any, flops_per_token: float = 6.0,
    unique_tokens: float | None = None,
) -> dict[str, np.ndarray]:
    """Compute-optimal allocation for arrays of parameter values (posterior draws, or true values).

    The law's closed form when it declares one (Chinchilla: ``N_opt = G·(C/k)^a``,
    ``a = beta/(alpha+beta)``, ``G = (alpha·A/(beta·B))^(1/(alpha+beta))``); for
    any other law in N and D a numerical minimisation along the iso-FLOP line
    (grid, then golden section), vectorised over values.

    Args:
        law: a law in N and D.
        params: parameter name -> values, shape ``(n,)``.
        compute: budgets in FLOPs, shape ``(b,)``.
        flops_per_token: k in ``C = k·N·D``.
        unique_tokens: for a data-constrained law (``"data_constrained"``), the
            unique data available (tokens): the optimum then trades model size
            against epochs over it.

    Returns:
        ``{"N_opt", "D_opt", "tokens_per_param", "loss_opt"}``, each ``(n, b)``,
        and ``epochs`` (``D_opt / unique_tokens``) with ``unique_tokens``.
    """
    fixed = _fixed(unique_tokens)
    _check_nd(law, fixed)
    k = _check_k(flops_per_token)
    c = _budgets(compute)
    with jax.enable_x64(True):
        p = {name: jnp.atleast_1d(jnp.asarray(params[name], dtype=jnp.float64)) for name in law.params}
        log_n, log_d, log_l = _optimum_draws(law, p, jnp.log(c), float(np.log(k)), fixed)
    n, d = np.exp(np.asarray(log_n)), np.exp(np.asarray(log_d))
    out = {"N_opt": n, "D_opt": d, "tokens_per_param": d / n, "loss_opt": np.exp(np.asarray(log_l))}
    if unique_tokens is not None:
        out["epochs"] = d / float(unique_tokens)
    return out


def compute_optimal(
    fit: FitResult, compute: Sequence[float] | np.ndarray, flops_per_token: float = 6.0, level: float = LEVEL,
    unique_tokens: float | None = None,
) -> pd.DataFrame:
    """Planning table: compute-optimal N, D, tokens per parameter and loss, with intervals.

    Args:
        fit: a fit of a law in N and D, or a stacked result
            (:func:`bayescale.stacking.stack`) of such fits, whose allocation is the
            mixture of its members'.
        compute: budgets in FLOPs.
        flops_per_token: k in ``C = k·N·D`` (6 by default).
        level: credible level of the intervals.
        unique_tokens: the unique data available (tokens), for a data-constrained law.

    Returns:
        DataFrame indexed by compute (FLOPs), with column groups ``N_opt``
        (parameters), ``D_opt`` (tokens), ``tokens_per_param`` and ``loss_opt``
        (nats), and ``epochs`` with ``unique_tokens``, each with ``median`` and the
        interval bounds. The draws are in :func:`optimal_allocation` of
        ``fit.law`` and ``fit.draws()``.
    """
    if isinstance(fit, StackedResult):  # a mixture of laws: each draw slot takes its member's optimum
        per_member = {n: optimal_allocation(m.law, m.draws(), compute, flops_per_token, unique_tokens)
                      for n, m in fit.members.items()}
        draws = {key: fit.combine({n: v[key] for n, v in per_member.items()}) for key in next(iter(per_member.values()))}
    else:
        draws = optimal_allocation(fit.law, fit.draws(), compute, flops_per_token, unique_tokens)
    return table_of_draws(draws, pd.Index(_budgets(compute), name="compute"), level)


def compute_optimal_by_group(
    fits: Mapping[str, FitResult], compute: Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL
) -> pd.DataFrame:
    """:func:`compute_optimal` of several fits in one table indexed by (group, compute)."""
    return pd.concat({name: compute_optimal(fit, compute, flops_per_token, level) for name, fit in fits.items()},
                     names=["group"])


def allocation_exponent_draws(fit: FitResult, compute: float = 1e22) -> dict[str, np.ndarray]:
    """Posterior draws of ``a`` and ``b`` (``N_opt ∝ C^a``, ``D_opt ∝ C^b``); see :func:`allocation_exponents`."""
    law = _check_nd(fit.law)
    if law.log_optimum is not None:
        with jax.enable_x64(True):
            slope = jax.vmap(jax.grad(law.log_optimum, argnums=1), in_axes=(0, None))
            a = np.asarray(slope(_params(fit), jnp.log(compute)))
    else:
        budgets = compute * np.array([10**-0.5, 10**0.5])
        n = optimal_allocation(law, fit.draws(), budgets)["N_opt"]
        a = np.log(n[:, 1] / n[:, 0]) / np.log(budgets[1] / budgets[0])
    return {"a": a, "b": 1.0 - a}


def allocation_exponents(fit: FitResult, level: float = LEVEL, compute: float = 1e22) -> pd.DataFrame:
    """Exponents a and b of ``N_opt ∝ C^a`` and ``D_opt ∝ C^b``, with intervals.

    The slope ``a = d log N_opt / d log C`` of the law's closed form when it has
    one (exact: Chinchilla's ``a = beta/(alpha+beta)``); for other laws the local
    slope at ``compute`` FLOPs by a central difference over a factor of 10.
    ``b = 1 - a`` since ``C = k·N·D``.

    Returns:
        DataFrame with rows ``a`` and ``b``: mean, sd, median and interval.
    """
    return describe_draws(allocation_exponent_draws(fit, compute), level)


@functools.partial(jax.jit, static_argnums=0)
def _compute_for_loss_draws(law: Law, p: dict, log_target: jax.Array, log_k: float) -> tuple[jax.Array, jax.Array]:
    def one(q: dict, target: jax.Array) -> tuple[jax.Array, jax.Array]:
        best = lambda log_c: _optimum(law, q, log_c, log_k)[2]  # noqa: E731
        lo, hi = _crossing(best, target, jnp.asarray(_LOG_C_RANGE[0]), jnp.asarray(_LOG_C_RANGE[1]), 100)
        return (lo + hi) / 2, best(jnp.asarray(_LOG_C_RANGE[1])) < target

    return jax.vmap(lambda q: jax.vmap(lambda t: one(q, t))(log_target))(p)


def compute_for_loss(
    fit: FitResult, target_loss: float | Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL
) -> pd.DataFrame:
    """Compute needed to reach a target loss at the compute-optimal allocation.

    A target at or below what a draw can ever reach (for the Chinchilla law,
    the irreducible loss E) is unreachable for that draw; the table reports the
    probability that the target is reachable, and the compute, N and D
    intervals over the draws that reach it.

    Returns:
        DataFrame indexed by target loss (nats): ``p_reachable``, and column
        groups ``C`` (FLOPs), ``N_opt``, ``D_opt`` with median and interval
        (conditional on reachable; absent values where no draw reaches it).
    """
    law = _check_nd(fit.law)
    k = _check_k(flops_per_token)
    targets = _budgets(target_loss, "target_loss", "nats")
    with jax.enable_x64(True):
        log_c, ok = _compute_for_loss_draws(law, _params(fit), jnp.log(targets), float(np.log(k)))
    log_c, ok = np.asarray(log_c), np.asarray(ok)
    rows = []
    for j, target in enumerate(targets):
        row: dict[tuple[str, str], float] = {("p_reachable", ""): float(ok[:, j].mean())}
        if ok[:, j].any():
            c = np.exp(log_c[ok[:, j], j])
            sub = _optimum_at(fit, c, k, ok[:, j])
            for name, values in {"C": c, **sub}.items():
                stats = describe_draws({name: values}, level).iloc[0].drop(["mean", "sd"])
                row.update({(name, s): float(v) for s, v in stats.items()})
        else:
            warnings.warn(f"target loss {target} nats is not reachable under any posterior draw", stacklevel=2)
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index(targets, name="target_loss"))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def _optimum_at(fit: FitResult, compute: np.ndarray, k: float, mask: np.ndarray) -> dict[str, np.ndarray]:
    """N_opt and D_opt of the selected draws (``mask``), each at its own budget ``compute``."""
    law = fit.law
    p = {name: jnp.asarray(v[mask]) for name, v in fit.draws().items()}
    with jax.enable_x64(True):
        log_n, log_d, _ = jax.vmap(lambda q, c: _optimum(law, q, c, float(np.log(k))))(p, jnp.log(compute))
    return {"N_opt": np.exp(np.asarray(log_n)), "D_opt": np.exp(np.asarray(log_d))}


def loss_at(
    fit: FitResult,
    N: float | Sequence[float],
    C: float | Sequence[float],
    flops_per_token: float = 6.0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Loss of training N parameters with C FLOPs, and its penalty against the optimum.

    For example a 7e9-parameter model trained on 1e12 tokens (C = 6·7e9·1e12),
    as LLaMA did, against the compute-optimal model at that budget.

    Returns:
        DataFrame, one row per (N, C) pair: column groups ``loss`` (nats), ``loss_opt``
        and ``penalty`` (loss - loss_opt, nats), with median and interval.
    """
    _check_nd(fit.law)
    k = _check_k(flops_per_token)
    n, c = np.broadcast_arrays(_budgets(N, "N", "parameters"), _budgets(C, "C"))
    loss = fit.predict_draws(N=n, D=c / (k * n))
    best = optimal_allocation(fit.law, fit.draws(), c, k)["loss_opt"]
    table = table_of_draws({"loss": loss, "loss_opt": best, "penalty": loss - best}, pd.RangeIndex(len(n)), level)
    table.insert(0, ("C", ""), c)
    table.insert(0, ("N", ""), n)
    return table


@functools.partial(jax.jit, static_argnums=0)
def _inference_optimal_draws(law: Law, p: dict, log_target: jax.Array, log_tokens: jax.Array, k: float) -> tuple:
    def log_d_for(q: dict, log_n: jax.Array) -> jax.Array:
        """Smallest log D reaching the target at this N (inf when unreachable)."""
        loss = lambda log_d: law.log_mean(q, {"N": log_n, "D": log_d})  # noqa: E731
        _, hi = _crossing(loss, log_target, jnp.asarray(0.0), jnp.asarray(120.0), 80)
        return jnp.where(loss(120.0) < log_target, hi, jnp.inf)

    def one(q: dict) -> tuple:
        def total(log_n: jax.Array, inference: bool) -> jax.Array:
            log_d = log_d_for(q, log_n)
            train = jnp.log(k) + log_n + log_d
            return jnp.logaddexp(train, jnp.log(2.0) + log_n + log_tokens) if inference else train

        aware = _minimise_1d(lambda x: total(x, True), jnp.asarray(0.0), jnp.asarray(40.0))
        plain = _minimise_1d(lambda x: total(x, False), jnp.asarray(0.0), jnp.asarray(40.0))
        return aware, log_d_for(q, aware), total(aware, True), total(plain, True), plain

    return jax.vmap(one)(p)


def inference_optimal(
    fit: FitResult,
    target_loss: float,
    inference_tokens: float,
    flops_per_token: float = 6.0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Minimise training plus inference compute for a target loss (Sardana et al. 2023).

    Training costs ``k·N·D`` FLOPs and inference ``2·N`` FLOPs per token over
    ``inference_tokens`` tokens. Compared with the training-compute-optimal
    model for the same loss, the result is a smaller model trained longer.

    Returns:
        DataFrame with rows ``N`` (parameters), ``D`` (tokens), ``tokens_per_param``,
        ``total_compute`` (FLOPs), ``N_train_optimal`` and ``saving`` (fraction of
        total compute saved against the training-optimal model), each with mean, sd,
        median and interval, over the draws that can reach the target (their share
        is the ``p_reachable`` attribute of the table).
    """
    law = _check_nd(fit.law)
    k = _check_k(flops_per_token)
    (target,) = _budgets(target_loss, "target_loss", "nats")
    (tokens,) = _budgets(inference_tokens, "inference_tokens", "tokens")
    with jax.enable_x64(True):
        out = _inference_optimal_draws(law, _params(fit), jnp.log(target), jnp.log(tokens), k)
    log_n, log_d, log_total, log_plain_total, log_plain_n = (np.asarray(v) for v in out)
    ok = np.isfinite(log_total) & np.isfinite(log_plain_total)
    if not ok.any():
        raise ValueError(f"target loss {target} nats is not reachable under any posterior draw")
    n, d = np.exp(log_n[ok]), np.exp(log_d[ok])
    table = describe_draws(
        {
            "N": n,
            "D": d,
            "tokens_per_param": d / n,
            "total_compute": np.exp(log_total[ok]),
            "N_train_optimal": np.exp(log_plain_n[ok]),
            "saving": 1.0 - np.exp(log_total[ok] - log_plain_total[ok]),
        },
        level,
    )
    table.attrs["p_reachable"] = float(ok.mean())
    return table
