"""Waveform physics: samples agree with the phasors they came from, and carry what phasors cannot.

Segments are built from the real three-phase power flow of the built-in "turin" case, with a fault
added by hand (a phase-a fault current on every branch, a phase-a voltage sag) and a trip that
de-energizes everything: enough to test the generator without the fault calculation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
import pytest

from openfeeder.analysis.phasors import PhasorState, solve_phasors
from openfeeder.model.cases import load_builtin
from openfeeder.model.grid import GridModel
from openfeeder.sim.segments import ArcBehaviour, StateSegment
from openfeeder.sim.waveforms import (
    ALLOWED_SAMPLING_RATES_HZ,
    CurrentAt,
    MeasuringPoint,
    WaveformError,
    WaveformOptions,
    WaveformRecord,
    generate_waveforms,
)

T0_NS = 1_700_000_000_123_456_789  # deliberately not on a cycle or microsecond boundary
MS = 1_000_000
FAULT_A = 400.0 * np.exp(-1j * np.deg2rad(80.0))
QUIET = WaveformOptions(voltage_noise_fraction=0.0, current_noise_fraction=0.0)
PURE = WaveformOptions(
    voltage_harmonics={},
    current_harmonics={},
    voltage_noise_fraction=0.0,
    current_noise_fraction=0.0,
)


@pytest.fixture(scope="module")
def model() -> GridModel:
    return load_builtin("turin")


@pytest.fixture(scope="module")
def prefault(model: GridModel) -> PhasorState:
    return solve_phasors(model).state(0)


def faulted(state: PhasorState, phase: int = 0, sag: float = 0.3) -> PhasorState:
    """The pre-fault state with a fault current added on one phase of every branch."""
    i_from, i_to, u_v = state.i_from_a.copy(), state.i_to_a.copy(), state.u_v.copy()
    i_from[:, phase] += FAULT_A
    i_to[:, phase] -= FAULT_A
    u_v[:, phase] *= sag
    return dataclasses.replace(state, i_from_a=i_from, i_to_a=i_to, u_v=u_v)


def tripped(state: PhasorState) -> PhasorState:
    return dataclasses.replace(
        state,
        u_v=np.zeros_like(state.u_v),
        i_from_a=np.zeros_like(state.i_from_a),
        i_to_a=np.zeros_like(state.i_to_a),
        i_load_a=np.zeros_like(state.i_load_a),
    )


def points(model: GridModel) -> list[MeasuringPoint]:
    return [
        MeasuringPoint.at_branch_end(model, 300),  # feeder-head switch
        MeasuringPoint.at_branch_end(model, 101, end="to"),
        MeasuringPoint.at_branch_end(model, 201),  # a transformer's HV side
        MeasuringPoint.at_load(model, 400),
    ]


def expected(
    state: PhasorState, pts: list[MeasuringPoint]
) -> tuple[npt.NDArray[np.complex128], ...]:
    """Voltage and current phasors of the points, straight from the state."""
    voltage = state.u_v[state.bus_rows([p.bus_id for p in pts])]
    current = np.empty((len(pts), 3), dtype=np.complex128)
    for k, p in enumerate(pts):
        if p.current_at is CurrentAt.LOAD:
            current[k] = state.i_load_a[state.load_rows([p.element_id])[0]]
        elif p.current_at is CurrentAt.BRANCH_FROM:
            current[k] = state.i_from_a[state.branch_rows([p.element_id])[0]]
        else:
            current[k] = state.i_to_a[state.branch_rows([p.element_id])[0]]
    return voltage, current


def angle_error_deg(a: npt.NDArray[np.complex128], b: npt.NDArray[np.complex128]) -> float:
    return float(np.max(np.abs(np.angle(a / b, deg=True))))


def event(
    prefault: PhasorState, *, fault_ms: float = 100.0, trip_ms: float = 250.0
) -> list[StateSegment]:
    fault_ns = T0_NS + round(fault_ms * MS) + 1234  # off the sample grid
    return [
        StateSegment(T0_NS, prefault, "prefault"),
        StateSegment(fault_ns, faulted(prefault), "fault", transient=True, dc_time_constant_s=0.01),
        StateSegment(T0_NS + round(trip_ms * MS), tripped(prefault), "trip"),
    ]


@pytest.mark.parametrize("rate_hz", ALLOWED_SAMPLING_RATES_HZ)
def test_steady_parts_match_the_phasors(
    model: GridModel, prefault: PhasorState, rate_hz: int
) -> None:
    """RMS over whole cycles within 1 % of |phasor|, DFT angle within 1 degree, in every steady
    part: before the fault, late in the fault (the DC offset decayed), after the trip."""
    pts = points(model)
    segments = event(prefault)
    # small noise: the hand-made fault puts 400 A on every branch, 80 times a small one's load
    options = WaveformOptions(voltage_noise_fraction=1e-4, current_noise_fraction=1e-4)
    record = generate_waveforms(
        segments,
        pts,
        start_ns=T0_NS,
        end_ns=T0_NS + 400 * MS,
        sampling_rate_hz=rate_hz,
        options=options,
    )
    assert record.voltage_v.shape == record.current_a.shape == (4, 3, rate_hz * 4 // 10)
    for segment, window_ms in ((segments[0], 20), (segments[1], 180)):
        u_expected, i_expected = expected(segment.state, pts)
        rms_u, rms_i = record.rms(T0_NS + window_ms * MS, cycles=3)
        np.testing.assert_allclose(rms_u, np.abs(u_expected), rtol=0.01)
        np.testing.assert_allclose(rms_i, np.abs(i_expected), rtol=0.01)
        phasor_u, phasor_i = record.phasors(T0_NS + window_ms * MS, cycles=3)
        assert angle_error_deg(phasor_u, u_expected) < 1.0
        assert angle_error_deg(phasor_i, i_expected) < 1.0
        np.testing.assert_allclose(np.abs(phasor_i), np.abs(i_expected), rtol=0.01)
    # tripped: only the noise is left, 0.01 % of each point's full scale (its largest RMS)
    rms_u, rms_i = record.rms(T0_NS + 300 * MS, cycles=2)
    full_u = np.maximum(*(np.abs(expected(s.state, pts)[0]).max(1) for s in segments[:2]))
    full_i = np.maximum(*(np.abs(expected(s.state, pts)[1]).max(1) for s in segments[:2]))
    np.testing.assert_allclose(rms_u, np.repeat(1e-4 * full_u[:, None], 3, 1), rtol=0.2)
    np.testing.assert_allclose(rms_i, np.repeat(1e-4 * full_i[:, None], 3, 1), rtol=0.2)
    assert [e.cause for e in record.events] == ["prefault", "fault", "trip"]
    assert record.trigger_ns == segments[1].start_ns


def test_dft_is_exact_without_noise(model: GridModel, prefault: PhasorState) -> None:
    """A full-cycle DFT rejects the harmonics, so without noise it returns the phasor itself."""
    pts = points(model)
    record = generate_waveforms(
        [StateSegment(T0_NS, prefault, "prefault")],
        pts,
        start_ns=T0_NS,
        end_ns=T0_NS + 60 * MS,
        sampling_rate_hz=3200,
        options=QUIET,
    )
    u_expected, i_expected = expected(prefault, pts)
    phasor_u, phasor_i = record.phasors(T0_NS + 7 * MS)
    np.testing.assert_allclose(phasor_u, u_expected, rtol=1e-9)
    np.testing.assert_allclose(phasor_i, i_expected, rtol=1e-9)
    # harmonics are in the RMS: sqrt(1 + 0.02^2 + 0.01^2) for voltages
    rms_u, _ = record.rms(T0_NS + 7 * MS)
    np.testing.assert_allclose(
        rms_u, np.abs(u_expected) * math.sqrt(1 + 0.02**2 + 0.01**2), rtol=1e-9
    )


def test_phase_is_continuous_on_one_absolute_time_axis(
    model: GridModel, prefault: PhasorState
) -> None:
    """Cutting a steady state into segments, or the window differently, changes no sample."""
    pts = points(model)
    whole = generate_waveforms(
        [StateSegment(T0_NS, prefault, "prefault")],
        pts,
        start_ns=T0_NS,
        end_ns=T0_NS + 100 * MS,
        options=QUIET,
    )
    split = generate_waveforms(
        [
            StateSegment(T0_NS, prefault, "prefault"),
            StateSegment(T0_NS + 33_333_333, prefault, "switch"),
        ],
        pts,
        start_ns=T0_NS,
        end_ns=T0_NS + 100 * MS,
        options=QUIET,
    )
    np.testing.assert_array_equal(split.voltage_v, whole.voltage_v)
    np.testing.assert_array_equal(split.current_a, whole.current_a)
    later = generate_waveforms(
        [StateSegment(T0_NS, prefault, "prefault")],
        pts,
        start_ns=T0_NS + 37 * whole.sample_period_ns,
        end_ns=T0_NS + 100 * MS,
        options=QUIET,
    )
    np.testing.assert_allclose(later.current_a, whole.current_a[..., 37:], rtol=0, atol=1e-9)
    np.testing.assert_allclose(later.voltage_v, whole.voltage_v[..., 37:], rtol=0, atol=1e-6)


def test_current_is_continuous_at_a_transient_inception(
    model: GridModel, prefault: PhasorState
) -> None:
    """The DC offset is minus the jump of the phasor waveform: the current does not jump."""
    pts = points(model)
    period_ns = 1_000_000_000 // 8000
    fault_ns = T0_NS + 1000 * period_ns + 3  # between samples 1000 and 1001
    segments = [
        StateSegment(T0_NS, prefault, "prefault"),
        StateSegment(fault_ns, faulted(prefault), "fault", transient=True, dc_time_constant_s=0.02),
    ]
    window = {"start_ns": T0_NS, "end_ns": T0_NS + 200 * MS, "sampling_rate_hz": 8000}
    record = generate_waveforms(segments, pts, **window, options=QUIET)
    # the samples just before and after the inception differ by no more than the waveform's slope
    # allows over one sample: omega * peak * T (peak ~ 585 A of fault + DC), about 33 A at 8 kHz
    steps = np.abs(np.diff(record.current_a[..., 999:1002], axis=-1))
    assert steps.max() < 2 * np.pi * 50 * 2 * 600 / 8000
    # exactness: a record whose fault segment starts on a sample agrees there with the pre-fault
    on_sample = [segments[0], dataclasses.replace(segments[1], start_ns=T0_NS + 1000 * period_ns)]
    with_fault = generate_waveforms(on_sample, pts, **window, options=QUIET)
    without = generate_waveforms(segments[:1], pts, **window, options=QUIET)
    np.testing.assert_allclose(
        with_fault.current_a[..., 1000], without.current_a[..., 1000], rtol=0, atol=1e-9
    )
    # a non-transient step does jump there: the offset is what removes the jump
    stepped = [on_sample[0], dataclasses.replace(on_sample[1], transient=False)]
    jumped = generate_waveforms(stepped, pts, **window, options=QUIET)
    jump = np.abs(jumped.current_a[0, 0, 1000] - without.current_a[0, 0, 1000])
    assert jump > 100.0


def test_dc_offset_decays_with_the_time_constant(model: GridModel, prefault: PhasorState) -> None:
    pts = points(model)[:1]
    tau_s = 0.035
    fault_ns = T0_NS + 40 * MS + 125_000 * 3
    transient = [
        StateSegment(T0_NS, prefault, "prefault"),
        StateSegment(
            fault_ns, faulted(prefault), "fault", transient=True, dc_time_constant_s=tau_s
        ),
    ]
    steady = [transient[0], dataclasses.replace(transient[1], transient=False)]
    window = {"start_ns": T0_NS, "end_ns": T0_NS + 300 * MS, "sampling_rate_hz": 8000}
    offset = (
        generate_waveforms(transient, pts, **window, options=PURE).current_a
        - generate_waveforms(steady, pts, **window, options=PURE).current_a
    )[0, 0]
    first = int(np.searchsorted(
        T0_NS + np.arange(offset.size) * 125_000, fault_ns
    ))  # fmt: skip
    assert np.all(offset[:first] == 0.0)
    dc = offset[first:]
    elapsed_s = (np.arange(dc.size) * 125_000 + (T0_NS + first * 125_000 - fault_ns)) / 1e9
    # the offset equals its initial value times exp(-t / tau): a log-linear fit finds tau
    slope, _ = np.polyfit(elapsed_s[:800], np.log(np.abs(dc[:800])), 1)
    assert -1.0 / slope == pytest.approx(tau_s, rel=1e-6)
    # and its initial value is minus the jump of the phasor waveform at the inception
    t_s = fault_ns / 1e9
    theta = 2 * np.pi * 50.0 * math.fmod(t_s, 1.0)  # 50 Hz: whole cycles per second
    before = (
        math.sqrt(2)
        * (prefault.i_from_a[prefault.branch_rows([300])[0], 0] * np.exp(1j * theta)).real
    )
    after = (
        math.sqrt(2)
        * (
            (prefault.i_from_a[prefault.branch_rows([300])[0], 0] + FAULT_A) * np.exp(1j * theta)
        ).real
    )
    initial = dc[0] / math.exp(-elapsed_s[0] / tau_s)
    assert initial == pytest.approx(before - after, rel=1e-4)


def arc_event(
    prefault: PhasorState, arc: ArcBehaviour, *, transient: bool = True
) -> list[StateSegment]:
    return [
        StateSegment(T0_NS, prefault, "prefault"),
        StateSegment(
            T0_NS + 40 * MS + 777, faulted(prefault), "fault", transient=transient,
            dc_time_constant_s=0.02, arc=arc,
        ),
        StateSegment(T0_NS + 540 * MS, tripped(prefault), "trip"),
    ]  # fmt: skip


def test_arc_goes_out_at_current_zeros_and_restrikes(
    model: GridModel, prefault: PhasorState
) -> None:
    arc = ArcBehaviour(
        phases=(0,), arc_voltage_v=1500.0, burn_cycles=2.0, restrike_after_cycles=3.0
    )
    # branch 100 from-end carries the fault part that stands for the arc current (the first of
    # the equal largest): measured there, the arc's timing is exact
    pts = [MeasuringPoint.at_branch_end(model, 100)]
    segments = arc_event(prefault, arc)
    window = {"start_ns": T0_NS, "end_ns": T0_NS + 600 * MS, "sampling_rate_hz": 8000}
    record = generate_waveforms(segments, pts, **window, options=PURE)
    healthy = generate_waveforms(segments[:1], pts, **window, options=PURE)
    fault_steady = generate_waveforms(
        [segments[0], dataclasses.replace(segments[1], arc=None, transient=False)],
        pts, **window, options=PURE,
    )  # fmt: skip
    outs = [e.t_ns for e in record.events if e.cause == "arc_extinction"]
    strikes = [e.t_ns for e in record.events if e.cause == "arc_restrike"]
    assert len(outs) >= 4
    assert len(strikes) >= 3
    period_ns = 20 * MS
    # burn at least burn_cycles, out at least restrike_after_cycles, alternating
    burn_starts = [segments[1].start_ns, *strikes]
    for strike, out in zip(burn_starts, outs, strict=False):
        assert out - strike >= 2 * period_ns
        assert out - strike < 3 * period_ns  # went out at the first zero after 2 cycles
    for out, strike in zip(outs, strikes, strict=False):
        assert strike - out >= 3 * period_ns
    t = record.time_ns
    fault_part = record.current_a[0, 0] - healthy.current_a[0, 0]
    # extinguished: exactly the healthy current on the arcing phase (zero fault current)
    for out, strike in zip(outs, [*strikes, segments[2].start_ns], strict=False):
        dark = (t >= out) & (t < strike)
        assert dark.sum() > 100
        np.testing.assert_allclose(fault_part[dark], 0.0, atol=1e-9)
        np.testing.assert_allclose(
            record.voltage_v[0, 0, dark], healthy.voltage_v[0, 0, dark], rtol=1e-12
        )
    # burning: the fault current flows, and it went out at a zero of it
    for strike, out in zip(burn_starts, outs, strict=False):
        lit = (t >= strike) & (t < out)
        assert np.abs(fault_part[lit]).max() > 400.0
        last = np.flatnonzero(lit)[-1]
        slope = 2 * np.pi * 50 * math.sqrt(2) * abs(FAULT_A) / 8000  # A per sample
        assert abs(fault_part[last]) <= slope * 1.01
    # re-strike near a voltage peak: the healthy voltage there is >= 0.8 of its peak
    peak = math.sqrt(2) * abs(prefault.u_v[prefault.bus_rows([pts[0].bus_id])[0], 0])
    for strike in strikes:
        k = int(np.searchsorted(t, strike))
        assert abs(healthy.voltage_v[0, 0, k]) >= 0.79 * peak
    # the arc voltage: a square wave of +-1500 V in phase with the arc current
    first_burn = (t >= burn_starts[0] + 2 * MS) & (t < outs[0] - 2 * MS)
    arc_v = record.voltage_v[0, 0, first_burn] - fault_steady.voltage_v[0, 0, first_burn]
    np.testing.assert_allclose(np.abs(arc_v), 1500.0, rtol=1e-9)
    np.testing.assert_array_equal(np.sign(arc_v), np.sign(fault_part[first_burn]))
    # phases b and c are not arcing: they follow the fault segment throughout
    during = (t >= segments[1].start_ns) & (t < segments[2].start_ns)
    np.testing.assert_allclose(
        record.current_a[0, 1:, during.nonzero()[0]],
        fault_steady.current_a[0, 1:, during.nonzero()[0]],
        atol=1e-9,
    )


def test_non_transient_arc_and_the_same_timing_everywhere(
    model: GridModel, prefault: PhasorState
) -> None:
    """The arc's timing belongs to the grid, not to the measuring point or the window."""
    arc = ArcBehaviour(phases=(0,), arc_voltage_v=800.0, burn_cycles=1.5, restrike_after_cycles=2.0)
    segments = arc_event(prefault, arc, transient=False)
    one = generate_waveforms(
        segments, points(model)[:1], start_ns=T0_NS, end_ns=T0_NS + 500 * MS, options=PURE
    )
    other = generate_waveforms(
        segments,
        points(model)[3:],
        start_ns=T0_NS + 120 * MS,
        end_ns=T0_NS + 500 * MS,
        options=PURE,
    )
    events_one = [e for e in one.events if e.cause.startswith("arc") and e.t_ns >= T0_NS + 120 * MS]
    events_other = [e for e in other.events if e.cause.startswith("arc")]
    assert events_one == events_other
    assert len(events_one) >= 4


def test_noise_is_seeded(model: GridModel, prefault: PhasorState) -> None:
    segments = event(prefault)
    window = {"start_ns": T0_NS, "end_ns": T0_NS + 100 * MS}
    pts = points(model)
    a = generate_waveforms(segments, pts, **window, options=WaveformOptions(seed=7))
    b = generate_waveforms(segments, pts, **window, options=WaveformOptions(seed=7))
    c = generate_waveforms(segments, pts, **window, options=WaveformOptions(seed=8))
    clean = generate_waveforms(segments, pts, **window, options=QUIET)
    np.testing.assert_array_equal(a.voltage_v, b.voltage_v)
    np.testing.assert_array_equal(a.current_a, b.current_a)
    assert not np.allclose(a.current_a, c.current_a, rtol=0, atol=1e-12)
    # the noise is Gaussian with the configured spread: 0.1 % of the point's full scale
    noise = (a.current_a - clean.current_a)[0]
    full_scale = np.abs(faulted(prefault).i_from_a[prefault.branch_rows([300])[0]]).max()
    assert noise.std() == pytest.approx(0.001 * full_scale, rel=0.05)
    assert abs(noise.mean()) < 0.0002 * full_scale


def test_sixty_hertz_cycles_need_whole_samples(prefault: PhasorState, model: GridModel) -> None:
    state = dataclasses.replace(prefault, frequency_hz=60.0)
    pts = points(model)[:1]
    record = generate_waveforms(
        [StateSegment(T0_NS, state, "prefault")],
        pts,
        start_ns=T0_NS,
        end_ns=T0_NS + 100 * MS,
        sampling_rate_hz=3200,
        options=QUIET,
    )
    u_expected, i_expected = expected(state, pts)
    phasor_u, phasor_i = record.phasors(T0_NS, cycles=3)  # 160 samples
    np.testing.assert_allclose(phasor_u, u_expected, rtol=1e-9)
    np.testing.assert_allclose(phasor_i, i_expected, rtol=1e-9)
    with pytest.raises(WaveformError, match=r"not a whole number; use a multiple of 3 cycles"):
        record.rms(T0_NS, cycles=1)
    with pytest.raises(WaveformError, match="past the record's end"):
        record.rms(T0_NS + 90 * MS, cycles=3)


def test_bad_inputs_name_what_is_wrong(model: GridModel, prefault: PhasorState) -> None:
    pts = points(model)[:1]
    segments = event(prefault)
    window = {"start_ns": T0_NS, "end_ns": T0_NS + 100 * MS}
    with pytest.raises(WaveformError, match=r"5000 Hz is not one of 3200, 4000, 8000 Hz"):
        generate_waveforms(segments, pts, **window, sampling_rate_hz=5000)
    with pytest.raises(ValueError, match="no segments"):
        generate_waveforms([], pts, **window)
    with pytest.raises(WaveformError, match=r"before the first segment \(prefault\)"):
        generate_waveforms(segments, pts, start_ns=T0_NS - 1, end_ns=T0_NS + 100 * MS)
    with pytest.raises(WaveformError, match="is not after its start"):
        generate_waveforms(segments, pts, start_ns=T0_NS, end_ns=T0_NS)
    with pytest.raises(
        WaveformError, match=r"segment 2 \(fault\) starts at .* not after segment 1"
    ):
        generate_waveforms([segments[0], segments[2], segments[1]], pts, **window)
    with pytest.raises(WaveformError, match="no measuring points"):
        generate_waveforms(segments, [], **window)
    ghost = MeasuringPoint("ghost", 2, CurrentAt.BRANCH_FROM, 999)
    with pytest.raises(WaveformError, match=r"segment 0: unknown branch id 999"):
        generate_waveforms(segments, ghost, **window)
    with pytest.raises(WaveformError, match="no load with id 3"):
        MeasuringPoint.at_load(model, 3)
    with pytest.raises(WaveformError, match="no line, transformer or switch with id 400"):
        MeasuringPoint.at_branch_end(model, 400)
    arc = ArcBehaviour(phases=(0,), arc_voltage_v=100.0)
    with pytest.raises(WaveformError, match="segment 0 is an arc segment"):
        generate_waveforms([StateSegment(T0_NS, prefault, "fault", arc=arc)], pts, **window)
    with pytest.raises(WaveformError, match=r"burn_cycles must be > 0"):
        generate_waveforms(
            arc_event(prefault, dataclasses.replace(arc, burn_cycles=0.0)), pts, **window
        )
    with pytest.raises(WaveformError, match=r"no fault current on phase b"):
        generate_waveforms(
            arc_event(prefault, dataclasses.replace(arc, phases=(1,))), pts, **window
        )
    with pytest.raises(WaveformError, match=r"harmonic 40 \(2000 Hz\) is above the Nyquist"):
        generate_waveforms(
            segments, pts, **window, sampling_rate_hz=3200,
            options=WaveformOptions(voltage_harmonics={40: 0.01}),
        )  # fmt: skip
    with pytest.raises(WaveformError, match="current_noise_fraction must be finite and >= 0"):
        WaveformOptions(current_noise_fraction=-1.0)
    with pytest.raises(WaveformError, match="dc_time_constant_s must be > 0"):
        generate_waveforms(
            [segments[0], dataclasses.replace(segments[1], dc_time_constant_s=0.0)], pts, **window
        )


def test_record_describes_its_channels(model: GridModel, prefault: PhasorState) -> None:
    record: WaveformRecord = generate_waveforms(
        event(prefault), points(model)[:2], start_ns=T0_NS + 50 * MS, end_ns=T0_NS + 150 * MS,
        sampling_rate_hz=4000,
    )  # fmt: skip
    assert record.channel_names[:6] == tuple(f"switch 300 from {q}{p}" for q in "VI" for p in "ABC")
    assert record.channel_names[6] == "line 101 to VA"
    assert record.channel_units == ("V",) * 3 + ("A",) * 3 + ("V",) * 3 + ("A",) * 3
    assert record.samples == 400
    assert record.end_ns == T0_NS + 150 * MS
    assert record.time_ns[1] - record.time_ns[0] == 250_000
    assert [e.cause for e in record.events] == ["fault"]  # the prefault began before the window
