"""Rows of structured arrays picked and joined as whole records.

numpy copies a structured array field by field when it gathers rows (``table[rows]``) or joins
tables (``np.concatenate``): at 10,000 rows of a 16-field measurement table that is about 1 ms,
twenty times what copying the same records as opaque bytes costs. These functions view each row
as one ``void`` item of the record's size, so the copy is one pass over the records; the result
has the input's dtype and the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["join_rows", "take_rows"]

Table = npt.NDArray[np.void]


def take_rows(table: Table, rows: npt.ArrayLike) -> Table:
    """``table[rows]`` (integer positions or a boolean mask) for a one-dimensional table."""
    picked = np.asarray(rows)
    if picked.dtype == np.bool_:
        picked = np.flatnonzero(picked)
    out: Table = np.take(_records(table), picked).view(table.dtype)
    return out


def join_rows(tables: Sequence[Table]) -> Table:
    """``np.concatenate(tables)`` of one-dimensional tables that share one dtype."""
    dtype = tables[0].dtype
    if any(t.dtype != dtype for t in tables[1:]):
        raise TypeError("tables of different dtypes")
    out: Table = np.concatenate([_records(t) for t in tables]).view(dtype)
    return out


def _records(table: Table) -> Table:
    """``table`` as one opaque item per row (a copy only if it is not contiguous)."""
    records: Table = np.ascontiguousarray(table).view(np.dtype((np.void, table.dtype.itemsize)))
    return records
