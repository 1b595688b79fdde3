"""The twin's instrument model on real three-phase states of the Turin case."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from openfeeder.analysis.phasors import PhasorSeries, solve_phasors
from openfeeder.model.cases import load_builtin
from openfeeder.model.components import BranchEnd, MeasurementKind
from openfeeder.model.grid import GridModel
from openfeeder.sim.measurements import (
    DEFAULT_KIND_ERRORS,
    DeviceReadings,
    KindErrors,
    MeasurementModel,
)
from openfeeder.sim.placements import DevicePlacement, PlacementError, default_placements

T0_NS = 1_700_000_000_000_000_000
STEPS = 300
NO_TIMING = dict.fromkeys(MeasurementKind, KindErrors(0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def turin() -> GridModel:
    return load_builtin("turin")


@pytest.fixture(scope="module")
def series(turin: GridModel) -> PhasorSeries:
    """``STEPS`` operating points: the loads swing between 40 % and 100 % of their peak."""
    scale = np.linspace(0.4, 1.0, STEPS)[:, None]
    return solve_phasors(turin, load_p_mw=scale * turin.load["p_mw"][None, :])


def times(steps: int = STEPS) -> npt.NDArray[np.int64]:
    return T0_NS + np.arange(steps, dtype=np.int64) * 1_000_000_000


def assert_same(a: DeviceReadings, b: DeviceReadings) -> None:
    for field in dataclasses.fields(DeviceReadings):
        left, right = getattr(a, field.name), getattr(b, field.name)
        if isinstance(left, np.ndarray):
            np.testing.assert_array_equal(left, right, err_msg=field.name)
        else:
            assert left == right, field.name


def test_true_values_are_the_state_at_each_device(turin: GridModel, series: PhasorSeries) -> None:
    placements = [
        *default_placements(turin),
        DevicePlacement("ftu-to", MeasurementKind.FTU, 3, 300, BranchEnd.TO),
        DevicePlacement("volt-only", MeasurementKind.METER, 7),
    ]
    state = series.state(STEPS - 1)
    readings = MeasurementModel(placements, seed=3).measure(state, T0_NS)
    by_id = {d: k for k, d in enumerate(readings.device_id)}
    k = by_id["meter-400"]
    np.testing.assert_array_equal(readings.u_true_v[k], state.u_v[state.bus_rows([7])[0]])
    np.testing.assert_array_equal(readings.i_true_a[k], state.i_load_a[state.load_rows([400])[0]])
    # The meter's true P per phase is the load's P split by its shares (the power flow's input).
    shares = np.array([turin.load[s][0] for s in ("share_a", "share_b", "share_c")])
    np.testing.assert_allclose(readings.p_true_w[k], 180_000.0 * shares, rtol=1e-6)
    row = state.branch_rows([300])[0]
    np.testing.assert_array_equal(readings.i_true_a[by_id["ftu-300"]], state.i_from_a[row])
    np.testing.assert_array_equal(readings.i_true_a[by_id["ftu-to"]], state.i_to_a[row])
    np.testing.assert_array_equal(
        readings.u_true_v[by_id["ftu-to"]], state.u_v[state.bus_rows([3])[0]]
    )
    k = by_id["volt-only"]
    assert not readings.measures_current[k]
    assert np.isnan(readings.i_a[k]).all()
    assert np.isnan(readings.p_w[k]).all()
    assert np.isfinite(readings.u_v[k]).all()
    assert readings.frequency_true_hz == 50.0


def test_class_zero_without_timing_errors_reports_the_truth(
    turin: GridModel, series: PhasorSeries
) -> None:
    exact = [dataclasses.replace(p, accuracy_class=0.0) for p in default_placements(turin)]
    model = MeasurementModel(exact, seed=11, kind_errors=NO_TIMING)
    readings = model.measure(series.state(7), T0_NS + 123)
    np.testing.assert_array_equal(readings.u_v, readings.u_true_v)
    np.testing.assert_array_equal(readings.i_a, readings.i_true_a)
    np.testing.assert_array_equal(readings.t_ns, np.full(len(exact), T0_NS + 123))
    np.testing.assert_array_equal(readings.frequency_hz, np.full(len(exact), 50.0))
    np.testing.assert_array_equal(readings.p_w, readings.p_true_w)
    np.testing.assert_array_equal(readings.q_var, readings.q_true_var)
    assert readings.valid.all()


@pytest.mark.parametrize("limit_sigmas", [2.0, 3.0])
def test_ratio_and_phase_errors_match_the_accuracy_class(
    turin: GridModel, series: PhasorSeries, limit_sigmas: float
) -> None:
    placements = default_placements(turin)
    model = MeasurementModel(placements, seed=5, kind_errors=NO_TIMING, limit_sigmas=limit_sigmas)
    readings = model.measure_series(series, times())
    limit = np.array([p.accuracy_class for p in placements]) / 100.0  # (devices,)
    limits = np.broadcast_to(limit[None, :, None], readings.u_v.shape)
    for measured, true in ((readings.u_v, readings.u_true_v), (readings.i_a, readings.i_true_a)):
        live = np.abs(true) > 0.0  # the open tie switch 325 carries no current to distort
        ratio = np.abs(measured[live]) / np.abs(true[live]) - 1.0
        phase = np.angle(measured[live] / true[live])
        relative = ratio / limits[live]
        assert relative.size > 30_000
        within = np.mean(np.abs(relative) <= 1.0)
        expected = {2.0: 0.9545, 3.0: 0.9973}[limit_sigmas]
        assert within == pytest.approx(expected, abs=0.006)  # ~35,000 samples: sd 0.0011
        assert np.std(relative) == pytest.approx(1.0 / limit_sigmas, rel=0.03)
        assert abs(np.mean(relative)) < 0.02
        phase_relative = phase / (1.5 * limits[live])
        assert np.std(phase_relative) == pytest.approx(1.0 / limit_sigmas, rel=0.03)
    # Each kind's spread follows its own class (FTU 0.5 %, meter 1 %).
    kinds = np.array([p.kind for p in placements])
    ratio_v = np.abs(readings.u_v) / np.abs(readings.u_true_v) - 1.0
    meter_std = np.std(ratio_v[:, kinds == MeasurementKind.METER])
    ftu_std = np.std(ratio_v[:, kinds == MeasurementKind.FTU])
    assert meter_std == pytest.approx(0.01 / limit_sigmas, rel=0.05)
    assert ftu_std == pytest.approx(0.005 / limit_sigmas, rel=0.05)


def test_pmu_total_vector_error_within_c37_118(turin: GridModel, series: PhasorSeries) -> None:
    pmus = default_placements(turin, meters=False, ftus=False)
    readings = MeasurementModel(pmus, seed=8).measure_series(series, times())
    # The PMUs' clocks are off by ~1 us: compare against the truth at the device's timestamp.
    error_s = (readings.t_ns - readings.t_true_ns[:, None]) * 1e-9
    assert np.abs(error_s).max() < 10e-6
    for measured, true in ((readings.u_v, readings.u_true_v), (readings.i_a, readings.i_true_a)):
        assert np.abs(true).min() > 0.0
        tve = np.abs(measured - true) / np.abs(true)
        assert np.quantile(tve, 0.999) < 0.01
        assert np.median(tve) > 0.0


def test_same_seed_same_readings_in_any_order(turin: GridModel, series: PhasorSeries) -> None:
    placements = default_placements(turin)
    state = series.state(42)
    first = MeasurementModel(placements, seed=1, dropout_probability=0.2).measure(state, T0_NS)
    again = MeasurementModel(placements, seed=1, dropout_probability=0.2)
    again.measure(series.state(3), T0_NS - 7)  # other calls in between change nothing
    assert_same(first, again.measure(state, T0_NS))
    # One device at a time (as the agents' sources ask) gives the same readings.
    ids = list(reversed(first.device_id))
    subset = again.measure(state, T0_NS, device_ids=ids)
    assert subset.device_id == tuple(ids)
    np.testing.assert_array_equal(subset.u_v, first.u_v[::-1])
    np.testing.assert_array_equal(subset.t_ns, first.t_ns[::-1])
    np.testing.assert_array_equal(subset.valid, first.valid[::-1])
    # Adding, removing or reordering devices does not change the others' noise.
    shuffled = MeasurementModel(
        [*placements[10:], DevicePlacement("extra", MeasurementKind.PMU, 2, 300)],
        seed=1,
        dropout_probability=0.2,
    )
    kept = first.device_id[10:]
    other = shuffled.measure(state, T0_NS, device_ids=kept)
    np.testing.assert_array_equal(other.u_v, first.u_v[10:])
    np.testing.assert_array_equal(other.i_a, first.i_a[10:])
    np.testing.assert_array_equal(other.t_ns, first.t_ns[10:])
    np.testing.assert_array_equal(other.valid, first.valid[10:])


def test_another_seed_or_time_gives_other_noise(turin: GridModel, series: PhasorSeries) -> None:
    placements = default_placements(turin)
    state = series.state(0)
    a = MeasurementModel(placements, seed=1).measure(state, T0_NS)
    b = MeasurementModel(placements, seed=2).measure(state, T0_NS)
    c = MeasurementModel(placements, seed=1).measure(state, T0_NS + 1)
    for other in (b, c):
        assert not np.any(a.u_v == other.u_v)
        assert not np.any(a.t_ns == other.t_ns)
        np.testing.assert_array_equal(a.u_true_v, other.u_true_v)


def test_series_equals_step_by_step(turin: GridModel, series: PhasorSeries) -> None:
    model = MeasurementModel(default_placements(turin), seed=9, dropout_probability=0.05)
    t = times()
    whole = model.measure_series(series, t)
    assert whole.steps == STEPS
    assert whole.u_v.shape == (STEPS, len(model), 3)
    for k in (0, 1, 150, STEPS - 1):
        assert_same(whole.step(k), model.measure(series.state(k), int(t[k])))
    with pytest.raises(ValueError, match="one per step"):
        model.measure_series(series, t[:-1])
    with pytest.raises(ValueError, match="integer"):
        model.measure_series(series, t.astype(float))


def test_clock_offsets_fixed_per_device_and_spread_by_kind(turin: GridModel) -> None:
    load = turin.load
    # 1,500 meters and 500 FTUs on the Turin loads and switches: the twin's scale.
    placements = [
        DevicePlacement(
            f"m{k}", MeasurementKind.METER, int(load["bus"][k % 12]), int(load["id"][k % 12])
        )
        for k in range(1500)
    ] + [DevicePlacement(f"f{k}", MeasurementKind.FTU, 2, 300) for k in range(500)]
    model = MeasurementModel(placements, seed=4)
    offsets = model.clock_offset_s
    assert np.unique(offsets).size == offsets.size
    meters, ftus = offsets[:1500], offsets[1500:]
    assert np.std(meters) == pytest.approx(
        DEFAULT_KIND_ERRORS[MeasurementKind.METER].clock_offset_std_s, rel=0.1
    )
    assert np.std(ftus) == pytest.approx(
        DEFAULT_KIND_ERRORS[MeasurementKind.FTU].clock_offset_std_s, rel=0.15
    )
    series = solve_phasors(turin, load_p_mw=np.repeat(turin.load["p_mw"][None, :], 20, axis=0))
    readings = model.measure_series(series, times(20))
    late_ns = readings.t_ns - readings.t_true_ns[:, None]  # (steps, devices)
    # The offset stays; the jitter around it is the kind's (1 ms meters, 0.1 ms FTUs).
    np.testing.assert_allclose(late_ns.mean(axis=0) * 1e-9, offsets, atol=1e-3)
    jitter_s = late_ns * 1e-9 - offsets[None, :]
    assert np.std(jitter_s[:, :1500]) == pytest.approx(1e-3, rel=0.05)
    assert np.std(jitter_s[:, 1500:]) == pytest.approx(100e-6, rel=0.05)
    # The same timing error turns V and I alike: power is not affected by the clock.
    exact = MeasurementModel(
        [dataclasses.replace(p, accuracy_class=0.0) for p in placements], seed=4
    ).measure(series.state(0), T0_NS)
    np.testing.assert_allclose(exact.p_w, exact.p_true_w, rtol=1e-9)
    assert np.abs(np.angle(exact.u_v / exact.u_true_v)).max() > 1.0  # meters' angles are not UTC


def test_dropouts_follow_the_probability(turin: GridModel, series: PhasorSeries) -> None:
    model = MeasurementModel(default_placements(turin), seed=6, dropout_probability=0.1)
    readings = model.measure_series(series, times())
    lost = ~readings.valid
    assert lost.mean() == pytest.approx(0.1, abs=0.01)  # 12,000 readings: sd 0.003
    assert lost.any(axis=0).all()  # every device loses some readings, not only a few devices
    assert np.isnan(readings.u_v[lost]).all()
    assert np.isnan(readings.frequency_hz[lost]).all()
    assert np.isfinite(readings.u_v[~lost]).all()
    assert np.isfinite(readings.u_true_v[lost]).all()  # the truth stays for the studies
    never = MeasurementModel(default_placements(turin), seed=6).measure_series(series, times())
    assert never.valid.all()
    always = MeasurementModel(default_placements(turin), seed=6, dropout_probability=1.0)
    assert not always.measure(series.state(0), T0_NS).valid.any()


def test_frequency_noise_per_kind(turin: GridModel, series: PhasorSeries) -> None:
    placements = default_placements(turin)
    readings = MeasurementModel(placements, seed=12).measure_series(series, times())
    meters = np.array([p.kind is MeasurementKind.METER for p in placements])
    deviation = readings.frequency_hz - 50.0
    assert np.std(deviation[:, meters]) == pytest.approx(5e-3, rel=0.06)
    assert abs(np.mean(deviation)) < 5e-4


def test_unknown_devices_and_state_mismatch_are_named(
    turin: GridModel, series: PhasorSeries
) -> None:
    model = MeasurementModel(default_placements(turin), seed=1)
    with pytest.raises(PlacementError) as caught:
        model.measure(series.state(0), T0_NS, device_ids=["meter-400", "meter-999"])
    assert caught.value.device_id == "meter-999"
    cigre = solve_phasors(load_builtin("cigre-mv")).state(0)
    with pytest.raises(PlacementError) as caught:
        model.measure(cigre, T0_NS)
    # Buses are checked first: Turin's buses 7 and 11 exist in the CIGRE grid too, 15 does not.
    assert caught.value.field == "bus_id"
    assert caught.value.device_id == "meter-402"
    assert "bus with id 15" in str(caught.value)
    with pytest.raises(PlacementError, match="used twice"):
        MeasurementModel([*default_placements(turin)[:2]] * 2, seed=1)
    with pytest.raises(ValueError, match="dropout_probability"):
        MeasurementModel([], seed=1, dropout_probability=1.5)
    with pytest.raises(ValueError, match="jitter_std_s"):
        KindErrors(0.0, -1.0, 0.0)


def test_an_open_switch_shows_as_zero_voltage_and_current(turin: GridModel) -> None:
    opened = turin.with_switch_states({300: False})  # feeder 1's head breaker
    state = solve_phasors(opened).state(0)
    readings = MeasurementModel(default_placements(turin), seed=2).measure(state, T0_NS)
    k = readings.device_id.index("meter-400")
    np.testing.assert_array_equal(readings.u_v[k], 0.0)
    np.testing.assert_array_equal(readings.p_w[k], 0.0)
    assert readings.valid[k]
