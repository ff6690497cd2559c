"""The command line: outputs, plans, reports, batches, exit codes."""

import json

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale import cli
from conftest import CHINCHILLA, TINY

SIZE = ["--samples", str(TINY.num_samples), "--warmup", str(TINY.num_warmup), "--chains", str(TINY.num_chains)]
"""The suite's behaviour size (tests/conftest.py) as CLI flags."""


def test_cli_fit_writes_outputs(tmp_path, capsys) -> None:  # noqa: ANN001
    """The planning mode is the default: the saved fit carries the structural error, the plan and report say so,
    and the plan speaks a planner's units."""
    csv = tmp_path / "runs.csv"
    bs.datasets.load_frame("chinchilla_synthetic").rename(columns={"N": "params"}).to_csv(csv, index=False)
    out = tmp_path / "out"
    code = cli.main(["fit", str(csv), "--params-col", "params", "--tokens-col", "D", "--out", str(out),
                     *SIZE, "--quiet", "--compute", "1e22"])
    assert code == 0
    assert (out / "fit.nc").exists() and (out / "summary.csv").exists() and (out / "plan.csv").exists()
    saved = bs.load(out / "fit.nc")
    assert saved.summary().index.tolist()[:5] == ["E", "alpha", "beta", "A", "B"] and saved.misfit is not None
    printed = capsys.readouterr().out
    assert "compute-optimal allocation" in printed and "planning mode: structural error" in printed
    plan = printed.split("compute-optimal")[1]
    assert "1e22" in plan and "e+" not in plan and any(cell.endswith("B") for cell in plan.split())  # 4.84B
    markdown = (out / "report.md").read_text()
    assert "Compute-optimal allocation (planning mode: structural error beyond the data)" in markdown
    assert "Bands: planning mode" in markdown


def test_cli_bad_input_one_line_and_exit_2(tmp_path, capsys) -> None:  # noqa: ANN001
    csv = tmp_path / "bad.csv"
    pd.DataFrame({"N": [1e8, -2e8], "D": [1e9, 2e9], "loss": [3.0, 2.9]}).to_csv(csv, index=False)
    assert cli.main(["fit", str(csv), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bayescale: error:") and "'N'" in err and "rows 1" in err and "\n" not in err
    assert cli.main(["fit", str(tmp_path / "missing.csv")]) == 2
    with pytest.raises(SystemExit):
        cli.main(["fit", str(csv), "--law", "nonsense"])


def test_cli_plan_and_report_from_saved_fit(chinchilla_fit: bs.FitResult, tmp_path, capsys) -> None:  # noqa: ANN001
    chinchilla_fit.save(tmp_path / "fit.nc")
    assert cli.main(["plan", str(tmp_path), "--compute", "1e22", "1e23"]) == 0
    plan = pd.read_csv(tmp_path / "plan.csv", header=[0, 1], index_col=0)
    expected = bs.compute_optimal(chinchilla_fit, [1e22, 1e23])
    np.testing.assert_allclose(plan[("N_opt", "median")], expected[("N_opt", "median")], rtol=1e-6)
    assert cli.main(["plan", str(tmp_path), "--target-loss", "2.0", "1.0"]) == 0
    reach = pd.read_csv(tmp_path / "compute_for_loss.csv", header=[0, 1], index_col=0)
    assert reach.iloc[:, 0].tolist() == [1.0, 0.0]  # 1.0 nats is below E: unreachable, not NaN
    assert cli.main(["report", str(tmp_path), "--compute", "1e22"]) == 0
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert cli.main(["plan", str(tmp_path / "nowhere")]) == 2
    assert "holds no bayescale results" in capsys.readouterr().err


def test_cli_batch_reports_bad_group_and_strict(tmp_path, capsys) -> None:  # noqa: ANN001
    """Labels are the strings in the file: "01" and "1" were one group of 60 runs, and "NA" was missing."""
    frames = []
    for i, (alpha, label) in enumerate([(0.3, "01"), (0.36, "1")]):
        N, D = bs.chinchilla_design(30, seed=i)
        frame = bs.simulate("chinchilla", {**CHINCHILLA, "alpha": alpha}, N=N, D=D, seed=i).to_frame()
        frames.append(frame.assign(arch=label))
    broken = frames[1].assign(arch="NA")
    broken.loc[broken.index[3], "loss"] = np.nan
    csv = tmp_path / "runs.csv"
    pd.concat([frames[0], broken, frames[1]], ignore_index=True).to_csv(csv, index=False)
    args = ["batch", str(csv), "--group-col", "arch", *SIZE, "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    diag = pd.read_csv(tmp_path / "b" / "diagnostics.csv", index_col=0, dtype={"group": str}, keep_default_na=False)
    assert diag.index.tolist() == ["01", "NA", "1"]
    assert diag.loc["NA", "status"] == "failed" and "row" in diag.loc["NA", "reason"]
    assert set(diag.loc[["01", "1"], "status"]) <= {"ok", "warning"}
    assert [bs.load_batch(tmp_path / "b")[g].data.n for g in ("01", "1")] == [30, 30]
    assert cli.main(["plan", str(tmp_path / "b"), "--compute", "1e22"]) == 0
    # resumed from the saved groups, and --strict turns the failed group into exit status 1
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--strict"]) == 1
    capsys.readouterr()


def test_cli_rejects_bad_arguments(capsys) -> None:  # noqa: ANN001
    for argv in (["fit", "x.csv", "--samples", "0"], ["plan"], ["batch", "x.csv"], ["demo", "--chains", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_cli_flags_unconverged_fit(small_groups: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    csv = tmp_path / "runs.csv"
    small_groups["g0"].to_frame().to_csv(csv, index=False)  # ten runs, five law parameters: chains do not mix
    args = ["fit", str(csv), *SIZE, "--quiet", "--compute", "1e22",
            "--no-structural-error"]
    with pytest.warns(bs.ConvergenceWarning):
        assert cli.main([*args, "--out", str(tmp_path / "a"), "--strict"]) == 1
    assert "-> WARNING: R-hat" in capsys.readouterr().out
    assert "DIAGNOSTICS FAILED" in (tmp_path / "a" / "report.html").read_text()
    # --no-structural-error: the bands that assume the law holds, and the report says so
    assert bs.load(tmp_path / "a" / "fit.nc").misfit is None
    assert "law assumed to hold beyond the data" in (tmp_path / "a" / "report.md").read_text()


def test_cli_error_paths_name_the_file_and_exit_2(chinchilla_fit: bs.FitResult, tmp_path, capsys) -> None:  # noqa: ANN001
    import xarray as xr

    folder = tmp_path / "foreign"
    folder.mkdir()
    xr.Dataset({"x": ("i", np.arange(3.0))}).to_netcdf(folder / "fit.nc", engine="h5netcdf")  # no posterior
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    chinchilla_fit.save(damaged / "fit.nc")
    (damaged / "fit.nc").write_bytes((damaged / "fit.nc").read_bytes()[:2000])
    for path, message in ((folder, "without a bayescale posterior"), (damaged, "unreadable, damaged")):
        for command in (["plan", str(path)], ["report", str(path)]):
            capsys.readouterr()
            assert cli.main(command) == 2, command
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and str(path / "fit.nc") in err and message in err, err


def test_cli_report_of_a_table_in_pf_days_is_complete(tmp_path, capsys) -> None:  # noqa: ANN001
    """Compute given in PF-days: warned with the fix, and the fit still gets its whole report."""
    frame = bs.datasets.load_frame("chinchilla_synthetic")
    frame = frame.assign(C=6 * frame["N"] * frame["D"] / 8.64e19).drop(columns="D")
    csv = tmp_path / "pf_days [draft] *v1*.csv"
    frame[["N", "C", "loss"]].to_csv(csv, index=False)
    out = tmp_path / "out"
    with pytest.warns(bs.DataWarning, match="PF-days"):
        code = cli.main(["fit", str(csv), *SIZE, "--quiet",
                         "--out", str(out), "--no-structural-error"])
    assert code == 0
    assert {"report.html", "report.md", "report.json", "fit.nc", "summary.csv"} <= {p.name for p in out.iterdir()}
    markdown = (out / "report.md").read_text()
    assert "pf\\_days \\[draft\\] \\*v1\\*.csv" in markdown and "[draft]" not in markdown  # user strings escaped
    assert "pf_days [draft] *v1*.csv" in bs.load(out / "fit.nc").data.source


def test_cli_design_prints_and_writes_the_next_runs(chinchilla_fit: bs.FitResult, tmp_path, capsys) -> None:  # noqa: ANN001
    chinchilla_fit.save(tmp_path / "fit.nc")
    assert cli.main(["design", str(tmp_path), "--target-compute", "1e24", "--budget", "1e21", "-k", "2",
                     "--forecast", "importance"]) == 0
    out = capsys.readouterr().out
    assert "N_opt at 1e+24 FLOPs" in out and "runs to do next" in out
    assert "best iso-FLOP grid of the budget: expected width" in out and "forecast by importance" in out
    chosen = pd.read_csv(tmp_path / "design.csv")
    assert 1 <= len(chosen) <= 2 and chosen["cumulative_cost"].iloc[-1] <= 1e21
    assert chosen["budget_share"].iloc[-1] == pytest.approx(chosen["cumulative_cost"].iloc[-1] / 1e21)
    sets = pd.read_csv(tmp_path / "design_sets.csv")
    assert sets["chosen"].sum() == 1 and (sets["cost"] <= 1e21).all()
    assert cli.main(["design", str(tmp_path), "--target-compute", "1e24", "--candidates", str(tmp_path / "no.csv")]) == 2


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")  # 2 x 150 draws: tiny on purpose
def test_cli_fit_stacks_several_laws(tmp_path, capsys) -> None:  # noqa: ANN001
    """Several laws: each is fitted, they are stacked by their leave-future-out record, the report says so."""
    csv = tmp_path / "runs.csv"
    N, D = bs.chinchilla_design(40, seed=5)
    bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, noise=0.01, seed=5).to_frame().to_csv(csv, index=False)
    out = tmp_path / "out"
    args = ["fit", str(csv), "--law", "chinchilla", "overtrain", *SIZE, "--quiet",
            "--compute", "1e22", "--out", str(out)]
    assert cli.main(args) == 0
    stacked = bs.load(out / "fit.nc")
    assert isinstance(stacked, bs.StackedResult) and stacked.method == "future" and set(stacked.names) == {
        "chinchilla", "overtrain"}
    assert (out / "plan.csv").exists() and "Leave-future-out record" in (out / "report.md").read_text()
    capsys.readouterr()
    assert cli.main([*args, "--backtest"]) == 2
    assert "one law" in capsys.readouterr().err


def test_cli_batch_stacks_several_laws(tmp_path, capsys) -> None:  # noqa: ANN001
    frames = []
    for i in range(2):
        N, D = bs.chinchilla_design(30, seed=i)
        frames.append(bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, seed=i).to_frame().assign(arch=f"a{i}"))
    csv = tmp_path / "runs.csv"
    pd.concat(frames, ignore_index=True).to_csv(csv, index=False)
    out = tmp_path / "b"
    assert cli.main(["batch", str(csv), "--group-col", "arch", "--law", "chinchilla", "overtrain", *SIZE,
                     "--quiet", "--stack-method", "loo",
                     "--out", str(out)]) == 0
    weights = pd.read_csv(out / "weights.csv", index_col=0)
    assert weights.index.tolist() == ["a0", "a1"]
    np.testing.assert_allclose(weights[["chinchilla", "overtrain"]].sum(axis=1), 1.0)
    assert (out / "chinchilla" / "diagnostics.csv").exists() and (out / "overtrain" / "diagnostics.csv").exists()
    capsys.readouterr()


def test_cli_bad_tables_seeds_and_metadata_exit_2_with_one_line(chinchilla_fit: bs.FitResult, tmp_path, capsys) -> None:  # noqa: ANN001
    """Each of these gave a traceback (KeyError, OverflowError, AttributeError) or exit 0 on the wrong column."""
    import json

    empty = tmp_path / "empty.csv"
    empty.write_text("N,D,loss,arch\n")
    twice = tmp_path / "twice.csv"
    twice.write_text("N,D,loss,loss\n1e8,2e9,3.1,9.9\n2e8,4e9,3.0,9.9\n")
    huge = tmp_path / "huge.csv"
    pd.DataFrame({"N": [1e308, 2e8, 3e8], "D": [2e9, 4e9, 6e9], "loss": [3.1, 3.0, 2.9]}).to_csv(huge, index=False)
    good = tmp_path / "good.csv"
    chinchilla_fit.data.to_frame().to_csv(good, index=False)
    listed = tmp_path / "listed"
    listed.mkdir()
    idata = chinchilla_fit.idata.copy()
    idata.posterior.attrs["bayescale"] = json.dumps([1, 2])
    idata.to_netcdf(listed / "fit.nc", engine="h5netcdf")
    cases = {
        ("batch", str(empty), "--group-col", "arch", "--out", str(tmp_path / "e")): "no rows",
        ("fit", str(twice), "--out", str(tmp_path / "t")): "more than once",
        ("fit", str(huge), "--out", str(tmp_path / "h")): "'C (derived as 6·N·D)'",
        ("fit", str(good), "--seed", "99999999999999999999", "--out", str(tmp_path / "s")): "seed must be an integer",
        ("plan", str(listed), "--compute", "1e22"): "damaged bayescale metadata",
        ("design", str(listed), "--target-compute", "1e24", "--budget", "1e21"): "damaged bayescale metadata",
    }
    for argv, message in cases.items():
        capsys.readouterr()
        assert cli.main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert not (tmp_path / "h").exists() and not (tmp_path / "s").exists()  # nothing written before the refusal
    with pytest.raises(ValueError, match="seed"):
        bs.fit(chinchilla_fit.data, seed=2**64)


def test_cli_shows_no_dependency_notices(tmp_path) -> None:  # noqa: ANN001
    """ArviZ's notice about its refactor reached every new CLI user (once a day, on import)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONWARNINGS": "default"}
    run = subprocess.run([sys.executable, "-m", "bayescale.cli", "datasets"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0 and "chinchilla_synthetic" in run.stdout
    assert "Warning" not in run.stderr and "ArviZ" not in run.stderr, run.stderr


def test_cli_curves_fits_compares_schedules_and_names_bad_rows(tmp_path, capsys) -> None:  # noqa: ANN001
    """The simulated curves of three sizes of the curve tests, each run's schedule named in a column and its size
    in another: the fit across sizes (planning mode by default: with its structural errors) is saved and loads
    back, the compared schedules' table (runs of 400M), the
    envelope's table and the figure are written; the bands are said to widen beyond the steps and on new schedules
    (both scales in the report); a run that names two schedules exits 2 naming the run."""
    from conftest import size_curves

    points = size_curves(prefix=0.3).table
    csv = tmp_path / "points.csv"
    points.assign(schedule=points["run"].str.split().str[1], size=points["N"]).drop(columns="N").to_csv(csv, index=False)
    out = tmp_path / "out"
    args = ["curves", str(csv), "--law", "lr_annealing", "--params-col", "size", *SIZE, "--quiet", "--out", str(out)]
    assert cli.main([*args, "--predict", "constant_12000", "wsd_9600_12000", "--predict-N", "4e8",
                     "--envelope", "1e18", "3e18", "--tokens-per-step", "262144"]) == 0
    loaded = bs.load(out / "curves.nc")
    assert isinstance(loaded, bs.CurveResult) and sorted(loaded.curves.runs) == sorted(points["run"].unique())
    assert loaded.size_ref == pytest.approx(1e8)
    choice = pd.read_csv(out / "schedules.csv", index_col=0)
    assert choice.loc["wsd_9600_12000", "median"] < choice.loc["constant_12000", "median"]
    envelope = pd.read_csv(out / "envelope.csv", header=[0, 1], index_col=0)
    assert (np.diff(envelope[("N_opt", "median")].to_numpy()) > 0).all()  # a larger budget buys a larger model
    printed = capsys.readouterr().out
    assert "probability of the lowest" in printed and "envelope" in printed and "bands: planning mode" in printed
    assert (out / "figures" / "curves.png").stat().st_size > 0 and (out / "summary.csv").exists()
    meta = json.loads((out / "report.json").read_text())
    assert [row["compute"] for row in meta["envelope"]] == [1e18, 3e18] and meta["size_ref"] == pytest.approx(1e8)
    assert loaded.misfit is not None and meta["misfit_scale_median"] == pytest.approx(np.median(loaded.misfit))
    assert meta["schedule_misfit_scale_median"] == pytest.approx(np.median(loaded.schedule_misfit))
    assert "on a new schedule, from where it departs from the fitted ones" in printed
    assert {row["schedule"] for row in meta["schedules"]} == {"constant_12000", "wsd_9600_12000"}
    assert "read from the envelope of the curves" in (out / "report.html").read_text()
    assert cli.main([*args, "--envelope", "1e18"]) == 2
    assert "--envelope needs --tokens-per-step" in capsys.readouterr().err
    broken = points.assign(schedule=points["run"].str.split().str[1], size=points["N"])
    broken.loc[broken.index[0], "schedule"] = "cosine_24000"
    broken.to_csv(csv, index=False)
    assert cli.main(args) == 2
    assert f"run {points['run'].iloc[0]!r} names 2 schedules" in capsys.readouterr().err
