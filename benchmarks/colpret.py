"""Many real learning curves at once: ColPret's 192 pretraining curves, scored as the literature scores them.

Each curve (``../shared/realdata/colpret_curves``: tokens seen, logged loss; repeated evaluations at one
step averaged) is split as Lee et al. (ICML 2025) split it: the first half of its points is observed
(``context``), the rest predicted. Every curve is fitted with the offset power law in tokens
(``E + A·D^-alpha``), Student-t likelihood, 2 chains x 300/300, all curves as one ``bs.fit_batch``.

Modes, timed in the same run:

- ``single law``: the plain batch;
- ``planning``: the same batch with every curve's structural error
  (``bs.extrapolation.structural_error(batch)``: the rolling-origin refits of all curves and cuts as
  one more batch); a curve too short for the refits keeps its plain bands (counted).

Scores per curve on its held-out points, with a new run's predictive (noise included): RMSLE of the
predictive median, coverage of the central intervals at 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99 and MSCE
(the mean over those levels of (coverage - level)^2). Summaries: median RMSLE and mean MSCE over
curves (as published), mean coverage per level. Diagnosis of where the MSCE comes from: bias (mean PIT),
spread (MSCE with the predictive's deviations from its median widened 1.5, 2, 3 times) and horizon
(90% coverage on the nearest and farthest third of the held-out points).

Run: ``python benchmarks/colpret.py [--curves K] [--out results/colpret.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import bayescale as bs

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
SOURCE = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "colpret_curves" / "colpret_curves.csv"


def curves(limit: int | None = None) -> tuple[dict[str, bs.ScalingData], dict[str, bs.ScalingData]]:
    """Context and held-out points of each curve (repeated evaluations at one step averaged)."""
    frame = pd.read_csv(SOURCE)
    frame = frame.groupby(["curve", "tokens"], sort=False, as_index=False).agg(loss=("loss", "mean"),
                                                                              context=("context", "max"))
    context, held = {}, {}
    for name, part in frame.groupby("curve", sort=False):
        if limit is not None and len(context) >= limit:
            break
        seen, rest = part[part["context"] == 1], part[part["context"] == 0]
        context[name] = bs.ScalingData.from_arrays(loss=seen["loss"], D=seen["tokens"])
        held[name] = bs.ScalingData.from_arrays(loss=rest["loss"], D=rest["tokens"])
    return context, held


WIDEN = (1.0, 1.5, 2.0, 3.0)
"""Diagnosis of spread: the predictive's deviations from its median scaled by these factors."""


def _coverage(log_draws: np.ndarray, y: np.ndarray, prefix: str = "") -> dict[str, float]:
    out = {}
    for level in LEVELS:
        lo, hi = np.quantile(log_draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        out[f"{prefix}cover{level:g}"] = float(np.mean((lo <= y) & (y <= hi)))
    out[f"{prefix}msce"] = float(np.mean([(out[f"{prefix}cover{level:g}"] - level) ** 2 for level in LEVELS]))
    return out


def scores(result: bs.FitResult, test: bs.ScalingData) -> dict[str, float]:
    """RMSLE, coverage per level and MSCE on the held-out points; and for the diagnosis: the mean PIT (share
    of draws below the truth; 0.5 without bias), MSCE with the deviations from the median widened by each
    factor of :data:`WIDEN`, and coverage at 90% on the first and last third of the held-out points."""
    log_draws = np.log(result.predict_draws(D=test.D, noise=True, seed=1))
    y = np.log(test.loss)
    median = np.median(log_draws, axis=0)
    out = {"rmsle": float(np.sqrt(np.mean((median - y) ** 2))), **_coverage(log_draws, y)}
    out["pit"] = float(np.mean(log_draws < y))
    for factor in WIDEN[1:]:
        out[f"msce_x{factor:g}"] = _coverage(median + factor * (log_draws - median), y)["msce"]
    third = max(1, y.size // 3)
    out["cover0.9_near"] = _coverage(log_draws[:, :third], y[:third])["cover0.9"]
    out["cover0.9_far"] = _coverage(log_draws[:, -third:], y[-third:])["cover0.9"]
    return out


def figure(summary: pd.DataFrame, path: Path) -> None:
    """Calibration: mean coverage over curves against the nominal level, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0.45, 1], [0.45, 1], color="0.6", lw=1, ls="--", label="calibrated")
    for mode, row in summary.iterrows():
        ax.plot(LEVELS, [row[f"cover{level:g}"] for level in LEVELS], marker="o",
                label=f"{mode} (MSCE {row['msce_mean']:.3f})")
    ax.set(xlabel="nominal level", ylabel="coverage of held-out points (mean over curves)",
           title="ColPret, 192 curves: calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curves", type=int, default=None, help="only the first K curves (default all 192)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "colpret.json"))
    args = parser.parse_args()
    context, held = curves(args.curves)
    settings = bs.SamplerSettings(num_warmup=300, num_samples=300, num_chains=2)
    law = bs.laws.get_law("offset_power", covariate="D")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        plain = bs.fit_batch(context, law=law, settings=settings)
        plain_s = time.perf_counter() - start
        start = time.perf_counter()
        planning = bs.extrapolation.structural_error(plain)
        planning_s = time.perf_counter() - start
    rows = []
    for name in plain.results:
        rows.append({"curve": name, "mode": "single law", **scores(plain[name], held[name])})
        member = planning.results.get(name, plain[name])
        rows.append({"curve": name, "mode": "planning", "fallback": name not in planning.results,
                     **scores(member, held[name])})
    table = pd.DataFrame(rows)
    summary = table.groupby("mode", sort=False).agg(
        rmsle_median=("rmsle", "median"), msce_mean=("msce", "mean"),
        **{f"cover{level:g}": (f"cover{level:g}", "mean") for level in LEVELS})
    summary["seconds"] = [plain_s, plain_s + planning_s]
    print(f"{len(plain.results)} curves fitted, {len(plain.failures)} failed; planning mode fell back to the plain "
          f"bands on {int(table['fallback'].fillna(False).sum())} curves too short for the refits")
    print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"planning mode: {(plain_s + planning_s) / plain_s:.2f}x the plain batch's time")
    diagnosis = table.groupby("mode", sort=False).agg(
        pit_mean=("pit", "mean"), cover90_near=("cover0.9_near", "mean"), cover90_far=("cover0.9_far", "mean"),
        **{f"msce_x{f:g}": (f"msce_x{f:g}", "mean") for f in WIDEN[1:]})
    print("diagnosis (mean over curves): PIT (0.5 = no bias), 90% coverage on the nearest and farthest third of the"
          " held-out points, MSCE with the spread widened:\n" + diagnosis.to_string(float_format=lambda v: f"{v:.4g}"))
    msce = table.pivot(index="curve", columns="mode", values="msce")
    print("curves whose MSCE is worst in planning mode:\n" + msce.sort_values("planning").tail(10).to_string())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure(summary, Path(args.out).with_name("colpret_calibration.png"))
    Path(args.out).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpus": jax.device_count(),
        "versions": {"jax": jax.__version__, "bayescale": bs.__version__}, "curves": len(plain.results),
        "failures": {str(k): v for k, v in plain.failures.items()},
        "summary": summary.reset_index().to_dict(orient="records"),
        "diagnosis": diagnosis.reset_index().to_dict(orient="records"),
        "per_curve": table.to_dict(orient="records"),
    }, indent=1, default=str))


if __name__ == "__main__":
    main()
