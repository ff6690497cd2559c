"""What to run next: the training runs that narrow a planning interval most per FLOP.

For a candidate run (N parameters, D tokens, costing ``k·N·D`` FLOPs) the value
is the *expected* width of the target's credible interval once that run's loss
is known. The estimator is preposterior importance sampling on the current
posterior draws ``theta_s``:

1. simulate ``J`` outcomes of the candidate, each from a posterior draw
   ``theta_j`` and the fitted noise (the posterior predictive);
2. for each outcome, weight every draw by the likelihood of that outcome,
   ``w_s ∝ p(y_j | theta_s)``: the weighted draws are the posterior after the run
   (self-normalised importance sampling with the current posterior as proposal,
   exact as the number of draws grows);
3. the expected width is the mean over outcomes of the weighted interval width
   of the target (its Monte Carlo standard error and the weights' effective
   sample size are reported: an ESS far below the draws means the run would be
   so informative that more draws are needed to value it precisely).

Runs are chosen greedily, each conditioned on the outcomes simulated for the
runs already chosen (from the same draw), among those the remaining budget can
pay for: by the largest expected reduction (``rule="width"``: spend the budget
where it narrows the interval most) or the largest reduction per FLOP
(``rule="per_flop"``: the cheapest information first). Targets, all on the log scale (the
width is a relative width): ``N_opt`` at a compute budget, or the loss of a
planned run.

Works for any result with a law in N and D and posterior draws: a fit, a batch
or hierarchical member (a new architecture borrowing strength from old ones),
and a stacked result (each draw slot from its member law).

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd

from .allocation import optimal_allocation
from .likelihoods import Likelihood
from .posterior import LEVEL, FitResult, Posterior
from .sampling import check_seed

__all__ = ["Design", "design", "expected_width", "candidate_grid"]

_OUTCOMES = 64
_MAX_DRAWS = 2000


@dataclasses.dataclass(frozen=True)
class Design:
    """Candidate runs valued by how much they narrow the target's interval.

    Attributes:
        candidates: one row per candidate: ``N`` (parameters), ``D`` (tokens),
            ``cost`` (FLOPs), ``width`` (expected relative width of the target's
            interval after this run alone), ``width_se`` (its Monte Carlo error),
            ``reduction`` (current width minus ``width``), ``per_eflop`` (reduction
            per 1e18 FLOPs) and ``ess`` (mean effective sample size of the
            weights); sorted by ``per_eflop``, best first.
        selected: the chosen runs in order, with the expected width after each
            is added to the ones before and the cumulative cost.
        width: the target's current interval width (log scale: ``log(upper/lower)``).
        target: what is narrowed, in words.
        level: credible level of the intervals.
    """

    candidates: pd.DataFrame
    selected: pd.DataFrame
    width: float
    target: str
    level: float


def candidate_grid(data: Any, sizes: int = 10, ratios: tuple[float, ...] = (5, 10, 20, 40, 80, 160)) -> pd.DataFrame:
    """A default grid of candidate runs: model sizes from the data's smallest to 10x its largest, each
    at several tokens-per-parameter ratios. Returns a DataFrame with N (parameters) and D (tokens)."""
    n = np.exp(np.linspace(np.log(np.min(data.N)), np.log(10 * np.max(data.N)), sizes))
    grid = [(a, a * r) for a in n for r in ratios]
    return pd.DataFrame(grid, columns=["N", "D"])


def _weighted_width(q_sorted: jax.Array, w_sorted: jax.Array, level: float) -> jax.Array:
    """Width of the central interval at ``level`` of draws ``q_sorted`` (ascending) with weights ``w_sorted``."""
    cum = jnp.cumsum(w_sorted)
    lo = q_sorted[jnp.clip(jnp.searchsorted(cum, (1 - level) / 2), 0, q_sorted.size - 1)]
    hi = q_sorted[jnp.clip(jnp.searchsorted(cum, (1 + level) / 2), 0, q_sorted.size - 1)]
    return hi - lo


@functools.partial(jax.jit, static_argnames=("level", "student"))
def expected_width(
    q: jax.Array, mu: jax.Array, scale: jax.Array, df: jax.Array, base: jax.Array, source: jax.Array,
    shocks: jax.Array, *, level: float, student: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Expected interval width of ``q`` after observing one more run, by preposterior importance sampling.

    Args:
        q: the target per posterior draw, ``(S,)`` (log scale).
        mu: the run's predicted log outcome per draw, ``(S,)``.
        scale: the noise scale per draw, ``(S,)``.
        df: Student-t degrees of freedom per draw ``(S,)`` (ignored unless ``student``).
        base: log-likelihood of the outcomes already simulated for chosen runs, ``(J, S)``.
        source: the draw each of the ``J`` simulated outcomes comes from, ``(J,)``.
        shocks: standardised noise of each outcome, ``(J,)``.
        level: credible level of the interval.
        student: Student-t noise (else normal).

    Returns:
        ``(mean width, its standard error, mean effective sample size, new base (J, S))``.
    """
    order = jnp.argsort(q)
    y = mu[source] + scale[source] * shocks
    noise = dist.StudentT(df, mu, scale) if student else dist.Normal(mu, scale)
    loglik = jax.vmap(noise.log_prob)(y)
    total = base + loglik
    weights = jax.nn.softmax(total, axis=1)
    widths = jax.vmap(lambda w: _weighted_width(q[order], w[order], level))(weights)
    ess = 1.0 / jnp.sum(weights**2, axis=1)
    return widths.mean(), widths.std() / jnp.sqrt(widths.size), ess.mean(), total


def _members(result: Posterior) -> tuple[dict[str, FitResult], Any]:
    try:
        return dict(result.components()), result.combine
    except (TypeError, AttributeError):
        raise TypeError("design needs a fit, a batch or hierarchical member, or a stacked result;"
                        f" got {type(result).__name__}") from None


def _noise(fit: FitResult, likelihood: Likelihood) -> tuple[np.ndarray, np.ndarray]:
    sigma = fit.draws("sigma")
    nu = fit.draws("nu") if likelihood.learns_nu else np.full_like(sigma, likelihood.nu or np.inf)
    return sigma, nu


def design(
    result: Posterior,
    *,
    compute: float | None = None,
    planned: Mapping[str, float] | None = None,
    candidates: pd.DataFrame | None = None,
    budget: float | None = None,
    k: int = 1,
    flops_per_token: float = 6.0,
    level: float = LEVEL,
    outcomes: int = _OUTCOMES,
    rule: str = "width",
    unique_tokens: float | None = None,
    seed: int = 0,
) -> Design:
    """Value candidate runs by the expected narrowing of a planning interval, and choose ``k`` of them.

    Args:
        result: a posterior of a law in N and D (a fit, a batch or hierarchical
            member, or a stacked result).
        compute: target: ``N_opt`` at this budget (FLOPs). Give this or ``planned``.
        planned: target: the loss of a planned run, ``{"N": ..., "D": ...}``.
        candidates: runs to value, a DataFrame with ``N`` and ``D`` (and optionally
            ``cost`` in FLOPs); default :func:`candidate_grid` of the fitted runs.
        budget: FLOPs available for the new runs; default: no limit (``k`` runs).
        k: how many runs to choose.
        flops_per_token: k in ``C = k·N·D`` for costs and allocation.
        level: credible level of the interval whose width is narrowed.
        outcomes: simulated outcomes per candidate (Monte Carlo size).
        rule: how each next run is chosen among the affordable ones: ``"width"``,
            the largest expected reduction, or ``"per_flop"``, the largest
            reduction per FLOP.
        unique_tokens: for a data-constrained law, the unique data (tokens) of the
            planned run (``N_opt`` target) and of candidates without a ``U`` column.
        seed: PRNG seed of the simulated outcomes.

    Returns:
        :class:`Design`.

    Raises:
        ValueError: no target or two, bad candidates, or no candidate within the budget.
    """
    if (compute is None) == (planned is None):
        raise ValueError("give one target: compute= (N_opt at that budget) or planned= (loss of a planned run)")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if rule not in ("width", "per_flop"):
        raise ValueError(f"rule must be 'width' or 'per_flop', got {rule!r}")
    check_seed(seed)
    members, combine = _members(result)
    first = next(iter(members.values()))
    table = candidate_grid(first.data) if candidates is None else candidates.reset_index(drop=True).copy()
    for column in ("N", "D"):
        values = np.asarray(table.get(column, []), dtype=float)
        if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"candidates need a column {column!r} of positive numbers")
    if "cost" not in table:
        table["cost"] = flops_per_token * table["N"] * table["D"]
    if "U" in first.law.covariates and "U" not in table:
        if unique_tokens is None:
            raise ValueError(f"{first.law.name!r} needs unique tokens: give unique_tokens, or candidates with"
                             " a column 'U'")
        table["U"] = float(unique_tokens)
    other = [c for c in first.law.covariates if c not in ("N", "D")]
    missing = [c for c in other if c not in table]
    if missing:
        raise ValueError(f"candidates need columns {missing} for the law {first.law.name!r}")
    log_x = {c: jnp.log(jnp.asarray(table[c].to_numpy(dtype=float))) for c in ("N", "D", *other)}
    parts_q, parts_mu, parts_sigma, parts_nu = {}, {}, {}, {}
    with jax.enable_x64(True):
        for name, fit in members.items():
            parts_mu[name] = fit.log_mean_draws(log_x, seed)  # the one predictive, structural error included
            if compute is not None:
                n_opt = optimal_allocation(fit.law, fit.draws(), [compute], flops_per_token, unique_tokens)["N_opt"]
                parts_q[name] = np.log(n_opt[:, 0])
            else:
                point = {c: np.log([float(planned[c])]) for c in ("N", "D", *other)}
                parts_q[name] = fit.log_mean_draws(point, seed)[:, 0]
            parts_sigma[name], parts_nu[name] = _noise(fit, fit.spec.likelihood)
        q, mu, sigma, nu = (np.asarray(combine(parts)) for parts in (parts_q, parts_mu, parts_sigma, parts_nu))
        rng = np.random.default_rng(seed)
        keep = rng.permutation(q.size)[:_MAX_DRAWS]
        q, mu, sigma, nu = q[keep], mu[keep], sigma[keep], nu[keep]
        student = bool(np.all(np.isfinite(nu)))
        source = jnp.asarray(rng.integers(0, q.size, outcomes))
        shocks = rng.standard_t(nu[np.asarray(source)]) if student else rng.standard_normal(outcomes)
        lo, hi = np.quantile(q, [(1 - level) / 2, (1 + level) / 2])
        current = float(hi - lo)

        def value(column: int, base: jax.Array) -> tuple:
            return expected_width(jnp.asarray(q), jnp.asarray(mu[:, column]), jnp.asarray(sigma), jnp.asarray(nu),
                                  base, source, jnp.asarray(shocks), level=level, student=student)

        base = jnp.zeros((outcomes, q.size))
        alone = [value(c, base) for c in range(len(table))]
        table["width"] = [float(a[0]) for a in alone]
        table["width_se"] = [float(a[1]) for a in alone]
        table["ess"] = [float(a[2]) for a in alone]
        table["reduction"] = current - table["width"]
        table["per_eflop"] = table["reduction"] / (table["cost"] / 1e18)

        chosen, rows, spent, width = [], [], 0.0, current
        for _ in range(k):
            best, best_gain, best_out = None, -np.inf, None
            for c in range(len(table)):
                cost = float(table.at[c, "cost"])
                if c in chosen or (budget is not None and spent + cost > budget):
                    continue
                out = value(c, base) if chosen else alone[c]
                gain = (width - float(out[0])) / (cost if rule == "per_flop" else 1.0)
                if gain > best_gain:
                    best, best_gain, best_out = c, gain, out
            if best is None:
                break
            chosen.append(best)
            spent += float(table.at[best, "cost"])
            width, base = float(best_out[0]), best_out[3]
            rows.append({"N": table.at[best, "N"], "D": table.at[best, "D"], "cost": table.at[best, "cost"],
                         "cumulative_cost": spent, "width_after": width, "width_se": float(best_out[1])})
    if not rows:
        raise ValueError(f"no candidate fits the budget of {budget:.3g} FLOPs (cheapest: {table['cost'].min():.3g})")
    target = (f"N_opt at {compute:.3g} FLOPs" if compute is not None
              else f"loss at N = {planned['N']:.3g}, D = {planned['D']:.3g}")
    return Design(table.sort_values("per_eflop", ascending=False).reset_index(drop=True), pd.DataFrame(rows),
                  current, target, level)
