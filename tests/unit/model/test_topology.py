from __future__ import annotations

import json

import numpy as np
import pytest
from topology_cases import CaseBuilder, TwoFeederCase, large_feeder_tree, two_feeders

from openfeeder.model import GridModel, SwitchKind
from openfeeder.model.topology import (
    Feeder,
    Topology,
    analyze_topology,
    buses_downstream,
    feeders,
    topology_summary,
    upstream_path,
)


def _at(topology: Topology, values: np.ndarray, bus_ids: list[int]) -> list[int]:
    return [int(values[topology.bus_row(b)]) for b in bus_ids]


def _section_of(topology: Topology, bus_id: int) -> int:
    return int(topology.section_of_bus[topology.bus_row(bus_id)])


@pytest.fixture
def case() -> TwoFeederCase:
    return two_feeders()


def test_radial_two_feeders(case: TwoFeederCase) -> None:
    topo = analyze_topology(case.model())

    assert topo.radial
    assert topo.loops.tolist() == []
    assert topo.energized.all()
    assert (topo.source_of_bus == case.source).all()
    assert _at(topo, topo.feeder_of_bus, [case.hv, case.busbar]) == [-1, -1]
    assert _at(topo, topo.feeder_of_bus, case.a) == [case.breaker_a] * 6
    assert _at(topo, topo.feeder_of_bus, case.b) == [case.breaker_b] * 6
    assert _at(topo, topo.depth, [case.hv, case.busbar, *case.a]) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert _at(topo, topo.parent_bus, [case.hv, case.busbar]) == [-1, topo.bus_row(case.hv)]
    assert _at(topo, topo.parent_branch, [case.hv, case.busbar, case.a[0]]) == [
        -1,
        case.transformer,
        case.breaker_a,
    ]
    assert feeders(topo) == (
        Feeder(head_switch_id=case.breaker_a, source_id=case.source, bus_count=6, section_count=3),
        Feeder(head_switch_id=case.breaker_b, source_id=case.source, bus_count=6, section_count=3),
    )
    assert topo.tie_switch_ids.tolist() == [case.tie]
    assert topo.tie_closed.tolist() == [False]
    assert topo.tie_feeders.tolist() == [[case.breaker_a, case.breaker_b]]
    assert topo.tie_sources.tolist() == [[case.source, case.source]]


def test_sections_and_bounding_switches(case: TwoFeederCase) -> None:
    topo = analyze_topology(case.model())

    # Substation (hv + busbar through the transformer) and three sections per feeder.
    assert topo.n_sections == 7
    substation = _section_of(topo, case.busbar)
    assert substation == _section_of(topo, case.hv) == 0
    assert topo.section_buses(substation).tolist() == [case.hv, case.busbar]
    assert topo.switches_bounding(substation).tolist() == [case.breaker_a, case.breaker_b]
    assert topo.section_feeder[substation] == -1

    a = case.a
    middle = _section_of(topo, a[2])
    assert topo.section_buses(middle).tolist() == [a[2], a[3]]
    assert topo.switches_bounding(middle).tolist() == sorted(case.sect_a)
    assert topo.section_feeder[middle] == case.breaker_a
    assert topo.section_source[middle] == case.source
    # The open tie bounds the last section of each feeder all the same.
    assert case.tie in topo.switches_bounding(_section_of(topo, a[5])).tolist()
    assert case.tie in topo.switches_bounding(_section_of(topo, case.b[5])).tolist()
    with pytest.raises(IndexError):
        topo.section_buses(topo.n_sections)


def test_upstream_path(case: TwoFeederCase) -> None:
    topo = analyze_topology(case.model())

    buses, branches = upstream_path(topo, case.a[3])
    assert buses == [case.a[3], case.a[2], case.a[1], case.a[0], case.busbar, case.hv]
    assert branches == [
        case.lines_a[1],
        case.sect_a[0],
        case.lines_a[0],
        case.breaker_a,
        case.transformer,
    ]
    assert upstream_path(topo, case.hv) == ([case.hv], [])
    assert topo.bus_rows([case.a[3], 999_999, case.hv]).tolist() == [
        topo.bus_row(case.a[3]),
        -1,
        0,
    ]
    with pytest.raises(KeyError):
        upstream_path(topo, 999_999)


def test_buses_downstream(case: TwoFeederCase) -> None:
    topo = analyze_topology(case.model())

    assert sorted(buses_downstream(topo, case.sect_a[0]).tolist()) == case.a[2:]
    assert sorted(buses_downstream(topo, case.transformer).tolist()) == sorted(
        [case.busbar, *case.a, *case.b]
    )
    assert buses_downstream(topo, case.tie).tolist() == []  # open
    assert buses_downstream(topo, case.source).tolist() == []  # not a branch


def test_opening_a_switch_deenergizes_exactly_the_sections_below(case: TwoFeederCase) -> None:
    model = case.model()
    before = analyze_topology(model)
    opened = case.sect_a[0]
    after = analyze_topology(model.with_switch_states({opened: False}))

    lost = set(case.a[2:])
    assert set(buses_downstream(before, opened).tolist()) == lost
    dark = {int(b) for b in after.bus_ids[~after.energized]}
    assert dark == lost
    # Exactly whole sections went dark: the two below the switch.
    dark_sections = {_section_of(after, b) for b in lost}
    assert dark_sections == {_section_of(after, case.a[2]), _section_of(after, case.a[4])}
    for s in dark_sections:
        assert set(after.section_buses(s).tolist()) <= lost
        assert after.section_feeder[s] == -1
        assert after.section_source[s] == -1
    # Everything else keeps its source, feeder and parent.
    kept = after.energized
    assert (after.source_of_bus[kept] == before.source_of_bus[kept]).all()
    assert (after.feeder_of_bus[kept] == before.feeder_of_bus[kept]).all()
    assert (after.parent_bus[kept] == before.parent_bus[kept]).all()
    assert (after.source_of_bus[~kept] == -1).all()
    assert (after.feeder_of_bus[~kept] == -1).all()
    assert (after.parent_bus[~kept] == -1).all()
    assert (after.depth[~kept] == -1).all()
    # Sections do not depend on switch positions; islands do.
    assert (after.section_of_bus == before.section_of_bus).all()
    assert after.n_islands == before.n_islands + 1
    assert after.radial
    assert after.feeder_bus_count.tolist() == [2, 6]


def test_closing_the_tie_restores_the_isolated_part_from_the_other_feeder(
    case: TwoFeederCase,
) -> None:
    model = case.model().with_switch_states({case.sect_b[0]: False, case.tie: True})
    topo = analyze_topology(model)

    assert topo.energized.all()
    assert topo.radial
    b = case.b
    assert _at(topo, topo.feeder_of_bus, b[:2]) == [case.breaker_b] * 2
    assert _at(topo, topo.feeder_of_bus, b[2:]) == [case.breaker_a] * 4
    assert topo.tie_feeders.tolist() == [[case.breaker_a, case.breaker_a]]
    assert topo.tie_sources.tolist() == [[case.source, case.source]]
    buses, branches = upstream_path(topo, b[2])
    assert buses == [b[2], b[3], b[4], b[5], *reversed(case.a), case.busbar, case.hv]
    assert branches[3] == case.tie
    assert [f.bus_count for f in feeders(topo)] == [10, 2]


def test_closing_the_tie_between_two_live_feeders_is_a_loop_at_the_tie(
    case: TwoFeederCase,
) -> None:
    topo = analyze_topology(case.model().with_switch_states({case.tie: True}))

    assert not topo.radial
    assert topo.loops.tolist() == [case.tie]
    assert not topo.island_radial[0]
    # The tie is outside the supply tree, so both feeders keep their buses.
    assert _at(topo, topo.feeder_of_bus, case.a) == [case.breaker_a] * 6
    assert _at(topo, topo.feeder_of_bus, case.b) == [case.breaker_b] * 6
    assert topo_summary_of(case.model().with_switch_states({case.tie: True}))["loops"] == [case.tie]


def topo_summary_of(model: GridModel) -> dict[str, object]:
    return topology_summary(model, analyze_topology(model))


def test_tie_between_two_substations() -> None:
    cb = CaseBuilder()
    bb1, x1, bb2, x2 = cb.add_buses(4)
    src1, src2 = cb.add_source(bb1), cb.add_source(bb2)
    cb1 = cb.add_switch(bb1, x1, SwitchKind.BREAKER)
    cb2 = cb.add_switch(bb2, x2, SwitchKind.BREAKER)
    tie = cb.add_switch(x1, x2, normally_open=True, closed=False)
    model = cb.build()

    open_tie = analyze_topology(model)
    assert open_tie.radial
    assert open_tie.n_islands == 2
    assert open_tie.tie_feeders.tolist() == [[cb1, cb2]]
    assert open_tie.tie_sources.tolist() == [[src1, src2]]

    closed = analyze_topology(model.with_switch_states({tie: True}))
    assert closed.n_islands == 1
    assert closed.island_sources(0).tolist() == [src1, src2]
    assert not closed.radial
    assert closed.loops.tolist() == [tie]
    assert _at(closed, closed.source_of_bus, [bb1, x1, bb2, x2]) == [src1, src1, src2, src2]


def test_two_sources_meeting_in_a_line_name_the_meeting_branch() -> None:
    cb = CaseBuilder()
    b = cb.add_buses(5)
    s1, s2 = cb.add_source(b[0]), cb.add_source(b[4])
    lines = [cb.add_line(b[i], b[i + 1]) for i in range(4)]
    topo = analyze_topology(cb.build())

    assert not topo.radial
    # b2 is two lines from both sources; the first listed line wins the tree.
    assert topo.loops.tolist() == [lines[2]]
    assert _at(topo, topo.source_of_bus, b) == [s1, s1, s1, s2, s2]


def test_ring_is_reported_non_radial_with_the_closing_branch() -> None:
    cb = CaseBuilder()
    b = cb.add_buses(4)
    cb.add_source(b[0])
    ring = [cb.add_line(b[0], b[1]), cb.add_line(b[1], b[2]), cb.add_line(b[2], b[3])]
    closing = cb.add_line(b[3], b[0])
    topo = analyze_topology(cb.build())

    assert not topo.radial
    # b2 is two hops away both ways; the earlier line (b1-b2) is in the tree, b2-b3 closes it.
    assert topo.loops.tolist() == [ring[2]]
    assert topo.parent_branch[topo.bus_row(b[3])] == closing
    assert topo.island_radial.tolist() == [False]


def test_parallel_branches_and_double_source_are_loops() -> None:
    cb = CaseBuilder()
    b0, b1 = cb.add_buses(2)
    first_source = cb.add_source(b0)
    second_source = cb.add_source(b0)
    first = cb.add_line(b0, b1)
    parallel = cb.add_switch(b1, b0)
    topo = analyze_topology(cb.build())

    assert topo.loops.tolist() == sorted([second_source, parallel])
    assert topo.parent_branch[topo.bus_row(b1)] == first
    assert (topo.source_of_bus == first_source).all()


def test_deenergized_island() -> None:
    cb = CaseBuilder()
    live = cb.add_buses(2)
    dark = cb.add_buses(3)
    source = cb.add_source(live[0])
    cb.add_source(dark[0], in_service=False)
    cb.add_line(*live)
    cb.add_line(dark[0], dark[1])
    sw = cb.add_switch(dark[1], dark[2], SwitchKind.BREAKER)
    model = cb.build()
    topo = analyze_topology(model)

    assert topo.n_islands == 2
    assert topo.island_energized.tolist() == [True, False]
    assert topo.island_bus_count.tolist() == [2, 3]
    assert topo.island_sources(0).tolist() == [source]
    assert topo.island_sources(1).tolist() == []
    assert _at(topo, topo.source_of_bus, dark) == [-1, -1, -1]
    assert _at(topo, topo.feeder_of_bus, dark) == [-1, -1, -1]
    assert _at(topo, topo.parent_bus, dark) == [-1, -1, -1]
    assert _at(topo, topo.depth, dark) == [-1, -1, -1]
    assert feeders(topo) == ()  # the breaker in the dark island heads nothing
    assert buses_downstream(topo, sw).tolist() == []
    assert upstream_path(topo, dark[2]) == ([dark[2]], [])
    summary = topology_summary(model, topo)
    assert summary["deenergized_buses"] == dark
    assert summary["islands"] == [
        {"index": 0, "energized": True, "sources": [source], "buses": 2},
        {"index": 1, "energized": False, "sources": [], "buses": 3},
    ]


def test_out_of_service_line_splits(case: TwoFeederCase) -> None:
    model = case.model()
    line = model.line.copy()
    line["in_service"][line["id"] == case.lines_a[1]] = False
    topo = analyze_topology(model.replace(line=line))

    a = case.a
    assert topo.n_islands == 2
    assert _at(topo, topo.energized.astype(np.int64), a) == [1, 1, 1, 0, 0, 0]
    assert _section_of(topo, a[2]) != _section_of(topo, a[3])
    assert topo.n_sections == 8
    assert topo.switches_bounding(_section_of(topo, a[2])).tolist() == [case.sect_a[0]]
    assert topo.radial


def test_recloser_below_a_breaker_is_not_a_feeder_head() -> None:
    cb = CaseBuilder()
    bb, x, y, z = cb.add_buses(4)
    cb.add_source(bb)
    breaker = cb.add_switch(x, bb, SwitchKind.BREAKER)  # orientation does not matter
    cb.add_line(x, y)
    cb.add_switch(y, z, SwitchKind.RECLOSER)
    topo = analyze_topology(cb.build())

    assert topo.feeder_ids.tolist() == [breaker]
    assert _at(topo, topo.feeder_of_bus, [bb, x, y, z]) == [-1, breaker, breaker, breaker]


def test_summary_is_json_with_the_documented_keys(case: TwoFeederCase) -> None:
    model = case.model()
    summary = topology_summary(model, analyze_topology(model))

    assert set(summary) == {
        "islands",
        "feeders",
        "sections",
        "ties",
        "radial",
        "loops",
        "deenergized_buses",
    }
    decoded = json.loads(json.dumps(summary))
    assert decoded["feeders"] == [
        {"id": case.breaker_a, "source": case.source, "buses": 6, "sections": 3},
        {"id": case.breaker_b, "source": case.source, "buses": 6, "sections": 3},
    ]
    assert decoded["sections"][0] == {
        "index": 0,
        "buses": [case.hv, case.busbar],
        "switches": [case.breaker_a, case.breaker_b],
        "feeder": -1,
    }
    assert decoded["ties"] == [{"switch": case.tie, "feeders": [case.breaker_a, case.breaker_b]}]
    assert decoded["radial"] is True
    with pytest.raises(ValueError, match="bus ids differ"):
        topology_summary(two_feeders().model().replace(bus=model.bus[:3]), analyze_topology(model))


def test_empty_model() -> None:
    topo = analyze_topology(GridModel())
    assert topo.radial
    assert topo.n_sections == 0
    assert topo.n_islands == 0
    assert topology_summary(GridModel(), topo)["islands"] == []


def test_large_tree_feeder_labels() -> None:
    tree = large_feeder_tree(100_000, 40, seed=3)
    topo = analyze_topology(tree.model)

    assert topo.radial
    assert topo.energized.all()
    assert (topo.feeder_of_bus == tree.expected_feeder).all()
    assert (topo.source_of_bus == 1).all()
    assert topo.feeder_ids.size == 40
    assert topo.feeder_bus_count.sum() == 100_000 - 1
    # Tree consistency: every non-root bus is one deeper than its parent.
    child = np.flatnonzero(topo.parent_bus >= 0)
    assert child.size == 100_000 - 1
    assert (topo.depth[child] == topo.depth[topo.parent_bus[child]] + 1).all()
    # The subtree below a feeder head is exactly that feeder.
    head = int(topo.feeder_ids[7])
    below = np.sort(buses_downstream(topo, head))
    assert (below == np.sort(topo.bus_ids[tree.expected_feeder == head])).all()
