"""Planning beyond the loss, on real runs: downstream accuracy, repeated data, over-training.

Three held-out checks on the bundled real tables (``bs.datasets``; licences in the package):

1. Downstream accuracy, OLMo 2 ladder: stage 1 fits the Chinchilla law to a task's bits per byte
   on runs up to 1.3B parameters; stage 2 (``bs.fit_downstream``) links bits per byte to 5-shot
   accuracy; both predict the six 3.2B runs. Reported per task: mean absolute error of the median
   accuracy and 90% coverage of a new run's accuracy, propagated (stage-1 draws carried through the
   link), plug-in (stage-1 median only), and the direct form (error = E + A·C^-alpha fitted to the
   runs' errors against compute, ``law="offset_power"``).
2. Data-constrained law, datablations final losses (204 runs, 1-9000 epochs; and the 187 with at
   most 100 epochs): posteriors of R_D* and R_N*, next to the published fit (15.4, 5.3); then fit runs
   below 2B parameters and score the held-out largest sizes (2.2B, 2.8B, 3.9B), against the
   Chinchilla law on tokens seen.
3. Over-training, Gadre et al. runs (three training mixes): fit runs up to 154M, predict the 412M runs
   across tokens-per-parameter ratios, with the Chinchilla law and the over-training law.

Scores (``bs.validation.scores``, on a new run's predictive draws): coverage, median relative width
of the 90% band, interval score, and the largest relative error of the median.

Run: ``python benchmarks/planning.py``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import bayescale as bs

TASKS = {"hellaswag_val": 0.25, "arc_easy_test": 0.25, "piqa_val": 0.5}
"""OLMo ladder tasks and their chance accuracy."""


def downstream() -> pd.DataFrame:
    frame = bs.datasets.load_frame("olmo_ladder")
    train, test = frame[frame["N"] < 2e9].reset_index(drop=True), frame[frame["N"] >= 2e9]
    rows = []
    for task, chance in TASKS.items():
        runs = bs.ScalingData.from_table(train, params="N", tokens="D_tokens", loss=f"{task}_rc5_bpb")
        result = bs.fit_downstream(bs.fit(runs, seed=0), train[f"{task}_rc5_acc"], chance=chance)
        truth = test[f"{task}_rc5_acc"].to_numpy()
        error = bs.ScalingData.from_arrays(loss=1 - train[f"{task}_rc5_acc"], C=train["C_6ND"])
        direct = bs.fit(error, law="offset_power", seed=0)  # the direct form: error = E + A·C^-alpha
        new = {"N": test["N"].to_numpy(dtype=float), "D": test["D_tokens"].to_numpy(dtype=float)}
        for mode, plugin in (("propagated", False), ("plug-in", True), ("direct", None)):
            draws = (1 - direct.predict_draws(C=6 * new["N"] * new["D"], noise=True, seed=1) if plugin is None
                     else result.predict_draws(**new, noise=True, plugin=plugin, seed=1))
            lo, med, hi = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
            rows.append({"task": task, "mode": mode, "held_out": truth.size,
                         "abs_error": float(np.mean(np.abs(med - truth))),
                         "cover90": float(np.mean((lo <= truth) & (truth <= hi))),
                         "width90": float(np.median(hi - lo)), "converged": result.diagnostics.ok})
    return pd.DataFrame(rows)


def data_constrained() -> tuple[pd.DataFrame, pd.DataFrame]:
    """All 204 runs, and the 146 with at most 100 epochs: beyond, several runs diverged (losses of 7.7-11 nats,
    near a uniform guess over the vocabulary) or overfit, a rise the law does not model."""
    everything = bs.datasets.load("datablations_final")
    variants = {"all runs": everything,
                "<= 100 epochs": everything.subset(everything.D / everything.U <= 100)}
    published = {"R_D": 15.4, "R_N": 5.3}
    posteriors, rows = {}, []
    for variant, data in variants.items():
        full = bs.fit(data, law="data_constrained", seed=0)
        table = full.summary().loc[["R_D", "R_N", "alpha", "beta", "E", "sigma"], ["median", "5%", "95%", "r_hat"]]
        table["published"] = [published.get(p, np.nan) for p in table.index]
        posteriors[f"{variant} ({data.n})"] = table
        held = data.N > 2e9
        test = data.subset(held)
        for law in ("data_constrained", "chinchilla"):
            fit = bs.fit(data.subset(~held), law=law, seed=0)
            covariates = {"U": test.U} if law == "data_constrained" else {}
            draws = np.log(fit.predict_draws(N=test.N, D=test.D, noise=True, seed=1, **covariates))
            rows.append({"runs": variant, "law": law, "train": int((~held).sum()),
                         **bs.validation.scores(draws, np.log(test.loss)), "converged": fit.diagnostics.ok})
    return pd.concat(posteriors), pd.DataFrame(rows)


def overtrain() -> pd.DataFrame:
    frame = bs.datasets.load_frame("overtrain")
    rows = []
    for mix, part in frame.groupby("dataset"):
        data = bs.ScalingData.from_table(part.reset_index(drop=True), params="N_params", tokens="D_tokens",
                                         loss="loss_c4_val")
        held = data.N > 3e8
        test = data.subset(held)
        for law in ("chinchilla", "overtrain"):
            fit = bs.fit(data.subset(~held), law=law, seed=0)
            draws = np.log(fit.predict_draws(N=test.N, D=test.D, noise=True, seed=1))
            rows.append({"mix": mix, "law": law, "ratios": f"{(test.D / test.N).min():.0f}-{(test.D / test.N).max():.0f}",
                         **bs.validation.scores(draws, np.log(test.loss)), "converged": fit.diagnostics.ok})
    return pd.DataFrame(rows)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    fmt = {"index": False, "float_format": lambda v: f"{v:.3g}"}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.DataWarning)
        print("1. downstream accuracy, OLMo ladder (fit <= 1.3B, predict 3.2B)\n" + downstream().to_string(**fmt))
        posterior, held_out = data_constrained()
        print("\n2. data-constrained law, datablations\n"
              + posterior.to_string(float_format=lambda v: f"{v:.3g}"))
        print("\n   fit N < 2B, hold out 2.2B-3.9B\n" + held_out.to_string(**fmt))
        print("\n3. over-training (fit <= 154M, predict 412M)\n" + overtrain().to_string(**fmt))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
