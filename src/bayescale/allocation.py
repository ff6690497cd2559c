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
from .posterior import LEVEL, FitResult, Posterior, data_top, describe_draws, structural_deviation, table_of_draws

__all__ = [
    "compute_optimal",
    "optimal_allocation",
    "allocation_draws",
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
_CROSSING_GRID = 64
_BISECTIONS = 60
_LOG_C_RANGE = (math.log(1e6), math.log(1e60))
_GOLDEN = (math.sqrt(5.0) - 1) / 2


def has_allocation(law: Law) -> bool:
    """Whether compute-optimal allocation applies to ``law``: it is a law in N and D."""
    return set(law.covariates) == {"N", "D"}


def plannable(fit: Posterior) -> bool:
    """Whether :func:`compute_optimal` applies to ``fit``: every one of its components is a law in N and D."""
    try:
        return all(has_allocation(m.law) for m in fit.components().values())
    except TypeError:
        return False


def _per_component(fit: Posterior, compute: Any) -> dict[str, np.ndarray]:
    """``compute(member)`` (a dict of arrays ``(draws, ...)``) for every component, mixed by ``fit.combine``."""
    parts = {name: compute(member) for name, member in fit.components().items()}
    keys = next(iter(parts.values()))
    return {key: fit.combine({name: part[key] for name, part in parts.items()}) for key in keys}


def _structural(member: FitResult, seed: int) -> tuple[jax.Array, dict[str, float]]:
    """The member's structural error for jitted allocation: shock per draw ``(draws,)`` and its runs' top logs."""
    return jnp.asarray(member.shock(seed)), data_top(member.law, member.data)


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


def _first_crossing(f: Any, target: jax.Array, lo: float, hi: float) -> tuple[jax.Array, jax.Array]:
    """Where ``f`` first falls to ``target`` on ``[lo, hi]``, and whether it does.

    ``f`` need not be monotone (a loss with its structural error turns up far beyond the
    data): a grid of :data:`_CROSSING_GRID` points finds the first point at or below the
    target, then bisection between it and the point before refines it. At ``lo`` already
    below: ``lo``; never below: ``hi`` and ``False``.
    """
    grid = jnp.linspace(lo, hi, _CROSSING_GRID)
    below = jax.vmap(f)(grid) <= target
    i = jnp.argmax(below)

    def step(carry: tuple, _: None) -> tuple:
        a, b = carry
        mid = (a + b) / 2
        above = f(mid) > target
        return (jnp.where(above, mid, a), jnp.where(above, b, mid)), None

    (_, b), _ = jax.lax.scan(step, (grid[jnp.maximum(i - 1, 0)], grid[i]), None, length=_BISECTIONS)
    return jnp.where(i == 0, grid[0], b), below.any()


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
    fit: Posterior, compute: Sequence[float] | np.ndarray, flops_per_token: float = 6.0, level: float = LEVEL,
    unique_tokens: float | None = None, seed: int = 0,
) -> pd.DataFrame:
    """Planning table: compute-optimal N, D, tokens per parameter and loss, with intervals.

    Args:
        fit: a fit of a law in N and D (with or without a structural error), or a stacked
            result (:func:`bayescale.stacking.stack`) of such fits, whose allocation is the
            mixture of its members'.
        compute: budgets in FLOPs.
        flops_per_token: k in ``C = k·N·D`` (6 by default).
        level: credible level of the intervals.
        unique_tokens: the unique data available (tokens), for a data-constrained law.
        seed: seed of the structural error (see :meth:`~bayescale.posterior.FitResult.shock`).

    Returns:
        DataFrame indexed by compute (FLOPs), with column groups ``N_opt``
        (parameters), ``D_opt`` (tokens), ``tokens_per_param`` and ``loss_opt``
        (nats), and ``epochs`` with ``unique_tokens``, each with ``median`` and the
        interval bounds. The optimum of each draw is :func:`optimal_allocation`'s (the law's
        own); ``loss_opt`` is the loss predicted there through the one predictive, so it
        carries the structural error of a fit that has one.
    """
    draws = allocation_draws(fit, compute, flops_per_token, unique_tokens, seed)
    return table_of_draws(draws, pd.Index(_budgets(compute), name="compute"), level)


def allocation_draws(
    fit: Posterior, compute: Sequence[float] | np.ndarray, flops_per_token: float = 6.0,
    unique_tokens: float | None = None, seed: int = 0,
) -> dict[str, np.ndarray]:
    """The draws :func:`compute_optimal` tabulates, ``(draws, budgets)`` each, mixed over the result's
    components: each draw's own optimum (:func:`optimal_allocation`), and ``loss_opt`` there through the one
    predictive, so it carries a component's structural error (seeded by ``seed``)."""
    budgets = _budgets(compute)

    def one(member: FitResult) -> dict[str, np.ndarray]:
        out = optimal_allocation(member.law, member.draws(), budgets, flops_per_token, unique_tokens)
        if member.misfit is not None:
            log_x = {"N": np.log(out["N_opt"]), "D": np.log(out["D_opt"]),
                     **{c: np.full(out["N_opt"].shape, v) for c, v in _fixed(unique_tokens).items()}}
            out["loss_opt"] = np.exp(member.log_mean_draws(log_x, seed))
        return out

    return _per_component(fit, one)


def compute_optimal_by_group(
    fits: Mapping[str, FitResult], compute: Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL
) -> pd.DataFrame:
    """:func:`compute_optimal` of several fits in one table indexed by (group, compute)."""
    return pd.concat({name: compute_optimal(fit, compute, flops_per_token, level) for name, fit in fits.items()},
                     names=["group"])


def allocation_exponent_draws(fit: Posterior, compute: float = 1e22) -> dict[str, np.ndarray]:
    """Posterior draws of ``a`` and ``b`` (``N_opt ∝ C^a``, ``D_opt ∝ C^b``); see :func:`allocation_exponents`."""

    def one(member: FitResult) -> dict[str, np.ndarray]:
        law = _check_nd(member.law)
        if law.log_optimum is not None:
            with jax.enable_x64(True):
                slope = jax.vmap(jax.grad(law.log_optimum, argnums=1), in_axes=(0, None))
                a = np.asarray(slope(_params(member), jnp.log(compute)))
        else:
            budgets = compute * np.array([10**-0.5, 10**0.5])
            n = optimal_allocation(law, member.draws(), budgets)["N_opt"]
            a = np.log(n[:, 1] / n[:, 0]) / np.log(budgets[1] / budgets[0])
        return {"a": a, "b": 1.0 - a}

    return _per_component(fit, one)


def allocation_exponents(fit: Posterior, level: float = LEVEL, compute: float = 1e22) -> pd.DataFrame:
    """Exponents a and b of ``N_opt ∝ C^a`` and ``D_opt ∝ C^b``, with intervals.

    The slope ``a = d log N_opt / d log C`` of the law's closed form when it has
    one (exact: Chinchilla's ``a = beta/(alpha+beta)``); for other laws the local
    slope at ``compute`` FLOPs by a central difference over a factor of 10.
    ``b = 1 - a`` since ``C = k·N·D``.

    Returns:
        DataFrame with rows ``a`` and ``b``: mean, sd, median and interval.
    """
    return describe_draws(allocation_exponent_draws(fit, compute), level)


def _log_loss_at(law: Law, q: dict, log_x: Mapping[str, jax.Array], shock: jax.Array, top: Mapping[str, float]
                 ) -> jax.Array:
    """One draw's predicted log-loss: the mean curve plus its structural error ``shock·sqrt(reach)``."""
    return law.log_mean(q, log_x) + structural_deviation(shock, log_x, top)


@functools.partial(jax.jit, static_argnums=0)
def _compute_for_loss_draws(law: Law, p: dict, shock: jax.Array, top: dict, log_target: jax.Array, log_k: float
                            ) -> tuple[jax.Array, ...]:
    def best(q: dict, z: jax.Array, log_c: jax.Array) -> tuple[jax.Array, ...]:
        log_n, log_d, _ = _optimum(law, q, log_c, log_k)
        return _log_loss_at(law, q, {"N": log_n, "D": log_d}, z, top), log_n, log_d

    def one(q: dict, z: jax.Array, target: jax.Array) -> tuple[jax.Array, ...]:
        log_c, ok = _first_crossing(lambda c: best(q, z, c)[0], target, *_LOG_C_RANGE)
        _, log_n, log_d = best(q, z, log_c)
        return log_c, ok, log_n, log_d

    return jax.vmap(lambda q, z: jax.vmap(lambda t: one(q, z, t))(log_target))(p, shock)


def compute_for_loss(
    fit: Posterior, target_loss: float | Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL,
    seed: int = 0,
) -> pd.DataFrame:
    """Compute needed to reach a target loss at the compute-optimal allocation.

    A target at or below what a draw can ever reach (for the Chinchilla law,
    the irreducible loss E) is unreachable for that draw; the table reports the
    probability that the target is reachable, and the compute, N and D
    intervals over the draws that reach it. Each draw's loss at its optimum is
    the one predictive's (its structural error included, seeded by ``seed``); a stack
    mixes its members' draws.

    Returns:
        DataFrame indexed by target loss (nats): ``p_reachable``, and column
        groups ``C`` (FLOPs), ``N_opt``, ``D_opt`` with median and interval
        (conditional on reachable; absent values where no draw reaches it).
    """
    k = _check_k(flops_per_token)
    targets = _budgets(target_loss, "target_loss", "nats")

    def one(member: FitResult) -> dict[str, np.ndarray]:
        law = _check_nd(member.law)
        with jax.enable_x64(True):
            out = _compute_for_loss_draws(law, _params(member), *_structural(member, seed), jnp.log(targets),
                                          float(np.log(k)))
        return dict(zip(("log_c", "ok", "log_n", "log_d"), (np.asarray(v) for v in out)))

    draws = _per_component(fit, one)
    ok = draws["ok"].astype(bool)
    rows = []
    for j, target in enumerate(targets):
        row: dict[tuple[str, str], float] = {("p_reachable", ""): float(ok[:, j].mean())}
        if ok[:, j].any():
            reached = {"C": draws["log_c"], "N_opt": draws["log_n"], "D_opt": draws["log_d"]}
            for name, values in {n: np.exp(v[ok[:, j], j]) for n, v in reached.items()}.items():
                stats = describe_draws({name: values}, level).iloc[0].drop(["mean", "sd"])
                row.update({(name, s): float(v) for s, v in stats.items()})
        else:
            warnings.warn(f"target loss {target} nats is not reachable under any posterior draw", stacklevel=2)
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index(targets, name="target_loss"))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def loss_at(
    fit: Posterior,
    N: float | Sequence[float],
    C: float | Sequence[float],
    flops_per_token: float = 6.0,
    level: float = LEVEL,
    seed: int = 0,
) -> pd.DataFrame:
    """Loss of training N parameters with C FLOPs, and its penalty against the optimum.

    For example a 7e9-parameter model trained on 1e12 tokens (C = 6·7e9·1e12),
    as LLaMA did, against the compute-optimal model at that budget. Both losses come
    from the one predictive with the same draws and the same structural error (seed
    ``seed``), so the penalty compares like with like.

    Returns:
        DataFrame, one row per (N, C) pair: column groups ``loss`` (nats), ``loss_opt``
        and ``penalty`` (loss - loss_opt, nats), with median and interval.
    """
    k = _check_k(flops_per_token)
    n, c = np.broadcast_arrays(_budgets(N, "N", "parameters"), _budgets(C, "C"))

    def one(member: FitResult) -> dict[str, np.ndarray]:
        _check_nd(member.law)
        loss = np.exp(member.log_mean_draws({"N": np.log(n), "D": np.log(c / (k * n))}, seed))
        best = allocation_draws(member, c, k, seed=seed)["loss_opt"]
        return {"loss": loss, "loss_opt": best, "penalty": loss - best}

    table = table_of_draws(_per_component(fit, one), pd.RangeIndex(len(n)), level)
    table.insert(0, ("C", ""), c)
    table.insert(0, ("N", ""), n)
    return table


@functools.partial(jax.jit, static_argnums=0)
def _inference_optimal_draws(law: Law, p: dict, shock: jax.Array, top: dict, log_target: jax.Array,
                             log_tokens: jax.Array, k: float) -> tuple:
    def one(q: dict, z: jax.Array) -> tuple:
        def log_d_for(log_n: jax.Array) -> jax.Array:
            """Smallest log D reaching the target at this N (inf when unreachable)."""
            loss = lambda log_d: _log_loss_at(law, q, {"N": log_n, "D": log_d}, z, top)  # noqa: E731
            log_d, ok = _first_crossing(loss, log_target, 0.0, 120.0)
            return jnp.where(ok, log_d, jnp.inf)

        return _inference_optimum(log_d_for, log_tokens, k)

    return jax.vmap(one)(p, shock)


def _inference_optimum(log_d_for: Any, log_tokens: jax.Array, k: float) -> tuple:
    """Training-plus-inference optimum of one draw, given its smallest log D reaching the target per log N."""

    def total(log_n: jax.Array, inference: bool) -> jax.Array:
        log_d = log_d_for(log_n)
        train = jnp.log(k) + log_n + log_d
        return jnp.logaddexp(train, jnp.log(2.0) + log_n + log_tokens) if inference else train

    aware = _minimise_1d(lambda x: total(x, True), jnp.asarray(0.0), jnp.asarray(40.0))
    plain = _minimise_1d(lambda x: total(x, False), jnp.asarray(0.0), jnp.asarray(40.0))
    return aware, log_d_for(aware), total(aware, True), total(plain, True), plain


def inference_optimal(
    fit: Posterior,
    target_loss: float,
    inference_tokens: float,
    flops_per_token: float = 6.0,
    level: float = LEVEL,
    seed: int = 0,
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
    k = _check_k(flops_per_token)
    (target,) = _budgets(target_loss, "target_loss", "nats")
    (tokens,) = _budgets(inference_tokens, "inference_tokens", "tokens")
    names = ("log_n", "log_d", "log_total", "log_plain_total", "log_plain_n")

    def one(member: FitResult) -> dict[str, np.ndarray]:
        law = _check_nd(member.law)
        with jax.enable_x64(True):
            out = _inference_optimal_draws(law, _params(member), *_structural(member, seed), jnp.log(target),
                                           jnp.log(tokens), k)
        return dict(zip(names, (np.asarray(v) for v in out)))

    draws = _per_component(fit, one)
    log_n, log_d, log_total, log_plain_total, log_plain_n = (draws[name] for name in names)
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
