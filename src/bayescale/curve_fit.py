"""Bayesian fits of whole loss curves, and what a planner asks of them.

The log of each logged loss is the law's log mean plus a residual. The points of one curve are
not independent: a run that sits above the law at one step sits above it at the next. The default
noise (``noise="ar1"``) is an Ornstein-Uhlenbeck process in steps along each run, seen through white
measurement noise: the process has marginal scale ``sigma`` and correlation ``exp(-gap / ell)`` between
points ``gap`` steps apart (a run that sits above the law at one step sits above it at the next), and
each logged point adds its own independent error of scale ``white`` (the batch-to-batch noise of an
evaluation). So a curve counts for the information it holds, not for its number of points;
``noise="independent"`` is the plain Gaussian (what a naive likelihood over every logged point
claims). The pointwise log-likelihood is the exact factorisation of the joint density into
one-step-ahead conditionals (a Kalman filter along each run).

Parameters are sampled in standard units (``z ~ Normal(0, 1)``, ``value = exp(loc + scale z)`` for a
``LogNormal(loc, scale)`` prior), on the one sampler path (:func:`bayescale.fit.sample_model`).
Priors of the noise: ``sigma ~ HalfNormal(0.05)`` and ``white ~ HalfNormal(0.01)`` on log-loss,
``ell ~ LogNormal(log 2000, 1.5)`` steps.

Predictions are draws of the loss (nats) at any steps of any schedule. For a run that was fitted
(a run in progress: its logged prefix was part of the data), the residual process continues from
its last logged point (its filtered state there), so the forecast is conditioned on where the run
actually is.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import warnings
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
from numpyro.distributions import constraints

from .curves import BLOCK, LR_REF, CurveInputs, CurveLaw, LossCurves, curve_inputs, departure, get_curve_law
from .data import DataError
from .extrapolation import misfit_draws, refit_settings
from .fit import sample_model
from .model import OBSERVED, bucket_size
from .posterior import (LEVEL, Diagnostics, describe_draws, diagnose, misfit_of, reach, shock_draws, warn_unconverged,
                        with_misfit)
from .sampling import SamplerSettings, sampler_settings
from .store import atomic_write

__all__ = ["CurveResult", "fit_curves", "simulate_curves", "curve_record", "schedule_record", "curve_structural_error",
           "NOISES", "CURVE_CUTS", "SCHEDULE_MISFIT"]

NOISES = ("ar1", "independent")
CURVES_FORMAT = 1
"""Version of the file layout written by :meth:`CurveResult.save`."""
_SIGMA_SCALE, _WHITE_SCALE = 0.05, 0.01
"""Scales of the HalfNormal priors of the residual path's sd and the white noise's sd (log-loss)."""
_ELL_LOC, _ELL_SCALE = float(np.log(2000.0)), 1.5
"""The correlation length's LogNormal prior (steps)."""
CURVE_CUTS = (1 / 3, 1 / 2)
"""Default rolling-origin cuts of a curve fit's structural error (:func:`curve_structural_error`): fractions of
the largest logged step at or below which the curves are refitted (a third leaves 1.1 e-folds of steps to
predict, as far as a run three times the fitted horizon lies beyond it)."""
SCHEDULE_MISFIT = "schedule_misfit_scale"
"""Posterior variable of the scale of the structural error across schedules (:func:`curve_structural_error`)."""
SLOPE_SCALE = 0.5
"""Scale of the Normal prior of each law parameter's slope in log N (curves of several model sizes): the
parameter's log changes by ``slope`` per e-fold of N, so 0.5 allows a factor of about 4 between sizes 16x apart."""


def reference_size(sizes: Sequence[float]) -> float:
    """The model size at which the law's parameters of a fit across sizes are stated: the geometric mean of
    the distinct sizes (parameters)."""
    return float(np.exp(np.mean(np.log(np.unique(np.asarray(sizes, dtype=float))))))


def _log_size(points: pd.DataFrame, size_ref: float | None) -> np.ndarray:
    """Each point's ``log(N / N_ref)`` (zeros when the law does not vary with size: ``size_ref`` None)."""
    if size_ref is None:
        return np.zeros(len(points))
    return np.log(points["N"].to_numpy(dtype=float) / size_ref)


def _at_size(params: Mapping[str, Any], slopes: Mapping[str, Any], log_size: Any) -> dict[str, Any]:
    """The law's parameters at each point's size: ``params[n] (N / N_ref)^slopes[n]`` (a slope absent: 0)."""
    return {n: v * jnp.exp(slopes.get(n, 0.0) * log_size) for n, v in params.items()}


def ou_path(phi: jax.Array, shocks: jax.Array) -> jax.Array:
    """The recurrence ``r[p] = phi[p] r[p-1] + shocks[p]`` along the last axis (``r[-1] = 0``), by associative scan."""
    _, path = jax.lax.associative_scan(lambda x, y: (x[0] * y[0], y[0] * x[1] + y[1]), (phi, shocks), axis=-1)
    return path


def ou_filter(resid: jax.Array, phi: jax.Array, scale: jax.Array, white: jax.Array):  # noqa: ANN201
    """Kalman filter of an Ornstein-Uhlenbeck path seen through white noise, along a 1-d sequence of points.

    ``resid[p]`` is the observed residual, ``phi[p]`` the correlation with the point before (0 at a
    run's first point, which restarts the path), ``scale`` the path's stationary sd, ``white`` the
    measurement sd. Returns per point the log density of ``resid[p]`` given the points before it (their
    sum is the exact joint density) and the filtered mean and variance of the path at that point.
    """
    var, noise = jnp.square(scale), jnp.square(white)

    def step(carry, inputs):  # noqa: ANN001, ANN202
        mean, cov = carry
        r, ph = inputs
        m = ph * mean
        c = ph**2 * cov + var * (1.0 - ph**2)
        total = c + noise
        logp = -0.5 * (jnp.log(2 * jnp.pi * total) + jnp.square(r - m) / total)
        gain = c / total
        state = (m + gain * (r - m), c * (1.0 - gain))
        return state, (logp, *state)

    zero = jnp.zeros((), resid.dtype)
    _, (logp, mean, cov) = jax.lax.scan(step, (zero, zero + var), (resid, phi))
    return logp, mean, cov


class OUResiduals(dist.Distribution):
    """Log-losses of curves: ``loc`` plus an Ornstein-Uhlenbeck residual along each run, plus independent
    measurement noise of scale ``white`` (none when 0).

    Batch shape ``(P,)``; ``phi[p]`` is the correlation with the point before (0 at a run's first
    point). ``log_prob`` gives each point's density given the ones before (their sum is the joint
    density: a Kalman filter, :func:`ou_filter`; without white noise the process is Markov in the
    observations and each point needs only the one before); ``sample`` draws whole paths (a linear
    recurrence, by associative scan) and adds the white noise. With white noise, ``scale`` and ``white``
    are one value each for all points (as the curve model gives them).
    """

    support = constraints.real

    def __init__(self, loc: jax.Array, scale: jax.Array, phi: jax.Array, white: jax.Array | float = 0.0) -> None:
        self.loc, self.scale, self.phi, self.white = jnp.broadcast_arrays(loc, scale, phi, white)
        self._has_white = not (isinstance(white, (int, float)) and white == 0)
        super().__init__(batch_shape=jnp.shape(self.loc))

    def _step_scale(self) -> jax.Array:
        return self.scale * jnp.sqrt(1.0 - self.phi**2)

    def log_prob(self, value: jax.Array) -> jax.Array:
        r = value - self.loc
        if self._has_white:
            return ou_filter(r, self.phi, self.scale[..., 0], self.white[..., 0])[0]
        before = jnp.concatenate([jnp.zeros_like(r[..., :1]), r[..., :-1]], axis=-1)
        return dist.Normal(self.loc + self.phi * before, self._step_scale()).log_prob(value)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        shape = sample_shape + self.batch_shape
        path_key, white_key = jax.random.split(key)
        shocks = self._step_scale() * jax.random.normal(path_key, shape)
        white = self.white * jax.random.normal(white_key, shape)
        return self.loc + ou_path(jnp.broadcast_to(self.phi, shape), shocks) + white


class CurveData(NamedTuple):
    """Arrays of the curve model: schedule sums, steps since the run's point before (inf at a run's
    first point), the log-losses (None when simulating), each point's ``log(N / N_ref)`` (zeros for
    curves of one size) and ``mask``, false on points padded after the real ones (they add nothing to the
    likelihood, so that a rolling-origin refit runs the program compiled for its fit)."""

    inputs: CurveInputs
    gap: Any
    log_y: Any
    log_size: Any
    mask: Any


@dataclasses.dataclass(frozen=True)
class CurveModel:
    """The NumPyro model of loss curves, ``model(data: CurveData)``: a registry law and a noise; with
    ``sizes``, every law parameter varies with the model size N as ``theta(N) = theta (N / N_ref)^slope``
    (``theta`` recorded at ``N_ref``, ``slope ~ Normal(0, SLOPE_SCALE)`` recorded as ``<name>_slope``)."""

    law: str
    noise: str
    sizes: bool = False

    def __call__(self, data: CurveData) -> None:
        law = get_curve_law(self.law)
        p = {}
        for name in law.params:
            prior = law.priors[name]
            log_ref = prior.loc + prior.scale * numpyro.sample(f"{name}_z", dist.Normal(0.0, 1.0))
            p[name] = numpyro.deterministic(name, jnp.exp(log_ref))
            if self.sizes:
                slope = numpyro.deterministic(f"{name}_slope",
                                              SLOPE_SCALE * numpyro.sample(f"{name}_slope_z", dist.Normal(0.0, 1.0)))
                p[name] = jnp.exp(log_ref + slope * data.log_size)
        # Every parameter is sampled on unit scale (its natural value recorded): chains start at NumPyro's
        # uniform(-2, 2) in those coordinates, i.e. within the priors, and the sampler's first step sizes fit.
        sigma = numpyro.deterministic("sigma", _SIGMA_SCALE * numpyro.sample("sigma_z", dist.HalfNormal(1.0)))
        loc = jnp.log(law.mean(p, data.inputs))
        if self.noise == "ar1":
            ell = numpyro.deterministic("ell", jnp.exp(_ELL_LOC + _ELL_SCALE * numpyro.sample("ell_z", dist.Normal())))
            white = numpyro.deterministic("white", _WHITE_SCALE * numpyro.sample("white_z", dist.HalfNormal(1.0)))
            noise = OUResiduals(loc, sigma, _correlation(data.gap, ell), white)
        else:
            noise = dist.Normal(loc, sigma)
        with numpyro.plate("point", data.gap.shape[0]), numpyro.handlers.mask(mask=data.mask):
            numpyro.sample(OBSERVED, noise, obs=data.log_y)


@functools.partial(jax.jit, static_argnums=0)
def _law_log_mean(mean: Any, draws: Mapping[str, Any], slopes: Mapping[str, Any], log_size: jax.Array,
                  x: CurveInputs) -> jax.Array:
    """Log of a law's mean curve per draw ``(draws, points)``, each parameter ``draws[n] (N / N_ref)^slopes[n]``
    at each point (``log_size``: ``log(N / N_ref)``): one compiled program per law and shape bucket
    (:func:`_padded`)."""
    def one(q: Mapping[str, Any], b: Mapping[str, Any]) -> jax.Array:
        return mean(_at_size(q, b, log_size), x)

    return jnp.log(jax.vmap(one)(draws, slopes))


def _pad(a: np.ndarray, size: int, value: float | None = None) -> np.ndarray:
    """``a`` padded to ``size`` with ``value`` (default: its last element)."""
    fill = np.full(size - a.shape[0], a[-1] if value is None else value, dtype=a.dtype)
    return np.concatenate([a, fill])


def _padded(x: CurveInputs, log_size: np.ndarray, sizes: tuple[int, int] | None = None) -> tuple[CurveInputs, np.ndarray]:
    """``x`` and each point's ``log_size`` with the points and the sparse entries padded to ``sizes`` (default:
    their shape buckets, so that predictions at nearby numbers of points share compiled programs): padded
    points repeat the last one; padded entries belong to point 0 with no drop, so they add nothing to any law."""
    size, sparse = sizes or (bucket_size(x.s1.shape[0]), bucket_size(max(x.point.shape[0], 1)))
    return (CurveInputs(_pad(x.s1, size), _pad(x.sw, size), _pad(x.s2, size), _pad(x.point, sparse, 0),
                        _pad(x.drop, sparse, 0.0), _pad(x.eta, sparse, LR_REF), _pad(x.tail, sparse, 0.0)),
            _pad(log_size, size))


_ou_path = jax.jit(ou_path)


@jax.jit
def _last_filtered_state(resid: jax.Array, gap: jax.Array, ell: jax.Array, scale: jax.Array,
                         white: jax.Array) -> jax.Array:
    """Filtered mean and variance ``(2, draws)`` of each draw's residual path at a run's last point
    (``resid`` ``(draws, points)``, ``gap`` ``(points,)``; ``ell``, ``scale``, ``white`` ``(draws,)``)."""
    _, mean, var = jax.vmap(ou_filter)(resid, _correlation(gap[None, :], ell[:, None]), scale, white)
    return jnp.stack([mean[:, -1], var[:, -1]])


def _correlation(gap: Any, ell: Any) -> jax.Array:
    """``exp(-gap / ell)``, the AR(1) correlation with the point before; 0 at a run's first point (``gap`` inf,
    with a safe value inside so that gradients stay finite)."""
    first = jnp.isinf(gap)
    return jnp.where(first, 0.0, jnp.exp(-jnp.where(first, 1.0, gap) / ell))


def _gaps(points: pd.DataFrame) -> np.ndarray:
    step = points["step"].to_numpy(dtype=float)
    same = points["run"].to_numpy()[1:] == points["run"].to_numpy()[:-1]
    return np.r_[np.inf, np.where(same, np.diff(step), np.inf)]


@dataclasses.dataclass(frozen=True, eq=False)
class CurveResult:
    """Posterior of a curve law fitted to loss curves.

    Attributes:
        idata: ``arviz.InferenceData`` (posterior of the law's parameters, ``sigma`` and, with AR(1)
            noise, ``ell`` and ``white``; pointwise log-likelihood, predictive, observed log-losses).
        curves: the curves fitted.
        law: the curve law.
        noise: ``"ar1"`` or ``"independent"``.
        block: steps per block of the schedule sums.
        settings: sampler settings, seed included.
        size_ref: for curves of several model sizes, the size ``N_ref`` (parameters) at which the law's
            parameters are stated (each also has a ``<name>_slope`` in log N); None for one size.

    With a structural error (:func:`curve_structural_error`; posterior variables ``misfit_scale`` and
    :data:`SCHEDULE_MISFIT`), every prediction deviates from the law by ``tau z sqrt(d)`` per draw, ``d`` the
    e-folds of step (and of N) beyond the fitted points (:func:`bayescale.posterior.reach`): zero inside the
    data, growing beyond it; and a run, from the step where its schedule departs from every fitted run's up to
    that run's last logged step (:func:`bayescale.curves.departure`: a new schedule, or a run in progress past
    what any logged run took), by ``tau_s z_s`` more, ``z_s`` one standard normal per draw and schedule
    (seeded by the schedule and the seed: two schedules compared misfit independently).

    ``save`` writes it to one netCDF file (posterior, curves and every schedule) and
    :func:`bayescale.load` reads it back, equal draw for draw.
    """

    kind: ClassVar[str] = "curves"

    idata: az.InferenceData
    curves: LossCurves
    law: CurveLaw
    noise: str
    block: int
    settings: SamplerSettings
    size_ref: float | None = None

    @property
    def latents(self) -> tuple[str, ...]:
        """The parameters: the law's (and their slopes in log N, across sizes), ``sigma`` and (AR(1)) ``ell``
        and ``white``."""
        slopes = tuple(f"{n}_slope" for n in self.law.params) if self.size_ref is not None else ()
        return (*self.law.params, *slopes, "sigma", *(("ell", "white") if self.noise == "ar1" else ()))

    def draws(self, name: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """Posterior draws with chains concatenated: one array, or a dict of all parameters."""
        if name is None:
            return {n: self.draws(n) for n in self.latents}
        if name not in self.latents:
            raise KeyError(f"unknown parameter {name!r}; parameters are {list(self.latents)}")
        return np.asarray(self.idata.posterior[name]).reshape(-1)

    @property
    def diagnostics(self) -> Diagnostics:
        """R-hat, bulk and tail ESS per parameter, divergences."""
        return diagnose(self.idata, self.latents)

    @property
    def misfit(self) -> np.ndarray | None:
        """Draws of the structural error's scale ``tau`` (log-loss per square-root e-fold), flat, or ``None``
        for a fit without one (:func:`curve_structural_error`)."""
        return misfit_of(self.idata)

    @property
    def schedule_misfit(self) -> np.ndarray | None:
        """Draws of the scale ``tau_s`` (log-loss) of the law's misfit on a schedule it was not fitted to, flat,
        or ``None`` for a fit without one (:func:`curve_structural_error`)."""
        return misfit_of(self.idata, SCHEDULE_MISFIT)

    def top(self) -> dict[str, float]:
        """The largest log step (key ``"step"``) and, across sizes, log N (key ``"N"``) of the fitted points:
        where the structural error's distance starts."""
        table = self.curves.table
        top = {"step": float(np.log(table["step"].max()))}
        if self.size_ref is not None:
            top["N"] = float(np.log(table["N"].max()))
        return top

    def _deviation(self, schedules: Mapping[Any, np.ndarray], points: pd.DataFrame, seed: int) -> np.ndarray:
        """Each draw's structural error at ``points`` ``(draws, points)``: ``tau z sqrt(d)`` beyond the fitted
        steps and sizes, plus ``tau_s z_s`` where a run's schedule has departed from every fitted run's, each
        up to its last logged step; zeros without a structural error."""
        deviation = np.zeros((self.draws("sigma").size, len(points)))
        tau, tau_s = self.misfit, self.schedule_misfit
        if tau is not None:
            top = self.top()
            log_x = {c: np.log(points[c].to_numpy(dtype=float)) for c in top}
            deviation += shock_draws(tau, seed)[:, None] * np.sqrt(reach(log_x, top, np))[None, :]
        if tau_s is not None:
            known = _logged_schedules(self.curves)
            runs, steps = points["run"].to_numpy(), points["step"].to_numpy()
            for run in pd.unique(runs):
                lr = np.asarray(schedules[run], dtype=float)
                novel = (runs == run) & (steps >= departure(lr, known))
                if novel.any():
                    deviation[:, novel] += shock_draws(tau_s, _schedule_seed(lr, seed))[:, None]
        return deviation

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Mean, sd, median and interval at ``level`` of each parameter."""
        return describe_draws(self.draws(), level)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fit to a netCDF file: the InferenceData, the logged points (group ``curves``) and each
        run's schedule (group ``schedules``). Written under a temporary name and renamed into place.

        Raises:
            TypeError: a run label that JSON cannot hold (labels must be strings or integers).
        """
        runs = self.curves.runs
        bad = [r for r in runs if not isinstance(r, (str, int)) or isinstance(r, bool)]
        if bad:
            raise TypeError(f"run labels must be strings or integers to be saved; got {bad[:3]}")
        code = {r: i for i, r in enumerate(runs)}
        table = self.curves.table
        points = xr.Dataset({c: ("point", table[c].to_numpy()) for c in table.columns if c != "run"})
        points["run"] = ("point", table["run"].map(code).to_numpy(dtype=np.int64))
        lrs = xr.Dataset({f"lr_{i}": (f"step_{i}", np.asarray(self.curves.schedules[r])) for r, i in code.items()})
        meta = {"format": CURVES_FORMAT, "kind": self.kind, "law": self.law.name, "noise": self.noise,
                "block": self.block, "settings": self.settings.to_dict(), "runs": runs, "size_ref": self.size_ref}
        idata = self.idata.copy()
        idata.add_groups(curves=points, schedules=lrs)
        idata.posterior.attrs["bayescale"] = json.dumps(meta)
        atomic_write(path, lambda tmp: idata.to_netcdf(tmp, engine="h5netcdf"))

    @classmethod
    def restore(cls, idata: az.InferenceData, meta: Mapping[str, Any], law: CurveLaw | None = None) -> CurveResult:
        """The fit saved by :meth:`save` (``meta``: its metadata); ``law`` for a law outside the registry."""
        if meta.get("format") != CURVES_FORMAT:
            raise ValueError(f"a curve fit of format {meta.get('format')!r}; this version reads {CURVES_FORMAT}")
        if law is None:
            law = get_curve_law(meta["law"])
        elif law.name != meta["law"]:
            raise ValueError(f"the file holds a fit of {meta['law']!r}, not of the law given ({law.name!r})")
        runs = meta["runs"]
        points = idata.curves
        table = pd.DataFrame({"run": [runs[i] for i in points["run"].values], "step": points["step"].values,
                              "loss": points["loss"].values, **({"N": points["N"].values} if "N" in points else {})})
        schedules = {r: idata.schedules[f"lr_{i}"].values for i, r in enumerate(runs)}
        rest = az.InferenceData(**{g: idata[g] for g in idata.groups() if g not in ("curves", "schedules")})
        return cls(rest, LossCurves(table, schedules), law, meta["noise"], int(meta["block"]),
                   SamplerSettings(**meta["settings"]), meta.get("size_ref"))

    def predict_draws(self, steps: Sequence[int] | np.ndarray, run: Any = None,
                      schedule: Sequence[float] | np.ndarray | None = None, *, N: float | None = None,
                      seed: int = 0) -> np.ndarray:
        """Draws ``(draws, steps)`` of the logged loss (nats) of one run at ``steps`` (increasing).

        Give ``run`` (a fitted run, continued from its last logged point: a run in progress) or
        ``schedule`` (a new run's learning rate at every step) with, for a fit across model sizes, its
        size ``N`` (parameters). A new run's residual path starts fresh; a fitted run's continues from its
        filtered state at its last logged point (every step asked must then come after it). Draws include
        each point's white noise: they are draws of what the run would log.
        """
        steps = np.asarray(steps, dtype=np.int64)
        if steps.ndim != 1 or steps.size == 0 or np.any(np.diff(steps) <= 0):
            raise ValueError("steps must be a non-empty increasing 1-d sequence of whole steps")
        if (run is None) == (schedule is None):
            raise ValueError("give one of run= (a fitted run) or schedule= (a new run's learning rates)")
        if run is not None:
            if run not in self.curves.schedules:
                raise KeyError(f"unknown run {run!r}; fitted runs are {self.curves.runs}")
            if N is not None:
                raise ValueError(f"run {run!r} was fitted with its own model size: give N only with a new schedule")
            lr = self.curves.schedules[run]
            sizes = self.curves.sizes
            N = None if sizes is None else sizes[run]
        else:
            lr = np.asarray(schedule, dtype=float)
            if self.size_ref is not None and N is None:
                raise ValueError("this fit's law varies with model size: give the new run's N (parameters)")
            if self.size_ref is None and N is not None:
                raise ValueError("this fit is of curves of one model size: it cannot predict another N; fit"
                                 " curves of several sizes (LossCurves.from_table(..., params=...))")
            if N is not None and not (np.isfinite(N) and N > 0):
                raise ValueError(f"N must be a positive finite number of parameters, got {N!r}")
        points = pd.DataFrame({"run": "new", "step": steps, **({"N": float(N)} if N is not None else {})})
        # the checks of fitted curves: the schedule, steps at or after the end of warmup and within it
        LossCurves.from_table(points.assign(loss=1.0), {"new": lr})
        log_mean = self.log_mean_draws({"new": lr}, points, seed)
        gap = _gaps(points)
        state = np.zeros((2, log_mean.shape[0]))  # filtered mean and variance of the path before the first step
        if run is not None:
            fitted = self.curves.table[self.curves.table["run"] == run]
            last = fitted["step"].iloc[-1]
            if steps[0] <= last:
                raise ValueError(f"run {run!r} is logged up to step {int(last)}: ask for later steps")
            if self.noise == "ar1":
                state = self._filtered_last(fitted)
            gap[0] = steps[0] - last
        return np.exp(log_mean + self._residuals(state, gap, seed))

    def _filtered_last(self, fitted: pd.DataFrame) -> np.ndarray:
        """Filtered mean and variance ``(2, draws)`` of each draw's residual path at a fitted run's last point."""
        resid = np.log(fitted["loss"].to_numpy(dtype=float)) - self.log_mean_draws(self.curves.schedules, fitted)
        # Points padded in front (to the shape bucket) are forgotten: the run's first point restarts the path.
        extra = bucket_size(resid.shape[1]) - resid.shape[1]
        resid, gap = np.pad(resid, ((0, 0), (extra, 0))), np.r_[np.full(extra, np.inf), _gaps(fitted)]
        with jax.enable_x64(True):
            state = _last_filtered_state(resid, gap, self.draws("ell"), self.draws("sigma"), self.draws("white"))
        return np.asarray(state)

    def log_mean_draws(self, schedules: Mapping[Any, np.ndarray], points: pd.DataFrame, seed: int = 0) -> np.ndarray:
        """Log of the law's mean curve per draw ``(draws, points)`` at ``points`` (columns ``run``, ``step``
        and, across sizes, ``N``), plus the structural error when the fit has one (seeded by ``seed``; zero at
        the fitted points)."""
        x = curve_inputs(schedules, points, self.block)
        draws = {n: self.draws(n) for n in self.law.params}
        if self.size_ref is None:
            slopes = {n: np.zeros_like(v) for n, v in draws.items()}
        else:
            slopes = {n: self.draws(f"{n}_slope") for n in self.law.params}
        x, log_size = _padded(x, _log_size(points, self.size_ref))
        with jax.enable_x64(True):
            log_mean = _law_log_mean(self.law.mean, draws, slopes, log_size, x)
        return np.asarray(log_mean)[:, :len(points)] + self._deviation(schedules, points, seed)

    def _residuals(self, state: np.ndarray, gap: np.ndarray, seed: int) -> np.ndarray:
        """Residual draws ``(draws, points)`` of logged losses: the path continues from a state drawn from
        ``state`` (filtered mean and variance per draw, ``gap[0]`` steps before; inf: a fresh path), and
        each point adds its white noise."""
        rng = np.random.default_rng(seed)
        sigma = self.draws("sigma")[:, None]
        shocks = sigma * rng.standard_normal((sigma.shape[0], gap.size))
        if self.noise == "independent":
            return shocks
        phi = np.exp(-gap[None, :] / self.draws("ell")[:, None])
        before = state[0] + np.sqrt(state[1]) * rng.standard_normal(state.shape[1])
        shocks = shocks * np.sqrt(1 - phi**2)
        shocks[:, 0] += phi[:, 0] * before  # the first point continues from the run's path
        phi[:, 0] = 0.0
        white = self.draws("white")[:, None] * rng.standard_normal(shocks.shape)
        extra = bucket_size(gap.size) - gap.size  # padded points come after: they do not change the path before
        with jax.enable_x64(True):
            path = _ou_path(np.pad(phi, ((0, 0), (0, extra))), np.pad(shocks, ((0, 0), (0, extra))))
        return np.asarray(path)[:, :gap.size] + white

    def predict(self, steps: Sequence[int] | np.ndarray, run: Any = None,
                schedule: Sequence[float] | np.ndarray | None = None, *, N: float | None = None,
                level: float = LEVEL, seed: int = 0) -> pd.DataFrame:
        """Median and interval at ``level`` of the logged loss (nats) at ``steps``; see :meth:`predict_draws`."""
        draws = self.predict_draws(steps, run, schedule, N=N, seed=seed)
        lo, med, hi = np.quantile(draws, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
        return pd.DataFrame({"step": np.asarray(steps), "median": med, "lower": lo, "upper": hi})

    def compare_schedules(self, schedules: Mapping[str, Sequence[float] | np.ndarray], *, N: float | None = None,
                          level: float = LEVEL, seed: int = 0) -> pd.DataFrame:
        """The final loss (nats, at each schedule's last step) under candidate schedules, with intervals,
        and the probability that each is the lowest (same posterior draws for all: the comparison is paired,
        but for the law's misfit on each new schedule, drawn for each apart); ``N``: the runs' model size
        (parameters), for a fit across sizes."""
        if len(schedules) < 1:
            raise ValueError("give at least one schedule")
        finals = {name: self.predict_draws([len(lr) - 1], schedule=lr, N=N, seed=seed)[:, 0]
                  for name, lr in schedules.items()}
        stacked = np.stack(list(finals.values()), axis=1)
        best = np.bincount(stacked.argmin(axis=1), minlength=stacked.shape[1]) / stacked.shape[0]
        table = pd.DataFrame([{"schedule": n, "steps": len(schedules[n]),
                               "median": np.median(v), "lower": np.quantile(v, (1 - level) / 2),
                               "upper": np.quantile(v, (1 + level) / 2)} for n, v in finals.items()])
        table["p_lowest"] = best
        return table.set_index("schedule")


def fit_curves(
    curves: LossCurves,
    law: str = "lr_annealing",
    *,
    noise: str = "ar1",
    block: int = BLOCK,
    structural: bool = False,
    settings: SamplerSettings | None = None,
    **options: Any,
) -> CurveResult:
    """Fit a curve law to whole loss curves with NUTS.

    Curves of several model sizes (``LossCurves.from_table(..., params=...)`` with two sizes or more) are
    fitted in one model with N as a covariate: every law parameter is ``theta (N / N_ref)^slope``, with
    ``N_ref`` the geometric mean of the sizes (:attr:`CurveResult.size_ref`); a larger size's curve is then
    predicted from smaller ones and, when given, its logged prefix.

    Args:
        curves: logged points and schedules (:class:`~bayescale.curves.LossCurves`).
        law: ``"lr_annealing"`` (default: seconds per fit; its planning-mode bands held on the bundled curves'
            held-out schedules) or ``"multi_power"`` (minutes per fit; its bands there covered 0.66-0.68, planning
            mode included: benchmarks/RESULTS.md); see :mod:`bayescale.curves`.
        noise: ``"ar1"`` (residuals correlated along each run; default) or ``"independent"``.
        block: steps per block of the multi-power law's sum.
        structural: the planning mode: add the structural error learned from the fit's own refits
            (:func:`curve_structural_error`; more fits of one chain: on the first third and half of the steps,
            and one without each schedule), so bands widen beyond the fitted steps and sizes and on new schedules.
        settings: sampler settings; ``**options``: its fields as keywords.

    Returns:
        :class:`CurveResult`; warns (``ConvergenceWarning``) when the chains did not converge.
    """
    settings = sampler_settings(settings, options)
    if options:
        raise TypeError(f"unexpected options {sorted(options)}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if not isinstance(curves, LossCurves):
        raise TypeError(f"curves must be LossCurves (LossCurves.from_table), got {type(curves).__name__}")
    result = _sample_curves(curves, get_curve_law(law), noise, block, settings)
    warn_unconverged(result.diagnostics, f"{result.law.name} curve fit")
    return curve_structural_error(result) if structural else result


def _sample_curves(curves: LossCurves, law: CurveLaw, noise: str, block: int, settings: SamplerSettings,
                   pad_to: tuple[int, int] | None = None) -> CurveResult:
    """:func:`fit_curves` without its checks and warnings (rolling-origin refits run one chain: no R-hat);
    ``pad_to``: (points, sparse entries) to pad the data to, masked out of the likelihood (a refit then runs the
    program compiled for its fit)."""
    points = curves.table
    sizes = curves.sizes
    size_ref = reference_size(list(sizes.values())) if sizes and len(set(sizes.values())) > 1 else None
    x, log_size = curve_inputs(curves.schedules, points, block), _log_size(points, size_ref)
    log_y, gap, steps = np.log(points["loss"].to_numpy(dtype=float)), _gaps(points), points["step"].to_numpy()
    n = len(points)
    if pad_to is not None:
        x, log_size = _padded(x, log_size, pad_to)
        log_y, gap = _pad(log_y, pad_to[0]), _pad(gap, pad_to[0], np.inf)
    data = CurveData(x, gap, log_y, log_size, np.arange(gap.size) < n)
    idata = sample_model(CurveModel(law.name, noise, size_ref is not None), data, settings, observed=log_y[:n],
                         constant={"step": steps}, desc=f"{law.name} curves", width=gap.size + x.drop.size)
    return CurveResult(idata, curves, law, noise, block, settings, size_ref)


def _schedule_seed(lr: np.ndarray, seed: int) -> int:
    """The seed of the law's misfit on schedule ``lr``: the same schedule and seed, the same draws."""
    digest = hashlib.sha256(np.ascontiguousarray(lr, dtype=np.float64).tobytes() + str(seed).encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def _logged_schedules(curves: LossCurves) -> list[np.ndarray]:
    """Each run's schedule up to its last logged step: how far the law was seen to hold on it."""
    last = curves.table.groupby("run", sort=False)["step"].max()
    return [curves.schedules[run][:step + 1] for run, step in last.items()]


def _refit_padding(result: CurveResult) -> tuple[int, int] | None:
    """The (points, sparse entries) a rolling refit of ``result`` is padded to: the fit's own for a law that does
    not read the sparse sum (the refit then runs the sampler compiled for the fit); None for one that does
    (multi-power: each refit at its own size, since the sum's entries grow with points times steps, and a
    refit on a third of the steps holds about a ninth of them)."""
    if result.law.sparse:
        return None
    table = result.curves.table
    return len(table), curve_inputs(result.curves.schedules, table, result.block).point.shape[0]


def _refit(result: CurveResult, table: pd.DataFrame) -> CurveResult:
    """``result``'s law refitted to the points ``table`` (a part of its curves): one chain of
    :func:`~bayescale.extrapolation.refit_settings`, the fit's seed, no diagnostics (a small refit that mixes
    less well still scores its extrapolation)."""
    runs = list(dict.fromkeys(table["run"]))
    part = LossCurves(table.reset_index(drop=True), {r: result.curves.schedules[r] for r in runs})
    return _sample_curves(part, result.law, result.noise, result.block, refit_settings(result.settings),
                          _refit_padding(result))


def _as_new_run(refit: CurveResult, points: pd.DataFrame, lr: np.ndarray, seed: int) -> pd.DataFrame:
    """One run's logged ``points`` predicted by ``refit`` as a new run of schedule ``lr``: per point the
    ``error`` of the predictive mean of its log-loss, the variances there of a new run's noise (``noise``: the
    predictive's variance less its mean curve's) and of the mean curve (``curve``), and its ``distance`` in
    e-folds beyond the refit's points."""
    steps = points["step"].to_numpy()
    N = float(points["N"].iloc[0]) if refit.size_ref is not None else None
    draws = np.log(refit.predict_draws(steps, schedule=lr, N=N, seed=seed))
    new = points[[c for c in ("step", "N") if c in points]].assign(run="new")
    curve = refit.log_mean_draws({"new": lr}, new)
    top = refit.top()
    return pd.DataFrame({
        "run": points["run"].to_numpy(), "step": steps,
        "error": np.log(points["loss"].to_numpy(dtype=float)) - draws.mean(axis=0),
        "noise": np.maximum(draws.var(axis=0) - curve.var(axis=0), 0.0),
        "curve": curve.var(axis=0),
        "distance": reach({c: np.log(new[c].to_numpy(dtype=float)) for c in top}, top, np),
    })


def _sizes(result: CurveResult, table: pd.DataFrame) -> int:
    """The number of model sizes among ``table``'s points (1 for a fit of one size)."""
    return table["N"].nunique() if result.size_ref is not None else 1


def curve_record(result: CurveResult, cuts: Sequence[float] = CURVE_CUTS) -> pd.DataFrame:
    """A curve fit's own extrapolation record in steps, rolling origin.

    For each cut ``q``, the curves' points at or below ``q`` times the largest logged step are refitted (the
    same law, noise and block, :func:`~bayescale.extrapolation.refit_settings`, the fit's seed), and every
    later logged point of each run is predicted as a new run of that run's schedule (and size). One row per
    predicted point: ``cut``, ``run``, ``step``, the ``error`` of the predictive mean of its log-loss, the
    variances there of a new run's noise (``noise``: the predictive's variance less its mean curve's) and of
    the refit's mean curve (``curve``), its ``distance`` in e-folds beyond the refit's points, and its
    ``weight``: each run of each cut counts as one observation spread over its points (the points of a run
    are not independent), and the cuts reuse the same runs (one over the number of cuts), as
    :func:`~bayescale.extrapolation.misfit_posterior` reads them.

    A cut that leaves no point above it, or that drops a model size of a fit across sizes, is skipped.

    Raises:
        ValueError: a cut outside (0, 1).
        DataError: no cut can be used.
    """
    if any(not 0 < q < 1 for q in cuts):
        raise ValueError(f"cuts must be fractions in (0, 1), got {list(cuts)}")
    table = result.curves.table
    last = table["step"].max()
    usable = [(q, table[table["step"] <= q * last], table[table["step"] > q * last]) for q in cuts]
    usable = [(q, below, held) for q, below, held in usable
              if len(below) and len(held) and _sizes(result, below) == _sizes(result, table)]
    if not usable:
        raise DataError(f"no cut in {list(cuts)} leaves logged points on both sides (and every model size below it)"
                        " to refit the curves and predict their later points")
    rows = []
    for q, below, held in usable:
        refit = _refit(result, below)
        for run, points in held.groupby("run", sort=False):
            rows.append(_as_new_run(refit, points, result.curves.schedules[run], result.settings.seed).assign(
                cut=q, weight=1.0 / (len(usable) * len(points))))
    return pd.concat(rows, ignore_index=True)


def schedule_record(result: CurveResult) -> pd.DataFrame:
    """A curve fit's own extrapolation record across schedules: leave one schedule out.

    For each distinct schedule of the fitted runs, the runs of the other schedules are refitted (as in
    :func:`curve_record`) and each run of the left-out schedule is predicted as a new run at its logged points
    from the step where its schedule departs from every refitted run's up to its last logged step
    (:func:`bayescale.curves.departure`) to the refit's last step (beyond it the structural error in steps
    answers). One row per such point, with the columns of :func:`curve_record` but ``cut``; ``distance`` 1 (a
    new schedule is one step of the misfit across schedules) and ``weight``: each left-out schedule counts as
    one observation spread over its points (its runs at several sizes share one misfit).

    Empty when the runs hold fewer than two schedules, or no schedule departs from the others within their
    steps; a schedule that never does is not refitted, and one whose runs hold a model size no other run has
    is skipped.
    """
    table, schedules = result.curves.table, result.curves.schedules
    groups: list[list[Any]] = []
    for run in result.curves.runs:
        same = [g for g in groups if departure(schedules[run], [schedules[g[0]]]) == schedules[run].size
                == schedules[g[0]].size]
        if same:
            same[0].append(run)
        else:
            groups.append([run])
    rows = []
    for left in groups if len(groups) > 1 else []:
        kept = table[~table["run"].isin(left)]
        if _sizes(result, kept) < _sizes(result, table):
            continue
        start = departure(schedules[left[0]], _logged_schedules(LossCurves(kept, schedules)))
        steps = table["step"]
        held = table[table["run"].isin(left) & (steps >= start) & (steps <= kept["step"].max())]
        if held.empty:  # it takes no step the others did not, inside their steps: nothing to refit for
            continue
        refit = _refit(result, kept)
        rows += [_as_new_run(refit, points, schedules[run], result.settings.seed).assign(distance=1.0,
                                                                                        weight=1.0 / len(held))
                 for run, points in held.groupby("run", sort=False)]
    columns = ["run", "step", "error", "noise", "curve", "distance", "weight"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)


def curve_structural_error(result: CurveResult, cuts: Sequence[float] = CURVE_CUTS, *,
                           record: pd.DataFrame | None = None,
                           across: pd.DataFrame | None = None) -> CurveResult:
    """The curve fit with a structural error learned from its own refits, in steps and across schedules.

    The law's misfit, not the noise, dominates the error of a curve predicted beyond the fitted steps (a
    schedule three times the fitted horizon) or sizes, and of a schedule of a new shape (a decay the fitted
    runs never took). In steps, each prediction deviates from the law by ``delta ~ Normal(0, tau^2 d)``, ``d``
    the e-folds beyond the fitted points, with ``tau``'s grid posterior learned as for the scaling laws
    (:func:`bayescale.extrapolation.misfit_posterior`) from :func:`curve_record`. Across schedules, a run of a
    new schedule deviates, from the step where its schedule departs from every fitted one, by ``Normal(0,
    tau_s^2)`` more, ``tau_s`` learned the same way from :func:`schedule_record` (so does a run in progress,
    from where its schedule departs from what every logged run took, and every point beyond the fitted steps,
    where no logged run went: ``tau`` is learned with the mean of ``tau_s^2`` as part of each cut's error).

    Args:
        result: a curve fit.
        cuts: fractions of the largest logged step at which to cut (:data:`CURVE_CUTS`).
        record: the record in steps when already computed (:func:`curve_record`; ``cuts`` is then unused);
        across: the record across schedules when already computed (:func:`schedule_record`).

    Returns:
        The fit with posterior variables ``misfit_scale`` and :data:`SCHEDULE_MISFIT` (one draw per posterior
        draw); it saves and loads like any curve fit, and every prediction, comparison and envelope reads them.
        When the record across schedules is empty (the runs hold one schedule), warns that new schedules'
        bands then assume the law holds across shapes, and adds only ``misfit_scale``.
    """
    record = curve_record(result, cuts) if record is None else record
    across = schedule_record(result) if across is None else across
    post = result.idata.posterior
    shape, seed = (post.sizes["chain"], post.sizes["draw"]), result.settings.seed
    if across.empty:
        warnings.warn("the fitted runs hold one schedule (or none departs from the others within their steps): the"
                      " law's misfit on a new schedule cannot be learned, and bands of new schedules assume none",
                      UserWarning, stacklevel=2)
        return with_misfit(result, misfit_draws(record, shape, seed))
    tau_s = misfit_draws(across, shape, (seed, 1))
    # A cut's later points lie past what any refitted run logged: their errors hold the misfit across schedules
    # too (its mean square, known from the record across schedules), and tau only what is left beyond it.
    in_steps = misfit_draws(record.assign(noise=record["noise"] + np.mean(tau_s**2)), shape, seed)
    return with_misfit(with_misfit(result, in_steps), tau_s, SCHEDULE_MISFIT)


@functools.partial(jax.jit, static_argnums=0)
def _simulated_log_loss(mean: Any, params: Mapping[str, Any], slopes: Mapping[str, Any], log_size: jax.Array,
                        x: CurveInputs, gap: jax.Array, ell: float, sigma: float, white: float,
                        key: jax.Array) -> jax.Array:
    """Simulated log-losses at the points of ``x``: the law's log mean plus an AR(1) path and white noise
    (one compiled program per law and shape, not one per operation)."""
    loc = jnp.log(mean(_at_size(params, slopes, log_size), x))
    return OUResiduals(loc, sigma, _correlation(gap, ell), white).sample(key)


def simulate_curves(law: str, params: Mapping[str, float], schedules: Mapping[Any, Sequence[float] | np.ndarray],
                    steps: Mapping[Any, Sequence[int] | np.ndarray], *, sigma: float = 0.005, ell: float = 2000.0,
                    white: float = 0.002, block: int = BLOCK, sizes: Mapping[Any, float] | None = None,
                    slopes: Mapping[str, float] | None = None, seed: int = 0) -> LossCurves:
    """Loss curves logged at ``steps`` of each run, from a curve law with the AR(1) noise of :func:`fit_curves`.

    Args:
        law: a curve law (``"multi_power"``, ``"lr_annealing"``); ``params``: its parameters.
        schedules: each run's learning rate at every step; ``steps``: each run's logged steps.
        sigma: the residual path's scale on log-loss; ``ell``: its correlation length in steps;
        white: each logged point's own noise on log-loss (0: none).
        sizes: each run's model size N (parameters), recorded in the curves; with ``slopes`` (per law
            parameter, its slope in log N) the parameters are ``params`` at :func:`reference_size` of the
            sizes, as :func:`fit_curves` states them.
        seed: the noise's seed.
    """
    the_law = get_curve_law(law)
    missing = [n for n in the_law.params if n not in params]
    if missing:
        raise ValueError(f"params of {the_law.name} missing {missing}")
    if slopes is not None and sizes is None:
        raise ValueError("slopes need sizes: each run's model size N")
    points = pd.concat([pd.DataFrame({"run": run, "step": np.asarray(s, dtype=np.int64),
                                      **({"N": float(sizes[run])} if sizes is not None else {})})
                        for run, s in steps.items()], ignore_index=True)
    curves = LossCurves.from_table(points.assign(loss=1.0), schedules, params="N" if sizes is not None else None)
    x = curve_inputs(curves.schedules, curves.table, block)
    log_size = _log_size(curves.table, None if slopes is None else reference_size(list(sizes.values())))
    with jax.enable_x64(True):
        log_y = _simulated_log_loss(the_law.mean, {n: float(params[n]) for n in the_law.params},
                                    {n: float(v) for n, v in (slopes or {}).items()}, log_size, x,
                                    _gaps(curves.table), ell, sigma, white, jax.random.PRNGKey(seed))
    return LossCurves(curves.table.assign(loss=np.exp(np.asarray(log_y))), curves.schedules)
