"""bayescale: Bayesian fits of neural scaling laws with JAX and NumPyro.

Units throughout: N in parameters, D in tokens, C in FLOPs, loss in nats.

Typical use::

    import bayescale as bs
    data = bs.ScalingData.from_table("runs.csv", params="N", tokens="D", loss="loss")
    result = bs.fit(data, law="chinchilla")
    result.summary()
"""

import warnings as _warnings

_warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

from . import calibration, datasets, laws, likelihoods, plots  # noqa: E402
from .allocation import (  # noqa: E402
    allocation_exponent_draws,
    allocation_exponents,
    compute_for_loss,
    compute_optimal,
    compute_optimal_draws,
    inference_optimal,
    optimal_allocation,
    loss_at,
)
from .batch import BatchResult, fit_batch, load_batch  # noqa: E402
from .comparison import compare  # noqa: E402
from .data import DataError, DataWarning, ScalingData  # noqa: E402
from .inference import MapResult, fit, fit_map  # noqa: E402
from .hierarchical import HierarchicalResult, fit_hierarchical  # noqa: E402
from .isoflop import IsoFlopResult, fit_isoflop  # noqa: E402
from .laws import Law  # noqa: E402
from .reporting import report  # noqa: E402
from .results import ConvergenceWarning, Diagnostics, FitResult, load  # noqa: E402
from .simulate import chinchilla_design, simulate  # noqa: E402
from .validation import Validation, validate  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BatchResult",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "Diagnostics",
    "FitResult",
    "HierarchicalResult",
    "IsoFlopResult",
    "Law",
    "allocation_exponent_draws",
    "allocation_exponents",
    "calibration",
    "compare",
    "compute_for_loss",
    "compute_optimal",
    "compute_optimal_draws",
    "datasets",
    "inference_optimal",
    "loss_at",
    "MapResult",
    "ScalingData",
    "chinchilla_design",
    "fit",
    "fit_batch",
    "fit_hierarchical",
    "fit_isoflop",
    "fit_map",
    "laws",
    "likelihoods",
    "plots",
    "load",
    "load_batch",
    "report",
    "simulate",
    "optimal_allocation",
    "validate",
    "Validation",
]
