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
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

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
from .fit import sample_model
from .laws import Law, get_law
from .likelihoods import NU_PRIOR, Likelihood, get_likelihood
from .model import OBSERVED, Spec
from .posterior import (
    LEVEL,
    FitResult,
    Posterior,
    constant_data,
    data_from_idata,
    describe_draws,
    settings_from_meta,
    summaries_by_group,
    warn_unconverged,
)
from .sampling import SamplerSettings, sampler_settings

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


class HierarchicalData(NamedTuple):
    """Arrays of the hierarchical model: log covariates and log target per run, its group index, data centre."""

    log_x: dict[str, Any]
    log_y: Any
    index: Any
    centre: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class HierarchicalModel:
    """The NumPyro model of a hierarchical fit, ``model(data: HierarchicalData)``; equal models compare equal."""

    law: Law
    likelihood: Likelihood
    roles: tuple[tuple[str, str], ...]
    num_groups: int

    def __call__(self, data: HierarchicalData) -> None:
        law, roles, num_groups = self.law, dict(self.roles), self.num_groups
        params: dict[str, jax.Array] = {}
        for name in law.params:
            role = roles[name]
            amplitude = name in law.centred

            def natural(c: jax.Array, name: str = name) -> jax.Array:
                """Natural value from the pooling coordinate (centred log term, log, or identity)."""
                if name in law.centred:
                    return law.centred[name](c, params, data.centre)
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
        sigma = numpyro.sample("sigma", law.noise_prior)
        nu = numpyro.sample("nu", NU_PRIOR) if self.likelihood.learns_nu else None
        loc = law.log_mean({k: v[data.index] for k, v in params.items()}, data.log_x)
        with numpyro.plate("run", data.index.shape[0]):
            numpyro.sample(OBSERVED, self.likelihood.distribution(loc, sigma, nu), obs=data.log_y)


@dataclasses.dataclass(frozen=True, eq=False)
class HierarchicalResult(Posterior):
    """Posterior of a hierarchical fit.

    Attributes:
        idata: ``arviz.InferenceData``; natural parameters with dim ``group``,
            population ``{name}_loc``/``{name}_scale`` of pooled parameters,
            ``sigma``; log-likelihood, predictive, observed and constant data of
            every run.
        data: all runs, with their group labels.
        settings: sampler settings, seed included.
        law: the law.
        likelihood: the observation model.
        groups: group names, in input order.
        roles: parameter -> ``"shared"``, ``"pooled"`` or ``"group"``.
    """

    law: Law = dataclasses.field(kw_only=True)
    likelihood: Likelihood = dataclasses.field(kw_only=True)
    groups: list[str] = dataclasses.field(kw_only=True)
    roles: Mapping[str, str] = dataclasses.field(kw_only=True)

    kind: ClassVar[str] = "hierarchical"

    @property
    def population_names(self) -> list[str]:
        """Names of the population parameters (location and scale of each pooled parameter)."""
        return [f"{p}_{s}" for p, r in self.roles.items() if r == "pooled" for s in ("loc", "scale")]

    @property
    def latents(self) -> tuple[str, ...]:
        """Every group's natural parameters (dim ``group``), ``sigma`` (``nu``) and the population."""
        return (*self.law.params, "sigma", *(("nu",) if self.likelihood.learns_nu else ()), *self.population_names)

    def population(self, level: float = LEVEL) -> pd.DataFrame:
        """Location and scale of each pooled parameter's population, with intervals.

        Locations are on the pooling coordinate (log of positive parameters; the
        centred log term for amplitudes); ``{name}_typical`` is the natural value
        at the location, for positive non-amplitude parameters.
        """
        draws = {n: self.draws(n) for n in self.population_names}
        for p, role in self.roles.items():
            if role == "pooled" and p not in self.law.centred and _coordinate_prior(self.law, p)[2]:
                draws[f"{p}_typical"] = np.exp(draws[f"{p}_loc"])
        return describe_draws(draws, level)

    def __getitem__(self, group: str) -> FitResult:
        """The posterior of one group as a :class:`FitResult`, honouring the whole contract.

        Its ``idata`` holds the group's parameters and its runs' log-likelihood,
        predictive, observed and constant data, so it can be saved, loaded,
        compared and planned with like any fit. Its ``spec.priors`` lists only the
        parameters whose prior is a plain distribution in this model; ``spec.roles``
        says which were shared or pooled.
        """
        if group not in self.groups:
            raise KeyError(f"unknown group {group!r}; groups are {self.groups}")
        post = self.idata.posterior
        names = [*self.law.params, "sigma"] + (["nu"] if self.likelihood.learns_nu else [])
        posterior = xr.Dataset({n: post[n].sel(group=group, drop=True) if "group" in post[n].dims else post[n]
                                for n in names})
        runs = np.flatnonzero(np.asarray(self.data.group).astype(str) == str(group))  # saved as strings

        def own_runs(ds: xr.Dataset) -> xr.Dataset:
            return ds.isel(run=runs).assign_coords(run=np.arange(runs.size))

        idata = az.InferenceData(
            posterior=posterior,
            sample_stats=self.idata.sample_stats,
            **{g: own_runs(self.idata[g]) for g in _RUN_GROUPS},
        )
        priors = {p: self.law.priors[p] for p, r in self.roles.items() if r != "pooled" and p not in self.law.centred}
        priors["sigma"] = self.law.noise_prior
        if self.likelihood.learns_nu:
            priors["nu"] = NU_PRIOR
        spec = Spec(self.law, self.likelihood, priors, tuple(self.roles.items()))
        return FitResult(idata=idata, data=self.data.subset(runs), settings=self.settings, spec=spec)

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Long table: one row per (group, parameter), with statistics, r_hat and ESS."""
        return summaries_by_group({g: self[g] for g in self.groups}, level)

    def predict_draws(self, N: Any = None, D: Any = None, C: Any = None, *, group: Any, **options: Any
                      ) -> np.ndarray:
        """Posterior draws of the loss (nats) of ``group`` at new points: :meth:`Posterior.predict_draws` of
        ``self[group]``, with the same arguments."""
        return self[group].predict_draws(N, D, C, **options)

    def predict(self, N: Any = None, D: Any = None, C: Any = None, *, group: Any, **options: Any) -> pd.DataFrame:
        """Credible bands of ``group``'s loss at new points: :meth:`Posterior.predict` of ``self[group]``."""
        return self[group].predict(N, D, C, **options)

    def compute_optimal(
        self, compute: Sequence[float], flops_per_token: float = 6.0, level: float = LEVEL
    ) -> pd.DataFrame:
        """Compute-optimal allocation of every group in one table (group, compute)."""
        return compute_optimal_by_group({g: self[g] for g in self.groups}, compute, flops_per_token, level)

    def _meta(self) -> dict[str, Any]:
        return {
            "law": {"name": self.law.name, "options": dict(self.law.options)},
            "likelihood": {"name": self.likelihood.name, "nu": self.likelihood.nu},
            "groups": list(self.groups),
            "roles": dict(self.roles),
        }

    @classmethod
    def _restore(cls, idata: az.InferenceData, meta: Mapping[str, Any], law: Law | None) -> HierarchicalResult:
        if law is None:
            law = get_law(meta["law"]["name"], **meta["law"]["options"])
        return cls(
            idata=idata,
            data=data_from_idata(idata, meta),
            settings=settings_from_meta(meta),
            law=law,
            likelihood=Likelihood(meta["likelihood"]["name"], meta["likelihood"]["nu"]),
            groups=list(meta["groups"]),
            roles=dict(meta["roles"]),
        )


_RUN_GROUPS = ("log_likelihood", "posterior_predictive", "observed_data", "constant_data")


def fit_hierarchical(
    data: Any,
    group: str | None = None,
    law: str | Law = "chinchilla",
    shared: Sequence[str] = ("alpha", "beta"),
    pooled: Sequence[str] = ("E", "A", "B"),
    likelihood: str | Likelihood = "student_t",
    *,
    settings: SamplerSettings | None = None,
    **options: Any,
) -> HierarchicalResult:
    """Fit one law to several groups with shared, partially pooled and per-group parameters.

    Args:
        data: a DataFrame with a ``group`` column, :class:`ScalingData` with
            groups, or a dict of name -> :class:`ScalingData` (N in parameters,
            D in tokens, C in FLOPs, loss in nats).
        group: the group column of a DataFrame.
        law: law name or :class:`Law`.
        shared: parameters common to all groups.
        pooled: parameters drawn per group from an inferred population.
        likelihood: observation model on log-loss (default Student-t, nu = 4).
        settings: sampler settings, as for :func:`bayescale.fit`.
        **options: :class:`~bayescale.sampling.SamplerSettings` fields as keywords,
            then column names for :meth:`ScalingData.from_table`.

    Returns:
        :class:`HierarchicalResult`; a :class:`ConvergenceWarning` is emitted
        when diagnostics fail.

    Raises:
        ValueError: unknown or doubly listed parameter names, fewer than two
            groups, a group with invalid data, or too few runs in all.
    """
    settings = sampler_settings(settings, options)
    law = get_law(law)
    lik = get_likelihood(likelihood)
    roles = _roles(law, shared, pooled)
    groups, failures, order = split_groups(data, group, options)
    if failures:
        raise DataError("invalid groups: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    if len(groups) < 2:
        raise DataError(f"a hierarchical fit needs at least two groups, got {len(groups)}")
    if len({str(g) for g in order}) < len(order):
        raise DataError(f"group labels {order!r} read the same as text (1 and '1'); a hierarchical fit needs"
                        " labels that differ as text")
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
    log_x = {c: np.log(all_data.covariate(c)) for c in law.covariates}
    model_input = HierarchicalData(
        log_x=log_x,
        log_y=np.log(all_data.loss),
        index=np.concatenate([np.full(groups[g].n, i) for i, g in enumerate(order)]),
        centre={c: v.mean() for c, v in log_x.items()},
    )
    model = HierarchicalModel(law, lik, tuple(roles.items()), len(order))
    idata = sample_model(model, model_input, settings, observed=model_input.log_y, constant=constant_data(all_data),
                         dim=("group", order), desc="hierarchical fit")
    result = HierarchicalResult(idata=idata, data=all_data, settings=settings, law=law, likelihood=lik,
                                groups=list(order), roles=roles)
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
