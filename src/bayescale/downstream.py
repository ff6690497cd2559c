"""Downstream accuracy from loss, in two stages, with the first stage's uncertainty carried draw by draw.

Stage 1 is any fit of a law to a task's loss (for example bits per byte of the
correct answers, or validation loss) against N and D. Stage 2 links that loss
to the task's accuracy, floored at chance: a sigmoid, as the OLMo ladder and
Llama 3 reports do (``link="sigmoid"``),

    acc = chance + (top - chance) / (1 + exp(k·(L - L0))),

or the exponential of Gadre et al. 2024 for average downstream error,
``err = eps - k·exp(-gamma·L)`` with ``1 - eps`` the chance accuracy
(``link="exponential"``), ``acc = chance + k·exp(-gamma·L)``; fitted on the
runs' observed (loss, accuracy) pairs, with Student-t noise on log accuracy.
A prediction at new (N, D) pushes each posterior draw of the
stage-1 loss through one posterior draw of the link: the bands carry both
stages' uncertainty, never a plug-in point estimate of the loss
(:meth:`DownstreamResult.predict_draws` with ``plugin=True`` gives that
narrower answer, for comparison only).

Priors (sigmoid): ``(top - chance)/(1 - chance) ~ Beta(1.5, 1.5)``; ``k ~ LogNormal(0, 1)``
per spread of the observed losses (so the sigmoid is neither a step nor flat
over the data); ``L0 ~ Normal(centre, 2·spread)`` of the observed losses.
(exponential): ``gamma ~ LogNormal(0, 1)`` per spread; ``k`` as the accuracy above
chance at the losses' centre, ``k·exp(-gamma·centre) ~ LogNormal(log 0.2, 1)``.
Noise ``acc_sigma ~ HalfNormal(0.1)`` on log accuracy.

Units: N in parameters, D in tokens, loss in the stage-1 target's units
(nats, or bits per byte), accuracy a fraction in (0, 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import xarray as xr

from .allocation import optimal_allocation
from .data import DataError, check_positive
from .fit import sample_model
from .likelihoods import Likelihood, get_likelihood
from .model import OBSERVED, Spec
from .posterior import (
    LEVEL,
    FitResult,
    Posterior,
    constant_data,
    data_from_idata,
    settings_from_meta,
    spec_from_json,
    spec_to_json,
    table_of_draws,
    warn_unconverged,
)

__all__ = ["DownstreamResult", "fit_downstream", "sigmoid", "exponential", "accuracy", "LINKS"]

LINKS = {"sigmoid": ("top", "k", "L0", "acc_sigma"), "exponential": ("k", "gamma", "acc_sigma")}
"""Each link's posterior variables (``acc_sigma``: the noise on log accuracy)."""


def sigmoid(loss: Any, top: Any, k: Any, midpoint: Any, chance: float) -> Any:
    """Accuracy at ``loss``: ``chance + (top - chance) / (1 + exp(k·(loss - midpoint)))`` (broadcasts)."""
    return chance + (top - chance) * jax.nn.sigmoid(-k * (loss - midpoint))


def exponential(loss: Any, k: Any, gamma: Any, chance: float) -> Any:
    """Accuracy at ``loss``: ``chance + k·exp(-gamma·loss)`` (Gadre et al. 2024's error link; broadcasts)."""
    return chance + k * jnp.exp(-gamma * loss)


def accuracy(link: str, loss: Any, params: Mapping[str, Any], chance: float) -> Any:
    """Accuracy at ``loss`` under ``link`` with parameter values ``params`` (names of :data:`LINKS`)."""
    if link == "sigmoid":
        return sigmoid(loss, params["top"], params["k"], params["L0"], chance)
    return exponential(loss, params["k"], params["gamma"], chance)


class LinkData(NamedTuple):
    """Arrays of the link model: observed stage-1 losses, log accuracies, and the losses' centre and spread."""

    x: Any
    log_y: Any
    centre: Any
    spread: Any


@dataclasses.dataclass(frozen=True)
class LinkModel:
    """The NumPyro model of the sigmoid link, ``model(data: LinkData)``."""

    chance: float
    likelihood: Likelihood
    link: str = "sigmoid"

    def __call__(self, data: LinkData) -> None:
        if self.link == "sigmoid":
            headroom = numpyro.sample("headroom", dist.Beta(1.5, 1.5))
            top = numpyro.deterministic("top", self.chance + (1.0 - self.chance) * headroom)
            k = numpyro.sample("k", dist.LogNormal(-jnp.log(data.spread), 1.0))
            midpoint = numpyro.sample("L0", dist.Normal(data.centre, 2.0 * data.spread))
            mean = sigmoid(data.x, top, k, midpoint, self.chance)
        else:
            gamma = numpyro.sample("gamma", dist.LogNormal(-jnp.log(data.spread), 1.0))
            above = numpyro.sample("above_chance", dist.LogNormal(jnp.log(0.2), 1.0))  # at the losses' centre
            k = numpyro.deterministic("k", above * jnp.exp(gamma * data.centre))
            mean = exponential(data.x, k, gamma, self.chance)
        sigma = numpyro.sample("acc_sigma", dist.HalfNormal(0.1))
        with numpyro.plate("run", data.x.shape[0]):
            numpyro.sample(OBSERVED, self.likelihood.distribution(jnp.log(mean), sigma), obs=data.log_y)


@dataclasses.dataclass(frozen=True, eq=False)
class DownstreamResult(Posterior):
    """Both stages of a downstream-accuracy fit: the loss law's posterior and the link's, draw for draw.

    Attributes:
        idata: ``arviz.InferenceData``; posterior with the stage-1 law's parameters
            (and its noise ``sigma``) and the link's ``top``, ``k``, ``L0``,
            ``acc_sigma``; log-likelihood, predictive and observed data of the
            accuracies (``log_loss`` holds log accuracy); constant data with the
            runs' N, D, stage-1 loss and ``accuracy``.
        data: the stage-1 runs (N, D, and their task loss as ``loss``).
        settings: sampler settings of both stages.
        spec: the stage-1 law, likelihood and priors.
        chance: the task's chance accuracy (the link's floor).
        likelihood: the link's noise model on log accuracy.
        link: ``"sigmoid"`` or ``"exponential"``.
    """

    spec: Spec = dataclasses.field(kw_only=True)
    chance: float = dataclasses.field(kw_only=True)
    likelihood: Likelihood = dataclasses.field(kw_only=True)
    link: str = dataclasses.field(kw_only=True, default="sigmoid")

    kind: ClassVar[str] = "downstream"

    @property
    def latents(self) -> tuple[str, ...]:
        """Stage-1 latents, then the link's."""
        return (*self.spec.latents, *LINKS[self.link])

    @property
    def loss_fit(self) -> FitResult:
        """The stage-1 fit (its posterior and runs) as a :class:`FitResult`."""
        link = (*LINKS[self.link], "headroom", "above_chance")
        names = [v for v in self.idata.posterior.data_vars if v not in link]
        idata = az.InferenceData(posterior=self.idata.posterior[names], sample_stats=self.idata.sample_stats)
        return FitResult(idata=idata, data=self.data, settings=self.settings, spec=self.spec)

    def predict_draws(
        self, N: Any = None, D: Any = None, C: Any = None, *, noise: bool = False, plugin: bool = False,
        seed: int = 0, **covariates: Any,
    ) -> np.ndarray:
        """Posterior draws ``(draws, points)`` of the accuracy at new points.

        Args:
            N, D, C, **covariates: as for :meth:`FitResult.predict_draws` (parameters, tokens, FLOPs).
            noise: a new run's accuracy (both stages' run-to-run noise included),
                instead of the mean curve.
            plugin: for comparison only: push the stage-1 posterior *median* loss
                through the link, ignoring stage 1's uncertainty.
            seed: PRNG seed of the noise.

        Returns:
            Accuracy draws, each stage-1 draw paired with one link draw.
        """
        loss = self.loss_fit.predict_draws(N, D, C, noise=noise, seed=seed, **covariates)
        if plugin:
            loss = np.broadcast_to(np.median(loss, axis=0), loss.shape)
        link = {name: self.draws(name)[:, None] for name in LINKS[self.link]}
        acc = accuracy(self.link, loss, link, self.chance)
        if noise:
            key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
            shock = self.likelihood.distribution(0.0, 1.0).sample(key, np.shape(acc))
            acc = acc * np.exp(np.asarray(shock) * link["acc_sigma"])
        return np.asarray(acc)

    def predict(self, N: Any = None, D: Any = None, C: Any = None, *, level: float = LEVEL, seed: int = 0,
                **covariates: Any) -> pd.DataFrame:
        """Median and interval at ``level`` of a new run's accuracy, propagated and plug-in, one row per point."""
        lo, hi = (1 - level) / 2, (1 + level) / 2
        rows = {}
        for name, plugin in (("", False), ("plugin_", True)):
            draws = self.predict_draws(N, D, C, noise=True, plugin=plugin, seed=seed, **covariates)
            rows[f"{name}median"] = np.median(draws, axis=0)
            rows[f"{name}lower"], rows[f"{name}upper"] = np.quantile(draws, [lo, hi], axis=0)
        covs = self.loss_fit._covariates(N, D, C, covariates.get("flops_per_token"), covariates.get("N_total"),
                                         covariates.get("U"))
        return pd.DataFrame({**{k: v for k, v in covs.items() if v is not None}, **rows})

    def compute_optimal(self, compute: Any, flops_per_token: float = 6.0, level: float = LEVEL) -> pd.DataFrame:
        """The planning table with accuracy: compute-optimal N, D and loss per budget, and the accuracy there.

        Each stage-1 draw's optimum (:func:`bayescale.allocation.optimal_allocation`)
        is pushed through its paired link draw, so the accuracy interval carries both stages.

        Returns:
            DataFrame indexed by compute (FLOPs): column groups ``N_opt``, ``D_opt``,
            ``loss_opt`` (stage-1 units) and ``accuracy`` (mean curve), median and interval.
        """
        plan = optimal_allocation(self.spec.law, self.loss_fit.draws(), compute, flops_per_token)
        link = {name: self.draws(name)[:, None] for name in LINKS[self.link]}
        plan["accuracy"] = np.asarray(accuracy(self.link, plan["loss_opt"], link, self.chance))
        del plan["tokens_per_param"]
        return table_of_draws(plan, pd.Index(np.atleast_1d(np.asarray(compute, dtype=float)), name="compute"), level)

    def _meta(self) -> dict[str, Any]:
        return {**spec_to_json(self.spec), "chance": self.chance, "link": self.link,
                "link_likelihood": {"name": self.likelihood.name, "nu": self.likelihood.nu}}

    @classmethod
    def _restore(cls, idata: az.InferenceData, meta: Mapping[str, Any], law: Any) -> DownstreamResult:
        return cls(
            idata=idata,
            data=data_from_idata(idata, meta),
            settings=settings_from_meta(meta),
            spec=spec_from_json(meta, law),
            chance=float(meta["chance"]),
            likelihood=Likelihood(meta["link_likelihood"]["name"], meta["link_likelihood"]["nu"]),
            link=meta["link"],
        )


def fit_downstream(
    loss_fit: FitResult,
    accuracy: Any,
    *,
    chance: float,
    link: str = "sigmoid",
    likelihood: str | Likelihood = "student_t",
) -> DownstreamResult:
    """Fit the link from a task's loss to its accuracy, beside the loss law's posterior.

    Args:
        loss_fit: stage 1: a fit of any law in N and D to the task's loss (or
            bits per byte) of the runs.
        accuracy: the same runs' accuracies, fractions in (0, 1), in the order of
            ``loss_fit.data``, shape ``(n,)``.
        chance: the task's chance accuracy (0.25 for four-way multiple choice),
            the floor of the link.
        link: ``"sigmoid"`` (OLMo ladder, Llama 3) or ``"exponential"`` (Gadre et al.
            2024, for average downstream error); see the module docs.
        likelihood: noise model on log accuracy (default Student-t, nu = 4).

    Returns:
        :class:`DownstreamResult`, sampled with ``loss_fit``'s settings so the two
        stages' draws pair one to one; diagnostics warn as for :func:`bayescale.fit`.

    Raises:
        DataError: accuracies of the wrong length, outside (0, 1), or not above
            chance anywhere; a chance level outside [0, 1).
    """
    if link not in LINKS:
        raise ValueError(f"link must be one of {list(LINKS)}, got {link!r}")
    if not (isinstance(chance, (int, float)) and 0.0 <= chance < 1.0):
        raise DataError(f"chance must be an accuracy in [0, 1), got {chance!r}")
    data = loss_fit.data
    acc = np.asarray(accuracy, dtype=float).reshape(-1)
    if acc.shape != (data.n,):
        raise DataError(f"accuracy has {acc.size} values for the {data.n} runs of the loss fit")
    index = data.index if data.index is not None else np.arange(data.n)
    check_positive(acc, index, "accuracy", "accuracy")
    if np.any(acc >= 1.0):
        rows = np.asarray(index)[acc >= 1.0][:5].tolist()
        raise DataError(f"column 'accuracy' must be a fraction below 1; rows {rows} are not"
                        " (percentages? divide by 100)")
    if not np.any(acc > chance):
        raise DataError(f"no run is above chance ({chance}): the link cannot be fitted")
    lik = get_likelihood(likelihood)
    x = np.asarray(data.loss, dtype=float)
    link_data = LinkData(x=x, log_y=np.log(acc), centre=np.median(x), spread=max(float(np.std(x)), 1e-3))
    settings = loss_fit.settings
    idata = sample_model(LinkModel(float(chance), lik, link), link_data, settings, observed=np.log(acc),
                         constant={**constant_data(data), "accuracy": acc}, desc="link fit")
    stage1 = loss_fit.idata.posterior
    shared = [v for v in stage1.data_vars if v in idata.posterior]
    idata.posterior = xr.merge([idata.posterior, stage1.drop_vars(shared)], combine_attrs="drop")
    result = DownstreamResult(idata=idata, data=data, settings=settings, spec=loss_fit.spec, chance=float(chance),
                              likelihood=lik, link=link)
    warn_unconverged(result.diagnostics, "downstream fit (both stages)")
    return result
