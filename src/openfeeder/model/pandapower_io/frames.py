"""Reading pandapower DataFrames: columns as typed arrays with defaults, the ``of_*`` hint columns
the exporter writes, checks of bus references, and :class:`CaseError` naming table, index and
column."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from openfeeder.errors import CaseError, CaseIssue
from openfeeder.model.pandapower_io.mapping import Bools, Floats, Ints

if TYPE_CHECKING:
    import pandas as pd


def fail(table: str, index: object, message: str, field: str | None = None) -> None:
    """Raise a :class:`CaseError` for row ``index`` of pandapower table ``table``."""
    raise CaseError(CaseIssue(message, component=table, component_id=_as_int(index), field=field))


def _as_int(index: object) -> int | None:
    try:
        return int(index)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


def table_frame(net: Any, table: str) -> pd.DataFrame:
    import pandas as pd

    frame = net.get(table)
    if frame is None:
        return pd.DataFrame(index=pd.Index([], dtype=np.int64))
    if not isinstance(frame, pd.DataFrame):
        raise CaseError(CaseIssue(f"pandapower entry '{table}' is not a table", component=table))
    return frame


def floats(df: pd.DataFrame, column: str, default: float = np.nan) -> Floats:
    """A numeric column as float64 (``default`` where the column is missing or NaN)."""
    if column not in df:
        return np.full(len(df), default, dtype=np.float64)
    values = np.asarray(df[column].to_numpy(dtype=np.float64, na_value=np.nan))
    if not np.isnan(default):
        values = np.where(np.isnan(values), default, values)
    return values


def strings(df: pd.DataFrame, column: str) -> npt.NDArray[np.object_]:
    """A text column as an object array, with '' for missing values."""
    if column not in df:
        return np.full(len(df), "", dtype=object)
    series = df[column]
    return np.asarray(series.where(series.notna(), "").astype(str).to_numpy(dtype=object))


def hint_values(df: pd.DataFrame, column: str) -> tuple[npt.NDArray[np.object_], Bools]:
    """An extra ``of_*`` column written by the exporter: values and where they are present."""
    if column not in df:
        return np.full(len(df), None, dtype=object), np.zeros(len(df), dtype=bool)
    values = df[column].to_numpy(dtype=object)
    present = np.asarray(df[column].notna().to_numpy(dtype=bool))
    return values, present


def hint_floats(df: pd.DataFrame, column: str) -> tuple[Floats, Bools]:
    values = floats(df, column)
    return values, ~np.isnan(values)


def integral(df: pd.DataFrame, table: str, column: str, values: Floats, dtype: str) -> Ints:
    """Float values that must be whole numbers within ``dtype``; fails naming the first bad row."""
    info = np.iinfo(np.dtype(dtype))
    bad = ~np.isfinite(values) | (values != np.round(values))
    bad |= (values < info.min) | (values > info.max)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        fail(table, df.index[row], f"must be a whole number, got {values[row]}", column)
    return values.astype(np.int64)


def hint_bools(df: pd.DataFrame, column: str, default: Bools) -> Bools:
    values, present = hint_values(df, column)
    return np.where(present, values.astype(bool), default)


def check_bus_refs(bus_df: pd.DataFrame, table: str, df: pd.DataFrame, column: str) -> None:
    if not len(df):
        return
    if column not in df:
        raise CaseError(CaseIssue("missing column", component=table, field=column))
    refs = df[column].to_numpy(dtype=np.int64)
    missing = ~np.isin(refs, bus_df.index.to_numpy(dtype=np.int64))
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        fail(table, df.index[row], f"no bus with index {refs[row]}", column)
