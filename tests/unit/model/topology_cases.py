"""Small grid models for the topology tests, built row by row, and a generated large feeder tree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from openfeeder.model import GridModel, SwitchKind, empty_table, enum_code


def _table(
    name: str, rows: Sequence[tuple[int | bool, ...]], columns: tuple[str, ...]
) -> npt.NDArray[np.void]:
    """A table of ``len(rows)`` rows with ``columns`` taken from the tuples, defaults elsewhere."""
    table = empty_table(name, len(rows))
    for position, column in enumerate(columns):
        table[column] = [row[position] for row in rows]
    return table


@dataclass
class CaseBuilder:
    """Collects buses and elements; every ``add_*`` returns the new id (one id space)."""

    next_id: int = 1
    buses: list[int] = field(default_factory=list)
    lines: list[tuple[int, int, int, bool]] = field(default_factory=list)
    transformers: list[tuple[int, int, int, bool]] = field(default_factory=list)
    switches: list[tuple[int, int, int, SwitchKind, bool, bool]] = field(default_factory=list)
    sources: list[tuple[int, int, bool]] = field(default_factory=list)

    def _new_id(self) -> int:
        new = self.next_id
        self.next_id += 1
        return new

    def add_bus(self) -> int:
        bus = self._new_id()
        self.buses.append(bus)
        return bus

    def add_buses(self, count: int) -> list[int]:
        return [self.add_bus() for _ in range(count)]

    def add_line(self, from_bus: int, to_bus: int, *, in_service: bool = True) -> int:
        line = self._new_id()
        self.lines.append((line, from_bus, to_bus, in_service))
        return line

    def add_transformer(self, hv_bus: int, lv_bus: int, *, in_service: bool = True) -> int:
        trafo = self._new_id()
        self.transformers.append((trafo, hv_bus, lv_bus, in_service))
        return trafo

    def add_switch(
        self,
        from_bus: int,
        to_bus: int,
        kind: SwitchKind = SwitchKind.LOAD_BREAK,
        *,
        closed: bool = True,
        normally_open: bool = False,
    ) -> int:
        switch = self._new_id()
        self.switches.append((switch, from_bus, to_bus, kind, closed, normally_open))
        return switch

    def add_source(self, bus: int, *, in_service: bool = True) -> int:
        source = self._new_id()
        self.sources.append((source, bus, in_service))
        return source

    def build(self) -> GridModel:
        bus = empty_table("bus", len(self.buses))
        bus["id"] = self.buses
        bus["u_rated_kv"] = 10.0

        line = _table("line", self.lines, ("id", "from_bus", "to_bus", "in_service"))
        line["length_km"] = 1.0
        line["r1_ohm_per_km"] = 0.2
        line["x1_ohm_per_km"] = 0.1
        line["i_rated_ka"] = 0.3
        trafo = _table("transformer", self.transformers, ("id", "hv_bus", "lv_bus", "in_service"))
        trafo["sn_mva"] = 40.0
        trafo["u_hv_kv"] = 110.0
        trafo["u_lv_kv"] = 10.0
        trafo["uk_percent"] = 12.0
        switch = _table(
            "switch",
            [(i, a, b, enum_code(k), c, no) for i, a, b, k, c, no in self.switches],
            ("id", "from_bus", "to_bus", "kind", "closed", "normally_open"),
        )
        source = _table("source", self.sources, ("id", "bus", "in_service"))
        return GridModel(
            name="topology-test",
            bus=bus,
            line=line,
            transformer=trafo,
            switch=switch,
            source=source,
        )


@dataclass
class TwoFeederCase:
    """One substation, two feeders of three sections each, joined by a normally-open tie.

    ::

        source - hv =T= bb -B1- a1 -L- a2 -S1- a3 -L- a4 -S2- a5 -L- a6
                         |                                         |
                         +-B2- b1 -L- b2 -S3- b3 -L- b4 -S4- b5 -L- b6
                                                                   TIE (a6 - b6, open)
    """

    builder: CaseBuilder
    source: int
    hv: int
    busbar: int
    transformer: int
    breaker_a: int
    breaker_b: int
    a: list[int]
    b: list[int]
    lines_a: list[int]
    lines_b: list[int]
    sect_a: list[int]
    sect_b: list[int]
    tie: int

    def model(self) -> GridModel:
        return self.builder.build()


def two_feeders(*, tie_closed: bool = False) -> TwoFeederCase:
    cb = CaseBuilder()
    hv, busbar = cb.add_buses(2)
    source = cb.add_source(hv)
    transformer = cb.add_transformer(hv, busbar)
    a = cb.add_buses(6)
    b = cb.add_buses(6)
    breaker_a = cb.add_switch(busbar, a[0], SwitchKind.BREAKER)
    breaker_b = cb.add_switch(busbar, b[0], SwitchKind.BREAKER)
    lines_a = [cb.add_line(a[0], a[1]), cb.add_line(a[2], a[3]), cb.add_line(a[4], a[5])]
    lines_b = [cb.add_line(b[0], b[1]), cb.add_line(b[2], b[3]), cb.add_line(b[4], b[5])]
    sect_a = [cb.add_switch(a[1], a[2]), cb.add_switch(a[3], a[4], SwitchKind.RECLOSER)]
    sect_b = [cb.add_switch(b[1], b[2]), cb.add_switch(b[3], b[4])]
    tie = cb.add_switch(a[5], b[5], closed=tie_closed, normally_open=True)
    return TwoFeederCase(
        cb, source, hv, busbar, transformer, breaker_a, breaker_b, a, b, lines_a, lines_b,
        sect_a, sect_b, tie,
    )  # fmt: skip


@dataclass(frozen=True)
class LargeTree:
    model: GridModel
    expected_feeder: np.ndarray
    """Expected feeder head id per bus row (-1 on the busbar)."""


def large_feeder_tree(n_buses: int, n_feeders: int, *, seed: int = 0) -> LargeTree:
    """A substation busbar (row 0, with the source) and ``n_feeders`` random trees below breakers.

    Bus ``i`` of a feeder hangs below a random earlier bus of the same feeder, through a line or,
    one time in ten, through a closed switch (oriented either way); about a third of those switches
    are reclosers, which must not become feeder heads since a breaker is above them. Bus ids and
    element ids differ from row numbers.
    """
    rng = np.random.default_rng(seed)
    bus_row = np.arange(n_buses)
    feeder_of_row = np.concatenate([[-1], (bus_row[1:] - 1) % n_feeders])
    first_row = np.arange(1, n_feeders + 1)
    # Parent: a random earlier bus of the same feeder (feeder f has rows f+1, f+1+n_feeders, ...).
    position = (bus_row - 1) // n_feeders
    parent_position = (rng.random(n_buses) * np.maximum(position, 1)).astype(np.int64)
    parent_row = parent_position * n_feeders + feeder_of_row + 1
    parent_row[first_row] = 0
    parent_row[0] = -1

    child = bus_row[1:]
    is_switch = rng.random(child.size) < 0.1
    is_switch[first_row - 1] = True  # the breakers
    bus_ids = 10 * bus_row + 7  # ids not equal to rows
    n_elements = child.size
    element_ids = 10 * n_buses + 10 + np.arange(n_elements)

    bus = empty_table("bus", n_buses)
    bus["id"] = bus_ids
    bus["u_rated_kv"] = 10.0
    line_rows = np.flatnonzero(~is_switch)
    line = empty_table("line", line_rows.size)
    line["id"] = element_ids[line_rows]
    line["from_bus"] = bus_ids[parent_row[child[line_rows]]]
    line["to_bus"] = bus_ids[child[line_rows]]
    line["length_km"] = 0.1
    switch_rows = np.flatnonzero(is_switch)
    switch = empty_table("switch", switch_rows.size)
    switch["id"] = element_ids[switch_rows]
    # Reverse the orientation of half the switches: direction must not matter.
    flip = (switch_rows % 2).astype(bool)
    up = bus_ids[parent_row[child[switch_rows]]]
    down = bus_ids[child[switch_rows]]
    switch["from_bus"] = np.where(flip, down, up)
    switch["to_bus"] = np.where(flip, up, down)
    kind = np.full(switch_rows.size, enum_code(SwitchKind.LOAD_BREAK), dtype=np.int8)
    head_rows = first_row - 1
    is_head = np.isin(switch_rows, head_rows)
    kind[is_head] = enum_code(SwitchKind.BREAKER)
    # Reclosers deep in the feeders: below a breaker, so not heads.
    deep = ~is_head & (rng.random(switch_rows.size) < 0.3)
    kind[deep] = enum_code(SwitchKind.RECLOSER)
    switch["kind"] = kind
    source = empty_table("source", 1)
    source["id"] = 1
    source["bus"] = bus_ids[0]

    head_id_of_feeder = element_ids[head_rows]
    expected = np.where(feeder_of_row >= 0, head_id_of_feeder[feeder_of_row], -1)
    model = GridModel(name="large-tree", bus=bus, line=line, switch=switch, source=source)
    return LargeTree(model=model, expected_feeder=expected)
