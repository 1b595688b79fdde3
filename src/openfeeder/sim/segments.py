"""Piecewise-steady phasor states: how the twin describes what happened around an event.

A fault record is a sequence of :class:`StateSegment`: each starts at an instant and holds the
phasors that apply from then until the next segment starts (pre-fault, fault, after the trip,
after a reclose, ...). The fault timeline (:mod:`openfeeder.sim.faults`) produces them; the waveform
generator (:mod:`openfeeder.sim.waveforms`) turns them into samples, adding what phasors cannot
carry: the decaying DC offset where a segment begins with a sudden change of current, harmonics,
noise, and the extinction and re-strike of an arc.
"""

from __future__ import annotations

from dataclasses import dataclass

from openfeeder.analysis.phasors import PhasorState

__all__ = ["ArcBehaviour", "StateSegment"]


@dataclass(frozen=True, slots=True)
class ArcBehaviour:
    """An intermittent arc in a fault segment: which phases arc and how.

    While the arc burns, the faulted phases carry the segment's fault state and the arc voltage is
    a square wave of ``arc_voltage_v`` in phase with the current (a non-linear resistance). The arc
    goes out at a current zero and strikes again once the recovering voltage across the gap
    exceeds ``restrike_fraction`` of its peak; after ``restrike_after_cycles`` extinguished
    cycles the gap has recovered and the arc strikes again.
    """

    phases: tuple[int, ...]
    """Faulted phases (0 a, 1 b, 2 c)."""
    arc_voltage_v: float
    """Amplitude of the arc's (square-wave) voltage."""
    restrike_fraction: float = 0.8
    burn_cycles: float = 2.0
    """Cycles the arc burns before it goes out at a current zero."""
    restrike_after_cycles: float = 3.0
    """Cycles between extinction and re-strike."""


@dataclass(frozen=True, slots=True)
class StateSegment:
    """The phasors that apply from ``start_ns`` until the next segment starts."""

    start_ns: int
    state: PhasorState
    cause: str
    """What began this segment: ``prefault``, ``fault``, ``evolve``, ``trip``, ``reclose``,
    ``clear``, ``switch``, ..."""
    transient: bool = False
    """The segment starts with a sudden change of current: the waveforms get a decaying DC
    offset (fault inception, reclosing onto a fault)."""
    dc_time_constant_s: float = 0.02
    """Decay time constant of that DC offset: X / (omega R) of the loop that carries it."""
    arc: ArcBehaviour | None = None
    """Set when the segment is an intermittent arc rather than a steady fault."""
