"""Model comparison by approximate leave-one-out cross-validation (PSIS-LOO, via ArviZ).

Every fit stores pointwise log-likelihoods of the observed log-losses, so laws
fitted to the same runs can be ranked by expected log predictive density.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import arviz as az
import numpy as np
import pandas as pd

from .posterior import Posterior

__all__ = ["compare", "ReliabilityWarning", "PARETO_K_MAX"]

PARETO_K_MAX = 0.7
"""Pareto k above this makes the PSIS estimate for that run unreliable (Vehtari et al. 2017)."""


class ReliabilityWarning(UserWarning):
    """The PSIS-LOO estimate is unreliable: some Pareto k values are too high."""


def compare(fits: Mapping[str, Posterior]) -> pd.DataFrame:
    """Rank fits of the same runs by PSIS-LOO expected log predictive density.

    Args:
        fits: name -> fit; at least two, all fitted to the same runs (same losses
            in the same order).

    Returns:
        ``arviz.compare`` table, best first: ``elpd_loo``, ``p_loo``, ``elpd_diff``,
        ``weight``, ``se``, ``dse``, ``warning``, plus ``max_pareto_k`` and the
        number of runs with k above 0.7 (``bad_k``). A :class:`ReliabilityWarning`
        names the fits with high Pareto k.

    Raises:
        ValueError: fewer than two fits, or fits of different runs.
    """
    if len(fits) < 2:
        raise ValueError(f"compare needs at least two fits, got {len(fits)}")
    names = list(fits)
    reference = fits[names[0]].data.loss
    for name in names[1:]:
        other = fits[name].data.loss
        if other.shape != reference.shape or not np.array_equal(other, reference):
            raise ValueError(f"fit {name!r} is of other runs than {names[0]!r}: compare needs the same data")
    loos = {name: az.loo(fit.idata, pointwise=True) for name, fit in fits.items()}
    table = az.compare({name: fit.idata for name, fit in fits.items()}, ic="loo")
    table["max_pareto_k"] = [float(loos[n].pareto_k.max()) for n in table.index]
    table["bad_k"] = [int((loos[n].pareto_k > PARETO_K_MAX).sum()) for n in table.index]
    bad = table.index[table["bad_k"] > 0].tolist()
    if bad:
        warnings.warn(
            f"PSIS-LOO is unreliable for {bad}: Pareto k > {PARETO_K_MAX} for "
            + ", ".join(f"{n} ({table.loc[n, 'bad_k']} runs)" for n in bad)
            + "; refit without those runs (exact LOO) or use more informative priors",
            ReliabilityWarning,
            stacklevel=2,
        )
    return table
