"""ScalingData: loading, derived columns and validation errors."""

import dataclasses
import os
import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayescale as bs
from bayescale.data import DataError, DataWarning, fill_covariates
from bayescale.model import bucket_size, check_data, make_spec, model_data, potential_fn


def table(**overrides: object) -> pd.DataFrame:
    base = {"N": [1e8, 2e8, 4e8, 8e8], "D": [2e9, 4e9, 8e9, 1.6e10], "loss": [3.2, 3.0, 2.8, 2.7]}
    base.update(overrides)
    return pd.DataFrame(base)


def test_loads_and_derives_compute() -> None:
    data = bs.ScalingData.from_table(table())
    np.testing.assert_allclose(data.C, 6 * data.N * data.D)
    assert data.n == 4 and data.available() == ("N", "D", "C")


def test_derives_tokens_from_compute_and_params() -> None:
    frame = table()
    frame["C"] = 6 * frame["N"] * frame["D"]
    data = bs.ScalingData.from_table(frame.drop(columns="D"))
    np.testing.assert_allclose(data.D, frame["D"])


def test_flops_per_token_column_gives_c_equals_m_d() -> None:
    frame = table(M=[5e8, 1e9, 2e9, 4e9]).drop(columns="D")
    frame["C"] = frame["M"] * np.array([2e9, 4e9, 8e9, 1.6e10])
    data = bs.ScalingData.from_table(frame, flops_per_token="M")
    np.testing.assert_allclose(data.D, [2e9, 4e9, 8e9, 1.6e10])


def test_custom_column_names_and_csv(tmp_path) -> None:  # noqa: ANN001
    frame = table().rename(columns={"N": "params_total", "D": "tok", "loss": "val_loss"})
    path = tmp_path / "runs.csv"
    frame.to_csv(path, index=False)
    data = bs.ScalingData.from_table(path, params="params_total", tokens="tok", loss="val_loss", counts_embeddings=True)
    assert data.source == str(path) and data.target == "val_loss" and data.counts_embeddings is True


def test_group_column_splits() -> None:
    data = bs.ScalingData.from_table(table(arch=["a", "b", "a", "b"]), group="arch")
    parts = data.groups()
    assert list(parts) == ["a", "b"] and parts["a"].n == 2
    np.testing.assert_allclose(parts["b"].N, [2e8, 8e8])


@pytest.mark.parametrize(
    "frame, match",
    [
        (table().iloc[:0], "no rows"),
        (table(loss=[3.2, np.nan, 2.8, 2.7]), r"'loss'.*NaN.*rows 1"),
        (table(N=[1e8, np.inf, 4e8, 8e8]), r"'N'.*infinite.*rows 1"),
        (table(D=[2e9, 4e9, 0.0, 1.6e10]), r"'D'.*must be > 0.*rows 2"),
        (table(loss=[3.2, 3.0, -2.8, 2.7]), r"'loss'.*must be > 0.*rows 2"),
        (table(N=["1e8", "big", 4e8, 8e8]), r"'N'.*non-numeric.*rows 1.*'big'"),
        (table(loss=[True, False, True, True]), r"'loss'.*booleans"),
    ],
)
def test_bad_values_name_column_and_row(frame: pd.DataFrame, match: str) -> None:
    with pytest.raises(DataError, match=match):
        bs.ScalingData.from_table(frame)


def test_missing_and_duplicated_columns() -> None:
    with pytest.raises(DataError, match=r"column 'tokens_seen' \(for D\) not found"):
        bs.ScalingData.from_table(table(), tokens="tokens_seen")
    with pytest.raises(DataError, match="'loss'.*not found"):
        bs.ScalingData.from_table(table().drop(columns="loss"))
    dup = pd.concat([table(), table()[["N"]]], axis=1)
    with pytest.raises(DataError, match="duplicated column names: \\['N'\\]"):
        bs.ScalingData.from_table(dup)
    with pytest.raises(DataError, match="no such file"):
        bs.ScalingData.from_table("/nonexistent/runs.csv")


def test_inconsistent_compute_warns_and_keeps_given_c() -> None:
    frame = table()
    frame["C"] = 6 * frame["N"] * frame["D"]
    frame.loc[3, "C"] *= 3
    with pytest.warns(DataWarning, match=r"rows 3"):
        data = bs.ScalingData.from_table(frame)
    assert data.C[3] == frame.loc[3, "C"]


def test_law_needing_absent_covariate_raises() -> None:
    data = bs.ScalingData.from_table(table().drop(columns="D"))
    with pytest.raises(DataError, match="needs covariate 'D'"):
        bs.fit(data, law="chinchilla", num_warmup=150, num_samples=150, num_chains=2)


def test_too_few_rows_for_law() -> None:
    with pytest.raises(DataError, match="4 runs are too few.*6 parameters"):
        bs.fit(table(), law="chinchilla", num_warmup=150, num_samples=150, num_chains=2)


def test_fill_covariates_round_trip() -> None:
    n, d = np.array([1e9]), np.array([2e10])
    _, _, c = fill_covariates(n, d, None)
    n2, _, _ = fill_covariates(None, d, c)
    np.testing.assert_allclose(n2, n)


BAD_CELLS = {
    "NaN": (np.nan, "missing values"),
    "inf": (np.inf, "infinite"),
    "zero": (0.0, "must be > 0"),
    "negative": (-3.0, "must be > 0"),
    "string": ("n/a", "non-numeric"),
    "boolean": (True, "booleans"),
}


@st.composite
def valid_tables(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 30))
    positive = st.floats(1e-6, 1e30, allow_nan=False, allow_infinity=False)
    columns = {c: draw(st.lists(positive, min_size=n, max_size=n)) for c in ("N", "D", "loss")}
    index = draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n, unique=True))
    return pd.DataFrame(columns, index=index)


@pytest.mark.filterwarnings("ignore::bayescale.DataWarning")  # random tables repeat runs and use small units
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_tables())
def test_valid_tables_load_unchanged(frame: pd.DataFrame) -> None:
    data = bs.ScalingData.from_table(frame)
    np.testing.assert_array_equal(data.loss, frame["loss"].to_numpy())
    np.testing.assert_array_equal(data.N, frame["N"].to_numpy())
    np.testing.assert_allclose(data.C, 6 * frame["N"].to_numpy() * frame["D"].to_numpy(), rtol=1e-12)
    assert np.all(np.isfinite(data.C))
    assert list(data.index) == list(frame.index)


@pytest.mark.filterwarnings("ignore::bayescale.DataWarning")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_tables(), st.sampled_from(["N", "D", "loss"]), st.sampled_from(sorted(BAD_CELLS)), st.data())
def test_one_bad_cell_names_column_and_row(frame: pd.DataFrame, column: str, kind: str, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(list(frame.index)))
    value, message = BAD_CELLS[kind]
    frame = frame.astype(object)
    frame.loc[row, column] = value
    with pytest.raises(DataError) as err:
        bs.ScalingData.from_table(frame)
    text = str(err.value)
    assert f"'{column}'" in text and message in text
    if kind != "boolean":  # a boolean anywhere makes the whole column suspect
        assert f"rows {row!r}" in text or f"rows {row}" in text


ANY_CELL = st.one_of(
    st.floats(1e-3, 1e25),
    st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, "n/a", None, True, "1e9"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(8, 20).flatmap(lambda n: st.fixed_dictionaries(
    {c: st.lists(ANY_CELL, min_size=n, max_size=n) for c in ("N", "D", "loss")})))
def test_any_table_fits_or_raises_data_error_naming_a_column(columns: dict) -> None:
    """Whatever the cells, a table either gives a finite posterior density or a DataError naming its column."""
    frame = pd.DataFrame(columns)
    spec = make_spec(bs.laws.get_law("chinchilla"), bs.likelihoods.student_t())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            data = bs.ScalingData.from_table(frame)
            check_data(data, spec)
    except DataError as err:
        assert any(f"'{c}'" in str(err) for c in columns), str(err)
        return
    assert data.n == len(frame)  # nothing dropped
    with jax.enable_x64(True):  # as a fit evaluates it: compiled, the table padded to its shape bucket
        md = model_data(data, spec.law, size=bucket_size(data.n))
        density = jax.jit(potential_fn(spec))(np.zeros(len(spec.latents) + 1), md)
    assert np.isfinite(float(density))


def test_unit_mistakes_are_warned_with_their_fix() -> None:
    base = table()
    cases = {
        "billions": (base.assign(N=base["N"] / 1e9), r"'N'.*millions or billions of parameters.*multiply"),
        "tokens in millions": (base.assign(D=base["D"] / 1e6), r"'D'.*millions or billions of tokens"),
        "PF-days": (base.assign(C=6 * base["N"] * base["D"] / 8.64e19), r"'C'.*PF-days: multiply it by 8.64e\+19"),
        "PF-days alone": (base.drop(columns="D").assign(C=6 * base["N"] * base["D"] / 8.64e19), r"'C'.*PF-days"),
        "log10 FLOPs": (base.drop(columns="D").assign(C=np.log10(6 * base["N"] * base["D"])), r"'C'.*log10 FLOPs"),
        "swapped": (base.rename(columns={"N": "D", "D": "N"}), r"fewer than parameters.*swapped"),
    }
    for name, (frame, message) in cases.items():
        with pytest.warns(DataWarning, match=message):
            bs.ScalingData.from_table(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        bs.ScalingData.from_table(base.assign(C=6 * base["N"] * base["D"]))  # right units: no warning


def test_loss_units_and_constant_covariates_are_warned_by_the_law() -> None:
    spec = make_spec(bs.laws.get_law("chinchilla"), bs.likelihoods.student_t())
    N, D = bs.chinchilla_design(12, seed=0)
    runs = bs.simulate("chinchilla", {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}, N=N, D=D, seed=0)
    with pytest.warns(DataWarning, match="'loss' reaches .* percentage"):
        check_data(dataclasses.replace(runs, loss=runs.loss * 100), spec)
    with pytest.warns(DataWarning, match="covariate D is the same .* every run"):
        check_data(dataclasses.replace(runs, D=np.full(runs.n, 1e10)), spec)


def test_duplicated_runs_warned_kept_or_dropped() -> None:
    frame = pd.concat([table(), table().iloc[[1, 3]]], ignore_index=True)
    with pytest.warns(DataWarning, match=r"rows 4, 5 repeat earlier runs.*duplicates='drop'"):
        assert bs.ScalingData.from_table(frame).n == 6
    with pytest.warns(DataWarning, match=r"dropped 2 duplicated runs at rows 4, 5"):
        assert bs.ScalingData.from_table(frame, duplicates="drop").n == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert bs.ScalingData.from_table(frame, duplicates="keep").n == 6
    with pytest.raises(DataError, match="duplicates must be"):
        bs.ScalingData.from_table(frame, duplicates="maybe")


def test_csv_group_labels_are_the_strings_in_the_file(tmp_path) -> None:  # noqa: ANN001
    """Labels 01 and 1, or 1 and 1.0, were merged by pandas' type guessing; NA was read as missing."""
    csv = tmp_path / "runs.csv"
    csv.write_text("N,D,loss,arch\n1e8,2e9,3.1,01\n2e8,4e9,3.0,1\n3e8,6e9,2.9,1.0\n4e8,8e9,2.8,NA\n5e8,1e10,2.7,\n")
    frame = bs.data.read_csv(csv, group="arch")
    assert frame["arch"].tolist()[:4] == ["01", "1", "1.0", "NA"] and frame["arch"].isna().tolist()[4]
    with pytest.raises(bs.DataError, match=r"'arch'.*missing labels at rows 4"):
        bs.ScalingData.from_table(csv, group="arch")
    csv.write_text("N,D,loss,arch\n1e8,2e9,3.1,01\n2e8,4e9,NA,1\n")
    with pytest.raises(bs.DataError, match=r"'loss'.*NaN.*rows 1"):  # NA in a number column is still missing
        bs.ScalingData.from_table(csv, group="arch")


def test_csv_with_a_column_name_twice_is_refused(tmp_path) -> None:  # noqa: ANN001
    csv = tmp_path / "runs.csv"
    csv.write_text("N,D,loss,loss\n1e8,2e9,3.1,9.9\n2e8,4e9,3.0,9.9\n")
    with pytest.raises(bs.DataError, match=r"runs.csv.*more than once.*\['loss'\]"):
        bs.ScalingData.from_table(csv)


def test_labels_equal_across_types_are_refused() -> None:
    frame = pd.DataFrame({"N": [1e8, 2e8, 3e8], "D": [2e9, 4e9, 6e9], "loss": [3.1, 3.0, 2.9],
                          "arch": pd.Series([True, 1, "x"], dtype=object)})
    with pytest.raises(bs.DataError, match=r"'arch'.*True \(bool\) and 1 \(int\).*merge"):
        bs.ScalingData.from_table(frame, group="arch")
    with pytest.raises(bs.DataError, match="merge"):
        bs.fit_batch(frame, group="arch")
    frame["arch"] = pd.Series([1, "1", "x"], dtype=object)  # two types that do not compare equal: two groups
    assert [len(g.loss) for g in bs.ScalingData.from_table(frame, group="arch").groups().values()] == [1, 1, 1]


def test_derived_compute_that_overflows_is_refused_naming_the_column() -> None:
    frame = pd.DataFrame({"N": [1e308, 2e8, 3e8], "D": [2e9, 4e9, 6e9], "loss": [3.1, 3.0, 2.9]})
    with pytest.raises(bs.DataError, match=r"'C \(derived as 6·N·D\)'.*infinite.*rows 0"):
        bs.ScalingData.from_table(frame)
    with pytest.raises(bs.DataError, match=r"'D \(derived as C/\(6·N\)\)'.*> 0.*rows 0"):
        bs.ScalingData.from_table(pd.DataFrame({"N": [1e300, 2e8], "C": [1e-300, 4e18], "loss": [3.1, 3.0]}))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["1", "01", "1.0", "NA", "nan", "None", "True", "true", "a b", "-0", " x", "é"]),
                min_size=1, max_size=12))
def test_any_csv_labels_are_kept_as_the_groups_a_person_sees(labels: list) -> None:
    """Through read_csv (what the CLI reads) and split_groups (what fit_batch splits by), every distinct
    string in the group column is its own group with exactly its rows."""
    import csv as csv_module
    import io
    import tempfile

    from bayescale.batch import split_groups

    n = len(labels)
    frame = pd.DataFrame({"N": np.geomspace(1e8, 1e9, n), "D": np.geomspace(2e9, 2e10, n),
                          "loss": np.linspace(3.0, 2.5, n), "arch": labels})
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "runs.csv")
        frame.to_csv(path, index=False)
        with open(path, newline="") as handle:
            seen = [row["arch"] for row in csv_module.DictReader(io.StringIO(handle.read()))]
        read = bs.data.read_csv(path, group="arch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.DataWarning)
        groups, failures, order = split_groups(read, "arch", {})
    assert order == list(dict.fromkeys(seen))
    for label in order:
        rows = [i for i, s in enumerate(seen) if s == label]
        size = groups[label].n if label in groups else len(rows)
        assert size == len(rows), (label, failures)
