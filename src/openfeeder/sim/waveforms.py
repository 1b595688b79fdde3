"""Sampled three-phase waveforms from piecewise-steady phasor states: what a recorder would capture.

:func:`generate_waveforms` turns the :class:`~openfeeder.sim.segments.StateSegment` timeline of an
event into voltage and current samples at one or more :class:`MeasuringPoint` (a bus voltage with
the current of a branch end or of a load), for a window ``[start_ns, end_ns)`` at 3200, 4000 or
8000 Hz, the rates disturbance recorders and merging units use. The result is a
:class:`WaveformRecord`, which :mod:`openfeeder.sim.comtrade` writes as IEEE C37.111 files.

Physics, and why each part is there:

- **Fundamental.** A phasor ``P`` (RMS) is the waveform ``Re(sqrt2 P exp(j theta(t)))`` with
  ``theta(t) = 2 pi f t`` and ``t`` the absolute UTC time since the epoch. One time axis for every
  segment and every record keeps the phase continuous where segments meet (a fault does not reset
  the phase of the grid) and lets two records of one event, cut differently, agree sample for
  sample. The phase at the window start is computed in exact rational arithmetic, because
  ``2 pi f t`` with ``t`` near 1.7e9 s would lose four decimal digits in floating point.
- **DC offset.** Currents in an inductive network cannot jump. Where a segment starts with a
  sudden change (``transient=True``: fault inception, reclosing onto a fault), the phasor waveform
  jumps; the network answers with a DC component equal to minus that jump, decaying with the
  segment's ``dc_time_constant_s`` (X / (omega R) of the loop). The jump is taken against the
  complete previous current, its own decaying offset and arc state included, so the current is
  continuous at the inception to rounding. A transient first segment is energized from rest.
  Voltages get no offset: they may jump.
- **Harmonics.** Fractions of each segment's fundamental (defaults: 5th 2 % and 7th 1 % on
  voltages, 3rd 3 %, 5th 2 %, 7th 1 % on currents). Order ``h`` of a phase whose fundamental is at
  angle ``phi`` is at ``h phi``, so a balanced set gives the sequences real grids show: the 3rd
  zero sequence, the 5th negative, the 7th positive.
- **Arcs.** In a segment with an :class:`~openfeeder.sim.segments.ArcBehaviour`, the arcing phases
  carry the healthy (previous segment's) state plus the *fault part* (this segment minus the
  previous one) only while the arc burns. The arc strikes at the segment start, burns at least
  ``burn_cycles``, goes out at the next zero of the arc current, and strikes again once
  ``restrike_after_cycles`` have passed and the recovering voltage across the gap reaches
  ``restrike_fraction`` of its peak (near a voltage peak). While it burns, the arcing phases' voltage
  carries the arc's square-wave voltage, in phase with the arc current. The arc current is not in
  a :class:`~openfeeder.analysis.phasors.PhasorState`; the fault part of the branch end whose fault
  part is largest on the arcing phase (the branch feeding the fault) stands for it, and the
  recovering voltage is that of the bus whose voltage changes most (the faulted bus). The timing
  is therefore one for the whole grid: every measuring point and every record of the event sees
  the same extinctions and re-strikes. Each re-strike of a transient segment starts its fault part
  from zero with its own decaying offset. Phases not in ``arc.phases`` follow the segment as usual.
- **Noise.** Additive Gaussian, a fraction of each point's full scale (the largest fundamental RMS
  of the quantity at that point over all segments), from ``numpy.random.default_rng(seed)``: the
  same seed gives the same samples.

Everything is vectorized over samples; Python loops run over segments, harmonic orders and arc
strikes only.

Conventions are those of :mod:`openfeeder.analysis.phasors`: phase-to-ground volts, amperes flowing
*into* the branch at the named end (into the load for a load).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.phasors import PhasorState
from openfeeder.errors import OpenFeederError
from openfeeder.model.grid import GridModel, lookup
from openfeeder.sim._signal import ArcStandIn, SignalModel, theta_at
from openfeeder.sim.clock import NS_PER_S
from openfeeder.sim.segments import ArcBehaviour, StateSegment

__all__ = [
    "ALLOWED_SAMPLING_RATES_HZ",
    "DEFAULT_CURRENT_HARMONICS",
    "DEFAULT_VOLTAGE_HARMONICS",
    "CurrentAt",
    "MeasuringPoint",
    "WaveformError",
    "WaveformEvent",
    "WaveformOptions",
    "WaveformRecord",
    "fundamental_phasors",
    "generate_waveforms",
    "rms_over_cycles",
]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.int64]

ALLOWED_SAMPLING_RATES_HZ: Final = (3200, 4000, 8000)
"""Rates of disturbance recorders and IEC 61869-9 merging units; each gives whole nanoseconds per
sample, so sample instants are exact integers on the UTC nanosecond axis."""
DEFAULT_VOLTAGE_HARMONICS: Final[Mapping[int, float]] = MappingProxyType({5: 0.02, 7: 0.01})
DEFAULT_CURRENT_HARMONICS: Final[Mapping[int, float]] = MappingProxyType(
    {3: 0.03, 5: 0.02, 7: 0.01}
)
_SQRT2: Final = math.sqrt(2.0)


class WaveformError(OpenFeederError, ValueError):
    """Inputs a waveform (or COMTRADE file) cannot be made from; the message says which and where.

    A :class:`ValueError` as well, so callers that validate arguments the standard way catch it.
    """


class CurrentAt(StrEnum):
    """Where a measuring point's current comes from."""

    BRANCH_FROM = "branch_from"
    BRANCH_TO = "branch_to"
    LOAD = "load"


@dataclass(frozen=True, slots=True)
class MeasuringPoint:
    """A recorder's inputs: the voltages of one bus and the currents of one branch end or load.

    Build it with :meth:`at_branch_end` or :meth:`at_load`, which find the bus in the model; the
    plain constructor trusts ``bus_id``.
    """

    name: str
    bus_id: int
    current_at: CurrentAt
    element_id: int
    """Branch id (line, transformer or switch) or load id."""

    @classmethod
    def at_branch_end(
        cls,
        model: GridModel,
        branch_id: int,
        *,
        end: Literal["from", "to"] = "from",
        name: str | None = None,
    ) -> MeasuringPoint:
        """The bus at ``end`` of a line, transformer (from = HV) or switch, and that end's current."""
        if end not in ("from", "to"):
            raise WaveformError(f"branch end must be 'from' or 'to', got {end!r}")
        for table, ends in (
            ("line", ("from_bus", "to_bus")),
            ("transformer", ("hv_bus", "lv_bus")),
            ("switch", ("from_bus", "to_bus")),
        ):
            rows = model.table(table)
            row = int(lookup(rows["id"], [branch_id])[0])
            if row >= 0:
                bus = int(rows[ends[0] if end == "from" else ends[1]][row])
                at = CurrentAt.BRANCH_FROM if end == "from" else CurrentAt.BRANCH_TO
                return cls(name or f"{table} {branch_id} {end}", bus, at, int(branch_id))
        raise WaveformError(f"no line, transformer or switch with id {branch_id} in the model")

    @classmethod
    def at_load(cls, model: GridModel, load_id: int, *, name: str | None = None) -> MeasuringPoint:
        """The bus of a load and the load's current."""
        row = int(lookup(model.load["id"], [load_id])[0])
        if row < 0:
            raise WaveformError(f"no load with id {load_id} in the model")
        bus = int(model.load["bus"][row])
        return cls(name or f"load {load_id}", bus, CurrentAt.LOAD, int(load_id))


@dataclass(frozen=True, slots=True)
class WaveformEvent:
    """Something that happened inside a record: a segment start (its cause) or an arc change."""

    t_ns: int
    cause: str
    """A segment's cause (``fault``, ``trip``, ...), or ``arc_extinction`` / ``arc_restrike``."""


def _check_harmonics(harmonics: Mapping[int, float], what: str) -> None:
    for order, fraction in harmonics.items():
        if not isinstance(order, int) or order < 2:
            raise WaveformError(f"{what}: harmonic order must be an integer >= 2, got {order!r}")
        if not (math.isfinite(fraction) and fraction >= 0.0):
            raise WaveformError(
                f"{what}: harmonic {order} fraction must be finite and >= 0, got {fraction!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveformOptions:
    """What the waveforms carry beyond the fundamental (see the module docstring)."""

    voltage_harmonics: Mapping[int, float] = field(
        default_factory=lambda: dict(DEFAULT_VOLTAGE_HARMONICS)
    )
    """Harmonic order -> amplitude as a fraction of the fundamental, on every voltage."""
    current_harmonics: Mapping[int, float] = field(
        default_factory=lambda: dict(DEFAULT_CURRENT_HARMONICS)
    )
    """Harmonic order -> amplitude as a fraction of the fundamental, on every current."""
    voltage_noise_fraction: float = 0.001
    """Standard deviation of the voltage noise, a fraction of the point's full-scale RMS."""
    current_noise_fraction: float = 0.001
    """Standard deviation of the current noise, a fraction of the point's full-scale RMS."""
    seed: int | None = 0
    """Seed of the noise generator; None draws fresh entropy (records then differ run to run)."""

    def __post_init__(self) -> None:
        _check_harmonics(self.voltage_harmonics, "voltage_harmonics")
        _check_harmonics(self.current_harmonics, "current_harmonics")
        for name in ("voltage_noise_fraction", "current_noise_fraction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise WaveformError(f"{name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, eq=False)
class WaveformRecord:
    """Three-phase samples at one or more measuring points over one window.

    Sample ``k`` is taken at ``start_ns + k * sample_period_ns`` (UTC ns). Channels per point, in
    order: voltages of phases a, b, c (V, phase to ground), then currents a, b, c (A).
    """

    start_ns: int
    sampling_rate_hz: int
    frequency_hz: float
    points: tuple[MeasuringPoint, ...]
    voltage_v: FloatArray
    """Shape (points, 3, samples)."""
    current_a: FloatArray
    """Shape (points, 3, samples)."""
    events: tuple[WaveformEvent, ...]
    """Segment starts and arc changes inside the window, in time order."""

    @property
    def samples(self) -> int:
        return int(self.voltage_v.shape[2])

    @property
    def sample_period_ns(self) -> int:
        return NS_PER_S // self.sampling_rate_hz

    @property
    def end_ns(self) -> int:
        """One sample period after the last sample: the window is ``[start_ns, end_ns)``."""
        return self.start_ns + self.samples * self.sample_period_ns

    @property
    def time_ns(self) -> IntArray:
        """UTC instant of every sample."""
        return self.start_ns + np.arange(self.samples, dtype=np.int64) * self.sample_period_ns

    @property
    def channel_names(self) -> tuple[str, ...]:
        """``"<point> VA"`` ... ``"<point> IC"``, in channel order."""
        return tuple(
            f"{point.name} {quantity}{phase}"
            for point in self.points
            for quantity in ("V", "I")
            for phase in "ABC"
        )

    @property
    def channel_units(self) -> tuple[str, ...]:
        return tuple(unit for _ in self.points for unit in ("V",) * 3 + ("A",) * 3)

    @property
    def trigger_ns(self) -> int:
        """The first event after the first sample (the record's reason), else the first sample."""
        later = [event.t_ns for event in self.events if event.t_ns > self.start_ns]
        return later[0] if later else self.start_ns

    def rms(self, start_ns: int, *, cycles: int = 1) -> tuple[FloatArray, FloatArray]:
        """RMS over ``cycles`` whole cycles from the first sample at or after ``start_ns``.

        Returns (voltage, current), each of shape (points, 3).
        """
        first, count = _cycle_window(self, start_ns, cycles)
        window = slice(first, first + count)
        return (
            rms_over_cycles(self.voltage_v[..., window]),
            rms_over_cycles(self.current_a[..., window]),
        )

    def phasors(self, start_ns: int, *, cycles: int = 1) -> tuple[ComplexArray, ComplexArray]:
        """Fundamental RMS phasors (full-cycle DFT) of ``cycles`` cycles from ``start_ns``.

        Angles are on the absolute time axis of :func:`generate_waveforms`, so they compare
        directly with the :class:`~openfeeder.analysis.phasors.PhasorState` the samples came from.
        Returns (voltage, current), each of shape (points, 3).
        """
        first, count = _cycle_window(self, start_ns, cycles)
        t_ns = self.start_ns + (first + np.arange(count, dtype=np.int64)) * self.sample_period_ns
        theta = theta_at(t_ns, int(t_ns[0]), self.frequency_hz)
        window = slice(first, first + count)
        return (
            fundamental_phasors(self.voltage_v[..., window], theta),
            fundamental_phasors(self.current_a[..., window], theta),
        )


def rms_over_cycles(samples: FloatArray) -> FloatArray:
    """RMS along the last axis; meaningful when that axis spans whole cycles."""
    rms: FloatArray = np.sqrt(np.mean(np.square(samples), axis=-1))
    return rms


def fundamental_phasors(samples: FloatArray, theta_rad: FloatArray) -> ComplexArray:
    """RMS phasor of the fundamental by a DFT over whole cycles.

    ``theta_rad`` is the fundamental's angle at each sample; over whole cycles with whole samples
    per cycle the DFT rejects DC-free harmonics exactly, so the result is the phasor the samples
    were made from.
    """
    rotation = np.exp(-1j * theta_rad)
    result: ComplexArray = (_SQRT2 / samples.shape[-1]) * (samples @ rotation)
    return result


def _cycle_window(record: WaveformRecord, start_ns: int, cycles: int) -> tuple[int, int]:
    """First sample index and sample count of ``cycles`` cycles from ``start_ns``."""
    if cycles < 1:
        raise WaveformError(f"cycles must be >= 1, got {cycles}")
    per_cycles = Fraction(record.sampling_rate_hz) * cycles / Fraction(record.frequency_hz)
    if per_cycles.denominator != 1:
        raise WaveformError(
            f"{cycles} cycles at {record.frequency_hz} Hz are {float(per_cycles):.3f} samples at "
            f"{record.sampling_rate_hz} Hz, not a whole number; use a multiple of "
            f"{per_cycles.denominator} cycles"
        )
    count = int(per_cycles)
    first = max(0, -(-(start_ns - record.start_ns) // record.sample_period_ns))
    if first + count > record.samples:
        raise WaveformError(
            f"{cycles} cycles from {start_ns} ns run past the record's end at {record.end_ns} ns"
        )
    return first, count


def _arc_stand_in(segments: Sequence[StateSegment], index: int, arc: ArcBehaviour) -> ArcStandIn:
    """Check an arc segment and pick what stands for its arc current and gap voltage: the branch
    end whose current changes most on the arc's first phase (it feeds the fault) and the healthy
    voltage of the bus whose voltage changes most (the faulted bus)."""
    segment = segments[index]
    if index == 0:
        raise WaveformError(
            "segment 0 is an arc segment; an arc needs a preceding segment (the state "
            "without the arc) to fall back to while it is out"
        )
    _check_arc(arc, index)
    reference = arc.phases[0]
    before, now = segments[index - 1].state, segment.state
    if before.i_from_a.shape != now.i_from_a.shape or before.u_v.shape != now.u_v.shape:
        raise WaveformError(
            f"arc segment {index} and the segment before it describe different grids "
            "(branch or bus counts differ)"
        )
    fault_parts = np.concatenate(
        [now.i_from_a[:, reference] - before.i_from_a[:, reference],
         now.i_to_a[:, reference] - before.i_to_a[:, reference]]
    )  # fmt: skip
    if fault_parts.size == 0 or np.max(np.abs(fault_parts)) == 0.0:
        raise WaveformError(
            f"arc segment {index} ({segment.cause}) carries no fault current on phase "
            f"{'abc'[reference]}: no branch current differs from the segment before"
        )
    du = np.abs(now.u_v[:, reference] - before.u_v[:, reference])
    return ArcStandIn(
        current_a=complex(fault_parts[np.argmax(np.abs(fault_parts))]),
        recovery_v=complex(before.u_v[int(np.argmax(du)), reference]),
    )


def _check_arc(arc: ArcBehaviour, index: int) -> None:
    where = f"arc of segment {index}"
    if not arc.phases or len(set(arc.phases)) != len(arc.phases):
        raise WaveformError(f"{where}: phases must be distinct and not empty, got {arc.phases}")
    if any(p not in (0, 1, 2) for p in arc.phases):
        raise WaveformError(f"{where}: phases are 0, 1, 2 (a, b, c), got {arc.phases}")
    if not (math.isfinite(arc.burn_cycles) and arc.burn_cycles > 0.0):
        raise WaveformError(f"{where}: burn_cycles must be > 0, got {arc.burn_cycles}")
    if not (math.isfinite(arc.restrike_after_cycles) and arc.restrike_after_cycles >= 0.0):
        raise WaveformError(
            f"{where}: restrike_after_cycles must be >= 0, got {arc.restrike_after_cycles}"
        )
    if not 0.0 < arc.restrike_fraction <= 1.0:
        raise WaveformError(
            f"{where}: restrike_fraction must be in (0, 1], got {arc.restrike_fraction}"
        )
    if not (math.isfinite(arc.arc_voltage_v) and arc.arc_voltage_v >= 0.0):
        raise WaveformError(f"{where}: arc_voltage_v must be >= 0, got {arc.arc_voltage_v}")


def _point_voltages(
    state: PhasorState, index: int, points: Sequence[MeasuringPoint]
) -> ComplexArray:
    try:
        rows = state.bus_rows([p.bus_id for p in points])
    except KeyError as err:
        raise WaveformError(f"segment {index}: {err.args[0]} (a measuring point's bus)") from err
    voltages: ComplexArray = state.u_v[rows]
    return voltages


def _point_currents(
    state: PhasorState, index: int, points: Sequence[MeasuringPoint]
) -> ComplexArray:
    out = np.zeros((len(points), 3), dtype=np.complex128)
    for kind, source, rows_of in (
        (CurrentAt.BRANCH_FROM, state.i_from_a, state.branch_rows),
        (CurrentAt.BRANCH_TO, state.i_to_a, state.branch_rows),
        (CurrentAt.LOAD, state.i_load_a, state.load_rows),
    ):
        chosen = [k for k, p in enumerate(points) if p.current_at == kind]
        if not chosen:
            continue
        try:
            rows = rows_of([points[k].element_id for k in chosen])
        except KeyError as err:
            raise WaveformError(
                f"segment {index}: {err.args[0]} (the current of a measuring point)"
            ) from err
        out[chosen] = source[rows]
    return out


def _check_inputs(
    segments: Sequence[StateSegment], start_ns: int, end_ns: int, sampling_rate_hz: int
) -> None:
    if sampling_rate_hz not in ALLOWED_SAMPLING_RATES_HZ:
        allowed = ", ".join(str(rate) for rate in ALLOWED_SAMPLING_RATES_HZ)
        raise WaveformError(f"sampling rate {sampling_rate_hz} Hz is not one of {allowed} Hz")
    if not segments:
        raise WaveformError("no segments: a waveform needs at least one phasor state")
    if end_ns <= start_ns:
        raise WaveformError(f"window end {end_ns} ns is not after its start {start_ns} ns")
    if start_ns < segments[0].start_ns:
        raise WaveformError(
            f"window starts at {start_ns} ns, before the first segment "
            f"({segments[0].cause}) at {segments[0].start_ns} ns: no state is known there"
        )
    frequency = segments[0].state.frequency_hz
    if not (math.isfinite(frequency) and frequency > 0.0):
        raise WaveformError(f"segment 0 has frequency {frequency} Hz")
    for index in range(1, len(segments)):
        if segments[index].start_ns <= segments[index - 1].start_ns:
            raise WaveformError(
                f"segment {index} ({segments[index].cause}) starts at "
                f"{segments[index].start_ns} ns, not after segment {index - 1} at "
                f"{segments[index - 1].start_ns} ns"
            )
        if segments[index].state.frequency_hz != frequency:
            raise WaveformError(
                f"segment {index} is at {segments[index].state.frequency_hz} Hz, segment 0 at "
                f"{frequency} Hz: one record has one frequency"
            )
    for index, segment in enumerate(segments):
        if segment.transient and not (
            math.isfinite(segment.dc_time_constant_s) and segment.dc_time_constant_s > 0.0
        ):
            raise WaveformError(
                f"segment {index} ({segment.cause}): dc_time_constant_s must be > 0, "
                f"got {segment.dc_time_constant_s}"
            )
    nyquist = sampling_rate_hz / 2.0
    if frequency >= nyquist:
        raise WaveformError(f"{frequency} Hz is above the Nyquist limit of {sampling_rate_hz} Hz")


def generate_waveforms(
    segments: Sequence[StateSegment],
    points: MeasuringPoint | Sequence[MeasuringPoint],
    *,
    start_ns: int,
    end_ns: int,
    sampling_rate_hz: int = 4000,
    options: WaveformOptions | None = None,
) -> WaveformRecord:
    """Voltage and current samples at ``points`` over ``[start_ns, end_ns)`` (UTC ns).

    ``segments`` are in time order; the last one lasts past ``end_ns``. The window must not start
    before the first segment. Errors are :class:`WaveformError` (a ``ValueError``) naming the
    offending segment, point or argument.
    """
    options = options or WaveformOptions()
    point_list = (points,) if isinstance(points, MeasuringPoint) else tuple(points)
    if not point_list:
        raise WaveformError("no measuring points")
    _check_inputs(segments, start_ns, end_ns, sampling_rate_hz)
    frequency = segments[0].state.frequency_hz
    for orders, what in (
        (options.voltage_harmonics, "voltage_harmonics"),
        (options.current_harmonics, "current_harmonics"),
    ):
        too_high = [
            h for h, m in orders.items() if m > 0.0 and h * frequency >= sampling_rate_hz / 2
        ]
        if too_high:
            raise WaveformError(
                f"{what}: harmonic {too_high[0]} ({too_high[0] * frequency:g} Hz) is above the "
                f"Nyquist limit of {sampling_rate_hz} Hz sampling"
            )
    starts = np.array([s.start_ns for s in segments], dtype=np.int64)
    used = int(np.searchsorted(starts, end_ns, side="left"))  # segments starting before end_ns
    window_segments = segments[:used]
    stand_ins = {
        index: _arc_stand_in(segments, index, segment.arc)
        for index, segment in enumerate(window_segments)
        if segment.arc is not None
    }
    signal = SignalModel(
        window_segments,
        np.stack([_point_voltages(s.state, i, point_list) for i, s in enumerate(window_segments)]),
        np.stack([_point_currents(s.state, i, point_list) for i, s in enumerate(window_segments)]),
        stand_ins,
        end_ns=end_ns,
        reference_ns=start_ns,
        voltage_harmonics=tuple(sorted(options.voltage_harmonics.items())),
        current_harmonics=tuple(sorted(options.current_harmonics.items())),
    )

    period_ns = NS_PER_S // sampling_rate_hz
    n_samples = -(-(end_ns - start_ns) // period_ns)
    t_ns = start_ns + np.arange(n_samples, dtype=np.int64) * period_ns
    owner = np.searchsorted(signal.starts, t_ns, side="right") - 1
    voltage = np.empty((len(point_list), 3, n_samples))
    current = np.empty((len(point_list), 3, n_samples))
    for index in np.unique(owner).tolist():
        chosen = slice(*np.flatnonzero(owner == index)[[0, -1]] + np.array([0, 1]))
        voltage[..., chosen] = signal.voltage(index, t_ns[chosen])
        current[..., chosen] = signal.current(index, t_ns[chosen])

    _add_noise(voltage, current, segments, point_list, options)
    events = [
        WaveformEvent(int(s.start_ns), s.cause)
        for s in segments[:used]
        if start_ns <= s.start_ns < end_ns
    ]
    for plan in signal.arcs:
        if plan is None:
            continue
        events += [
            WaveformEvent(int(t), "arc_restrike")
            for t in plan.strikes_ns[1:]
            if start_ns <= t < end_ns
        ]
        events += [
            WaveformEvent(int(t), "arc_extinction") for t in plan.outs_ns if start_ns <= t < end_ns
        ]
    events.sort(key=lambda event: event.t_ns)
    return WaveformRecord(
        start_ns=start_ns,
        sampling_rate_hz=sampling_rate_hz,
        frequency_hz=frequency,
        points=point_list,
        voltage_v=voltage,
        current_a=current,
        events=tuple(events),
    )


def _add_noise(
    voltage: FloatArray,
    current: FloatArray,
    segments: Sequence[StateSegment],
    points: Sequence[MeasuringPoint],
    options: WaveformOptions,
) -> None:
    """Gaussian noise scaled to each point's full scale: the largest fundamental RMS over all
    segments, those outside the window included, so the noise does not depend on the cut."""
    if options.voltage_noise_fraction == 0.0 and options.current_noise_fraction == 0.0:
        return
    v_scale = np.zeros(len(points))
    i_scale = np.zeros(len(points))
    for index, segment in enumerate(segments):
        v_scale = np.maximum(v_scale, np.abs(_point_voltages(segment.state, index, points)).max(1))
        i_scale = np.maximum(i_scale, np.abs(_point_currents(segment.state, index, points)).max(1))
    rng = np.random.default_rng(options.seed)
    noise = rng.standard_normal((2, *voltage.shape))
    voltage += noise[0] * (v_scale * options.voltage_noise_fraction)[:, None, None]
    current += noise[1] * (i_scale * options.current_noise_fraction)[:, None, None]
