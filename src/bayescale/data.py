"""Training-run tables: loading, validation and derived columns.

A :class:`ScalingData` holds one validated table of training runs as float64
NumPy arrays. Units: ``N`` in parameters, ``D`` in tokens, ``C`` in FLOPs and
``loss`` in nats (or, for the ``power`` law, any positive target quantity).
Nothing is ever dropped silently: every problem raises :class:`DataError`
naming the column and the rows at fault.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "DataError",
    "DataWarning",
    "ScalingData",
    "Covariate",
    "COVARIATE_INFO",
    "COVARIATES",
    "fill_covariates",
    "check_positive",
    "check_labels",
    "read_csv",
    "as_data",
]


class Covariate(NamedTuple):
    """What bayescale knows about one covariate; every module reads covariates from :data:`COVARIATE_INFO`.

    Attributes:
        name: the :class:`ScalingData` field, the keyword of ``predict`` and the
            name a law lists in ``covariates``.
        option: the keyword of :meth:`ScalingData.from_table` naming its column.
        role: what it measures, in words (used in messages).
        unit: its unit, ``"parameters"``, ``"tokens"`` or ``"FLOPs"``.
        columns: column names :meth:`ScalingData.from_table` looks for when ``option`` is not given.
        smallest: below this largest value, the column is read as given in other units
            (no real study trains smaller).
    """

    name: str
    option: str
    role: str
    unit: str
    columns: tuple[str, ...]
    smallest: float


COVARIATE_INFO: tuple[Covariate, ...] = (
    Covariate("N", "params", "parameters", "parameters", ("N", "params"), 1e5),
    Covariate("D", "tokens", "tokens", "tokens", ("D", "tokens"), 1e6),
    Covariate("C", "compute", "FLOPs", "FLOPs", ("C", "compute", "flops"), 1e12),
    Covariate("N_total", "total_params", "total parameters", "parameters", ("N_total", "total_params"), 1e5),
    Covariate("U", "unique_tokens", "unique tokens", "tokens", ("U", "unique_tokens"), 1e6),
)
"""The covariates a law can use: parameters (active, for mixture-of-experts models), tokens,
FLOPs, total parameters of mixture-of-experts models, and unique tokens (the distinct data
that ``D`` repeats, for data-constrained laws)."""

COVARIATES = tuple(c.name for c in COVARIATE_INFO)
"""Names of the covariates, in the order of :data:`COVARIATE_INFO`."""

_COMPUTE_RTOL = 0.25
_NA_STRINGS = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", "#N/A", "-NaN", "-nan", "n/a", "<NA>"]
"""Cells read as missing in numeric columns of a CSV (pandas' defaults; never in the group column)."""
_MAX_ROWS_LISTED = 5
_PF_DAY = 8.64e19
"""FLOPs in one petaFLOP/s-day."""


class DataError(ValueError):
    """Raised when a table of runs cannot be used as given."""


class DataWarning(UserWarning):
    """Emitted for data that is valid but looks suspicious (e.g. C far from 6·N·D)."""


def _plain(value: Any) -> Any:
    """NumPy scalars as Python ones, so messages read ``-1.0``, not ``np.float64(-1.0)``."""
    return value.item() if isinstance(value, np.generic) else value


def _rows(labels: Sequence[Any]) -> str:
    shown = ", ".join(repr(_plain(x)) for x in list(labels)[:_MAX_ROWS_LISTED])
    more = len(labels) - _MAX_ROWS_LISTED
    return f"{shown}{f' and {more} more' if more > 0 else ''}"


def _numeric_column(frame: pd.DataFrame, column: str, role: str) -> np.ndarray:
    """Return ``frame[column]`` as float64, or raise naming the first bad rows."""
    series = frame[column]
    if pd.api.types.is_bool_dtype(series.dtype):
        raise DataError(f"column {column!r} ({role}) holds booleans; expected positive numbers")
    values = pd.to_numeric(series, errors="coerce")
    bad = series.index[values.isna() & series.notna()]
    if len(bad):
        raise DataError(
            f"column {column!r} ({role}) has non-numeric values at rows {_rows(bad)}"
            f" (first: {series.loc[bad[0]]!r})"
        )
    if any(isinstance(v, (bool, np.bool_)) for v in series):
        raise DataError(f"column {column!r} ({role}) holds booleans; expected positive numbers")
    return check_positive(values.to_numpy(dtype=float), series.index, column, role)


def check_positive(values: np.ndarray, index: Sequence[Any], column: str, role: str) -> np.ndarray:
    labels = np.asarray(index, dtype=object)
    nan = np.isnan(values)
    if nan.any():
        raise DataError(f"column {column!r} ({role}) is missing values (NaN) at rows {_rows(labels[nan])}")
    inf = np.isinf(values)
    if inf.any():
        raise DataError(f"column {column!r} ({role}) has infinite values at rows {_rows(labels[inf])}")
    nonpos = values <= 0
    if nonpos.any():
        raise DataError(
            f"column {column!r} ({role}) must be > 0; rows {_rows(labels[nonpos])}"
            f" hold {_plain(values[nonpos][0])!r}"
        )
    return values


def fill_covariates(
    N: np.ndarray | None, D: np.ndarray | None, C: np.ndarray | None, flops_per_token: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Derive missing covariates from the compute rule ``C = 6·N·D`` (or ``C = M·D``).

    Args:
        N: parameters, or ``None``.
        D: tokens, or ``None``.
        C: FLOPs, or ``None``.
        flops_per_token: FLOPs per token M, or ``None`` for ``6·N``.

    Returns:
        ``(N, D, C)`` with whatever can be derived filled in (missing D as
        ``C/(6N)`` or ``C/M``, missing C as ``6·N·D`` or ``M·D``, missing N as
        ``C/(6D)`` when no M is given); the rest stays ``None``.
    """
    with np.errstate(over="ignore", under="ignore"):  # out-of-range results are refused by the callers, named
        per_token = flops_per_token if flops_per_token is not None else (None if N is None else 6.0 * N)
        if D is None and C is not None and per_token is not None:
            D = C / per_token
        if C is None and D is not None and per_token is not None:
            C = per_token * D
        if N is None and flops_per_token is None and C is not None and D is not None:
            N = C / (6.0 * D)
    return N, D, C


@dataclasses.dataclass(frozen=True, eq=False)
class ScalingData:
    """A validated table of training runs.

    Build it with :meth:`from_table` (DataFrame or CSV path) or
    :meth:`from_arrays`; the constructor itself does no validation.

    Attributes:
        loss: final loss of each run, shape ``(n,)``, nats (any positive target
            for the ``power`` law).
        N: parameters per model, shape ``(n,)``, or ``None``; for a
            mixture-of-experts model the active parameters per token.
        D: training tokens, shape ``(n,)``, or ``None``.
        C: training compute in FLOPs, shape ``(n,)``, or ``None``.
        group: group label per run (e.g. architecture), shape ``(n,)``, or ``None``.
        N_total: total parameters of mixture-of-experts models (equal to N for
            dense ones), shape ``(n,)``, or ``None``.
        U: unique tokens: the distinct data a run saw, repeated ``D/U`` times
            (epochs), shape ``(n,)``, or ``None``.
        flops_per_token: FLOPs per token ``M`` per run when compute is ``C = M·D``
            (DeepSeek's non-embedding FLOPs/token), or ``None`` for ``C = 6·N·D``.
        counts_embeddings: whether ``N`` includes embedding parameters (``None``:
            not stated).
        index: the row labels of the source table, for error messages.
        target: name of the modelled quantity (the source column name).
        source: where the table came from.
    """

    loss: np.ndarray
    N: np.ndarray | None = None
    D: np.ndarray | None = None
    C: np.ndarray | None = None
    group: np.ndarray | None = None
    N_total: np.ndarray | None = None
    U: np.ndarray | None = None
    flops_per_token: np.ndarray | None = None
    counts_embeddings: bool | None = None
    index: np.ndarray | None = None
    target: str = "loss"
    source: str = "arrays"

    @property
    def n(self) -> int:
        """Number of runs."""
        return int(self.loss.shape[0])

    def covariate(self, name: str) -> np.ndarray:
        """Return covariate ``name`` (one of :data:`COVARIATES`) or raise if absent."""
        if name not in COVARIATES:
            raise DataError(f"unknown covariate {name!r}; expected one of {COVARIATES}")
        value = getattr(self, name)
        if value is None:
            raise DataError(
                f"this law needs covariate {name!r} but the table gives none and it cannot be"
                f" derived (give two of N, D, C, or C and flops_per_token)"
            )
        return value

    def available(self) -> tuple[str, ...]:
        """Covariates present (given or derived)."""
        return tuple(c for c in COVARIATES if getattr(self, c) is not None)

    def to_frame(self) -> pd.DataFrame:
        """The runs as a DataFrame with columns N, D, C, loss (and group, M when set)."""
        columns: dict[str, Any] = {c: getattr(self, c) for c in self.available()}
        columns[self.target] = self.loss
        if self.group is not None:
            columns["group"] = self.group
        if self.flops_per_token is not None:
            columns["M"] = self.flops_per_token
        return pd.DataFrame(columns, index=self.index)

    def subset(self, mask: np.ndarray) -> ScalingData:
        """Rows where boolean ``mask`` is true, keeping all metadata."""
        pick = lambda a: None if a is None else np.asarray(a)[mask]  # noqa: E731
        rows = ("loss", *COVARIATES, "group", "flops_per_token", "index")
        return dataclasses.replace(self, **{name: pick(getattr(self, name)) for name in rows})

    def groups(self) -> dict[Any, ScalingData]:
        """Split by the group column, in order of first appearance (labels keep their type).

        Raises:
            DataError: no group column, or labels that compare equal but differ in type
                (``True`` and ``1``), which would merge two groups.
        """
        if self.group is None:
            raise DataError("no group column was given; pass group='column' when loading")
        rows: dict[tuple[str, Any], tuple[Any, list[int]]] = {}
        for i, label in enumerate(check_labels(self.group, "group")):
            rows.setdefault(_label_key(label), (label, []))[1].append(i)
        return {label: self.subset(np.isin(np.arange(self.n), taken)) for label, taken in rows.values()}

    @classmethod
    def from_arrays(
        cls,
        loss: Sequence[float] | np.ndarray,
        N: Sequence[float] | np.ndarray | None = None,
        D: Sequence[float] | np.ndarray | None = None,
        C: Sequence[float] | np.ndarray | None = None,
        *,
        group: Sequence[Any] | np.ndarray | None = None,
        N_total: Sequence[float] | np.ndarray | None = None,
        U: Sequence[float] | np.ndarray | None = None,
        flops_per_token: float | Sequence[float] | np.ndarray | None = None,
        counts_embeddings: bool | None = None,
        compute_rtol: float = _COMPUTE_RTOL,
    ) -> ScalingData:
        """Validate arrays of runs; see :meth:`from_table` for the rules."""
        given = {"N": N, "D": D, "C": C, "N_total": N_total, "U": U}
        frame = pd.DataFrame({"loss": np.asarray(loss), **{k: np.asarray(v) for k, v in given.items() if v is not None}})
        if group is not None:
            frame["group"] = pd.Series(list(np.asarray(group, dtype=object)), dtype=object)
        return cls.from_table(
            frame,
            **{c.option: c.name if given[c.name] is not None else None for c in COVARIATE_INFO},
            group="group" if group is not None else None,
            flops_per_token=flops_per_token,
            counts_embeddings=counts_embeddings,
            compute_rtol=compute_rtol,
            source="arrays",
        )

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame | str | os.PathLike[str],
        *,
        params: str | None = None,
        tokens: str | None = None,
        compute: str | None = None,
        loss: str = "loss",
        group: str | None = None,
        total_params: str | None = None,
        unique_tokens: str | None = None,
        flops_per_token: str | float | Sequence[float] | np.ndarray | None = None,
        counts_embeddings: bool | None = None,
        compute_rtol: float = _COMPUTE_RTOL,
        duplicates: str = "warn",
        source: str | None = None,
    ) -> ScalingData:
        """Load and validate a table of training runs.

        Args:
            table: a DataFrame, or a path to a CSV file.
            params: column of parameter counts N. Default: ``"N"`` or ``"params"``
                if such a column exists.
            tokens: column of training tokens D. Default: ``"D"`` or ``"tokens"``.
            compute: column of training FLOPs C. Default: ``"C"``, ``"compute"``
                or ``"flops"``.
            loss: column of final losses (nats), or of any positive target.
            group: optional column of group labels (kept as given; from a CSV path
                read as the strings in the file).
            total_params: column of total parameters of mixture-of-experts
                models (N is then the active parameters; dense runs repeat N).
                Default: ``"N_total"`` or ``"total_params"`` if present.
            unique_tokens: column of unique tokens U, the distinct data each run
                repeated for ``D/U`` epochs (data-constrained laws). Default:
                ``"U"`` or ``"unique_tokens"`` if present.
            flops_per_token: FLOPs per token M, as a column name or a number or
                array; compute is then ``C = M·D`` instead of ``C = 6·N·D``.
            counts_embeddings: whether N includes embedding parameters; recorded
                in results.
            compute_rtol: relative tolerance for the consistency check of a given
                C against ``6·N·D`` (or ``M·D``); beyond it a :class:`DataWarning`
                names the rows.
            duplicates: rows that repeat an earlier run exactly (same covariates,
                loss and group) count twice and narrow the posterior: ``"warn"``
                keeps them with a :class:`DataWarning` naming them, ``"keep"``
                keeps them silently, ``"drop"`` drops them (and says which).
            source: description of the source (defaults to the path or
                ``"DataFrame"``).

        Returns:
            The validated :class:`ScalingData`. Missing D is derived as
            ``C/(6N)`` (or ``C/M``), missing C as ``6·N·D`` (or ``M·D``), missing N
            as ``C/(6D)``.

        Raises:
            DataError: empty table, duplicated or missing columns, non-numeric,
                boolean, NaN, infinite or non-positive values, derived values out of
                the float range (``6·N·D`` overflowing), missing group labels or
                labels that compare equal across types, naming column and rows.

        Warns:
            DataWarning: values that look like other units (N or D in millions or
            billions, C in PF-days or log10), C far from ``6·N·D``, tokens fewer
            than parameters in every run, duplicated runs; each names the fix.
        """
        if isinstance(table, (str, os.PathLike)):
            source = source or os.fspath(table)
            table = read_csv(table, group=group)
        if not isinstance(table, pd.DataFrame):
            raise DataError(f"table must be a pandas DataFrame or a CSV path, got {type(table).__name__}")
        source = source or "DataFrame"
        duplicated = table.columns[table.columns.duplicated()].unique().tolist()
        if duplicated:
            raise DataError(f"duplicated column names: {duplicated}")
        if table.shape[0] == 0:
            raise DataError("the table has no rows")

        def resolve(covariate: Covariate, given: str | None) -> str | None:
            if given is not None:
                if given not in table.columns:
                    raise DataError(
                        f"column {given!r} (for {covariate.name}) not found; columns are"
                        f" {list(map(str, table.columns))}"
                    )
                return given
            return next((c for c in covariate.columns if c in table.columns), None)

        options = {"params": params, "tokens": tokens, "compute": compute, "total_params": total_params,
                   "unique_tokens": unique_tokens}
        names = {c.name: resolve(c, options[c.option]) for c in COVARIATE_INFO}
        names["loss"] = loss if loss in table.columns else None
        if names["loss"] is None:
            raise DataError(f"column {loss!r} (for loss) not found; columns are {list(map(str, table.columns))}")
        if group is not None and group not in table.columns:
            raise DataError(f"column {group!r} (for group) not found; columns are {list(map(str, table.columns))}")
        table = _duplicates(table, [c for c in (*names.values(), group) if c is not None], duplicates)
        roles = {**{c.name: c.role for c in COVARIATE_INFO}, "loss": "loss"}
        values = {k: None if c is None else _numeric_column(table, c, roles[k]) for k, c in names.items()}

        m = None
        if isinstance(flops_per_token, str):
            if flops_per_token not in table.columns:
                raise DataError(f"column {flops_per_token!r} (for flops_per_token) not found")
            m = _numeric_column(table, flops_per_token, "FLOPs per token")
        elif flops_per_token is not None:
            m = np.broadcast_to(np.asarray(flops_per_token, dtype=float), (table.shape[0],)).copy()
            m = check_positive(m, table.index, "flops_per_token", "FLOPs per token")

        N, D, C = values["N"], values["D"], values["C"]
        n_total = values["N_total"]
        if n_total is not None:
            if N is None:
                raise DataError(f"column {names['N_total']!r} (total parameters) needs the active parameters N too")
            fewer = n_total < N * (1 - 1e-9)
            if fewer.any():
                raise DataError(
                    f"column {names['N_total']!r}: total parameters below active parameters N at rows"
                    f" {_rows(table.index[fewer])}; dense runs have N_total = N"
                )
        _check_units(names, values)
        if C is not None and D is not None and (m is not None or N is not None):
            with np.errstate(over="ignore", under="ignore", divide="ignore"):
                ratio = C / ((m if m is not None else 6.0 * N) * D)
            off = np.abs(np.log(ratio)) > np.log1p(compute_rtol)
            if off.any():
                rule = "M·D" if m is not None else "6·N·D"
                pf_days = abs(np.log(np.median(ratio) * _PF_DAY)) < np.log(3.0)
                hint = (f"; C looks like PF-days: multiply it by {_PF_DAY:.3g} (FLOPs per PF-day)" if pf_days
                        else "; the given C is kept")
                warnings.warn(
                    f"column {names['C']!r}: compute differs from {rule} by more than"
                    f" {compute_rtol:.0%} at rows {_rows(table.index[off])} (ratio {ratio[off][0]:.3g}){hint}",
                    DataWarning,
                    stacklevel=2,
                )
        if names["N"] is not None and names["D"] is not None and np.all(D < N):
            warnings.warn(
                f"tokens ({names['D']!r}) are fewer than parameters ({names['N']!r}) in every run:"
                " are the two columns swapped?",
                DataWarning,
                stacklevel=2,
            )
        N, D, C = fill_covariates(N, D, C, m)
        derived = {"N": (N, "C/(6·D)"), "D": (D, "C/(6·N)" if m is None else "C/M"),
                   "C": (C, "6·N·D" if m is None else "M·D")}
        for key, (value, rule) in derived.items():
            if value is not None and names[key] is None:
                check_positive(value, table.index, f"{key} (derived as {rule})", "derived")

        groups = None
        if group is not None:
            groups = check_labels(table[group], group)

        return cls(
            loss=values["loss"],
            N=N,
            D=D,
            C=C,
            group=groups,
            N_total=n_total,
            U=values["U"],
            flops_per_token=m,
            counts_embeddings=counts_embeddings,
            index=np.asarray(table.index),
            target=str(names["loss"]),
            source=source,
        )


def _check_units(names: dict[str, str | None], values: dict[str, np.ndarray | None]) -> None:
    """Warn when a covariate's values look like another unit, naming the column and the fix."""
    for covariate in COVARIATE_INFO:
        x = values[covariate.name]
        if x is None or x.max() >= covariate.smallest:
            continue
        if covariate.unit == "FLOPs":
            log10 = bool(np.all((x >= 5) & (x <= 40)))
            hint = ("looks like log10 FLOPs: give 10**C" if log10
                    else f"looks like PF-days: multiply it by {_PF_DAY:.3g} (FLOPs per PF-day)")
        else:
            unit = covariate.unit
            hint = f"looks like millions or billions of {unit}: give {unit} (multiply millions by 1e6, billions by 1e9)"
        warnings.warn(
            f"column {names[covariate.name]!r}: the largest value is {_plain(x.max())!r}; {hint}",
            DataWarning,
            stacklevel=3,
        )


def _label_key(label: Any) -> tuple[str, Any]:
    """A label with its type, so ``1``, ``"1"`` and ``True`` stay three labels."""
    value = _plain(label)
    return (type(value).__name__, value)


def check_labels(labels: Sequence[Any] | pd.Series, column: str) -> np.ndarray:
    """Group labels as an object array, checked: none missing, none that would merge with another.

    Labels keep their type: ``1`` and ``"1"`` are two groups. Labels that compare
    equal across types (``True`` and ``1``, ``1`` and ``1.0``) would be merged by
    any dictionary or ``groupby``, so they are refused.

    Raises:
        DataError: missing labels (NaN, None, empty strings), or labels equal across
            types, naming the column, rows and labels.
    """
    series = pd.Series(list(labels) if not isinstance(labels, pd.Series) else labels, dtype=object)
    missing = series.isna() | series.map(lambda x: isinstance(x, str) and not x.strip())
    if missing.any():
        raise DataError(f"column {column!r} (group) is missing labels at rows {_rows(series.index[missing])}:"
                        f" label them, or drop them explicitly (frame.dropna(subset=[{column!r}]))")
    values = np.array([_plain(x) for x in series], dtype=object)
    seen: dict[Any, tuple[str, Any]] = {}
    for label in values:
        key = _label_key(label)
        try:
            first = seen.setdefault(label, key)
        except TypeError:
            raise DataError(f"column {column!r} (group): label {label!r} is not hashable") from None
        if first != key:
            raise DataError(
                f"column {column!r} (group): labels {first[1]!r} ({first[0]}) and {key[1]!r} ({key[0]}) compare"
                " equal and would merge two groups; give labels of one type (e.g. all strings)"
            )
    return values


def read_csv(path: str | os.PathLike[str], group: str | None = None) -> pd.DataFrame:
    """Read a CSV table of runs: numbers as numbers, the ``group`` column as the strings in the file.

    Labels are never type-guessed: ``01`` and ``1`` stay two groups, ``NA`` is a label;
    an empty cell in the group column is a missing label (an error when the groups are split).

    Raises:
        DataError: no such file, no header, or a column name used twice (pandas would
            rename the second silently).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path!r}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataError(f"{path}: empty file, no header row")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: column names used more than once: {repeated}; rename them")
    if group is None:
        return pd.read_csv(path, encoding="utf-8-sig")
    if group not in header:
        raise DataError(f"{path}: column {group!r} (for group) not found; columns are {header}")
    frame = pd.read_csv(path, encoding="utf-8-sig", dtype={group: str}, keep_default_na=False,
                        na_values={c: _NA_STRINGS for c in header if c != group})
    frame[group] = frame[group].astype(object).where(frame[group].str.strip() != "", None)
    return frame


def _duplicates(table: pd.DataFrame, columns: list[str], how: str) -> pd.DataFrame:
    """Apply the ``duplicates`` rule of :meth:`ScalingData.from_table` over ``columns``."""
    if how not in ("warn", "keep", "drop"):
        raise DataError(f"duplicates must be 'warn', 'keep' or 'drop', got {how!r}")
    repeated = table.duplicated(subset=columns, keep="first")
    if how == "keep" or not repeated.any():
        return table
    rows = _rows(table.index[repeated])
    if how == "drop":
        warnings.warn(f"dropped {int(repeated.sum())} duplicated runs at rows {rows}", DataWarning, stacklevel=4)
        return table[~repeated]
    warnings.warn(
        f"rows {rows} repeat earlier runs exactly (columns {columns}): a repeated run counts twice and narrows"
        " the posterior; pass duplicates='drop' to drop them, or duplicates='keep' if they are real replicates",
        DataWarning,
        stacklevel=4,
    )
    return table


def as_data(data: ScalingData | pd.DataFrame | str | os.PathLike[str], **columns: Any) -> ScalingData:
    """Return ``data`` as :class:`ScalingData`, loading a table with ``columns`` if needed."""
    if isinstance(data, ScalingData):
        if columns:
            raise DataError(f"column options {sorted(columns)} only apply when loading a table")
        return data
    return ScalingData.from_table(data, **columns)

