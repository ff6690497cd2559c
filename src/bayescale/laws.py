"""Parametric scaling laws: parameters, covariates, priors and log-space means.

A :class:`Law` says what is fitted. Its ``log_mean`` maps natural parameters and
log covariates to the log of the predicted loss and is a pure, JIT-able JAX
function. Priors are stated on the natural parameters (E, A, B, alpha, beta,
...). The sampler does not move in those coordinates, though: each amplitude
listed in ``centred`` is sampled as the log of its term *at the data centre*
(the geometric mean of the covariate), which removes the near-collinearity of
``log A`` and ``alpha`` that otherwise slows NUTS about threefold. The change of
variables is exact (its Jacobian enters the prior), so the posterior is the one
the priors and likelihood define.

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from .data import COVARIATES

__all__ = [
    "Law",
    "chinchilla",
    "kaplan",
    "kaplan_nd",
    "moe",
    "offset_power",
    "broken_power",
    "m4",
    "data_constrained",
    "overtrain",
    "power",
    "custom",
    "get_law",
    "list_laws",
]

Array = Any
Params = Mapping[str, Array]
LogMean = Callable[[Params, Params], Array]
LogOptimum = Callable[[Params, Array], Array]
"""``(params, log(C/k)) -> log N_opt``: a law's closed-form compute-optimal size."""
Centring = Callable[[Array, Params, Params], Array]
"""``(u, params_so_far, log_centre) -> natural value`` for a centred amplitude."""


@dataclasses.dataclass(frozen=True, eq=False)
class Law:
    """A parametric scaling law.

    Attributes:
        name: registry name (e.g. ``"chinchilla"``).
        params: natural parameter names, in sampling order (a centred amplitude
            comes after the exponent it depends on).
        covariates: the covariates it reads, a subset of ``("N", "D", "C")``.
        priors: default prior per natural parameter (scalar NumPyro distributions).
        log_mean: ``log_mean(params, log_x) -> log prediction``, where ``log_x``
            maps each covariate to the natural log of its values (any shape).
        centred: for amplitudes sampled in centred form, a function
            ``(u, params, log_centre) -> value`` with ``u`` real and
            ``log_centre`` the mean log covariates of the data.
        noise_prior: prior of ``sigma``, the noise scale on the log target.
        formula: the law in words, for tables and reports.
        options: keyword arguments that rebuild the law with :func:`get_law`.
        builtin: true for registry laws. Built-in laws compare equal by name and
            options, so equal laws share compiled programs (also across
            :func:`bayescale.load`); a custom law equals only itself.
        log_optimum: optional closed form of the compute-optimal size for a law
            in N and D, ``log_optimum(params, log(C/k)) -> log N_opt``; without
            it allocation minimises the law numerically along the iso-FLOP line.
    """

    name: str
    params: tuple[str, ...]
    covariates: tuple[str, ...]
    priors: Mapping[str, dist.Distribution]
    log_mean: LogMean
    centred: Mapping[str, Centring] = dataclasses.field(default_factory=dict)
    noise_prior: dist.Distribution = dataclasses.field(default_factory=lambda: dist.HalfNormal(0.1))
    formula: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    builtin: bool = False
    log_optimum: LogOptimum | None = None

    def __post_init__(self) -> None:
        unknown = [c for c in self.covariates if c not in COVARIATES]
        if unknown:
            raise ValueError(f"law {self.name!r}: unknown covariates {unknown}; expected some of {COVARIATES}")
        missing = [p for p in self.params if p not in self.priors]
        if missing:
            raise ValueError(f"law {self.name!r}: no prior for parameters {missing}")
        extra = [p for p in self.priors if p not in self.params]
        if extra:
            raise ValueError(f"law {self.name!r}: priors given for unknown parameters {extra}")
        for p in self.centred:
            if p not in self.params:
                raise ValueError(f"law {self.name!r}: centred amplitude {p!r} is not a parameter")
        object.__setattr__(self, "priors", types.MappingProxyType(dict(self.priors)))
        object.__setattr__(self, "centred", types.MappingProxyType(dict(self.centred)))
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))

    def __repr__(self) -> str:
        return f"Law({self.name!r}: {self.formula})"

    def _identity(self) -> tuple:
        if self.builtin:
            return (self.name, tuple(sorted(self.options.items())))
        return (id(self),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Law) and self.builtin == other.builtin and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


# Default priors, all on natural parameters. They are weakly informative for
# language-model losses in nats: E has median exp(0.5) = 1.65 nats and a 95%
# range of 0.23-12 nats; exponents have median 0.3 and a 95% range of 0.04-2.1;
# amplitudes are nearly flat over many orders of magnitude.
def _exponent_prior(median: float = 0.3) -> dist.Distribution:
    return dist.LogNormal(math.log(median), 1.0)


def _e_prior() -> dist.Distribution:
    return dist.LogNormal(0.5, 1.0)


def _amplitude_prior(log_median: float = 5.0) -> dist.Distribution:
    return dist.LogNormal(log_median, 5.0)


def _term_at_centre(exponent: str, covariate: str) -> Centring:
    """Amplitude A of ``A·X^-exponent`` from ``u = log(A·X0^-exponent)``."""
    return lambda u, p, c: jnp.exp(u + p[exponent] * c[covariate])


def chinchilla() -> Law:
    """Chinchilla's additive law ``L = E + A/N^alpha + B/D^beta`` (Hoffmann et al., 2022).

    Priors: ``E ~ LogNormal(0.5, 1)``, ``A, B ~ LogNormal(5, 5)``,
    ``alpha, beta ~ LogNormal(log 0.3, 1)``. Published values: E=1.69,
    A=406.4, B=410.7, alpha=0.34, beta=0.28.
    """

    def log_mean(p: Params, x: Params) -> Array:
        n_term = jnp.log(p["A"]) - p["alpha"] * x["N"]
        d_term = jnp.log(p["B"]) - p["beta"] * x["D"]
        return jnp.logaddexp(jnp.log(p["E"]), jnp.logaddexp(n_term, d_term))

    def log_optimum(p: Params, log_c_over_k: Array) -> Array:
        # N_opt = G·(C/k)^(beta/s), G = (alpha·A/(beta·B))^(1/s), s = alpha + beta.
        s = p["alpha"] + p["beta"]
        return (jnp.log(p["alpha"] * p["A"]) - jnp.log(p["beta"] * p["B"])) / s + p["beta"] / s * log_c_over_k

    return Law(
        name="chinchilla",
        params=("E", "alpha", "beta", "A", "B"),
        covariates=("N", "D"),
        priors={
            "E": _e_prior(),
            "alpha": _exponent_prior(),
            "beta": _exponent_prior(),
            "A": _amplitude_prior(),
            "B": _amplitude_prior(),
        },
        log_mean=log_mean,
        centred={"A": _term_at_centre("alpha", "N"), "B": _term_at_centre("beta", "D")},
        formula="L = E + A/N^alpha + B/D^beta",
        log_optimum=log_optimum,
    )


def moe() -> Law:
    """Chinchilla's law for mixtures of experts and dense models together.

    ``L = E + A/N_eff^alpha + B/D^beta`` with an effective size between active
    and total parameters, ``log N_eff = (1 - w)·log N + w·log N_total``; ``w = 0``
    means only active parameters matter, ``w = 1`` only total ones. Dense runs
    have ``N_total = N`` and do not inform ``w``. Needs covariates N (active
    parameters), N_total and D. Priors as :func:`chinchilla`, ``w ~ Beta(2, 2)``.
    """

    def log_n_eff(p: Params, x: Params) -> Array:
        return (1 - p["w"]) * x["N"] + p["w"] * x["N_total"]

    def log_mean(p: Params, x: Params) -> Array:
        n_term = jnp.log(p["A"]) - p["alpha"] * log_n_eff(p, x)
        d_term = jnp.log(p["B"]) - p["beta"] * x["D"]
        return jnp.logaddexp(jnp.log(p["E"]), jnp.logaddexp(n_term, d_term))

    return Law(
        name="moe",
        params=("E", "alpha", "beta", "w", "A", "B"),
        covariates=("N", "N_total", "D"),
        priors={
            "E": _e_prior(),
            "alpha": _exponent_prior(),
            "beta": _exponent_prior(),
            "w": dist.Beta(2.0, 2.0),
            "A": _amplitude_prior(),
            "B": _amplitude_prior(),
        },
        log_mean=log_mean,
        centred={"A": lambda u, p, c: jnp.exp(u + p["alpha"] * log_n_eff(p, c)), "B": _term_at_centre("beta", "D")},
        formula="L = E + A/N_eff^alpha + B/D^beta, log N_eff = (1-w) log N + w log N_total",
    )


def kaplan(covariate: str = "N") -> Law:
    """Kaplan's single-variable law ``L = (X_c/X)^alpha_X`` for X = N, D or C.

    Parameters ``alpha_X`` and ``X_c``. Priors: ``alpha_X ~ LogNormal(log 0.1, 1)``,
    ``X_c ~ LogNormal(30, 10)``. Kaplan et al. (2020): alpha_N=0.076,
    N_c=8.8e13; alpha_D=0.095, D_c=5.4e13; alpha_C=0.050, C_c=3.1e8.
    The registry names are ``kaplan_n``, ``kaplan_d`` and ``kaplan_c``.
    """
    if covariate not in ("N", "D", "C"):
        raise ValueError(f"kaplan: covariate must be one of ('N', 'D', 'C'), got {covariate!r}")
    alpha, scale = f"alpha_{covariate}", f"{covariate}_c"

    def log_mean(p: Params, x: Params) -> Array:
        return p[alpha] * (jnp.log(p[scale]) - x[covariate])

    return Law(
        name=f"kaplan_{covariate.lower()}",
        params=(alpha, scale),
        covariates=(covariate,),
        priors={alpha: _exponent_prior(0.1), scale: dist.LogNormal(30.0, 10.0)},
        log_mean=log_mean,
        # u = log L at the centre: X_c = X0 · exp(u / alpha).
        centred={scale: lambda u, p, c: jnp.exp(u / p[alpha] + c[covariate])},
        formula=f"L = ({scale}/{covariate})^{alpha}",
    )


def kaplan_nd() -> Law:
    """Kaplan's joint law ``L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D``.

    Priors as for :func:`kaplan`. Kaplan et al. (2020): alpha_N=0.076,
    alpha_D=0.095, N_c=8.8e13, D_c=5.4e13.
    """

    def log_mean(p: Params, x: Params) -> Array:
        ratio = p["alpha_N"] / p["alpha_D"]
        n_term = ratio * (jnp.log(p["N_c"]) - x["N"])
        d_term = jnp.log(p["D_c"]) - x["D"]
        return p["alpha_D"] * jnp.logaddexp(n_term, d_term)

    return Law(
        name="kaplan_nd",
        params=("alpha_N", "alpha_D", "N_c", "D_c"),
        covariates=("N", "D"),
        priors={
            "alpha_N": _exponent_prior(0.1),
            "alpha_D": _exponent_prior(0.1),
            "N_c": dist.LogNormal(30.0, 10.0),
            "D_c": dist.LogNormal(30.0, 10.0),
        },
        log_mean=log_mean,
        # u = log of the N-only (D-only) Kaplan loss at the data centre.
        centred={
            "N_c": lambda u, p, c: jnp.exp(u / p["alpha_N"] + c["N"]),
            "D_c": lambda u, p, c: jnp.exp(u / p["alpha_D"] + c["D"]),
        },
        formula="L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
    )


def offset_power(covariate: str = "C") -> Law:
    """Power law with offset ``L = E + A·X^-alpha`` in one covariate X (N, D or C).

    Priors as for :func:`chinchilla` (E, A, alpha).
    """
    if covariate not in COVARIATES:
        raise ValueError(f"offset_power: covariate must be one of {COVARIATES}, got {covariate!r}")

    def log_mean(p: Params, x: Params) -> Array:
        return jnp.logaddexp(jnp.log(p["E"]), jnp.log(p["A"]) - p["alpha"] * x[covariate])

    return Law(
        name="offset_power",
        params=("E", "alpha", "A"),
        covariates=(covariate,),
        priors={"E": _e_prior(), "alpha": _exponent_prior(), "A": _amplitude_prior()},
        log_mean=log_mean,
        centred={"A": _term_at_centre("alpha", covariate)},
        formula=f"L = E + A·{covariate}^-alpha",
        options={"covariate": covariate},
    )


def broken_power(covariate: str = "C") -> Law:
    """Power law with one smooth break, ``L = E + A·X^-alpha·(1 + X/X_b)^-delta`` (Caballero et al. 2022).

    One covariate X (N, D or C). Below the break ``X_b`` the reducible loss falls with
    exponent ``alpha``, above it with ``alpha + delta`` (``delta < 0``: the curve
    flattens; sharpness fixed at 1, the broken neural scaling law with one break).
    A single power law that bends is the most common misfit of long extrapolations.
    Priors: ``E``, ``alpha`` and ``A`` as :func:`offset_power`; ``delta ~ Normal(0, 0.3)``;
    ``X_b ~ LogNormal(40, 20)`` (sampled relative to the data centre, so the prior
    is wide but the sampler's coordinate is well scaled).
    """
    if covariate not in COVARIATES:
        raise ValueError(f"broken_power: covariate must be one of {COVARIATES}, got {covariate!r}")

    def bend(p: Params, x: Array) -> Array:
        return p["delta"] * jnp.logaddexp(0.0, x - jnp.log(p["X_b"]))

    def log_mean(p: Params, x: Params) -> Array:
        return jnp.logaddexp(jnp.log(p["E"]), jnp.log(p["A"]) - p["alpha"] * x[covariate] - bend(p, x[covariate]))

    return Law(
        name="broken_power",
        params=("E", "alpha", "delta", "X_b", "A"),
        covariates=(covariate,),
        priors={
            "E": _e_prior(),
            "alpha": _exponent_prior(),
            "delta": dist.Normal(0.0, 0.3),
            "X_b": dist.LogNormal(40.0, 20.0),
            "A": _amplitude_prior(),
        },
        log_mean=log_mean,
        # X_b = X0·e^u; A from u = log of the reducible term at the centre.
        centred={
            "X_b": lambda u, p, c: jnp.exp(u + c[covariate]),
            "A": lambda u, p, c: jnp.exp(u + p["alpha"] * c[covariate] + bend(p, c[covariate])),
        },
        formula=f"L = E + A·{covariate}^-alpha·(1 + {covariate}/X_b)^-delta",
        options={"covariate": covariate},
    )


_M4_NEWTON_STEPS = 8
"""Newton iterations of the M4 solve: g' lies in [min(1, gamma), max(1, gamma)] and g is convex or concave,
so Newton converges monotonically after its first step; from the start used, 5 steps reach float32's
precision and 7 float64's over log r in [-40, 40] and gamma in [0.02, 20] (measured)."""


def _m4_logit(log_r: Array, gamma: Array) -> Array:
    """The ``t = logit(u)`` that solves ``log u - gamma·log(1 - u) = log_r`` (any shape), differentiable.

    ``g(t) = -softplus(-t) + gamma·softplus(t)`` rises with slope 1 on the left and ``gamma`` on the
    right. The iterations run without gradients; one last Newton step from the converged point carries
    them (at a root, its derivative is the implicit function's: ``dt = -dg/g'``).
    """

    def g(t: Array, log_r: Array, gamma: Array) -> tuple[Array, Array]:
        value = -jax.nn.softplus(-t) + gamma * jax.nn.softplus(t) - log_r
        return value, jax.nn.sigmoid(-t) + gamma * jax.nn.sigmoid(t)

    def step(t: Array, log_r: Array, gamma: Array) -> Array:
        value, slope = g(t, log_r, gamma)
        return t - value / slope

    fixed_r, fixed_gamma = jax.lax.stop_gradient(log_r), jax.lax.stop_gradient(gamma)
    start = jnp.where(fixed_r < 0, fixed_r, fixed_r / fixed_gamma)
    t = start
    for _ in range(_M4_NEWTON_STEPS):
        t = step(t, fixed_r, fixed_gamma)
    return step(jax.lax.stop_gradient(t), log_r, gamma)


def m4(covariate: str = "C") -> Law:
    """The M4 learning-curve law of Alabdulmohsin et al. 2022, in one covariate X (N, D or C).

    The loss L is defined implicitly by ``(L - E) / (L0 - L)^gamma = A·X^-alpha``: it
    falls from ``L0 = E + Delta`` (the loss of an untrained model, X -> 0) along a
    sigmoid in log X into the power law ``E + A·Delta^gamma·X^-alpha`` and then to
    ``E``; with ``gamma = 0`` it is :func:`offset_power` (capped at L0). Its bend near
    the start of a curve is where single power laws extrapolate worst.

    Priors: ``E``, ``alpha`` and ``A`` as :func:`offset_power`; ``Delta ~ LogNormal(1, 2)``
    (nats, median 2.7, 95% range 0.05-140); ``gamma ~ LogNormal(0, 1)``. ``A`` is sampled
    as the log of ``Delta^gamma·A·X0^-alpha`` at the data centre X0 (the reducible
    loss there while the curve is in its power-law part). Solved by Newton's method on
    ``logit((L - E)/Delta)`` (8 steps, gradients by implicit differentiation).
    """
    if covariate not in COVARIATES:
        raise ValueError(f"m4: covariate must be one of {COVARIATES}, got {covariate!r}")

    def log_mean(p: Params, x: Params) -> Array:
        log_delta = jnp.log(p["Delta"])
        log_r = jnp.log(p["A"]) + (p["gamma"] - 1) * log_delta - p["alpha"] * x[covariate]
        t = _m4_logit(log_r, p["gamma"])
        return jnp.logaddexp(jnp.log(p["E"]), log_delta - jax.nn.softplus(-t))

    return Law(
        name="m4",
        params=("E", "alpha", "gamma", "Delta", "A"),
        covariates=(covariate,),
        priors={
            "E": _e_prior(),
            "alpha": _exponent_prior(),
            "gamma": dist.LogNormal(0.0, 1.0),
            "Delta": dist.LogNormal(1.0, 2.0),
            "A": _amplitude_prior(),
        },
        log_mean=log_mean,
        centred={"A": lambda u, p, c: jnp.exp(u - p["gamma"] * jnp.log(p["Delta"]) + p["alpha"] * c[covariate])},
        formula=f"(L - E)/(E + Delta - L)^gamma = A·{covariate}^-alpha",
        options={"covariate": covariate},
    )


def data_constrained(tokens_per_param: float = 20.0) -> Law:
    """Chinchilla's law on effective data and parameters when unique data is repeated (Muennighoff et al. 2023).

    ``L = E + A/N'^alpha + B/D'^beta`` with, for ``U`` unique tokens seen ``D/U`` times,
    ``U_D = min(U, D)``, ``R_D = D/U_D - 1`` repetitions beyond the first epoch and
    ``D' = U_D + U_D·R_D*·(1 - exp(-R_D/R_D*))``: repeated tokens are worth less and
    less, and never more than ``R_D*`` epochs of fresh data. Likewise parameters in
    excess of what the unique data can use, ``U_N = min(N, U_D / tokens_per_param)``,
    ``R_N = N/U_N - 1``, ``N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*))``. With ``U >= D``
    (one epoch) and ``N <= U/tokens_per_param`` it is Chinchilla's law.

    Needs covariates N, D and U (unique tokens). Priors as :func:`chinchilla`, and
    ``R_D* ~ LogNormal(log 15, 1)``, ``R_N* ~ LogNormal(log 5, 1)``, centred on the
    published fit (R_D* = 15.4, R_N* = 5.3).

    Args:
        tokens_per_param: the compute-optimal tokens per parameter that defines
            ``U_N`` (Muennighoff et al. use Chinchilla's, about 20).
    """
    log_ratio = float(jnp.log(tokens_per_param))

    def effective(log_u: Array, log_x: Array, r_star: Array) -> Array:
        """log of ``U + U·R*·(1 - exp(-R/R*))`` with ``R = X/U - 1``."""
        repeats = jnp.expm1(log_x - log_u)
        return log_u + jnp.log1p(-r_star * jnp.expm1(-repeats / r_star))

    def log_effective(p: Params, x: Params) -> tuple[Array, Array]:
        log_u_d = jnp.minimum(x["U"], x["D"])
        log_u_n = jnp.minimum(x["N"], log_u_d - log_ratio)
        return effective(log_u_n, x["N"], p["R_N"]), effective(log_u_d, x["D"], p["R_D"])

    def log_mean(p: Params, x: Params) -> Array:
        log_n, log_d = log_effective(p, x)
        n_term = jnp.log(p["A"]) - p["alpha"] * log_n
        d_term = jnp.log(p["B"]) - p["beta"] * log_d
        return jnp.logaddexp(jnp.log(p["E"]), jnp.logaddexp(n_term, d_term))

    return Law(
        name="data_constrained",
        params=("E", "alpha", "beta", "R_D", "R_N", "A", "B"),
        covariates=("N", "D", "U"),
        priors={
            "E": _e_prior(),
            "alpha": _exponent_prior(),
            "beta": _exponent_prior(),
            "R_D": dist.LogNormal(jnp.log(15.0), 1.0),
            "R_N": dist.LogNormal(jnp.log(5.0), 1.0),
            "A": _amplitude_prior(),
            "B": _amplitude_prior(),
        },
        log_mean=log_mean,
        centred={"A": _term_at_centre("alpha", "N"), "B": _term_at_centre("beta", "D")},
        formula="L = E + A/N'^alpha + B/D'^beta, D' = U + U·R_D*(1 - exp(-(D/U - 1)/R_D*)), N' likewise",
        options={"tokens_per_param": tokens_per_param},
    )


def overtrain() -> Law:
    """The over-training law of Gadre et al. 2024, ``L = E + (a·M^eta + b·M^-eta)·C^-eta``.

    ``M = D/N`` is tokens per parameter and ``C = 6·N·D``; in N and D it is
    Chinchilla's law with equal exponents, ``L = E + a'·N^-2eta + b'·D^-2eta``
    (``a' = a·6^-eta``, ``b' = b·6^-eta``), the form under which the loss at a
    fixed multiplier M falls as one power of compute, so small runs at large M
    predict large ones at the same M. Parameters are ``E``, ``eta`` and the
    Chinchilla amplitudes ``A = a'`` and ``B = b'``. Priors as :func:`chinchilla`,
    ``eta ~ LogNormal(log 0.15, 1)``.
    """

    def log_mean(p: Params, x: Params) -> Array:
        n_term = jnp.log(p["A"]) - 2 * p["eta"] * x["N"]
        d_term = jnp.log(p["B"]) - 2 * p["eta"] * x["D"]
        return jnp.logaddexp(jnp.log(p["E"]), jnp.logaddexp(n_term, d_term))

    def log_optimum(p: Params, log_c_over_k: Array) -> Array:
        # Equal exponents: N_opt = sqrt(A/B · C/k).
        return 0.5 * (jnp.log(p["A"]) - jnp.log(p["B"]) + log_c_over_k)

    return Law(
        name="overtrain",
        params=("E", "eta", "A", "B"),
        covariates=("N", "D"),
        priors={"E": _e_prior(), "eta": _exponent_prior(0.15), "A": _amplitude_prior(), "B": _amplitude_prior()},
        log_mean=log_mean,
        centred={
            "A": lambda u, p, c: jnp.exp(u + 2 * p["eta"] * c["N"]),
            "B": lambda u, p, c: jnp.exp(u + 2 * p["eta"] * c["D"]),
        },
        formula="L = E + (a·M^eta + b·M^-eta)·C^-eta, M = D/N (= E + A/N^2eta + B/D^2eta)",
        log_optimum=log_optimum,
    )


def power(covariate: str | tuple[str, ...] = "C") -> Law:
    """Pure power law ``Y = K·X^a`` for any positive target Y (batch size, learning rate...).

    With several covariates it is the hyperparameter law of DeepSeek and Step Law,
    ``Y = K·N^a_N·D^a_D`` (``covariate=("N", "D")``; any of N, D, C), with one
    exponent ``a_X`` per covariate. Exponents may be negative. Priors:
    ``a ~ Normal(0, 1)`` (each ``a_X``), ``K ~ LogNormal(0, 10)``, noise
    ``sigma ~ HalfNormal(0.5)`` on log Y.
    """
    names = (covariate,) if isinstance(covariate, str) else tuple(covariate)
    unknown = [c for c in names if c not in COVARIATES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"power: covariate must be one or more distinct of {COVARIATES}, got {covariate!r}")
    exponents = {c: "a" if len(names) == 1 else f"a_{c}" for c in names}

    def log_sum(p: Params, x: Params) -> Array:
        return sum(p[exponents[c]] * x[c] for c in names)

    return Law(
        name="power",
        params=(*exponents.values(), "K"),
        covariates=names,
        priors={**{a: dist.Normal(0.0, 1.0) for a in exponents.values()}, "K": dist.LogNormal(0.0, 10.0)},
        log_mean=lambda p, x: jnp.log(p["K"]) + log_sum(p, x),
        # u = log Y at the centre: K = exp(u - sum a_X·log X0).
        centred={"K": lambda u, p, c: jnp.exp(u - log_sum(p, c))},
        noise_prior=dist.HalfNormal(0.5),
        formula="Y = K·" + "·".join(f"{c}^{a}" for c, a in exponents.items()),
        options={"covariate": names[0] if len(names) == 1 else names},
    )


def custom(
    name: str,
    params: tuple[str, ...],
    covariates: tuple[str, ...],
    log_mean: LogMean,
    priors: Mapping[str, dist.Distribution],
    *,
    centred: Mapping[str, Centring] | None = None,
    noise_prior: dist.Distribution | None = None,
    formula: str = "",
    log_optimum: LogOptimum | None = None,
) -> Law:
    """A user's own law, fitted with the same machinery as the built-in ones.

    Args:
        name: a name for tables and saved results.
        params: natural parameter names.
        covariates: covariates used, among ``"N"``, ``"D"``, ``"C"``.
        log_mean: ``log_mean(params, log_x) -> log prediction``, pure JAX; ``params``
            maps names to scalars, ``log_x`` maps covariates to log values.
        priors: a scalar NumPyro distribution for every parameter.
        centred: optional centred amplitudes (see :class:`Law`).
        noise_prior: prior of the log-scale noise; default ``HalfNormal(0.1)``.
        formula: the law in words.
        log_optimum: optional closed-form compute-optimal size for a law in N
            and D (see :class:`Law`).

    Returns:
        A :class:`Law`. Saved results of a custom law load with ``bs.load(path, law=...)``.
    """
    return Law(
        name=name,
        params=tuple(params),
        covariates=tuple(covariates),
        priors=dict(priors),
        log_mean=log_mean,
        centred=dict(centred or {}),
        noise_prior=noise_prior if noise_prior is not None else dist.HalfNormal(0.1),
        formula=formula,
        log_optimum=log_optimum,
    )


_REGISTRY: dict[str, Callable[..., Law]] = {
    "chinchilla": chinchilla,
    "kaplan_n": lambda: kaplan("N"),
    "kaplan_d": lambda: kaplan("D"),
    "kaplan_c": lambda: kaplan("C"),
    "kaplan_nd": kaplan_nd,
    "moe": moe,
    "offset_power": offset_power,
    "broken_power": broken_power,
    "m4": m4,
    "data_constrained": data_constrained,
    "overtrain": overtrain,
    "power": power,
}


def list_laws() -> list[str]:
    """Names of the built-in laws."""
    return list(_REGISTRY)


def get_law(law: str | Law, **options: Any) -> Law:
    """Return a built-in law by name (with ``options`` such as ``covariate="N"``), or ``law`` itself."""
    if isinstance(law, Law):
        return law
    if law not in _REGISTRY:
        raise ValueError(f"unknown law {law!r}; built-in laws are {list_laws()} (or pass a Law from bs.laws.custom)")
    # Options come back from JSON as lists: tuples again, so a loaded law equals the one saved.
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return dataclasses.replace(_REGISTRY[law](**options), builtin=True)
