"""Bundled datasets, shipped as package data (no downloads).

- ``palm2``: the PaLM 2 iso-FLOP table (Anil et al. 2023, Table 1), as given in
  the course notes in ``shared/seeds``: three budgets (1e20, 1e21, 1e22 FLOPs),
  four models each with total parameters, tokens and final loss. The report's
  compute-optimal sizes are in :data:`PALM2_OPTIMAL_PARAMS`.
- ``chinchilla_synthetic``: 240 runs simulated from the published Chinchilla law
  (E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28), N log-uniform in
  7e7-1.6e10, C log-uniform in 6e18-3e21, D = C/(6N), 2% log-normal noise
  (design seed 0, noise seed 1).
- ``kaplan_synthetic``: 120 runs from Kaplan's joint law (alpha_N=0.076,
  alpha_D=0.095, N_c=8.8e13, D_c=5.4e13), same design, 1% log-noise (seeds 2, 3).

Real training runs, unchanged, with their licences in ``data/licenses/`` and their
sources in ``data/SOURCES.md``:

- ``olmo_ladder``: final checkpoints of the OLMo 2 ladder (AllenAI, Apache-2.0): 30
  runs, 190M-3.2B parameters (``N``, all but the input embedding), ``D_tokens``
  tokens, validation losses ``val_loss_<set>`` in nats/token (``load`` uses
  ``val_loss_c4_en``), 5-shot downstream accuracies and bits per byte.
- ``overtrain``: the over-training study of Gadre et al. 2024 (MIT): 95 models,
  10.6M-412M parameters (``N_params``), ``D_tokens``, three training mixes
  (``dataset``), validation losses ``loss_<set>`` (``load`` uses ``loss_c4_val``)
  and downstream errors ``err_<task>``.
- ``datablations_final``: final losses of the data-constrained study of Muennighoff
  et al. 2023 (MIT over Apache-2.0): ``num_params``, ``token_num`` tokens seen,
  ``epochs`` over the unique data, ``openLM_loss`` nats/token; ``load`` adds the
  unique tokens ``U = token_num / epochs`` (the file's ``tokens_per_epoch`` is wrong).
- ``loss_curves``: whole validation-loss curves of Luo et al. 2025 (MIT): 25M, 100M and
  400M-parameter models under learning-rate schedules (``size``, ``schedule``, ``step``, the
  logged ``lr`` and ``loss`` in nats, every 128 steps after warmup); 400M has only the three
  fitting schedules. :func:`loss_curves` gives them as :class:`~bayescale.curves.LossCurves`
  with every step's rate built by :func:`bayescale.schedules.from_name`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np
import pandas as pd

from . import schedules
from .curves import LossCurves
from .data import ScalingData
from .simulate import chinchilla_design, simulate

__all__ = ["load", "load_frame", "loss_curves", "list", "PALM2_OPTIMAL_PARAMS", "CHINCHILLA_PARAMS", "KAPLAN_PARAMS"]

PALM2_OPTIMAL_PARAMS = {1e20: 1.04e9, 1e21: 3.35e9, 1e22: 10.7e9}
"""Compute-optimal parameters reported by PaLM 2 per budget (FLOPs -> parameters)."""
CHINCHILLA_PARAMS = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
"""Published Chinchilla fit (Hoffmann et al. 2022, approach 3)."""
KAPLAN_PARAMS = {"alpha_N": 0.076, "alpha_D": 0.095, "N_c": 8.8e13, "D_c": 5.4e13}
"""Kaplan et al. (2020) joint-law constants."""

_DATASETS = {
    "palm2": "PaLM 2 iso-FLOP table: 12 runs at 1e20, 1e21, 1e22 FLOPs (Anil et al. 2023); group column 'budget'.",
    "chinchilla_synthetic": "240 runs simulated from the published Chinchilla law, 2% log-noise.",
    "kaplan_synthetic": "120 runs simulated from Kaplan's joint law L(N, D), 1% log-noise.",
    "olmo_ladder": "OLMo 2 ladder, 30 real runs 190M-3.2B params, validation losses and downstream accuracies.",
    "overtrain": "Over-training study (Gadre et al. 2024), 95 real runs 10.6M-412M params, 3 training mixes.",
    "datablations_final": "Data-constrained study (Muennighoff et al. 2023), final losses with repeated data.",
    "loss_curves": "Loss curves of 25M/100M/400M models under 9 learning-rate schedules (Luo et al. 2025).",
}
_COLUMNS = {
    "olmo_ladder": {"params": "N", "tokens": "D_tokens", "loss": "val_loss_c4_en"},
    "overtrain": {"params": "N_params", "tokens": "D_tokens", "loss": "loss_c4_val"},
    "datablations_final": {"params": "num_params", "tokens": "token_num", "loss": "openLM_loss"},
}
"""Column options of the real tables for ``load``; pass others (e.g. ``loss="val_loss_mean11"``) to override."""


def list() -> pd.DataFrame:  # noqa: A001 - mirrors `bs.datasets.list()` in the docs
    """Name and description of each bundled dataset."""
    return pd.DataFrame({"name": [*_DATASETS], "description": [*_DATASETS.values()]})


def make(name: str) -> pd.DataFrame:
    """Regenerate a synthetic dataset from its documented recipe (the shipped CSV is this, rounded)."""
    if name == "chinchilla_synthetic":
        N, D = chinchilla_design(240, seed=0)
        data = simulate("chinchilla", CHINCHILLA_PARAMS, N=N, D=D, noise=0.02, seed=1)
    elif name == "kaplan_synthetic":
        N, D = chinchilla_design(120, seed=2)
        data = simulate("kaplan_nd", KAPLAN_PARAMS, N=N, D=D, noise=0.01, seed=3)
    else:
        raise ValueError(f"no recipe for {name!r}; synthetic datasets are chinchilla_synthetic, kaplan_synthetic")
    return data.to_frame()[["N", "D", "C", "loss"]]


def load_frame(name: str) -> pd.DataFrame:
    """The raw table of a bundled dataset."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; bundled datasets are {[*_DATASETS]}")
    with resources.files("bayescale").joinpath("data", f"{name}.csv").open() as handle:
        return pd.read_csv(handle)


def load(name: str, **columns: str) -> ScalingData:
    """A bundled dataset as :class:`~bayescale.data.ScalingData` (see ``list()``).

    Args:
        name: the dataset.
        **columns: column options of :meth:`ScalingData.from_table`, overriding the
            dataset's defaults (for the real tables, e.g. ``loss="val_loss_mean11"``).
    """
    if name == "loss_curves":
        raise ValueError("loss_curves are whole curves, not final losses: use bayescale.datasets.loss_curves(size)")
    frame = load_frame(name)
    if name == "datablations_final":
        frame = frame.assign(U=frame["token_num"] / frame["epochs"])
    group = "budget" if "budget" in frame.columns else None
    options = {"group": group, **_COLUMNS.get(name, {}), **columns}
    return ScalingData.from_table(frame, source=f"bayescale.datasets:{name}", **options)


def loss_curves(size: str | Sequence[str] = "25M") -> LossCurves:
    """The bundled loss curves of one model size (``"25M"``, ``"100M"`` or ``"400M"``) or of several, one run
    per schedule and size, with each run's nominal model size as ``N`` (parameters).

    Runs of one size are labelled by schedule name (``"cosine_24000"``, ...), runs of several by size and
    schedule (``"400M cosine_24000"``); each schedule is rebuilt at every step from its definition, and
    checked against the rates logged with the curve.
    """
    frame = load_frame("loss_curves")
    sizes = [size] if isinstance(size, str) else [*size]
    unknown = [s for s in sizes if s not in set(frame["size"])]
    if unknown or not sizes:
        raise ValueError(f"unknown sizes {unknown}; sizes are {sorted(set(frame['size']))}")
    frame = frame[frame["size"].isin(sizes)]
    frame = frame.assign(N=frame["size"].str.rstrip("M").astype(float) * 1e6,
                         run=frame["schedule"] if len(sizes) == 1 else frame["size"] + " " + frame["schedule"])
    lrs = {name: schedules.from_name(name) for name in frame["schedule"].unique()}
    for name, rows in frame.groupby("schedule"):
        built = lrs[name][rows["step"].to_numpy()]
        if not np.allclose(built, rows["lr"].to_numpy(), rtol=1e-9, atol=0):
            raise RuntimeError(f"schedule {name!r} does not match the rates logged with its curve")
    runs = frame.drop_duplicates("run")
    return LossCurves.from_table(frame, {r: lrs[s] for r, s in zip(runs["run"], runs["schedule"])}, params="N")
