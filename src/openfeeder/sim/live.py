"""The twin with the platform: the scenario's grid on a real or accelerated clock, every device a
real device of the IoT infrastructure.

:class:`LiveTwin` takes a :class:`~openfeeder.sim.twin.Twin` and

- makes one device per placement: meters and PMUs are :class:`MeterAgent`\\ s whose data source is
  a :class:`TwinSource`; FTUs at remote-controllable switches are :class:`VirtualSwitch`\\ es (the
  same agent with a command handler driving the switch); each boots against the device catalog,
  publishes with sequence numbers, buffers while offline and runs the algorithms the catalog
  assigns, exactly as the field devices of seed 003;
- runs a **stepper** thread that follows the domain clock: every ``step_s`` it sets the operating
  point of that instant (profiles -> one three-phase power flow); at each scenario event it acts:
  a fault plays its protection timeline in domain time (worked out a second ahead, so that the
  calculation's run time does not delay the trip) (segment states imposed at their instants,
  breaker trips and recloses, fault indicators latched), a switch event operates the switch, a
  device outage powers the device off and on again, a device mode makes a switch slow or stuck, a
  network event changes the emulated network (when there is one);
- reports its **lag**: how far behind the domain clock the stepper is (a twin that cannot keep up
  shows it here, never silently).

The devices of a live twin run on one :class:`~openfeeder.iot.agent.hosting.AgentHost` (one thread
for all their loops and broker connections, instead of four threads per device), and their sources
share one :class:`~openfeeder.sim.sources.TwinSampler`, so the devices that tick at the same
instant are measured in one array operation. Each is still a device of its own: own client ids
and sessions, buffer, settings, plug-ins, commands.

While a fault that protection did not clear stays in the grid, the grid is held in the fault's
state; when a switch operation (by protection, a coordinator, an operator) de-energizes the faulted
line, the fault stops being imposed and the power flow takes over again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from openfeeder.config import Settings
from openfeeder.iot.agent.hosting import AgentHost
from openfeeder.iot.agent.runtime import AgentStats, MeterAgent, SettingsSource
from openfeeder.iot.device_settings import Location
from openfeeder.model.components import MeasurementKind, SwitchKind, enum_from_code
from openfeeder.sim.clock import NS_PER_S
from openfeeder.sim.devices import OPERATING_TIME_S, SwitchMode, VirtualSwitch
from openfeeder.sim.faults import FaultSpec, FaultTimeline, fault_timeline
from openfeeder.sim.netem import Impairment, NetworkEmulator
from openfeeder.sim.placements import DevicePlacement
from openfeeder.sim.scenario import (
    DeviceModeEvent,
    DeviceOutageEvent,
    FaultEvent,
    NetworkEvent,
    SwitchEvent,
)
from openfeeder.sim.sources import TwinSampler
from openfeeder.sim.twin import TimelineEntry, Twin

__all__ = ["LiveStats", "LiveTwin"]

_LOG = logging.getLogger(__name__)
_MAX_WAIT_S: Final = 0.2
_PREPARE_LEAD_NS: Final = 1_000_000_000
"""A fault's protection timeline is worked out this long (domain) before the fault."""


@dataclass(frozen=True, slots=True)
class LiveStats:
    """A snapshot of a live twin."""

    t_ns: int
    steps: int
    lag_s: float
    """How far the stepper is behind the domain clock now (0 when it keeps up)."""
    max_lag_s: float
    devices: int
    running: int
    produced: int
    published: int
    buffered: int


Device = MeterAgent | VirtualSwitch


class LiveTwin:
    """See the module docstring. ``start`` returns at once; ``stop`` shuts everything down."""

    def __init__(
        self,
        twin: Twin,
        settings: Settings,
        *,
        catalog: SettingsSource,
        netem: NetworkEmulator | None = None,
        case_name: str | None = None,
        on_timeline: Callable[[TimelineEntry], None] | None = None,
        hosted: Callable[[int, DevicePlacement], bool] | None = None,
    ) -> None:
        """``hosted(index, placement)`` picks the devices this process runs (default: all); a grid
        of thousands of devices is spread over processes that each run the same deterministic twin
        (same scenario, seed and clock) and host a share of the devices."""
        self.twin = twin
        self.world = twin.world
        self.clock = twin.clock
        self._settings = settings
        self._catalog = catalog
        self.netem = netem
        self._case_name = case_name
        self._on_timeline = on_timeline
        self._hosted = hosted
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._devices: dict[str, Device] = {}
        self._agenda: list[tuple[int, int, str, Any]] = []
        self._order = itertools.count()
        self._injected = itertools.count()
        self._thread = threading.Thread(target=self._run, name="twin-stepper", daemon=True)
        self._steps = 0
        self._lag_s = 0.0
        self._max_lag_s = 0.0
        self._fault: FaultSpec | None = None
        self._prepared: dict[tuple[int, int], tuple[FaultSpec, FaultTimeline]] = {}
        self._fault_dirty = False
        self.host = AgentHost(name="twin-devices")
        self._sampler = TwinSampler(self.world, twin.measurement)
        self.world.on_switch(self._on_switch)

    # -- devices --------------------------------------------------------------------------------

    def _location(self, placement: DevicePlacement) -> Location:
        element = placement.element_id if placement.element_id >= 0 else None
        return Location(case=self._case_name, bus_id=placement.bus_id, element_id=element)

    def _make_device(self, placement: DevicePlacement) -> Device:
        source = self._sampler.source(placement.device_id)
        switch = self.twin.model.switch
        rows = np.flatnonzero(switch["id"] == placement.element_id)
        if (
            placement.kind is MeasurementKind.FTU
            and rows.size
            and switch["remote_controllable"][rows[0]]
        ):
            row = int(rows[0])
            kind = SwitchKind(str(enum_from_code(SwitchKind, switch["kind"][row : row + 1])[0]))
            return VirtualSwitch(
                self._settings,
                world=self.world,
                switch_id=int(switch["id"][row]),
                catalog=self._catalog,
                operating_time_s=(
                    OPERATING_TIME_S.get(kind, 1.0)
                    if self.twin.scenario.devices.switch_operating_time_s is None
                    else self.twin.scenario.devices.switch_operating_time_s
                ),
                fault_indicator=bool(switch["fault_indicator"][row]),
                device_id=placement.device_id,
                source=source,
                location=self._location(placement),
                host=self.host,
            )
        return MeterAgent(
            self._settings,
            device_id=placement.device_id,
            source=source,
            catalog=self._catalog,
            location=self._location(placement),
            device_type=placement.kind.value,
            clock=self.clock,
            host=self.host,
        )

    @property
    def devices(self) -> dict[str, Device]:
        with self._lock:
            return dict(self._devices)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every device and the stepper (devices boot in the background)."""
        self.host.start()
        for index, placement in enumerate(self.twin.placements):
            if self._hosted is not None and not self._hosted(index, placement):
                continue
            device = self._make_device(placement)
            self._devices[placement.device_id] = device
            device.start()
        start = self.clock.now_ns()
        for index, event in enumerate(self.twin.scenario.events):
            self._schedule_event(self.twin.start_ns + round(event.at_s * NS_PER_S), index, event)
        self._next_step_ns = max(start, self.twin.start_ns)
        self._thread.start()

    def wait_running(self, timeout_s: float) -> bool:
        """True once every device is configured and measuring."""
        deadline = time.monotonic() + timeout_s
        return all(
            device.wait_running(max(0.0, deadline - time.monotonic()))
            for device in self.devices.values()
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        devices = list(self.devices.values())
        if devices:  # several at a time: each waits for its shutdown status's PUBACK
            with ThreadPoolExecutor(max_workers=min(64, len(devices))) as pool:
                list(pool.map(lambda device: device.stop(timeout_s), devices))
        self.host.stop()

    def inject(
        self,
        event: FaultEvent | SwitchEvent | DeviceOutageEvent | DeviceModeEvent | NetworkEvent,
        *,
        after_s: float = 0.0,
    ) -> int:
        """Add ``event`` (a fault, a switch operation, ...) ``after_s`` domain seconds from now, as
        if the scenario had it; its ``at_s`` is ignored. Returns the domain instant (ns)."""
        t_ns = self.clock.now_ns() + round(after_s * NS_PER_S)
        index = len(self.twin.scenario.events) + next(self._injected)
        self._schedule_event(t_ns, index, event)
        return t_ns

    def _schedule_event(self, t_ns: int, index: int, event: Any) -> None:
        """The event at ``t_ns``; a fault's protection timeline is worked out ahead of it (a
        fault calculation takes longer than a relay, and the trip must come on time)."""
        if isinstance(event, FaultEvent):
            self._schedule(
                max(self.clock.now_ns(), t_ns - _PREPARE_LEAD_NS), "prepare", (index, event, t_ns)
            )
        self._schedule(t_ns, "event", (index, event))

    def stats(self) -> LiveStats:
        agents: list[AgentStats] = []
        for device in self.devices.values():
            agent = device.agent if isinstance(device, VirtualSwitch) else device
            agents.append(agent.stats())
        return LiveStats(
            t_ns=self.clock.now_ns(),
            steps=self._steps,
            lag_s=self._lag_s,
            max_lag_s=self._max_lag_s,
            devices=len(agents),
            running=sum(1 for a in agents if a.state.value == "running"),
            produced=sum(a.produced for a in agents),
            published=sum(a.published for a in agents),
            buffered=sum(a.buffered for a in agents),
        )

    # -- stepper --------------------------------------------------------------------------------

    def _schedule(self, t_ns: int, kind: str, payload: Any) -> None:
        with self._lock:
            heapq.heappush(self._agenda, (t_ns, next(self._order), kind, payload))

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                next_agenda = self._agenda[0][0] if self._agenda else None
            due = (
                self._next_step_ns if next_agenda is None else min(self._next_step_ns, next_agenda)
            )
            if due > self.twin.end_ns and next_agenda is None:
                self._stop.wait(_MAX_WAIT_S)
                continue
            if not self.clock.sleep_until(due, self._stop):
                return
            lag = (self.clock.now_ns() - due) / NS_PER_S
            self._lag_s = max(0.0, lag)
            self._max_lag_s = max(self._max_lag_s, self._lag_s)
            try:
                self._due(due)
            except Exception:  # the twin keeps running; the error is logged with its traceback
                _LOG.exception("twin stepper failed at t_ns=%d", due)

    def _due(self, due: int) -> None:
        while True:
            with self._lock:
                if not self._agenda or self._agenda[0][0] > due:
                    break
                t_ns, _, kind, payload = heapq.heappop(self._agenda)
            self._act(t_ns, kind, payload)
        if self._fault_dirty:
            self._refresh_fault()
        if due >= self._next_step_ns:
            self._step(due)
            self._next_step_ns = due + self.twin.step_ns

    def _step(self, t_ns: int) -> None:
        load_p, load_q, gen_p = self.twin.operating_points(np.array([t_ns], dtype=np.int64))
        self.world.set_operating_point(load_p[0], load_q[0], gen_p[0])
        self._steps += 1

    def _act(self, t_ns: int, kind: str, payload: Any) -> None:
        if kind == "event":
            index, event = payload
            self._event(index, event, t_ns)
        elif kind == "impose":
            self.world.impose(payload)
        elif kind == "operate":
            switch_id, closed, reason = payload
            self.world.operate_switch(switch_id, closed)
            self._record(
                t_ns,
                "protection",
                switch=switch_id,
                action="close" if closed else "open",
                reason=reason,
            )
        elif kind == "prepare":
            index, event, at_ns = payload
            self._prepared[(index, at_ns)] = self._timeline(event, at_ns)
        elif kind == "fault_settled":
            self._fault_dirty = True
        elif kind == "restart":
            self._restart(payload)

    def _event(self, index: int, event: Any, t_ns: int) -> None:
        if isinstance(event, SwitchEvent):
            self.world.operate_switch(event.switch, event.action == "close")
            self._record(
                t_ns, "switch_operated", switch=event.switch, action=event.action, by="scenario"
            )
        elif isinstance(event, DeviceOutageEvent):
            device = self.devices.get(event.device)
            if device is None:
                _LOG.warning("scenario event %d: no device %s", index, event.device)
                return
            device.stop()
            self._record(t_ns, "device_outage", device=event.device, duration_s=event.duration_s)
            self._schedule(t_ns + round(event.duration_s * NS_PER_S), "restart", event.device)
        elif isinstance(event, DeviceModeEvent):
            device = self.devices.get(event.device)
            if isinstance(device, VirtualSwitch):
                device.set_mode(SwitchMode(event.mode))
                self._record(t_ns, "device_mode", device=event.device, mode=event.mode)
            else:
                _LOG.warning("scenario event %d: %s is not a switch device", index, event.device)
        elif isinstance(event, NetworkEvent):
            if self.netem is not None:
                impairment = Impairment(
                    delay_ms=event.delay_ms,
                    jitter_ms=event.jitter_ms,
                    loss=event.loss,
                    bandwidth_kbps=event.bandwidth_kbps,
                    congestion=event.congestion,
                )
                self.netem.update_impairment(
                    impairment, message_class=event.message_class, device_id=event.device
                )
            self._record(
                t_ns,
                "network",
                applied=self.netem is not None,
                **event.model_dump(exclude={"type", "at_s"}, exclude_none=True),
            )
        elif isinstance(event, FaultEvent):
            self._start_fault(index, event, t_ns)

    def _timeline(self, event: FaultEvent, t_ns: int) -> tuple[FaultSpec, FaultTimeline]:
        spec = self.twin.fault_spec(event, t_ns)
        load_p, load_q, _ = self.world.operating_point()
        timeline = fault_timeline(
            self.world.model,
            spec,
            self.twin.protection_settings(),
            load_p_mw=load_p,
            load_q_mvar=load_q,
        )
        return spec, timeline

    def _start_fault(self, index: int, event: FaultEvent, t_ns: int) -> None:
        prepared = self._prepared.pop((index, t_ns), None)
        spec, timeline = prepared if prepared is not None else self._timeline(event, t_ns)
        self._record(
            t_ns,
            "fault",
            event=index,
            fault_kind=event.kind,
            line=event.line,
            distance_m=event.distance_m,
        )
        for segment in timeline.segments:
            if segment.start_ns >= t_ns:
                self._schedule(segment.start_ns, "impose", segment.state)
        for operation in timeline.operations:
            self._schedule(
                operation.t_ns, "operate", (operation.switch_id, operation.closed, operation.reason)
            )
        latched = [s for s, flag in timeline.fault_indicators.items() if flag.latched]
        self.world.latch_fault_indicators(latched)
        if latched:
            self._record(t_ns, "fault_indicators", switches=sorted(latched))
        last = max([s.start_ns for s in timeline.segments] + [o.t_ns for o in timeline.operations])
        self._fault = spec if event.duration_s is None else None
        self._schedule(last + 1, "fault_settled", None)

    def _refresh_fault(self) -> None:
        """After the fault's timeline (or a switch operation): hold the fault state while the
        faulted line is energized, or hand back to the power flow."""
        self._fault_dirty = False
        self.twin._active_fault = self._fault
        if self._fault is None or not self.twin._fault_energized():
            self._fault = None
            self.twin._active_fault = None
            self.world.impose(None)
            return
        load_p, load_q, _ = self.world.operating_point()
        self.world.impose(self.twin._fault_now(self.world.model, load_p, load_q))

    def _on_switch(self, _switch_id: int, _closed: bool) -> None:
        self._prepared.clear()  # worked out on the grid as it was
        if self._fault is not None:
            self._fault_dirty = True

    def _restart(self, device_id: str) -> None:
        placement = next(p for p in self.twin.placements if p.device_id == device_id)
        device = self._make_device(placement)
        with self._lock:
            self._devices[device_id] = device
        device.start()
        self._record(self.clock.now_ns(), "device_restored", device=device_id)

    def _record(self, t_ns: int, kind: str, **detail: Any) -> None:
        entry = TimelineEntry(t_ns=t_ns, kind=kind, detail=detail)
        self.twin.timeline.append(entry)
        _LOG.info("twin: %s", kind, extra={"t_ns": t_ns, "event": kind})
        if self._on_timeline is not None:
            self._on_timeline(entry)
