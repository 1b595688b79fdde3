"""Fault timelines of the twin: protection, reclosing, lockout, indicators, arcs, compound faults."""

from __future__ import annotations

import numpy as np
import pytest

from openfeeder.errors import AnalysisError, CaseError
from openfeeder.model.cases import load_builtin
from openfeeder.model.grid import GridModel
from openfeeder.sim.faults import (
    FaultScenario,
    FaultSpec,
    ProtectionSettings,
    arc_resistance_ohm,
    fault_timeline,
)

T0 = 1_700_000_000 * 1_000_000_000
S = 1_000_000_000
PROTECTION = ProtectionSettings(
    pickup_a=400.0,
    trip_delay_s=0.3,
    ground_pickup_a=60.0,
    reclose_dead_times_s=(0.5, 15.0),
    fi_pickup_a=300.0,
)


def _ns(seconds: float) -> int:
    return round(seconds * S)


FEEDER_A_PATH = {300, 301, 302, 303, 304}
"""Fault-indicating switches from breaker 300 to line 102 (buses 10 -> 12)."""


@pytest.fixture
def turin() -> GridModel:
    return load_builtin("turin")


def _causes(timeline: object) -> list[str]:
    return [segment.cause for segment in timeline.segments]  # type: ignore[attr-defined]


def test_permanent_fault_trips_recloses_and_locks_out(turin: GridModel) -> None:
    fault = FaultSpec(kind=FaultScenario.SLG, line_id=102, distance_m=110.0, start_ns=T0)
    timeline = fault_timeline(turin, fault, PROTECTION)
    assert timeline.breaker_id == 300
    assert timeline.tripped_breaker == 300
    assert timeline.locked_out
    assert _causes(timeline) == [
        "prefault",
        "fault",
        "trip",
        "reclose",
        "trip",
        "reclose",
        "lockout",
    ]
    ops = [(op.t_ns - T0, op.switch_id, op.closed) for op in timeline.operations]
    assert ops == [
        (_ns(0.3), 300, False),
        (_ns(0.8), 300, True),
        (_ns(1.1), 300, False),
        (_ns(16.1), 300, True),
        (_ns(16.4), 300, False),
    ]
    assert "lockout" in timeline.operations[-1].reason
    fault_segment = timeline.segments[1]
    assert fault_segment.start_ns == T0
    assert fault_segment.transient
    result = timeline.fault_results[1]
    assert result is not None
    assert fault_segment.dc_time_constant_s == pytest.approx(result.dc_time_constant_s)
    assert 0.001 < fault_segment.dc_time_constant_s < 0.1
    # reclosing onto the fault strikes it again, with a DC offset
    assert timeline.segments[3].transient
    # after a trip the whole feeder is dead, the other feeder is not
    tripped = timeline.segments[2].state
    dead = tripped.bus_rows([3, 12, 27])
    assert np.abs(tripped.u_v[dead]).max() == 0.0
    assert np.abs(tripped.u_v[tripped.bus_rows([31])]).min() > 10e3


def test_transient_fault_is_cleared_by_the_first_reclose(turin: GridModel) -> None:
    fault = FaultSpec(
        kind=FaultScenario.SLG, line_id=102, distance_m=110.0, start_ns=T0, duration_s=0.5
    )
    timeline = fault_timeline(turin, fault, PROTECTION)
    assert not timeline.locked_out
    assert _causes(timeline) == ["prefault", "fault", "trip", "reclose"]
    restored = timeline.segments[-1]
    assert restored.start_ns == T0 + _ns(0.8)
    assert timeline.fault_results[-1] is None
    prefault = timeline.segments[0].state
    np.testing.assert_allclose(restored.state.u_v, prefault.u_v, atol=1e-6)


def test_without_reclosing_the_first_trip_is_final(turin: GridModel) -> None:
    settings = ProtectionSettings(trip_delay_s=0.12, reclose_dead_times_s=())
    fault = FaultSpec(kind=FaultScenario.LL, line_id=102, distance_m=50.0, start_ns=T0)
    timeline = fault_timeline(turin, fault, settings)
    assert _causes(timeline) == ["prefault", "fault", "lockout"]
    assert timeline.operations[0].t_ns == T0 + _ns(0.12)
    assert timeline.locked_out


def test_fault_indicators_latch_between_breaker_and_fault_only(turin: GridModel) -> None:
    fault = FaultSpec(kind=FaultScenario.LLL, line_id=102, distance_m=110.0, start_ns=T0)
    timeline = fault_timeline(turin, fault, PROTECTION)
    latched = {i for i, latch in timeline.fault_indicators.items() if latch.latched}
    assert latched == FEEDER_A_PATH
    for switch_id in FEEDER_A_PATH:
        latch = timeline.fault_indicators[switch_id]
        assert latch.t_ns == T0
        assert latch.peak_a > 5000.0
    # beyond the fault: load current only
    beyond = timeline.fault_indicators[305]
    assert not beyond.latched
    assert beyond.t_ns is None
    assert 0.0 < beyond.peak_a < PROTECTION.fi_pickup_a
    assert not timeline.fault_indicators[313].latched


def test_high_impedance_ground_fault_below_pickup_does_not_trip(turin: GridModel) -> None:
    fault = FaultSpec(
        kind=FaultScenario.SLG,
        line_id=102,
        distance_m=110.0,
        start_ns=T0,
        r_f_ohm=2000.0,
        duration_s=2.0,
    )
    timeline = fault_timeline(turin, fault, PROTECTION)
    assert timeline.operations == []
    assert timeline.tripped_breaker is None
    assert not timeline.locked_out
    assert _causes(timeline) == ["prefault", "fault", "clear"]
    result = timeline.fault_results[1]
    assert result is not None
    assert 1.0 < abs(result.i_fault_a[0]) < PROTECTION.ground_pickup_a
    # the same fault trips once the ground element is sensitive enough
    sensitive = ProtectionSettings(ground_pickup_a=3.0, reclose_dead_times_s=())
    assert fault_timeline(turin, fault, sensitive).tripped_breaker == 300


def test_open_conductor_does_not_trip_but_unbalances_downstream(turin: GridModel) -> None:
    fault = FaultSpec(kind=FaultScenario.OPEN, line_id=102, distance_m=110.0, start_ns=T0)
    timeline = fault_timeline(turin, fault, PROTECTION, end_ns=T0 + 5 * S)
    assert timeline.operations == []
    assert _causes(timeline) == ["prefault", "fault"]
    result = timeline.fault_results[1]
    assert result is not None
    downstream = result.state.bus_rows([12, 20])
    assert result.voltage_unbalance[downstream].min() > 0.2
    assert not any(latch.latched for latch in timeline.fault_indicators.values())


def test_arc_segments_carry_the_arc_and_a_reduced_current(turin: GridModel) -> None:
    fault = FaultSpec(
        kind=FaultScenario.ARC,
        line_id=102,
        distance_m=110.0,
        start_ns=T0,
        arc_voltage_v=3000.0,
        phase="b",
    )
    bolted = fault_timeline(
        turin,
        FaultSpec(kind=FaultScenario.SLG, line_id=102, distance_m=110.0, start_ns=T0, phase="b"),
        PROTECTION,
    )
    timeline = fault_timeline(turin, fault, PROTECTION)
    fault_segments = [s for s in timeline.segments if s.cause in {"fault", "reclose"}]
    assert fault_segments
    for segment in fault_segments:
        assert segment.arc is not None
        assert segment.arc.phases == (1,)
        assert segment.arc.arc_voltage_v == 3000.0
    assert all(s.arc is None for s in timeline.segments if s.cause not in {"fault", "reclose"})
    arc, solid = timeline.fault_results[1], bolted.fault_results[1]
    assert arc is not None
    assert solid is not None
    assert abs(arc.i_fault_a[1]) < abs(solid.i_fault_a[1])
    # the arc's fundamental voltage over its current is the equivalent resistance
    fundamental_v = 4.0 / (np.pi * np.sqrt(2.0)) * 3000.0
    assert abs(arc.u_fault_v[1]) == pytest.approx(fundamental_v, rel=1e-3)
    assert timeline.locked_out


def test_arc_resistance_solves_the_loop() -> None:
    z = complex(0.3, 1.8)
    r = arc_resistance_ohm(e_v=12_700.0, z_loop_ohm=z, arc_voltage_v=2000.0)
    current = 12_700.0 / abs(z + r)
    assert r * current == pytest.approx(4.0 / (np.pi * np.sqrt(2.0)) * 2000.0, rel=1e-9)
    with pytest.raises(AnalysisError, match="cannot burn"):
        arc_resistance_ohm(e_v=1000.0, z_loop_ohm=z, arc_voltage_v=2000.0)


def test_compound_fault_evolves_and_then_trips(turin: GridModel) -> None:
    fault = FaultSpec(
        kind=FaultScenario.COMPOUND,
        line_id=109,
        distance_m=50.0,
        start_ns=T0,
        r_f_ohm=500.0,
        phase="a",
        initial_kind=FaultScenario.SLG,
        evolve_to=FaultScenario.LL,
        evolve_phase="ab",
        evolve_after_s=0.2,
    )
    timeline = fault_timeline(turin, fault, PROTECTION, end_ns=T0 + 2 * S)
    assert timeline.breaker_id == 313
    assert _causes(timeline)[:4] == ["prefault", "fault", "evolve", "trip"]
    evolve = timeline.segments[2]
    assert evolve.start_ns == T0 + _ns(0.2)
    assert evolve.transient
    first, second = timeline.fault_results[1], timeline.fault_results[2]
    assert first is not None
    assert second is not None
    assert first.phases == (0,)
    assert second.phases == (0, 1)
    assert abs(first.i_fault_a[0]) < PROTECTION.pickup_a < abs(second.i_fault_a[0])
    # the relay picks up only when the fault has evolved
    assert timeline.operations[0].t_ns == T0 + _ns(0.5)
    assert all(seg.start_ns < T0 + 2 * S for seg in timeline.segments)


def test_end_ns_cuts_the_timeline(turin: GridModel) -> None:
    fault = FaultSpec(kind=FaultScenario.SLG, line_id=102, distance_m=110.0, start_ns=T0)
    timeline = fault_timeline(turin, fault, PROTECTION, end_ns=T0 + 1 * S)
    assert _causes(timeline) == ["prefault", "fault", "trip", "reclose"]
    assert not timeline.locked_out
    assert [op.closed for op in timeline.operations] == [False, True]


def test_errors_for_unknown_line_and_distance_outside(turin: GridModel) -> None:
    with pytest.raises(CaseError, match="no line with id 4242"):
        fault_timeline(
            turin,
            FaultSpec(kind=FaultScenario.SLG, line_id=4242, distance_m=0, start_ns=T0),
            PROTECTION,
        )
    with pytest.raises(CaseError, match=r"line 102.*500.*220") as err:
        fault_timeline(
            turin,
            FaultSpec(kind=FaultScenario.LL, line_id=102, distance_m=500, start_ns=T0),
            PROTECTION,
        )
    assert err.value.component_id == 102
    with pytest.raises(AnalysisError, match="duration_s"):
        FaultSpec(kind=FaultScenario.SLG, line_id=102, distance_m=1, start_ns=T0, duration_s=0.0)
    with pytest.raises(ValueError, match="'short'"):
        FaultSpec(kind="short", line_id=102, distance_m=1, start_ns=T0)  # type: ignore[arg-type]
