"""The command line and the bundled datasets."""

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale import cli


def test_datasets_load_and_match_recipes() -> None:
    assert set(bs.datasets.list()["name"]) == {"palm2", "chinchilla_synthetic", "kaplan_synthetic"}
    palm = bs.datasets.load("palm2")
    assert palm.n == 12 and sorted(set(palm.group.astype(float))) == [1e20, 1e21, 1e22]
    np.testing.assert_allclose(6 * palm.N * palm.D, palm.C, rtol=0.1)
    for name in ("chinchilla_synthetic", "kaplan_synthetic"):
        shipped = bs.datasets.load_frame(name)
        np.testing.assert_allclose(shipped.to_numpy(), bs.datasets.make(name).to_numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown dataset 'palm3'"):
        bs.datasets.load("palm3")


def test_cli_fit_writes_outputs(tmp_path, capsys) -> None:  # noqa: ANN001
    csv = tmp_path / "runs.csv"
    bs.datasets.load_frame("chinchilla_synthetic").rename(columns={"N": "params"}).to_csv(csv, index=False)
    out = tmp_path / "out"
    code = cli.main(["fit", str(csv), "--params-col", "params", "--tokens-col", "D", "--out", str(out),
                     "--samples", "300", "--warmup", "300", "--quiet", "--compute", "1e22"])
    assert code == 0
    assert (out / "fit.nc").exists() and (out / "summary.csv").exists() and (out / "plan.csv").exists()
    assert bs.load(out / "fit.nc").summary().index.tolist()[:5] == ["E", "alpha", "beta", "A", "B"]
    assert "compute-optimal allocation" in capsys.readouterr().out


def test_cli_bad_input_one_line_and_exit_2(tmp_path, capsys) -> None:  # noqa: ANN001
    csv = tmp_path / "bad.csv"
    pd.DataFrame({"N": [1e8, -2e8], "D": [1e9, 2e9], "loss": [3.0, 2.9]}).to_csv(csv, index=False)
    assert cli.main(["fit", str(csv), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bayescale: error:") and "'N'" in err and "rows 1" in err and "\n" not in err
    assert cli.main(["fit", str(tmp_path / "missing.csv")]) == 2
    with pytest.raises(SystemExit):
        cli.main(["fit", str(csv), "--law", "nonsense"])
