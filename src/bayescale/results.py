"""Fit results over ArviZ InferenceData: summaries, diagnostics, predictions, I/O.

A :class:`FitResult` wraps one ``arviz.InferenceData`` (the only container of
draws) with the data and the model specification needed to use it: posterior
summaries, convergence diagnostics, posterior predictions at new points, and an
exact netCDF round trip.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import xarray as xr

from .data import ScalingData, fill_covariates, _check_positive
from .laws import Law, get_law
from .likelihoods import Likelihood
from .model import OBSERVED, Spec, make_spec
from .sampling import NUTSConfig

__all__ = ["FitResult", "Diagnostics", "ConvergenceWarning", "load", "LEVEL", "RHAT_MAX", "ESS_MIN"]

LEVEL = 0.9
"""Default credible level of intervals."""
RHAT_MAX = 1.01
"""Split R-hat above this is flagged."""
ESS_MIN = 400
"""Bulk effective sample size below this is flagged."""

_FORMAT_VERSION = 1


class ConvergenceWarning(UserWarning):
    """The sampler did not converge: high R-hat, low ESS or divergences."""


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Convergence diagnostics of one fit.

    Attributes:
        table: per parameter ``r_hat``, ``ess_bulk``, ``ess_tail``.
        divergences: number of divergent post-warmup transitions.
        num_draws: post-warmup draws over all chains.
        mean_steps: mean leapfrog steps per iteration.
        problems: human-readable problems; empty when the fit looks converged.
    """

    table: pd.DataFrame
    divergences: int
    num_draws: int
    mean_steps: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """No R-hat above 1.01, no bulk ESS below 400 and no divergence."""
        return not self.problems

    @property
    def max_r_hat(self) -> float:
        """Largest split R-hat over parameters."""
        return float(self.table["r_hat"].max())

    @property
    def min_ess_bulk(self) -> float:
        """Smallest bulk ESS over parameters."""
        return float(self.table["ess_bulk"].min())


def diagnose(idata: az.InferenceData, names: tuple[str, ...]) -> Diagnostics:
    """Compute :class:`Diagnostics` from the posterior and sample stats of ``idata``."""
    table = az.summary(idata, var_names=list(names), kind="diagnostics")[["r_hat", "ess_bulk", "ess_tail"]]
    stats = idata.sample_stats
    divergences = int(stats["diverging"].sum())
    problems = []
    rhat = table["r_hat"]
    if stats.sizes["chain"] < 2:
        problems.append("only one chain: R-hat cannot be computed; use num_chains >= 2")
    elif (rhat > RHAT_MAX).any() or rhat.isna().any():
        bad = rhat[(rhat > RHAT_MAX) | rhat.isna()]
        problems.append(f"R-hat > {RHAT_MAX} for " + ", ".join(f"{k} ({v:.3f})" for k, v in bad.items()))
    ess = table["ess_bulk"]
    if (ess < ESS_MIN).any() or ess.isna().any():
        bad = ess[(ess < ESS_MIN) | ess.isna()]
        problems.append(f"bulk ESS < {ESS_MIN} for " + ", ".join(f"{k} ({v:.0f})" for k, v in bad.items()))
    if divergences:
        problems.append(f"{divergences} divergent transitions (refit with target_accept_prob=0.99 or more runs)")
    return Diagnostics(
        table=table,
        divergences=divergences,
        num_draws=int(stats.sizes["chain"] * stats.sizes["draw"]),
        mean_steps=float(stats["n_steps"].mean()),
        problems=tuple(problems),
    )


def warn_unconverged(diagnostics: Diagnostics, subject: str, stacklevel: int = 2) -> None:
    """Emit a :class:`ConvergenceWarning` "``subject`` may not have converged: ..." when checks failed.

    ``stacklevel`` counts from the caller of this function, as for ``warnings.warn``.
    """
    if not diagnostics.ok:
        warnings.warn(
            f"{subject} may not have converged: " + "; ".join(diagnostics.problems),
            ConvergenceWarning,
            stacklevel=stacklevel + 1,
        )


def _interval_columns(level: float) -> tuple[str, str]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    lo = (1 - level) / 2
    return f"{100 * lo:g}%", f"{100 * (1 - lo):g}%"


def describe_draws(draws: Mapping[str, np.ndarray], level: float = LEVEL) -> pd.DataFrame:
    """Mean, sd, median and equal-tailed interval at ``level`` of each flat array of draws."""
    lo_name, hi_name = _interval_columns(level)
    rows = {}
    for name, values in draws.items():
        v = np.asarray(values, dtype=float).reshape(-1)
        lo, med, hi = np.quantile(v, [(1 - level) / 2, 0.5, (1 + level) / 2])
        rows[name] = {"mean": v.mean(), "sd": v.std(ddof=1), "median": med, lo_name: lo, hi_name: hi}
    return pd.DataFrame.from_dict(rows, orient="index")


def table_of_draws(draws: Mapping[str, np.ndarray], index: pd.Index, level: float = LEVEL) -> pd.DataFrame:
    """Median and interval of draws ``(n, len(index))`` per quantity, one row per index entry, grouped columns."""
    parts = []
    for name, values in draws.items():
        rows = [describe_draws({name: values[:, j]}, level).iloc[0] for j in range(values.shape[1])]
        part = pd.DataFrame(rows, index=index).drop(columns=["mean", "sd"])
        part.columns = pd.MultiIndex.from_product([[name], part.columns])
        parts.append(part)
    return pd.concat(parts, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """The posterior of one scaling-law fit.

    Attributes:
        idata: ``arviz.InferenceData`` with groups ``posterior`` (natural
            parameters, plus ``sigma`` and ``nu`` when learned), ``sample_stats``,
            ``log_likelihood``, ``posterior_predictive``, ``observed_data``
            (``log_loss``) and ``constant_data`` (N, D, C, loss per run).
        spec: law, likelihood and priors.
        data: the fitted runs.
        config: sampler settings.
        seed: the seed the fit was run with.
    """

    idata: az.InferenceData
    spec: Spec
    data: ScalingData
    config: NUTSConfig
    seed: int

    @property
    def law(self) -> Law:
        """The fitted law."""
        return self.spec.law

    @property
    def posterior(self) -> xr.Dataset:
        """Posterior draws of the natural parameters, dims ``(chain, draw)``."""
        return self.idata.posterior[list(self.spec.latents)]

    def draws(self, name: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """Flat posterior draws, chains concatenated: one array, or a dict of all latents."""
        if name is not None:
            if name not in self.spec.latents:
                raise KeyError(f"unknown parameter {name!r}; parameters are {list(self.spec.latents)}")
            return self.idata.posterior[name].values.reshape(-1)
        return {n: self.idata.posterior[n].values.reshape(-1) for n in self.spec.latents}

    @functools.cached_property
    def diagnostics(self) -> Diagnostics:
        """R-hat, bulk/tail ESS and divergences (computed once)."""
        return diagnose(self.idata, self.spec.latents)

    def warn_if_unconverged(self, label: str = "") -> None:
        """Emit a :class:`ConvergenceWarning` listing the problems, if any."""
        where = f" ({label})" if label else ""
        warn_unconverged(self.diagnostics, f"fit of {self.law.name!r}{where}", stacklevel=3)

    def summary(self, level: float = LEVEL) -> pd.DataFrame:
        """Posterior table: mean, sd, median, equal-tailed interval at ``level``, r_hat, ess_bulk, ess_tail."""
        table = describe_draws(self.draws(), level)
        return table.join(self.diagnostics.table)

    def params(self, stat: str = "median") -> dict[str, float]:
        """Point summary (``"median"`` or ``"mean"``) of every parameter."""
        if stat not in ("median", "mean"):
            raise ValueError(f"stat must be 'median' or 'mean', got {stat!r}")
        agg = np.median if stat == "median" else np.mean
        return {k: float(agg(v)) for k, v in self.draws().items()}

    def predict_draws(
        self,
        N: Any = None,
        D: Any = None,
        C: Any = None,
        *,
        N_total: Any = None,
        flops_per_token: Any = None,
        noise: bool = False,
        seed: int = 0,
    ) -> np.ndarray:
        """Posterior draws of the predicted loss at new points.

        Args:
            N: parameters; D: tokens; C: FLOPs (arrays broadcast together). Missing
                covariates are derived with ``C = 6·N·D`` (or ``M·D``).
            N_total: total parameters, for the mixture-of-experts law.
            flops_per_token: M for ``C = M·D``.
            noise: add observation noise (posterior predictive for a new run)
                instead of the law's mean curve.
            seed: PRNG seed for the noise.

        Returns:
            Array ``(draws, points)`` in the target's units (nats).
        """
        with jax.enable_x64(True):
            log_x = self._log_covariates(N, D, C, flops_per_token, N_total)
            params = {k: jnp.asarray(v) for k, v in self.draws().items()}
            loc = jax.vmap(lambda p: self.law.log_mean(p, log_x))(params)
            if noise:
                nu = params["nu"][:, None] if self.spec.likelihood.learns_nu else None
                obs = self.spec.likelihood.distribution(loc, params["sigma"][:, None], nu)
                loc = obs.sample(jax.random.PRNGKey(seed))
        return np.exp(np.asarray(loc))

    def predict(
        self,
        N: Any = None,
        D: Any = None,
        C: Any = None,
        *,
        N_total: Any = None,
        flops_per_token: Any = None,
        level: float = LEVEL,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Credible bands of the loss at new points (extrapolation).

        Args:
            N, D, C, N_total: covariates as for :meth:`predict_draws`.
            flops_per_token: M for ``C = M·D``.
            level: credible level of the intervals.
            seed: seed of the predictive noise.

        Returns:
            DataFrame, one row per point: the covariates, ``median``, ``lower`` and
            ``upper`` of the law's mean loss, and ``pred_lower``/``pred_upper`` of a
            new run's observed loss (noise included). Loss in nats.
        """
        lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
        _interval_columns(level)
        mean = self.predict_draws(N, D, C, N_total=N_total, flops_per_token=flops_per_token)
        new = self.predict_draws(N, D, C, N_total=N_total, flops_per_token=flops_per_token, noise=True, seed=seed)
        covs = self._covariates(N, D, C, flops_per_token, N_total)
        table = pd.DataFrame({k: v for k, v in covs.items() if v is not None})
        table["median"] = np.median(mean, axis=0)
        table["lower"], table["upper"] = np.quantile(mean, [lo_q, hi_q], axis=0)
        table["pred_lower"], table["pred_upper"] = np.quantile(new, [lo_q, hi_q], axis=0)
        return table

    def _covariates(
        self, N: Any, D: Any, C: Any, flops_per_token: Any, N_total: Any = None
    ) -> dict[str, np.ndarray | None]:
        given = {"N": N, "D": D, "C": C, "flops_per_token": flops_per_token, "N_total": N_total}
        present = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in given.items() if v is not None}
        if not present:
            raise ValueError(f"give covariates for the law {self.law.name!r}: it uses {self.law.covariates}")
        arrays = np.broadcast_arrays(*present.values())
        checked = {
            k: _check_positive(a.copy(), range(a.size), k, "prediction input") for k, a in zip(present, arrays)
        }
        n, d, c = fill_covariates(checked.get("N"), checked.get("D"), checked.get("C"), checked.get("flops_per_token"))
        return {"N": n, "D": d, "C": c, "N_total": checked.get("N_total")}

    def _log_covariates(
        self, N: Any, D: Any, C: Any, flops_per_token: Any, N_total: Any = None
    ) -> dict[str, jax.Array]:
        covs = self._covariates(N, D, C, flops_per_token, N_total)
        missing = [c for c in self.law.covariates if covs[c] is None]
        if missing:
            raise ValueError(
                f"law {self.law.name!r} needs {missing}: give them, or two of N, D, C to derive them"
            )
        return {c: jnp.asarray(np.log(covs[c]), dtype=jnp.float64) for c in self.law.covariates}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the result to a netCDF file; :func:`load` reads it back exactly."""
        meta = {
            "format": _FORMAT_VERSION,
            "law": {"name": self.law.name, "options": dict(self.law.options)},
            "likelihood": {"name": self.spec.likelihood.name, "nu": self.spec.likelihood.nu},
            "priors": {k: _prior_to_json(v) for k, v in self.spec.priors.items()},
            "config": self.config._asdict(),
            "seed": self.seed,
            "data": {
                "target": self.data.target,
                "source": self.data.source,
                "counts_embeddings": self.data.counts_embeddings,
                "index": [str(i) for i in (self.data.index if self.data.index is not None else [])],
            },
        }
        idata = self.idata.copy()
        idata.posterior.attrs["bayescale"] = json.dumps(meta)
        idata.to_netcdf(os.fspath(path), engine="h5netcdf")


def _prior_to_json(prior: dist.Distribution) -> dict[str, Any]:
    args = {k: np.asarray(getattr(prior, k)).tolist() for k in prior.arg_constraints}
    return {"type": type(prior).__name__, "args": args}


def _prior_from_json(spec: Mapping[str, Any]) -> dist.Distribution:
    cls = getattr(dist, spec["type"], None)
    if cls is None:
        raise ValueError(f"cannot rebuild prior of type {spec['type']!r}")
    return cls(**spec["args"])


def load(path: str | os.PathLike[str], law: Law | None = None) -> FitResult:
    """Read a :class:`FitResult` written by :meth:`FitResult.save`.

    Args:
        path: the netCDF file.
        law: the law object, required for custom laws (functions are not saved).

    Returns:
        The result, with the same draws, data, law, likelihood and priors.
    """
    idata = az.from_netcdf(os.fspath(path), engine="h5netcdf")
    if "bayescale" not in idata.posterior.attrs:
        raise ValueError(f"{os.fspath(path)!r} was not written by bayescale")
    meta = json.loads(idata.posterior.attrs["bayescale"])
    del idata.posterior.attrs["bayescale"]
    if law is None:
        try:
            law = get_law(meta["law"]["name"], **meta["law"]["options"])
        except ValueError:
            raise ValueError(
                f"the result uses the custom law {meta['law']['name']!r}: pass it as load(path, law=...)"
            ) from None
    likelihood = Likelihood(meta["likelihood"]["name"], meta["likelihood"]["nu"])
    spec = make_spec(law, likelihood, {k: _prior_from_json(v) for k, v in meta["priors"].items()})
    const = idata.constant_data
    optional = lambda name: const[name].values if name in const else None  # noqa: E731
    data = ScalingData(
        loss=const["loss"].values,
        N=optional("N"),
        D=optional("D"),
        C=optional("C"),
        group=optional("group"),
        N_total=optional("N_total"),
        flops_per_token=optional("M"),
        counts_embeddings=meta["data"]["counts_embeddings"],
        index=np.asarray(meta["data"]["index"], dtype=object),
        target=meta["data"]["target"],
        source=meta["data"]["source"],
    )
    return FitResult(idata=idata, spec=spec, data=data, config=NUTSConfig(**meta["config"]), seed=meta["seed"])


def summaries_by_group(fits: Mapping[str, FitResult], level: float = LEVEL) -> pd.DataFrame:
    """Long table of several fits' summaries: one row per (group, parameter)."""
    parts = [fit.summary(level).rename_axis("parameter").reset_index().assign(group=name) for name, fit in fits.items()]
    table = pd.concat(parts, ignore_index=True)
    return table[["group", "parameter", *[c for c in table.columns if c not in ("group", "parameter")]]]
