"""The centralized FLISR coordinator: from a breaker trip to a restored grid, over MQTT.

The coordinator listens on the grid-ops broker to what the switches and FTUs say (``event``,
``ack``, ``status`` and, in the edge variant, the feeder-head fault locator's ``algo`` output) and
keeps the switch positions it hears. A feeder-head breaker that opens without a command from the
coordinator is a **trip**. After ``reclose_wait_s`` (the protection's reclosing; a breaker closed
again meanwhile ends the incident as transient) and ``indicator_wait_s`` (indicators and fault
records still in flight) it

1. **locates** the fault (:func:`~openfeeder.analysis.flisr.location.locate_fault` on the fault
   indicators and fault records received; edge variant: the bus pair and distance the feeder-head
   device's plug-in published, falling back to its own location after ``edge_wait_s``);
2. **isolates** it: opens the switches :func:`~openfeeder.analysis.flisr.isolation.plan_isolation`
   names, all at once, waiting for each DONE; a switch that refuses, reports ``switch_failed`` or is
   not done within ``command_timeout_s`` joins the unavailable set and the isolation is planned
   again around it; then locks the isolating switches out (``block``);
3. **restores** service: carries out :func:`~openfeeder.analysis.flisr.restoration.plan_restoration`'s
   operations one after another (each must be done before the next keeps the grid radial); a
   failure makes a new plan on the switch positions as they now are. A close that timed out is
   followed by an ``open`` to the same switch, so a slow mechanism that closes late cannot tie two
   feeders together;
4. **publishes** the new switch states to the device catalog (``PUT /v1/topology``), which pushes
   new settings to the devices whose part of the grid changed.

Every step is a :class:`~openfeeder.services.flisr.incident.Step` on the shared clock, published
as an ``Event`` of the coordinator (``kind`` ``flisr_<step>``) and written to the incident log.
:meth:`FlisrCoordinator.clear` is the operator's "fault repaired": unblock, reset the fault
indicators, open the ties the restoration closed, close the isolating switches and the breaker, so
the grid returns to its normal state.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from pydantic import JsonValue

from openfeeder.analysis.flisr.isolation import IsolationPlan, plan_isolation
from openfeeder.analysis.flisr.location import (
    FAULT_TYPES,
    FaultLocation,
    PhasorRecord,
    locate_fault,
)
from openfeeder.analysis.flisr.restoration import RestorationPlan, plan_restoration
from openfeeder.config import FlisrSettings, Settings
from openfeeder.errors import OpenFeederError
from openfeeder.iot.agent.packages import MANIFEST_FILE, build_package, builtin_algorithms
from openfeeder.iot.catalog_client import (
    AlgorithmAssignment,
    CatalogClient,
    CatalogError,
    DeviceInfo,
    DeviceSpec,
)
from openfeeder.iot.fault_record import FAULT_RECORD_EVENT, parse_record
from openfeeder.iot.mqtt import Messenger
from openfeeder.iot.protection import MessageProtection
from openfeeder.iot.schema import (
    AckStatus,
    AlgorithmOutput,
    Command,
    CommandAck,
    CommandAction,
    Event,
    LinkState,
    Quality,
    Reading,
    Severity,
    Status,
    SwitchPosition,
    Unit,
    decode,
)
from openfeeder.iot.topics import (
    BrokerContext,
    ack_filter,
    algorithm_filter,
    event_filter,
    parse_topic,
    status_filter,
)
from openfeeder.model.components import SwitchKind, enum_code
from openfeeder.model.grid import GridModel
from openfeeder.model.topology import analyze_topology
from openfeeder.services.flisr.incident import Incident, IncidentLog, Step
from openfeeder.sim.clock import NS_PER_S, Clock

__all__ = ["COORDINATOR_ID", "FLOC_ALGORITHM", "FlisrCoordinator"]

_LOG = logging.getLogger(__name__)

COORDINATOR_ID: Final = "flisr"
"""Device id of the coordinator's own events (``openfeeder/v1/event/flisr``)."""
FLOC_ALGORITHM: Final = "floc"
"""Name of the fault-locator plug-in whose output the edge variant waits for."""

_POLL_S: Final = 0.002
_EDGE_SKEW_NS: Final = 50_000_000
"""Clock skew allowed between the breaker's device and the edge locator's (the same device)."""
_BREAKER_KINDS: Final = (enum_code(SwitchKind.BREAKER), enum_code(SwitchKind.RECLOSER))


@dataclass(slots=True)
class _Pending:
    """A command in flight: its acknowledgements so far."""

    switch_id: int
    action: CommandAction
    statuses: list[AckStatus] = field(default_factory=list)
    detail: str = ""
    failed: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Fault:
    """What devices reported about the present disturbance."""

    indicators: dict[int, int] = field(default_factory=dict)
    """switch id -> device time of its fault-indicator alarm."""
    records: dict[str, tuple[int, PhasorRecord]] = field(default_factory=dict)
    edge: dict[str, Any] | None = None


class FlisrCoordinator:
    """See the module docstring. ``start()``/``stop()``; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: GridModel,
        clock: Clock,
        catalog: CatalogClient,
        on_step: Callable[[Incident, Step], None] | None = None,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
        protection: MessageProtection | None = None,
    ) -> None:
        """``tls``: mutual TLS on both broker connections (the service's certificate);
        ``protection``: payload sealing of its commands and opening of what it receives."""
        self._settings = settings
        self.config: FlisrSettings = settings.flisr
        self.model = model
        self.clock = clock
        self._catalog = catalog
        self._on_step = on_step
        self.log = IncidentLog(settings.flisr.incident_log)
        self._messenger = Messenger(
            settings.brokers,
            client_id=client_id or f"flisr-{uuid.uuid4().hex[:8]}",
            tls=tls,
            protection=protection,
        )
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="flisr", daemon=True)
        switch = model.switch
        self._normal = {
            int(i): bool(c) for i, c in zip(switch["id"], switch["closed"], strict=True)
        }
        self._positions = dict(self._normal)
        self._breakers = {
            int(i) for i, k in zip(switch["id"], switch["kind"], strict=True) if k in _BREAKER_KINDS
        }
        self._device_of_switch: dict[int, str] = {}
        self._switch_of_device: dict[str, int] = {}
        self._location_of_device: dict[str, tuple[int, int | None]] = {}
        self._online: dict[str, bool] = {}
        self._expected: dict[int, bool] = {}  # positions the coordinator commanded
        self._pending: dict[str, _Pending] = {}
        self._fault = _Fault()
        self._active: Incident | None = None
        self.handler_errors = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, *, connect_timeout_s: float = 10.0) -> None:
        """Learn the devices from the catalog (edge variant: assign the fault locator to the
        feeder-head devices), connect, subscribe, start the worker."""
        self.refresh_devices()
        if self.config.variant == "edge":
            self.deploy_edge_locator()
        link = BrokerContext.GRID_OPS
        self._messenger.subscribe(event_filter(), self._on_message, context=link)
        self._messenger.subscribe(ack_filter(), self._on_message, context=link)
        self._messenger.subscribe(status_filter(), self._on_message, context=link)
        self._messenger.subscribe(
            algorithm_filter(algorithm=FLOC_ALGORITHM), self._on_message, context=link
        )
        self._messenger.start()
        if not self._messenger.wait_subscribed(connect_timeout_s):
            self._messenger.stop()
            raise OpenFeederError(
                f"FLISR coordinator: not connected and subscribed within {connect_timeout_s} s "
                f"({self._settings.brokers.grid_ops.url})"
            )
        self._thread.start()
        _LOG.info(
            "FLISR coordinator running (%s variant, %d switch devices)",
            self.config.variant,
            len(self._device_of_switch),
            extra={"event": "started", "variant": self.config.variant},
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._work.put(("stop", None))
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._messenger.stop()

    def refresh_devices(self) -> None:
        """Which device operates which switch, and where each device sits (from the catalog)."""
        devices: list[DeviceInfo] = self._catalog.list_devices()
        switch_ids = set(self._normal)
        with self._lock:
            for info in devices:
                location = info.location
                if location is None or location.bus_id is None:  # not placed on the grid
                    continue
                self._location_of_device[info.device_id] = (location.bus_id, location.element_id)
                if "switch_control" in info.capabilities and location.element_id in switch_ids:
                    self._device_of_switch[int(location.element_id)] = info.device_id
                    self._switch_of_device[info.device_id] = int(location.element_id)
                self._online.setdefault(info.device_id, info.status.value == "online")

    def deploy_edge_locator(self) -> list[str]:
        """Upload the ``floc`` plug-in (if the repository lacks it) and assign it to the device of
        every feeder-head breaker, with the device map it needs; the ids of those devices."""
        source = builtin_algorithms()[FLOC_ALGORITHM]
        package = build_package(source)
        manifest = json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))
        version = str(manifest["version"])
        known = {(a.name, a.version): a.sha256 for a in self._catalog.algorithms()}
        if (FLOC_ALGORITHM, version) not in known:
            self._catalog.upload_algorithm(FLOC_ALGORITHM, version, package)
        with self._lock:
            places: dict[str, JsonValue] = {
                d: [b, e] for d, (b, e) in self._location_of_device.items()
            }
            switches: dict[str, JsonValue] = dict(self._switch_of_device)
            heads = {
                s: self._device_of_switch[s] for s in self._breakers if s in self._device_of_switch
            }
        assigned = []
        for breaker, device in sorted(heads.items()):
            info = self._catalog.device(device)
            others = tuple(a for a in info.algorithms if a.name != FLOC_ALGORITHM)
            floc = AlgorithmAssignment(
                name=FLOC_ALGORITHM,
                version=version,
                # the case as the catalog loads it (a built-in name or a case file's path), so
                # the plug-in can load it too; the model's own name only names built-ins
                parameters={
                    "breaker": breaker,
                    "devices": places,
                    "switches": switches,
                    "case": self._settings.catalog.case or self.model.name,
                },
            )
            self._catalog.put_device(
                device,
                DeviceSpec(
                    device_type=info.device_type,
                    location=info.location,
                    algorithms=(*others, floc),
                    sampling_rate_hz=info.sampling_rate_hz,
                    reporting_interval_s=info.reporting_interval_s,
                ),
            )
            assigned.append(device)
        _LOG.info("edge fault locator assigned to %s", ", ".join(assigned) or "no device")
        return assigned

    # -- what the coordinator knows -------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and all(
            link.connected for link in self._messenger.links.values()
        )

    def positions(self) -> dict[int, bool]:
        with self._lock:
            return dict(self._positions)

    def current_model(self) -> GridModel:
        return self.model.with_switch_states(self.positions())

    @property
    def active(self) -> Incident | None:
        return self._active

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no incident is being handled (wall seconds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._work.empty() and self._active is None:
                return True
            time.sleep(0.01)
        return False

    def clear(self, incident_id: str) -> None:
        """Operator: the fault is repaired; return the grid to normal (asynchronous)."""
        incident = self.log.get(incident_id)
        if incident is None:
            raise KeyError(f"no incident {incident_id}")
        self._work.put(("clear", incident_id))

    # -- messages (network threads) -------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained message being deleted (a device removed), not a message
        try:
            parsed = parse_topic(topic)
            message = decode(parsed.message_class, payload, topic=topic)
            self._handle(topic, message)
        except Exception:  # a bad message must not take the coordinator down
            self.handler_errors += 1
            _LOG.exception("FLISR coordinator: message on %s not handled", topic)

    def _handle(self, topic: str, message: Any) -> None:
        if isinstance(message, CommandAck):
            self._handle_ack(message)
        elif isinstance(message, Event):
            self._handle_event(topic, message)
        elif isinstance(message, Status):
            with self._lock:
                self._online[message.device_id] = message.state is LinkState.ONLINE
        elif isinstance(message, AlgorithmOutput) and message.algorithm == FLOC_ALGORITHM:
            values = {r.channel: r.value for r in message.outputs}
            with self._lock:
                self._fault.edge = {"device_id": message.device_id, "t_ns": message.t_ns, **values}

    def _handle_ack(self, ack: CommandAck) -> None:
        with self._lock:
            pending = self._pending.get(ack.command_id)
        if pending is None:
            return
        pending.statuses.append(ack.status)
        pending.detail = ack.detail
        self._step_active(
            "ack",
            switch=pending.switch_id,
            command_id=ack.command_id,
            status=ack.status.value,
            detail=ack.detail,
            device_t_ns=ack.t_ns,
        )
        if ack.status is not AckStatus.ACCEPTED:
            pending.failed = ack.status is not AckStatus.DONE
            pending.done.set()

    def _handle_event(self, topic: str, event: Event) -> None:
        device = event.device_id
        values = {r.channel: r.value for r in event.values}
        if event.kind == "switch_position" and "closed" in values:
            self._handle_position(device, bool(values["closed"]), event.t_ns)
        elif event.kind == "fault_indicator":
            switch_id = self._switch_of_device.get(device)
            if switch_id is not None:
                with self._lock:
                    self._fault.indicators.setdefault(switch_id, event.t_ns)
        elif event.kind == FAULT_RECORD_EVENT:
            self._handle_record(topic, device, event)
        elif event.kind == "switch_failed":
            switch_id = self._switch_of_device.get(device)
            with self._lock:
                pendings = [p for p in self._pending.values() if p.switch_id == switch_id]
            for pending in pendings:
                pending.failed = True
                pending.detail = event.message
                pending.done.set()

    def _handle_position(self, device: str, closed: bool, device_t_ns: int) -> None:
        switch_id = self._switch_of_device.get(device)
        if switch_id is None:
            return
        with self._lock:
            before = self._positions.get(switch_id)
            self._positions[switch_id] = closed
            expected = self._expected.get(switch_id)
        if before == closed:
            return
        commanded = expected is not None and expected == closed
        if switch_id in self._breakers and not closed and not commanded:
            self._work.put(("trip", (switch_id, device_t_ns, self.clock.now_ns())))
        elif switch_id in self._breakers and closed and not commanded:
            self._work.put(("reclosed", switch_id))

    def _handle_record(self, topic: str, device: str, event: Event) -> None:
        where = self._location_of_device.get(device)
        if where is None:
            _LOG.warning("fault record from %s, which the catalog does not place", device)
            return
        phasors = parse_record(event.values, topic=topic)
        bus_id, element_id = where
        record = PhasorRecord(
            device_id=device,
            bus_id=bus_id,
            u_pre_v=phasors.u_pre_v,
            u_fault_v=phasors.u_fault_v,
            branch_id=element_id if phasors.i_pre_a is not None else None,
            i_pre_a=phasors.i_pre_a,
            i_fault_a=phasors.i_fault_a,
        )
        with self._lock:
            self._fault.records[device] = (phasors.fault_t_ns, record)

    # -- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            kind, payload = self._work.get()
            if kind == "stop":
                return
            try:
                if kind == "trip":
                    self._incident(*payload)
                elif kind == "clear":
                    self._clear(payload)
            except Exception:
                _LOG.exception("FLISR coordinator: %s failed", kind)
                if self._active is not None:
                    self._active.status = "failed"
                    self._finish(self._active)

    def _incident(self, breaker: int, device_t_ns: int, seen_ns: int) -> None:
        incident = Incident(
            incident_id=f"inc-{uuid.uuid4().hex[:8]}", breaker=breaker, variant=self.config.variant
        )
        self._active = incident
        self.log.add(incident)
        with self._lock:
            inception = self._inception_ns()
        if inception is not None:
            self._step(incident, "fault_inception", t_ns=inception, device_t_ns=inception)
        self._step(incident, "trip", t_ns=seen_ns, breaker=breaker, device_t_ns=device_t_ns)
        if self.config.reclose_wait_s > 0 and self._reclosed_within(
            breaker, self.config.reclose_wait_s
        ):
            incident.status = "transient"
            self._step(incident, "cleared_by_reclosing", breaker=breaker)
            self._reset_fault()
            self._finish(incident)
            return
        self._sleep(self.config.indicator_wait_s)
        self._step(incident, "detected", breaker=breaker)
        location = self._locate(incident, breaker, device_t_ns)
        if location is None:
            incident.status = "failed"
            self._finish(incident)
            return
        isolation = self._isolate(incident, breaker, location)
        if isolation is None:
            incident.status = "failed"
            self._finish(incident)
            return
        incident.status = "isolated"
        self._restore(incident, breaker, isolation)
        self._publish_topology(incident, f"FLISR {incident.incident_id}: fault isolated, restored")
        self._finish(incident)

    def _inception_ns(self) -> int | None:
        times = list(self._fault.indicators.values()) + [t for t, _ in self._fault.records.values()]
        return min(times) if times else None

    def _reclosed_within(self, breaker: int, wait_s: float) -> bool:
        """Wait ``wait_s`` (domain); True if the breaker is closed at the end (reclosed)."""
        self._sleep(wait_s)
        with self._lock:
            return self._positions.get(breaker, False)

    # -- location -------------------------------------------------------------------------------

    def _locate(self, incident: Incident, breaker: int, trip_ns: int) -> FaultLocation | None:
        if self.config.variant == "edge":
            edge = self._wait_edge(trip_ns)
            if edge is not None and edge.get("line_id", -1) >= 0:
                return self._edge_location(incident, breaker, edge)
            self._step(
                incident,
                "edge_timeout" if edge is None else "edge_incomplete",
                waited_s=self.config.edge_wait_s,
            )
        with self._lock:
            indicators = self._indicator_states()
            records = [record for _, record in self._fault.records.values()]
        try:
            location = locate_fault(
                self.current_model(),
                tripped_breaker=breaker,
                indicators=indicators,
                records=records,
            )
        except OpenFeederError as err:
            self._step(incident, "location_failed", error=str(err))
            return None
        incident.location = location.as_dict()
        self._step(
            incident,
            "located",
            by="coordinator",
            section=list(location.section_bus_ids),
            line=location.line_id,
            distance_m=location.distance_m,
            sigma_m=location.sigma_m,
            widened=location.widened,
            fault_type=location.fault_type,
        )
        return location

    def _evidence_count(self) -> tuple[int, int]:
        """Fault indicators seen latched and fault records received for the fault at hand."""
        with self._lock:
            return len(self._fault.indicators), len(self._fault.records)

    def _indicator_states(self) -> dict[int, bool | None]:
        """Per fault-indicator switch: passed (alarm seen), not passed, or unknown (offline)."""
        states: dict[int, bool | None] = {}
        fi = self.model.switch["fault_indicator"].astype(bool)
        for switch_id in self.model.switch["id"][fi].tolist():
            device = self._device_of_switch.get(int(switch_id))
            if int(switch_id) in self._fault.indicators:
                states[int(switch_id)] = True
            elif device is None or not self._online.get(device, False):
                states[int(switch_id)] = None
            else:
                states[int(switch_id)] = False
        return states

    def _wait_edge(self, trip_ns: int) -> dict[str, Any] | None:
        """The edge locator's answer about this trip (published at or after it), once no newer
        one has come for ``indicator_wait_s`` (it answers again when late evidence arrives) and it
        used at least the fault indicators and fault records the coordinator has received (both
        receive the same events; an answer on fewer is one the locator is about to revise)."""
        deadline = self.clock.now_ns() + round(self.config.edge_wait_s * NS_PER_S)
        settle_ns = round(self.config.indicator_wait_s * NS_PER_S)
        seen: dict[str, Any] | None = None
        seen_at = 0
        while self.clock.now_ns() < deadline and not self._stop.is_set():
            with self._lock:
                edge = self._fault.edge
            if edge is not None and int(edge["t_ns"]) >= trip_ns - _EDGE_SKEW_NS:
                if edge is not seen:
                    seen, seen_at = edge, self.clock.now_ns()
                elif (
                    self.clock.now_ns() - seen_at >= settle_ns
                    and edge.get("line_id", -1) >= 0
                    and edge.get("indicators", math.inf) >= self._evidence_count()[0]
                    and edge.get("records", math.inf) >= self._evidence_count()[1]
                ):
                    return dict(seen)
            self._nap()
        return None if seen is None else dict(seen)

    def _edge_location(
        self, incident: Incident, breaker: int, edge: dict[str, Any]
    ) -> FaultLocation | None:
        """The faulted section is the switching section holding the line the device named; when
        the device's zone was widened (indicators nobody reports), the zone the indicators allow,
        which the coordinator knows as well (the line alone can be a neighbour of the fault's)."""
        model = self.current_model()
        line_id = int(edge.get("line_id", -1))
        rows = np.flatnonzero(model.line["id"] == line_id)
        if rows.size == 0:
            self._step(incident, "location_failed", error=f"edge locator named no line ({line_id})")
            return None
        topology = analyze_topology(self.model)
        bus = int(model.line["from_bus"][rows[0]])
        section = int(topology.section_of_bus[topology.bus_row(bus)])
        buses = tuple(int(b) for b in topology.section_buses(section))
        bounding = tuple(int(s) for s in topology.switches_bounding(section))
        unknown: tuple[int, ...] = ()
        widened = bool(edge.get("widened", 0.0))
        if widened:
            with self._lock:
                indicators = self._indicator_states()
            try:
                zone = locate_fault(
                    model, tripped_breaker=breaker, indicators=indicators, records=[]
                )
            except OpenFeederError as err:
                self._step(incident, "location_failed", error=str(err))
                return None
            buses, bounding = zone.section_bus_ids, zone.bounding_switch_ids
            unknown = zone.unknown_indicators
        location = FaultLocation(
            feeder=breaker,
            fault_type=_fault_type(edge.get("fault_type_code")),
            fault_type_classified=True,
            phases="",
            section_bus_ids=buses,
            bounding_switch_ids=bounding,
            widened=widened,
            unknown_indicators=unknown,
            section_basis="edge",
            method="edge",
            line_id=line_id,
            from_bus=int(model.line["from_bus"][rows[0]]),
            to_bus=int(model.line["to_bus"][rows[0]]),
            distance_m=float(edge.get("distance_m", float("nan"))),
            sigma_m=float(edge.get("sigma_m", float("nan"))),
        )
        incident.location = location.as_dict()
        self._step(
            incident,
            "located",
            by=f"edge:{edge.get('device_id')}",
            section=list(buses),
            line=line_id,
            distance_m=location.distance_m,
            sigma_m=location.sigma_m,
            device_t_ns=edge.get("t_ns"),
        )
        return location

    # -- isolation ------------------------------------------------------------------------------

    def _isolate(
        self, incident: Incident, breaker: int, location: FaultLocation
    ) -> IsolationPlan | None:
        unavailable = self._unavailable()
        for attempt in range(self.config.max_replans + 1):
            try:
                plan = plan_isolation(
                    self.current_model(),
                    location.section_bus_ids,
                    unavailable=unavailable,
                    tripped_breaker=breaker,
                )
            except OpenFeederError as err:
                self._step(incident, "isolation_failed", error=str(err))
                return None
            incident.isolation = plan.as_dict()
            self._step(
                incident,
                "isolation_planned",
                replan=attempt,
                open=list(plan.open_switch_ids),
                isolated_buses=len(plan.isolated_bus_ids),
            )
            to_open = [s for s in plan.open_switch_ids if self.positions().get(s, False)]
            failed = self._operate_all(incident, to_open, CommandAction.OPEN)
            if not failed:
                locked = self._operate_all(
                    incident, list(plan.lockout_switch_ids), CommandAction.BLOCK
                )
                incident.locked_switches = [s for s in plan.lockout_switch_ids if s not in locked]
                self._step(
                    incident,
                    "isolated",
                    open=list(plan.open_switch_ids),
                    locked=incident.locked_switches,
                )
                return plan
            unavailable |= set(failed)
            incident.failed_switches += failed
        self._step(incident, "isolation_failed", error="too many failed switches")
        return None

    # -- restoration ----------------------------------------------------------------------------

    def _restore(self, incident: Incident, breaker: int, isolation: IsolationPlan) -> None:
        unavailable = self._unavailable() | set(incident.failed_switches)
        plan: RestorationPlan | None = None
        for attempt in range(self.config.max_replans + 1):
            tripped = breaker if not self.positions().get(breaker, False) else None
            try:
                plan = plan_restoration(
                    self.current_model(),
                    isolation,
                    tripped_breaker=tripped,
                    unavailable=unavailable,
                )
            except OpenFeederError as err:
                self._step(incident, "restoration_failed", error=str(err))
                return
            incident.restoration = plan.as_dict()
            operations = [(op.switch_id, op.action) for op in plan.operations]
            self._step(
                incident,
                "restoration_planned",
                replan=attempt,
                operations=[{"switch": s, "action": a} for s, a in operations],
                restored_customers=plan.restored_customers,
                unserved_customers=plan.unserved_customers,
            )
            failed_switch = None
            for switch_id, action in operations:
                closed = action == "close"
                if self.positions().get(switch_id) == closed:
                    continue
                command = CommandAction.CLOSE if closed else CommandAction.OPEN
                if self._operate_all(incident, [switch_id], command):
                    failed_switch = switch_id
                    break
            if failed_switch is None:
                break
            unavailable.add(failed_switch)
            incident.failed_switches.append(failed_switch)
        incident.status = "restored"
        summary: dict[str, Any] = {}
        if plan is not None:
            summary = {
                "restored_customers": plan.restored_customers,
                "unserved_customers": plan.unserved_customers,
                "restored_mw": plan.restored_mw,
                "unserved_mw": plan.unserved_mw,
            }
        incident.summary.update(summary)
        self._step(incident, "restored", **summary)

    # -- clear (operator) -----------------------------------------------------------------------

    def _clear(self, incident_id: str) -> None:
        incident = self.log.get(incident_id)
        if incident is None:
            return
        self._active = incident
        self._step(incident, "cleared", by="operator")
        self._operate_all(incident, incident.locked_switches, CommandAction.UNBLOCK)
        resets = [
            s
            for s in self._device_of_switch
            if self.model.switch["fault_indicator"][
                int(np.flatnonzero(self.model.switch["id"] == s)[0])
            ]
        ]
        self._operate_all(incident, resets, CommandAction.RESET)
        positions = self.positions()
        opens = [s for s, c in positions.items() if c and not self._normal[s]]
        closes = [s for s, c in positions.items() if not c and self._normal[s]]
        self._operate_all(incident, opens, CommandAction.OPEN)
        failed = self._operate_all(incident, closes, CommandAction.CLOSE)
        self._reset_fault()
        self._publish_topology(incident, f"FLISR {incident.incident_id}: cleared, back to normal")
        self._step(incident, "normal" if not failed else "clear_incomplete", failed=failed)
        incident.status = "cleared" if not failed else "failed"
        self._finish(incident)

    # -- commands -------------------------------------------------------------------------------

    def _unavailable(self) -> set[int]:
        """Switches without a device, or whose device is offline."""
        with self._lock:
            return {
                s
                for s in self._normal
                if s not in self._device_of_switch
                or not self._online.get(self._device_of_switch[s], False)
            }

    def _operate_all(
        self, incident: Incident, switch_ids: Iterable[int], action: CommandAction
    ) -> list[int]:
        """Send ``action`` to every switch at once; wait for all; the ids that failed."""
        pendings: list[tuple[str, _Pending]] = []
        failed: list[int] = []
        for switch_id in switch_ids:
            device = self._device_of_switch.get(switch_id)
            if device is None:
                failed.append(switch_id)
                continue
            command_id = f"{incident.incident_id}-{next(self._seq)}"
            pending = _Pending(switch_id, action)
            with self._lock:
                self._pending[command_id] = pending
                if action in (CommandAction.OPEN, CommandAction.CLOSE):
                    self._expected[switch_id] = action is CommandAction.CLOSE
            self._send(switch_id, action, command_id)
            self._step(
                incident,
                "command",
                switch=switch_id,
                action=action.value,
                command_id=command_id,
                device=device,
            )
            pendings.append((command_id, pending))
        deadline = self.clock.now_ns() + round(self.config.command_timeout_s * NS_PER_S)
        for command_id, pending in pendings:
            while not pending.done.is_set() and self.clock.now_ns() < deadline:
                if self._stop.is_set():
                    break
                pending.done.wait(_POLL_S)
            with self._lock:
                self._pending.pop(command_id, None)
            if pending.done.is_set() and not pending.failed:
                if action is CommandAction.OPEN:
                    incident.opened_switches.append(pending.switch_id)
                elif action is CommandAction.CLOSE:
                    incident.closed_switches.append(pending.switch_id)
                continue
            reason = pending.detail or ("timed out" if not pending.done.is_set() else "failed")
            self._step(
                incident,
                "command_failed",
                switch=pending.switch_id,
                action=action.value,
                command_id=command_id,
                reason=reason,
            )
            failed.append(pending.switch_id)
            if action is CommandAction.CLOSE and not pending.done.is_set():
                # a slow mechanism may still close: make sure it ends open
                with self._lock:
                    self._expected[pending.switch_id] = False
                self._send(pending.switch_id, CommandAction.OPEN, f"{command_id}-undo")
        return failed

    def _send(self, switch_id: int, action: CommandAction, command_id: str) -> None:
        device = self._device_of_switch[switch_id]
        self._messenger.publish(
            Command(
                device_id=device,
                seq=next(self._seq),
                t_ns=self.clock.now_ns(),
                command_id=command_id,
                action=action,
                target_id=switch_id,
            )
        )

    # -- timeline, topology ---------------------------------------------------------------------

    def _step(
        self, incident: Incident, kind: str, *, t_ns: int | None = None, **detail: Any
    ) -> None:
        step = Step(t_ns=self.clock.now_ns() if t_ns is None else t_ns, kind=kind, detail=detail)
        incident.steps.append(step)
        _LOG.info(
            "FLISR %s: %s",
            incident.incident_id,
            kind,
            extra={"incident": incident.incident_id, "step": kind, "t_ns": step.t_ns},
        )
        with contextlib.suppress(OpenFeederError):
            self._messenger.publish(
                Event(
                    device_id=COORDINATOR_ID,
                    seq=next(self._seq),
                    t_ns=step.t_ns,
                    kind=f"flisr_{kind}",
                    severity=Severity.ALARM if kind in _ALARMS else Severity.INFO,
                    message=f"{incident.incident_id}: {kind} {_brief(detail)}"[:2000],
                    values=_numbers(detail),
                )
            )
        if self._on_step is not None:
            self._on_step(incident, step)

    def _step_active(self, kind: str, **detail: Any) -> None:
        incident = self._active
        if incident is not None:
            self._step(incident, kind, **detail)

    def _publish_topology(self, incident: Incident, reason: str) -> None:
        positions = self.positions()
        changed = {
            s: SwitchPosition.CLOSED if c else SwitchPosition.OPEN for s, c in positions.items()
        }
        try:
            info = self._catalog.set_topology(changed, reason=reason[:256])
        except CatalogError as err:
            self._step(incident, "topology_not_published", error=str(err))
            return
        self._step(incident, "topology_published", topology_version=info.topology_version)

    def _finish(self, incident: Incident) -> None:
        durations = incident.durations_ms()
        if durations:
            incident.summary["durations_ms"] = durations
        self.log.write(incident)
        self._active = None

    def _reset_fault(self) -> None:
        with self._lock:
            self._fault = _Fault()

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.clock.sleep(seconds, self._stop)

    def _nap(self) -> None:
        time.sleep(_POLL_S)


_ALARMS: Final = frozenset({"trip", "command_failed", "isolation_failed", "location_failed"})


def _fault_type(code: object) -> str:
    if isinstance(code, float | int) and 0 <= int(code) < len(FAULT_TYPES):
        return FAULT_TYPES[int(code)]
    return "unknown"


def _brief(detail: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in detail.items() if k != "device_t_ns")


def _numbers(detail: dict[str, Any]) -> tuple[Reading, ...]:
    """The numeric details as readings (switch ids, distances, customers)."""
    out = []
    for key, value in detail.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not np.isfinite(value) or not key.replace("_", "").isalnum() or not key[0].isalpha():
            continue
        unit = Unit.M if key.endswith("_m") else Unit.ONE
        out.append(
            Reading(channel=key.lower(), value=float(value), unit=unit, quality=Quality.GOOD)
        )
    return tuple(out)
