"""Do the bands hold beyond the data? Held-out scores on real training runs.

For each bundled real dataset (``bs.datasets``, copied from ``../shared/realdata`` with their
licences): fit the Chinchilla law to
the smaller runs, predict the held-out larger ones, and score a new run's predictive
distribution at each held-out point:

- OLMo 2 ladder, c4_en and mean-of-11 validation loss: fit N <= 1.3B (24 runs), hold out 3.2B (6);
- over-training study, one dataset per training mix (c4, RedPajama, RefinedWeb), loss on c4
  validation: fit N <= 154M, hold out 412M;
- data-constrained study, single-epoch final losses: fit N < 2B, hold out the largest sizes (2.2-3.9B).

Scores per dataset and mode: 50% and 90% coverage, median relative width of the 90% band,
mean interval score at 90% (Gneiting and Raftery 2007, on log-loss: width + 20 x miss) and
mean log predictive density of log-loss (Gaussian KDE of the predictive draws). Modes: the
single law (``bs.fit`` defaults), the Chinchilla law stacked with Kaplan's joint law
(``bs.stack``, PSIS-LOO stacking weights), and the single law with the structural-error term
(``bs.extrapolation.structural_error``).

Run: ``python benchmarks/extrapolation.py``.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rows = []
    for name, (data, held) in datasets().items():
        train, test = data.subset(~held), data.subset(held)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bs.DataWarning)
            single = bs.fit(train, seed=0)
            kaplan = bs.fit(train, law="kaplan_nd", seed=0)
        structural = bs.extrapolation.structural_error(single)
        stacked = bs.stack({"chinchilla": single, "kaplan_nd": kaplan})
        tau = np.median(structural.idata.posterior[bs.posterior.MISFIT].values)
        for mode, result in (("single law", single), ("stacked", stacked), ("structural", structural)):
            draws = np.log(result.predict_draws(N=test.N, D=test.D, noise=True, seed=1))
            rows.append({"dataset": name, "mode": mode, "train": train.n, **bs.validation.scores(draws, np.log(test.loss)),
                         "tau": tau if mode == "structural" else np.nan, "converged": single.diagnostics.ok})
        print(pd.DataFrame(rows[-3:]).to_string(index=False, float_format=lambda v: f"{v:.3g}"),
              f"stacking weight of chinchilla: {stacked.weights['chinchilla']:.2f}", flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    pooled = table.groupby("mode").apply(
        lambda t: pd.Series({"cover50": np.average(t["cover50"], weights=t["n"]),
                             "cover90": np.average(t["cover90"], weights=t["n"]),
                             "width90": t["width90"].median(), "interval_score": t["interval_score"].mean(),
                             "lpd": t["lpd"].mean()}), include_groups=False)
    print("\npooled over held-out points:\n" + pooled.to_string(float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
