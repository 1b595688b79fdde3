"""Metering math against analytic sinusoids, and the synthetic source."""

from __future__ import annotations

import numpy as np
import pytest

from openfeeder.iot.agent.metering import (
    CHANNELS,
    MeteringLimits,
    compute,
    compute_waveforms,
    encode_measurement,
    to_readings,
)
from openfeeder.iot.agent.source import (
    PhasorFrame,
    SyntheticParams,
    SyntheticSource,
    WaveformWindow,
)
from openfeeder.iot.schema import Measurement, Quality, Unit, decode, encode
from openfeeder.iot.topics import MessageClass, measurement_topic

_SHIFT = np.array([[0.0], [-2 * np.pi / 3], [2 * np.pi / 3]])


def _window(
    *,
    u_v: tuple[float, float, float] = (230.0, 231.0, 229.0),
    i_a: tuple[float, float, float] = (10.0, 12.0, 8.0),
    phi_rad: float = 0.5,
    f_hz: float = 50.0,
    fs_hz: float = 6400.0,
    cycles: float = 10.0,
    v_harmonics: dict[int, float] | None = None,
    complete: bool = True,
) -> WaveformWindow:
    """Three-phase sinusoids; current lags voltage by ``phi_rad`` (inductive load)."""
    n = round(cycles * fs_hz / f_hz)
    angle = 2 * np.pi * f_hz * np.arange(n) / fs_hz + 0.3 + _SHIFT
    v_shape = np.cos(angle)
    for order, amplitude in (v_harmonics or {}).items():
        v_shape = v_shape + amplitude * np.cos(order * angle)
    v = np.sqrt(2) * np.array(u_v)[:, None] * v_shape
    i = np.sqrt(2) * np.array(i_a)[:, None] * np.cos(angle - phi_rad)
    return WaveformWindow(
        t_ns=0, sampling_rate_hz=fs_hz, voltage_v=v, current_a=i, complete=complete
    )


def test_rms_and_powers_of_pure_sinusoids_are_exact() -> None:
    u, i, phi = np.array([230.0, 231.0, 229.0]), np.array([10.0, 12.0, 8.0]), 0.5
    values = compute(_window(phi_rad=phi))
    np.testing.assert_allclose(values.u_v, u, rtol=1e-12)
    np.testing.assert_allclose(values.i_a, i, rtol=1e-12)
    np.testing.assert_allclose(values.p_w, u * i * np.cos(phi), rtol=1e-12)
    np.testing.assert_allclose(values.s_va, u * i, rtol=1e-12)
    # load convention: current lagging the voltage (inductive) gives Q > 0
    np.testing.assert_allclose(values.q_var, u * i * np.sin(phi), rtol=1e-6)
    # the small unbalance leaves a 2f ripple in the space vector's angle: 0.1 mHz here
    assert values.f_hz == pytest.approx(50.0, abs=1e-3)


def test_leading_current_gives_negative_reactive_power() -> None:
    values = compute(_window(phi_rad=-0.3))
    assert np.all(values.q_var < 0)
    np.testing.assert_allclose(values.q_var, values.u_v * values.i_a * np.sin(-0.3), rtol=1e-6)


def test_frequency_off_nominal_and_not_whole_samples() -> None:
    # 49.87 Hz: the window holds no whole number of samples per cycle
    values = compute(_window(f_hz=49.87))
    assert values.f_hz == pytest.approx(49.87, abs=1e-3)
    values = compute(_window(f_hz=50.43, fs_hz=3200.0))
    assert values.f_hz == pytest.approx(50.43, abs=1e-3)


def test_harmonics_count_in_rms_but_not_in_fundamental_q() -> None:
    window = _window(v_harmonics={5: 0.1}, phi_rad=0.4)
    values = compute(window)
    np.testing.assert_allclose(values.u_v, np.array([230.0, 231.0, 229.0]) * np.sqrt(1.01))
    # the current is a pure sinusoid: no harmonic active power, Q is the fundamental's
    u1_i1 = np.array([230.0, 231.0, 229.0]) * np.array([10.0, 12.0, 8.0])
    np.testing.assert_allclose(values.p_w, u1_i1 * np.cos(0.4), rtol=1e-6)
    np.testing.assert_allclose(values.q_var, u1_i1 * np.sin(0.4), rtol=1e-6)


def test_phasor_frame_gives_the_same_quantities() -> None:
    phi = 0.5
    u = np.array([230.0, 231.0, 229.0]) * np.exp(1j * np.array([0, -2 * np.pi / 3, 2 * np.pi / 3]))
    i = np.array([10.0, 12.0, 8.0]) * np.exp(1j * (np.angle(u) - phi))
    from_phasors = compute(PhasorFrame(t_ns=5, voltage_v=u, current_a=i, frequency_hz=50.0))
    from_waves = compute(_window(phi_rad=phi))
    np.testing.assert_allclose(from_phasors.p_w, from_waves.p_w, rtol=1e-6)
    np.testing.assert_allclose(from_phasors.q_var, from_waves.q_var, rtol=1e-6)
    np.testing.assert_allclose(from_phasors.s_va, from_waves.s_va, rtol=1e-6)


def test_readings_carry_channels_units_and_quality() -> None:
    readings = to_readings(compute(_window()), MeteringLimits(u_nominal_v=230.0))
    assert [(r.channel, r.unit) for r in readings] == list(CHANNELS)
    assert len(readings) == 23
    assert all(r.quality is Quality.GOOD for r in readings)
    by_channel = {r.channel: r for r in readings}
    assert by_channel["p"].value == pytest.approx(sum(by_channel[f"p_{x}"].value for x in "abc"))
    assert by_channel["pf"].value == pytest.approx(np.cos(0.5))
    assert by_channel["f"].unit is Unit.HZ


def test_incomplete_or_implausible_windows_are_suspect() -> None:
    incomplete = to_readings(compute(_window(complete=False)))
    assert {r.quality for r in incomplete} == {Quality.SUSPECT}
    # a 20 % overvoltage on phase a only
    high = to_readings(
        compute(_window(u_v=(276.0, 230.0, 230.0))),
        MeteringLimits(u_nominal_v=230.0, u_range_pu=(0.9, 1.1)),
    )
    quality = {r.channel: r.quality for r in high}
    assert quality["u_a"] is Quality.SUSPECT
    assert quality["u_b"] is Quality.GOOD
    # half a cycle only: too short to trust
    short = to_readings(compute_waveforms(_window(cycles=0.5)))
    assert {r.quality for r in short} <= {Quality.SUSPECT, Quality.INVALID}


def test_no_voltage_gives_invalid_frequency_and_power_factor() -> None:
    window = _window(u_v=(0.0, 0.0, 0.0), i_a=(0.0, 0.0, 0.0))
    readings = {r.channel: r for r in to_readings(compute(window))}
    assert readings["f"].quality is Quality.INVALID
    assert readings["pf"].quality is Quality.INVALID
    assert readings["u_a"].value == 0.0


def test_synthetic_source_is_deterministic_and_measurable() -> None:
    t_ns = 1_700_000_123_000_000_000
    first = SyntheticSource(7).acquire(t_ns=t_ns, sampling_rate_hz=6400.0)
    again = SyntheticSource(7).acquire(t_ns=t_ns, sampling_rate_hz=6400.0)
    other = SyntheticSource(8).acquire(t_ns=t_ns, sampling_rate_hz=6400.0)
    np.testing.assert_array_equal(first.voltage_v, again.voltage_v)
    np.testing.assert_array_equal(first.current_a, again.current_a)
    assert not np.array_equal(first.current_a, other.current_a)

    source = SyntheticSource(7, params=SyntheticParams(p_peak_w=60_000.0))
    window = source.acquire(t_ns=t_ns, sampling_rate_hz=6400.0)
    values = compute(window)
    f_true = source.frequency_hz(t_ns / 1e9)
    assert abs(f_true - 50.0) <= 0.05
    assert values.f_hz == pytest.approx(f_true, abs=0.01)
    # whole cycles of the actual frequency: n = cycles * fs / f, rounded
    assert window.voltage_v.shape == (3, round(10 * 6400.0 / f_true))
    # a lagging load with the configured displacement power factor, near the load profile
    assert np.all(values.q_var > 0)
    p_expected = 60_000.0 * source.load_fraction(t_ns / 1e9)
    assert values.p_total_w == pytest.approx(p_expected, rel=0.02)
    assert np.all(np.abs(values.u_v / 230.0 - 1) < 0.05)


@pytest.mark.parametrize(
    "window",
    [
        _window(),
        _window(complete=False, u_v=(1e-7, 2.5e16, 230.0)),
        _window(u_v=(0.0, 0.0, 0.0), i_a=(0.0, 0.0, 0.0)),
    ],
    ids=["normal", "odd-values", "no-voltage"],
)
def test_fast_measurement_encoding_is_what_the_schema_codec_reads(window: WaveformWindow) -> None:
    values = compute(window)
    limits = MeteringLimits(u_nominal_v=230.0)
    payload = encode_measurement("meter-7", 42, values, limits)
    decoded = decode(MessageClass.MEASUREMENT, payload, topic=measurement_topic("meter-7"))
    expected = Measurement(device_id="meter-7", seq=42, t_ns=0, values=to_readings(values, limits))
    assert decoded == expected
    assert Measurement.model_validate_json(encode(expected)) == decoded
