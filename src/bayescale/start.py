"""Starting points: the published point fit (Huber + Levenberg-Marquardt) and where chains begin.

``fit_map`` reproduces the point estimate of published Chinchilla refits: a
Huber loss on log-loss residuals, minimised from a spread of starting points.
:func:`initial_points` starts the chains of a flat fit at that point estimate,
moved inside the priors; :func:`prior_points` starts the chains of any other
model (hierarchical, iso-FLOP) uniformly in (-2, 2) in unconstrained space, as
NumPyro's ``init_to_uniform`` does.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpyro.distributions.transforms import biject_to

from .data import ScalingData, as_data
from .laws import Law, get_law
from .likelihoods import get_likelihood
from .model import Layout, ModelData, Spec, check_data, make_spec, model_data, potential_of, to_natural
from .sampling import SamplerSettings

__all__ = ["fit_map", "MapResult", "initial_points", "StartBounds", "start_bounds", "prior_points"]

_JITTER = 0.1
_NU_INIT = 4.0
_MAP_ITERATIONS = 100
_STARTS = 32
"""Starts of the point fit that places a fit's chains."""


class MapResult(NamedTuple):
    """A point fit.

    Attributes:
        params: natural parameters by name (plus ``sigma``, a robust scale of
            the log residuals).
        objective: the minimised loss (sum of Huber or squared log residuals).
        converged: whether the best start reported convergence.
        z: the law parameters in sampler coordinates (used to start NUTS).
    """

    params: dict[str, float]
    objective: float
    converged: bool
    z: np.ndarray

    def summary(self) -> pd.DataFrame:
        """The point estimates, one row per parameter (column ``estimate``; natural units, loss in nats)."""
        return pd.DataFrame({"estimate": self.params}).rename_axis("parameter")


def _reference(spec: Spec, md: ModelData, bounds: StartBounds, rng: np.random.Generator, num_starts: int) -> np.ndarray:
    """Starting coordinates of the law's parameters ``(num_starts, k)``: a reference point (the mean
    log-loss for centred amplitudes, the prior's mean elsewhere) and uniform(-2, 2) offsets around it."""
    log_y = np.asarray(md.log_y, dtype=float)[np.asarray(md.mask)]
    ref = np.array([log_y.mean() if name in spec.law.centred else bounds.reference_z[i]
                    for i, name in enumerate(spec.law.params)])
    offsets = rng.uniform(-2.0, 2.0, (num_starts - 1, ref.size))
    return np.concatenate([ref[None], ref + offsets])


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _gauss_newton(spec: Spec, md: ModelData, z: jax.Array, loss: str, delta: float):  # noqa: ANN202
    """At law coordinates ``z`` ``(datasets, starts, k)`` of datasets stacked in ``md``: the point-fit
    objective, its Gauss-Newton Hessian and gradient (Huber weights ``min(1, delta/|r|)`` on log residuals,
    iteratively reweighted), and the robust noise scale ``1.4826·median|r|`` (natural, and unconstrained
    under the ``sigma`` prior's support). The one compiled program of the point fit."""

    def one(md: ModelData, z: jax.Array):  # noqa: ANN202
        def residuals(z: jax.Array) -> jax.Array:
            params, _ = to_natural(spec, z, md.centre)
            return jnp.where(md.mask, spec.law.log_mean(params, md.log_x) - md.log_y, 0.0)

        r, jac = residuals(z), jax.jacfwd(residuals)(z)
        a = jnp.abs(r)
        if loss == "squared":
            f, w = 0.5 * jnp.sum(r**2), jnp.ones_like(r)
        else:
            f = jnp.sum(jnp.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta)))
            w = jnp.minimum(1.0, delta / jnp.maximum(a, 1e-300))
        jtw = jac.T * w
        n = jnp.sum(md.mask)
        # Robust noise scale, floored to avoid log(0).
        scale = jnp.maximum(1.4826 * jnp.sort(jnp.where(md.mask, a, jnp.inf))[(n - 1) // 2], 1e-4)
        return f, jtw @ jac, jtw @ r, scale, biject_to(spec.priors["sigma"].support).inv(scale)

    return jax.vmap(lambda m, zs: jax.vmap(lambda v: one(m, v))(zs))(md, z)


class _Point(NamedTuple):
    """The best start's point fit per dataset (NumPy, float64)."""

    z: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    scale: np.ndarray
    scale_z: np.ndarray


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched ``a⁻¹ b``; a singular system gives NaN (its step is then rejected) instead of an error."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(b.shape, np.nan)
        for index in np.ndindex(b.shape[:-1]):
            try:
                out[index] = np.linalg.solve(a[index], b[index])
            except np.linalg.LinAlgError:
                pass
        return out


def _levenberg_marquardt(spec: Spec, md: ModelData, z0: np.ndarray, loss: str, delta: float) -> _Point:
    """Minimise the point-fit objective from every start ``z0`` ``(datasets, starts, k)`` and keep each
    dataset's best.

    Levenberg-Marquardt on iteratively reweighted least squares, accepting only steps that lower the
    objective, for a fixed number of iterations. The steps are taken on the host (NumPy, all datasets
    and starts at once); only :func:`_gauss_newton` is compiled.
    """
    dtype = np.asarray(md.log_y).dtype

    def terms(z: np.ndarray) -> list[np.ndarray]:
        f, *rest = (np.asarray(t, dtype=float) for t in _gauss_newton(spec, md, z.astype(dtype), loss, delta))
        return [np.where(np.isfinite(f), f, np.inf), *rest]

    z = np.asarray(z0, dtype=float)
    f, hess, grad, scale, scale_z = terms(z)
    lam, change = np.full(f.shape, 1e-2), np.ones(f.shape)
    eye = np.eye(z.shape[-1])
    for _ in range(_MAP_ITERATIONS):
        usable = np.isfinite(f)[..., None, None] & np.isfinite(hess).all(axis=(-2, -1), keepdims=True)
        diagonal = np.diagonal(hess, axis1=-2, axis2=-1)[..., None] + 1e-12
        with np.errstate(invalid="ignore", over="ignore"):  # unusable starts' inf terms are replaced just below
            damped = np.where(usable, hess + lam[..., None, None] * diagonal * eye, eye)
        step = _solve(damped, np.where(usable[..., 0], grad, 0.0))
        candidate = z - step
        f_new, hess_new, grad_new, scale_new, scale_z_new = terms(candidate)
        better = np.isfinite(f_new) & (f_new < f)
        change = np.where(better, (f - f_new) / (np.abs(f) + 1e-30), 0.0)
        lam = np.where(better, lam * 0.3, lam * 10.0)
        z = np.where(better[..., None], candidate, z)
        hess = np.where(better[..., None, None], hess_new, hess)
        grad = np.where(better[..., None], grad_new, grad)
        f, scale, scale_z = (np.where(better, new, old)
                             for new, old in ((f_new, f), (scale_new, scale), (scale_z_new, scale_z)))
    best = np.argmin(f, axis=-1)
    pick = lambda a: np.take_along_axis(a, best[:, None], axis=1)[:, 0]  # noqa: E731
    converged = np.isfinite(f) & ((change < 1e-8) | (lam > 1e8))
    return _Point(np.take_along_axis(z, best[:, None, None], axis=1)[:, 0], pick(f), pick(converged), pick(scale),
                  pick(scale_z))


def fit_map(
    data: ScalingData | Any,
    law: str | Law = "chinchilla",
    *,
    loss: str = "huber",
    delta: float = 1e-3,
    num_starts: int = 64,
    seed: int = 0,
    precision: str = "auto",
    **columns: Any,
) -> MapResult:
    """Point fit by Huber (or squared) loss on log-loss residuals, as in published refits.

    Args:
        data: :class:`~bayescale.data.ScalingData`, a DataFrame or a CSV path.
        law: law name or :class:`~bayescale.laws.Law`.
        loss: ``"huber"`` (Hoffmann et al. 2022, with ``delta``) or ``"squared"``.
        delta: Huber threshold on log residuals.
        num_starts: Levenberg-Marquardt starts (a reference point plus random offsets).
        seed: seed of the random starts.
        precision: ``"auto"`` (float64 on CPU), ``"float64"`` or ``"float32"``.
        **columns: column options for loading a table (see ``ScalingData.from_table``).

    Returns:
        :class:`MapResult` with natural parameters.
    """
    if loss not in ("huber", "squared"):
        raise ValueError(f"loss must be 'huber' or 'squared', got {loss!r}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")
    if num_starts < 1:
        raise ValueError(f"num_starts must be >= 1, got {num_starts!r}")
    data = as_data(data, **columns)
    spec = make_spec(get_law(law), get_likelihood("normal"))
    check_data(data, spec)
    rng = np.random.default_rng(seed)
    with jax.enable_x64(SamplerSettings(precision=precision).x64):
        md = model_data(data, spec.law)
        stacked = jax.tree_util.tree_map(lambda a: a[None], md)
        point = _levenberg_marquardt(spec, stacked, _reference(spec, md, start_bounds(spec), rng, num_starts)[None],
                                     loss, delta)
        params, _ = to_natural(spec, point.z[0], md.centre)
    out = {k: float(v) for k, v in params.items()}
    out["sigma"] = float(point.scale[0])
    return MapResult(params=out, objective=float(point.objective[0]), converged=bool(point.converged[0]), z=point.z[0])


def initial_points(spec: Spec, md: ModelData, keys: np.ndarray, num_chains: int) -> np.ndarray:
    """Per-chain starting coordinates of datasets stacked in ``md`` (leading axis; ``keys`` ``(datasets, 2)``
    raw ``uint32`` keys, one per dataset), ``(datasets, num_chains, k)``: each dataset's Huber point fit
    (32 starts), inside the priors, plus jitter.

    The point fit ignores the priors. Where the data pull a parameter against a
    bounded prior (E on [1.5, 2.2], say) it drives the unconstrained coordinate to
    thousands, where the prior's Jacobian is flat and chains never move; so every
    latent except the centred amplitudes starts inside its prior's central 98%.
    A dataset's points depend only on its data and key, not on the others stacked with it. Random
    numbers come from NumPy generators seeded by the keys; one program is compiled per model, padded
    size and number of datasets (:func:`_gauss_newton`), besides the priors' bounds.
    """
    bounds = start_bounds(spec)
    rngs = [np.random.default_rng(np.asarray(key)) for key in np.asarray(keys)]
    starts = np.stack([_reference(spec, jax.tree_util.tree_map(lambda a: a[i], md), bounds, rng, _STARTS)
                       for i, rng in enumerate(rngs)])
    point = _levenberg_marquardt(spec, md, starts, "huber", 1e-3)
    z0 = np.empty((len(rngs), len(spec.latents)))
    for i, name in enumerate(spec.latents):
        if name in spec.law.centred:
            z0[:, i] = point.z[:, i]
        elif name == "sigma":  # the robust scale's coordinate, or the bound it lies beyond (maybe outside the support)
            z0[:, i] = np.where(point.scale < bounds.low[i], bounds.low_z[i],
                                np.where(point.scale > bounds.high[i], bounds.high_z[i], point.scale_z))
        else:
            value = point.z[:, i] if i < len(spec.law.params) else bounds.reference_z[i]
            z0[:, i] = np.clip(value, *sorted((bounds.low_z[i], bounds.high_z[i])))
    jitter = np.stack([rng.standard_normal((num_chains, z0.shape[1])) for rng in rngs])
    return (z0[:, None] + _JITTER * jitter).astype(np.asarray(md.log_y).dtype)


class StartBounds(NamedTuple):
    """Where chains may start, per latent of a model (arrays ``(len(spec.latents),)``; NaN for centred
    amplitudes, which start at the point fit).

    Attributes:
        low, high: the 1% and 99% quantiles of the latent's prior (natural units).
        low_z, high_z: the same in the sampler's unconstrained coordinates (in the order the prior's
            transform maps them).
        reference_z: the reference start in unconstrained coordinates: the prior's mean (0 where it has
            none); for ``nu``, 4.
    """

    low: np.ndarray
    high: np.ndarray
    low_z: np.ndarray
    high_z: np.ndarray
    reference_z: np.ndarray


@functools.lru_cache(maxsize=256)
def start_bounds(spec: Spec) -> StartBounds:
    """:class:`StartBounds` of a model: once per model, in one small program; read-only arrays."""
    columns = np.asarray(_prior_quantiles(spec), dtype=float).T
    for column in columns:
        column.flags.writeable = False
    return StartBounds(*columns)


@functools.partial(jax.jit, static_argnums=0)
def _prior_quantiles(spec: Spec) -> jax.Array:
    """The columns of :class:`StartBounds`, ``(latents, 5)``. Quantiles are exact where the distribution has an
    inverse CDF, else from 4096 fixed draws (any prior works)."""
    levels = jnp.array([0.01, 0.99])
    out = []
    for name in spec.latents:
        prior = spec.priors[name]
        if name in spec.law.centred:
            out.append(jnp.full(5, jnp.nan))
            continue
        try:
            quantiles = prior.icdf(levels)
        except (NotImplementedError, ImportError):  # NumPyro needs TensorFlow Probability for some inverses
            quantiles = jnp.quantile(prior.sample(jax.random.PRNGKey(0), (4096,)), levels)
        mean = jnp.asarray(_NU_INIT if name == "nu" else prior.mean, dtype=quantiles.dtype)
        unconstrained = biject_to(prior.support).inv(jnp.append(quantiles, mean))
        reference = jnp.where(jnp.isfinite(unconstrained[2]), unconstrained[2], 0.0)
        out.append(jnp.concatenate([quantiles, unconstrained[:2], reference[None]]))
    return jnp.stack(out)


_PRIOR_TRIES = 100
_PRIOR_BLOCK = 10
"""Starting points tried per chain in all, and per compiled call."""


def prior_points(model: Any, layout: Layout, data: Any, key: jax.Array, num_chains: int) -> np.ndarray:
    """Per-chain starting vectors ``(num_chains, k)`` of a NumPyro model, uniform in (-2, 2) unconstrained.

    Each chain's point has a finite potential and gradient: points are drawn :data:`_PRIOR_BLOCK` per chain at a
    time and each chain takes its first valid one, up to :data:`_PRIOR_TRIES` per chain. One small compiled
    program per model, data shape and chain count (the model's potential and gradient, vmapped over the
    block; ``model`` hashable by value, as for ``sample_model``).

    Raises:
        RuntimeError: no valid starting point found for some chain (the model's density is not finite
            anywhere looked).
    """
    potential = potential_of(model, layout)
    size = sum(math.prod(shape) for _, shape in layout)
    z = np.zeros((num_chains, size))
    found = np.zeros(num_chains, dtype=bool)
    for block in range(_PRIOR_TRIES // _PRIOR_BLOCK):
        points, valid = map(np.asarray, _uniform_points(potential, data, key, block, num_chains, size))
        take = valid.any(axis=0) & ~found
        z[take] = points[valid.argmax(axis=0)[take], np.flatnonzero(take)]
        found |= take
        if found.all():
            return z.astype(points.dtype)
    raise RuntimeError(f"cannot find a valid starting point for {type(model).__name__}: its potential or gradient"
                       f" is not finite at {_PRIOR_TRIES} points drawn uniformly in (-2, 2) unconstrained")


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _uniform_points(potential: Any, data: Any, key: jax.Array, block: int, num_chains: int, size: int):  # noqa: ANN202
    """:data:`_PRIOR_BLOCK` points per chain uniform in (-2, 2), ``(block, chains, size)``, and whether the potential
    and its gradient are finite at each."""
    z = jax.random.uniform(jax.random.fold_in(key, block), (_PRIOR_BLOCK, num_chains, size), minval=-2.0, maxval=2.0)
    energy, grad = jax.vmap(jax.vmap(jax.value_and_grad(potential), in_axes=(0, None)), in_axes=(0, None))(z, data)
    return z, jnp.isfinite(energy) & jnp.isfinite(grad).all(axis=-1)

