"""Service restoration (SRES): the switching plan that brings back the most healthy load.

After isolation the faulted zone is dead and locked out; the healthy part of the grid that lost
supply with it (the *outage area*) is to be re-energized: the part upstream of the fault by
reclosing the tripped feeder switch, the parts downstream through normally-open ties from other
feeders. :func:`plan_restoration` computes the plan; :func:`plan_flisr` runs isolation and
restoration in one call.

Zones and the outage area
    The plan works on the zones of :func:`~openfeeder.analysis.flisr.isolation.switching_zones`
    with the operable switches (remote controllable, not unavailable, not locked out). The outage
    area is the set of dead zones joined, through dead zones, closed switches and open switches
    that are normally closed and operable, to the isolated zone or to an energized zone across
    such an open switch (zones an earlier plan cut off). Dead zones behind a normally-open tie, or
    behind an open switch that cannot be operated (a section out for work, its switches tagged
    ``unavailable``), belong to something else and are left alone.
    A *supply switch* is an operable open switch between the outage area and an energized zone
    (the tripped breaker, a tie); an *inner switch* is an operable switch with both ends in it.

Objective
    Maximize the restored weight, the sum over the restored loads of ``customers x factor``, where
    the factor grows with the load's priority: :data:`PRIORITY_WEIGHT` = 1, 2, 5, 20 for priority 0
    (normal), 1, 2 and 3 (critical: a hospital section outweighs a street of households, but not a
    whole feeder). Among plans of equal weight, the one with the fewest switching operations wins
    (then a fixed order of switch ids). Loads supplied now stay supplied: the plan never sheds a
    customer who has power to make room for another.

Constraints
    Radial operation: every energized island is a tree fed by one source; each restored part hangs
    on exactly one supply switch. Limits from a power flow of the final configuration
    (:class:`RestorationLimits`): bus voltages within ``v_min_pu`` .. ``v_max_pu`` (0.90 .. 1.10 pu,
    the EN 50160 band for medium voltage, which an emergency configuration may use in full) and
    currents of lines, transformers and rated switches at most ``max_loading`` (1.0) of their
    rating. An element already outside a limit before restoration may go further out only by a
    small slack (``slack_u_pu``, ``slack_loading``): restoring load anywhere on an island moves
    every voltage on it a little through the substation transformer, and a strict "no worse" rule
    would forbid any restoration next to one overloaded cable. Generation that lost the grid (in
    the outage area, or in a part a transfer interrupts) is off in these power flows: grid codes
    let it reconnect only a minute or more after the supply returns, so the restored part first
    carries its whole load. ``load_p_mw`` is where a cold-load pickup factor goes.

Moves
    Each restored part is a connected set of zones that one supply switch feeds; inner switches
    open where two parts or a part and a shed zone meet (shedding, when capacity is short) and
    close where a part needs them. A *transfer* opens a closed operable switch of an energized
    feeder: the zones below it join the pool to re-energize, with the constraint that all of them
    come back (through another tie, or from the restored part itself). Candidate switches are those
    of each feeder that holds the energized end of a supply switch, the path from that end up to
    the source first, whose part could be fed again (an open operable switch leads from it to an
    energized zone or into the outage area); and (depth 2) the same in the feeders at the far end
    of the ties leaving such a part. Plans combine up to two transfers and as many ties as there
    are.

Search
    Every assignment of pool zones to supply switches is listed per connected piece of the pool
    (the pieces are few zones: remote switches are sparse, and branches that must come back whole
    are merged first), with its weight and operation count known without a power flow. Candidates
    are visited best first (weight down, operations up) and checked with power-grid-model, one
    batch of candidates per call: first without transfers, then only the transfer sets whose bound
    (the weight their pieces could reach, one opening per transfer and one closing per piece) could
    beat the plan found. When a candidate violates a limit, every candidate that loads the same
    place with at least the same zones is dropped unchecked: below an overloaded branch when the
    overload holds even at the highest voltage the branch could see, on the whole island otherwise
    (voltage violations). This rests on one assumption, that more restored zones mean more load
    (true for consumption; generation is off, see above). The first candidate that passes is
    optimal for the moves above. When a piece has too many assignments to list
    (:data:`MAX_ASSIGNMENTS`), its terminal-free branches are taken or shed whole; when the
    power-flow budget runs out during the transfer search, the plan without transfers is kept;
    ``optimal`` is False then.

Execution order
    Opening before closing (no paralleling of feeders), part by part: the part behind the tripped
    breaker first (its openings, then the reclosing), then the parts that take over transferred
    zones, then the other parts, largest weight first. For each part: the transfer openings and the
    inner openings next to it, the inner closings inside it, then its supply switch. Every
    intermediate state is radial and carries a subset of the final load on each feeder; the
    zones a transfer moves are without supply from their opening to their part's closing.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt
from power_grid_model import CalculationMethod, ComponentType, PowerGridModel
from power_grid_model.errors import PowerGridError  # type: ignore[attr-defined]

from openfeeder.analysis.engine_input import to_engine_input
from openfeeder.analysis.flisr.isolation import (
    FlisrInputError,
    IsolationPlan,
    SwitchingZones,
    bus_rows,
    plan_isolation,
    switch_rows,
    switching_zones,
)
from openfeeder.errors import AnalysisError
from openfeeder.model.components import SwitchKind, enum_code
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "DEFAULT_MAX_POWER_FLOWS",
    "MAX_ASSIGNMENTS",
    "PRIORITY_WEIGHT",
    "FlisrPlan",
    "OperationPurpose",
    "PlannedOperation",
    "PowerFlowCheck",
    "RestorationLimits",
    "RestorationPlan",
    "RestoredPart",
    "load_weights",
    "plan_flisr",
    "plan_restoration",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

PRIORITY_WEIGHT: Final = (1, 2, 5, 20)
"""Weight factor per customer for load priority 0 (normal) .. 3 (critical)."""

MAX_ASSIGNMENTS: Final = 4096
"""Assignments listed per connected piece of the outage area before branches are taken whole."""

DEFAULT_MAX_POWER_FLOWS: Final = 96
"""Power-flow scenarios the search may solve (about 0.6 ms each at 1,000 buses, in batches)."""

_TOLERANCE: Final = 1e-6
_HEAD_KINDS: Final = (enum_code(SwitchKind.BREAKER), enum_code(SwitchKind.RECLOSER))


@dataclass(frozen=True, slots=True)
class RestorationLimits:
    """Operating limits a restored configuration must meet (see the module docstring)."""

    v_min_pu: float = 0.90
    v_max_pu: float = 1.10
    max_loading: float = 1.0
    """Highest current as a fraction of the rating (1.0 = 100 %)."""
    slack_u_pu: float = 0.01
    """How much further a bus already outside the voltage band may go."""
    slack_loading: float = 0.02
    """How much further (fraction of the rating) an element already overloaded may go."""

    def __post_init__(self) -> None:
        if not 0.0 < self.v_min_pu < self.v_max_pu:
            raise ValueError(f"need 0 < v_min_pu < v_max_pu, got {self.v_min_pu}, {self.v_max_pu}")
        if not self.max_loading > 0.0:
            raise ValueError(f"max_loading must be positive, got {self.max_loading}")


class OperationPurpose(StrEnum):
    """Why a switch is operated in a restoration plan."""

    RECLOSE = "reclose"
    """Close the tripped feeder switch: the part upstream of the fault comes back."""
    RESTORE = "restore"
    """Close a supply switch (a tie) into the outage area."""
    CONNECT = "connect"
    """Close an inner switch to join zones of one restored part."""
    SECTIONALIZE = "sectionalize"
    """Open between two parts restored from different supplies."""
    SHED = "shed"
    """Open between a restored part and healthy zones left dead (capacity short)."""
    TRANSFER_OPEN = "transfer_open"
    """Open in a healthy feeder to move the part beyond to another feeder."""
    TRANSFER_CLOSE = "transfer_close"
    """Close the switch that takes over the moved part."""


@dataclass(frozen=True, slots=True)
class PlannedOperation:
    """One switching operation of a plan."""

    switch_id: int
    action: Literal["open", "close"]
    purpose: OperationPurpose

    def as_dict(self) -> dict[str, object]:
        return {"switch": self.switch_id, "action": self.action, "purpose": self.purpose.value}


@dataclass(frozen=True, slots=True)
class RestoredPart:
    """A part of the outage area re-energized through one supply switch."""

    supply_switch_id: int
    bus_ids: tuple[int, ...]
    load_ids: tuple[int, ...]
    customers: int
    p_mw: float

    def as_dict(self) -> dict[str, object]:
        return {
            "supply_switch": self.supply_switch_id,
            "bus_ids": list(self.bus_ids),
            "load_ids": list(self.load_ids),
            "customers": self.customers,
            "p_mw": self.p_mw,
        }


@dataclass(frozen=True, slots=True)
class PowerFlowCheck:
    """Extremes of the final configuration's power flow, and the search effort."""

    min_u_pu: float
    min_u_bus_id: int
    max_u_pu: float
    max_u_bus_id: int
    max_loading: float
    """Highest current as a fraction of the rating, over lines, transformers and rated switches."""
    max_loading_branch_id: int
    power_flows: int
    """Scenarios solved during the search, the present state included."""

    def as_dict(self) -> dict[str, object]:
        return {
            "min_u_pu": self.min_u_pu,
            "min_u_bus_id": self.min_u_bus_id,
            "max_u_pu": self.max_u_pu,
            "max_u_bus_id": self.max_u_bus_id,
            "max_loading": self.max_loading,
            "max_loading_branch_id": self.max_loading_branch_id,
            "power_flows": self.power_flows,
        }


@dataclass(frozen=True, slots=True)
class RestorationPlan:
    """Result of :func:`plan_restoration`.

    ``operations`` are in execution order; isolation openings are not repeated. Loads are those of
    the outage area and the isolated zone only. ``objective`` is the restored weight,
    ``max_objective`` the weight of all healthy load in the outage area. ``optimal`` is False when
    the search had to limit itself (see the module docstring). ``final_switch_states`` maps every
    switch id to its final position (True: closed).
    """

    operations: tuple[PlannedOperation, ...]
    parts: tuple[RestoredPart, ...]
    restored_load_ids: tuple[int, ...]
    unserved_load_ids: tuple[int, ...]
    restored_customers: int
    unserved_customers: int
    restored_mw: float
    unserved_mw: float
    shed_bus_ids: tuple[int, ...]
    objective: int
    max_objective: int
    optimal: bool
    check: PowerFlowCheck
    final_switch_states: Mapping[int, bool] = field(repr=False)

    @property
    def operation_count(self) -> int:
        return len(self.operations)

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready data (switch states keyed by the id as a string)."""
        return {
            "operations": [op.as_dict() for op in self.operations],
            "parts": [p.as_dict() for p in self.parts],
            "restored_load_ids": list(self.restored_load_ids),
            "unserved_load_ids": list(self.unserved_load_ids),
            "restored_customers": self.restored_customers,
            "unserved_customers": self.unserved_customers,
            "restored_mw": self.restored_mw,
            "unserved_mw": self.unserved_mw,
            "shed_bus_ids": list(self.shed_bus_ids),
            "objective": self.objective,
            "max_objective": self.max_objective,
            "optimal": self.optimal,
            "check": self.check.as_dict(),
            "final_switch_states": {str(k): v for k, v in self.final_switch_states.items()},
        }


@dataclass(frozen=True, slots=True)
class FlisrPlan:
    """Isolation and restoration for one fault (:func:`plan_flisr`)."""

    isolation: IsolationPlan
    restoration: RestorationPlan

    def as_dict(self) -> dict[str, object]:
        restoration = self.restoration
        return {
            "faulted_section": list(self.isolation.isolated_bus_ids),
            "faulted_bus_ids": list(self.isolation.faulted_bus_ids),
            "isolation": list(self.isolation.open_switch_ids),
            "lockout": list(self.isolation.lockout_switch_ids),
            "restoration": [
                {"switch": op.switch_id, "action": op.action, "purpose": op.purpose.value}
                for op in restoration.operations
            ],
            "restored_customers": restoration.restored_customers,
            "unserved_customers": restoration.unserved_customers,
            "restored_mw": restoration.restored_mw,
            "unserved_mw": restoration.unserved_mw,
            "shed_bus_ids": list(restoration.shed_bus_ids),
            "objective": restoration.objective,
            "optimal": restoration.optimal,
            "check": restoration.check.as_dict(),
            "isolation_plan": self.isolation.as_dict(),
        }


def load_weights(model: GridModel) -> IntArray:
    """Restoration weight of every load: customers x :data:`PRIORITY_WEIGHT` of its priority.

    Loads out of service weigh nothing; priorities outside 0..3 are clipped.
    """
    load = model.load
    factor = np.asarray(PRIORITY_WEIGHT, dtype=np.int64)[np.clip(load["priority"], 0, 3)]
    weight: IntArray = np.where(load["in_service"], load["customers"].astype(np.int64) * factor, 0)
    return weight


def plan_flisr(
    model: GridModel,
    faulted_bus_ids: Sequence[int],
    *,
    tripped_breaker: int | None,
    unavailable: Collection[int] = (),
    limits: RestorationLimits = RestorationLimits(),
    load_p_mw: npt.ArrayLike | None = None,
    load_q_mvar: npt.ArrayLike | None = None,
) -> FlisrPlan:
    """Isolation of the faulted zone, then restoration of the healthy part around it."""
    isolation = plan_isolation(
        model, faulted_bus_ids, unavailable=unavailable, tripped_breaker=tripped_breaker
    )
    restoration = plan_restoration(
        model,
        isolation,
        tripped_breaker=tripped_breaker,
        unavailable=unavailable,
        limits=limits,
        load_p_mw=load_p_mw,
        load_q_mvar=load_q_mvar,
    )
    return FlisrPlan(isolation=isolation, restoration=restoration)


def plan_restoration(
    model: GridModel,
    isolation: IsolationPlan,
    *,
    tripped_breaker: int | None,
    unavailable: Collection[int] = (),
    limits: RestorationLimits = RestorationLimits(),
    load_p_mw: npt.ArrayLike | None = None,
    load_q_mvar: npt.ArrayLike | None = None,
    max_power_flows: int = DEFAULT_MAX_POWER_FLOWS,
) -> RestorationPlan:
    """The switching plan that restores the most weighted healthy load (module docstring).

    ``model`` is the grid as it is now; the isolation's openings are applied to it if they are not
    yet. ``tripped_breaker`` is the switch that cleared the fault (reclosed first when it can be).
    ``unavailable`` switches are not operated. ``load_p_mw`` and ``load_q_mvar`` (one value per
    load, model order) replace the model's load values, e.g. with the present estimate. The search
    solves at most ``max_power_flows`` power-flow scenarios; when they run out it keeps the best
    plan without transfers (or, if even that search ran out, restores nothing), with ``optimal``
    False.
    """
    problem = _Problem.build(
        model,
        isolation,
        tripped_breaker=tripped_breaker,
        unavailable=unavailable,
        limits=limits,
        load_p_mw=load_p_mw,
        load_q_mvar=load_q_mvar,
    )
    return _Search(problem, max_power_flows=max_power_flows).run()


# --------------------------------------------------------------------------------------------
# The problem: zones, outage area, supply tree, transfer candidates

_MAX_RELEASES: Final = 16
"""Feeder switches considered for transfers (nearest the outage area first)."""
_MAX_RELEASE_SET: Final = 2
"""Transfers combined in one plan."""


@dataclass(frozen=True, slots=True)
class _Option:
    """One assignment of a piece of the pool to its supply switches."""

    weight: int
    ops: int
    parts: tuple[tuple[int, frozenset[int]], ...]
    """(supply switch row, zones) per part."""
    opens: tuple[tuple[int, bool], ...]
    """(inner switch row, one side stays dead) to open."""
    closes: tuple[tuple[int, int], ...]
    """(inner switch row, supply switch row of its part) to close."""


@dataclass(frozen=True, slots=True)
class _Pool:
    """The zones to (re-)energize for one set of released feeder switches, in pieces."""

    release: tuple[int, ...]
    pieces: tuple[tuple[_Option, ...], ...]
    complete: bool


@dataclass(frozen=True, slots=True)
class _PoolShape:
    """Pieces of a pool before their assignments are listed (enough for a bound)."""

    zones: frozenset[int]
    mandatory: frozenset[int]
    pieces: tuple[tuple[frozenset[int], tuple[int, ...]], ...]
    """(zones, supply switch rows) per piece that has a supply."""
    feasible: bool
    """Every released zone lies in a piece with a supply."""


class _Problem:
    """Everything the search needs, computed once from the model and the isolation plan."""

    model: GridModel
    limits: RestorationLimits
    zones: SwitchingZones
    closed0: BoolArray
    outage: BoolArray
    isolated: BoolArray
    gain: IntArray
    """Weight of each outage zone, 0 elsewhere."""
    load_zone: IntArray
    load_p_mw: FloatArray
    tripped_row: int
    adjacency: list[list[tuple[int, int]]]
    """Per zone: (other zone, switch row) over operable switches, open or closed."""
    parent: IntArray
    parent_switch: IntArray
    tin: IntArray
    tout: IntArray
    by_tin: IntArray
    releases: list[int]
    releases_capped: bool
    _shapes: dict[tuple[int, ...], _PoolShape]
    _pools: dict[tuple[int, ...], _Pool | None]
    _assignments: dict[tuple[object, ...], tuple[tuple[_Option, ...], bool]]

    @classmethod
    def build(
        cls,
        model: GridModel,
        isolation: IsolationPlan,
        *,
        tripped_breaker: int | None,
        unavailable: Collection[int],
        limits: RestorationLimits,
        load_p_mw: npt.ArrayLike | None,
        load_q_mvar: npt.ArrayLike | None,
    ) -> _Problem:
        self = cls()
        self.limits = limits
        switch = model.switch
        isolated_rows = bus_rows(model, isolation.isolated_bus_ids)
        lockout_rows = switch_rows(model, isolation.lockout_switch_ids)
        blocked_rows = switch_rows(model, unavailable)
        self.tripped_row = -1
        if tripped_breaker is not None:
            self.tripped_row = int(switch_rows(model, [tripped_breaker])[0])
        closed = switch["closed"].astype(np.bool_)
        closed[switch_rows(model, isolation.open_switch_ids)] = False
        still_closed = lockout_rows[closed[lockout_rows]]
        if still_closed.size:
            bad = int(switch["id"][still_closed[0]])
            raise FlisrInputError(
                f"switch {bad} bounds the isolated zone but is closed: isolation is incomplete",
                component="switch",
                component_id=bad,
            )
        self.model = _study_model(model, closed, isolated_rows, load_p_mw, load_q_mvar)
        self.closed0 = closed
        self.load_p_mw = self.model.load["p_mw"].astype(np.float64)

        operable = switch["remote_controllable"].astype(np.bool_)
        operable[blocked_rows] = False
        # the outage reaches through switches opened since the trip that FLISR itself may operate
        joins = closed | (operable & ~switch["normally_open"])
        operable[lockout_rows] = False
        zones = switching_zones(self.model, operable)
        self.zones = zones
        self.isolated = np.zeros(zones.n_zones, dtype=np.bool_)
        self.isolated[zones.zone_of_bus[isolated_rows]] = True
        self.outage = _outage_area(zones, self.isolated, joins)

        load = self.model.load
        load_bus = lookup(self.model.bus["id"], load["bus"])
        self.load_zone = np.where(load_bus >= 0, zones.zone_of_bus[np.maximum(load_bus, 0)], -1)
        weight = np.where(load_bus >= 0, load_weights(self.model), 0)
        has_zone = self.load_zone >= 0
        zone_weight = np.bincount(
            self.load_zone[has_zone], weights=weight[has_zone], minlength=zones.n_zones
        ).astype(np.int64)
        self.gain = np.where(self.outage, zone_weight, 0)

        self.adjacency = [[] for _ in range(zones.n_zones)]
        rows = zones.edge_rows()
        for r, (a, b) in zip(rows.tolist(), zones.switch_zone[rows].tolist(), strict=True):
            self.adjacency[a].append((b, r))
            self.adjacency[b].append((a, r))
        self.parent, self.parent_switch, self.tin, self.tout = _zone_tree(
            zones, zones.operable & closed
        )
        reached = np.flatnonzero(self.tin >= 0)
        self.by_tin = np.zeros(int(self.tin.max(initial=-1)) + 1, dtype=np.int64)
        self.by_tin[self.tin[reached]] = reached
        self.releases, self.releases_capped = self._release_candidates()
        self._shapes = {}
        self._pools = {}
        self._assignments = {}
        return self

    def subtree(self, row: int) -> IntArray:
        """Zones below feeder switch ``row`` in the present supply tree."""
        return self._below(self.child(row))

    def child(self, row: int) -> int:
        """The zone below feeder switch ``row`` in the present supply tree."""
        a, b = (int(z) for z in self.zones.switch_zone[row])
        return a if self.parent_switch[a] == row else b

    def _supplies(self, pool: BoolArray, release: Collection[int]) -> list[int]:
        """Operable switches from the pool to an energized zone outside it (not released ones)."""
        zones = self.zones
        rows = zones.edge_rows()
        ends = zones.switch_zone[rows]
        inside = pool[ends]
        live = zones.zone_energized[ends] & ~inside
        mask = (inside[:, 0] & live[:, 1]) | (inside[:, 1] & live[:, 0])
        return [r for r in rows[mask].tolist() if r not in release]

    def _release_candidates(self) -> tuple[list[int], bool]:
        """Feeder switches whose opening could make room or open a path, nearest first.

        Depth 1: in each feeder holding the energized end of a supply switch, the switches on the
        path from that end up to the source, then every other switch of the feeder, provided the
        part below it could be fed again (an open operable switch leads from it to an energized
        zone or into the outage area). Depth 2: the same in the feeders at the far end of the ties
        that leave a depth-1 part.
        """
        found: list[int] = []
        frontier = [self._live_end(r) for r in self._supplies(self.outage, ())]
        for _ in range(_MAX_RELEASE_SET):
            added: list[int] = []
            heads: list[int] = []
            for start in frontier:
                z = start
                while self.parent[z] >= 0:
                    added.append(int(self.parent_switch[z]))
                    if self.parent[self.parent[z]] < 0 and z not in heads:
                        heads.append(z)  # the first zone of the feeder, below the source zone
                    z = int(self.parent[z])
            for head in heads:
                added += [int(self.parent_switch[z]) for z in self._below(head)]
            added = [s for s in dict.fromkeys(added) if s not in found and self._exits(s)]
            found += added
            frontier = [
                o
                for s in added
                for o in self._exits(s)
                if self.zones.zone_energized[o] and not self.outage[o]
            ]
        return found[:_MAX_RELEASES], len(found) > _MAX_RELEASES

    def _below(self, zone: int) -> IntArray:
        """Zones under ``zone`` in the present supply tree, itself included, in preorder."""
        return self.by_tin[self.tin[zone] : self.tout[zone]]

    def _exits(self, row: int) -> list[int]:
        """Zones outside the part below feeder switch ``row`` that an open operable switch from
        inside the part reaches, energized or in the outage area: where the part could be fed
        from once ``row`` opens."""
        child = self.child(row)
        lo, hi = self.tin[child], self.tout[child]
        out: list[int] = []
        for z in self._below(child).tolist():
            for other, r in self.adjacency[z]:
                if r == row or self.closed0[r] or lo <= self.tin[other] < hi:
                    continue
                if self.zones.zone_energized[other] or self.outage[other]:
                    out.append(other)
        return out

    def _live_end(self, row: int) -> int:
        a, b = (int(z) for z in self.zones.switch_zone[row])
        return a if self.zones.zone_energized[a] else b

    def release_sets(self, size: int) -> list[tuple[int, ...]]:
        """Sets of ``size`` release candidates, none below another."""
        out = []
        for combo in itertools.combinations(self.releases, size):
            children = [self.child(s) for s in combo]
            nested = any(
                self.tin[a] <= self.tin[b] < self.tout[a]
                for a, b in itertools.permutations(children, 2)
            )
            if not nested:
                out.append(combo)
        return out

    def shape(self, release: tuple[int, ...]) -> _PoolShape:
        """The pool of ``release`` cut into pieces, with their supply switches."""
        if release in self._shapes:
            return self._shapes[release]
        zones = self.zones
        pool = self.outage.copy()
        mandatory = np.zeros(zones.n_zones, dtype=np.bool_)
        for s in release:
            mandatory[self.subtree(s)] = True
        pool |= mandatory
        supplies = self._supplies(pool, release)
        pieces = []
        feasible = True
        seen: set[int] = set()
        inner = {
            z: [(o, r) for o, r in self.adjacency[z] if pool[o] and r not in release]
            for z in np.flatnonzero(pool).tolist()
        }
        for start in np.flatnonzero(pool).tolist():
            if start in seen:
                continue
            piece = frozenset(_reachable(inner, start))
            seen |= piece
            fed = tuple(r for r in supplies if any(int(z) in piece for z in zones.switch_zone[r]))
            if fed:
                pieces.append((piece, fed))
            elif mandatory[list(piece)].any():
                feasible = False
        shape = _PoolShape(
            zones=frozenset(np.flatnonzero(pool).tolist()),
            mandatory=frozenset(np.flatnonzero(mandatory).tolist()),
            pieces=tuple(pieces),
            feasible=feasible,
        )
        self._shapes[release] = shape
        return shape

    def bound(self, release: tuple[int, ...]) -> tuple[int, int] | None:
        """Most weight and fewest operations any plan with these transfers could have."""
        shape = self.shape(release)
        if not shape.feasible:
            return None
        weight = 0
        needed = len(release)
        for piece, _ in shape.pieces:
            gain = int(self.gain[list(piece)].sum())
            weight += gain
            needed += bool(gain or piece & shape.mandatory)
        return weight, needed

    def pool(self, release: tuple[int, ...]) -> _Pool | None:
        """The pool of ``release`` with every assignment of each piece, best first."""
        if release in self._pools:
            return self._pools[release]
        shape = self.shape(release)
        result: _Pool | None = None
        if shape.feasible:
            pieces = []
            complete = True
            for piece, fed in shape.pieces:
                mandatory = piece & shape.mandatory
                key = (piece, fed, mandatory)
                if key not in self._assignments:
                    self._assignments[key] = _assignments(self, piece, list(fed), mandatory)
                options, done = self._assignments[key]
                complete &= done
                if not options:
                    break
                pieces.append(options)
            else:
                result = _Pool(release=release, pieces=tuple(pieces), complete=complete)
        self._pools[release] = result
        return result


def _study_model(
    model: GridModel,
    closed: BoolArray,
    isolated_rows: IntArray,
    load_p_mw: npt.ArrayLike | None,
    load_q_mvar: npt.ArrayLike | None,
) -> GridModel:
    """The model after isolation: sources in the isolated zone off, loads as given."""
    switch = model.switch.copy()
    switch["closed"] = closed
    changes: dict[str, object] = {"switch": switch}
    source = model.source
    inside = np.isin(lookup(model.bus["id"], source["bus"]), isolated_rows)
    if inside.any():
        source = source.copy()
        source["in_service"][inside] = False
        changes["source"] = source
    if load_p_mw is not None or load_q_mvar is not None:
        load = model.load.copy()
        n = load.size
        if load_p_mw is not None:
            p = np.asarray(load_p_mw, dtype=np.float64)
            if p.shape != (n,):
                raise AnalysisError(f"load_p_mw must have shape ({n},), got {p.shape}")
            ratio = np.divide(
                load["q_mvar"], load["p_mw"], out=np.zeros(n), where=load["p_mw"] != 0
            )
            load["p_mw"] = p
            load["q_mvar"] = p * ratio
        if load_q_mvar is not None:
            q = np.asarray(load_q_mvar, dtype=np.float64)
            if q.shape != (n,):
                raise AnalysisError(f"load_q_mvar must have shape ({n},), got {q.shape}")
            load["q_mvar"] = q
        changes["load"] = load
    return model.replace(**changes)


def _outage_area(zones: SwitchingZones, isolated: BoolArray, joins: BoolArray) -> BoolArray:
    """Dead zones reached through dead zones and ``joins`` switches from the isolated zone, or
    from a dead zone that an open ``joins`` switch separates from an energized one (cut off by an
    earlier plan: a transfer whose closing failed, a shed part)."""
    sz = zones.switch_zone
    dead = ~zones.zone_energized
    valid = (sz[:, 0] >= 0) & (sz[:, 1] >= 0)
    safe = np.maximum(sz, 0)
    joins = joins & valid
    links = joins & dead[safe[:, 0]] & dead[safe[:, 1]]
    adjacency: dict[int, list[tuple[int, int]]] = {}
    for r in np.flatnonzero(links).tolist():
        a, b = int(sz[r, 0]), int(sz[r, 1])
        adjacency.setdefault(a, []).append((b, r))
        adjacency.setdefault(b, []).append((a, r))
    cut_off = joins & ~zones.closed & (dead[safe[:, 0]] != dead[safe[:, 1]])
    seeds = set(np.flatnonzero(isolated).tolist())
    seeds |= {int(z) for z in sz[cut_off].ravel() if dead[z]}
    reached: set[int] = set()
    for start in sorted(seeds):
        if start not in reached:
            reached |= _reachable(adjacency, start)
    out = np.zeros(zones.n_zones, dtype=np.bool_)
    out[list(reached)] = True
    out &= dead & ~isolated
    return out


def _reachable(adjacency: Mapping[int, list[tuple[int, int]]], start: int) -> set[int]:
    seen = {start}
    stack = [start]
    while stack:
        for other, _ in adjacency.get(stack.pop(), []):
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return seen


def _zone_tree(
    zones: SwitchingZones, closed_edges: BoolArray
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Parent zone, parent switch and Euler-tour interval [tin, tout) of each zone.

    Depth first from the source zones over ``closed_edges``; zones not reached keep -1.
    """
    n = zones.n_zones
    adjacency: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    rows = np.flatnonzero(closed_edges & zones.operable)
    for r, (a, b) in zip(rows.tolist(), zones.switch_zone[rows].tolist(), strict=True):
        adjacency[a].append((b, r))
        adjacency[b].append((a, r))
    parent = np.full(n, -1, dtype=np.int64)
    parent_switch = np.full(n, -1, dtype=np.int64)
    tin = np.full(n, -1, dtype=np.int64)
    tout = np.full(n, -1, dtype=np.int64)
    clock = 0
    for root in np.flatnonzero(zones.zone_source).tolist():
        if tin[root] >= 0:
            continue
        tin[root] = clock
        clock += 1
        stack: list[tuple[int, Iterator[tuple[int, int]]]] = [(root, iter(adjacency[root]))]
        while stack:
            zone, children = stack[-1]
            for other, r in children:
                if tin[other] < 0:
                    parent[other], parent_switch[other] = zone, r
                    tin[other] = clock
                    clock += 1
                    stack.append((other, iter(adjacency[other])))
                    break
            else:
                tout[zone] = clock
                stack.pop()
    return parent, parent_switch, tin, tout


# --------------------------------------------------------------------------------------------
# Assignments of one piece of the pool


def _assignments(
    problem: _Problem, piece: frozenset[int], supplies: list[int], mandatory: frozenset[int]
) -> tuple[tuple[_Option, ...], bool]:
    """Every assignment of ``piece`` to ``supplies`` covering ``mandatory``, best first.

    False as second value when terminal-free branches had to be taken whole (too many).
    """
    supply_zone = {
        s: next(int(z) for z in problem.zones.switch_zone[s] if int(z) in piece) for s in supplies
    }
    adjacency = {z: [(o, r) for o, r in problem.adjacency[z] if o in piece] for z in piece}
    supplies.sort(key=lambda r: (r != problem.tripped_row, int(problem.model.switch["id"][r])))
    raw = None
    complete = True
    for lossy in (False, True):
        units = _units(adjacency, piece, set(supply_zone.values()), mandatory, lossy=lossy)
        limit = MAX_ASSIGNMENTS * (16 if lossy else 1)
        raw = _enumerate(
            adjacency, units, supplies, supply_zone=supply_zone, mandatory=mandatory, limit=limit
        )
        if raw is not None:
            break
        complete = False
    closed = problem.closed0
    sz = problem.zones.switch_zone
    edges = sorted({r for z in piece for _, r in adjacency[z]})
    options: list[_Option] = []
    for assignment in raw or []:
        label = {z: s for s, zone_set in assignment for z in zone_set}
        opens: list[tuple[int, bool]] = []
        closes: list[tuple[int, int]] = []
        for s, zone_set in assignment:
            closes.extend((r, s) for r in _connecting(zone_set, adjacency, closed, opens))
        for r in edges:
            la, lb = label.get(int(sz[r, 0]), -1), label.get(int(sz[r, 1]), -1)
            if closed[r] and la != lb:
                opens.append((r, la < 0 or lb < 0))
        options.append(
            _Option(
                weight=sum(int(problem.gain[list(zs)].sum()) for _, zs in assignment),
                ops=len(assignment) + len(opens) + len(closes),
                parts=tuple(assignment),
                opens=tuple(sorted(set(opens))),
                closes=tuple(closes),
            )
        )
    switch_ids = problem.model.switch["id"]
    options.sort(key=lambda o: (-o.weight, o.ops, sorted(int(switch_ids[r]) for r in _touched(o))))
    return tuple(options), complete


def _touched(option: _Option) -> list[int]:
    return (
        [s for s, _ in option.parts] + [r for r, _ in option.opens] + [r for r, _ in option.closes]
    )


def _connecting(
    zone_set: frozenset[int],
    adjacency: Mapping[int, list[tuple[int, int]]],
    closed: BoolArray,
    opens: list[tuple[int, bool]],
) -> list[int]:
    """Inner switches to close so ``zone_set`` is one tree (closed loops inside it are opened)."""
    root = {z: z for z in zone_set}

    def find(z: int) -> int:
        while root[z] != z:
            root[z] = root[root[z]]
            z = root[z]
        return z

    ends = {r: (z, o) for z in zone_set for o, r in adjacency[z] if o in zone_set}
    to_close: list[int] = []
    for want_closed in (True, False):
        for r in sorted(ends):
            if bool(closed[r]) != want_closed:
                continue
            a, b = find(ends[r][0]), find(ends[r][1])
            if a != b:
                root[a] = b
                if not want_closed:
                    to_close.append(r)
            elif want_closed:
                opens.append((r, False))
    return to_close


def _units(
    adjacency: Mapping[int, list[tuple[int, int]]],
    piece: frozenset[int],
    terminals: set[int],
    mandatory: frozenset[int],
    *,
    lossy: bool,
) -> dict[int, frozenset[int]]:
    """Zones grouped into units an assignment takes or leaves whole, keyed by a member.

    A zone off every path between supply zones (the core) can only be fed through its neighbour
    towards the core; a mandatory one always goes with it, so merging them loses nothing (in a
    tree). With ``lossy`` every such branch is one unit, taken or shed whole.
    """
    n_edges = len({r for z in piece for _, r in adjacency[z]})
    if n_edges != len(piece) - 1:
        return {z: frozenset([z]) for z in piece}  # not a tree: every zone is a unit
    first = min(terminals)
    parent: dict[int, int] = {first: -1}
    order = [first]
    for z in order:
        for o, _ in adjacency[z]:
            if o not in parent:
                parent[o] = z
                order.append(o)
    core: set[int] = set()
    for t in sorted(terminals):
        z = t
        while z != -1 and z not in core:
            core.add(z)
            z = parent[z]
    owner: dict[int, int] = {}
    for z in order:
        p = parent[z]
        if z in core:
            owner[z] = z
        elif z in mandatory or (lossy and p not in core):
            owner[z] = owner[p]
        else:
            owner[z] = z
    units: dict[int, set[int]] = {}
    for z, head in owner.items():
        units.setdefault(head, set()).add(z)
    return {k: frozenset(v) for k, v in units.items()}


def _enumerate(
    adjacency: Mapping[int, list[tuple[int, int]]],
    units: Mapping[int, frozenset[int]],
    supplies: list[int],
    *,
    supply_zone: Mapping[int, int],
    mandatory: frozenset[int],
    limit: int,
) -> list[tuple[tuple[int, frozenset[int]], ...]] | None:
    """Assignments of disjoint connected unit sets to supplies (None past ``limit``)."""
    unit_of = {z: head for head, members in units.items() for z in members}
    neighbours = {
        head: sorted({unit_of[o] for z in members for o, _ in adjacency[z]} - {head})
        for head, members in units.items()
    }
    must = {unit_of[z] for z in mandatory}
    out: list[tuple[tuple[int, frozenset[int]], ...]] = []
    visits = 0

    def connected_sets(root: int, banned: frozenset[int]) -> Iterator[frozenset[int]]:
        def extend(current: frozenset[int], excluded: frozenset[int]) -> Iterator[frozenset[int]]:
            yield current
            frontier = sorted({n for u in current for n in neighbours[u]} - current - excluded)
            for i, n in enumerate(frontier):
                yield from extend(current | {n}, excluded | frozenset(frontier[:i]))

        yield from extend(frozenset([root]), banned)

    def assign(i: int, used: frozenset[int], chosen: list[tuple[int, frozenset[int]]]) -> bool:
        nonlocal visits
        visits += 1
        if visits > limit:
            return False
        if i == len(supplies):
            if must <= used:
                out.append(tuple(chosen))
            return True
        if not assign(i + 1, used, chosen):
            return False
        root = unit_of[supply_zone[supplies[i]]]
        if root in used:
            return True
        for unit_set in connected_sets(root, used):
            chosen.append((supplies[i], frozenset(z for u in unit_set for z in units[u])))
            ok = assign(i + 1, used | unit_set, chosen)
            chosen.pop()
            if not ok:
                return False
        return True

    return out if assign(0, frozenset(), []) else None


# --------------------------------------------------------------------------------------------
# Power-flow checks


@dataclass(slots=True)
class _Outcome:
    """Limit check of one configuration.

    A violation in ``local_zones`` depends only on the parts below that zone (the overload stays
    even at the highest voltage the element could see); one in ``island_zones`` on every part of
    the island (voltages, and overloads within the reach of the voltage change).
    """

    ok: bool
    local_zones: list[int] = field(default_factory=list)
    island_zones: list[int] = field(default_factory=list)
    diverged: bool = False
    check: PowerFlowCheck | None = None


class _Flows:
    """Batch power flows of switch configurations of the study model, checked against limits."""

    def __init__(self, problem: _Problem) -> None:
        model = problem.model
        self.problem = problem
        engine_input = to_engine_input(model)
        try:
            self.engine = PowerGridModel(engine_input, system_frequency=model.frequency_hz)
        except PowerGridError as err:
            raise AnalysisError(f"the engine rejected the model: {err}") from err
        self.var_rows = problem.zones.edge_rows()
        self.var_ids = model.switch["id"][self.var_rows]
        wanted = {
            ComponentType.node: ["energized", "u_pu"],
            ComponentType.line: ["loading"],
            ComponentType.transformer: ["loading"],
            ComponentType.link: ["i_from", "i_to"],
        }
        self.outputs = {k: v for k, v in wanted.items() if k in engine_input}
        bus_ids = model.bus["id"]
        line, trafo, switch = model.line, model.transformer, model.switch
        self.branch_ends = np.stack(
            [
                lookup(
                    bus_ids, np.concatenate([line["from_bus"], trafo["hv_bus"], switch["from_bus"]])
                ),
                lookup(
                    bus_ids, np.concatenate([line["to_bus"], trafo["lv_bus"], switch["to_bus"]])
                ),
            ],
            axis=1,
        )
        self.branch_zone = problem.zones.zone_of_bus[np.maximum(self.branch_ends, 0)]
        rating_a = switch["i_rated_ka"] * 1e3
        self.switch_rating_a = np.where(np.isfinite(rating_a) & (rating_a > 0), rating_a, np.inf)
        self.branch_ids = np.concatenate([line["id"], trafo["id"], switch["id"]]).astype(np.int64)
        gen = model.generator
        gen_rows = lookup(bus_ids, gen["bus"])
        self.gen_ids = gen["id"] if ComponentType.sym_gen in engine_input else gen["id"][:0]
        self.gen_zone = problem.zones.zone_of_bus[np.maximum(gen_rows, 0)]
        self.gen_on = gen["in_service"] & (gen_rows >= 0) & ~problem.outage[self.gen_zone]
        self.solved = 0
        self.bus_lo = self.bus_hi = self.loading_hi = np.zeros(0)
        self.u_bound = np.zeros(0)
        self.referenced = False
        self.u_source = 1.0

    def check(self, states: BoolArray, releases: Sequence[tuple[int, ...]]) -> list[_Outcome]:
        """Limit check of each row of ``states`` (full switch-state vectors).

        The first call also solves the present state (in the same batch): it sets how far an
        element already outside a limit may go, and the voltages that bound local cuts.
        """
        first = not self.referenced
        if first:
            states = np.concatenate([self.problem.closed0[None, :], states])
            releases = [(), *releases]
        u, energized, loading = self._solve(states, releases)
        if first:
            self._reference(u[0], energized[0], loading[0])
        skip = int(first)
        return [
            self._judge(u[i], energized[i], loading[i], transfers=bool(releases[i]))
            for i in range(skip, states.shape[0])
        ]

    def present(self) -> _Outcome:
        """The limit check of the present state."""
        return self.check(self.problem.closed0[None, :], [()])[0]

    def _reference(self, u0: FloatArray, e0: BoolArray, l0: FloatArray) -> None:
        if np.isnan(u0).any():
            raise AnalysisError("the power flow of the present state did not converge")
        self.referenced = True
        limits = self.problem.limits
        low, high = e0 & (u0 < limits.v_min_pu), e0 & (u0 > limits.v_max_pu)
        self.bus_lo = np.where(low, u0 - limits.slack_u_pu, limits.v_min_pu) - _TOLERANCE
        self.bus_hi = np.where(high, u0 + limits.slack_u_pu, limits.v_max_pu) + _TOLERANCE
        over = l0 > limits.max_loading
        self.loading_hi = np.where(over, l0 + limits.slack_loading, limits.max_loading) + _TOLERANCE
        self.u_source = float(u0[e0].max()) if e0.any() else 1.0
        ends_lit = e0[self.branch_ends].all(axis=1) & (self.branch_ends >= 0).all(axis=1)
        self.u_bound = np.where(ends_lit, u0[self.branch_ends].max(axis=1), self.u_source)

    def _solve(
        self, states: BoolArray, releases: Sequence[tuple[int, ...]]
    ) -> tuple[FloatArray, BoolArray, FloatArray]:
        n = states.shape[0]
        status = states[:, self.var_rows].astype(np.int8)
        update: dict[ComponentType, dict[str, npt.NDArray[Any]]] = {
            ComponentType.link: {
                "id": np.broadcast_to(self.var_ids, status.shape),
                "from_status": status,
                "to_status": status,
            }
        }
        if self.gen_ids.size:
            # generation that lost the grid stays off: grid codes delay reconnection by a minute
            # or more, so the restored part first carries its whole load
            gen_on = np.broadcast_to(self.gen_on, (n, self.gen_ids.size)).copy()
            for i, release in enumerate(releases):
                for s in release:
                    gen_on[i, np.isin(self.gen_zone, self.problem.subtree(s))] = False
            update[ComponentType.sym_gen] = {
                "id": np.broadcast_to(self.gen_ids, gen_on.shape),
                "status": gen_on.astype(np.int8),
            }
        self.solved += n
        try:
            raw = self.engine.calculate_power_flow(
                update_data=cast(Any, update),
                calculation_method=CalculationMethod.newton_raphson,
                output_component_types=cast(Any, self.outputs),
                continue_on_batch_error=True,
            )
        except PowerGridError as err:
            raise AnalysisError(f"restoration power flows failed: {err}") from err
        out = cast(dict[ComponentType, dict[str, npt.NDArray[Any]]], raw)
        node = out[ComponentType.node]
        u = node["u_pu"].astype(np.float64)
        energized = node["energized"].astype(np.bool_)
        parts = [
            out[c]["loading"].astype(np.float64) if c in out else np.zeros((n, 0))
            for c in (ComponentType.line, ComponentType.transformer)
        ]
        if ComponentType.link in out:
            link = out[ComponentType.link]
            parts.append(np.maximum(link["i_from"], link["i_to"]) / self.switch_rating_a)
        else:
            parts.append(np.zeros((n, 0)))
        loading = np.concatenate(parts, axis=1)
        batch_error = self.engine.batch_error
        if batch_error is not None:
            u[np.asarray(batch_error.failed_scenarios, dtype=np.int64)] = np.nan
        return u, energized, loading

    def _judge(
        self, u: FloatArray, energized: BoolArray, loading: FloatArray, *, transfers: bool
    ) -> _Outcome:
        if np.isnan(u).any():
            return _Outcome(ok=False, diverged=True)
        zone_of_bus = self.problem.zones.zone_of_bus
        bad_u = energized & ((u < self.bus_lo) | (u > self.bus_hi))
        hot = np.flatnonzero(loading > self.loading_hi)
        ends_u = np.where(self.branch_ends[hot] >= 0, u[np.maximum(self.branch_ends[hot], 0)], 0.0)
        u_here = np.where((ends_u > 0).all(axis=1), ends_u.min(axis=1), ends_u.max(axis=1))
        u_bound = np.full(hot.size, self.u_source) if transfers else self.u_bound[hot]
        local = loading[hot] * u_here / u_bound > self.loading_hi[hot]
        outcome = _Outcome(
            ok=not bad_u.any() and hot.size == 0,
            local_zones=sorted(set(self.branch_zone[hot[local]].ravel().tolist())),
            island_zones=sorted(
                set(zone_of_bus[bad_u].tolist())
                | set(self.branch_zone[hot[~local]].ravel().tolist())
            ),
        )
        lit = np.flatnonzero(energized)
        if lit.size:
            bus_ids = self.problem.model.bus["id"]
            lo, hi = lit[np.argmin(u[lit])], lit[np.argmax(u[lit])]
            worst = int(np.argmax(loading)) if loading.size else -1
            outcome.check = PowerFlowCheck(
                min_u_pu=float(u[lo]),
                min_u_bus_id=int(bus_ids[lo]),
                max_u_pu=float(u[hi]),
                max_u_bus_id=int(bus_ids[hi]),
                max_loading=float(loading[worst]) if worst >= 0 else 0.0,
                max_loading_branch_id=int(self.branch_ids[worst]) if worst >= 0 else -1,
                power_flows=self.solved,
            )
        return outcome


# --------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True, slots=True)
class _Candidate:
    release: tuple[int, ...]
    options: tuple[_Option, ...]

    @property
    def weight(self) -> int:
        return sum(o.weight for o in self.options)

    def supplies(self) -> dict[int, frozenset[int]]:
        return {s: zs for o in self.options for s, zs in o.parts}


@dataclass(frozen=True, slots=True)
class _Cut:
    """Candidates with these transfers and at least these parts violate a limit."""

    parts: tuple[tuple[int, frozenset[int]], ...]

    def covers(self, supplies: Mapping[int, frozenset[int]]) -> bool:
        return all(s in supplies and zs <= supplies[s] for s, zs in self.parts)


_CANDIDATE, _POOL, _GENERATOR = 0, 1, 2
_NOTHING_BETTER: Final = (_Candidate(release=(), options=()), _Outcome(ok=True), True)
"""What the transfer search returns when no transfer set beats the plan without transfers."""
_Entry = tuple[int, int, int, tuple[int, ...], tuple[int, ...]]
"""Heap entry: (-weight, operations, kind, released switch rows, option index per piece)."""


class _Search:
    def __init__(self, problem: _Problem, *, max_power_flows: int) -> None:
        self.problem = problem
        self.max_power_flows = max_power_flows
        self.cuts: dict[tuple[int, ...], list[_Cut]] = {}

    def run(self) -> RestorationPlan:
        """Best plan without transfers first, then the transfer sets that could beat it."""
        problem = self.problem
        flows = _Flows(problem)
        plain = self._best_first(flows, transfers=False, budget=self.max_power_flows)
        if plain is None:  # out of budget before any plan passed: restore nothing
            nothing = _Candidate(release=(), options=())
            return self._plan(nothing, flows.present(), flows, optimal=False)
        candidate, outcome, complete = plain
        if problem.releases:
            stop = (-candidate.weight, self._ops(candidate))
            better = self._best_first(flows, transfers=True, budget=self.max_power_flows, stop=stop)
            if better is None:  # out of budget: keep the plan without transfers
                complete = False
            elif better is not _NOTHING_BETTER:
                candidate, outcome, more_complete = better
                complete &= more_complete
        optimal = complete and not problem.releases_capped
        return self._plan(candidate, outcome, flows, optimal=optimal)

    def _ops(self, candidate: _Candidate) -> int:
        return len(candidate.release) + sum(o.ops for o in candidate.options)

    def _best_first(
        self,
        flows: _Flows,
        *,
        transfers: bool,
        budget: int,
        stop: tuple[int, int] | None = None,
    ) -> tuple[_Candidate, _Outcome, bool] | None:
        """The first candidate in best-first order that passes the limit check.

        Without ``transfers`` only the pool without transfers is searched; with them, only the
        transfer sets, and the search ends (:data:`_NOTHING_BETTER`) at the first entry not better
        than ``stop``. None when the power-flow budget runs out first.
        """
        problem = self.problem
        heap: list[_Entry] = []
        complete = True
        if transfers:
            heapq.heappush(heap, (-int(problem.gain.sum()), 2, _GENERATOR, (), (1,)))
        else:
            complete = self._push_pool((), heap)
        visited: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        batch_size = 1
        while heap:
            batch: list[_Candidate] = []
            while heap and len(batch) < batch_size:
                if stop is not None and heap[0][:2] >= stop:
                    heap.clear()
                    break
                _, _, kind, release, index = heapq.heappop(heap)
                if kind == _GENERATOR:
                    self._generate(index[0], heap)
                elif kind == _POOL:
                    complete &= self._push_pool(release, heap)
                elif (release, index) not in visited:
                    visited.add((release, index))
                    candidate = self._successors(release, index, heap)
                    if candidate is not None:
                        batch.append(candidate)
            if not batch:
                continue
            if flows.solved + len(batch) > budget:
                return None
            states = np.stack([self._states(c) for c in batch])
            outcomes = flows.check(states, [c.release for c in batch])
            for candidate, outcome in zip(batch, outcomes, strict=True):
                if outcome.ok:
                    return candidate, outcome, complete
                self._learn(candidate, outcome)
            batch_size = min(2 * batch_size, 16)
        return _NOTHING_BETTER if stop is not None else None

    def _push_pool(self, release: tuple[int, ...], heap: list[_Entry]) -> bool:
        """Queue the best candidate of a pool; False if its listing was cut short."""
        pool = self.problem.pool(release)
        if pool is None:
            return True
        index = tuple(0 for _ in pool.pieces)
        heapq.heappush(heap, self._entry(pool, index))
        return pool.complete

    def _entry(self, pool: _Pool, index: tuple[int, ...]) -> _Entry:
        options = [pool.pieces[p][i] for p, i in enumerate(index)]
        ops = len(pool.release) + sum(o.ops for o in options)
        return -sum(o.weight for o in options), ops, _CANDIDATE, pool.release, index

    def _generate(self, size: int, heap: list[_Entry]) -> None:
        """Queue every set of ``size`` transfers by its bound, and the next size's generator."""
        problem = self.problem
        for release in problem.release_sets(size):
            bound = problem.bound(release)
            if bound is not None:
                heapq.heappush(heap, (-bound[0], bound[1], _POOL, release, ()))
        if size < _MAX_RELEASE_SET:
            heapq.heappush(heap, (-int(problem.gain.sum()), size + 2, _GENERATOR, (), (size + 1,)))

    def _successors(
        self, release: tuple[int, ...], index: tuple[int, ...], heap: list[_Entry]
    ) -> _Candidate | None:
        """Queue the neighbours of a popped candidate; the candidate unless a cut drops it."""
        pool = self.problem.pool(release)
        if pool is None:
            return None
        for p in range(len(index)):
            if index[p] + 1 < len(pool.pieces[p]):
                heapq.heappush(heap, self._entry(pool, (*index[:p], index[p] + 1, *index[p + 1 :])))
        candidate = _Candidate(
            release=release, options=tuple(pool.pieces[p][i] for p, i in enumerate(index))
        )
        supplies = candidate.supplies()
        if any(cut.covers(supplies) for cut in self.cuts.get(release, [])):
            return None
        if release and self._layout(candidate) is None:
            return None
        return candidate

    def _states(self, candidate: _Candidate) -> BoolArray:
        states = self.problem.closed0.copy()
        states[list(candidate.release)] = False
        for option in candidate.options:
            for s, _ in option.parts:
                states[s] = True
            for r, _ in option.opens:
                states[r] = False
            for r, _ in option.closes:
                states[r] = True
        return states

    def _layout(self, candidate: _Candidate) -> tuple[IntArray, IntArray] | None:
        """Euler-tour interval of each zone in the candidate's supply tree; None if unacceptable.

        Acceptable: each energized island a tree with one source, every zone energized now still
        energized, and the restored zones exactly the candidate's parts.
        """
        problem = self.problem
        zones = problem.zones
        closed_edges = zones.operable & self._states(candidate)
        parent, _, tin, tout = _zone_tree(zones, closed_edges)
        lit = tin >= 0
        if (parent[zones.zone_source] >= 0).any():
            return None
        ends = zones.switch_zone[closed_edges]
        lit_edges = int((lit[ends[:, 0]] & lit[ends[:, 1]]).sum())
        if lit_edges != int(lit.sum()) - int((lit & (parent < 0)).sum()):
            return None
        if not lit[zones.zone_energized].all():
            return None
        restored = np.zeros(zones.n_zones, dtype=np.bool_)
        for zone_set in candidate.supplies().values():
            restored[list(zone_set)] = True
        if not np.array_equal(lit & problem.outage, restored & problem.outage):
            return None
        return tin, tout

    def _learn(self, candidate: _Candidate, outcome: _Outcome) -> None:
        """Cuts that drop every candidate at least as loaded where this one failed."""
        parts = candidate.supplies()
        cuts = self.cuts.setdefault(candidate.release, [])
        layout = self._layout(candidate)
        if layout is None or outcome.diverged:
            cuts.append(_Cut(tuple(parts.items())))
            return
        tin, tout = layout
        zones = self.problem.zones
        roots = np.flatnonzero(zones.zone_source & (tin >= 0)).tolist()

        def below(top: int) -> tuple[tuple[int, frozenset[int]], ...]:
            """Per part, its zones under ``top``: the load that flows through ``top``."""
            found = []
            for s, zs in parts.items():
                under = frozenset(z for z in zs if tin[top] <= tin[z] < tout[top])
                if under:
                    found.append((s, under))
            return tuple(found)

        for z in outcome.local_zones:
            if tin[z] >= 0:
                cuts.append(_Cut(below(z)))
        for z in outcome.island_zones:
            if tin[z] >= 0:
                root = next(r for r in roots if tin[r] <= tin[z] < tout[r])
                cuts.append(_Cut(below(root)))

    def _plan(
        self, candidate: _Candidate, outcome: _Outcome, flows: _Flows, *, optimal: bool
    ) -> RestorationPlan:
        problem = self.problem
        model = problem.model
        switch_ids = model.switch["id"].astype(np.int64)
        states = self._states(candidate)
        sz = problem.zones.switch_zone
        outage = problem.outage
        released = [(r, problem.child(r)) for r in candidate.release]

        def recloses(s: int) -> bool:
            if problem.tripped_row >= 0:
                return s == problem.tripped_row
            kind, tie = model.switch["kind"][s], model.switch["normally_open"][s]
            return bool(np.isin(kind, _HEAD_KINDS) and not tie)

        def order(part: tuple[int, frozenset[int]]) -> tuple[int, int, int]:
            s, zs = part
            moved = any(not outage[z] for z in zs)
            return (
                0 if recloses(s) else 1 if moved else 2,
                -int(problem.gain[list(zs)].sum()),
                int(switch_ids[s]),
            )

        parts = sorted(((s, zs) for o in candidate.options for s, zs in o.parts), key=order)
        opens = [(r, sheds) for o in candidate.options for r, sheds in o.opens]
        closes = [(r, s) for o in candidate.options for r, s in o.closes]
        operations: list[PlannedOperation] = []
        done: set[int] = set()

        def operate(row: int, action: Literal["open", "close"], purpose: OperationPurpose) -> None:
            done.add(row)
            operations.append(PlannedOperation(int(switch_ids[row]), action, purpose))

        for s, zs in parts:
            for r, child in released:
                if r not in done and child in zs:
                    operate(r, "open", OperationPurpose.TRANSFER_OPEN)
            for r, sheds in opens:
                if r not in done and (int(sz[r, 0]) in zs or int(sz[r, 1]) in zs):
                    operate(
                        r, "open", OperationPurpose.SHED if sheds else OperationPurpose.SECTIONALIZE
                    )
            for r, owner in closes:
                if owner == s:
                    operate(r, "close", OperationPurpose.CONNECT)
            if recloses(s):
                purpose = OperationPurpose.RECLOSE
            elif any(outage[z] for z in zs):
                purpose = OperationPurpose.RESTORE
            else:
                purpose = OperationPurpose.TRANSFER_CLOSE
            operate(s, "close", purpose)

        restored_zone = np.zeros(problem.zones.n_zones, dtype=np.bool_)
        for _, zs in parts:
            restored_zone[list(zs)] = True
        restored_zone &= outage
        load = model.load
        zone_ok = problem.load_zone >= 0
        load_zone = np.maximum(problem.load_zone, 0)
        affected = zone_ok & load["in_service"] & (outage | problem.isolated)[load_zone]
        restored = affected & restored_zone[load_zone]
        unserved = affected & ~restored
        customers = load["customers"].astype(np.int64)
        bus_zone = problem.zones.zone_of_bus
        shed_rows = np.flatnonzero(outage[bus_zone] & ~restored_zone[bus_zone])
        check = outcome.check or PowerFlowCheck(
            min_u_pu=float("nan"),
            min_u_bus_id=-1,
            max_u_pu=float("nan"),
            max_u_bus_id=-1,
            max_loading=0.0,
            max_loading_branch_id=-1,
            power_flows=0,
        )
        check = dataclasses.replace(check, power_flows=flows.solved)
        return RestorationPlan(
            operations=tuple(operations),
            parts=tuple(
                self._part(s, zs & frozenset(np.flatnonzero(outage).tolist()))
                for s, zs in parts
                if any(outage[z] for z in zs)
            ),
            restored_load_ids=tuple(int(i) for i in load["id"][restored]),
            unserved_load_ids=tuple(int(i) for i in load["id"][unserved]),
            restored_customers=int(customers[restored].sum()),
            unserved_customers=int(customers[unserved].sum()),
            restored_mw=float(problem.load_p_mw[restored].sum()),
            unserved_mw=float(problem.load_p_mw[unserved].sum()),
            shed_bus_ids=tuple(int(b) for b in model.bus["id"][shed_rows]),
            objective=candidate.weight,
            max_objective=int(problem.gain.sum()),
            optimal=optimal,
            check=check,
            final_switch_states=dict(
                zip(switch_ids.tolist(), states.astype(bool).tolist(), strict=True)
            ),
        )

    def _part(self, supply: int, zone_set: frozenset[int]) -> RestoredPart:
        problem = self.problem
        model = problem.model
        in_part = np.zeros(problem.zones.n_zones, dtype=np.bool_)
        in_part[list(zone_set)] = True
        load = model.load
        loads = (problem.load_zone >= 0) & in_part[np.maximum(problem.load_zone, 0)]
        loads &= load["in_service"]
        return RestoredPart(
            supply_switch_id=int(model.switch["id"][supply]),
            bus_ids=tuple(int(b) for b in model.bus["id"][in_part[problem.zones.zone_of_bus]]),
            load_ids=tuple(int(i) for i in load["id"][loads]),
            customers=int(load["customers"][loads].sum()),
            p_mw=float(problem.load_p_mw[loads].sum()),
        )
