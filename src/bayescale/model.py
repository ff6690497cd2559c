"""The NumPyro model built from a law, a likelihood and priors.

The model is a plain function of one :class:`ModelData` pytree. It samples a
single real vector ``z`` (the sampler's coordinates: centred amplitudes, logs of
positive parameters) and maps it to the natural parameters with an exact change
of variables, so priors are stated on the natural scale while NUTS moves in a
well-conditioned one. Natural parameters are recorded as deterministic sites.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from .data import ScalingData
from .laws import Law
from .likelihoods import NU_PRIOR, Likelihood

__all__ = ["Spec", "ModelData", "make_spec", "model_data", "to_natural", "build_model", "OBSERVED"]

OBSERVED = "log_loss"
"""Name of the observed site: the natural log of the target."""


class ModelData(NamedTuple):
    """Arrays the model reads, all of one float dtype, possibly padded.

    Attributes:
        log_x: covariate name -> log values, shape ``(n,)``.
        log_y: log target, shape ``(n,)``, or ``None`` to simulate.
        mask: ``(n,)`` booleans, false on padded rows.
        centre: covariate name -> mean log value over real rows, shape ``()``.
    """

    log_x: dict[str, Any]
    log_y: Any
    mask: Any
    centre: dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """What is fitted: a law, an observation model and the resolved priors.

    Attributes:
        law: the :class:`~bayescale.laws.Law`.
        likelihood: the :class:`~bayescale.likelihoods.Likelihood`.
        priors: a prior for every latent (law parameters, ``sigma``, and ``nu``
            when learned).
    """

    law: Law
    likelihood: Likelihood
    priors: Mapping[str, dist.Distribution]

    @functools.cached_property
    def key(self) -> tuple:
        """Value identity: equal keys define the same model (compiled programs are reused)."""
        law = (self.law.name, tuple(sorted(self.law.options.items()))) if self.law.builtin else (id(self.law),)
        priors = tuple(
            (name, type(p).__name__, tuple(np.asarray(getattr(p, a), dtype=float).tobytes() for a in p.arg_constraints))
            for name, p in sorted(self.priors.items())
        )
        return (law, self.likelihood, priors)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.key == other.key

    @property
    def latents(self) -> tuple[str, ...]:
        """Names of all sampled quantities, in the order of ``z``."""
        return self.law.params + ("sigma",) + (("nu",) if self.likelihood.learns_nu else ())


def make_spec(law: Law, likelihood: Likelihood, priors: Mapping[str, Any] | None = None) -> Spec:
    """Combine a law's default priors with user overrides, checking names and values.

    Raises:
        ValueError: an unknown parameter name, a value that is not a scalar
            NumPyro distribution, or a centred amplitude whose prior is not on
            positive numbers.
    """
    defaults: dict[str, dist.Distribution] = dict(law.priors)
    defaults["sigma"] = law.noise_prior
    if likelihood.learns_nu:
        defaults["nu"] = NU_PRIOR
    for name, prior in (priors or {}).items():
        if name not in defaults:
            raise ValueError(f"prior given for unknown parameter {name!r}; {law.name!r} has {list(defaults)}")
        if not isinstance(prior, dist.Distribution):
            raise ValueError(f"prior for {name!r} must be a numpyro Distribution, got {type(prior).__name__}")
        if prior.batch_shape or prior.event_shape:
            raise ValueError(f"prior for {name!r} must be scalar, got batch shape {prior.batch_shape}")
        if prior.support.is_discrete:
            raise ValueError(f"prior for {name!r} must be continuous")
        if name in law.centred and prior.support is not constraints.positive:
            raise ValueError(
                f"prior for {name!r} must have support on all positive numbers (e.g. LogNormal,"
                f" HalfNormal, Gamma), got {prior.support}"
            )
        if name in ("sigma", "nu") and not _positive_support(prior):
            raise ValueError(f"prior for {name!r} must be on positive numbers, got {prior.support}")
        defaults[name] = prior
    return Spec(law, likelihood, types.MappingProxyType(defaults))


def _positive_support(prior: dist.Distribution) -> bool:
    lower = getattr(prior.support, "lower_bound", None)
    return lower is not None and float(np.min(lower)) >= 0


def model_data(data: ScalingData, law: Law, size: int | None = None, dtype: Any = None) -> ModelData:
    """Log-transform, centre and optionally pad a dataset for ``law``.

    Args:
        data: the runs.
        law: the law, which names the covariates.
        size: pad to this many rows (padded rows repeat the first row and are
            masked out of the likelihood); default: no padding.
        dtype: float dtype of the arrays; default: JAX's default float.

    Returns:
        :class:`ModelData`.
    """
    n = data.n
    size = n if size is None else size
    if size < n:
        raise ValueError(f"cannot pad {n} rows to {size}")
    dtype = dtype or jnp.result_type(float)

    def pad(a: np.ndarray) -> jax.Array:
        out = np.concatenate([a, np.repeat(a[:1], size - n)]) if size > n else a
        return jnp.asarray(out, dtype=dtype)

    log_x = {c: np.log(data.covariate(c)) for c in law.covariates}
    return ModelData(
        log_x={c: pad(v) for c, v in log_x.items()},
        log_y=pad(np.log(data.loss)),
        mask=jnp.asarray(np.arange(size) < n),
        centre={c: jnp.asarray(v.mean(), dtype=dtype) for c, v in log_x.items()},
    )


def to_natural(spec: Spec, z: jax.Array, centre: Mapping[str, jax.Array]) -> tuple[dict[str, jax.Array], jax.Array]:
    """Map sampler coordinates to natural parameters.

    Args:
        spec: the model specification.
        z: shape ``(k,)`` with ``k <= len(spec.latents)``; the first ``k``
            latents are mapped.
        centre: mean log covariates of the data.

    Returns:
        ``(params, log_det)``: natural values by name, and the log absolute
        Jacobian determinant of the (triangular) map.
    """
    params: dict[str, jax.Array] = {}
    log_det = jnp.zeros((), z.dtype)
    for i, name in enumerate(spec.latents[: z.shape[-1]]):
        u = z[i]
        if name in spec.law.centred:
            fn = spec.law.centred[name]
            value, slope = jax.jvp(lambda v, fn=fn: fn(v, params, centre), (u,), (jnp.ones_like(u),))
            log_det = log_det + jnp.log(jnp.abs(slope))
        else:
            transform = biject_to(spec.priors[name].support)
            value = transform(u)
            log_det = log_det + transform.log_abs_det_jacobian(u, value)
        params[name] = value
    return params, log_det


def build_model(spec: Spec):  # noqa: ANN201 - a NumPyro model
    """The NumPyro model ``model(data: ModelData)`` for ``spec``.

    Sites: ``z`` (sampler coordinates), a ``prior`` factor, one deterministic
    site per latent in natural units, and the observed site ``log_loss``.
    """
    k = len(spec.latents)

    def model(data: ModelData) -> None:
        z = numpyro.sample("z", dist.ImproperUniform(constraints.real_vector, (), (k,)))
        params, log_det = to_natural(spec, z, data.centre)
        log_prior = sum(spec.priors[name].log_prob(params[name]) for name in spec.latents)
        numpyro.factor("prior", log_prior + log_det)
        for name in spec.latents:
            numpyro.deterministic(name, params[name])
        loc = spec.law.log_mean(params, data.log_x)
        obs = spec.likelihood.distribution(loc, params["sigma"], params.get("nu"))
        with numpyro.plate("run", data.mask.shape[0]), handlers.mask(mask=data.mask):
            numpyro.sample(OBSERVED, obs, obs=data.log_y)

    return model
