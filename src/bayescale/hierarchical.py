"""Hierarchical fits: partial pooling of a law's parameters across groups.

Scaling laws differ between datasets and architectures, but not arbitrarily.
:func:`fit_hierarchical` fits one law to every group at once, with each
parameter in one of three roles:

- ``shared``: one value for all groups;
- ``pooled``: a value per group drawn from a population whose location and
  scale are inferred, non-centred (``theta_g = f(mu + tau·z_g)``, ``z_g ~
  Normal(0, 1)``), so groups with few runs borrow strength without funnels;
- otherwise per group, independent.

Coordinates and priors. A positive parameter with a ``LogNormal(m, s)`` prior
is pooled on its log: ``mu ~ Normal(m, s)``; a real one with ``Normal(m, s)``
directly. Amplitudes (A, B, ...) are handled as in :func:`bayescale.fit`, on the
log of their term at the centre of all the data, ``u = log(A·N0^-alpha)``, which
removes the near-collinearity of A and alpha; in this model their prior is
``Normal(0, 2)`` on ``u`` (terms between e^-4 and e^4 nats), for shared,
pooled-location and per-group values alike. Population scales ``tau ~
HalfNormal(0.5)`` on the same coordinates. One noise scale for all groups, with
the law's noise prior.

Units: N in parameters, D in tokens, C in FLOPs, loss in nats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import xarray as xr

from .allocation import compute_optimal_by_group
from .batch import split_groups
from .data import COVARIATES, DataError, ScalingData
from .inference import check_sampler_args, sample_numpyro
from .laws import Law, get_law
from .likelihoods import Likelihood, get_likelihood
from .model import OBSERVED, make_spec
from .results import LEVEL, Diagnostics, FitResult, describe_draws, diagnose, summaries_by_group, warn_unconverged
from .sampling import NUTSConfig

__all__ = ["HierarchicalResult", "fit_hierarchical", "TAU_SCALE", "AMPLITUDE_SCALE"]

TAU_SCALE = 0.5
"""Scale of the half-normal prior on population spreads (log scale for positive parameters)."""
AMPLITUDE_SCALE = 2.0
"""Scale of the normal prior on an amplitude's centred coordinate ``u``."""


def _coordinate_prior(law: Law, name: str) -> tuple[float, float, bool]:
    """``(loc, scale, log)`` of the normal prior on a parameter's pooling coordinate."""
    if name in law.centred:
        return 0.0, AMPLITUDE_SCALE, False
    prior = law.priors[name]
    if isinstance(prior, dist.LogNormal):
        return float(prior.loc), float(prior.scale), True
    if isinstance(prior, dist.Normal):
        return float(prior.loc), float(prior.scale), False
    raise ValueError(f"{name!r} has a {type(prior).__name__} prior; pooling needs a LogNormal or Normal prior")


def _model(log_x: dict, log_y: jax.Array | None, index: jax.Array, centre: dict, num_groups: int, law: Law,
           roles: Mapping[str, str], likelihood: Likelihood, noise_prior: dist.Distribution) -> None:
    params: dict[str, jax.Array] = {}
    for name in law.params:
        role = roles[name]
        amplitude = name in law.centred

        def natural(c: jax.Array, name: str = name) -> jax.Array:
            """Natural value from the pooling coordinate (centred log term, log, or identity)."""
            if name in law.centred:
                return law.centred[name](c, params, centre)
            return jnp.exp(c) if _coordinate_prior(law, name)[2] else c

        if role == "pooled":
            loc, scale, _ = _coordinate_prior(law, name)
            mu = numpyro.sample(f"{name}_loc", dist.Normal(loc, scale))
            tau = numpyro.sample(f"{name}_scale", dist.HalfNormal(TAU_SCALE))
            with numpyro.plate("group", num_groups):
                z = numpyro.sample(f"{name}_z", dist.Normal(0.0, 1.0))
            value = natural(mu + tau * z)
        else:
            plate = numpyro.plate("group", num_groups) if role == "group" else contextlib.nullcontext()
            with plate:
                if amplitude:
                    value = natural(numpyro.sample(f"{name}_centred", dist.Normal(0.0, AMPLITUDE_SCALE)))
                else:
                    value = numpyro.sample(f"{name}_{role}", law.priors[name])
        params[name] = numpyro.deterministic(name, jnp.broadcast_to(value, (num_groups,)))
    sigma = numpyro.sample("sigma", noise_prior)
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1)) if likelihood.learns_nu else None
    loc = law.log_mean({k: v[index] for k, v in params.items()}, log_x)
    with numpyro.plate("run", index.shape[0]):
        numpyro.sample(OBSERVED, likelihood.distribution(loc, sigma, nu), obs=log_y)


@dataclasses.dataclass(frozen=True, eq=False)
class HierarchicalResult:
    """Posterior of a hierarchical fit.

    Attributes:
        idata: ``arviz.InferenceData``; natural parameters with dim ``group``,
            population ``{name}_loc``/``{name}_scale`` of pooled parameters, ``sigma``.
        law: the law.
        likelihood: the observation model.
        data: all runs, with their group labels.
        groups: group names, in input order.
        roles: parameter -> ``"shared"``, ``"pooled"`` or ``"group"``.
        config: sampler settings.
        seed: the seed.
    """

    idata: az.InferenceData
    law: Law
    likelihood: Likelihood
    data: ScalingData
    groups: list[str]
    roles: Mapping[str, str]
    config: NUTSConfig
    seed: int

    @property
    def population_names(self) -> list[str]:
        """Names of the population parameters (location and scale of each pooled parameter)."""
        return [f"{p}_{s}" for p, r in self.roles.items() if r == "pooled" for s in ("loc", "scale")]

    @functools.cached_property
    def diagnostics(self) -> Diagnostics:
        """R-hat, bulk ESS and divergences over all groups' parameters and the population."""
        return diagnose(self.idata, (*self.law.params, "sigma", *self.population_names))

    def population(self, level: float = LEVEL) -> pd.DataFrame:
        """Location and scale of each pooled parameter's population, with intervals.

        Locations are on the pooling coordinate (log of positive parameters; the
        centred log term for amplitudes); ``{name}_typical`` is the natural value
        at the location, for positive non-amplitude parameters.
        """
        post = self.idata.posterior
        draws = {n: post[n].values.reshape(-1) for n in self.population_names}
        for p, role in self.roles.items():
            if role == "pooled" and p not in self.law.centred and _coordinate_prior(self.law, p)[2]:
                draws[f"{p}_typical"] = np.exp(draws[f"{p}_loc"])
        return describe_draws(draws, level)

    def __getitem__(self, group: str) -> FitResult:
        """The posterior of one group as a :class:`FitResult` (usable with every allocation function)."""
        if group not in self.groups:
            raise KeyError(f"unknown group {group!r}; groups are {self.groups}")
        post = self.idata.posterior
        names = [*self.law.params, "sigma"] + (["nu"] if self.likelihood.learns_nu else [])
        posterior = xr.Dataset({n: post[n].sel(group=group, drop=True) if "group" in post[n].dims else post[n]
                                for n in names})
        idata = az.InferenceData(posterior=posterior, sample_stats=self.idata.sample_stats)
        data = self.data.subset(np.asarray(self.data.group).astype(str) == group)
        spec = make_spec(self.law, self.likelihood)
        return FitResult(idata=idata, spec=spec, data=data, config=self.config, seed=self.seed)

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Long table: one row per (group, parameter), with statistics, r_hat and ESS."""
        return summaries_by_group({g: self[g] for g in self.groups}, level)

    def compute_optimal(
        self, compute: Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL
    ) -> pd.DataFrame:
        """Compute-optimal allocation of every group in one table (group, compute)."""
        return compute_optimal_by_group({g: self[g] for g in self.groups}, compute, flops_per_token, level)


def fit_hierarchical(
    data: Any,
    group: str | None = None,
    law: str | Law = "chinchilla",
    shared: Sequence[str] = ("alpha", "beta"),
    pooled: Sequence[str] = ("E", "A", "B"),
    likelihood: str | Likelihood = "student_t",
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    target_accept_prob: float = 0.9,
    max_tree_depth: int = 10,
    progress: bool = False,
    **columns: Any,
) -> HierarchicalResult:
    """Fit one law to several groups with shared, partially pooled and per-group parameters.

    Args:
        data: a DataFrame with a ``group`` column, :class:`ScalingData` with
            groups, or a dict of name -> :class:`ScalingData`.
        group: the group column of a DataFrame.
        law: law name or :class:`Law`.
        shared: parameters common to all groups.
        pooled: parameters drawn per group from an inferred population.
        likelihood: observation model on log-loss (default Student-t, nu = 4).
        num_warmup, num_samples, num_chains, target_accept_prob, max_tree_depth:
            NUTS settings (dense mass matrix).
        seed: PRNG seed.
        progress: show NumPyro's progress bar.
        **columns: column names for :meth:`ScalingData.from_table`.

    Returns:
        :class:`HierarchicalResult`; a :class:`ConvergenceWarning` is emitted
        when diagnostics fail.

    Raises:
        ValueError: unknown or doubly listed parameter names, fewer than two
            groups, a group with invalid data, or too few runs in all.
    """
    check_sampler_args(num_warmup, num_samples, num_chains, seed)
    law = get_law(law)
    lik = get_likelihood(likelihood)
    roles = _roles(law, shared, pooled)
    groups, failures, order = split_groups(data, group, columns)
    if failures:
        raise DataError("invalid groups: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    if len(groups) < 2:
        raise DataError(f"a hierarchical fit needs at least two groups, got {len(groups)}")
    for name, d in groups.items():
        for c in law.covariates:
            try:
                d.covariate(c)
            except DataError as err:
                raise DataError(f"group {name!r}: {err}") from None
    runs = sum(d.n for d in groups.values())
    if runs <= len(law.params) + 1:
        raise DataError(f"{runs} runs are too few for a hierarchical fit of {law.name!r}")
    labels = np.concatenate([np.full(groups[g].n, g, dtype=object) for g in order])
    all_data = ScalingData.from_arrays(
        loss=np.concatenate([groups[g].loss for g in order]),
        **{c: np.concatenate([groups[g].covariate(c) for g in order]) for c in COVARIATES
           if all(c in groups[g].available() for g in order)},
        group=labels,
    )
    index = np.concatenate([np.full(groups[g].n, i) for i, g in enumerate(order)])
    config = NUTSConfig(num_warmup, num_samples, target_accept_prob, max_tree_depth, True)
    model = functools.partial(_model, law=law, roles=roles, likelihood=lik, noise_prior=law.noise_prior,
                              num_groups=len(order))
    with jax.enable_x64(True):
        log_x = {c: jnp.log(jnp.asarray(all_data.covariate(c))) for c in law.covariates}
        centre = {c: jnp.mean(v) for c, v in log_x.items()}
        args = (log_x, jnp.log(jnp.asarray(all_data.loss)), jnp.asarray(index), centre)
        idata = sample_numpyro(model, args, config, num_chains, seed, progress, ("group", order))
    result = HierarchicalResult(idata=idata, law=law, likelihood=lik, data=all_data, groups=list(order),
                                roles=roles, config=config, seed=seed)
    warn_unconverged(result.diagnostics, "hierarchical fit")
    return result


def _roles(law: Law, shared: Sequence[str], pooled: Sequence[str]) -> dict[str, str]:
    for label, names in (("shared", shared), ("pooled", pooled)):
        unknown = [n for n in names if n not in law.params]
        if unknown:
            raise ValueError(f"{label}: unknown parameters {unknown}; {law.name!r} has {list(law.params)}")
    both = sorted(set(shared) & set(pooled))
    if both:
        raise ValueError(f"parameters {both} are listed as both shared and pooled")
    for name in pooled:
        _coordinate_prior(law, name)
    return {p: "shared" if p in shared else "pooled" if p in pooled else "group" for p in law.params}
