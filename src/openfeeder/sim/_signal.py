"""The signal model behind :mod:`openfeeder.sim.waveforms`: phasor waveforms, DC offsets, arcs.

Private: :func:`~openfeeder.sim.waveforms.generate_waveforms` validates the segments and points,
then asks a :class:`SignalModel` for the samples. The physics, and why it is what it is, is told in
the docstring of :mod:`openfeeder.sim.waveforms`; this module holds the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.sim.clock import NS_PER_S
from openfeeder.sim.segments import ArcBehaviour, StateSegment

__all__ = ["ArcPlan", "ArcStandIn", "Harmonics", "SignalModel", "phasor_waveform", "theta_at"]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.int64]
Harmonics = tuple[tuple[int, float], ...]
"""(order, fraction of the fundamental) pairs."""

_SQRT2: Final = math.sqrt(2.0)
_NEVER: Final = np.iinfo(np.int64).max
_ZERO_SEARCH_STEPS_PER_CYCLE: Final = 512
_ZERO_SEARCH_CYCLES: Final = 20
"""A fully offset arc current crosses zero within a few cycles once its DC part has decayed a
little; an arc current that stays one-sided for 20 cycles burns to the end of its segment."""


@dataclass(frozen=True, slots=True)
class ArcStandIn:
    """What stands for an arc segment's arc: the largest branch fault part and the voltage the
    gap recovers to (the faulted bus's healthy voltage), on the arc's first phase (RMS phasors)."""

    current_a: complex
    recovery_v: complex


def theta_at(t_ns: IntArray, reference_ns: int, frequency_hz: float) -> FloatArray:
    """Fundamental angle 2 pi f t on the absolute axis, for integer times near ``reference_ns``.

    The reference's angle is exact (rational arithmetic); only the integer offsets from it go
    through floating point, where they are small.
    """
    return theta_offset((t_ns - reference_ns).astype(np.float64), reference_ns, frequency_hz)


def theta_offset(offset_ns: FloatArray, reference_ns: int, frequency_hz: float) -> FloatArray:
    """Fundamental angle at ``reference_ns + offset_ns`` (offsets may be fractional ns)."""
    cycles_at_reference = Fraction(reference_ns, NS_PER_S) * Fraction(frequency_hz)
    phase0 = float(cycles_at_reference - math.floor(cycles_at_reference))
    angle: FloatArray = 2.0 * np.pi * (phase0 + frequency_hz * (offset_ns / NS_PER_S))
    return angle


def phasor_waveform(
    phasors: ComplexArray, harmonics: tuple[tuple[int, float], ...], theta: FloatArray
) -> FloatArray:
    """Instantaneous values of phasors (...) plus harmonics at angles theta (N,): (..., N).

    Each order is ``Re(C exp(j h theta))`` with ``C = sqrt2 m |P| exp(j h arg P)``: the cosines
    and sines are taken of the (N,) angles once per order, not of every channel's samples.
    """
    amplitude = _SQRT2 * phasors[..., None]
    out: FloatArray = amplitude.real * np.cos(theta) - amplitude.imag * np.sin(theta)
    for order, fraction in harmonics:
        if fraction > 0.0:
            coefficient = (
                (fraction * _SQRT2) * np.abs(phasors) * np.exp(1j * order * np.angle(phasors))
            )
            out += coefficient.real[..., None] * np.cos(order * theta)
            out -= coefficient.imag[..., None] * np.sin(order * theta)
    return out


@dataclass(frozen=True, slots=True)
class ArcPlan:
    """When one arc segment's arc burns, for the whole grid."""

    strikes_ns: IntArray
    """Start of every burning interval; the first is the segment start."""
    outs_ns: IntArray
    """End of every burning interval (:data:`_NEVER`: burns past the segment end)."""
    proxy: complex
    """Steady fault part of the arc current's stand-in (RMS phasor)."""
    proxy_dc: FloatArray
    """DC offset of the stand-in at each strike (K,)."""
    point_dc: FloatArray
    """DC offset of every point's fault current part at each strike (K, points, 3)."""


class SignalModel:
    """The segments seen from the measuring points, with the offsets and arc plans resolved.

    ``u_v`` and ``i_a`` are the points' phasors per segment, shape (segments, points, 3);
    ``stand_ins`` holds, for every arc segment, what stands for its arc current and gap voltage.
    Inputs are validated by :func:`~openfeeder.sim.waveforms.generate_waveforms`.
    """

    def __init__(
        self,
        segments: Sequence[StateSegment],
        u_v: ComplexArray,
        i_a: ComplexArray,
        stand_ins: Mapping[int, ArcStandIn],
        *,
        end_ns: int,
        reference_ns: int,
        voltage_harmonics: Harmonics,
        current_harmonics: Harmonics,
    ) -> None:
        self.segments = segments
        self.frequency_hz = segments[0].state.frequency_hz
        self.reference_ns = reference_ns
        self.v_harmonics = voltage_harmonics
        self.i_harmonics = current_harmonics
        self.u_v = u_v
        self.i_a = i_a
        self.starts = np.array([s.start_ns for s in segments], dtype=np.int64)
        self.ends = np.append(self.starts[1:], max(end_ns, int(self.starts[-1]) + 1))
        n_points = u_v.shape[1]
        self.dc: list[FloatArray] = []
        self.arcs: list[ArcPlan | None] = []
        for index, segment in enumerate(segments):
            if segment.transient:
                if index == 0:
                    before = np.zeros((n_points, 3))
                else:
                    before = self.current(index - 1, self.starts[index : index + 1])[..., 0]
                now = self.steady_current(index, self.starts[index : index + 1])[..., 0]
                self.dc.append(before - now)
            else:
                self.dc.append(np.zeros((n_points, 3)))
            arc = segment.arc
            self.arcs.append(None if arc is None else self._plan_arc(index, arc, stand_ins[index]))

    def theta(self, t_ns: IntArray) -> FloatArray:
        """Fundamental angle at integer UTC instants."""
        return theta_at(t_ns, self.reference_ns, self.frequency_hz)

    def steady_current(self, index: int, t_ns: IntArray) -> FloatArray:
        """Phasor waveform (fundamental and harmonics) of segment ``index``'s currents."""
        return phasor_waveform(self.i_a[index], self.i_harmonics, self.theta(t_ns))

    def steady_voltage(self, index: int, t_ns: IntArray) -> FloatArray:
        """Phasor waveform (fundamental and harmonics) of segment ``index``'s voltages."""
        return phasor_waveform(self.u_v[index], self.v_harmonics, self.theta(t_ns))

    def _decay(self, index: int, elapsed_ns: IntArray | FloatArray) -> FloatArray:
        """exp(-elapsed / tau) of segment ``index``; elapsed times are small (relative) numbers."""
        tau_s = self.segments[index].dc_time_constant_s
        decay: FloatArray = np.exp(-elapsed_ns.astype(np.float64) / (tau_s * NS_PER_S))
        return decay

    def _burning(self, plan: ArcPlan, t_ns: IntArray) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        strike = np.searchsorted(plan.strikes_ns, t_ns, side="right") - 1
        strike = np.maximum(strike, 0)
        return strike, t_ns < plan.outs_ns[strike]

    def current(self, index: int, t_ns: IntArray) -> FloatArray:
        """Complete current of segment ``index`` at times inside it: (points, 3, N)."""
        segment = self.segments[index]
        steady = self.steady_current(index, t_ns)
        out = steady.copy()
        if segment.transient:
            out += self.dc[index][..., None] * self._decay(index, t_ns - self.starts[index])
        plan = self.arcs[index]
        if plan is not None and segment.arc is not None:
            phases = list(segment.arc.phases)
            healthy = self.steady_current(index - 1, t_ns)[:, phases]
            strike, burning = self._burning(plan, t_ns)
            offsets = np.moveaxis(plan.point_dc[strike][:, :, phases], 0, -1)
            decay = self._decay(index, t_ns - plan.strikes_ns[strike])
            fault_part = steady[:, phases] - healthy + offsets * decay
            out[:, phases] = healthy + np.where(burning, fault_part, 0.0)
        return out

    def voltage(self, index: int, t_ns: IntArray) -> FloatArray:
        """Complete voltage of segment ``index`` at times inside it: (points, 3, N)."""
        segment = self.segments[index]
        out = self.steady_voltage(index, t_ns)
        plan = self.arcs[index]
        if plan is not None and segment.arc is not None:
            phases = list(segment.arc.phases)
            healthy = self.steady_voltage(index - 1, t_ns)[:, phases]
            strike, burning = self._burning(plan, t_ns)
            arc_current = self._proxy_current(index, plan, strike, t_ns)
            arc_v = segment.arc.arc_voltage_v * np.sign(arc_current)
            fault_part = out[:, phases] - healthy + arc_v
            out[:, phases] = healthy + np.where(burning, fault_part, 0.0)
        return out

    def _proxy_current(
        self, index: int, plan: ArcPlan, strike: IntArray, t_ns: IntArray
    ) -> FloatArray:
        """The arc current's stand-in while it burns (its sign sets the arc voltage's)."""
        steady = phasor_waveform(np.array(plan.proxy), (), self.theta(t_ns))
        elapsed = t_ns - plan.strikes_ns[strike]
        result: FloatArray = steady + plan.proxy_dc[strike] * self._decay(index, elapsed)
        return result

    def _plan_arc(self, index: int, arc: ArcBehaviour, stand_in: ArcStandIn) -> ArcPlan:
        """Strike and extinction instants of an arc segment (one loop turn per strike)."""
        segment = self.segments[index]
        proxy, recovery = stand_in.current_a, stand_in.recovery_v
        start, end = int(self.starts[index]), int(self.ends[index])
        period_ns = NS_PER_S / self.frequency_hz
        strikes, outs = [start], []
        while True:
            strike = strikes[-1]
            dc = self._strike_dc(index, proxy, strike)
            out = self._next_zero(index, proxy, dc, strike, strike + arc.burn_cycles * period_ns)
            if out is None or out >= end:
                outs.append(_NEVER)
                break
            outs.append(out)
            ready = out + math.ceil(arc.restrike_after_cycles * period_ns)
            restrike = self._restrike(recovery, ready, arc.restrike_fraction)
            if restrike is None or restrike >= end:
                break
            strikes.append(restrike)
        strikes_ns = np.array(strikes, dtype=np.int64)
        proxy_dc = np.array([self._strike_dc(index, proxy, s) for s in strikes])
        if segment.transient:
            fault_at_strike = self.steady_current(index, strikes_ns) - self.steady_current(
                index - 1, strikes_ns
            )
            point_dc = -np.moveaxis(fault_at_strike, -1, 0)
            point_dc[0] = self.dc[index]  # the first strike is the segment's own inception
        else:
            point_dc = np.zeros((len(strikes), *self.i_a.shape[1:]))
        return ArcPlan(strikes_ns, np.array(outs, dtype=np.int64), proxy, proxy_dc, point_dc)

    def _strike_dc(self, index: int, proxy: complex, strike_ns: int) -> float:
        """Offset that starts the stand-in arc current from zero at a strike (transient only)."""
        if not self.segments[index].transient:
            return 0.0
        steady = phasor_waveform(np.array(proxy), (), self.theta(np.array([strike_ns])))
        return -float(steady[0])

    def _next_zero(
        self, index: int, proxy: complex, dc: float, strike_ns: int, earliest_ns: float
    ) -> int | None:
        """First zero of the stand-in arc current at or after ``earliest_ns`` (ns), or None."""
        period_ns = NS_PER_S / self.frequency_hz
        step_ns = period_ns / _ZERO_SEARCH_STEPS_PER_CYCLE
        offsets: FloatArray = (
            np.arange(_ZERO_SEARCH_STEPS_PER_CYCLE * _ZERO_SEARCH_CYCLES + 1, dtype=np.float64)
            * step_ns
        )
        base = math.ceil(earliest_ns)
        theta = theta_offset(
            (base - self.reference_ns) + offsets, self.reference_ns, self.frequency_hz
        )
        values: FloatArray = phasor_waveform(np.array(proxy), (), theta)
        values += dc * self._decay(index, (base - strike_ns) + offsets)
        crossing = np.flatnonzero((values[:-1] == 0.0) | (values[:-1] * values[1:] < 0.0))
        if crossing.size == 0:
            return None
        k = int(crossing[0])
        before, after = float(values[k]), float(values[k + 1])
        fraction = 0.0 if before == 0.0 else before / (before - after)
        return base + math.ceil(float(offsets[k]) + fraction * step_ns)

    def _restrike(self, recovery: complex, ready_ns: int, fraction: float) -> int | None:
        """First instant from ``ready_ns`` when the recovering voltage reaches ``fraction`` of its
        peak (analytic: |cos x| >= fraction), or None when there is no voltage to restrike."""
        if abs(recovery) == 0.0:
            return None
        x0 = float(self.theta(np.array([ready_ns]))[0]) + float(np.angle(recovery))
        y = x0 % math.pi
        half_width = math.acos(fraction)
        if y <= half_width or y >= math.pi - half_width:
            return ready_ns
        wait_s = (math.pi - half_width - y) / (2.0 * math.pi * self.frequency_hz)
        return ready_ns + math.ceil(wait_s * NS_PER_S)
