"""Service restoration: the plan against an exhaustive search, and re-planning after failures.

The exhaustive reference here shares no code with the planner: it contracts lines and
transformers into sections, tries every open/closed combination of the switches that may move,
keeps the radial ones that drop no supplied load, solves them all in one power-grid-model batch and
takes the best weight, then the fewest operations.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from flisr_zones import one_bus_per_zone
from power_grid_model import CalculationMethod, ComponentType, PowerGridModel
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from openfeeder.analysis.engine_input import to_engine_input
from openfeeder.analysis.flisr.isolation import FlisrInputError, IsolationPlan, plan_isolation
from openfeeder.analysis.flisr.restoration import (
    PRIORITY_WEIGHT,
    OperationPurpose,
    PlannedOperation,
    RestorationLimits,
    RestorationPlan,
    load_weights,
    plan_flisr,
    plan_restoration,
)
from openfeeder.analysis.powerflow import PowerFlowResult, run_power_flow
from openfeeder.errors import AnalysisError
from openfeeder.model.cases import resolve_case
from openfeeder.model.components import DerKind, SwitchKind, empty_table, enum_code
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.synth import generate_feeders
from openfeeder.model.topology import analyze_topology

LIMITS = RestorationLimits()


# --------------------------------------------------------------------------------------------
# Small cases built from a list of sections


@dataclass(frozen=True)
class Section:
    """A cable section with a load at its far end, behind a switch from ``parent``.

    ``parent`` is a feeder name (the section hangs on that feeder's breaker) or a section name.
    """

    name: str
    parent: str
    p_mw: float
    customers: int
    priority: int = 0
    remote: bool = True


def build_case(
    sections: Sequence[Section],
    ties: Sequence[tuple[str, str]],
    *,
    line_ka: dict[str, float],
    length_km: float = 2.0,
) -> GridModel:
    """A 110/20 kV substation with one breaker per feeder; ids: buses 1.., lines 100.., trafo 200,
    switches 300.. (breakers first), loads 400.., source 500."""
    by_name = {s.name: s for s in sections}

    def feeder_of(s: Section) -> str:
        while s.parent in by_name:
            s = by_name[s.parent]
        return s.parent

    feeders = sorted({feeder_of(s) for s in sections})
    buses: list[float] = [110.0, 20.0]
    end_bus: dict[str, int] = {}
    lines: list[tuple[int, int, float]] = []
    switches: list[
        tuple[int, int, int, bool, bool, bool]
    ] = []  # from, to, kind, closed, no, remote
    loads: list[tuple[int, Section]] = []
    breaker = enum_code(SwitchKind.BREAKER)
    lbs = enum_code(SwitchKind.LOAD_BREAK)
    for s in sections:
        buses += [20.0, 20.0]
        start, end = len(buses) - 1, len(buses)
        head = s.parent not in by_name
        upstream = 2 if head else end_bus[s.parent]
        switches.append((upstream, start, breaker if head else lbs, True, False, s.remote))
        lines.append((start, end, line_ka[feeder_of(s)]))
        loads.append((end, s))
        end_bus[s.name] = end
    for a, b in ties:
        switches.append((end_bus[a], end_bus[b], lbs, False, True, True))
    # breakers first, so that they get the lowest switch ids
    switches.sort(key=lambda sw: sw[2] != breaker)
    del feeders

    bus = empty_table("bus", len(buses))
    bus["id"] = np.arange(1, len(buses) + 1)
    bus["u_rated_kv"] = buses
    line = empty_table("line", len(lines))
    line["id"] = 100 + np.arange(len(lines))
    line["from_bus"] = [f for f, _, _ in lines]
    line["to_bus"] = [t for _, t, _ in lines]
    line["length_km"] = length_km
    line["r1_ohm_per_km"], line["x1_ohm_per_km"], line["c1_nf_per_km"] = 0.161, 0.117, 0.0
    line["i_rated_ka"] = [k for _, _, k in lines]
    trafo = empty_table("transformer", 1)
    trafo["id"], trafo["hv_bus"], trafo["lv_bus"] = 200, 1, 2
    trafo["sn_mva"], trafo["u_hv_kv"], trafo["u_lv_kv"] = 40.0, 110.0, 20.0
    trafo["uk_percent"], trafo["pk_kw"] = 12.0, 140.0
    switch = empty_table("switch", len(switches))
    switch["id"] = 300 + np.arange(len(switches))
    for col, values in zip(
        ("from_bus", "to_bus", "kind", "closed", "normally_open", "remote_controllable"),
        zip(*switches, strict=True),
        strict=True,
    ):
        switch[col] = values
    switch["fault_indicator"] = True
    switch["i_rated_ka"] = 0.63
    load = empty_table("load", len(loads))
    load["id"] = 400 + np.arange(len(loads))
    load["bus"] = [b for b, _ in loads]
    load["p_mw"] = [s.p_mw for _, s in loads]
    load["q_mvar"] = [0.3 * s.p_mw for _, s in loads]
    load["customers"] = [s.customers for _, s in loads]
    load["priority"] = [s.priority for _, s in loads]
    source = empty_table("source", 1)
    source["id"], source["bus"] = 500, 1
    return GridModel(
        name="small", bus=bus, line=line, transformer=trafo, switch=switch, load=load, source=source
    )


def three_feeders() -> GridModel:
    """Feeder A (a trunk and a lateral) with ties to B and C, and a B-C tie for transfers.

    Ratings are tight: B and C cannot each take all of A, so plans split A over several ties,
    shed sections or move part of B to C first.
    """
    sections = [
        Section("A1", "A", 1.0, 50),
        Section("A2", "A1", 1.0, 60),
        Section("A3", "A2", 1.2, 40, priority=2),
        Section("A4", "A3", 0.8, 80),
        Section("A5", "A2", 0.9, 30, priority=3),
        Section("A6", "A5", 0.7, 70),
        Section("B1", "B", 1.4, 60),
        Section("B2", "B1", 1.0, 50),
        Section("B3", "B2", 0.8, 40),
        Section("C1", "C", 1.0, 40),
        Section("C2", "C1", 0.9, 60),
    ]
    ties = [("A4", "B3"), ("A6", "C2"), ("B2", "C1")]
    return build_case(sections, ties, line_ka={"A": 0.2, "B": 0.16, "C": 0.15})


def random_feeders(seed: int) -> GridModel:
    """Two to three feeders of two to four sections in random trees, one to four ties between
    them, random ratings, loads (scaled up to 1.7x), priorities and a fifth of the sectionalizing
    switches manual."""
    rnd = random.Random(seed)
    scale = rnd.choice([1.0, 1.3, 1.7])
    sections: list[Section] = []
    names: dict[str, list[str]] = {}
    for feeder in ["A", "B", "C"][: rnd.randint(2, 3)]:
        names[feeder] = []
        for k in range(rnd.randint(2, 4)):
            name = f"{feeder}{k + 1}"
            parent = rnd.choice(names[feeder]) if names[feeder] else feeder
            sections.append(
                Section(
                    name,
                    parent,
                    round(rnd.uniform(0.3, 1.5) * scale, 2),
                    rnd.randint(10, 90),
                    priority=rnd.choice([0, 0, 0, 1, 2, 3]),
                    remote=not names[feeder] or rnd.random() > 0.2,
                )
            )
            names[feeder].append(name)
    ties = set()
    for _ in range(rnd.randint(1, 4)):
        one, other = rnd.sample(sorted(names), 2)
        ties.add((rnd.choice(names[one]), rnd.choice(names[other])))
    ratings = {f: rnd.choice([0.08, 0.1, 0.13, 0.16, 0.2]) for f in names}
    return build_case(sections, sorted(ties), line_ka=ratings)


def weighted_turin() -> GridModel:
    """``turin`` with 40 A cables (a feeder can take only part of the other) and mixed priorities."""
    model = resolve_case("turin")
    line = model.line.copy()
    line["i_rated_ka"] = 0.04
    load = model.load.copy()
    load["priority"] = [0, 3, 0, 1, 0, 2, 0, 0, 1, 0, 0, 0]
    return model.replace(line=line, load=load)


# --------------------------------------------------------------------------------------------
# The exhaustive reference


@dataclass(frozen=True)
class Optimum:
    weight: int
    ops: int
    states: dict[int, bool]


def exhaustive_restoration(
    model: GridModel, free_switch_ids: Collection[int], limits: RestorationLimits
) -> Optimum:
    """Best weight, then fewest operations, over every state of ``free_switch_ids``.

    ``model`` is the state after isolation. Only configurations whose energized islands are trees
    with one source and that keep every supplied load supplied count, with voltages and currents
    within ``limits`` (an element outside a limit now may go further out by the limits' slack).
    All configurations are built at once; they are power-flow checked in order of (weight down,
    operations up) until the first passes.
    """
    bus_ids = model.bus["id"]
    line, trafo, switch = model.line, model.transformer, model.switch
    n_bus = bus_ids.size
    a = np.concatenate([lookup(bus_ids, line["from_bus"]), lookup(bus_ids, trafo["hv_bus"])])
    b = np.concatenate([lookup(bus_ids, line["to_bus"]), lookup(bus_ids, trafo["lv_bus"])])
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n_bus, n_bus))
    n_sec, section = connected_components(graph, directed=False)
    sw_a = section[lookup(bus_ids, switch["from_bus"])]
    sw_b = section[lookup(bus_ids, switch["to_bus"])]
    source_sec = section[lookup(bus_ids, model.source["bus"])]
    load_sec = section[lookup(bus_ids, model.load["bus"])]
    weight = load_weights(model)
    free_rows = lookup(switch["id"], list(free_switch_ids))
    base = switch["closed"].astype(bool)

    combos = np.array(list(itertools.product((False, True), repeat=free_rows.size)), dtype=bool)
    states = np.repeat(base[None, :], max(len(combos), 1), axis=0)
    states[:, free_rows] = combos.reshape(len(states), free_rows.size)
    states = np.concatenate([base[None, :], states])  # row 0: the present state
    label = np.repeat(np.arange(n_sec)[None, :], len(states), axis=0)
    rows = np.arange(len(states))
    for _ in range(n_sec):  # label propagation over closed switches, all configurations at once
        for r in range(switch.size):
            closed = states[:, r]
            low = np.minimum(label[rows, sw_a[r]], label[rows, sw_b[r]])
            label[closed, sw_a[r]] = low[closed]
            label[closed, sw_b[r]] = low[closed]
    source_label = label[:, source_sec]
    one_source = np.array([len(set(row)) == len(row) for row in source_label.tolist()])
    lit = (label[:, :, None] == source_label[:, None, :]).any(axis=2)
    lit_edges = (states & lit[:, sw_a]).sum(axis=1)
    radial = one_source & (lit_edges == lit.sum(axis=1) - source_sec.size)
    supplied = lit[:, load_sec]
    keeps = ~(supplied[0] & ~supplied).any(axis=1)
    gain = (weight * (supplied & ~supplied[0])).sum(axis=1)
    ops = (states != base).sum(axis=1)
    valid = np.flatnonzero(radial & keeps)
    ranked = valid[np.lexsort((ops[valid], -gain[valid]))]
    for start in range(0, ranked.size, 64):
        chunk = ranked[start : start + 64]
        ok = _within_limits(model, states[chunk], limits)
        if ok.any():
            best = int(chunk[np.argmax(ok)])
            return Optimum(
                int(gain[best]),
                int(ops[best]),
                dict(zip(switch["id"].tolist(), states[best].tolist(), strict=True)),
            )
    raise AssertionError("not even the present state passes")


def _within_limits(
    model: GridModel, configurations: np.ndarray, limits: RestorationLimits
) -> np.ndarray:
    engine_input = to_engine_input(model)
    engine = PowerGridModel(engine_input, system_frequency=model.frequency_hz)
    switch = model.switch
    states = np.concatenate([switch["closed"][None, :], configurations]).astype(np.int8)
    update = {
        ComponentType.link: {
            "id": np.broadcast_to(switch["id"], states.shape),
            "from_status": states,
            "to_status": states,
        }
    }
    out = engine.calculate_power_flow(
        update_data=update,
        calculation_method=CalculationMethod.newton_raphson,
        output_component_types={
            ComponentType.node: ["u_pu", "energized"],
            ComponentType.line: ["loading"],
            ComponentType.transformer: ["loading"],
            ComponentType.link: ["i_from", "i_to"],
        },
    )
    u = out[ComponentType.node]["u_pu"]
    lit = out[ComponentType.node]["energized"].astype(bool)
    link = out[ComponentType.link]
    switch_loading = np.maximum(link["i_from"], link["i_to"]) / (switch["i_rated_ka"] * 1e3)
    loading = np.concatenate(
        [
            out[ComponentType.line]["loading"],
            out[ComponentType.transformer]["loading"],
            np.nan_to_num(switch_loading),
        ],
        axis=1,
    )
    low, high = lit[0] & (u[0] < limits.v_min_pu), lit[0] & (u[0] > limits.v_max_pu)
    lo = np.where(low, u[0] - limits.slack_u_pu, limits.v_min_pu) - 1e-6
    hi = np.where(high, u[0] + limits.slack_u_pu, limits.v_max_pu) + 1e-6
    over = loading[0] > limits.max_loading
    cap = np.where(over, loading[0] + limits.slack_loading, limits.max_loading) + 1e-6
    ok_u = ~(lit & ((u < lo) | (u > hi))).any(axis=1)
    ok_i = (loading <= cap).all(axis=1)
    ok: np.ndarray = (ok_u & ok_i)[1:]
    return ok


# --------------------------------------------------------------------------------------------
# Helpers


def tripped(model: GridModel, faulted_bus: int) -> tuple[GridModel, int]:
    """The model after the breaker of the feeder holding ``faulted_bus`` has tripped."""
    topology = analyze_topology(model)
    breaker = int(topology.feeder_of_bus[topology.bus_row(faulted_bus)])
    return model.with_switch_states({breaker: False}), breaker


def after_isolation(model: GridModel, isolation: IsolationPlan) -> GridModel:
    return model.with_switch_states(dict.fromkeys(isolation.open_switch_ids, False))


def assert_consistent(
    model: GridModel, isolation: IsolationPlan, plan: RestorationPlan, limits: RestorationLimits
) -> None:
    """Every step radial, isolated zone dead, restored loads energized, final state in limits."""
    state = after_isolation(model, isolation)
    before = run_power_flow(state)
    lit_before = set(before.bus["id"][before.bus["energized"]].tolist())
    interrupted = set(before.bus["id"][~before.bus["energized"]].tolist())
    for op in plan.operations:
        assert op.switch_id not in isolation.lockout_switch_ids
        state = state.with_switch_states({op.switch_id: op.action == "close"})
        topology = analyze_topology(state)
        assert topology.radial, f"loop after {op}"
        interrupted |= set(topology.bus_ids[~topology.energized].tolist())
    assert dict(zip(state.switch["id"].tolist(), state.switch["closed"].tolist(), strict=True)) == (
        dict(plan.final_switch_states)
    )
    # generation that lost the grid, even for a moment, has not reconnected yet
    generator = state.generator.copy()
    generator["in_service"] &= ~np.isin(generator["bus"], list(interrupted))
    result = run_power_flow(state.replace(generator=generator))
    lit = result.bus["energized"]
    lit_ids = set(result.bus["id"][lit].tolist())
    assert lit_before <= lit_ids, "a supplied bus lost supply"
    assert not lit_ids & set(isolation.isolated_bus_ids)
    load_lit = dict(zip(result.load["id"].tolist(), result.load["energized"].tolist(), strict=True))
    assert all(load_lit[i] for i in plan.restored_load_ids)
    assert not any(load_lit[i] for i in plan.unserved_load_ids)
    u, u0 = result.bus["u_pu"], before.bus["u_pu"]
    floor = np.where(u0 < limits.v_min_pu, u0 - limits.slack_u_pu, limits.v_min_pu) - 1e-6
    assert (u[lit] >= floor[lit]).all()
    assert plan.check.min_u_pu == pytest.approx(u[lit].min())
    loading, loading0 = _loading(result), _loading(before)
    cap = np.where(
        loading0 > limits.max_loading, loading0 + limits.slack_loading, limits.max_loading
    )
    assert (loading <= cap + 1e-6).all()
    assert plan.check.max_loading == pytest.approx(loading.max())
    weight = dict(zip(model.load["id"].tolist(), load_weights(model).tolist(), strict=True))
    assert plan.objective == sum(weight[i] for i in plan.restored_load_ids)
    customers = dict(zip(model.load["id"].tolist(), model.load["customers"].tolist(), strict=True))
    assert plan.restored_customers == sum(customers[i] for i in plan.restored_load_ids)
    assert plan.unserved_customers == sum(customers[i] for i in plan.unserved_load_ids)


def _loading(result: PowerFlowResult) -> np.ndarray:
    """Current over rating of every branch (switches without a rating count as 0)."""
    loading: np.ndarray = np.nan_to_num(result.branch["loading_percent"] / 100.0, nan=0.0)
    return loading


def free_switches(model: GridModel, isolation: IsolationPlan, *, near_outage: bool) -> list[int]:
    """Remote switches not locked out; with ``near_outage`` only those touching a dead bus."""
    state = after_isolation(model, isolation)
    switch = state.switch
    free = switch["remote_controllable"] & ~np.isin(switch["id"], isolation.lockout_switch_ids)
    if near_outage:
        lit = run_power_flow(state).bus
        dead = set(lit["id"][~lit["energized"]].tolist())
        touches = np.array(
            [
                a in dead or b in dead
                for a, b in zip(switch["from_bus"], switch["to_bus"], strict=True)
            ]
        )
        free &= touches
    return switch["id"][free].tolist()


def fault_buses(model: GridModel) -> list[int]:
    """One bus per switching section that is part of a feeder."""
    topology = analyze_topology(model)
    out = []
    for k in range(topology.n_sections):
        buses = topology.section_buses(k)
        if topology.feeder_of_bus[topology.bus_row(int(buses[0]))] >= 0:
            out.append(int(buses[-1]))
    return out


# --------------------------------------------------------------------------------------------
# Tests


def scaled(model: GridModel, factor: float) -> GridModel:
    load = model.load.copy()
    load["p_mw"] *= factor
    load["q_mvar"] *= factor
    return model.replace(load=load)


THREE_FEEDER_FAULTS = [
    pytest.param(factor, bus, id=f"x{factor}-bus{bus}")
    for factor in (1.0, 1.3, 1.6, 2.0)
    for bus in fault_buses(three_feeders())
]


@pytest.mark.parametrize(("factor", "faulted"), THREE_FEEDER_FAULTS)
def test_three_feeders_plan_matches_exhaustive_optimum(factor: float, faulted: int) -> None:
    """Loads scaled up until shedding, splits over two ties and one- and two-level transfers."""
    model, breaker = tripped(scaled(three_feeders(), factor), faulted)
    isolation = plan_isolation(model, [faulted])
    plan = plan_restoration(model, isolation, tripped_breaker=breaker)
    optimum = exhaustive_restoration(
        after_isolation(model, isolation),
        free_switches(model, isolation, near_outage=False),
        LIMITS,
    )
    assert plan.objective == optimum.weight
    assert plan.operation_count <= optimum.ops
    assert plan.optimal
    assert_consistent(model, isolation, plan, LIMITS)


TURIN_FAULTS = fault_buses(resolve_case("turin"))


@pytest.mark.parametrize("faulted", TURIN_FAULTS[::2])
def test_weighted_turin_plan_matches_exhaustive_optimum(faulted: int) -> None:
    """Ratings so low that a feeder takes only part of the other, and mixed priorities.

    turin has one tie, so no transfer can help and the switches that matter are those touching
    the dead part of the grid; the search covers every state of those.
    """
    model, breaker = tripped(weighted_turin(), faulted)
    isolation = plan_isolation(model, [faulted])
    plan = plan_restoration(model, isolation, tripped_breaker=breaker)
    optimum = exhaustive_restoration(
        after_isolation(model, isolation), free_switches(model, isolation, near_outage=True), LIMITS
    )
    assert plan.objective == optimum.weight
    assert plan.operation_count <= optimum.ops
    assert_consistent(model, isolation, plan, LIMITS)


def test_turin_fault_near_the_head_sheds_what_the_other_feeder_cannot_carry() -> None:
    model, breaker = tripped(weighted_turin(), 9)
    isolation = plan_isolation(model, [9])
    plan = plan_restoration(model, isolation, tripped_breaker=breaker)
    assert plan.operations[0] == PlannedOperation(300, "close", OperationPurpose.RECLOSE)
    assert plan.shed_bus_ids  # capacity is short
    assert OperationPurpose.SHED in {op.purpose for op in plan.operations}
    assert 0 < plan.objective < plan.max_objective
    # the priority-2 secondary (load 405, 110 customers x 5) is among the restored
    assert 405 in plan.restored_load_ids


@pytest.mark.parametrize("faulted", TURIN_FAULTS)
def test_turin_full_restoration_with_few_operations(faulted: int) -> None:
    model, breaker = tripped(resolve_case("turin"), faulted)
    plan = plan_flisr(model, [faulted], tripped_breaker=breaker)
    restoration = plan.restoration
    assert restoration.objective == restoration.max_objective
    assert restoration.operation_count <= 2  # reclose and the tie at most
    assert restoration.optimal
    assert_consistent(model, plan.isolation, restoration, LIMITS)


def test_synthetic_every_fault_gives_a_consistent_plan() -> None:
    healthy = generate_feeders(buses=1000, feeders=8, ties=4, seed=1)
    restored = 0
    for faulted in one_bus_per_zone(healthy):
        model, breaker = tripped(healthy, faulted)
        plan = plan_flisr(model, [faulted], tripped_breaker=breaker)
        assert plan.restoration.optimal
        assert_consistent(model, plan.isolation, plan.restoration, LIMITS)
        restored += plan.restoration.restored_customers
    assert restored > 0


def test_tie_that_fails_to_close_gives_an_alternative_plan() -> None:
    base = three_feeders()
    model, breaker = tripped(base, 4)
    isolation = plan_isolation(model, [4])
    first = plan_restoration(model, isolation, tripped_breaker=breaker)
    ties = [op.switch_id for op in first.operations if op.purpose is OperationPurpose.RESTORE]
    assert len(ties) == 2  # A's healthy part split over the ties to B and C
    failed = ties[0]
    # what was done before the tie failed: every operation listed before it
    done = first.operations[: [op.switch_id for op in first.operations].index(failed)]
    now = after_isolation(model, isolation).with_switch_states(
        {op.switch_id: op.action == "close" for op in done}
    )
    isolation_now = plan_isolation(now, [4], unavailable=[failed])
    assert isolation_now.open_switch_ids == ()
    second = plan_restoration(now, isolation_now, tripped_breaker=breaker, unavailable=[failed])
    assert failed not in {op.switch_id for op in second.operations}
    free = [s for s in free_switches(now, isolation_now, near_outage=False) if s != failed]
    optimum = exhaustive_restoration(after_isolation(now, isolation_now), free, LIMITS)
    assert second.objective == optimum.weight
    assert second.operation_count <= optimum.ops
    assert second.objective < first.objective
    assert_consistent(now, isolation_now, second, LIMITS)


def test_breaker_that_fails_to_reclose_lets_a_tie_feed_the_upstream_part() -> None:
    model, breaker = tripped(three_feeders(), 8)  # fault on A3
    isolation = plan_isolation(model, [8])
    second = plan_restoration(model, isolation, tripped_breaker=breaker, unavailable=[breaker])
    assert breaker not in {op.switch_id for op in second.operations}
    # A2, upstream of the fault, comes back through A5, A6 and the tie to C (A1 is shed: C
    # cannot carry it too)
    restored_buses = {b for part in second.parts for b in part.bus_ids}
    assert {5, 6} <= restored_buses
    free = [s for s in free_switches(model, isolation, near_outage=False) if s != breaker]
    optimum = exhaustive_restoration(after_isolation(model, isolation), free, LIMITS)
    assert second.objective == optimum.weight
    assert second.operation_count <= optimum.ops
    assert_consistent(model, isolation, second, LIMITS)


def test_switch_that_fails_to_open_widens_isolation_and_restoration_follows() -> None:
    model, breaker = tripped(three_feeders(), 6)  # fault on A2: 303 upstream
    first = plan_isolation(model, [6])
    assert first.upstream_switch_ids == (303,)
    # 303 fails to open, the others open
    now = model.with_switch_states({s: False for s in first.open_switch_ids if s != 303})
    isolation = plan_isolation(now, [6], unavailable=[303])
    assert isolation.upstream_switch_ids == (breaker,)
    plan = plan_restoration(now, isolation, tripped_breaker=breaker, unavailable=[303])
    optimum = exhaustive_restoration(
        after_isolation(now, isolation),
        [s for s in free_switches(now, isolation, near_outage=False) if s != 303],
        LIMITS,
    )
    assert plan.objective == optimum.weight
    assert plan.operation_count <= optimum.ops
    assert_consistent(now, isolation, plan, LIMITS)


def test_operations_open_before_they_close_and_transfers_come_in_pairs() -> None:
    model, breaker = tripped(scaled(three_feeders(), 1.3), 8)
    isolation = plan_isolation(model, [8])
    plan = plan_restoration(model, isolation, tripped_breaker=breaker)
    purposes = [op.purpose for op in plan.operations]
    assert OperationPurpose.TRANSFER_OPEN in purposes
    assert sum(op.action == "open" for op in plan.operations) >= 2  # a two-level transfer
    # replaying the plan never closes a loop and never parallels two feeders
    assert_consistent(model, isolation, plan, LIMITS)
    assert plan.operations[[op.switch_id for op in plan.operations].index(breaker)].purpose is (
        OperationPurpose.RECLOSE
    )


def test_given_load_values_replace_the_model_ones() -> None:
    model, breaker = tripped(three_feeders(), 4)
    isolation = plan_isolation(model, [4])
    heavier = plan_restoration(
        model, isolation, tripped_breaker=breaker, load_p_mw=model.load["p_mw"] * 1.6
    )
    reference = plan_restoration(
        *tripped(scaled(three_feeders(), 1.6), 4)[:1], isolation, tripped_breaker=breaker
    )
    assert heavier.objective == reference.objective < reference.max_objective
    assert heavier.operations == reference.operations
    assert heavier.restored_mw == pytest.approx(reference.restored_mw)


def test_weights_follow_customers_and_priority() -> None:
    model = three_feeders()
    weights = dict(zip(model.load["id"].tolist(), load_weights(model).tolist(), strict=True))
    assert weights[400] == 50 * PRIORITY_WEIGHT[0]
    assert weights[402] == 40 * PRIORITY_WEIGHT[2]
    assert weights[404] == 30 * PRIORITY_WEIGHT[3]
    load = model.load.copy()
    load["in_service"][0] = False
    assert load_weights(model.replace(load=load))[0] == 0


def test_small_power_flow_budget_still_gives_a_valid_plan() -> None:
    model, breaker = tripped(scaled(three_feeders(), 1.6), 4)
    isolation = plan_isolation(model, [4])
    plan = plan_restoration(model, isolation, tripped_breaker=breaker, max_power_flows=3)
    assert not plan.optimal
    assert plan.check.power_flows <= 3 + 16
    assert_consistent(model, isolation, plan, LIMITS)


def test_no_tie_behind_the_fault_leaves_the_rest_unserved() -> None:
    model, breaker = tripped(three_feeders(), 18)  # B2: B3 has the tie to A4, B2 the one to C1
    isolation = plan_isolation(model, [18])
    plan = plan_restoration(model, isolation, tripped_breaker=breaker)
    isolated_loads = set(
        model.load["id"][np.isin(model.load["bus"], isolation.isolated_bus_ids)].tolist()
    )
    assert isolated_loads <= set(plan.unserved_load_ids)
    total = int(model.load["customers"][np.isin(model.load["id"], list(isolated_loads))].sum())
    assert plan.unserved_customers >= total


def test_flisr_plan_as_dict() -> None:
    model, breaker = tripped(resolve_case("turin"), 9)
    plan = plan_flisr(model, [9], tripped_breaker=breaker)
    data = json.loads(json.dumps(plan.as_dict()))
    assert data["faulted_section"] == [9, 11]
    assert data["isolation"] == [303, 304]
    assert data["restoration"] == [
        {"switch": 300, "action": "close", "purpose": "reclose"},
        {"switch": 325, "action": "close", "purpose": "restore"},
    ]
    assert data["restored_customers"] + data["unserved_customers"] == 695  # all of feeder A
    assert data["unserved_customers"] == 95
    assert data["unserved_mw"] == pytest.approx(0.1425)
    restoration = plan.restoration.as_dict()
    assert restoration["final_switch_states"]["303"] is False
    assert restoration["check"]["power_flows"] >= 1


def test_bad_input_is_named() -> None:
    model, breaker = tripped(resolve_case("turin"), 9)
    isolation = plan_isolation(model, [9])
    with pytest.raises(FlisrInputError, match="no switch with id 42") as info:
        plan_restoration(model, isolation, tripped_breaker=breaker, unavailable=[42])
    assert info.value.component_id == 42
    with pytest.raises(FlisrInputError, match="no switch with id 43"):
        plan_restoration(model, isolation, tripped_breaker=43)
    with pytest.raises(AnalysisError, match=r"load_p_mw must have shape \(12,\)"):
        plan_restoration(model, isolation, tripped_breaker=breaker, load_p_mw=[1.0, 2.0])
    # a locked-out switch that is closed: the isolation did not happen as planned
    stale = dataclasses.replace(isolation, open_switch_ids=())
    with pytest.raises(FlisrInputError, match="switch 303 bounds the isolated zone"):
        plan_restoration(model, stale, tripped_breaker=breaker)
    with pytest.raises(ValueError, match="v_min_pu"):
        RestorationLimits(v_min_pu=1.2)


def test_generation_in_the_outage_area_is_not_counted_on() -> None:
    """PV behind the fault reconnects only minutes after the supply returns: plan without it."""
    base = scaled(three_feeders(), 1.3)
    pv = empty_table("generator", 1)
    pv["id"], pv["bus"], pv["kind"], pv["p_mw"] = 600, 8, enum_code(DerKind.PV), 3.0
    with_pv = base.replace(generator=pv)
    plans = []
    for model in (base, with_pv):
        tripped_model, breaker = tripped(model, 4)
        isolation = plan_isolation(tripped_model, [4])
        plans.append(plan_restoration(tripped_model, isolation, tripped_breaker=breaker))
    assert plans[1].objective == plans[0].objective < plans[0].max_objective
    assert plans[1].operations == plans[0].operations


def test_section_out_for_work_stays_dead() -> None:
    """A5 and A6 are out for work behind 306 (open, tagged): a fault on A2 must not feed them."""
    healthy = three_feeders().with_switch_states({306: False})
    model, breaker = tripped(healthy, 6)
    isolation = plan_isolation(model, [6], unavailable=[306])
    assert 306 in isolation.lockout_switch_ids
    plan = plan_restoration(model, isolation, tripped_breaker=breaker, unavailable=[306])
    work = {11, 12, 13, 14}
    assert not work & {b for part in plan.parts for b in part.bus_ids}
    assert plan.final_switch_states[312] is False  # the tie into the work section stays open
    work_loads = set(model.load["id"][np.isin(model.load["bus"], list(work))].tolist())
    assert not work_loads & set(plan.unserved_load_ids)  # not part of this outage
    assert_consistent(model, isolation, plan, LIMITS)


def test_transfer_whose_closing_fails_is_planned_again() -> None:
    """The moved zones are dead after the transfer's opening; the next plan brings them back."""
    model, breaker = tripped(scaled(three_feeders(), 1.3), 8)
    isolation = plan_isolation(model, [8])
    first = plan_restoration(model, isolation, tripped_breaker=breaker)
    ids = [op.switch_id for op in first.operations]
    last_open = max(i for i, op in enumerate(first.operations) if op.action == "open")
    failed = next(op.switch_id for op in first.operations[last_open:] if op.action == "close")
    done = first.operations[: ids.index(failed)]
    now = after_isolation(model, isolation).with_switch_states(
        {op.switch_id: op.action == "close" for op in done}
    )
    cut_off = run_power_flow(now).bus
    dark = set(cut_off["id"][~cut_off["energized"]].tolist()) - set(isolation.isolated_bus_ids)
    supplied_before = run_power_flow(after_isolation(model, isolation)).bus
    moved = dark & set(supplied_before["id"][supplied_before["energized"]].tolist())
    assert moved  # customers of a healthy feeder lost supply with the failed closing
    isolation_now = plan_isolation(now, [8], unavailable=[failed])
    second = plan_restoration(now, isolation_now, tripped_breaker=breaker, unavailable=[failed])
    restored = {b for part in second.parts for b in part.bus_ids}
    assert moved <= restored
    free = [s for s in free_switches(now, isolation_now, near_outage=False) if s != failed]
    optimum = exhaustive_restoration(after_isolation(now, isolation_now), free, LIMITS)
    assert second.objective == optimum.weight
    assert second.operation_count <= optimum.ops
    assert_consistent(now, isolation_now, second, LIMITS)


@pytest.mark.parametrize("seed", range(12))
def test_random_grids_match_exhaustive_optimum(seed: int) -> None:
    """Every fault of a random grid: the plan's weight is the exhaustive optimum's."""
    base = random_feeders(seed)
    for faulted in fault_buses(base):
        model, breaker = tripped(base, faulted)
        isolation = plan_isolation(model, [faulted])
        plan = plan_restoration(model, isolation, tripped_breaker=breaker)
        free = free_switches(model, isolation, near_outage=False)
        optimum = exhaustive_restoration(after_isolation(model, isolation), free, LIMITS)
        assert plan.objective == optimum.weight, f"fault at bus {faulted}"
        assert plan.operation_count <= optimum.ops, f"fault at bus {faulted}"
        assert_consistent(model, isolation, plan, LIMITS)
