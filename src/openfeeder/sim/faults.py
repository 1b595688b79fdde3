"""Fault scenarios of the twin and the protection's answer to them, as a timeline of phasor states.

:func:`fault_timeline` plays one :class:`FaultSpec` (the five scenarios of seed 000, section II.C:
single-phase grounding, phase-to-phase short circuit, line break, arc, compound fault; plus the
three-phase and two-phase-to-ground faults) against the feeder's protection
(:class:`ProtectionSettings`) and returns a :class:`FaultTimeline`: the piecewise-steady
:class:`~openfeeder.sim.segments.StateSegment` list the waveform generator and the virtual devices
read, the switch operations, the fault indicators that latched, and whether the breaker locked out.
Nothing here reads a clock: every instant is an integer nanosecond derived from ``start_ns``.

Protection model
    The feeder-head breaker is the first closed breaker or recloser on the path from the source to
    the faulted line (:mod:`openfeeder.model.topology`). Its relay is definite-time overcurrent:
    it picks up while the largest phase current exceeds ``pickup_a`` (or the residual current
    ``|Ia + Ib + Ic|`` exceeds ``ground_pickup_a``) and trips ``trip_delay_s`` (operate time,
    breaker included) after pickup; the timer runs on across an evolution that keeps it picked up
    and resets when the current falls below pickup. After a trip the breaker recloses after each
    dead time of ``reclose_dead_times_s`` in turn; a trip with no dead time left locks it out. While
    an intermittent arc is extinguished the relay does not reset (its reset time is taken to be
    longer than the few extinguished cycles), so it sees an arc as one continuous fault.

Fault life
    A fault exists from ``start_ns`` for ``duration_s`` (None: permanent). A trip de-energizes it
    but does not remove it: reclosing before the fault's end re-strikes it (a ``reclose`` segment
    with the fault state), reclosing after it restores normal supply. A fault that ends while
    energized (below pickup, or before the relay's delay) gives a ``clear`` segment.

Realism kept on purpose
    * A high-impedance ground fault whose current stays below the pickups does not trip: the
      timeline holds the fault state until the fault ends (or ``end_ns``).
    * An open conductor draws no overcurrent (phase current falls downstream of the break), so it
      does not trip either; its signature is the negative-sequence voltage downstream, exposed per
      bus as :attr:`~openfeeder.analysis.faults.FaultResult.voltage_unbalance` of the segment's
      :attr:`FaultTimeline.fault_results` entry.
    * An arc is a phase-to-ground fault through a non-linear arc: its phasor state uses the
      fundamental-frequency equivalent resistance of a square-wave arc voltage ``arc_voltage_v``
      (:func:`arc_resistance_ohm`) and its segments carry :class:`~openfeeder.sim.segments.ArcBehaviour`
      so the waveforms burn, extinguish and re-strike.
    * A compound fault starts as one kind and evolves into another after ``evolve_after_s``
      (e.g. a ground fault that flashes over to a second phase): an ``evolve`` segment.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.faults import FaultKind, FaultResult, fault_state, locate_on_line
from openfeeder.analysis.phasors import PhasorState
from openfeeder.errors import AnalysisError
from openfeeder.model.components import SwitchKind, enum_code
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import analyze_topology
from openfeeder.sim.segments import ArcBehaviour, StateSegment

__all__ = [
    "FaultScenario",
    "FaultSpec",
    "FaultTimeline",
    "IndicatorLatch",
    "ProtectionSettings",
    "SwitchOperation",
    "arc_resistance_ohm",
    "fault_timeline",
]

_NS_PER_S: Final = 1_000_000_000
_SQUARE_WAVE_FUNDAMENTAL: Final = 4.0 / (math.pi * math.sqrt(2.0))
"""RMS of the fundamental of a square wave of amplitude 1."""


class FaultScenario(StrEnum):
    """What happens on the line: the analysis kinds plus an arc and a fault that evolves."""

    SLG = "slg"
    LL = "ll"
    LLL = "lll"
    LLG = "llg"
    OPEN = "open"
    OPEN_GROUND = "open_ground"
    ARC = "arc"
    COMPOUND = "compound"


_STAGE_KINDS: Final = frozenset(FaultScenario) - {FaultScenario.COMPOUND}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault to inject: where, what, when and for how long."""

    kind: FaultScenario
    line_id: int
    distance_m: float
    """From the line's from bus."""
    start_ns: int
    r_f_ohm: float = 0.0
    """Fault impedance (ground contact for ``open_ground``; in series with the arc for ``arc``)."""
    phase: str | None = None
    """Faulted phases as letters (``"a"``, ``"bc"``); None: a, or b and c for two-phase faults."""
    duration_s: float | None = None
    """How long the fault exists; None: permanent (until repaired)."""
    arc_voltage_v: float = 2000.0
    """Amplitude of the arc's square-wave voltage (about 1.5 to 2 kV per metre of arc in air)."""
    arc_burn_cycles: float = 2.0
    arc_restrike_after_cycles: float = 3.0
    arc_restrike_fraction: float = 0.8
    initial_kind: FaultScenario = FaultScenario.SLG
    """``compound``: the kind it starts as (with ``phase``)."""
    evolve_to: FaultScenario = FaultScenario.LL
    """``compound``: the kind it becomes after ``evolve_after_s`` (with ``evolve_phase``)."""
    evolve_phase: str | None = None
    evolve_r_f_ohm: float = 0.0
    """``compound``: fault impedance after the evolution (a flashover is usually low-ohmic)."""
    evolve_after_s: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FaultScenario(self.kind))
        object.__setattr__(self, "initial_kind", FaultScenario(self.initial_kind))
        object.__setattr__(self, "evolve_to", FaultScenario(self.evolve_to))
        if self.duration_s is not None and not self.duration_s > 0.0:
            raise AnalysisError(f"fault duration_s must be > 0 or None, got {self.duration_s}")
        if self.kind == FaultScenario.COMPOUND:
            if FaultScenario.COMPOUND in (self.initial_kind, self.evolve_to):
                raise AnalysisError("a compound fault evolves between two simple kinds")
            if not self.evolve_after_s > 0.0:
                raise AnalysisError(f"evolve_after_s must be > 0, got {self.evolve_after_s}")
        if self.arc_voltage_v <= 0.0:
            raise AnalysisError(f"arc_voltage_v must be > 0, got {self.arc_voltage_v}")


@dataclass(frozen=True, slots=True)
class ProtectionSettings:
    """Feeder-head overcurrent relay, its reclosing sequence, and the fault-indicator pickups."""

    pickup_a: float = 400.0
    """Phase overcurrent pickup (RMS), above the feeder's largest load current."""
    trip_delay_s: float = 0.3
    """Definite-time operate time from pickup to the breaker's contacts parting."""
    ground_pickup_a: float | None = 60.0
    """Residual (ground) overcurrent pickup; None: no ground element."""
    reclose_dead_times_s: tuple[float, ...] = (0.5, 15.0)
    """Dead time before each reclosing attempt; empty: no reclosing (a trip is final)."""
    fi_pickup_a: float = 300.0
    """Phase current above which a fault indicator latches."""
    fi_ground_pickup_a: float | None = None
    """Residual current above which a fault indicator latches; None: phase pickup only."""


@dataclass(frozen=True, slots=True)
class SwitchOperation:
    t_ns: int
    switch_id: int
    closed: bool
    """Position after the operation."""
    reason: str


@dataclass(frozen=True, slots=True)
class IndicatorLatch:
    """A fault indicator's memory after the timeline."""

    switch_id: int
    latched: bool
    t_ns: int | None
    """Start of the first fault segment in which it picked up."""
    peak_a: float
    """Largest phase current it saw in any fault segment."""


@dataclass(frozen=True, slots=True, eq=False)
class FaultTimeline:
    segments: list[StateSegment]
    fault_results: list[FaultResult | None]
    """Per segment: the fault's :class:`FaultResult` where the fault is energized, else None."""
    operations: list[SwitchOperation]
    fault_indicators: dict[int, IndicatorLatch]
    breaker_id: int
    """The feeder-head breaker or recloser that protects the faulted line."""
    tripped_breaker: int | None
    locked_out: bool


@dataclass(frozen=True, slots=True)
class _Stage:
    start_ns: int
    kind: FaultScenario
    phase: str | None
    r_f_ohm: float


@dataclass(slots=True)
class _Solver:
    """Fault states of the stages, per breaker position, computed once each."""

    model: GridModel
    fault: FaultSpec
    breaker_id: int
    load_p_mw: npt.ArrayLike | None
    load_q_mvar: npt.ArrayLike | None
    cache: dict[tuple[int, bool], FaultResult] = field(default_factory=dict)

    def result(self, stage: _Stage, closed: bool) -> FaultResult:
        key = (stage.start_ns, closed)
        if key not in self.cache:
            model = self.model.with_switch_states({self.breaker_id: closed})
            self.cache[key] = self._solve(model, stage)
        return self.cache[key]

    def _solve(self, model: GridModel, stage: _Stage) -> FaultResult:
        fault, kind, phase = self.fault, stage.kind, stage.phase

        def solve(fault_kind: FaultKind, r_f_ohm: float) -> FaultResult:
            return fault_state(
                model,
                line_id=fault.line_id,
                distance_m=fault.distance_m,
                kind=fault_kind,
                r_f_ohm=r_f_ohm,
                phase=phase,
                load_p_mw=self.load_p_mw,
                load_q_mvar=self.load_q_mvar,
            )

        if kind != FaultScenario.ARC:
            return solve(FaultKind(kind.value), stage.r_f_ohm)
        # the arc's resistance depends on its current: solve the loop once bolted, then with it
        bolted = solve(FaultKind.SINGLE_PHASE_TO_GROUND, 0.0)
        if not bolted.energized:
            return bolted
        r_arc = arc_resistance_ohm(
            e_v=abs(complex(bolted.u_prefault_v[bolted.phases[0]])),
            z_loop_ohm=bolted.loop_impedance_ohm + stage.r_f_ohm,
            arc_voltage_v=fault.arc_voltage_v,
        )
        return solve(FaultKind.SINGLE_PHASE_TO_GROUND, stage.r_f_ohm + r_arc)


def arc_resistance_ohm(*, e_v: float, z_loop_ohm: complex, arc_voltage_v: float) -> float:
    """Fundamental-frequency resistance of an arc in a loop driven by ``e_v`` (RMS).

    The arc voltage is a square wave of amplitude ``arc_voltage_v`` in phase with the current, so
    its fundamental is ``U_arc = 4 / (pi sqrt 2) arc_voltage_v`` (RMS) and the arc acts as
    ``R = U_arc / I`` with ``I = e_v / |z_loop + R|``. Squaring gives a quadratic in R whose positive
    root is returned. An arc voltage at or above the driving voltage cannot be sustained
    (:class:`~openfeeder.errors.AnalysisError`).
    """
    u_arc = _SQUARE_WAVE_FUNDAMENTAL * arc_voltage_v
    if not e_v > u_arc:
        raise AnalysisError(
            f"an arc of {arc_voltage_v:g} V cannot burn on a loop driven by {e_v:.0f} V"
        )
    a, b = z_loop_ohm.real, z_loop_ohm.imag
    qa = e_v**2 - u_arc**2
    qb = -2.0 * u_arc**2 * a
    qc = -(u_arc**2) * (a**2 + b**2)
    return float((-qb + math.sqrt(qb**2 - 4.0 * qa * qc)) / (2.0 * qa))


def fault_timeline(
    model: GridModel,
    fault: FaultSpec,
    protection: ProtectionSettings,
    *,
    load_p_mw: npt.ArrayLike | None = None,
    load_q_mvar: npt.ArrayLike | None = None,
    end_ns: int | None = None,
    prefault_s: float = 0.1,
) -> FaultTimeline:
    """Play ``fault`` against ``protection`` (see the module docstring).

    The first segment (``prefault``) starts ``prefault_s`` before the fault. Without ``end_ns`` the
    timeline runs until the outcome is settled: lockout, normal supply restored, or a fault that
    stays without tripping (its segment is then the last). With ``end_ns`` nothing at or after it
    is included.
    """
    locate_on_line(model, fault.line_id, fault.distance_m)  # unknown line or distance: CaseError
    breaker = _feeder_head(model, fault.line_id)
    solver = _Solver(model, fault, breaker, load_p_mw, load_q_mvar)
    stages = _stages(fault)
    fault_end = None if fault.duration_s is None else fault.start_ns + _ns(fault.duration_s)
    limit = end_ns if end_ns is not None else np.iinfo(np.int64).max
    segments: list[StateSegment] = []
    results: list[FaultResult | None] = []
    operations: list[SwitchOperation] = []
    first = solver.result(stages[0], True)
    row = int(first.state.branch_rows([breaker])[0])

    def add(
        t_ns: int,
        state: PhasorState,
        cause: str,
        result: FaultResult | None,
        *,
        transient: bool = False,
        stage: _Stage | None = None,
    ) -> bool:
        if t_ns >= limit:
            return False
        arc = None
        if stage is not None and stage.kind == FaultScenario.ARC and result is not None:
            arc = ArcBehaviour(
                phases=result.phases,
                arc_voltage_v=fault.arc_voltage_v,
                restrike_fraction=fault.arc_restrike_fraction,
                burn_cycles=fault.arc_burn_cycles,
                restrike_after_cycles=fault.arc_restrike_after_cycles,
            )
        tau = result.dc_time_constant_s if result is not None else 0.0
        segment = StateSegment(start_ns=t_ns, state=state, cause=cause, arc=arc)
        if transient and tau > 0.0:
            segment = dataclasses.replace(segment, transient=True, dc_time_constant_s=tau)
        segments.append(segment)
        results.append(result)
        return True

    add(fault.start_ns - _ns(prefault_s), first.prefault, "prefault", None)
    closed, attempts, locked_out, tripped = True, 0, False, None
    t_ns, cause = fault.start_ns, "fault"
    pickup_ns: int | None = None
    while t_ns < limit:
        present = fault_end is None or t_ns < fault_end
        stage = _stage_at(stages, t_ns)
        if not present:
            result = solver.result(stage, closed)
            add(t_ns, result.prefault, cause if cause == "reclose" else "clear", None)
            break
        result = solver.result(stage, closed)
        energized = result.energized
        add(
            t_ns,
            result.state,
            cause,
            result if energized else None,
            transient=energized,
            stage=stage,
        )
        picked = _picks_up(result.state, row, protection)
        pickup_ns = (pickup_ns if pickup_ns is not None else t_ns) if picked else None
        changes = [s.start_ns for s in stages if s.start_ns > t_ns]
        if fault_end is not None:
            changes.append(fault_end)
        next_change = min(changes) if changes else None
        trip_ns = None if pickup_ns is None else pickup_ns + _ns(protection.trip_delay_s)
        if trip_ns is not None and (next_change is None or trip_ns <= next_change):
            if trip_ns >= limit:
                break
            final = attempts >= len(protection.reclose_dead_times_s)
            reason = (
                "ground overcurrent"
                if _ground_only(result.state, row, protection)
                else ("overcurrent")
            )
            operations.append(
                SwitchOperation(trip_ns, breaker, False, reason + (", lockout" if final else ""))
            )
            tripped, closed, pickup_ns = breaker, False, None
            opened = solver.result(_stage_at(stages, trip_ns), False)
            add(
                trip_ns,
                opened.state if opened.energized else opened.prefault,
                "lockout" if final else "trip",
                opened if opened.energized else None,
            )
            if final:
                locked_out = True
                break
            t_ns = trip_ns + _ns(protection.reclose_dead_times_s[attempts])
            attempts += 1
            if t_ns >= limit:
                break
            operations.append(SwitchOperation(t_ns, breaker, True, f"reclose {attempts}"))
            closed, cause = True, "reclose"
            continue
        if next_change is None:
            break
        t_ns = next_change
        cause = "evolve" if fault_end is None or next_change < fault_end else "clear"
    return FaultTimeline(
        segments=segments,
        fault_results=results,
        operations=operations,
        fault_indicators=_indicators(model, segments, results, protection),
        breaker_id=breaker,
        tripped_breaker=tripped,
        locked_out=locked_out,
    )


def _ns(seconds: float) -> int:
    return round(seconds * _NS_PER_S)


def _stages(fault: FaultSpec) -> list[_Stage]:
    if fault.kind != FaultScenario.COMPOUND:
        return [_Stage(fault.start_ns, fault.kind, fault.phase, fault.r_f_ohm)]
    evolved_ns = fault.start_ns + _ns(fault.evolve_after_s)
    return [
        _Stage(fault.start_ns, fault.initial_kind, fault.phase, fault.r_f_ohm),
        _Stage(evolved_ns, fault.evolve_to, fault.evolve_phase, fault.evolve_r_f_ohm),
    ]


def _stage_at(stages: list[_Stage], t_ns: int) -> _Stage:
    current = stages[0]
    for stage in stages:
        if stage.start_ns <= t_ns:
            current = stage
    return current


def _picks_up(state: PhasorState, row: int, protection: ProtectionSettings) -> bool:
    current = state.i_from_a[row]
    if float(np.abs(current).max()) > protection.pickup_a:
        return True
    ground = protection.ground_pickup_a
    return ground is not None and float(abs(current.sum())) > ground


def _ground_only(state: PhasorState, row: int, protection: ProtectionSettings) -> bool:
    return float(np.abs(state.i_from_a[row]).max()) <= protection.pickup_a


def _feeder_head(model: GridModel, line_id: int) -> int:
    """The first closed breaker or recloser from the source towards the line (its feeder head)."""
    topology = analyze_topology(model)
    row = int(lookup(model.line["id"], np.array([line_id]))[0])
    ends = topology.bus_rows(np.array([model.line["from_bus"][row], model.line["to_bus"][row]]))
    heads = topology.feeder_of_bus[ends]
    heads = heads[heads >= 0]
    if heads.size == 0:
        raise AnalysisError(
            f"line {line_id} is not below a closed breaker or recloser: no protection to simulate"
        )
    head = int(heads[0])
    kind = int(model.switch["kind"][lookup(model.switch["id"], np.array([head]))[0]])
    if kind not in (enum_code(SwitchKind.BREAKER), enum_code(SwitchKind.RECLOSER)):
        raise AnalysisError(f"feeder head {head} of line {line_id} is not a breaker or recloser")
    return head


def _indicators(
    model: GridModel,
    segments: list[StateSegment],
    results: list[FaultResult | None],
    protection: ProtectionSettings,
) -> dict[int, IndicatorLatch]:
    """Latch each fault indicator that saw more than its pickup in a segment with a fault."""
    ids = model.switch["id"][model.switch["fault_indicator"]].astype(np.int64)
    latched = np.zeros(ids.size, dtype=bool)
    when = np.full(ids.size, -1, dtype=np.int64)
    peak = np.zeros(ids.size)
    for segment, result in zip(segments, results, strict=True):
        if result is None or not ids.size:
            continue
        current = segment.state.i_from_a[segment.state.branch_rows(ids)]
        phase_a = np.abs(current).max(axis=1)
        picked = phase_a > protection.fi_pickup_a
        if protection.fi_ground_pickup_a is not None:
            picked |= np.abs(current.sum(axis=1)) > protection.fi_ground_pickup_a
        when = np.where(picked & ~latched, segment.start_ns, when)
        latched |= picked
        peak = np.maximum(peak, phase_a)
    return {
        int(i): IndicatorLatch(int(i), bool(lat), int(t) if lat else None, float(p))
        for i, lat, t, p in zip(
            ids.tolist(), latched.tolist(), when.tolist(), peak.tolist(), strict=True
        )
    }
