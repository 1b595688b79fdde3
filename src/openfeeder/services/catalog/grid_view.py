"""Each device's part of the grid model: its switching section and feeder at a topology version.

:class:`CaseGrid` is the configured case (``[catalog] case``) prepared once: its switches and their
normal positions, and what every switching section holds. Sections do not depend on switch
positions (they are the grid with every switch removed, :mod:`openfeeder.model.topology`), so the
section contents are computed once, vectorised, for all sections. :class:`GridView` adds the
topology at one version (the feeder of every bus depends on the switch states) and answers
:meth:`GridView.part` per device from those arrays, without a topology analysis per request.

A device's part (:class:`~openfeeder.iot.device_settings.GridPart`):

- ``bus_ids``: the buses of the switching section of the device's bus;
- ``element_ids``: every component with a bus in that section: lines and transformers (with either
  end in it), the switches that bound it (and any inside it), loads, generators, shunts, sources and
  measurements;
- ``feeder_id``: the feeder head switch supplying the bus (None if it is above the feeder heads or
  de-energized);
- ``topology_version``: the version of the topology that last changed this part. A topology change
  that leaves a device's section and feeder as they were keeps its part, version included, so the
  device's settings do not change and nothing is pushed to it.

The device's bus is its location's ``bus_id``, or else the bus of its ``element_id`` (a line's or a
switch's from-bus, a transformer's HV bus, a load's bus).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.iot.device_settings import GridPart, Location
from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import Topology, analyze_topology

__all__ = ["CaseGrid", "GridView", "LocationError"]

IntArray = npt.NDArray[np.int64]

_BUS_COLUMNS: Final = (
    ("line", ("from_bus", "to_bus")),
    ("transformer", ("hv_bus", "lv_bus")),
    ("switch", ("from_bus", "to_bus")),
    ("load", ("bus",)),
    ("generator", ("bus",)),
    ("shunt", ("bus",)),
    ("source", ("bus",)),
    ("measurement", ("bus",)),
)


class LocationError(ValueError):
    """A location that does not fit the case; ``field`` names the part (``location.bus_id``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True, eq=False)
class CaseGrid:
    """The configured case, its switches and the content of its switching sections."""

    model: GridModel
    aliases: frozenset[str]
    """Names a location's ``case`` may use: the configured name and the model's own."""
    initial: Topology
    switch_ids: frozenset[int]
    normally_closed: Mapping[int, bool]
    """The switch positions of the case file."""
    _element_ptr: IntArray
    _element_ids: IntArray
    _bus_rows: Mapping[int, int]
    """Row of each bus id in the per-bus arrays (a dict: one lookup per request, no numpy call)."""
    _cache: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @classmethod
    def build(cls, model: GridModel, *, case: str) -> CaseGrid:
        """Prepare ``model`` (topology analysis and section contents: CPU work, off the loop)."""
        topology = analyze_topology(model)
        n_sections = topology.n_sections
        sections: list[IntArray] = []
        ids: list[IntArray] = []
        for table_name, columns in _BUS_COLUMNS:
            table = model.table(table_name)
            for column in columns:
                rows = topology.bus_rows(table[column].astype(np.int64))
                ok = (table[column] != NO_ID) & (rows >= 0)
                sections.append(topology.section_of_bus[rows[ok]])
                ids.append(table["id"][ok].astype(np.int64))
        section = np.concatenate(sections) if sections else np.zeros(0, np.int64)
        element = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        pairs = np.unique(np.stack([section, element], axis=1), axis=0)
        ptr = np.zeros(n_sections + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[:, 0], minlength=n_sections), out=ptr[1:])
        switch = model.switch
        return cls(
            model=model,
            aliases=frozenset({case, model.name}),
            initial=topology,
            switch_ids=frozenset(int(i) for i in switch["id"]),
            normally_closed={
                int(i): bool(c) for i, c in zip(switch["id"], switch["closed"], strict=True)
            },
            _element_ptr=ptr,
            _element_ids=pairs[:, 1].astype(np.int64),
            _bus_rows={int(bus): row for row, bus in enumerate(topology.bus_ids.tolist())},
        )

    @property
    def name(self) -> str:
        return self.model.name

    def section_content(self, section: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Bus ids and element ids of a switching section (cached)."""
        content = self._cache.get(section)
        if content is None:
            buses = tuple(int(b) for b in self.initial.section_buses(section))
            lo, hi = self._element_ptr[section], self._element_ptr[section + 1]
            elements = tuple(int(e) for e in self._element_ids[lo:hi])
            content = self._cache[section] = (buses, elements)
        return content

    def check_location(self, location: Location) -> None:
        """LocationError if ``location`` names another case or ids the case does not have."""
        if location.case is not None and location.case not in self.aliases:
            raise LocationError(
                f"the catalog's grid model is '{self.name}', not '{location.case}'",
                field="location.case",
            )
        if location.bus_id is not None and self.bus_row(location.bus_id) < 0:
            raise LocationError(
                f"case '{self.name}' has no bus {location.bus_id}", field="location.bus_id"
            )
        if location.element_id is not None and (
            self.model.component_of(location.element_id) is None
        ):
            raise LocationError(
                f"case '{self.name}' has no component {location.element_id}",
                field="location.element_id",
            )

    def bus_of(self, location: Location) -> int | None:
        """The bus a location monitors (its bus, else its element's), None if there is none."""
        if location.bus_id is not None:
            return location.bus_id if self.bus_row(location.bus_id) >= 0 else None
        if location.element_id is None:
            return None
        for table_name, columns in _BUS_COLUMNS:
            table = self.model.table(table_name)
            rows = lookup(table["id"], [location.element_id])
            if rows[0] >= 0:
                bus = int(table[columns[0]][rows[0]])
                return bus if bus != NO_ID and self.bus_row(bus) >= 0 else None
        return None

    def view(self, closed: Mapping[int, bool], *, version: int) -> GridView:
        """The topology with switch positions ``closed`` (CPU work: call it off the event loop)."""
        if all(self.normally_closed[i] == c for i, c in closed.items()):
            topology = self.initial
        else:
            topology = analyze_topology(self.model.with_switch_states(closed))
        return GridView(case=self, topology=topology, version=version)

    def bus_row(self, bus_id: int) -> int:
        """Row of ``bus_id`` in the per-bus arrays of every topology of this case, -1 if none."""
        return self._bus_rows.get(bus_id, -1)


@dataclass(frozen=True, slots=True, eq=False)
class GridView:
    """The case at one topology version."""

    case: CaseGrid
    topology: Topology
    version: int

    def part(self, location: Location | None, *, previous: GridPart | None) -> GridPart | None:
        """The device's part of the grid; ``previous`` is kept if its content is unchanged."""
        if location is None:
            return None
        bus = self.case.bus_of(location)
        if bus is None:
            return None
        row = self.case.bus_row(bus)
        buses, elements = self.case.section_content(int(self.topology.section_of_bus[row]))
        feeder = int(self.topology.feeder_of_bus[row])
        part = GridPart(
            case=self.case.name,
            topology_version=self.version,
            feeder_id=feeder if feeder != NO_ID else None,
            bus_ids=buses,
            element_ids=elements,
        )
        if (
            previous is not None
            and previous.model_copy(update={"topology_version": self.version}) == part
        ):
            return previous
        return part
