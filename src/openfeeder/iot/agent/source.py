"""What a meter acquires each reporting interval: sampled waveforms or phasors.

A :class:`DataSource` is asked once per reporting interval for one acquisition at a given time and
sampling rate. It answers with either

- a :class:`WaveformWindow`: instantaneous phase-to-neutral voltages and line currents of the three
  phases, sampled at ``sampling_rate_hz`` over a window of whole cycles (IEC 61000-4-30 uses 10
  cycles at 50 Hz, 200 ms), or
- a :class:`PhasorFrame`: RMS fundamental phasors of the three voltages and currents plus the
  frequency, as a PMU or a source computing its own phasors delivers them.

:mod:`openfeeder.iot.agent.metering` turns either into readings. The digital twin will implement
the protocol; until then :class:`SyntheticSource` produces deterministic three-phase waveforms.

Arrays are ``float64`` of shape ``(3, n)`` (phases a, b, c by rows) for waveforms and ``complex128``
of shape ``(3,)`` for phasors; a source hands over arrays it will not write again.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "RESIDENTIAL_DAY",
    "Acquisition",
    "DataSource",
    "PhasorFrame",
    "SourceBatch",
    "SyntheticParams",
    "SyntheticSource",
    "WaveformWindow",
    "sample_index",
]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


@dataclass(frozen=True, slots=True)
class WaveformWindow:
    """Sampled instantaneous values of the three phases over one acquisition window."""

    t_ns: int
    """UTC ns of the first sample."""
    sampling_rate_hz: float
    voltage_v: FloatArray
    """Phase-to-neutral voltages, shape ``(3, n)``."""
    current_a: FloatArray
    """Line currents (positive into the load), shape ``(3, n)``."""
    complete: bool = True
    """False when the acquisition lost samples (e.g. an ADC overrun): readings become SUSPECT."""


@dataclass(frozen=True, slots=True)
class PhasorFrame:
    """RMS fundamental phasors of the three phases and the frequency, at one instant."""

    t_ns: int
    voltage_v: ComplexArray
    """Phase-to-neutral voltage phasors (RMS), shape ``(3,)``."""
    current_a: ComplexArray
    """Line current phasors (RMS, positive into the load), shape ``(3,)``."""
    frequency_hz: float
    complete: bool = True


Acquisition = WaveformWindow | PhasorFrame


class DataSource(Protocol):
    """Where a meter's samples come from (the DAQ board of seed 003, the twin, a synthetic one)."""

    def acquire(self, *, t_ns: int, sampling_rate_hz: float) -> Acquisition:
        """One acquisition starting at ``t_ns``; may raise (the agent skips that interval)."""
        ...


@runtime_checkable
class SourceBatch(Protocol):
    """Acquires for many sources at once, cheaper than one by one (the twin measures all devices
    due at an instant in one array operation).

    A source that belongs to one has it as its ``batch`` attribute. An
    :class:`~openfeeder.iot.agent.hosting.AgentHost` calls :meth:`prefetch` with the sources of
    the agents about to tick at ``t_ns``; each source's ``acquire(t_ns=t_ns, ...)`` then hands
    out its share, exactly what it would have acquired alone.
    """

    def prefetch(self, sources: Sequence[DataSource], *, t_ns: int) -> None: ...


RESIDENTIAL_DAY: Final = np.array(
    [0.42, 0.36, 0.33, 0.32, 0.33, 0.38, 0.52, 0.68, 0.66, 0.58, 0.55, 0.56,
     0.60, 0.58, 0.53, 0.52, 0.57, 0.70, 0.88, 1.00, 0.97, 0.86, 0.70, 0.53, 0.42]
)  # fmt: skip
"""Fraction of peak load per hour of a residential weekday (25 points: 00:00 .. 24:00)."""


def _default_voltage_harmonics() -> dict[int, float]:
    return {5: 0.02, 7: 0.01}


def _default_current_harmonics() -> dict[int, float]:
    return {3: 0.06, 5: 0.04, 7: 0.02}


@dataclass(frozen=True, slots=True)
class SyntheticParams:
    """How the synthetic meter's grid behaves; every quantity carries its unit in its name."""

    u_nominal_v: float = 230.0
    """Phase-to-neutral RMS voltage at no load."""
    p_peak_w: float = 30_000.0
    """Three-phase active power at the daily peak."""
    power_factor: float = 0.95
    """Displacement power factor of the load (current lagging)."""
    voltage_drop_at_peak: float = 0.03
    """Relative voltage drop at peak load (the voltage sags as the load rises)."""
    unbalance: float = 0.03
    """Relative spread of the per-phase load shares (and a tenth of it in the voltages)."""
    voltage_harmonics: Mapping[int, float] = field(default_factory=_default_voltage_harmonics)
    """Harmonic order -> amplitude as a fraction of the fundamental voltage."""
    current_harmonics: Mapping[int, float] = field(default_factory=_default_current_harmonics)
    """Harmonic order -> amplitude as a fraction of the fundamental current."""
    noise: float = 0.001
    """Standard deviation of additive noise, as a fraction of each signal's fundamental peak."""
    f_nominal_hz: float = 50.0
    f_deviation_hz: float = 0.05
    """Amplitude of the slow frequency drift around nominal."""
    day_length_s: float = 600.0
    """Wall-clock seconds of one simulated day of load profile (compressed)."""
    cycles: int = 10
    """Window length in cycles of the actual frequency."""

    def __post_init__(self) -> None:
        checks = (
            (self.u_nominal_v > 0, "u_nominal_v must be positive"),
            (self.p_peak_w >= 0, "p_peak_w must not be negative"),
            (0 < self.power_factor <= 1, "power_factor must be in (0, 1]"),
            (0 <= self.unbalance < 0.5, "unbalance must be in [0, 0.5)"),
            (self.noise >= 0, "noise must not be negative"),
            (self.f_nominal_hz > 0, "f_nominal_hz must be positive"),
            (0 <= self.f_deviation_hz < self.f_nominal_hz / 10, "f_deviation_hz is too large"),
            (self.day_length_s > 0, "day_length_s must be positive"),
            (self.cycles >= 1, "cycles must be at least 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


_HOURS: Final = np.arange(25.0)


@functools.lru_cache(maxsize=64)
def sample_index(n: int) -> FloatArray:
    """``0.0, 1.0, ..., n - 1`` (read-only, cached: every window of a meter has about the same n)."""
    index = np.arange(n, dtype=np.float64)
    index.flags.writeable = False
    return index


_PHASE_SHIFT_RAD: Final = np.array([[0.0], [-2 * np.pi / 3], [2 * np.pi / 3]])
_NS_PER_S: Final = 1_000_000_000


class SyntheticSource:
    """Three-phase 50 Hz waveforms of a slowly varying, slightly unbalanced, non-linear load.

    Deterministic: the same ``seed`` and ``t_ns`` give the same samples. The load follows
    :data:`RESIDENTIAL_DAY` compressed into ``day_length_s`` (each seed starts at its own hour), the
    frequency drifts smoothly within ``f_deviation_hz`` of nominal, harmonics and noise are added per
    :class:`SyntheticParams`. The window holds ``cycles`` whole cycles of the actual frequency.
    """

    def __init__(self, seed: int, *, params: SyntheticParams | None = None) -> None:
        self.seed = seed
        self.params = params if params is not None else SyntheticParams()
        rng = np.random.default_rng(seed)
        self._day_offset = float(rng.uniform(0.0, 1.0))
        shares = 1.0 + self.params.unbalance * rng.uniform(-1.0, 1.0, 3)
        self._load_shares = shares / shares.sum()
        self._voltage_factors = 1.0 + 0.1 * self.params.unbalance * rng.uniform(-1.0, 1.0, 3)
        self._f_phases = rng.uniform(0.0, 2 * np.pi, 2)

    def load_fraction(self, t_s: float) -> float:
        """Fraction of ``p_peak_w`` drawn at ``t_s`` (seconds since the epoch)."""
        day = (t_s / self.params.day_length_s + self._day_offset) % 1.0
        return float(np.interp(day * 24.0, _HOURS, RESIDENTIAL_DAY))

    def frequency_hz(self, t_s: float) -> float:
        """The drifting grid frequency at ``t_s``."""
        params = self.params
        drift = 0.7 * np.sin(2 * np.pi * t_s / 300.0 + self._f_phases[0]) + 0.3 * np.sin(
            2 * np.pi * t_s / 37.0 + self._f_phases[1]
        )
        return float(params.f_nominal_hz + params.f_deviation_hz * drift)

    def acquire(self, *, t_ns: int, sampling_rate_hz: float) -> WaveformWindow:
        params = self.params
        t_s = t_ns / _NS_PER_S
        f_hz = self.frequency_hz(t_s)
        n = max(round(params.cycles * sampling_rate_hz / f_hz), 2)
        load = self.load_fraction(t_s)
        u_rms_v = (
            params.u_nominal_v * (1.0 - params.voltage_drop_at_peak * load) * self._voltage_factors
        )
        p_w = params.p_peak_w * load * self._load_shares
        i_rms_a = p_w / (u_rms_v * params.power_factor)
        phi_rad = float(np.arccos(params.power_factor))

        theta0 = (2 * np.pi * f_hz * t_s) % (2 * np.pi)
        theta: FloatArray = theta0 + (2 * np.pi * f_hz / sampling_rate_hz) * sample_index(n)
        # Each signal is Re(sum_h c_h e^{j h theta}): one complex exponential per harmonic order,
        # shared by the six signals, and a (3, orders) @ (orders, n) product per quantity.
        orders = sorted({1, *params.voltage_harmonics, *params.current_harmonics})
        rotations = _rotations(theta, orders)  # (orders, n)
        order_col = np.array(orders, dtype=np.float64)[np.newaxis, :]  # (1, orders)
        v_rel = np.array([1.0 if h == 1 else params.voltage_harmonics.get(h, 0.0) for h in orders])
        i_rel = np.array([1.0 if h == 1 else params.current_harmonics.get(h, 0.0) for h in orders])
        peak_v = np.sqrt(2.0) * u_rms_v  # (3,)
        peak_i = np.sqrt(2.0) * i_rms_a
        v_coef = peak_v[:, np.newaxis] * v_rel * np.exp(1j * order_col * _PHASE_SHIFT_RAD)
        i_coef = (
            peak_i[:, np.newaxis] * i_rel * np.exp(1j * order_col * (_PHASE_SHIFT_RAD - phi_rad))
        )
        rng = np.random.default_rng((self.seed, t_ns))
        noise = rng.standard_normal((2, 3, n)) * params.noise
        voltage_v = (v_coef @ rotations).real + peak_v[:, np.newaxis] * noise[0]
        current_a = (i_coef @ rotations).real + peak_i[:, np.newaxis] * noise[1]
        return WaveformWindow(
            t_ns=t_ns, sampling_rate_hz=sampling_rate_hz, voltage_v=voltage_v, current_a=current_a
        )


def _rotations(theta: FloatArray, orders: list[int]) -> ComplexArray:
    """Rows ``e^{j h theta}`` for each harmonic order ``h`` (powers by multiplication: cheaper than
    one complex exponential per order)."""
    base = np.cos(theta) + 1j * np.sin(theta)
    rows = np.empty((len(orders), theta.size), dtype=np.complex128)
    power = base.copy()
    current = 1
    for row, order in enumerate(orders):  # a few harmonic orders, ascending
        while current < order:
            power *= base
            current += 1
        rows[row] = power
    return rows
