"""The model: a law, a likelihood and priors as a NumPyro model, and its potential.

The flat model (:class:`FlatModel`) is a plain callable of one :class:`ModelData`
pytree. It samples a single real vector ``z`` (the sampler's coordinates: centred
amplitudes, logs of positive parameters) and maps it to the natural parameters
with an exact change of variables, so priors are stated on the natural scale
while NUTS moves in a well-conditioned one. Natural parameters are recorded as
deterministic sites.

Any NumPyro model that is hashable by value (the flat one, and the hierarchical
and iso-FLOP models) gets its potential over one flat unconstrained vector from
:func:`potential_of`, which is what the one sampler path runs. Input checks that
need the law (:func:`check_data`) live here too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import types
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import scipy.stats
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform, biject_to
from numpyro.infer.util import potential_energy

from .data import DataError, DataWarning, ScalingData
from .laws import Law
from .likelihoods import NU_PRIOR, Likelihood

__all__ = [
    "Spec",
    "ModelData",
    "Layout",
    "FlatModel",
    "make_spec",
    "prior_to_json",
    "prior_from_json",
    "check_data",
    "model_data",
    "bucket_size",
    "to_natural",
    "build_model",
    "layout_of",
    "unflatten",
    "potential_of",
    "potential_fn",
    "OBSERVED",
]

_MAX_LOSS = 20.0
"""Largest plausible loss in nats (ln of a 500-million-word vocabulary)."""

OBSERVED = "log_loss"
"""Name of the observed site: the natural log of the target."""

Layout = tuple[tuple[str, tuple[int, ...]], ...]
"""The sampler's flat vector as ``(site, unconstrained shape)`` pairs, in order."""


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
            when learned); for a member of a hierarchical fit, only the latents
            whose prior is a plain distribution (see ``roles``).
        roles: empty for a fit of its own; for a member of a hierarchical fit,
            ``(parameter, role)`` pairs with role ``"shared"``, ``"pooled"`` or
            ``"group"`` (amplitudes and pooled parameters have no prior of their
            own there: see :mod:`bayescale.hierarchical`).
    """

    law: Law
    likelihood: Likelihood
    priors: Mapping[str, dist.Distribution]
    roles: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def key(self) -> tuple:
        """Value identity: equal keys define the same model (compiled programs are reused).

        Priors enter by their full parameters, nested distributions and transforms
        included (:func:`prior_to_json`, the form ``save`` writes).
        """
        priors = json.dumps({name: prior_to_json(p) for name, p in self.priors.items()}, sort_keys=True)
        return (self.law, self.likelihood, priors, self.roles)

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
        try:
            recorded = prior_to_json(prior)
            if prior_to_json(prior_from_json(recorded)) != recorded:
                raise ValueError(f"{type(prior).__name__} is not rebuilt from its arguments as it was")
        except ValueError as err:
            raise ValueError(f"prior for {name!r} cannot be saved with the result: {err}") from None
        defaults[name] = prior
    return Spec(law, likelihood, types.MappingProxyType(defaults))


def check_data(data: ScalingData, spec: Spec) -> None:
    """Raise :class:`DataError` on data the law cannot be fitted to; warn on data that looks mislabelled."""
    for c in spec.law.covariates:
        data.covariate(c)
    if data.n < len(spec.latents):
        raise DataError(
            f"{data.n} runs are too few to fit {spec.law.name!r}, which has {len(spec.latents)} parameters"
            f" {list(spec.latents)}"
        )
    for c in spec.law.covariates:
        values = data.covariate(c)
        if data.n > 1 and np.all(values == values[0]):
            warnings.warn(
                f"covariate {c} is the same ({values[0]:.4g}) in every run: {spec.law.name!r} cannot separate"
                f" its {c} term from the constant; add runs at other {c}, or use a law without {c}",
                DataWarning,
                stacklevel=3,
            )
    falling = spec.law.builtin and spec.law.name != "power"
    if falling and data.loss.max() > _MAX_LOSS:
        warnings.warn(
            f"column {data.target!r} reaches {data.loss.max():.4g}, above any cross-entropy in nats"
            f" (ln of a 500-million-word vocabulary is {_MAX_LOSS:.0f}): is it a percentage (divide by 100),"
            " a perplexity (take its log), or an accuracy? Fit the loss in nats",
            DataWarning,
            stacklevel=3,
        )
    x = "C" if data.C is not None else spec.law.covariates[0]
    if falling and data.n >= 5 and np.ptp(data.covariate(x)) > 0 and np.ptp(data.loss) > 0:
        trend = scipy.stats.spearmanr(data.covariate(x), data.loss).statistic
        if trend > 0.5:
            warnings.warn(
                f"column {data.target!r} increases with {x} (rank correlation {trend:.2f}), but {spec.law.name!r}"
                " models a loss that falls with scale: is it an accuracy or a reward? Fit 1 - accuracy,"
                " or use the 'power' law",
                DataWarning,
                stacklevel=3,
            )


_ALIASES = {"base_distribution": "base_dist"}
"""Constructor arguments that a distribution keeps under another attribute name."""


def _object_to_json(obj: Any, kind: str) -> dict[str, Any]:
    """A distribution or transform as ``{"type", "args"}``, from its constructor's arguments."""
    args = {}
    for name, param in inspect.signature(type(obj).__init__).parameters.items():
        if name in ("self", "validate_args") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(obj, _ALIASES.get(name, name)):
            raise ValueError(f"{type(obj).__name__} keeps no attribute {name!r}, so it cannot be recorded")
        value = getattr(obj, _ALIASES.get(name, name))
        if param.default is not param.empty and value is param.default:
            continue
        args[name] = _value_to_json(value, f"{type(obj).__name__}.{name}")
    return {"type": type(obj).__name__, "args": args} if kind == "distribution" else {
        "transform": type(obj).__name__, "args": args}


def _value_to_json(value: Any, where: str) -> Any:
    if isinstance(value, dist.Distribution):
        return {"distribution": _object_to_json(value, "distribution")}
    if isinstance(value, Transform):
        return _object_to_json(value, "transform")
    if isinstance(value, (list, tuple)) and all(isinstance(v, Transform) for v in value):
        return {"transforms": [_object_to_json(v, "transform") for v in value]}
    if isinstance(value, bool):
        return value
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is a {type(value).__name__}, which cannot be recorded") from None
    return array.tolist()


def prior_to_json(prior: dist.Distribution) -> dict[str, Any]:
    """A prior as JSON with every parameter: ``{"type": class name, "args": {argument: value}}``.

    Nested distributions (the base of a truncated or transformed one) appear as
    ``{"distribution": {...}}`` and transforms as ``{"transform": name, "args": {...}}``,
    so two priors are equal exactly when their JSON is.

    Raises:
        ValueError: a distribution whose arguments cannot be read back from it.
    """
    return _object_to_json(prior, "distribution")


def prior_from_json(spec: Mapping[str, Any]) -> dist.Distribution:
    """Inverse of :func:`prior_to_json`; only classes of ``numpyro.distributions`` are built.

    Raises:
        ValueError: a type that is not a NumPyro distribution (or transform), or arguments it rejects.
    """
    return _object_from_json(spec["type"], spec["args"], dist, dist.Distribution)


def _object_from_json(name: str, args: Mapping[str, Any], namespace: Any, base: type) -> Any:
    cls = getattr(namespace, name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"cannot rebuild {name!r}: not a {base.__module__}.{base.__name__}")
    try:
        return cls(**{k: _value_from_json(v) for k, v in args.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot rebuild {name}({', '.join(args)}): {err}") from None


def _value_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "distribution" in value:
        return prior_from_json(value["distribution"])
    if isinstance(value, dict) and "transform" in value:
        return _object_from_json(value["transform"], value["args"], dist.transforms, Transform)
    if isinstance(value, dict) and "transforms" in value:
        return [_value_from_json(t) for t in value["transforms"]]
    if isinstance(value, bool):
        return value
    return np.asarray(value, dtype=float) if isinstance(value, list) else float(value)


def _positive_support(prior: dist.Distribution) -> bool:
    lower = getattr(prior.support, "lower_bound", None)
    return lower is not None and float(np.min(lower)) >= 0


MIN_BUCKET = 8
"""Smallest padded size of a dataset."""


def bucket_size(n: int) -> int:
    """Rows a dataset of ``n`` runs is padded to: the smallest of 8, 12, 16, 24, 32, 48, ... (two sizes
    per octave) that holds them.

    Programs are compiled per padded size, so editing a table (a run more or fewer)
    reuses them; at most a third of the rows of a bucket are padding.
    """
    size = MIN_BUCKET
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


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
    dtype = np.dtype(dtype or jnp.result_type(float))

    def pad(a: np.ndarray) -> np.ndarray:
        out = np.concatenate([a, np.repeat(a[:1], size - n)]) if size > n else a
        return out.astype(dtype)

    log_x = {c: np.log(data.covariate(c)) for c in law.covariates}
    return ModelData(  # NumPy on the host: compiled programs take it as it is (no program per conversion)
        log_x={c: pad(v) for c, v in log_x.items()},
        log_y=pad(np.log(data.loss)),
        mask=np.arange(size) < n,
        centre={c: np.asarray(v.mean(), dtype=dtype) for c, v in log_x.items()},
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


@dataclasses.dataclass(frozen=True)
class FlatModel:
    """The NumPyro model of one dataset, ``model(data: ModelData)``; equal specs give equal models.

    Sites: ``z`` (sampler coordinates), a ``prior`` factor, one deterministic
    site per latent in natural units, and the observed site ``log_loss``.
    """

    spec: Spec

    def __call__(self, data: ModelData) -> None:
        spec = self.spec
        z = numpyro.sample("z", dist.ImproperUniform(constraints.real_vector, (), (len(spec.latents),)))
        params, log_det = to_natural(spec, z, data.centre)
        log_prior = sum(spec.priors[name].log_prob(params[name]) for name in spec.latents)
        numpyro.factor("prior", log_prior + log_det)
        for name in spec.latents:
            numpyro.deterministic(name, params[name])
        loc = spec.law.log_mean(params, data.log_x)
        obs = spec.likelihood.distribution(loc, params["sigma"], params.get("nu"))
        with numpyro.plate("run", data.mask.shape[0]), handlers.mask(mask=data.mask):
            numpyro.sample(OBSERVED, obs, obs=data.log_y)


    def layout(self) -> Layout:
        """One flat site ``z`` of all latents."""
        return (("z", (len(self.spec.latents),)),)


def build_model(spec: Spec) -> FlatModel:
    """The NumPyro model of ``spec`` (see :class:`FlatModel`)."""
    return FlatModel(spec)


def layout_of(model: Any, data: Any) -> Layout:
    """The latent sample sites of a NumPyro model and their unconstrained shapes, in trace order.

    The model is traced abstractly (shapes only): nothing is computed or compiled.
    """
    found: list[tuple[str, tuple[int, ...]]] = []

    def probe(data: Any) -> None:
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(data)
        found.extend(
            (name, tuple(biject_to(site["fn"].support).inverse_shape(jnp.shape(site["value"]))))
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        )

    jax.eval_shape(probe, data)
    return tuple(found)


def unflatten(z: jax.Array, layout: Layout) -> dict[str, jax.Array]:
    """Split a flat vector ``(k,)`` into unconstrained site values by ``layout``."""
    out, start = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = z[start:start + size].reshape(shape)
        start += size
    return out


@functools.lru_cache(maxsize=64)
def potential_of(model: Any, layout: Layout):  # noqa: ANN201 - a potential function
    """``potential(z, data) -> -log density`` of a NumPyro model over its flat vector (one per model).

    ``model`` must be hashable by value (a frozen dataclass), so equal models share
    one potential and so one compiled sampler. A value that is not finite becomes
    ``+inf`` (a rejected proposal). Far out, a term can overflow before the density
    does (a centred amplitude's Jacobian ``X_c / alpha`` past the float range while
    ``X_c`` is not), giving ``-inf``: NUTS would accept that point and never leave
    it (seen in 5 of 800 kaplan_d and kaplan_c calibration fits, one chain each,
    step size adapted down to 1e-308).
    """

    def potential(z: jax.Array, data: Any) -> jax.Array:
        value = potential_energy(model, (data,), {}, unflatten(z, layout))
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    return potential


def potential_fn(spec: Spec):  # noqa: ANN201 - a potential function
    """The potential of ``spec``'s flat model (see :func:`potential_of`)."""
    model = FlatModel(spec)
    return potential_of(model, model.layout())
