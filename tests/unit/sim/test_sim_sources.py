"""TwinSource: a meter agent's data source reading one device of the twin's solved grid."""

from __future__ import annotations

import numpy as np
import pytest

from openfeeder.iot.agent.metering import compute, compute_phasors
from openfeeder.iot.agent.source import DataSource, PhasorFrame
from openfeeder.model.cases import load_builtin
from openfeeder.model.components import MeasurementKind
from openfeeder.model.grid import GridModel
from openfeeder.sim.clock import SteppedClock
from openfeeder.sim.measurements import MeasurementModel
from openfeeder.sim.placements import DevicePlacement, PlacementError, default_placements
from openfeeder.sim.sources import ReadingLostError, TwinSource
from openfeeder.sim.world import SolvedWorld

T0_NS = 1_700_000_000_000_000_000


@pytest.fixture
def turin() -> GridModel:
    return load_builtin("turin")


@pytest.fixture
def world(turin: GridModel) -> SolvedWorld:
    return SolvedWorld(turin, SteppedClock(T0_NS))


def test_meter_source_gives_the_loads_voltage_current_and_power(
    turin: GridModel, world: SolvedWorld
) -> None:
    model = MeasurementModel(default_placements(turin), seed=21)
    source: DataSource = TwinSource(world, model, "meter-400")
    frame = source.acquire(t_ns=T0_NS, sampling_rate_hz=6400.0)
    assert isinstance(frame, PhasorFrame)
    values = compute_phasors(frame)
    # 0.4 kV secondary: ~231 V phase to ground, a few % of drop at full load.
    assert np.all((values.u_v > 215.0) & (values.u_v < 240.0))
    load = turin.load[0]
    shares = np.array([load["share_a"], load["share_b"], load["share_c"]])
    # Class 1 on V and on I (2 sigma): P per phase within ~5 % of the load's share of 180 kW.
    np.testing.assert_allclose(values.p_w, load["p_mw"] * 1e6 * shares, rtol=0.05)
    np.testing.assert_allclose(values.q_var, load["q_mvar"] * 1e6 * shares, rtol=0.06)
    np.testing.assert_allclose(values.i_a, values.s_va / values.u_v, rtol=1e-12)
    assert values.i_a.min() > 200.0  # ~60 kW per phase at 230 V
    assert values.f_hz == pytest.approx(50.0, abs=0.03)
    assert values.complete
    assert values.f_valid
    # Stamped with the device's clock, not the twin's.
    offset_ns = model.clock_offset_s[model.index(["meter-400"])[0]] * 1e9
    assert frame.t_ns - T0_NS == pytest.approx(offset_ns, abs=5e6)
    assert frame.t_ns != T0_NS
    # What the agent computes from it is the same thing.
    assert compute(frame).p_total_w == pytest.approx(values.p_total_w)


def test_ftu_sees_the_feeder_and_follows_switching(turin: GridModel, world: SolvedWorld) -> None:
    model = MeasurementModel(default_placements(turin), seed=22)
    head = TwinSource(world, model, "ftu-300")
    meter = TwinSource(world, model, "meter-400")
    feeder_p_w = compute_phasors(head.acquire(t_ns=T0_NS, sampling_rate_hz=0.0)).p_total_w
    # Feeder 1 (switch 300) supplies loads 400..405: 1.0425 MW plus losses.
    feeder_loads_w = turin.load["p_mw"][:6].sum() * 1e6
    assert feeder_loads_w < feeder_p_w < 1.08 * feeder_loads_w
    world.operate_switch(300, closed=False)  # the twin re-solves: feeder 1 is dead
    later = T0_NS + 1_000_000_000
    dead = compute_phasors(meter.acquire(t_ns=later, sampling_rate_hz=0.0))
    np.testing.assert_array_equal(dead.u_v, 0.0)
    np.testing.assert_array_equal(dead.p_w, 0.0)
    assert compute_phasors(head.acquire(t_ns=later, sampling_rate_hz=0.0)).p_total_w == 0.0


def test_same_seed_same_frame_and_frames_match_the_model(
    turin: GridModel, world: SolvedWorld
) -> None:
    placements = default_placements(turin)
    a = TwinSource(world, MeasurementModel(placements, seed=5), "pmu-500")
    b = TwinSource(world, MeasurementModel(placements, seed=5), "pmu-500")
    first, second = (s.acquire(t_ns=T0_NS, sampling_rate_hz=50.0) for s in (a, b))
    np.testing.assert_array_equal(first.voltage_v, second.voltage_v)
    np.testing.assert_array_equal(first.current_a, second.current_a)
    assert first.t_ns == second.t_ns
    readings = a.model.measure(world.phasors(), T0_NS)
    k = readings.device_id.index("pmu-500")
    np.testing.assert_array_equal(first.voltage_v, readings.u_v[k])
    np.testing.assert_array_equal(first.current_a, readings.i_a[k])
    other = TwinSource(world, MeasurementModel(placements, seed=6), "pmu-500")
    assert not np.any(other.acquire(t_ns=T0_NS, sampling_rate_hz=50.0).voltage_v == first.voltage_v)


def test_dropout_raises_so_the_agent_skips_the_interval(
    turin: GridModel, world: SolvedWorld
) -> None:
    model = MeasurementModel(default_placements(turin), seed=1, dropout_probability=1.0)
    source = TwinSource(world, model, "meter-401")
    with pytest.raises(ReadingLostError) as caught:
        source.acquire(t_ns=T0_NS, sampling_rate_hz=6400.0)
    assert caught.value.device_id == "meter-401"
    assert caught.value.t_ns == T0_NS
    half = MeasurementModel(default_placements(turin), seed=1, dropout_probability=0.5)
    outcomes = []
    for k in range(200):
        try:
            TwinSource(world, half, "meter-401").acquire(t_ns=T0_NS + k, sampling_rate_hz=1.0)
            outcomes.append(True)
        except ReadingLostError:
            outcomes.append(False)
    assert 0.35 < np.mean(outcomes) < 0.65


def test_voltage_only_device_reports_zero_current(world: SolvedWorld) -> None:
    placements = [DevicePlacement("vt-7", MeasurementKind.METER, 7)]
    frame = TwinSource(world, MeasurementModel(placements, seed=3), "vt-7").acquire(
        t_ns=T0_NS, sampling_rate_hz=6400.0
    )
    np.testing.assert_array_equal(frame.current_a, np.zeros(3))
    assert np.abs(frame.voltage_v).min() > 200.0


def test_unknown_device_is_refused_at_construction(turin: GridModel, world: SolvedWorld) -> None:
    model = MeasurementModel(default_placements(turin), seed=1)
    with pytest.raises(PlacementError) as caught:
        TwinSource(world, model, "meter-9999")
    assert caught.value.device_id == "meter-9999"
    assert caught.value.field == "device_id"
