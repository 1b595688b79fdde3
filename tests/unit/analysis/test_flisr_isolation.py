"""Fault isolation: the smallest dead zone, the next switch out when one fails, clear errors."""

from __future__ import annotations

import json
from collections.abc import Collection

import numpy as np
import pytest
from flisr_zones import one_bus_per_zone
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from openfeeder.analysis.flisr.isolation import (
    FlisrInputError,
    IsolationPlan,
    SkipReason,
    plan_isolation,
)
from openfeeder.errors import AnalysisError
from openfeeder.model.cases import resolve_case
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.synth import generate_feeders
from openfeeder.model.topology import analyze_topology, upstream_path


def tripped(model: GridModel, faulted_bus: int) -> tuple[GridModel, int]:
    topology = analyze_topology(model)
    breaker = int(topology.feeder_of_bus[topology.bus_row(faulted_bus)])
    return model.with_switch_states({breaker: False}), breaker


def assert_minimal(
    model: GridModel,
    faulted: Collection[int],
    plan: IsolationPlan,
    unavailable: Collection[int] = (),
) -> None:
    """The plan isolates the faulted buses and no operable switch could shrink the dead zone."""
    switch = model.switch
    inside = set(plan.isolated_bus_ids)
    assert set(faulted) <= inside
    ends_in = np.array(
        [
            (a in inside, b in inside)
            for a, b in zip(switch["from_bus"], switch["to_bus"], strict=True)
        ]
    ).reshape(-1, 2)
    boundary = set(switch["id"][ends_in[:, 0] != ends_in[:, 1]].tolist())
    assert set(plan.lockout_switch_ids) == boundary
    closed = dict(zip(switch["id"].tolist(), switch["closed"].tolist(), strict=True))
    assert set(plan.open_switch_ids) == {s for s in boundary if closed[s]}
    operable = switch["remote_controllable"] & ~np.isin(switch["id"], list(unavailable))
    operable_ids = set(switch["id"][operable].tolist())
    assert set(plan.open_switch_ids) <= operable_ids
    assert set(plan.upstream_switch_ids) | set(plan.downstream_switch_ids) == boundary
    assert not set(plan.upstream_switch_ids) & set(plan.downstream_switch_ids)

    # minimal: the dead zone is what lines, transformers and closed switches that cannot be
    # operated connect to the faulted buses, nothing more
    bus_ids = model.bus["id"]
    fixed = switch["closed"] & ~operable
    a = np.concatenate(
        [model.line["from_bus"], model.transformer["hv_bus"], switch["from_bus"][fixed]]
    )
    b = np.concatenate([model.line["to_bus"], model.transformer["lv_bus"], switch["to_bus"][fixed]])
    rows_a, rows_b = lookup(bus_ids, a), lookup(bus_ids, b)
    n = bus_ids.size
    _, label = connected_components(
        coo_matrix((np.ones(a.size), (rows_a, rows_b)), shape=(n, n)), directed=False
    )
    zone_labels = set(label[lookup(bus_ids, list(faulted))].tolist())
    assert inside == set(bus_ids[np.isin(label, list(zone_labels))].tolist())

    # after the openings (and with the breaker tripped) the zone is dead
    opened = model.with_switch_states(dict.fromkeys(plan.open_switch_ids, False))
    topology = analyze_topology(opened)
    rows = topology.bus_rows(np.array(plan.isolated_bus_ids))
    if plan.upstream_switch_ids:
        assert not topology.energized[rows].any()


def assert_upstream_on_supply_path(healthy: GridModel, faulted: int, plan: IsolationPlan) -> None:
    """In the grid before the trip, the upstream switch lies between the fault and its source."""
    _, branches = upstream_path(analyze_topology(healthy), faulted)
    assert len(plan.upstream_switch_ids) == 1
    assert plan.upstream_switch_ids[0] in branches
    assert not set(plan.downstream_switch_ids) & set(branches)


def feeder_buses(model: GridModel) -> list[int]:
    topology = analyze_topology(model)
    return topology.bus_ids[topology.feeder_of_bus >= 0].tolist()


@pytest.mark.parametrize("faulted", feeder_buses(resolve_case("turin")))
def test_turin_every_fault_is_isolated_minimally(faulted: int) -> None:
    healthy = resolve_case("turin")
    model, breaker = tripped(healthy, faulted)
    plan = plan_isolation(model, [faulted])
    assert_minimal(model, [faulted], plan)
    assert_upstream_on_supply_path(healthy, faulted, plan)
    assert plan.feeding_switch_id == breaker
    assert plan.widened_by == ()  # every turin switch is remote controllable
    # a cable section or an RMU busbar with its LV side: never more than one switching section
    assert len(plan.isolated_bus_ids) == 2


def test_synthetic_every_fault_is_isolated_minimally() -> None:
    healthy = generate_feeders(buses=1000, feeders=8, ties=4, seed=1)
    widened = 0
    faults = one_bus_per_zone(healthy)
    assert len(faults) > 50
    for faulted in faults:
        model, breaker = tripped(healthy, faulted)
        plan = plan_isolation(model, [faulted])
        assert_minimal(model, [faulted], plan)
        assert_upstream_on_supply_path(healthy, faulted, plan)
        assert plan.feeding_switch_id == breaker
        widened += bool(plan.widened_by)
        assert all(s.reason is SkipReason.NOT_REMOTE for s in plan.widened_by)
    assert widened > 0  # half of the sectionalizers are manual there


def test_switch_that_fails_to_open_gives_the_next_one_upstream() -> None:
    model, _ = tripped(resolve_case("turin"), 9)  # RMU busbar of secondary 2, 303..304
    first = plan_isolation(model, [9])
    assert first.upstream_switch_ids == (303,)
    assert first.downstream_switch_ids == (304,)
    # 303 fails to open, 304 opened: the next plan goes one switch further up
    now = model.with_switch_states({304: False})
    second = plan_isolation(now, [9], unavailable=[303])
    assert second.upstream_switch_ids == (302,)
    assert second.open_switch_ids == (302,)
    assert set(second.isolated_bus_ids) == set(first.isolated_bus_ids) | {6, 8}
    assert [(s.switch_id, s.reason) for s in second.widened_by] == [(303, SkipReason.UNAVAILABLE)]
    assert_minimal(now, [9], second, unavailable=[303])


def test_switch_that_fails_to_open_gives_the_next_one_downstream() -> None:
    model, _ = tripped(resolve_case("turin"), 9)
    now = model.with_switch_states({303: False})
    plan = plan_isolation(now, [9], unavailable=[304])
    assert plan.upstream_switch_ids == (303,)
    assert plan.downstream_switch_ids == (305,)
    assert plan.open_switch_ids == (305,)
    assert set(plan.isolated_bus_ids) == {9, 10, 11, 12}
    assert_minimal(now, [9], plan, unavailable=[304])


def test_manual_switch_is_passed_with_its_reason() -> None:
    healthy = resolve_case("turin")
    switch = healthy.switch.copy()
    switch["remote_controllable"][switch["id"] == 304] = False
    model, _ = tripped(healthy.replace(switch=switch), 9)
    plan = plan_isolation(model, [9])
    assert plan.downstream_switch_ids == (305,)
    assert [(s.switch_id, s.reason) for s in plan.widened_by] == [(304, SkipReason.NOT_REMOTE)]


def test_fault_behind_the_breaker_locks_the_tripped_breaker() -> None:
    model, breaker = tripped(resolve_case("turin"), 4)
    plan = plan_isolation(model, [4])
    assert plan.upstream_switch_ids == (breaker,)
    assert breaker not in plan.open_switch_ids  # already open
    assert breaker in plan.lockout_switch_ids


def test_fault_next_to_the_tie_locks_the_tie() -> None:
    model, _ = tripped(resolve_case("turin"), 26)  # the cable that ends at the open point
    plan = plan_isolation(model, [26])
    assert plan.open_switch_ids == (312,)
    assert plan.downstream_switch_ids == (325,)
    assert 325 in plan.lockout_switch_ids


def test_substation_fault_opens_every_feeder_of_the_busbar() -> None:
    model = resolve_case("turin")
    plan = plan_isolation(model, [2])  # MV busbar of primary A, not tripped yet
    assert plan.upstream_switch_ids == ()
    assert plan.open_switch_ids == (300,)
    assert plan.feeding_switch_id is None
    assert set(plan.isolated_bus_ids) == {1, 2}


def test_fault_before_the_trip_is_isolated_from_the_supply_tree() -> None:
    healthy = resolve_case("turin")
    plan = plan_isolation(healthy, [9])
    assert plan.upstream_switch_ids == (303,)
    assert plan.open_switch_ids == (303, 304)
    assert plan.feeding_switch_id is None


def test_faulted_zone_of_several_sections() -> None:
    model, _ = tripped(resolve_case("turin"), 9)
    plan = plan_isolation(model, [9, 6])
    assert plan.upstream_switch_ids == (302,)
    assert plan.downstream_switch_ids == (304,)
    assert_minimal(model, [9, 6], plan)


def test_tripped_breaker_names_the_feed_among_several() -> None:
    # after a first restoration attempt the zone has two energized neighbours behind open switches
    model, _ = tripped(resolve_case("turin"), 9)
    done = model.with_switch_states({303: False, 304: False, 300: True, 325: True})
    by_default = plan_isolation(done, [9])
    assert by_default.open_switch_ids == ()
    assert by_default.feeding_switch_id == 303  # both are load-break switches: lowest id
    named = plan_isolation(done, [9], tripped_breaker=304)
    assert named.feeding_switch_id == 304
    assert named.upstream_switch_ids == (304,)


def test_plan_as_dict_is_json() -> None:
    model, _ = tripped(resolve_case("turin"), 9)
    plan = plan_isolation(model, [9], unavailable=[303])
    data = json.loads(json.dumps(plan.as_dict()))
    assert data["open_switch_ids"] == list(plan.open_switch_ids)
    assert data["widened_by"] == [{"switch": 303, "reason": "unavailable"}]
    assert data["feeding_switch_id"] == 300


def test_unknown_ids_are_named() -> None:
    model = resolve_case("turin")
    with pytest.raises(FlisrInputError, match="no bus with id 9999") as bus_error:
        plan_isolation(model, [9, 9999])
    assert (bus_error.value.component, bus_error.value.component_id) == ("bus", 9999)
    with pytest.raises(FlisrInputError, match="no switch with id 777") as switch_error:
        plan_isolation(model, [9], unavailable=[304, 777])
    assert (switch_error.value.component, switch_error.value.component_id) == ("switch", 777)
    with pytest.raises(FlisrInputError, match="no switch with id 1"):
        plan_isolation(model, [9], tripped_breaker=1)
    with pytest.raises(AnalysisError, match="no faulted bus"):
        plan_isolation(model, [])


def test_fault_in_a_part_no_supply_reaches_is_an_error() -> None:
    model = resolve_case("turin")
    source = model.source.copy()
    source["in_service"][source["id"] == 500] = False  # primary A lost: feeder A is dead
    dead = model.replace(source=source)
    with pytest.raises(FlisrInputError, match="bus 9 is dead") as info:
        plan_isolation(dead, [9])
    assert info.value.component_id == 9
