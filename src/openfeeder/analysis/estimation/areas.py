"""Estimation areas of the hierarchical estimator (seed 003, section III-C): the grid cut by level.

:func:`partition_areas` splits the energized part of a grid, as its switches stand, into areas of
three levels, following the supply tree of :func:`~openfeeder.model.topology.analyze_topology`:

- **LV**: one per secondary (MV/LV) transformer that feeds its low-voltage side (rated below
  :data:`LV_MAX_KV`) from the medium-voltage side: the transformer and every bus supplied through
  it. Its *boundary bus* is the transformer's MV bus; name ``lv-<transformer id>``.
- **Concentrator**: inside an LV area, the customer nodes (leaf buses with a load) hanging from one
  LV feeder bus; the boundary bus is that feeder bus; name ``c-<feeder bus id>``.
- **MV**: per energized island, everything not in an LV area (the primary substation, the MV
  feeders, the MV buses of the secondary substations); no boundary; name ``mv-<first source id>``.

A boundary bus belongs to the parent area (it is estimated there, with its own appliances and
measurements); the child area starts below it. Each child area's branches are those with an end
it owns and both ends in its buses; closed branches that join two areas any other way (a loop
between LV areas) are listed in :attr:`AreaPartition.crossing_branch_ids`: the hierarchical
estimator refuses such a partition. Areas change when the switches do (FLISR moves secondary
substations from one MV area to another): :attr:`AreaPartition.fingerprint` tells two partitions
apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.estimation.locate import LocatedMeasurements, Target, branch_table
from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import Topology, analyze_topology

__all__ = ["LV_MAX_KV", "Area", "AreaPartition", "Level", "measurement_owner", "partition_areas"]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

LV_MAX_KV: Final = 1.0
"""Buses rated below this (line-to-line kV) are low voltage."""


class Level(StrEnum):
    """The estimator levels, bottom-up."""

    CONCENTRATOR = "concentrator"
    LV = "lv"
    MV = "mv"


LEVELS_BOTTOM_UP: Final = (Level.CONCENTRATOR, Level.LV, Level.MV)


@dataclass(frozen=True, slots=True, eq=False)
class Area:
    """One estimation area; ``bus_ids`` starts with the boundary bus (child areas)."""

    name: str
    level: Level
    index: int
    bus_ids: IntArray
    """The buses the area's estimate covers: its boundary bus first (if any), then its own."""
    boundary_bus_id: int
    """The bus it shares with its parent (:data:`NO_ID` for an MV area)."""
    parent: str | None
    children: tuple[str, ...]
    branch_ids: IntArray
    """Lines, transformers and switches of the area (closed or not)."""
    source_ids: IntArray
    """The model's sources in the area (MV areas)."""
    equivalent_id: int
    """Id of the equivalent load that stands for this area in its parent's estimate."""
    reference_id: int
    """Id of the reference source at the boundary bus in this area's own estimate."""
    equivalent_bus_id: int
    """Id of the equivalent's own bus in the parent's estimate (behind its equivalent line)."""
    equivalent_line_id: int
    """Id of the line from the boundary bus to the equivalent's bus in the parent's estimate."""

    @property
    def own_bus_ids(self) -> IntArray:
        """The buses the area owns (without the boundary bus)."""
        return self.bus_ids[1:] if self.boundary_bus_id != NO_ID else self.bus_ids

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "level": self.level.value,
            "boundary_bus": None if self.boundary_bus_id == NO_ID else self.boundary_bus_id,
            "parent": self.parent,
            "children": list(self.children),
            "buses": self.bus_ids.tolist(),
        }


@dataclass(frozen=True, slots=True, eq=False)
class AreaPartition:
    """The areas of one grid in one switching state, bottom-up (concentrators, LV, MV)."""

    case: str
    areas: tuple[Area, ...]
    bus_ids: IntArray
    """Bus ids in model order."""
    owner: IntArray
    """Per bus (model order): index of the area that owns it, -1 if de-energized."""
    branch_owner: IntArray
    """Per branch in :func:`~.locate.branch_table` order: owning area, -1 if none."""
    crossing_branch_ids: IntArray
    """Closed branches between two areas that are not a child's link to its boundary bus."""
    _by_name: dict[str, Area] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({a.name: a for a in self.areas})

    def area(self, name: str) -> Area:
        """The area called ``name``; KeyError naming it when there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no estimation area {name!r} in this partition") from None

    def names(self, level: Level | None = None) -> tuple[str, ...]:
        return tuple(a.name for a in self.areas if level is None or a.level is level)

    def area_of_bus(self, bus_id: int) -> str | None:
        rows = lookup(self.bus_ids, [bus_id])
        if rows[0] < 0 or self.owner[rows[0]] < 0:
            return None
        return self.areas[int(self.owner[rows[0]])].name

    @property
    def fingerprint(self) -> str:
        """A short hash of the areas, their buses and their parents."""
        digest = hashlib.sha256()
        for area in self.areas:
            digest.update(f"{area.name}|{area.parent}|".encode())
            digest.update(area.bus_ids.astype("<i8").tobytes())
        return digest.hexdigest()[:16]

    def as_dict(self) -> dict[str, object]:
        return {
            "case": self.case,
            "fingerprint": self.fingerprint,
            "areas": [a.as_dict() for a in self.areas],
        }


def partition_areas(
    model: GridModel, *, topology: Topology | None = None, lv_max_kv: float = LV_MAX_KV
) -> AreaPartition:
    """The estimation areas of ``model`` as its switches stand (see the module docstring)."""
    topo = analyze_topology(model) if topology is None else topology
    bus_ids = model.bus["id"].astype(np.int64)
    n = bus_ids.size
    low = model.bus["u_rated_kv"] < lv_max_kv
    owner_name = np.full(n, -1, dtype=np.int64)  # provisional keys into `specs`
    specs: list[tuple[str, Level, int, int]] = []  # name, level, boundary row, key for ids

    trafo = model.transformer
    hv = lookup(bus_ids, trafo["hv_bus"])
    lv = lookup(bus_ids, trafo["lv_bus"])
    feeds = (
        trafo["in_service"]
        & (lv >= 0)
        & (hv >= 0)
        & topo.energized[np.maximum(lv, 0)]
        & (topo.parent_branch[np.maximum(lv, 0)] == trafo["id"])
        & low[np.maximum(lv, 0)]
        & ~low[np.maximum(hv, 0)]
    )
    load = model.load[model.load["in_service"]]
    has_load = np.zeros(n, dtype=bool)
    has_load[lookup(bus_ids, load["bus"])] = True
    for row in np.flatnonzero(feeds).tolist():
        lv_row = int(lv[row])
        start = int(topo.order_index[lv_row])
        subtree = topo.order[start : start + int(topo.subtree_size[lv_row])]
        lv_key = len(specs)
        specs.append((f"lv-{int(trafo['id'][row])}", Level.LV, int(hv[row]), lv_key))
        owner_name[subtree] = lv_key
        leaves = subtree[(topo.subtree_size[subtree] == 1) & has_load[subtree]]
        leaves = leaves[leaves != lv_row]
        for parent_row in np.unique(topo.parent_bus[leaves]).tolist():
            key = len(specs)
            specs.append((f"c-{int(bus_ids[parent_row])}", Level.CONCENTRATOR, parent_row, key))
            owner_name[leaves[topo.parent_bus[leaves] == parent_row]] = key
    rest = topo.energized & (owner_name < 0)
    for island in np.unique(topo.island[rest]).tolist():
        sources = topo.island_sources(int(island))
        key = len(specs)
        specs.append((f"mv-{int(sources[0])}", Level.MV, -1, key))
        owner_name[rest & (topo.island == island)] = key

    # bottom-up order: concentrators, LV, MV; each level by name
    rank = {level: i for i, level in enumerate(LEVELS_BOTTOM_UP)}
    order = sorted(range(len(specs)), key=lambda k: (rank[specs[k][1]], specs[k][0]))
    index_of_key = np.empty(max(len(specs), 1), dtype=np.int64)
    index_of_key[np.array(order, dtype=np.int64)] = np.arange(len(order))
    owner = np.where(owner_name >= 0, index_of_key[np.maximum(owner_name, 0)], -1)

    branches = branch_table(model)
    f_owner = np.where(branches.from_row >= 0, owner[np.maximum(branches.from_row, 0)], -1)
    t_owner = np.where(branches.to_row >= 0, owner[np.maximum(branches.to_row, 0)], -1)
    boundary_row = np.array([specs[k][2] for k in order] or [0], dtype=np.int64)
    # a branch belongs to the area owning both ends, or to the child whose boundary bus is the
    # other end (its link to the parent)
    branch_owner = np.full(branches.id.size, -1, dtype=np.int64)
    same = (f_owner == t_owner) & (f_owner >= 0)
    branch_owner[same] = f_owner[same]
    if order:
        to_child = (t_owner >= 0) & (boundary_row[np.maximum(t_owner, 0)] == branches.from_row)
        from_child = (f_owner >= 0) & (boundary_row[np.maximum(f_owner, 0)] == branches.to_row)
        branch_owner[~same & to_child] = t_owner[~same & to_child]
        branch_owner[~same & from_child & ~to_child] = f_owner[~same & from_child & ~to_child]
    crossing = branches.connected & (branch_owner < 0) & (f_owner >= 0) & (t_owner >= 0)

    base = int(model.all_ids().max(initial=0)) + 1
    source_bus = lookup(bus_ids, model.source["bus"])
    source_on = model.source["in_service"] & (source_bus >= 0)
    areas: list[Area] = []
    names = [specs[k][0] for k in order]
    for index, key in enumerate(order):
        name, level, b_row, _ = specs[key]
        own = np.flatnonzero(owner == index)
        rows = own if b_row < 0 else np.concatenate([[b_row], own])
        parent = None if b_row < 0 else names[int(owner[b_row])]
        children = tuple(
            names[i]
            for i in range(len(order))
            if boundary_row[i] >= 0 and owner[boundary_row[i]] == index
        )
        sources = model.source["id"][source_on & np.isin(source_bus, own)].astype(np.int64)
        areas.append(
            Area(
                name=name,
                level=level,
                index=index,
                bus_ids=bus_ids[rows],
                boundary_bus_id=NO_ID if b_row < 0 else int(bus_ids[b_row]),
                parent=parent,
                children=children,
                branch_ids=branches.id[branch_owner == index],
                source_ids=sources if level is Level.MV else np.empty(0, dtype=np.int64),
                equivalent_id=base + index,
                reference_id=base + len(order) + index,
                equivalent_bus_id=base + 2 * len(order) + index,
                equivalent_line_id=base + 3 * len(order) + index,
            )
        )
    return AreaPartition(
        case=model.name,
        areas=tuple(areas),
        bus_ids=bus_ids,
        owner=owner,
        branch_owner=branch_owner,
        crossing_branch_ids=branches.id[crossing],
    )


def measurement_owner(partition: AreaPartition, located: LocatedMeasurements) -> IntArray:
    """Per located measurement: index of the area it belongs to (-1: de-energized or a crossing
    branch). Bus quantities and appliance powers go to the area owning the bus, branch
    quantities to the area owning the branch."""
    target = located.target
    out = np.where(located.bus_row >= 0, partition.owner[np.maximum(located.bus_row, 0)], -1)
    on_branch = target == Target.BRANCH
    out[on_branch] = partition.branch_owner[located.target_row[on_branch]]
    return out.astype(np.int64)
