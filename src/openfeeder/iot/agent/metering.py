"""Per-phase RMS, powers, power factor and frequency from one acquisition (pure numpy).

For a :class:`~openfeeder.iot.agent.source.WaveformWindow` with samples ``v`` and ``i`` of a phase:

- ``u_x = sqrt(mean(v**2))`` and ``i_x = sqrt(mean(i**2))``: true RMS, harmonics included;
- ``p_x = mean(v * i)``: active power, harmonics included;
- ``s_x = u_x * i_x``: apparent power;
- ``q_x = Im(V1 * conj(I1))``: the *fundamental* reactive power Q1 of IEEE 1459, from the
  fundamental phasors ``V1``, ``I1`` (RMS) fitted by least squares at the measured frequency.
  **Sign convention (load / consumer convention): Q > 0 when the current lags the voltage**, i.e. an
  inductive load absorbs reactive power; P > 0 when the meter's load consumes active power. For a
  pure sinusoid with current lagging by ``phi``, ``Q = U I sin(phi)`` exactly;
- ``pf_x = p_x / s_x`` (true power factor, signed like P);
- totals ``p``, ``q`` are sums over the phases, ``s`` is the arithmetic sum of the phase apparent
  powers and ``pf = p / s``;
- ``f``: the frequency, from a least-squares line through the unwrapped angle of the voltage space
  vector ``v_a + a v_b + a^2 v_c`` (``a = exp(j 2 pi / 3)``) over the window; it uses all three
  phases and every sample, so noise and harmonics average out (a few mHz for 3 % unbalance).

A :class:`~openfeeder.iot.agent.source.PhasorFrame` gives the same quantities from its phasors
(``p_x + j q_x = V I*``, ``s_x = |V| |I|``, frequency as delivered).

Quality (per reading): GOOD, or SUSPECT when the acquisition is incomplete, the window is shorter
than ``min_cycles``, a voltage is outside ``u_range_pu`` of ``u_nominal_v`` (if given) or the frequency
outside ``f_range_hz``; INVALID (value 0) when a value cannot be computed (no voltage to find a
frequency in, no apparent power for a power factor, a non-finite result).

Channels and units: ``u_a u_b u_c`` V, ``i_a i_b i_c`` A, ``p_a p_b p_c p`` W, ``q_a q_b q_c q`` var,
``s_a s_b s_c s`` VA, ``pf_a pf_b pf_c pf`` 1, ``f`` Hz: 23 readings per message.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.iot.agent.source import Acquisition, PhasorFrame, WaveformWindow, sample_index
from openfeeder.iot.schema import SCHEMA_VERSION, Quality, Reading, Unit

__all__ = [
    "CHANNELS",
    "MeterValues",
    "MeteringLimits",
    "compute",
    "compute_phasors",
    "compute_waveforms",
    "encode_measurement",
    "reading_values",
    "to_readings",
]

FloatArray = npt.NDArray[np.float64]

_A: Final = np.exp(2j * np.pi / 3)
_PHASES: Final = ("a", "b", "c")
CHANNELS: Final[tuple[tuple[str, Unit], ...]] = (
    *((f"u_{x}", Unit.V) for x in _PHASES),
    *((f"i_{x}", Unit.A) for x in _PHASES),
    *((f"p_{x}", Unit.W) for x in _PHASES),
    ("p", Unit.W),
    *((f"q_{x}", Unit.VAR) for x in _PHASES),
    ("q", Unit.VAR),
    *((f"s_{x}", Unit.VA) for x in _PHASES),
    ("s", Unit.VA),
    *((f"pf_{x}", Unit.ONE) for x in _PHASES),
    ("pf", Unit.ONE),
    ("f", Unit.HZ),
)
"""Every channel a meter publishes, in message order, with its unit."""


@dataclass(frozen=True, slots=True)
class MeteringLimits:
    """Plausibility ranges; outside them a reading is SUSPECT."""

    u_nominal_v: float | None = None
    """Phase-to-neutral nominal voltage; None: voltages are not range-checked."""
    u_range_pu: tuple[float, float] = (0.5, 1.5)
    f_nominal_hz: float = 50.0
    f_range_hz: tuple[float, float] = (42.5, 57.5)
    """EN 50160's widest band (island systems, 50 Hz +/- 15 %)."""
    min_cycles: float = 1.0
    """A waveform window shorter than this many cycles gives SUSPECT readings."""


_DEFAULT_LIMITS: Final = MeteringLimits()


@dataclass(frozen=True, slots=True)
class MeterValues:
    """The computed quantities of one acquisition; arrays are per phase (a, b, c)."""

    t_ns: int
    u_v: FloatArray
    i_a: FloatArray
    p_w: FloatArray
    q_var: FloatArray
    s_va: FloatArray
    f_hz: float
    complete: bool
    """False: the acquisition was incomplete or too short (every reading is at most SUSPECT)."""
    f_valid: bool
    """False: no frequency could be found (no voltage); ``f_hz`` is then the nominal one."""

    @property
    def p_total_w(self) -> float:
        return float(self.p_w.sum())

    @property
    def q_total_var(self) -> float:
        return float(self.q_var.sum())

    @property
    def s_total_va(self) -> float:
        return float(self.s_va.sum())


def compute(acquisition: Acquisition, limits: MeteringLimits | None = None) -> MeterValues:
    """Quantities of a waveform window or a phasor frame."""
    limits = limits if limits is not None else MeteringLimits()
    if isinstance(acquisition, PhasorFrame):
        return compute_phasors(acquisition)
    return compute_waveforms(acquisition, limits)


def compute_waveforms(window: WaveformWindow, limits: MeteringLimits | None = None) -> MeterValues:
    """RMS, P, S from the samples; frequency and Q1 from the fitted fundamental (module docstring)."""
    limits = limits if limits is not None else MeteringLimits()
    v = np.asarray(window.voltage_v, dtype=np.float64)
    i = np.asarray(window.current_a, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] != 3 or v.shape != i.shape:
        raise ValueError(f"waveforms must be two (3, n) arrays, not {v.shape} and {i.shape}")
    n = v.shape[1]
    if n < 2:
        raise ValueError("a waveform window needs at least 2 samples")
    fs = window.sampling_rate_hz
    t_s = sample_index(n) / fs
    u_v = np.sqrt(np.mean(v * v, axis=1))
    i_a = np.sqrt(np.mean(i * i, axis=1))
    p_w = np.mean(v * i, axis=1)
    s_va = u_v * i_a

    f_hz, f_valid = _frequency(v, t_s, u_v)
    f_fit = f_hz if f_valid else limits.f_nominal_hz
    q_var = _fundamental_q(v, i, t_s, f_fit)
    cycles = n / fs * f_fit
    return MeterValues(
        t_ns=window.t_ns,
        u_v=u_v,
        i_a=i_a,
        p_w=p_w,
        q_var=q_var,
        s_va=s_va,
        f_hz=f_hz if f_valid else limits.f_nominal_hz,
        complete=window.complete and cycles >= limits.min_cycles,
        f_valid=f_valid,
    )


def compute_phasors(frame: PhasorFrame) -> MeterValues:
    """The same quantities from RMS phasors (``S = V I*`` per phase)."""
    v = np.asarray(frame.voltage_v, dtype=np.complex128)
    i = np.asarray(frame.current_a, dtype=np.complex128)
    if v.shape != (3,) or i.shape != (3,):
        raise ValueError(f"phasors must be two (3,) arrays, not {v.shape} and {i.shape}")
    power = v * np.conj(i)
    u_v = np.abs(v)
    i_a = np.abs(i)
    return MeterValues(
        t_ns=frame.t_ns,
        u_v=u_v,
        i_a=i_a,
        p_w=power.real.copy(),
        q_var=power.imag.copy(),
        s_va=u_v * i_a,
        f_hz=float(frame.frequency_hz),
        complete=frame.complete,
        f_valid=bool(np.isfinite(frame.frequency_hz) and frame.frequency_hz > 0),
    )


def _frequency(v: FloatArray, t_s: FloatArray, u_v: FloatArray) -> tuple[float, bool]:
    """Least-squares slope of the unwrapped space-vector angle, in Hz; (0, False) if not found."""
    if not np.all(np.isfinite(u_v)) or u_v.max() <= 1e-9:
        return 0.0, False
    z = v[0] + _A * v[1] + _A * _A * v[2]
    magnitude = np.abs(z)
    if magnitude.min() <= 1e-6 * magnitude.max():  # the vector passes through zero: no rotation
        return 0.0, False
    # unwrapped angle = cumulative sum of the (small) angle steps between consecutive samples
    steps = np.angle(z[1:] * np.conj(z[:-1]))
    angle = np.concatenate(([0.0], np.cumsum(steps)))
    dt = t_s - t_s.mean()
    slope = float(np.dot(dt, angle - angle.mean()) / np.dot(dt, dt))
    f_hz = abs(slope) / (2 * np.pi)
    return f_hz, bool(np.isfinite(f_hz) and f_hz > 0)


def _fundamental_q(v: FloatArray, i: FloatArray, t_s: FloatArray, f_hz: float) -> FloatArray:
    """Q1 per phase from the least-squares fundamental phasors of voltage and current."""
    omega_t = 2 * np.pi * f_hz * t_s
    basis = np.vstack((np.cos(omega_t), np.sin(omega_t)))  # (2, n)
    # normal equations of the two-column fit, all six signals at once: (2, 2) @ (2, 6)
    coefficients = np.linalg.solve(basis @ basis.T, basis @ np.vstack((v, i)).T)
    # x(t) ~ a cos(wt) + b sin(wt) = Re(sqrt(2) X e^{jwt}) with X = (a - jb) / sqrt(2)
    phasors = (coefficients[0] - 1j * coefficients[1]) / np.sqrt(2.0)
    v1, i1 = phasors[:3], phasors[3:]
    q_var: FloatArray = (v1 * np.conj(i1)).imag
    return q_var


def reading_values(
    values: MeterValues, limits: MeteringLimits | None = None
) -> list[tuple[float, Quality]]:
    """``(value, quality)`` per channel of :data:`CHANNELS` (finite values; INVALID ones are 0)."""
    # plain Python floats from here on: for three phases, numpy calls cost more than the arithmetic
    limits = limits if limits is not None else _DEFAULT_LIMITS
    base = Quality.GOOD if values.complete else Quality.SUSPECT
    u = values.u_v.tolist()
    i = values.i_a.tolist()
    p = values.p_w.tolist()
    q = values.q_var.tolist()
    s = values.s_va.tolist()
    p_total, q_total, s_total = values.p_total_w, values.q_total_var, values.s_total_va
    if limits.u_nominal_v is not None:
        low, high = (bound * limits.u_nominal_v for bound in limits.u_range_pu)
        u_quality = [base if low <= x <= high else Quality.SUSPECT for x in u]
    else:
        u_quality = [base, base, base]
    f_low, f_high = limits.f_range_hz
    if not values.f_valid:
        f_quality = Quality.INVALID
    elif not f_low <= values.f_hz <= f_high:
        f_quality = Quality.SUSPECT
    else:
        f_quality = base
    q_quality = base if values.f_valid else Quality.SUSPECT
    invalid = Quality.INVALID
    rows: list[tuple[float, Quality]] = [
        (u[0], u_quality[0]),
        (u[1], u_quality[1]),
        (u[2], u_quality[2]),
        (i[0], base),
        (i[1], base),
        (i[2], base),
        (p[0], base),
        (p[1], base),
        (p[2], base),
        (p_total, base),
        (q[0], q_quality),
        (q[1], q_quality),
        (q[2], q_quality),
        (q_total, q_quality),
        (s[0], base),
        (s[1], base),
        (s[2], base),
        (s_total, base),
        *((p[k] / s[k], base) if s[k] > 0 else (0.0, invalid) for k in range(3)),
        (p_total / s_total, base) if s_total > 0 else (0.0, invalid),
        (values.f_hz if values.f_valid else 0.0, f_quality),
    ]
    return [(x, q) if math.isfinite(x) else (0.0, invalid) for x, q in rows]


def to_readings(
    values: MeterValues,
    limits: MeteringLimits | None = None,
    *,
    channels: Collection[str] | None = None,
) -> tuple[Reading, ...]:
    """The readings of :data:`CHANNELS` (or of those in ``channels``) with unit and quality."""
    # model_construct: the fields are valid by construction here (token channels, finite values,
    # enum members); validation would be most of the cost of a message.
    return tuple(
        Reading.model_construct(channel=channel, value=value, unit=unit, quality=quality)
        for (channel, unit), (value, quality) in zip(
            CHANNELS, reading_values(values, limits), strict=True
        )
        if channels is None or channel in channels
    )


_CHANNEL_NAMES: Final = tuple(channel for channel, _ in CHANNELS)
_FRAGMENTS: Final = {
    (channel, quality): (
        f'{{"channel":"{channel}","value":',
        f',"unit":"{unit.value}","quality":"{quality.value}"}}',
    )
    for channel, unit in CHANNELS
    for quality in Quality
}


def encode_measurement(
    device_id: str, seq: int, values: MeterValues, limits: MeteringLimits | None = None
) -> bytes:
    """The ``Measurement`` payload of ``values``, as :func:`openfeeder.iot.schema.encode` would
    make it, without building 23 pydantic objects (the hot path of every meter).

    ``device_id`` must match the scheme's id pattern (it needs no JSON escaping); values are
    finite, written with Python's shortest round-trip ``repr``. Tests decode it with the schema's
    strict codec.
    """
    fragments = _FRAGMENTS
    items = [
        f"{fragments[channel, quality][0]}{value!r}{fragments[channel, quality][1]}"
        for channel, (value, quality) in zip(
            _CHANNEL_NAMES, reading_values(values, limits), strict=True
        )
    ]
    document = (
        f'{{"schema_version":{SCHEMA_VERSION},"device_id":"{device_id}","seq":{seq},'
        f'"t_ns":{values.t_ns},"values":[{",".join(items)}]}}'
    )
    return document.encode("ascii")
