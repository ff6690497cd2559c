"""Fitting: orchestration only. Data, law and likelihood in; a posterior out.

:func:`fit` samples one dataset's flat model, starting from the point fit
(:mod:`bayescale.start`); :func:`sample_model` samples any other NumPyro model
(hierarchical, iso-FLOP) on the same sampler path, :func:`bayescale.sampling.sample_lanes`,
and builds its InferenceData with :func:`bayescale.posterior.build_idata`.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import arviz as az
import jax
import numpy as np
import numpyro.distributions as dist

from . import cache
from .data import ScalingData, as_data
from .extrapolation import structural_error
from .laws import Law, get_law
from .likelihoods import Likelihood, get_likelihood
from .model import bucket_size, check_data, layout_of, make_spec, model_data, potential_fn, potential_of
from .posterior import FitResult, build_idata, fit_idata, lower_fit_idata
from .sampling import SamplerSettings, compile_ahead, fit_keys, sample_lanes, sampler_settings
from .start import initial_points, prior_points

__all__ = ["fit", "sample_model", "PROGRAMS_PER_FIT"]

PROGRAMS_PER_FIT = 5
"""Programs a first fit builds (XLA-compiled, or read back from the persistent cache): its keys, the priors'
start bounds, the point-fit start, NUTS (its init and iterations in one program) and the InferenceData program
(its noise is drawn on the host). A later fit of the same law, likelihood, priors and padded size builds none,
whatever its seed, warmup and draw counts (tests count both)."""


def fit(
    data: ScalingData | Any,
    law: str | Law = "chinchilla",
    likelihood: str | Likelihood = "student_t",
    priors: Mapping[str, dist.Distribution] | None = None,
    *,
    settings: SamplerSettings | None = None,
    structural: bool = False,
    **options: Any,
) -> FitResult:
    """Bayesian fit of a scaling law with NUTS.

    Args:
        data: :class:`~bayescale.data.ScalingData`, a DataFrame or a CSV path
            (N in parameters, D in tokens, C in FLOPs, loss in nats).
        law: law name (see ``bs.laws.list_laws()``) or a :class:`~bayescale.laws.Law`.
        likelihood: ``"student_t"`` (default, nu=4), ``"normal"``, or a
            :class:`~bayescale.likelihoods.Likelihood`.
        priors: overrides of the default priors, by natural parameter name
            (also ``"sigma"``, and ``"nu"`` when learned).
        settings: sampler settings (:class:`~bayescale.sampling.SamplerSettings`).
        structural: the planning mode: add the structural error learned from the fit's own
            rolling-origin refits (:func:`bayescale.extrapolation.structural_error`; five more
            fits, run as one batch), so bands widen beyond the data. Needs enough runs for the
            refits (more than the law's latents plus two below the 0.8 cut).
        **options: any :class:`~bayescale.sampling.SamplerSettings` field as a
            keyword (``num_samples=500``, ``seed=3``...), overriding ``settings``;
            the rest are column options for loading a table (``params=``,
            ``tokens=``, ``compute=``, ``loss=``, ``flops_per_token=``...).

    Returns:
        :class:`~bayescale.posterior.FitResult`. A :class:`~bayescale.posterior.ConvergenceWarning`
        is emitted when R-hat > 1.01, bulk ESS < 400 or any transition diverged.

    A first fit builds :data:`PROGRAMS_PER_FIT` compiled programs; see benchmarks/RESULTS.md for their time.
    """
    settings = sampler_settings(settings, options)
    cache.ensure()
    data = as_data(data, **options)
    spec = make_spec(get_law(law), get_likelihood(likelihood), priors)
    check_data(data, spec)
    nuts, chains = settings.nuts, settings.num_chains
    init_key, keys, predictive_key = fit_keys(settings.seed, chains)
    x64 = settings.x64
    with jax.enable_x64(x64):
        md = model_data(data, spec.law, size=bucket_size(data.n))  # one compiled program per bucket
        lanes = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (chains, *a.shape)), md)
        potential = potential_fn(spec)
        z_shape = jax.ShapeDtypeStruct((chains, len(spec.latents)), md.log_y.dtype)

        def compile_sampler() -> None:
            with jax.enable_x64(x64):
                compile_ahead(potential, z_shape, lanes, keys, nuts, strategy=settings.strategy)

        # Both programs compile beside the point fit (2+ cores). NumPyro's tracing is not thread-safe: the
        # InferenceData program is traced here, before the sampler's thread traces its own.
        pointwise = lower_fit_idata(spec, md, predictive_key)
        with ThreadPoolExecutor(max_workers=2) as pool:
            compiled = [pool.submit(pointwise.compile), pool.submit(compile_sampler)]
            inits = initial_points(spec, jax.tree_util.tree_map(lambda a: a[None], md), init_key[None], chains)[0]
            for done in compiled:
                done.result()
        draws = sample_lanes(potential, inits, lanes, keys, nuts, strategy=settings.strategy,
                             progress=settings.progress, desc=f"fit {spec.law.name}")
        idata = fit_idata(spec, data, md, draws, predictive_key)
    result = FitResult(idata=idata, data=data, settings=settings, spec=spec)
    result.warn_if_unconverged()
    return structural_error(result) if structural else result


def sample_model(
    model: Any,
    data: Any,
    settings: SamplerSettings,
    *,
    observed: np.ndarray,
    constant: Mapping[str, np.ndarray],
    dim: tuple[str, Any] | None = None,
    desc: str = "sampling",
    width: int | None = None,
) -> az.InferenceData:
    """NUTS on any NumPyro model ``model(data)``, as InferenceData, on the one sampler path.

    Args:
        model: a NumPyro model, hashable by value (a frozen dataclass with
            ``__call__(data)``), so equal models share
            compiled programs.
        data: its data, a pytree of arrays (floats converted to the settings' precision).
        settings: sampler settings; chains start uniformly in (-2, 2) unconstrained.
        observed, constant, dim, width: as for :func:`bayescale.posterior.build_idata`.
        desc: progress-bar label.

    Returns:
        ``arviz.InferenceData`` of the model's posterior.
    """
    cache.ensure()
    chains = settings.num_chains
    init_key, keys, predictive_key = fit_keys(settings.seed, chains)
    with jax.enable_x64(settings.x64):
        data = jax.tree_util.tree_map(_host, data)
        layout = layout_of(model, data)
        inits = prior_points(model, layout, data, init_key, chains)
        lanes = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (chains, *a.shape)), data)
        draws = sample_lanes(potential_of(model, layout), inits, lanes, keys,
                             settings.nuts, strategy=settings.strategy, progress=settings.progress, desc=desc)
        return build_idata(model, layout, draws, data, predictive_key, observed=observed, constant=constant, dim=dim,
                           width=width)


def _host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array of JAX's dtype for it in the current precision (converted on the host: a
    conversion on the device compiles a program)."""
    a = np.asarray(a)
    return a.astype(jax.dtypes.canonicalize_dtype(a.dtype))
