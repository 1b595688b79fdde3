"""The digital twin: a scenario's grid stepped through time, with its devices, faults and events.

:class:`Twin` builds everything a scenario names: the grid model, the load / PV / EV profiles, the
placed devices and their instrument model, and the physical state (:class:`SolvedWorld`). Two ways
to run it:

- :meth:`Twin.run_study` (``openfeeder twin run SCENARIO``): as fast as possible on a stepped clock,
  without messaging. Quasi-static steps between events are solved in batches with the engine's
  batch power flow and measured for every device at once; at a fault the protection timeline runs,
  breakers trip and reclose, fault indicators latch, and the waveforms around the event go to
  COMTRADE files. Used for studies, tests and the speed benchmark.
- :meth:`Twin.step_to` driven by :class:`openfeeder.sim.live.LiveTwin`: the same physics on a real
  or accelerated clock, with every device a real device of the IoT infrastructure.

Approximation (stated, not hidden): while a fault that protection did not clear stays in the grid
(a high-impedance fault below pickup, an open conductor), the grid is held in the fault state
computed at the loads of the first step of each batch, and batches are then at most one minute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.faults import fault_state
from openfeeder.analysis.phasors import PhasorSeries, PhasorState, solve_phasors
from openfeeder.model.components import (
    NO_ID,
    BranchEnd,
    CustomerClass,
    DerKind,
    MeasurementKind,
    enum_code,
)
from openfeeder.model.grid import GridModel, lookup
from openfeeder.sim.clock import NS_PER_S, Clock, SteppedClock
from openfeeder.sim.comtrade import write_comtrade
from openfeeder.sim.faults import (
    FaultScenario,
    FaultSpec,
    FaultTimeline,
    ProtectionSettings,
    fault_timeline,
)
from openfeeder.sim.measurements import MeasurementModel, ReadingSeries
from openfeeder.sim.placements import (
    DevicePlacement,
    check_placements,
    default_placements,
    placements_from_case,
)
from openfeeder.sim.profiles import EvSessions, LoadProfiles, PvModel
from openfeeder.sim.scenario import (
    DeviceModeEvent,
    DeviceOutageEvent,
    FaultEvent,
    NetworkEvent,
    Scenario,
    SwitchEvent,
)
from openfeeder.sim.waveforms import MeasuringPoint, WaveformOptions, generate_waveforms
from openfeeder.sim.world import SolvedWorld

__all__ = ["FaultRecord", "StepSummary", "TimelineEntry", "Twin", "TwinRun"]

_LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
_MAX_BATCH_STEPS: Final = 3600
_FAULTED_BATCH_STEPS: Final = 60


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One thing that happened, on the domain clock."""

    t_ns: int
    kind: str
    detail: dict[str, Any]

    def as_dict(self, start_ns: int) -> dict[str, Any]:
        return {
            "t_ns": self.t_ns,
            "t_s": (self.t_ns - start_ns) / NS_PER_S,
            "kind": self.kind,
            **self.detail,
        }


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """What a fault did: its timeline and the files written about it."""

    event_index: int
    timeline: FaultTimeline
    comtrade: tuple[Path, ...]


@dataclass(slots=True)
class StepSummary:
    """Per-step grid indicators of a run (arrays of shape (steps,))."""

    t_ns: list[npt.NDArray[np.int64]] = field(default_factory=list)
    u_min_pu: list[FloatArray] = field(default_factory=list)
    u_max_pu: list[FloatArray] = field(default_factory=list)
    load_p_mw: list[FloatArray] = field(default_factory=list)
    served_mw: list[FloatArray] = field(default_factory=list)

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            name: np.concatenate(getattr(self, name)) if getattr(self, name) else np.zeros(0)
            for name in ("t_ns", "u_min_pu", "u_max_pu", "load_p_mw", "served_mw")
        }


@dataclass(frozen=True, slots=True)
class TwinRun:
    """The outcome of :meth:`Twin.run_study`."""

    scenario: str
    case: str
    buses: int
    devices: int
    steps: int
    simulated_s: float
    wall_s: float
    readings: int
    valid_readings: int
    timeline: tuple[TimelineEntry, ...]
    faults: tuple[FaultRecord, ...]
    summary: dict[str, npt.NDArray[Any]]
    outputs: tuple[Path, ...]

    @property
    def realtime_factor(self) -> float:
        return self.simulated_s / self.wall_s if self.wall_s > 0 else math.inf


class Twin:
    """A scenario's grid, profiles, devices and events (see the module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        model: GridModel | None = None,
        clock: Clock | None = None,
        placements: Sequence[DevicePlacement] | None = None,
    ) -> None:
        spec = scenario.scenario
        self.scenario = scenario
        self.model = model if model is not None else scenario.build_model()
        self.start_ns = spec.start_ns
        self.step_ns = round(spec.step_s * NS_PER_S)
        self.end_ns = self.start_ns + round(spec.duration_s * NS_PER_S)
        self.clock: Clock = clock if clock is not None else SteppedClock(self.start_ns)
        profiles = scenario.profiles
        self.loads = LoadProfiles(
            spec.seed,
            resolution_s=profiles.resolution_s,
            utc_offset_h=profiles.utc_offset_h,
            individuality=profiles.individuality,
        )
        gen = self.model.generator
        self._pv_rows = (
            np.flatnonzero(gen["kind"] == enum_code(DerKind.PV))
            if profiles.pv
            else np.zeros(0, np.int64)
        )
        self.pv = PvModel(
            spec.seed,
            latitude_deg=profiles.latitude_deg,
            longitude_deg=profiles.longitude_deg,
        )
        self._ev_loads = self._pick_ev_loads(profiles.ev_chargers, spec.seed)
        self.ev = EvSessions(spec.seed, len(self._ev_loads)) if len(self._ev_loads) else None
        self.placements = list(placements) if placements is not None else self._placements()
        check_placements(self.model, self.placements)
        self.measurement = MeasurementModel(
            self.placements,
            seed=spec.seed,
            dropout_probability=scenario.devices.dropout_probability,
        )
        p0, q0, g0 = self.operating_points(np.array([self.start_ns], dtype=np.int64))
        self.world = SolvedWorld(
            self.model, self.clock, load_p_mw=p0[0], load_q_mvar=q0[0], generator_p_mw=g0[0]
        )
        self.world.on_switch(self._on_switch)
        self.timeline: list[TimelineEntry] = []
        self._active_fault: FaultSpec | None = None
        self._outages: dict[str, int] = {}
        self._u_phase_nominal_v = self.model.bus["u_rated_kv"] * 1e3 / math.sqrt(3.0)

    # -- inputs ---------------------------------------------------------------------------------

    def operating_points(
        self, t_ns: npt.NDArray[np.int64]
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Loads (P, Q) and generation (P) at each of ``t_ns``: shapes (T, loads), (T, gens)."""
        load = self.model.load
        multipliers = self.loads.multipliers(load["customer_class"], t_ns)
        load_p = multipliers * load["p_mw"]
        ratio = np.divide(
            load["q_mvar"], load["p_mw"], out=np.zeros(load.size), where=load["p_mw"] != 0
        )
        load_q = load_p * ratio
        if self.ev is not None:
            ev_mw = self.ev.power_mw(t_ns)
            for column, row in enumerate(self._ev_loads.tolist()):  # a few chargers per load
                load_p[:, row] += ev_mw[:, column]
        gen = self.model.generator
        gen_p = np.broadcast_to(gen["p_mw"], (t_ns.size, gen.size)).copy()
        if self._pv_rows.size:
            rating = np.where(
                np.isfinite(gen["p_max_mw"][self._pv_rows]),
                gen["p_max_mw"][self._pv_rows],
                gen["p_mw"][self._pv_rows],
            )
            gen_p[:, self._pv_rows] = self.pv.output_pu(t_ns, n_sites=self._pv_rows.size) * rating
        return load_p, load_q, gen_p

    def _pick_ev_loads(self, chargers: int, seed: int) -> npt.NDArray[np.int64]:
        if chargers == 0:
            return np.zeros(0, dtype=np.int64)
        load = self.model.load
        residential = np.flatnonzero(load["customer_class"] == enum_code(CustomerClass.RESIDENTIAL))
        candidates = residential if residential.size else np.arange(load.size)
        if candidates.size == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng((seed, 0xE5))
        return np.sort(rng.choice(candidates, size=chargers, replace=True)).astype(np.int64)

    def _placements(self) -> list[DevicePlacement]:
        devices = self.scenario.devices
        if devices.placement == "none":
            placed: list[DevicePlacement] = []
        elif devices.placement == "case":
            placed = placements_from_case(self.model)
        else:
            placed = default_placements(
                self.model, meters=devices.meters, ftus=devices.ftus, pmus=devices.pmus
            )
        for extra in devices.extra:
            placed.append(
                DevicePlacement(
                    device_id=extra.id,
                    kind=MeasurementKind(extra.kind),
                    bus_id=extra.bus,
                    element_id=NO_ID if extra.element is None else extra.element,
                    element_end=BranchEnd(extra.end),
                    accuracy_class=math.nan
                    if extra.accuracy_class is None
                    else extra.accuracy_class,
                )
            )
        return placed

    # -- study run ------------------------------------------------------------------------------

    def run_study(
        self,
        *,
        output_dir: Path | None = None,
        write_measurements: bool = False,
        progress: Callable[[float, int], None] | None = None,
    ) -> TwinRun:
        """Run the whole scenario as fast as possible (see the module docstring)."""
        wall_start = time.perf_counter()
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
        spec = self.scenario.scenario
        events = sorted(enumerate(self.scenario.events), key=lambda item: item[1].at_s)
        event_times = [self.start_ns + round(e.at_s * NS_PER_S) for _, e in events]
        step_times = self.start_ns + self.step_ns * np.arange(spec.steps, dtype=np.int64)
        summary = StepSummary()
        measured: list[ReadingSeries] = []
        readings = valid = 0
        faults: list[FaultRecord] = []
        next_event = 0
        k = 0
        while k < step_times.size:
            while next_event < len(events) and event_times[next_event] <= step_times[k]:
                index, event = events[next_event]
                record = self._apply_event(index, event, event_times[next_event], output_dir)
                if record is not None:
                    faults.append(record)
                next_event += 1
            limit = _FAULTED_BATCH_STEPS if self._active_fault is not None else _MAX_BATCH_STEPS
            stop = k + limit
            if next_event < len(events):
                stop = min(
                    stop, int(np.searchsorted(step_times, event_times[next_event], side="left"))
                )
            stop = max(min(stop, step_times.size), k + 1)
            times = step_times[k:stop]
            series = self._solve_batch(times)
            self._advance_clock(int(times[-1]))
            batch = self.measurement.measure_series(series, times)
            valid_mask = self._apply_outages(batch, times)
            if valid_mask is not batch.valid:
                batch = _silence(batch, valid_mask)
            readings += int(valid_mask.size)
            valid += int(valid_mask.sum())
            if write_measurements:
                measured.append(batch)
            self._summarize(series, times, summary)
            k = stop
            if progress is not None:
                progress(k / step_times.size, int(times[-1]))
        while next_event < len(events):  # events at the very end of the scenario
            index, event = events[next_event]
            record = self._apply_event(index, event, event_times[next_event], output_dir)
            if record is not None:
                faults.append(record)
            next_event += 1
        wall_s = time.perf_counter() - wall_start
        self.timeline.sort(key=lambda entry: entry.t_ns)
        arrays = summary.arrays()
        outputs: list[Path] = []
        if output_dir is not None:
            outputs += self._write_outputs(output_dir, arrays, faults, measured, wall_s)
        return TwinRun(
            scenario=spec.name,
            case=spec.case or f"synthetic {spec.synthetic}",
            buses=int(self.model.bus.size),
            devices=len(self.placements),
            steps=int(step_times.size),
            simulated_s=spec.duration_s,
            wall_s=wall_s,
            readings=readings,
            valid_readings=valid,
            timeline=tuple(self.timeline),
            faults=tuple(faults),
            summary=arrays,
            outputs=tuple(outputs),
        )

    def _solve_batch(self, times: npt.NDArray[np.int64]) -> PhasorSeries:
        load_p, load_q, gen_p = self.operating_points(times)
        model = self.world.model
        if self._active_fault is not None:
            if self._fault_energized():
                self.world.set_operating_point(load_p[0], load_q[0], gen_p[0])
                held = self._fault_now(model, load_p[0], load_q[0])
                self.world.impose(held)
                return _repeat(held, times.size)
            self._active_fault = None  # isolated: the rest of the grid runs on
        self.world.impose(None)
        series = solve_phasors(
            model,
            load_p_mw=load_p,
            load_q_mvar=load_q,
            generator_p_mw=gen_p if model.generator.size else None,
        )
        self.world.set_operating_point(
            load_p[-1], load_q[-1], gen_p[-1], state=series.state(series.steps - 1)
        )
        return series

    def _advance_clock(self, t_ns: int) -> None:
        if isinstance(self.clock, SteppedClock) and t_ns > self.clock.now_ns():
            self.clock.advance_to(t_ns)

    def _apply_outages(
        self, batch: ReadingSeries, times: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Readings of devices in an outage are lost (study mode: the device is silent)."""
        valid = batch.valid
        if self._outages:
            rows = self.measurement.index(list(self._outages))
            until = np.array(list(self._outages.values()), dtype=np.int64)
            silent = times[:, None] < until[None, :]
            valid = valid.copy()
            valid[:, rows] &= ~silent
            self._outages = {d: u for d, u in self._outages.items() if u > times[-1]}
        return valid

    def _summarize(
        self, series: PhasorSeries, times: npt.NDArray[np.int64], summary: StepSummary
    ) -> None:
        u_pu = np.abs(series.u_v) / self._u_phase_nominal_v[None, :, None]
        live = u_pu.max(axis=2) > 0.0
        u_min = np.where(live, u_pu.min(axis=2), np.inf).min(axis=1)
        u_max = np.where(live, u_pu.max(axis=2), 0.0).max(axis=1)
        s_load = np.einsum(
            "tlp,tlp->t", _bus_voltage_at_loads(series, self.model), np.conj(series.i_load_a)
        )
        load_p, _, _ = self.operating_points(times)
        summary.t_ns.append(times.copy())
        summary.u_min_pu.append(np.where(np.isfinite(u_min), u_min, 0.0))
        summary.u_max_pu.append(u_max)
        summary.load_p_mw.append(load_p.sum(axis=1))
        summary.served_mw.append(s_load.real / 1e6)

    # -- events ---------------------------------------------------------------------------------

    def _apply_event(
        self, index: int, event: Any, t_ns: int, output_dir: Path | None
    ) -> FaultRecord | None:
        self._advance_clock(t_ns)
        if isinstance(event, SwitchEvent):
            self.world.operate_switch(event.switch, event.action == "close")
            self._record(
                t_ns, "switch_operated", switch=event.switch, action=event.action, by="scenario"
            )
            return None
        if isinstance(event, DeviceOutageEvent):
            self.measurement.index([event.device])
            self._outages[event.device] = t_ns + round(event.duration_s * NS_PER_S)
            self._record(t_ns, "device_outage", device=event.device, duration_s=event.duration_s)
            return None
        if isinstance(event, DeviceModeEvent):
            self._record(
                t_ns,
                "device_mode",
                device=event.device,
                mode=event.mode,
                note="acts on live devices only",
            )
            return None
        if isinstance(event, NetworkEvent):
            self._record(
                t_ns,
                "network",
                **event.model_dump(exclude={"type", "at_s"}, exclude_none=True),
                note="acts on the emulated network of a live run only",
            )
            return None
        if isinstance(event, FaultEvent):
            return self._fault(index, event, t_ns, output_dir)
        raise TypeError(f"unknown event {event!r}")

    def fault_spec(self, event: FaultEvent, t_ns: int) -> FaultSpec:
        """The fault of a scenario event, starting at ``t_ns``."""
        compound = event.kind == "compound"
        return FaultSpec(
            kind=FaultScenario(event.kind),
            line_id=event.line,
            distance_m=event.distance_m,
            start_ns=t_ns,
            r_f_ohm=event.r_f_ohm,
            phase=event.phase,
            duration_s=event.duration_s,
            initial_kind=FaultScenario.SLG,
            evolve_to=FaultScenario(event.evolve_to)
            if compound and event.evolve_to
            else FaultScenario.LL,
            evolve_after_s=event.evolve_after_s,
        )

    def protection_settings(self) -> ProtectionSettings:
        """The scenario's protection; unset values keep :class:`ProtectionSettings` defaults."""
        p = self.scenario.protection
        given: dict[str, Any] = {
            "trip_delay_s": p.trip_delay_s,
            "reclose_dead_times_s": tuple(p.reclose_s),
        }
        if p.pickup_a is not None:
            given["pickup_a"] = p.pickup_a
        if p.ground_pickup_a is not None:
            given["ground_pickup_a"] = p.ground_pickup_a
        if p.fault_indicator_pickup_a is not None:
            given["fi_pickup_a"] = p.fault_indicator_pickup_a
        return ProtectionSettings(**given)

    def _fault(
        self, index: int, event: FaultEvent, t_ns: int, output_dir: Path | None
    ) -> FaultRecord:
        spec = self.fault_spec(event, t_ns)
        load_p, load_q, _ = self.world.operating_point()
        model = self.world.model
        timeline = fault_timeline(
            model, spec, self.protection_settings(), load_p_mw=load_p, load_q_mvar=load_q
        )
        self._record(
            t_ns,
            "fault",
            event=index,
            fault_kind=event.kind,
            line=event.line,
            distance_m=event.distance_m,
            r_f_ohm=event.r_f_ohm,
        )
        for operation in timeline.operations:
            self._advance_clock(operation.t_ns)
            self.world.operate_switch(operation.switch_id, operation.closed)
            self._record(
                operation.t_ns,
                "protection",
                switch=operation.switch_id,
                action="close" if operation.closed else "open",
                reason=operation.reason,
            )
        latched = [s for s, flag in timeline.fault_indicators.items() if flag.latched]
        self.world.latch_fault_indicators(latched)
        if latched:
            self._record(t_ns, "fault_indicators", switches=sorted(latched))
        if timeline.locked_out:
            self._record(timeline.segments[-1].start_ns, "lockout", switch=timeline.tripped_breaker)
        permanent = event.duration_s is None
        self._active_fault = spec if permanent else None
        paths: tuple[Path, ...] = ()
        if output_dir is not None and self.scenario.waveforms.comtrade != "none":
            paths = self._write_comtrade(index, timeline, output_dir)
        return FaultRecord(event_index=index, timeline=timeline, comtrade=paths)

    def _fault_energized(self) -> bool:
        """Whether the active fault's line still has voltage (not isolated by a switch)."""
        fault = self._active_fault
        if fault is None:
            return False
        line = self.model.line
        row = int(np.flatnonzero(line["id"] == fault.line_id)[0])
        state = self.world.solved()
        rows = state.bus_rows([int(line["from_bus"][row]), int(line["to_bus"][row])])
        return bool(np.abs(state.u_v[rows]).max() > 0.0)

    def _fault_now(self, model: GridModel, load_p: FloatArray, load_q: FloatArray) -> PhasorState:
        """The state of the grid with the active fault in it (its final kind, for an evolving one)."""
        fault = self._active_fault
        assert fault is not None
        kind: str = fault.kind
        phase = fault.phase
        r_f_ohm = fault.r_f_ohm
        if fault.kind == FaultScenario.COMPOUND:
            kind, phase, r_f_ohm = fault.evolve_to, fault.evolve_phase, fault.evolve_r_f_ohm
        elif fault.kind == FaultScenario.ARC:
            kind = "slg"
        return fault_state(
            model,
            line_id=fault.line_id,
            distance_m=fault.distance_m,
            kind=kind,
            r_f_ohm=r_f_ohm,
            phase=phase,
            load_p_mw=load_p,
            load_q_mvar=load_q,
        ).state

    def _on_switch(self, switch_id: int, closed: bool) -> None:
        _LOG.debug("switch %d %s", switch_id, "closed" if closed else "opened")

    def _record(self, t_ns: int, kind: str, **detail: Any) -> None:
        entry = TimelineEntry(t_ns=t_ns, kind=kind, detail=detail)
        self.timeline.append(entry)
        _LOG.info(
            "twin: %s",
            kind,
            extra={"t_ns": t_ns, "event": kind, **{f"ev_{k}": v for k, v in detail.items()}},
        )

    # -- outputs --------------------------------------------------------------------------------

    def _write_comtrade(
        self, index: int, timeline: FaultTimeline, output_dir: Path
    ) -> tuple[Path, ...]:
        wave = self.scenario.waveforms
        first = timeline.segments[0].start_ns
        fault_start = next((s.start_ns for s in timeline.segments if s.cause != "prefault"), first)
        last = timeline.segments[-1].start_ns
        start_ns = max(first, fault_start - round(wave.pre_s * NS_PER_S))
        end_ns = last + round(wave.post_s * NS_PER_S)
        head = (
            timeline.tripped_breaker
            if timeline.tripped_breaker is not None
            else timeline.breaker_id
        )
        watched = [head]
        watched += [
            s
            for s, flag in sorted(timeline.fault_indicators.items())
            if flag.latched and s not in watched
        ]
        points = [
            MeasuringPoint.at_branch_end(self.model, switch_id, name=f"sw{switch_id}")
            for switch_id in watched[:8]
        ]
        record = generate_waveforms(
            timeline.segments,
            points,
            start_ns=start_ns,
            end_ns=end_ns,
            sampling_rate_hz=wave.sampling_rate_hz,
            options=WaveformOptions(seed=self.scenario.scenario.seed + index),
        )
        cfg, dat = write_comtrade(
            record,
            output_dir,
            f"fault{index:02d}",
            data_format="ASCII" if wave.comtrade == "ascii" else "BINARY",
            revision=wave.revision,
            station_name=self.scenario.scenario.name,
            device_id="openfeeder-twin",
            trigger_ns=fault_start,
        )
        return (cfg, dat)

    def _write_outputs(
        self,
        output_dir: Path,
        arrays: dict[str, npt.NDArray[Any]],
        faults: list[FaultRecord],
        measured: list[ReadingSeries],
        wall_s: float,
    ) -> list[Path]:
        spec = self.scenario.scenario
        timeline_path = output_dir / "timeline.json"
        timeline_path.write_text(
            json.dumps(
                [e.as_dict(self.start_ns) for e in self.timeline], indent=2, default=_json_default
            )
            + "\n",
            encoding="utf-8",
        )
        summary_path = output_dir / "summary.json"
        summary_path.write_text(
            json.dumps(
                {
                    "scenario": spec.name,
                    "source": self.scenario.source,
                    "seed": spec.seed,
                    "buses": int(self.model.bus.size),
                    "devices": len(self.placements),
                    "steps": int(arrays["t_ns"].size),
                    "simulated_s": spec.duration_s,
                    "wall_s": wall_s,
                    "faults": [
                        {
                            "event": f.event_index,
                            "tripped_breaker": f.timeline.tripped_breaker,
                            "locked_out": f.timeline.locked_out,
                            "comtrade": [p.name for p in f.comtrade],
                        }
                        for f in faults
                    ],
                    "u_min_pu": float(arrays["u_min_pu"].min())
                    if arrays["u_min_pu"].size
                    else None,
                    "u_max_pu": float(arrays["u_max_pu"].max())
                    if arrays["u_max_pu"].size
                    else None,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        written = [timeline_path, summary_path]
        steps_path = output_dir / "steps.npz"
        np.savez_compressed(steps_path, allow_pickle=False, **arrays)
        written.append(steps_path)
        if measured:
            path = output_dir / "measurements.npz"
            np.savez_compressed(
                path,
                device_id=np.array(measured[0].device_id),
                t_true_ns=np.concatenate([m.t_true_ns for m in measured]),
                t_ns=np.concatenate([m.t_ns for m in measured]),
                u_v=np.concatenate([m.u_v for m in measured]),
                i_a=np.concatenate([m.i_a for m in measured]),
                p_w=np.concatenate([m.p_w for m in measured]),
                q_var=np.concatenate([m.q_var for m in measured]),
                frequency_hz=np.concatenate([m.frequency_hz for m in measured]),
                valid=np.concatenate([m.valid for m in measured]),
                u_true_v=np.concatenate([m.u_true_v for m in measured]),
                i_true_a=np.concatenate([m.i_true_a for m in measured]),
            )
            written.append(path)
        for record in faults:
            written += list(record.comtrade)
        return written


def _silence(batch: ReadingSeries, valid: npt.NDArray[np.bool_]) -> ReadingSeries:
    """The readings with those of silent devices lost (NaN, not valid)."""
    lost = ~valid
    complex_lost = lost[..., None]
    return dataclasses.replace(
        batch,
        valid=valid,
        u_v=np.where(complex_lost, np.nan, batch.u_v),
        i_a=np.where(complex_lost, np.nan, batch.i_a),
        p_w=np.where(complex_lost, np.nan, batch.p_w),
        q_var=np.where(complex_lost, np.nan, batch.q_var),
        frequency_hz=np.where(lost, np.nan, batch.frequency_hz),
    )


def _repeat(state: PhasorState, steps: int) -> PhasorSeries:
    return PhasorSeries(
        bus_id=state.bus_id,
        u_v=np.broadcast_to(state.u_v, (steps, *state.u_v.shape)),
        branch_id=state.branch_id,
        i_from_a=np.broadcast_to(state.i_from_a, (steps, *state.i_from_a.shape)),
        i_to_a=np.broadcast_to(state.i_to_a, (steps, *state.i_to_a.shape)),
        load_id=state.load_id,
        i_load_a=np.broadcast_to(state.i_load_a, (steps, *state.i_load_a.shape)),
        frequency_hz=state.frequency_hz,
    )


def _bus_voltage_at_loads(series: PhasorSeries, model: GridModel) -> npt.NDArray[np.complex128]:
    return series.u_v[:, lookup(series.bus_id, model.load["bus"])]


def _json_default(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
