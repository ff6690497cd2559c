"""bayescale: Bayesian fits of neural scaling laws with JAX and NumPyro.

Units throughout: N in parameters, D in tokens, C in FLOPs, loss in nats.

Typical use::

    import bayescale as bs
    data = bs.ScalingData.from_table("runs.csv", params="N", tokens="D", loss="loss")
    result = bs.fit(data, law="chinchilla")
    result.summary()

This namespace only re-exports names from the modules below; importing it
changes no global state (no warnings filters, no JAX configuration).
"""

import warnings as _warnings

with _warnings.catch_warnings():
    # ArviZ announces its 1.0 refactor on import, once a day; bayescale pins arviz<1, so the notice
    # concerns no user of this package. The filter is local to this import.
    _warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import arviz as _arviz  # noqa: F401

from . import (
    allocation,
    cache,
    calibration,
    curves,
    datasets,
    downstream,
    experiments,
    extrapolation,
    laws,
    likelihoods,
    plots,
    schedules,
    stacking,
    store,
)
from .allocation import (
    allocation_exponent_draws,
    allocation_exponents,
    compute_for_loss,
    compute_optimal,
    inference_optimal,
    loss_at,
    optimal_allocation,
)
from .batch import BatchResult, fit_batch, load_batch
from .comparison import compare
from .curve_fit import CurveResult, fit_curves, simulate_curves
from .curves import LossCurves
from .data import DataError, DataWarning, ScalingData
from .envelope import curve_envelope, envelope_draws
from .experiments import Design, design
from .downstream import DownstreamResult, fit_downstream
from .fit import fit
from .hierarchical import HierarchicalResult, fit_hierarchical
from .isoflop import IsoFlopResult, fit_isoflop
from .laws import Law
from .posterior import ConvergenceWarning, Diagnostics, FitResult, Posterior, load
from .reporting import curve_report, report
from .sampling import SamplerSettings
from .simulate import chinchilla_design, simulate
from .stacked_batch import StackedBatch, stack_batch
from .stacking import StackedResult, stack
from .store import ResumeWarning
from .start import MapResult, fit_map
from .validation import Backtest, Validation, backtest, validate

__version__ = "0.1.0"

__all__ = [
    "Backtest",
    "BatchResult",
    "ConvergenceWarning",
    "CurveResult",
    "DataError",
    "DataWarning",
    "Diagnostics",
    "FitResult",
    "HierarchicalResult",
    "IsoFlopResult",
    "Law",
    "LossCurves",
    "MapResult",
    "Posterior",
    "SamplerSettings",
    "StackedResult",
    "ScalingData",
    "Validation",
    "allocation",
    "allocation_exponent_draws",
    "allocation_exponents",
    "backtest",
    "cache",
    "calibration",
    "chinchilla_design",
    "compare",
    "compute_for_loss",
    "compute_optimal",
    "curve_envelope",
    "curve_report",
    "curves",
    "datasets",
    "envelope_draws",
    "extrapolation",
    "fit",
    "fit_batch",
    "fit_curves",
    "fit_downstream",
    "Design",
    "design",
    "DownstreamResult",
    "fit_hierarchical",
    "fit_isoflop",
    "fit_map",
    "inference_optimal",
    "laws",
    "likelihoods",
    "load",
    "load_batch",
    "ResumeWarning",
    "loss_at",
    "optimal_allocation",
    "plots",
    "report",
    "schedules",
    "simulate",
    "simulate_curves",
    "stack",
    "stack_batch",
    "StackedBatch",
    "stacking",
    "validate",
]
