"""What a state estimator is given: a columnar set of measurements, each with its uncertainty.

A :class:`MeasurementSet` is a numpy structured array (:data:`MEASUREMENT_DTYPE`, one row per
measurement) plus the measurements' string ids. Every measurement is one :class:`Quantity` at one
place:

========== ===================================================== ==================================
quantity   where                                                 values (and standard deviations)
========== ===================================================== ==================================
u          ``bus``                                               ``u_kv`` line-to-line (``u_sigma_kv``)
u_phasor   ``bus`` (a PMU)                                       ``u_kv``, ``u_angle_deg``
                                                                 (``u_sigma_kv``, ``angle_sigma_deg``)
pq         ``bus`` alone: the bus's net injection (generation    ``p_mw``, ``q_mvar``
           minus consumption); ``element`` a load, generator or  (``p_sigma_mw``, ``q_sigma_mvar``)
           source: its power (a load's consumption, a generator's
           or source's injection); ``element`` a branch and
           ``end``: the power flowing from that end's bus into
           the branch
i          ``element`` a branch and ``end``                      ``i_ka`` (``i_sigma_ka``)
i_phasor   ``element`` a branch and ``end`` (a PMU; angle        ``i_ka``, ``i_angle_deg``
           against the grid's reference, current into the branch) (``i_sigma_ka``, ``angle_sigma_deg``)
========== ===================================================== ==================================

All quantities are positive-sequence (three-phase total power, line-to-line voltage, phase
current). ``pseudo`` marks values that were not measured but forecast (load profiles, the model's
own load values): the estimator gives them their (large) standard deviations and never reports or
removes them as bad data.

Sets are built from records (dicts, as in a measurement file: :meth:`MeasurementSet.from_records`)
or column by column (:meth:`MeasurementSet.from_columns`); standard deviations can come from the
devices' accuracy classes (:func:`sigmas_from_accuracy_class`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.estimation.table_rows import join_rows, take_rows
from openfeeder.errors import MeasurementError
from openfeeder.model.components import NO_ID

__all__ = [
    "MEASUREMENT_DTYPE",
    "PHASE_CRAD_PER_PERCENT",
    "MeasurementSet",
    "Quantity",
    "concat_tables",
    "empty_rows",
    "sigmas_from_accuracy_class",
]


class Quantity(StrEnum):
    U = "u"
    U_PHASOR = "u_phasor"
    PQ = "pq"
    I = "i"  # noqa: E741  # the current magnitude's usual symbol
    I_PHASOR = "i_phasor"


QUANTITIES: Final = tuple(Quantity)
END_NONE: Final = -1
END_FROM: Final = 0
END_TO: Final = 1
_ENDS: Final = {"from": END_FROM, "to": END_TO}

MEASUREMENT_DTYPE: Final = np.dtype(
    [
        ("quantity", "i1"),
        ("bus", "i8"),
        ("element", "i8"),
        ("end", "i1"),
        ("u_kv", "f8"),
        ("u_angle_deg", "f8"),
        ("p_mw", "f8"),
        ("q_mvar", "f8"),
        ("i_ka", "f8"),
        ("i_angle_deg", "f8"),
        ("u_sigma_kv", "f8"),
        ("angle_sigma_deg", "f8"),
        ("p_sigma_mw", "f8"),
        ("q_sigma_mvar", "f8"),
        ("i_sigma_ka", "f8"),
        ("pseudo", "?"),
    ]
)
"""Columns of a measurement set; values and sigmas a quantity does not use are NaN."""

_VALUES: Final[dict[Quantity, tuple[str, ...]]] = {
    Quantity.U: ("u_kv", "u_sigma_kv"),
    Quantity.U_PHASOR: ("u_kv", "u_angle_deg", "u_sigma_kv", "angle_sigma_deg"),
    Quantity.PQ: ("p_mw", "q_mvar", "p_sigma_mw", "q_sigma_mvar"),
    Quantity.I: ("i_ka", "i_sigma_ka"),
    Quantity.I_PHASOR: ("i_ka", "i_angle_deg", "i_sigma_ka", "angle_sigma_deg"),
}
"""The value and sigma columns each quantity needs (sigmas are the names with ``sigma``)."""

PHASE_CRAD_PER_PERCENT: Final = 1.5
"""Phase displacement limit per % of accuracy class (as in :mod:`openfeeder.sim.measurements`)."""
_LIMIT_SIGMAS: Final = 2.0
_SIGMA_FLOOR: Final = 1e-6
"""Smallest standard deviation derived from a class (1 V, 1 W, 1 var, 1 mA; in kV, MW, ..., kA)."""
_COLUMNS: Final[tuple[str, ...]] = tuple(MEASUREMENT_DTYPE.names or ())
_KNOWN_KEYS: Final = frozenset(
    {"id", "quantity", "bus", "element", "end", "accuracy_class", *_COLUMNS}
)


def sigmas_from_accuracy_class(
    quantity: Quantity,
    accuracy_class: float,
    *,
    u_kv: float = math.nan,
    p_mw: float = math.nan,
    q_mvar: float = math.nan,
    i_ka: float = math.nan,
) -> dict[str, float]:
    """Standard deviations of one reading from its device's accuracy class (%).

    The class is a limit reached at two standard deviations (as in the twin's instrument model):
    ratio error ``c / 200`` of the value, phase error ``1.5 c / 200`` crad. Power ``P + jQ = V I*``
    carries the ratio errors of both V and I and their phase displacement:
    ``sigma_P^2 = 2 (r P)^2 + 2 (phi Q)^2`` and ``sigma_Q^2 = 2 (r Q)^2 + 2 (phi P)^2``. Every
    sigma is at least 1e-6 (1 V, 1 W, 1 mA in the set's units).
    """
    if not (math.isfinite(accuracy_class) and accuracy_class > 0.0):
        raise ValueError(f"accuracy class must be a positive percentage, got {accuracy_class!r}")
    ratio = accuracy_class / 100.0 / _LIMIT_SIGMAS
    phase_rad = accuracy_class * PHASE_CRAD_PER_PERCENT / 100.0 / _LIMIT_SIGMAS
    out: dict[str, float] = {}
    if quantity in (Quantity.U, Quantity.U_PHASOR):
        out["u_sigma_kv"] = max(ratio * abs(u_kv), _SIGMA_FLOOR)
    if quantity in (Quantity.I, Quantity.I_PHASOR):
        out["i_sigma_ka"] = max(ratio * abs(i_ka), _SIGMA_FLOOR)
    if quantity in (Quantity.U_PHASOR, Quantity.I_PHASOR):
        out["angle_sigma_deg"] = math.degrees(phase_rad)
    if quantity is Quantity.PQ:
        two = math.sqrt(2.0)
        out["p_sigma_mw"] = max(two * math.hypot(ratio * p_mw, phase_rad * q_mvar), _SIGMA_FLOOR)
        out["q_sigma_mvar"] = max(two * math.hypot(ratio * q_mvar, phase_rad * p_mw), _SIGMA_FLOOR)
    return out


@dataclass(frozen=True, slots=True, eq=False, init=False)
class MeasurementSet:
    """Measurements for one estimate: ``ids`` (unique strings) and ``table`` rows in the same order.

    The table must not be written by callers; :meth:`select` and :meth:`concat` return new sets.
    A set joined from others (:meth:`joined`, :meth:`concat`) or taken from one by rows
    (:meth:`take`) copies its table's records from theirs when :attr:`table` is first read, and
    makes its :meth:`column` arrays from theirs (an estimate of a new placement reads columns only).
    """

    _ids: tuple[str, ...] | None = field(repr=False)
    _size: int = field(repr=False)
    _id_names: tuple[npt.NDArray[np.object_], npt.NDArray[np.int64]] | None = field(repr=False)
    """Names and rows a set taken from a per-model name list has as ids (made when read)."""
    _table: npt.NDArray[np.void] | None = field(repr=False)
    _columns: dict[str, npt.NDArray[Any]] = field(repr=False)
    _joined: tuple[MeasurementSet, ...] = field(repr=False)
    """The sets this one joins, in order."""
    _taken: tuple[MeasurementSet, npt.NDArray[np.int64]] | None = field(repr=False)
    """The set and rows this one was taken from."""

    def __init__(self, ids: tuple[str, ...], table: npt.NDArray[np.void]) -> None:
        if table.dtype != MEASUREMENT_DTYPE:
            raise TypeError(f"measurement table has dtype {table.dtype}")
        if len(ids) != table.size:
            raise ValueError(f"{len(ids)} ids for {table.size} measurements")
        self._set(ids, len(ids), table, (), None)

    def _set(
        self,
        ids: tuple[str, ...] | None,
        size: int,
        table: npt.NDArray[np.void] | None,
        joined: tuple[MeasurementSet, ...],
        taken: tuple[MeasurementSet, npt.NDArray[np.int64]] | None,
        *,
        id_names: tuple[npt.NDArray[np.object_], npt.NDArray[np.int64]] | None = None,
    ) -> None:
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_size", size)
        object.__setattr__(self, "_id_names", id_names)
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_columns", {})
        object.__setattr__(self, "_joined", joined)
        object.__setattr__(self, "_taken", taken)

    @property
    def ids(self) -> tuple[str, ...]:
        """The measurements' ids, in order (unique strings). A set joined from others or taken
        with names from a per-model list makes the tuple when first read (an estimate of a new
        placement does not read the pseudo-measurements' ids)."""
        ids = self._ids
        if ids is None:
            if self._id_names is not None:
                names, rows = self._id_names
                ids = tuple(names[rows].tolist())
            else:  # tuples joined by +: a copy of references, no iteration in Python
                ids = ()
                for m in self._joined:
                    ids += m.ids
            object.__setattr__(self, "_ids", ids)
        return ids

    @property
    def table(self) -> npt.NDArray[np.void]:
        """One row per measurement (:data:`MEASUREMENT_DTYPE`)."""
        table = self._table
        if table is None:
            if self._taken is not None:
                source, rows = self._taken
                table = take_rows(source.table, rows)
            else:
                table = concat_tables([m.table for m in self._joined])
            object.__setattr__(self, "_table", table)
        return table

    def __len__(self) -> int:
        return self._size

    @property
    def quantity(self) -> npt.NDArray[np.int8]:
        """Quantity codes (positions in :class:`Quantity`; kept, do not write)."""
        return self.column("quantity")

    def column(self, name: str) -> npt.NDArray[Any]:
        """The column ``name`` as one contiguous array, made on first use and kept (the table is
        not written, so it stays right); callers must not write it.

        A column of the table itself is strided by the whole record (107 bytes): reading it
        touches a cache line per value, which on a large set costs more than the arithmetic on
        it. A set joined from others or taken from one by rows makes its columns from theirs."""
        out = self._columns.get(name)
        if out is None:
            if self._joined:  # each part written in place (no column of its own made for it)
                out = np.empty(self._size, dtype=MEASUREMENT_DTYPE[name])
                start = 0
                for m in self._joined:
                    m._column_into(name, out[start : start + len(m)])
                    start += len(m)
            elif self._taken is not None:
                source, rows = self._taken
                out = source.column(name)[rows]
            else:
                out = np.ascontiguousarray(self.table[name])
            self._columns[name] = out
        return out

    def _column_into(self, name: str, out: npt.NDArray[Any]) -> None:
        """Write :meth:`column` ``name`` into ``out`` (from the kept column if there is one)."""
        kept = self._columns.get(name)
        if kept is not None:
            out[...] = kept
        elif self._table is not None:
            out[...] = self._table[name]
        elif self._taken is not None:
            source, rows = self._taken
            np.take(source.column(name), rows, out=out)
        else:
            out[...] = self.column(name)

    @classmethod
    def joined(
        cls, sets: Sequence[MeasurementSet], *, ids: tuple[str, ...] | None = None
    ) -> MeasurementSet:
        """``sets`` one after the other, for a caller that vouches that no id is used twice
        (:meth:`concat` checks); ``ids``: their ids joined, if the caller has them."""
        out = cls.__new__(cls)
        # a joined set's parts rather than the set: its columns are theirs, joined once
        parts = chain.from_iterable(m._joined or (m,) for m in sets if len(m))
        joined = tuple(parts) or tuple(sets[:1])
        size = sum(len(m) for m in joined)
        if ids is not None and len(ids) != size:
            raise ValueError(f"{len(ids)} ids for {size} measurements")
        # without ``ids``: the parts' ids joined when first read (:attr:`ids`)
        if not joined:
            out._set((), 0, empty_rows(0), (), None)
        elif len(joined) == 1:
            only = joined[0]
            if ids is None:
                ids = only._ids
            out._set(ids, size, only._table, only._joined, only._taken, id_names=only._id_names)
            object.__setattr__(out, "_columns", only._columns)
        else:
            out._set(ids, size, None, joined, None)
        return out

    def take(
        self,
        rows: npt.NDArray[np.int64],
        ids: tuple[str, ...] | npt.NDArray[np.object_],
    ) -> MeasurementSet:
        """The measurements at integer ``rows`` named ``ids`` instead, for a caller that vouches
        that they are distinct. ``ids`` may also be an object array of names per row of this
        set (``ids[rows]`` are the names; the tuple is made when :attr:`ids` is first read)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = MeasurementSet.__new__(MeasurementSet)
        if isinstance(ids, np.ndarray):
            if ids.shape != (len(self),):
                raise ValueError(f"{ids.size} names for {len(self)} measurements")
            out._set(None, rows.size, None, (), (self, rows), id_names=(ids, rows))
            return out
        if len(ids) != rows.size:
            raise ValueError(f"{len(ids)} ids for {rows.size} measurements")
        out._set(ids, rows.size, None, (), (self, rows))
        return out

    @classmethod
    def empty(cls) -> MeasurementSet:
        return cls((), empty_rows(0))

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any]], *, file: str | None = None
    ) -> MeasurementSet:
        """A set from dicts with the keys of the module table (and ``id``, ``quantity``, ``end``,
        ``pseudo``, ``accuracy_class``); :class:`MeasurementError` names the first bad one."""
        items = list(records)
        table = empty_rows(len(items))
        ids: list[str] = []
        seen: set[str] = set()
        for index, record in enumerate(items):
            if not isinstance(record, Mapping):
                raise MeasurementError("a measurement must be an object", file=file, index=index)
            mid = record.get("id")
            if not isinstance(mid, str) or not mid:
                raise MeasurementError(
                    "needs a non-empty string 'id'", file=file, index=index, field="id"
                )
            if mid in seen:
                raise MeasurementError(
                    "id used twice", file=file, index=index, measurement_id=mid, field="id"
                )
            seen.add(mid)
            ids.append(mid)
            _fill_row(table, index, mid, record, file)
        out = cls(tuple(ids), table)
        out.check(file=file)
        return out

    @classmethod
    def from_columns(
        cls, ids: Sequence[str], quantity: Quantity, **columns: npt.ArrayLike
    ) -> MeasurementSet:
        """A set of ``len(ids)`` measurements of one quantity from arrays (or scalars) per column."""
        table = empty_rows(len(ids))
        table["quantity"] = QUANTITIES.index(quantity)
        for name, values in columns.items():
            if name not in _COLUMNS or name == "quantity":
                raise KeyError(f"unknown measurement column {name!r}")
            table[name] = values
        out = cls(tuple(ids), table)
        out.check()
        return out

    def select(self, rows: npt.ArrayLike) -> MeasurementSet:
        """The measurements at ``rows`` (integer positions or a boolean mask), in that order."""
        picked = np.arange(len(self))[np.asarray(rows)]
        return MeasurementSet(
            tuple(self.ids[r] for r in picked.tolist()), take_rows(self.table, picked)
        )

    def concat(self, *others: MeasurementSet) -> MeasurementSet:
        sets = (self, *others)
        ids = tuple(chain.from_iterable(m.ids for m in sets))
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            for mid in ids:
                if mid in seen:
                    raise MeasurementError("id used twice", measurement_id=mid, field="id")
                seen.add(mid)
        return MeasurementSet.joined(sets)

    def rows_of(self, ids: Iterable[str]) -> npt.NDArray[np.int64]:
        """Positions of measurement ``ids`` (MeasurementError naming an unknown one)."""
        index = {mid: row for row, mid in enumerate(self.ids)}
        rows = []
        for mid in ids:
            if mid not in index:
                raise MeasurementError("no such measurement in the set", measurement_id=mid)
            rows.append(index[mid])
        return np.array(rows, dtype=np.int64)

    def records(self) -> list[dict[str, Any]]:
        """The measurements as dicts (the inverse of :meth:`from_records`): only used keys."""
        out: list[dict[str, Any]] = []
        table = self.table
        for row, mid in enumerate(self.ids):
            quantity = QUANTITIES[int(table["quantity"][row])]
            record: dict[str, Any] = {"id": mid, "quantity": quantity.value}
            if table["bus"][row] != NO_ID:
                record["bus"] = int(table["bus"][row])
            if table["element"][row] != NO_ID:
                record["element"] = int(table["element"][row])
            if table["end"][row] != END_NONE:
                record["end"] = "from" if table["end"][row] == END_FROM else "to"
            for name in _VALUES[quantity]:
                record[name] = float(table[name][row])
            if table["pseudo"][row]:
                record["pseudo"] = True
            out.append(record)
        return out

    def check(self, *, file: str | None = None) -> None:
        """Raise :class:`MeasurementError` for the first row whose fields do not fit its quantity
        (vectorized: one pass per quantity and column)."""
        table = self.table
        codes = table["quantity"]
        bad_code = (codes < 0) | (codes >= len(QUANTITIES))
        self._raise_first(bad_code, "quantity", "unknown quantity code", file)
        for code, quantity in enumerate(QUANTITIES):
            mine = codes == code
            if not mine.any():
                continue
            for name in _VALUES[quantity]:
                values = table[name]
                if "sigma" in name:
                    bad = mine & ~(np.isfinite(values) & (values > 0.0))
                    self._raise_first(bad, name, "must be a finite number > 0", file)
                else:
                    bad = mine & ~np.isfinite(values)
                    self._raise_first(bad, name, f"a {quantity.value} measurement needs it", file)
            on_bus = quantity in (Quantity.U, Quantity.U_PHASOR)
            on_branch = quantity in (Quantity.I, Quantity.I_PHASOR)
            if on_bus:
                self._raise_first(mine & (table["bus"] == NO_ID), "bus", "needs a bus", file)
            if on_branch:
                no_element = mine & (table["element"] == NO_ID)
                self._raise_first(no_element, "element", "needs a branch (element)", file)
                no_end = mine & (table["end"] == END_NONE)
                self._raise_first(no_end, "end", "needs the branch end ('from' or 'to')", file)
            if quantity is Quantity.PQ:
                nowhere = mine & (table["bus"] == NO_ID) & (table["element"] == NO_ID)
                self._raise_first(nowhere, "element", "needs a bus or an element", file)
        bad_u = np.isfinite(table["u_kv"]) & (table["u_kv"] < 0.0)
        self._raise_first(bad_u, "u_kv", "a voltage magnitude is >= 0", file)
        bad_i = np.isfinite(table["i_ka"]) & (table["i_ka"] < 0.0)
        self._raise_first(bad_i, "i_ka", "a current magnitude is >= 0", file)

    def _raise_first(
        self, bad: npt.NDArray[np.bool_], field: str, message: str, file: str | None
    ) -> None:
        if not bad.any():
            return
        row = int(np.argmax(bad))
        raise MeasurementError(
            message, file=file, index=row, measurement_id=self.ids[row], field=field
        )


def _empty_row() -> npt.NDArray[np.uint8]:
    row = np.zeros(1, dtype=MEASUREMENT_DTYPE)
    for name in _COLUMNS:
        if MEASUREMENT_DTYPE[name].kind == "f":
            row[name] = np.nan
    row["bus"] = NO_ID
    row["element"] = NO_ID
    row["end"] = END_NONE
    return row.view(np.uint8)


_EMPTY_ROW: Final = _empty_row()
"""The bytes of a row with every value NaN, no bus, element or end (copied by :func:`empty_rows`)."""


def empty_rows(size: int) -> npt.NDArray[np.void]:
    """``size`` measurement rows with every value NaN and no bus, element or end."""
    rows = np.broadcast_to(_EMPTY_ROW, (size, _EMPTY_ROW.size)).copy()
    return rows.view(MEASUREMENT_DTYPE).reshape(size)


def concat_tables(tables: Sequence[npt.NDArray[np.void]]) -> npt.NDArray[np.void]:
    """Measurement tables one after the other, copied as whole records (:mod:`.table_rows`)."""
    if not tables:
        return empty_rows(0)
    return join_rows(tables)


def _fill_row(
    table: npt.NDArray[np.void],
    index: int,
    mid: str,
    record: Mapping[str, Any],
    file: str | None,
) -> None:
    def fail(message: str, field: str, element: int | None = None) -> MeasurementError:
        return MeasurementError(
            message,
            file=file,
            index=index,
            measurement_id=mid,
            element_id=element,
            field=field,
        )

    unknown = sorted(set(record) - _KNOWN_KEYS)
    if unknown:
        raise fail(f"unknown key; expected some of {sorted(_KNOWN_KEYS)}", unknown[0])
    try:
        quantity = Quantity(str(record.get("quantity")))
    except ValueError:
        raise fail(
            f"unknown quantity {record.get('quantity')!r}; expected one of "
            f"{[q.value for q in QUANTITIES]}",
            "quantity",
        ) from None
    row = table[index : index + 1]
    row["quantity"] = QUANTITIES.index(quantity)
    for key in ("bus", "element"):
        if key in record:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail("must be a non-negative integer id", key)
            row[key] = value
    if "end" in record:
        end = record["end"]
        if end not in _ENDS:
            raise fail(f"must be 'from' or 'to', got {end!r}", "end", record.get("element"))
        row["end"] = _ENDS[end]
    if "pseudo" in record:
        if not isinstance(record["pseudo"], bool):
            raise fail("must be true or false", "pseudo")
        row["pseudo"] = record["pseudo"]
    used = _VALUES[quantity]
    for name in used:
        if name in record:
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise fail(f"must be a number, got {value!r}", name)
            row[name] = float(value)
    extra = [k for k in record if k in _COLUMNS and k not in used and k != "pseudo"]
    extra = [k for k in extra if k not in ("bus", "element", "end", "quantity")]
    if extra:
        raise fail(f"not a field of a {quantity.value} measurement", extra[0])
    if "accuracy_class" in record:
        accuracy = record["accuracy_class"]
        if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or accuracy <= 0:
            raise fail("must be a positive percentage", "accuracy_class")
        values = {k: float(row[k][0]) for k in ("u_kv", "p_mw", "q_mvar", "i_ka")}
        for name, sigma in sigmas_from_accuracy_class(quantity, float(accuracy), **values).items():
            if name not in record:
                row[name] = sigma
