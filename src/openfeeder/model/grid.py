"""The grid model: a named set of component tables.

:class:`GridModel` is immutable in the sense that operations return a new model; the numpy tables it
holds are not copied on read, so callers must not write into them (use :meth:`GridModel.replace` or
:meth:`GridModel.with_switch_states`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.model.components import TABLES, empty_table

__all__ = ["DEFAULT_FREQUENCY_HZ", "GridModel", "lookup"]

DEFAULT_FREQUENCY_HZ: Final = 50.0

Table = npt.NDArray[np.void]


def lookup(ids: npt.NDArray[np.integer], wanted: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Row positions of ``wanted`` ids in the id column ``ids``; -1 where an id is absent.

    Vectorized (sort + searchsorted), so it is the way to resolve references on large tables.
    """
    wanted_arr = np.asarray(wanted, dtype=np.int64)
    if ids.size == 0:
        return np.full(wanted_arr.shape, -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, wanted_arr)
    pos_clipped = np.minimum(pos, ids.size - 1)
    found = sorted_ids[pos_clipped] == wanted_arr
    return np.where(found, order[pos_clipped], -1).astype(np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class GridModel:
    """A distribution grid as columnar component tables (see :mod:`openfeeder.model.components`)."""

    name: str = "unnamed"
    description: str = ""
    frequency_hz: float = DEFAULT_FREQUENCY_HZ
    bus: Table = dataclasses.field(default_factory=lambda: empty_table("bus"))
    line: Table = dataclasses.field(default_factory=lambda: empty_table("line"))
    transformer: Table = dataclasses.field(default_factory=lambda: empty_table("transformer"))
    switch: Table = dataclasses.field(default_factory=lambda: empty_table("switch"))
    load: Table = dataclasses.field(default_factory=lambda: empty_table("load"))
    generator: Table = dataclasses.field(default_factory=lambda: empty_table("generator"))
    shunt: Table = dataclasses.field(default_factory=lambda: empty_table("shunt"))
    source: Table = dataclasses.field(default_factory=lambda: empty_table("source"))
    measurement: Table = dataclasses.field(default_factory=lambda: empty_table("measurement"))

    def __post_init__(self) -> None:
        for name, spec in TABLES.items():
            table = getattr(self, name)
            if table.dtype != spec.dtype:
                raise TypeError(f"table '{name}' has dtype {table.dtype}, expected {spec.dtype}")

    def table(self, name: str) -> Table:
        """The table called ``name`` (one of :data:`~openfeeder.model.components.TABLES`)."""
        if name not in TABLES:
            raise KeyError(f"unknown component table '{name}'")
        table: Table = getattr(self, name)
        return table

    def tables(self) -> Iterator[tuple[str, Table]]:
        for name in TABLES:
            yield name, getattr(self, name)

    def replace(self, **changes: object) -> GridModel:
        """A new model with some tables or metadata replaced."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_switch_states(self, closed: Mapping[int, bool]) -> GridModel:
        """A new model with the given switches (by id) opened or closed."""
        if not closed:
            return self
        ids = np.fromiter(closed.keys(), dtype=np.int64, count=len(closed))
        states = np.fromiter(closed.values(), dtype=bool, count=len(closed))
        rows = lookup(self.switch["id"], ids)
        if (rows < 0).any():
            missing = ids[rows < 0].tolist()
            raise KeyError(f"no switch with id {missing[0]}")
        switch = self.switch.copy()
        switch["closed"][rows] = states
        return self.replace(switch=switch)

    @property
    def size(self) -> dict[str, int]:
        return {name: int(table.size) for name, table in self.tables()}

    def all_ids(self) -> npt.NDArray[np.int64]:
        """Every component id in the model (one id space)."""
        return np.concatenate([t["id"].astype(np.int64) for _, t in self.tables()])

    def component_of(self, component_id: int) -> str | None:
        """The table that holds ``component_id``, or None."""
        for name, table in self.tables():
            if (table["id"] == component_id).any():
                return name
        return None
