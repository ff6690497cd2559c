"""Do the bands hold beyond the data? Held-out scores on real training runs.

For each bundled real dataset (``bs.datasets``, copied from ``../shared/realdata`` with their
licences): fit to the smaller runs, predict the held-out larger ones, and score a new run's
predictive distribution at each held-out point:

- OLMo 2 ladder, c4_en and mean-of-11 validation loss: fit N <= 1.3B (24 runs), hold out 3.2B (6);
- over-training study, one dataset per training mix (c4, RedPajama, RefinedWeb), loss on c4
  validation: fit N <= 154M, hold out 412M;
- data-constrained study, single-epoch final losses: fit N < 2B, hold out the largest sizes (2.2-3.9B).

Modes, all from the same fits (``bs.fit`` defaults: Student-t, 4 x 1000):

- ``single law``: the Chinchilla law;
- ``structural``: the Chinchilla law with ``bs.extrapolation.structural_error``;
- ``stacked``: the Chinchilla law and the M4 law in compute, stacked by their
  leave-future-out record (``bs.stack``, the default method);
- ``stacked structural``: the same two laws stacked with ``structural=True``: each law gets
  its structural error, learned from the same refits that score it;
- ``stacked LOO``: the Chinchilla law and Kaplan's joint law stacked by PSIS-LOO (the
  earlier default, kept for comparison).

Scores per dataset and mode: 50% and 90% coverage, median relative width of the 90% band,
mean interval score at 90% (Gneiting and Raftery 2007, on log-loss: width + 20 x miss) and
mean log predictive density of log-loss (Gaussian KDE of the predictive draws); the seconds
each mode took on top of the fits of the laws.

Run: ``python benchmarks/extrapolation.py [--datasets NAME ...]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import bayescale as bs


def datasets() -> dict[str, tuple[bs.ScalingData, np.ndarray]]:
    """name -> (runs, held-out mask)."""
    out = {}
    for column in ("val_loss_c4_en", "val_loss_mean11"):
        data = bs.datasets.load("olmo_ladder", loss=column)
        out[f"olmo {column[9:]}"] = (data, data.N > 2e9)
    over = bs.datasets.load_frame("overtrain")
    for mix, part in over.groupby("dataset"):
        data = bs.ScalingData.from_table(part.reset_index(drop=True), params="N_params", tokens="D_tokens",
                                         loss="loss_c4_val")
        out[f"overtrain {mix}"] = (data, data.N > 3e8)
    contour = bs.datasets.load_frame("datablations_final")
    single = contour[contour["epochs"] == 1].reset_index(drop=True)
    data = bs.ScalingData.from_table(single, params="num_params", tokens="token_num", loss="openLM_loss")
    out["datablations 1 epoch"] = (data, data.N > 2e9)
    return out


def modes(train: bs.ScalingData) -> dict[str, tuple[bs.Posterior, float]]:
    """Mode -> (result, seconds beyond the single law's fit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.DataWarning)
        fits = {law: bs.fit(train, law=law, seed=0, progress=False) for law in ("chinchilla", "m4", "kaplan_nd")}
    pair = {law: fits[law] for law in ("chinchilla", "m4")}
    timed = {
        "structural": lambda: bs.extrapolation.structural_error(fits["chinchilla"]),
        "stacked": lambda: bs.stack(pair),
        "stacked structural": lambda: bs.stack(pair, structural=True),
        "stacked LOO": lambda: bs.stack({law: fits[law] for law in ("chinchilla", "kaplan_nd")}, method="loo"),
    }
    out: dict[str, tuple[bs.Posterior, float]] = {"single law": (fits["chinchilla"], 0.0)}
    for mode, make in timed.items():
        start = time.perf_counter()
        result = make()
        out[mode] = (result, time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=None, help="names of the datasets to run (default all)")
    args = parser.parse_args()
    rows = []
    for name, (data, held) in datasets().items():
        if args.datasets and name not in args.datasets:
            continue
        train, test = data.subset(~held), data.subset(held)
        for mode, (result, seconds) in modes(train).items():
            draws = np.log(result.predict_draws(N=test.N, D=test.D, noise=True, seed=1))
            weights = getattr(result, "weights", None)
            rows.append({"dataset": name, "mode": mode, "train": train.n, **bs.validation.scores(draws, np.log(test.loss)),
                         "seconds": seconds, "weights": "" if weights is None else
                         ", ".join(f"{k} {v:.2f}" for k, v in weights.items())})
        print(pd.DataFrame([r for r in rows if r["dataset"] == name]).to_string(
            index=False, float_format=lambda v: f"{v:.3g}"), flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    pooled = table.groupby("mode", sort=False).apply(
        lambda t: pd.Series({"cover50": np.average(t["cover50"], weights=t["n"]),
                             "cover90": np.average(t["cover90"], weights=t["n"]),
                             "min cover90": t["cover90"].min(),
                             "width90": t["width90"].median(), "interval_score": t["interval_score"].mean(),
                             "lpd": t["lpd"].mean(), "seconds": t["seconds"].mean()}), include_groups=False)
    print("\npooled over held-out points:\n" + pooled.to_string(float_format=lambda v: f"{v:.3g}"))
    single = table[table["mode"] == "single law"].set_index("dataset")["interval_score"]
    for mode in table["mode"].unique():
        mine = table[table["mode"] == mode].set_index("dataset")["interval_score"]
        print(f"{mode}: interval score better than the single law's on {int((mine < single).sum())} of {len(single)}")


if __name__ == "__main__":
    main()
