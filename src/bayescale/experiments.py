"""What to run next: the set of training runs that narrows a planning interval most within a budget.

For a set of new runs (N parameters, D tokens, each costing ``k·N·D`` FLOPs) the value is the
*expected* width of the target's credible interval once their losses are known. The estimator is
preposterior importance sampling on the current posterior draws ``theta_s``:

1. simulate ``J`` outcomes of the runs, each from a posterior draw ``theta_j`` and the fitted noise
   (the posterior predictive; independent noise per run);
2. for each outcome, weight every draw by the likelihood of that outcome, ``w_s ∝ p(y_j | theta_s)``:
   the weighted draws are the posterior after the runs (self-normalised importance sampling with the
   current posterior as proposal);
3. the expected width is the mean over outcomes of the weighted interval width of the target, with
   its Monte Carlo error and the range of widths the runs could realise.

**The whole budget.** With a budget, the default rule (``rule="width"``) compares whole sets of at
most ``k`` runs costing at most the budget and keeps the narrowest: the greedy set (each next run the
largest expected reduction the remaining budget can pay for), every split of the budget into equal
shares (``k`` units split as 4, 3+1, 2+2, 2+1+1, 1+1+1+1 for ``k = 4``; each share's run sized among
multiples of the posterior-median ``N_opt`` at that compute and runs larger than any seen, chosen one
after the other), and iso-FLOP grids (``m`` runs at ``budget/m`` each, sizes spaced by 2 or 4 around
that median). The best iso-FLOP grid is reported beside the chosen set, so the gain is visible.
``rule="per_flop"`` is the greedy set by expected reduction *per FLOP* (cheapest information first:
it may leave the budget unspent, and says so in ``budget_share``).

**When the forecast is unreliable.** When the posterior is wide, outcomes the current draws cannot
explain get no weight: importance sampling degenerates. Every forecast reports the Pareto ``k̂`` of
each outcome's weights (``arviz.psislw``); when more than a tenth of the outcomes have ``k̂ > 0.7``,
the chosen set and the best grid are forecast instead by refitting the law on ``refits`` simulated
outcomes (one :func:`~bayescale.batch.fit_batch`: one compiled program), and the narrower of the two
is chosen. :class:`Forecast` says which method was used.

Works for any result with a law in N and D and posterior draws: a fit, a batch or hierarchical
member (a new architecture borrowing strength from old ones), and a stacked result (each draw slot
from its member law; refit forecasts need a fit of one law and fall back to importance sampling,
with a warning, otherwise).

Units: N in parameters, D in tokens, C in FLOPs, loss in nats; widths are of the log target
(``log(upper/lower)``: a relative width).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd

from .allocation import optimal_allocation
from .data import ScalingData
from .likelihoods import Likelihood
from .posterior import LEVEL, FitResult, Posterior
from .sampling import check_seed

__all__ = ["Design", "Forecast", "design", "expected_width", "candidate_grid"]

_OUTCOMES = 64
_MAX_DRAWS = 2000
_REFITS = 16
_REFIT_DRAWS = 500  # warmup and draws per chain of a forecast refit, at most
PARETO_K = 0.7
"""Pareto ``k̂`` above which an outcome's importance weights are unreliable (Vehtari et al. 2024)."""
_DEGENERATE_SHARE = 0.1
_MULTIPLES = 2.0 ** np.arange(-3, 4)  # run sizes around the median N_opt of a budget share
_BEYOND = (2.0, 4.0, 10.0)  # run sizes as multiples of the largest model seen
_SPREADS = (2.0, 4.0)  # ratio of neighbouring sizes in an iso-FLOP grid
_TOKENS_PER_PARAM = (1.0, 1000.0)  # share runs outside this range of D/N are not considered


class Forecast(NamedTuple):
    """The expected interval width after a set of runs, and how far to trust it.

    Attributes:
        width: expected width of the target's interval after the runs (log scale).
        se: its Monte Carlo standard error.
        low, high: the central ``level`` range of the widths the runs could realise (over simulated outcomes).
        method: ``"importance"`` (reweighted current draws) or ``"refit"`` (the law refitted on simulated outcomes).
        pareto_k: share of simulated outcomes whose importance weights have Pareto ``k̂ > 0.7``.
        ess: mean effective sample size of the importance weights per outcome.
        converged: share of refits that converged (``nan`` for importance sampling).
    """

    width: float
    se: float
    low: float
    high: float
    method: str
    pareto_k: float
    ess: float
    converged: float


@dataclasses.dataclass(frozen=True)
class Design:
    """Runs chosen to narrow the target's interval, with the evidence for the choice.

    Attributes:
        candidates: one row per candidate run: ``N`` (parameters), ``D`` (tokens), ``cost`` (FLOPs),
            ``width`` (expected width of the target's interval after this run alone), ``width_se``
            (its Monte Carlo error), ``reduction`` (current width minus ``width``), ``per_eflop``
            (reduction per 1e18 FLOPs) and ``ess`` (mean effective sample size of the weights);
            sorted by ``per_eflop``, best first.
        selected: the chosen runs, with ``cumulative_cost`` (FLOPs), ``budget_share`` (cumulative
            cost over the budget) and ``width_after`` (importance-sampling estimate after this run and
            the ones before; the final forecast is :attr:`forecast`).
        sets: every set of runs compared: ``set`` (how it was built), ``runs``, ``cost`` (FLOPs),
            ``budget_share``, ``width`` and ``width_se`` (importance sampling), ``chosen``.
        forecast: the chosen set's :class:`Forecast`.
        grid: the best iso-FLOP grid of the same budget and its :class:`Forecast` (same method as the
            chosen set's), as ``(runs, forecast)``; ``None`` without a budget.
        width: the target's current interval width (log scale: ``log(upper/lower)``).
        target: what is narrowed, in words.
        level: credible level of the intervals.
        budget: FLOPs available for the new runs (``None``: no limit).
        rule: ``"width"`` or ``"per_flop"``.
    """

    candidates: pd.DataFrame
    selected: pd.DataFrame
    sets: pd.DataFrame
    forecast: Forecast
    grid: tuple[pd.DataFrame, Forecast] | None
    width: float
    target: str
    level: float
    budget: float | None
    rule: str

    @property
    def spent(self) -> float:
        """FLOPs the chosen runs cost."""
        return float(self.selected["cost"].sum())


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
def _after(
    q: jax.Array, mu: jax.Array, scale: jax.Array, df: jax.Array, base: jax.Array, source: jax.Array,
    shocks: jax.Array, *, level: float, student: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per simulated outcome, the width after one more run and the weights' ESS; and the new log weights."""
    order = jnp.argsort(q)
    y = mu[source] + scale[source] * shocks
    noise = dist.StudentT(df, mu, scale) if student else dist.Normal(mu, scale)
    total = base + jax.vmap(noise.log_prob)(y)
    weights = jax.nn.softmax(total, axis=1)
    widths = jax.vmap(lambda w: _weighted_width(q[order], w[order], level))(weights)
    return widths, 1.0 / jnp.sum(weights**2, axis=1), total


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
        shocks: standardised noise of each outcome of this run, ``(J,)``.
        level: credible level of the interval.
        student: Student-t noise (else normal).

    Returns:
        ``(mean width, its standard error, mean effective sample size, new base (J, S))``.
    """
    widths, ess, total = _after(q, mu, scale, df, base, source, shocks, level=level, student=student)
    return widths.mean(), widths.std() / jnp.sqrt(widths.size), ess.mean(), total


class _Preposterior:
    """The simulated outcomes of every candidate run and the values of sets of them (cached by set)."""

    def __init__(self, q: np.ndarray, mu: np.ndarray, sigma: np.ndarray, nu: np.ndarray, level: float,
                 outcomes: int, rng: np.random.Generator) -> None:
        self.q, self.mu, self.sigma, self.nu, self.level = q, mu, sigma, nu, level
        self.student = bool(np.all(np.isfinite(nu)))
        self.source = rng.integers(0, q.size, outcomes)
        size = (outcomes, mu.shape[1])
        self.shocks = (rng.standard_t(nu[self.source][:, None], size=size) if self.student
                       else rng.standard_normal(size))
        lo, hi = np.quantile(q, [(1 - level) / 2, (1 + level) / 2])
        self.current = float(hi - lo)
        self._memo: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, jax.Array]] = {
            (): (np.full(outcomes, self.current), np.full(outcomes, float(q.size)), jnp.zeros((outcomes, q.size)))}

    def of(self, runs: Sequence[int]) -> tuple[np.ndarray, np.ndarray, jax.Array]:
        """Per outcome, the width after ``runs`` (in this order) and the weights' ESS; and the log weights."""
        key = tuple(runs)
        if key not in self._memo:
            *_, base = self.of(key[:-1])
            c = key[-1]
            widths, ess, total = _after(
                jnp.asarray(self.q), jnp.asarray(self.mu[:, c]), jnp.asarray(self.sigma), jnp.asarray(self.nu),
                base, jnp.asarray(self.source), jnp.asarray(self.shocks[:, c]), level=self.level,
                student=self.student)
            self._memo[key] = (np.asarray(widths), np.asarray(ess), total)
        return self._memo[key]

    def width(self, runs: Sequence[int]) -> tuple[float, float]:
        """Expected width after ``runs`` and its Monte Carlo error."""
        widths = self.of(runs)[0]
        return float(widths.mean()), float(widths.std() / np.sqrt(widths.size))

    def forecast(self, runs: Sequence[int]) -> Forecast:
        widths, ess, total = self.of(runs)
        _, k_hat = az.psislw(np.asarray(total, dtype=float))
        low, high = np.quantile(widths, [(1 - self.level) / 2, (1 + self.level) / 2])
        mean, se = self.width(runs)
        return Forecast(mean, se, float(low), float(high), "importance", float(np.mean(k_hat > PARETO_K)),
                        float(ess.mean()), float("nan"))


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


def _partitions(units: int, largest: int | None = None) -> list[tuple[int, ...]]:
    """Every way to write ``units`` as a sum of positive integers, largest parts first."""
    if units == 0:
        return [()]
    top = units if largest is None else min(units, largest)
    return [(p, *rest) for p in range(top, 0, -1) for rest in _partitions(units - p, p)]


def _greedy(pre: _Preposterior, cost: np.ndarray, pool: Sequence[int], k: int, budget: float | None,
            per_flop: bool) -> list[int]:
    """Runs chosen one at a time: the largest expected reduction (per FLOP when asked) the rest of the budget pays for."""
    chosen: list[int] = []
    for _ in range(k):
        spent, now = float(cost[chosen].sum()), pre.width(chosen)[0]
        affordable = [c for c in pool if c not in chosen and (budget is None or spent + cost[c] <= budget)]
        if not affordable:
            break
        gains = [(now - pre.width([*chosen, c])[0]) / (cost[c] if per_flop else 1.0) for c in affordable]
        chosen.append(affordable[int(np.argmax(gains))])
    return chosen


def _best_sizes(pre: _Preposterior, options: Mapping[int, Sequence[int]], parts: Sequence[int]) -> list[int]:
    """One run per budget share in ``parts`` (largest first), each sized to narrow most given the ones before."""
    chosen: list[int] = []
    for part in parts:
        left = [c for c in options[part] if c not in chosen]
        if not left:
            return []
        chosen.append(min(left, key=lambda c: pre.width([*chosen, c])[0]))
    return chosen


def _refit_forecasts(fit: FitResult, pre: _Preposterior, table: pd.DataFrame, sets: Sequence[Sequence[int]],
                     target: Callable[[FitResult], np.ndarray], refits: int, seed: int) -> list[Forecast]:
    """Forecast each set by refitting the law on ``refits`` simulated outcomes of its runs (one batch)."""
    from .batch import fit_batch  # the batch module reads results through this package's public API

    covariates = fit.law.covariates
    datasets = {}
    for s, runs in enumerate(sets):
        for i in range(refits):
            draw = pre.source[i]
            y = pre.mu[draw, list(runs)] + pre.sigma[draw] * pre.shocks[i, list(runs)]
            datasets[f"{s}/{i}"] = ScalingData.from_arrays(
                loss=np.r_[fit.data.loss, np.exp(y)],
                **{c: np.r_[fit.data.covariate(c), table[c].to_numpy(dtype=float)[list(runs)]] for c in covariates})
    settings = dataclasses.replace(fit.settings, seed=seed, progress=False, num_warmup=min(fit.settings.num_warmup,
                                   _REFIT_DRAWS), num_samples=min(fit.settings.num_samples, _REFIT_DRAWS))
    batch = fit_batch(datasets, law=fit.law, likelihood=fit.spec.likelihood, priors=dict(fit.spec.priors),
                      settings=settings, structural=fit.misfit is not None)
    forecasts = []
    for s in range(len(sets)):
        fitted = [batch[f"{s}/{i}"] for i in range(refits) if f"{s}/{i}" not in batch.failures]
        if not fitted:
            raise RuntimeError("every refit of the forecast failed: " + "; ".join(batch.failures.values()))
        widths = np.array([np.diff(np.quantile(target(f), [(1 - pre.level) / 2, (1 + pre.level) / 2]))[0]
                           for f in fitted])
        low, high = np.quantile(widths, [(1 - pre.level) / 2, (1 + pre.level) / 2])
        importance = pre.forecast(sets[s])
        forecasts.append(Forecast(float(widths.mean()), float(widths.std() / np.sqrt(widths.size)), float(low),
                                  float(high), "refit", importance.pareto_k, importance.ess,
                                  sum(f.diagnostics.ok for f in fitted) / refits))
    return forecasts


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
    forecast: str = "auto",
    refits: int = _REFITS,
    seed: int = 0,
) -> Design:
    """Choose at most ``k`` runs within ``budget`` that narrow a planning interval most, with a forecast.

    Args:
        result: a posterior of a law in N and D (a fit, a batch or hierarchical
            member, or a stacked result).
        compute: target: ``N_opt`` at this budget (FLOPs). Give this or ``planned``.
        planned: target: the loss of a planned run, ``{"N": ..., "D": ...}``.
        candidates: runs to choose from, a DataFrame with ``N`` and ``D`` (and optionally
            ``cost`` in FLOPs). Default: :func:`candidate_grid` of the fitted runs and, with a
            budget, runs at each equal share of it (see the module docstring).
        budget: FLOPs available for the new runs; default: no limit (``k`` runs, chosen greedily).
        k: at most this many runs.
        flops_per_token: k in ``C = k·N·D`` for costs and allocation.
        level: credible level of the interval whose width is narrowed.
        outcomes: simulated outcomes per candidate (Monte Carlo size of importance sampling).
        rule: ``"width"``: the set with the narrowest expected interval for the whole budget;
            ``"per_flop"``: runs chosen one at a time by expected reduction per FLOP.
        unique_tokens: for a data-constrained law, the unique data (tokens) of the
            planned run (``N_opt`` target) and of candidates without a ``U`` column.
        forecast: ``"auto"`` (importance sampling; refits when its weights degenerate),
            ``"importance"`` or ``"refit"``.
        refits: simulated outcomes refitted per forecast set when refitting (with the fit's sampler
            settings, at most 500 warmup iterations and 500 draws per chain).
        seed: PRNG seed of the simulated outcomes (and of the refits).

    Returns:
        :class:`Design`.

    Raises:
        ValueError: no target or two, bad candidates or options, or no candidate within the budget.
    """
    if (compute is None) == (planned is None):
        raise ValueError("give one target: compute= (N_opt at that budget) or planned= (loss of a planned run)")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if rule not in ("width", "per_flop"):
        raise ValueError(f"rule must be 'width' or 'per_flop', got {rule!r}")
    if forecast not in ("auto", "importance", "refit"):
        raise ValueError(f"forecast must be 'auto', 'importance' or 'refit', got {forecast!r}")
    if not (isinstance(refits, int) and refits >= 2):
        raise ValueError(f"refits must be an integer of at least 2, got {refits!r}")
    if budget is not None and not (np.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a positive number of FLOPs, got {budget!r}")
    check_seed(seed)
    members, combine = _members(result)
    first = next(iter(members.values()))
    given = candidates is not None
    table = candidates.reset_index(drop=True).copy() if given else candidate_grid(first.data)
    for column in ("N", "D"):
        values = np.asarray(table.get(column, []), dtype=float)
        if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"candidates need a column {column!r} of positive numbers")

    def n_opt(fit: FitResult, at: Sequence[float]) -> np.ndarray:
        return optimal_allocation(fit.law, fit.draws(), list(at), flops_per_token, unique_tokens)["N_opt"]

    grids: list[tuple[str, list[int]]] = []
    shares: dict[int, list[int]] = {}
    if budget is not None:  # runs at every equal share of the budget, and iso-FLOP grids
        units = min(k, 6)
        at = [budget * u / units for u in range(1, units + 1)] + [budget / m for m in range(2, k + 1)]
        with jax.enable_x64(True):
            median = np.median(np.asarray(combine({n: n_opt(f, at) for n, f in members.items()})), axis=0)
        rows: list[dict[str, float]] = []

        def add(n: float, c: float) -> int:
            rows.append({"N": n, "D": c * (1 - 1e-12) / (flops_per_token * n)})
            return len(table) + len(rows) - 1

        smallest, largest = float(np.min(first.data.N)), float(np.max(first.data.N))

        def sane(n: float, c: float) -> bool:  # no smaller model than the grid's, a sensible number of tokens
            ratio = c / (flops_per_token * n * n)
            return n >= smallest and _TOKENS_PER_PARAM[0] <= ratio <= _TOKENS_PER_PARAM[1]

        for u in range(1, units + 1):
            c = budget * u / units
            sizes = [*(median[u - 1] * _MULTIPLES), *(largest * np.array(_BEYOND))]
            shares[u] = [] if given else [add(n, c) for n in sizes if sane(n, c)]
        for m in range(2, k + 1):
            c = budget / m
            low = np.log(max(smallest, np.sqrt(c / (flops_per_token * _TOKENS_PER_PARAM[1]))))
            high = np.log(np.sqrt(c / (flops_per_token * _TOKENS_PER_PARAM[0])))
            for spread in _SPREADS:  # centred on the median N_opt, moved inside the sensible sizes if need be
                half = (m - 1) / 2 * np.log(spread)
                if high - low < 2 * half:
                    continue
                centre = np.clip(np.log(median[units + m - 2]), low + half, high - half)
                sizes = np.exp(centre + np.log(spread) * (np.arange(m) - (m - 1) / 2))
                grids.append((f"iso-FLOP grid: {m} runs of 1/{m} of the budget, sizes x{spread:g} apart",
                              [add(float(n), c) for n in sizes]))
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    pool = list(range(len(candidates) if given else len(table)))
    if "cost" not in table or table["cost"].isna().any():
        cost = flops_per_token * table["N"] * table["D"]
        table["cost"] = cost if "cost" not in table else table["cost"].fillna(cost)
    if "U" in first.law.covariates and ("U" not in table or table["U"].isna().any()):
        if unique_tokens is None:
            raise ValueError(f"{first.law.name!r} needs unique tokens: give unique_tokens, or candidates with"
                             " a column 'U'")
        table["U"] = table["U"].fillna(float(unique_tokens)) if "U" in table else float(unique_tokens)
    other = [c for c in first.law.covariates if c not in ("N", "D")]
    missing = [c for c in other if c not in table]
    if missing:
        raise ValueError(f"candidates need columns {missing} for the law {first.law.name!r}")
    log_x = {c: np.log(table[c].to_numpy(dtype=float)) for c in ("N", "D", *other)}
    point = None if planned is None else {c: np.log([float(planned[c])]) for c in ("N", "D", *other)}

    def target(fit: FitResult) -> np.ndarray:
        """The target per draw of one fit, log scale."""
        if compute is not None:
            return np.log(n_opt(fit, [compute])[:, 0])
        return fit.log_mean_draws(point, seed)[:, 0]

    with jax.enable_x64(True):
        parts = [{name: f(fit) for name, fit in members.items()} for f in (
            target, lambda fit: fit.log_mean_draws(log_x, seed),  # the one predictive, structural error included
            lambda fit: _noise(fit, fit.spec.likelihood)[0], lambda fit: _noise(fit, fit.spec.likelihood)[1])]
        q, mu, sigma, nu = (np.asarray(combine(p)) for p in parts)
        rng = np.random.default_rng(seed)
        keep = rng.permutation(q.size)[:_MAX_DRAWS]
        pre = _Preposterior(q[keep], mu[keep], sigma[keep], nu[keep], level, outcomes, rng)
        current = pre.current
        alone = [pre.width([c]) for c in range(len(table))]
        cost = table["cost"].to_numpy(dtype=float)
        sets = [("greedy per FLOP" if rule == "per_flop" else "greedy", _greedy(
            pre, cost, pool, k, budget, per_flop=rule == "per_flop"))]
        if rule == "width":
            sets += [(f"budget split {'+'.join(map(str, p))} (of {len(shares)})", _best_sizes(pre, shares, p))
                     for p in _partitions(len(shares)) if len(p) <= k and not given]
            sets += [] if given else grids
        sets = [(name, runs) for name, runs in sets if runs]
        if not sets:
            raise ValueError(f"no candidate fits the budget of {budget:.3g} FLOPs (cheapest: {cost[pool].min():.3g})")
        best = min(range(len(sets)), key=lambda s: pre.width(sets[s][1])[0])
        best_grid = min(grids, key=lambda g: pre.width(g[1])[0]) if grids else None
        chosen = sets[best][1]
        final = pre.forecast(chosen)
        grid_final = pre.forecast(best_grid[1]) if best_grid else None
        degenerate = max(final.pareto_k, grid_final.pareto_k if grid_final else 0.0) > _DEGENERATE_SHARE
        if forecast == "refit" or (forecast == "auto" and degenerate):
            if len(members) == 1 and not first.spec.roles:
                forecasts = _refit_forecasts(first, pre, table, [chosen, *([best_grid[1]] if best_grid else [])],
                                             target, refits, seed)
                final, grid_final = forecasts[0], (forecasts[1] if best_grid else None)
                if grid_final is not None and grid_final.width < final.width:
                    best, chosen, final = next(s for s, (n, _) in enumerate(sets) if n == best_grid[0]), best_grid[1], grid_final
            else:
                warnings.warn(f"the importance weights of {final.pareto_k:.0%} of simulated outcomes have Pareto k > "
                              f"{PARETO_K} (the forecast is unreliable) and refit forecasts need a fit of one law",
                              stacklevel=2)
    table["width"] = [a[0] for a in alone]
    table["width_se"] = [a[1] for a in alone]
    table["ess"] = [float(pre.of([c])[1].mean()) for c in range(len(table))]
    table["reduction"] = current - table["width"]
    table["per_eflop"] = table["reduction"] / (table["cost"] / 1e18)
    spent = np.cumsum(cost[chosen])
    selected = pd.DataFrame({
        "N": table["N"].to_numpy()[chosen], "D": table["D"].to_numpy()[chosen], "cost": cost[chosen],
        "cumulative_cost": spent, "budget_share": spent / budget if budget else np.nan,
        "width_after": [pre.width(chosen[: i + 1])[0] for i in range(len(chosen))]})
    compared = pd.DataFrame([{"set": name, "runs": len(runs), "cost": cost[runs].sum(),
                              "budget_share": cost[runs].sum() / budget if budget else np.nan,
                              "width": pre.width(runs)[0], "width_se": pre.width(runs)[1], "chosen": s == best}
                             for s, (name, runs) in enumerate(sets)])
    name = (f"N_opt at {compute:.3g} FLOPs" if compute is not None
            else f"loss at N = {planned['N']:.3g}, D = {planned['D']:.3g}")
    ranked = table.iloc[pool].sort_values("per_eflop", ascending=False).reset_index(drop=True)
    grid = None if best_grid is None else (table.iloc[best_grid[1]][["N", "D", "cost"]].reset_index(drop=True),
                                           grid_final)
    return Design(ranked, selected, compared.sort_values("width").reset_index(drop=True), final, grid, current, name,
                  level, budget, rule)
