"""Where each measurement of a set sits in a grid model, checked against it.

:func:`locate_measurements` resolves every measurement's bus and element to rows of the model's
tables in one vectorized pass per table and raises :class:`~openfeeder.errors.MeasurementError`
naming the measurement (index and id), the element id and the field for the first one that does
not fit: an unknown bus or element, a branch end that is missing, a current on something that is
not a branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.estimation.measurement_set import (
    END_NONE,
    END_TO,
    QUANTITIES,
    MeasurementSet,
    Quantity,
)
from openfeeder.analysis.estimation.model_cache import find, find_ids, model_memo
from openfeeder.errors import MeasurementError
from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "BranchTable",
    "LocatedMeasurements",
    "Target",
    "appliance_bus_rows",
    "branch_table",
    "locate_measurements",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Target(IntEnum):
    """What a measurement measures: a bus (voltage, injection), a branch end or an appliance."""

    BUS = 0
    BRANCH = 1
    LOAD = 2
    GENERATOR = 3
    SOURCE = 4


@dataclass(frozen=True, slots=True, eq=False)
class BranchTable:
    """Every branch in result order (lines, transformers, switches) with its end buses' rows."""

    id: IntArray
    from_row: IntArray
    to_row: IntArray
    connected: BoolArray
    """In service (lines, transformers) or closed (switches)."""
    kind: npt.NDArray[np.int8]
    """0 line, 1 transformer, 2 switch (as :class:`openfeeder.analysis.powerflow.BranchKind`)."""


def branch_table(model: GridModel) -> BranchTable:
    """The model's :class:`BranchTable` (built once per model object)."""
    return model_memo(model, "branch_table", lambda: _branch_table(model))


def _branch_table(model: GridModel) -> BranchTable:
    bus_id = model.bus["id"]
    parts = (
        (model.line, "from_bus", "to_bus", model.line["in_service"]),
        (model.transformer, "hv_bus", "lv_bus", model.transformer["in_service"]),
        (model.switch, "from_bus", "to_bus", model.switch["closed"]),
    )
    return BranchTable(
        id=np.concatenate([t["id"] for t, *_ in parts]).astype(np.int64),
        from_row=lookup(bus_id, np.concatenate([t[f] for t, f, _, _ in parts])),
        to_row=lookup(bus_id, np.concatenate([t[b] for t, _, b, _ in parts])),
        connected=np.concatenate([np.asarray(on, dtype=bool) for *_, on in parts]),
        kind=np.repeat(
            np.arange(3, dtype=np.int8),
            [model.line.size, model.transformer.size, model.switch.size],
        ),
    )


@dataclass(frozen=True, slots=True, eq=False)
class LocatedMeasurements:
    """Per measurement (in set order): its target, the target's row, the bus row it is read at."""

    measurements: MeasurementSet
    branches: BranchTable
    target: npt.NDArray[np.int8]
    target_row: IntArray
    """Row in the bus table, the branch table (:class:`BranchTable` order) or the appliance table."""
    bus_row: IntArray
    """The bus the value is read at: the measured bus, the branch end's bus, the appliance's bus."""
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)
    """Masks that depend on the placement only (:meth:`with_placement_of` shares them)."""

    def with_placement_of(self, other: LocatedMeasurements) -> LocatedMeasurements:
        """This set sharing ``other``'s masks (the caller vouches for the same placement)."""
        object.__setattr__(self, "memo", other.memo)
        return self

    def concat(
        self, other: LocatedMeasurements, *, other_prefix: str | None = None
    ) -> LocatedMeasurements:
        """Both sets located on the same model, in this order (no second lookup).

        ``other_prefix``: the caller vouches that ``other``'s ids differ from each other and all
        start with this prefix (the pseudo-measurement names of a model whose ids are unique), so
        only this set's ids are checked for one used twice or starting with the prefix."""
        if other_prefix is not None:
            measurements = _join_distinct(self.measurements, other.measurements, other_prefix)
        else:
            measurements = self.measurements.concat(other.measurements)
        out = LocatedMeasurements(
            measurements=measurements,
            branches=self.branches,
            target=np.concatenate([self.target, other.target]),
            target_row=np.concatenate([self.target_row, other.target_row]),
            bus_row=np.concatenate([self.bus_row, other.bus_row]),
        )
        mine, theirs = self.memo.get(_MEASURED), other.memo.get(_MEASURED)
        if mine is not None and theirs is not None:
            out.memo[_MEASURED] = {kind: _union(mine[kind], theirs[kind]) for kind in mine}
        return out

    def of_quantity(self, *quantities: Quantity) -> BoolArray:
        """Which measurements are of one of ``quantities`` (kept in :attr:`memo`; do not write)."""
        out: BoolArray | None = self.memo.get(quantities)
        if out is None:
            out = self.memo[quantities] = _is_quantity(
                self.measurements.column("quantity"), *quantities
            )
        return out

    def rows_of_quantity(self, *quantities: Quantity) -> IntArray:
        """Positions of the measurements of one of ``quantities`` (kept in :attr:`memo`; do not
        write)."""
        key = ("rows", quantities)
        out: IntArray | None = self.memo.get(key)
        if out is None:
            out = self.memo[key] = np.flatnonzero(self.of_quantity(*quantities))
        return out

    def measured_appliances(self) -> dict[Target, IntArray]:
        """Rows of the appliances with a ``pq`` measurement, per appliance table (sorted; kept,
        do not write)."""
        out: dict[Target, IntArray] | None = self.memo.get(_MEASURED)
        if out is None:
            pq = self.of_quantity(Quantity.PQ)
            out = {}
            for kind in (Target.LOAD, Target.GENERATOR, Target.SOURCE):
                rows = self.target_row[pq & (self.target == kind)]
                out[kind] = _union(rows, np.zeros(0, dtype=np.int64))
            self.memo[_MEASURED] = out
        return out


_MEASURED: Final = "measured_appliances"


def _union(a: IntArray, b: IntArray) -> IntArray:
    """The sorted distinct rows of both (non-negative row numbers)."""
    hit = np.zeros(int(max(a.max(initial=-1), b.max(initial=-1))) + 1, dtype=bool)
    hit[a] = True
    hit[b] = True
    return np.flatnonzero(hit).astype(np.int64)


def _join_distinct(first: MeasurementSet, second: MeasurementSet, prefix: str) -> MeasurementSet:
    """``first.concat(second)`` for a ``second`` whose ids are distinct and start with
    ``prefix``: no id of ``first`` starting with it (the first, or one after a separator in
    their joined text) and no id of ``first`` twice make the joined ids distinct."""
    seen = set(first.ids)
    if len(seen) != len(first.ids):
        return first.concat(second)  # raises, naming the first id used twice
    try:
        joined = "\0".join(first.ids)  # searched as it is (no copy with a separator in front)
    except TypeError:  # an id that is not a string
        prefixed = True
    else:
        prefixed = joined.startswith(prefix) or "\0" + prefix in joined
    if prefixed and not seen.isdisjoint(second.ids):
        return first.concat(second)
    return MeasurementSet.joined((first, second))


_APPLIANCES: Final = (
    (Target.LOAD, "load"),
    (Target.GENERATOR, "generator"),
    (Target.SOURCE, "source"),
)


def locate_measurements(
    model: GridModel, measurements: MeasurementSet, *, file: str | None = None
) -> LocatedMeasurements:
    """Resolve ``measurements`` against ``model`` (see the module docstring)."""
    n = len(measurements)
    branches = branch_table(model)
    quantity = measurements.column("quantity")
    bus = measurements.column("bus")
    element = measurements.column("element")
    end = measurements.column("end")

    def fail(bad: BoolArray, field: str, message: str, ids: IntArray) -> None:
        if bad.any():
            row = int(np.argmax(bad))
            more = int(bad.sum()) - 1
            raise MeasurementError(
                message + (f" (and {more} more measurements)" if more else ""),
                file=file,
                index=row,
                measurement_id=measurements.ids[row],
                element_id=int(ids[row]),
                field=field,
            )

    target = np.full(n, Target.BUS, dtype=np.int8)
    target_row = np.full(n, -1, dtype=np.int64)
    bus_row = np.full(n, -1, dtype=np.int64)

    has_bus = bus != NO_ID
    found_bus = _find_where(model, "bus", bus, has_bus)
    fail(has_bus & (found_bus < 0), "bus", "no bus with this id in the model", bus)
    has_element = element != NO_ID
    on_bus_only = _is_quantity(quantity, Quantity.U, Quantity.U_PHASOR)
    fail(
        on_bus_only & has_element,
        "element",
        "a voltage is measured at a bus, not an element",
        element,
    )
    injection = has_bus & ~has_element
    target_row[injection] = found_bus[injection]
    bus_row[injection] = found_bus[injection]

    branch_row = np.full(n, -1, dtype=np.int64)
    with_element = np.flatnonzero(has_element)
    branch_row[with_element] = find_ids(
        model, "branch_table", lambda: branches.id, element[with_element]
    )
    is_branch = has_element & (branch_row >= 0)
    remaining = np.flatnonzero(has_element & ~is_branch)
    for kind, name in _APPLIANCES:
        if remaining.size == 0:
            break
        rows = find(model, name, element[remaining])
        found = rows >= 0
        hit = remaining[found]
        target[hit] = kind
        target_row[hit] = rows[found]
        bus_row[hit] = appliance_bus_rows(model, name)[rows[found]]
        remaining = remaining[~found]
    not_found = np.zeros(n, dtype=bool)
    not_found[remaining] = True
    fail(
        not_found,
        "element",
        "no line, transformer, switch, load, generator or source with this id in the model",
        element,
    )
    on_branch_only = _is_quantity(quantity, Quantity.I, Quantity.I_PHASOR)
    fail(
        on_branch_only & has_element & ~is_branch,
        "element",
        "a current is measured on a line, transformer or switch",
        element,
    )
    fail(is_branch & (end == END_NONE), "end", "a branch measurement needs 'end'", element)
    target[is_branch] = Target.BRANCH
    on_branch = np.flatnonzero(is_branch)
    rows_of_branch = branch_row[on_branch]
    target_row[on_branch] = rows_of_branch
    bus_row[on_branch] = np.where(
        end[on_branch] == END_TO,
        branches.to_row[rows_of_branch],
        branches.from_row[rows_of_branch],
    )
    at_other_bus = is_branch & has_bus & (found_bus != bus_row)
    fail(at_other_bus, "bus", "the branch end named is not at this bus", bus)
    at_other_bus = has_element & ~is_branch & has_bus & (found_bus != bus_row)
    fail(at_other_bus, "bus", "the element is not at this bus", bus)
    return LocatedMeasurements(
        measurements=measurements,
        branches=branches,
        target=target,
        target_row=target_row,
        bus_row=bus_row,
    )


def appliance_bus_rows(model: GridModel, name: str) -> IntArray:
    """Bus rows of the ``load``, ``generator`` or ``source`` table's rows (-1 for an unknown
    bus), kept per model object; callers must not write it."""
    return model_memo(
        model, ("appliance_bus_rows", name), lambda: find(model, "bus", model.table(name)["bus"])
    )


def _is_quantity(codes: npt.NDArray[np.int8], *quantities: Quantity) -> BoolArray:
    out: BoolArray = codes == QUANTITIES.index(quantities[0])
    for other in quantities[1:]:
        out |= codes == QUANTITIES.index(other)
    return out


def _find_where(model: GridModel, table: str, wanted: IntArray, where: BoolArray) -> IntArray:
    """:func:`find` of ``wanted`` at ``where`` only, -1 elsewhere."""
    out = np.full(wanted.shape, -1, dtype=np.int64)
    rows = np.flatnonzero(where)
    out[rows] = find(model, table, wanted[rows])
    return out
