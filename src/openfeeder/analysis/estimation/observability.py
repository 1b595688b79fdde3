"""Observability of a grid from a measurement set, and the pseudo-measurements that restore it.

**Check** (:func:`check_observability`, topological, in the decoupled P-angle sense). Buses are
grouped into *components* whose voltage angles the measurements tie together:

1. a closed switch joins its buses (zero impedance), a branch with a measured flow (``pq`` or
   ``i_phasor`` at an end) joins its ends, and buses with a voltage phasor (PMU) are joined
   through the common time reference;
2. a bus whose injection is known (a ``pq`` measurement on the bus, every in-service appliance on it
   measured, or no appliance at all: zero injection, as power-grid-model counts it) determines the
   flow of its last unknown branch: when all of its branches but those to one other component lie
   inside its own component, that component is joined to its own. Rule 2 repeats until nothing
   changes. A bus with an in-service shunt has an unknown injection unless a ``pq`` measurement
   on the bus gives it (power-grid-model counts a shunt as an appliance).

An energized island is observable when it ends as one component and has a voltage magnitude
measurement. When all buses of an island but one have a known injection (every load metered or
given a pseudo-measurement) the island is observable without iterating (the reduced network
Laplacian is regular), which is the common case and costs one pass. The test is exact for radial
grids; in meshed grids it can miss observability that only the joint solution of several
injections gives (it is then conservative: it reports the island unobservable).

**Pseudo-measurements** (:func:`pseudo_measurements`): each in-service load or generator without a
``pq`` measurement gets one, valued from a forecast (``load_p_mw`` / ``load_q_mvar`` in load order,
default the model's own values) with standard deviation ``sigma_fraction`` of its apparent power
(at least ``sigma_floor_mw``); an island without a voltage magnitude measurement gets one at its
first source's bus (the source's setpoint, ``voltage_sigma_pu``). The policy says for which
islands: ``all`` energized islands, only those ``needed`` (not observable without), or ``none``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from openfeeder.analysis.estimation.locate import (
    LocatedMeasurements,
    Target,
    appliance_bus_rows,
    branch_table,
)
from openfeeder.analysis.estimation.measurement_set import (
    QUANTITIES,
    MeasurementSet,
    Quantity,
    empty_rows,
)
from openfeeder.analysis.estimation.model_cache import find, ids_unique, model_memo
from openfeeder.errors import MeasurementError
from openfeeder.model.grid import GridModel

__all__ = [
    "PSEUDO_PREFIX",
    "ApplianceCounts",
    "Observability",
    "PseudoOptions",
    "PseudoPolicy",
    "appliance_counts",
    "check_observability",
    "covered_appliances",
    "located_pseudo_measurements",
    "pseudo_measurements",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

PSEUDO_PREFIX: Final = "pseudo-"
"""Every pseudo-measurement's id starts with it: ``pseudo-load-<id>``, ``pseudo-gen-<id>``,
``pseudo-u-<bus id>``."""


class PseudoPolicy(StrEnum):
    ALL = "all"
    NEEDED = "needed"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class PseudoOptions:
    """How pseudo-measurements are made (see the module docstring)."""

    policy: PseudoPolicy = PseudoPolicy.ALL
    load_p_mw: FloatArray | None = None
    """Forecast active power per load (model order); None: the model's ``p_mw``."""
    load_q_mvar: FloatArray | None = None
    """Forecast reactive power per load; None: the model's ``q_mvar``."""
    sigma_fraction: float = 0.5
    sigma_floor_mw: float = 1e-3
    voltage_sigma_pu: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", PseudoPolicy(self.policy))
        for name in ("sigma_fraction", "sigma_floor_mw", "voltage_sigma_pu"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"PseudoOptions.{name} must be finite and > 0, got {value!r}")


@dataclass(frozen=True, slots=True, eq=False)
class Observability:
    """Per bus (model order): island, energized, observable; per island what is missing."""

    bus_id: IntArray
    island: IntArray
    """Island label of each bus (connected through in-service branches and closed switches)."""
    energized: BoolArray
    """The bus's island has an in-service source."""
    observable: BoolArray
    injection_known: BoolArray
    components: IntArray
    """Per island: the number of components the measurements leave (1: angles determined)."""
    voltage_reference: BoolArray
    """Per island: it has a voltage magnitude measurement."""
    islands_observable: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def unobservable_bus_ids(self) -> IntArray:
        return self.bus_id[self.energized & ~self.observable]

    @property
    def fully_observable(self) -> bool:
        return not bool((self.energized & ~self.observable).any())

    def as_dict(self) -> dict[str, Any]:
        energized_islands = np.unique(self.island[self.energized])
        return {
            "observable": self.fully_observable,
            "energized_buses": int(self.energized.sum()),
            "observable_buses": int((self.energized & self.observable).sum()),
            "unobservable_buses": self.unobservable_bus_ids.tolist(),
            "islands": [
                {
                    "island": int(k),
                    "buses": int((self.island == k).sum()),
                    "observable": bool(self.islands_observable[k]),
                    "components": int(self.components[k]),
                    "voltage_reference": bool(self.voltage_reference[k]),
                }
                for k in energized_islands.tolist()
            ],
        }


def check_observability(model: GridModel, located: LocatedMeasurements) -> Observability:
    """Which energized buses the located measurements determine (see the module docstring)."""
    n = model.bus.size
    islands = _islands(model, located)
    island, energized, fed = islands.island, islands.energized, islands.fed
    n_islands, voltage_reference = fed.size, islands.voltage_reference
    f, t, live = islands.f, islands.t, islands.live

    injection_known = _injection_known(model, located)
    unknown_per_island = np.bincount(island[~injection_known], minlength=n_islands)
    quick = unknown_per_island <= 1
    components = np.ones(n_islands, dtype=np.int64)
    if not quick[island[energized]].all():
        component = _propagate(located, f, t, live=live, injection_known=injection_known, n=n)
        labels_per_island = _distinct_per_group(island, component, n_islands)
        components = np.where(quick, 1, labels_per_island)
    islands_observable = fed & (components == 1) & voltage_reference
    return Observability(
        bus_id=model.bus["id"].astype(np.int64),
        island=island,
        energized=energized,
        observable=energized & islands_observable[island],
        injection_known=injection_known,
        components=components,
        voltage_reference=voltage_reference,
        islands_observable=islands_observable,
    )


def pseudo_measurements(
    model: GridModel,
    located: LocatedMeasurements,
    observability: Observability | None,
    options: PseudoOptions,
) -> MeasurementSet:
    """Pseudo-measurements for the islands ``options.policy`` selects (module docstring);
    ``observability`` of the given measurements is needed for the policy ``needed`` only."""
    return located_pseudo_measurements(model, located, observability, options).measurements


def located_pseudo_measurements(
    model: GridModel,
    located: LocatedMeasurements,
    observability: Observability | None,
    options: PseudoOptions,
) -> LocatedMeasurements:
    """:func:`pseudo_measurements` located on ``model`` as :func:`.locate_measurements` would
    locate them, from the rows they were made for (no lookup)."""
    parts: list[tuple[MeasurementSet, Target, IntArray, IntArray]] = []
    if options.policy is not PseudoPolicy.NONE:
        _pseudo_parts(model, located, observability, options, parts)
    if not parts:
        return _located(located, MeasurementSet.empty(), [], [], [])
    sets = [part[0] for part in parts]
    # pseudo-<load|gen|u>-<id>: distinct names when the model's ids are, no check needed
    added = MeasurementSet.joined(sets) if ids_unique(model) else sets[0].concat(*sets[1:])
    out = _located(
        located,
        added,
        [np.full(len(m), kind, dtype=np.int8) for m, kind, _, _ in parts],
        [rows for _, _, rows, _ in parts],
        [bus_rows for *_, bus_rows in parts],
    )
    # what LocatedMeasurements.measured_appliances() finds: the appliances given a pq (sorted)
    measured = dict.fromkeys(
        (Target.LOAD, Target.GENERATOR, Target.SOURCE), np.zeros(0, dtype=np.int64)
    )
    measured.update({kind: rows for _, kind, rows, _ in parts if kind is not Target.BUS})
    out.memo["measured_appliances"] = measured
    return out


def _located(
    like: LocatedMeasurements,
    measurements: MeasurementSet,
    target: list[npt.NDArray[np.int8]],
    target_row: list[IntArray],
    bus_row: list[IntArray],
) -> LocatedMeasurements:
    def joined(parts: list[Any], dtype: type) -> Any:
        return (
            np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
        )

    return LocatedMeasurements(
        measurements=measurements,
        branches=like.branches,
        target=joined(target, np.int8),
        target_row=joined(target_row, np.int64),
        bus_row=joined(bus_row, np.int64),
    )


def _pseudo_parts(
    model: GridModel,
    located: LocatedMeasurements,
    observability: Observability | None,
    options: PseudoOptions,
    parts: list[tuple[MeasurementSet, Target, IntArray, IntArray]],
) -> None:
    """Append the pseudo-measurements per table to ``parts`` with their target rows and bus rows."""
    islands = _islands(model, located)
    if options.policy is PseudoPolicy.ALL:
        wanted = islands.fed  # every island has a bus: the energized buses' islands are the fed
    else:
        if observability is None:
            raise ValueError("the policy 'needed' needs the observability of the measurements")
        chosen = np.unique(
            observability.island[observability.energized & ~observability.observable]
        )
        wanted = np.zeros(islands.fed.size, dtype=bool)
        wanted[chosen] = True
    island_of_bus, energized_bus = islands.island, islands.energized
    measured = _measured_appliances(located)
    bus_id = model.bus["id"]

    load = model.load
    p = load["p_mw"] if options.load_p_mw is None else np.asarray(options.load_p_mw, np.float64)
    q = (
        load["q_mvar"]
        if options.load_q_mvar is None
        else np.asarray(options.load_q_mvar, np.float64)
    )
    if p.shape != (load.size,) or q.shape != (load.size,):
        raise ValueError(f"pseudo load forecasts need shape ({load.size},)")
    forecast = options.load_p_mw is not None or options.load_q_mvar is not None
    for name, kind, values_p, values_q, sign, own_values in (
        ("load", Target.LOAD, p, q, "load", not forecast),
        ("generator", Target.GENERATOR, model.generator["p_mw"], model.generator["q_mvar"],
         "gen", True),
    ):  # fmt: skip
        table = model.table(name)
        if table.size == 0:
            continue
        bus_rows = appliance_bus_rows(model, name)
        if options.policy is PseudoPolicy.ALL:  # the same rows for every placement on the model
            pick = _in_energized_islands(model, name).copy()
        else:
            pick = table["in_service"] & wanted[island_of_bus[bus_rows]]
            pick &= energized_bus[bus_rows]
        pick[measured.get(kind, np.zeros(0, dtype=np.int64))] = False
        rows = np.flatnonzero(pick)
        if rows.size == 0:
            continue
        names = _pseudo_names(model, name, sign)
        if own_values:  # every row's pseudo-measurement made once per model, rows taken
            every, valid = _every_pseudo_pq(model, name, values_p, values_q, options)
            pq = every.take(rows, names)  # their ids made when read
            if not valid:
                pq.check()  # the first bad row of those picked, as for a forecast
        else:
            pq = MeasurementSet(
                tuple(names[rows].tolist()),
                _pq_rows(table["id"][rows], values_p[rows], values_q[rows], options),
            )
            pq.check()
        parts.append((pq, kind, rows, bus_rows[rows]))

    no_reference = wanted & ~islands.voltage_reference
    in_service = np.asarray(model.source["in_service"], dtype=bool)
    source = model.source[in_service]
    if no_reference.any() and source.size:
        source_rows = appliance_bus_rows(model, "source")[in_service]
        island_of_source = island_of_bus[source_rows]
        first = np.unique(island_of_source, return_index=True)[1]
        keep = first[no_reference[island_of_source[first]]]
        rows = source_rows[keep]
        u_rated = model.bus["u_rated_kv"][rows]
        u = MeasurementSet.from_columns(
            [f"{PSEUDO_PREFIX}u-{i}" for i in bus_id[rows].tolist()],
            Quantity.U,
            bus=bus_id[rows],
            u_kv=source["u_ref_pu"][keep] * u_rated,
            u_sigma_kv=options.voltage_sigma_pu * u_rated,
            pseudo=True,
        )
        parts.append((u, Target.BUS, rows, rows))


def _in_energized_islands(model: GridModel, name: str) -> BoolArray:
    """The in-service rows of ``model.<name>`` in an energized island (what the policy ``all``
    gives a pseudo-measurement unless measured; kept per model, do not write)."""

    def build() -> BoolArray:
        closed = closed_islands(model)
        island_of_bus, energized_bus = closed.island, closed.fed[closed.island]
        bus_rows = appliance_bus_rows(model, name)
        pick: BoolArray = model.table(name)["in_service"] & closed.fed[island_of_bus[bus_rows]]
        pick &= energized_bus[bus_rows]
        return pick

    return model_memo(model, ("pseudo_candidates", name), build)


def _every_pseudo_pq(
    model: GridModel, name: str, p_mw: FloatArray, q_mvar: FloatArray, options: PseudoOptions
) -> tuple[MeasurementSet, bool]:
    """The pseudo ``pq`` rows of every appliance of ``model.<name>`` (valued with the model's own
    ``p_mw`` and ``q_mvar``), kept per model and options, and whether they all pass
    :meth:`MeasurementSet.check`."""

    def build() -> tuple[MeasurementSet, bool]:
        element = model.table(name)["id"]
        every = MeasurementSet(
            tuple(map(str, range(element.size))), _pq_rows(element, p_mw, q_mvar, options)
        )
        try:
            every.check()
        except MeasurementError:
            return every, False
        return every, True

    key = ("pseudo_pq", name, options.sigma_fraction, options.sigma_floor_mw)
    return model_memo(model, key, build)


def _pq_rows(
    element: IntArray, p_mw: FloatArray, q_mvar: FloatArray, options: PseudoOptions
) -> npt.NDArray[np.void]:
    """Pseudo ``pq`` rows of appliances ``element`` with these values (not checked)."""
    sigma = np.maximum(options.sigma_fraction * np.hypot(p_mw, q_mvar), options.sigma_floor_mw)
    table = empty_rows(element.size)
    table["quantity"] = QUANTITIES.index(Quantity.PQ)
    table["element"] = element
    table["p_mw"] = p_mw
    table["q_mvar"] = q_mvar
    table["p_sigma_mw"] = sigma
    table["q_sigma_mvar"] = sigma
    table["pseudo"] = True
    return table


# -- internals -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _IslandLabels:
    island: IntArray
    energized: BoolArray
    fed: BoolArray
    """Per island: it has an in-service source."""
    voltage_reference: BoolArray
    f: IntArray
    t: IntArray
    live: BoolArray


def _islands(model: GridModel, located: LocatedMeasurements) -> _IslandLabels:
    """Islands of closed branches, which are fed, and which have a voltage magnitude measurement."""
    closed = closed_islands(model)
    island, f, t, live, fed = closed.island, closed.f, closed.t, closed.live, closed.fed
    n_islands = fed.size
    reference = np.zeros(n_islands, dtype=bool)
    for quantity in (Quantity.U, Quantity.U_PHASOR):  # the rows the engine's sensors take too
        reference[island[located.bus_row[located.rows_of_quantity(quantity)]]] = True
    return _IslandLabels(island, fed[island], fed, reference, f, t, live)


@dataclass(frozen=True, slots=True, eq=False)
class ClosedIslands:
    """Islands of the model's closed branches (a model property: kept per model object)."""

    island: IntArray
    fed: BoolArray
    """Per island: it has an in-service source."""
    f: IntArray
    t: IntArray
    live: BoolArray


def closed_islands(model: GridModel) -> ClosedIslands:
    """The :class:`ClosedIslands` of ``model``."""

    def build() -> ClosedIslands:
        n = model.bus.size
        branches = branch_table(model)
        live = branches.connected & (branches.from_row >= 0) & (branches.to_row >= 0)
        f, t = branches.from_row[live], branches.to_row[live]
        n_islands, labels = connected_components(_graph(f, t, n), directed=False)
        island: IntArray = labels.astype(np.int64)
        source = model.source[model.source["in_service"]]
        fed = np.zeros(n_islands, dtype=bool)
        fed[island[find(model, "bus", source["bus"])]] = True
        return ClosedIslands(island, fed, f, t, live)

    return model_memo(model, "closed_islands", build)


def _pseudo_names(model: GridModel, table: str, sign: str) -> npt.NDArray[np.object_]:
    """``pseudo-<sign>-<id>`` of every row of ``model.<table>`` (kept per model; do not write)."""
    names: npt.NDArray[np.object_] = model_memo(
        model,
        ("pseudo_ids", table, sign),
        lambda: np.array(
            [f"{PSEUDO_PREFIX}{sign}-{i}" for i in model.table(table)["id"].tolist()],
            dtype=object,
        ),
    )
    return names


def _graph(f: IntArray, t: IntArray, n: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(f.size, dtype=np.int8), (f, t)), shape=(n, n))


def _measured_appliances(located: LocatedMeasurements) -> dict[Target, IntArray]:
    """Rows of the appliances with a ``pq`` measurement, per appliance table (sorted)."""
    return located.measured_appliances()


def _injection_known(model: GridModel, located: LocatedMeasurements) -> BoolArray:
    """Buses with a known injection: a bus ``pq``, all appliances measured, or none at all."""
    counts = appliance_counts(model)
    # the engine takes no shunt sensor here
    known: BoolArray = (covered_appliances(model, located) >= counts.appliances) & (
        counts.shunts == 0
    )
    power = located.rows_of_quantity(Quantity.PQ)
    known[located.bus_row[power[located.target[power] == Target.BUS]]] = True
    return known


def covered_appliances(model: GridModel, located: LocatedMeasurements) -> IntArray:
    """Per bus: its in-service loads, generators and sources with a ``pq`` measurement (kept in
    the placement's :attr:`~.locate.LocatedMeasurements.memo`; do not write)."""
    covered: IntArray | None = located.memo.get("covered_appliances")
    if covered is None:
        n = model.bus.size
        measured = _measured_appliances(located)
        covered = np.zeros(n, dtype=np.int64)
        for kind, name in _APPLIANCE_TABLES:
            rows = measured[kind]
            if rows.size == 0:
                continue
            on = np.asarray(model.table(name)["in_service"], dtype=bool)[rows]
            covered += np.bincount(appliance_bus_rows(model, name)[rows[on]], minlength=n)
        located.memo["covered_appliances"] = covered
    return covered


_APPLIANCE_TABLES: Final = (
    (Target.LOAD, "load"),
    (Target.GENERATOR, "generator"),
    (Target.SOURCE, "source"),
)


@dataclass(frozen=True, slots=True, eq=False)
class ApplianceCounts:
    """Per bus of a model: its in-service appliances (a model property: kept per model object)."""

    appliances: IntArray
    """Loads, generators and sources."""
    shunts: IntArray


def appliance_counts(model: GridModel) -> ApplianceCounts:
    """The :class:`ApplianceCounts` of ``model``."""

    def build() -> ApplianceCounts:
        n = model.bus.size
        appliances = np.zeros(n, dtype=np.int64)
        for _, name in _APPLIANCE_TABLES:
            on = np.asarray(model.table(name)["in_service"], dtype=bool)
            appliances += np.bincount(appliance_bus_rows(model, name)[on], minlength=n)
        shunt = model.shunt
        shunt_rows = find(model, "bus", shunt["bus"][np.asarray(shunt["in_service"], dtype=bool)])
        return ApplianceCounts(appliances, np.bincount(shunt_rows, minlength=n))

    return model_memo(model, "appliance_counts", build)


def _propagate(
    located: LocatedMeasurements,
    f: IntArray,
    t: IntArray,
    *,
    live: BoolArray,
    injection_known: BoolArray,
    n: int,
) -> IntArray:
    """Component label per bus after rules 1 and 2 of the module docstring (index n: PMU ref)."""
    branches = located.branches
    flow = located.of_quantity(Quantity.PQ, Quantity.I_PHASOR) & (located.target == Target.BRANCH)
    measured_branch = np.zeros(branches.id.size, dtype=bool)
    measured_branch[located.target_row[flow]] = True
    join = (branches.kind[live] == 2) | measured_branch[live]
    merge_a = [f[join]]
    merge_b = [t[join]]
    pmu = located.bus_row[located.of_quantity(Quantity.U_PHASOR)]
    merge_a.append(pmu)
    merge_b.append(np.full(pmu.size, n, dtype=np.int64))
    # each branch seen from both ends: (bus, other bus), for buses with a known injection
    ends = np.concatenate([f, t])
    others = np.concatenate([t, f])
    at_known = injection_known[ends]
    ends, others = ends[at_known], others[at_known]
    while True:
        a = np.concatenate(merge_a)
        b = np.concatenate(merge_b)
        labels = connected_components(_graph(a, b, n + 1), directed=False)[1]
        component: IntArray = labels.astype(np.int64)
        outside = component[others] != component[ends]
        if not outside.any():
            return component[:n]
        bus, neighbour = ends[outside], component[others[outside]]
        pairs = np.unique(np.stack([bus, neighbour], axis=1), axis=0)
        count = np.bincount(pairs[:, 0], minlength=n)
        single = pairs[count[pairs[:, 0]] == 1]
        new = component[single[:, 0]] != single[:, 1]
        if not new.any():
            return component[:n]
        # join the bus with (any bus of) the one neighbouring component
        representative = np.full(n + 1, -1, dtype=np.int64)
        representative[component[::-1]] = np.arange(n + 1)[::-1]
        merge_a.append(single[new, 0])
        merge_b.append(representative[single[new, 1]])


def _distinct_per_group(group: IntArray, label: IntArray, groups: int) -> IntArray:
    pairs = np.unique(np.stack([group, label], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=groups).astype(np.int64)
