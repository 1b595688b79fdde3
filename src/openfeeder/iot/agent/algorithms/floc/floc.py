"""Edge fault locator: the FLOC of seed 003 running on the meter agent at the feeder head.

Inputs (``on_message``): every device's events and status. It keeps the fault indicators that
latched, the fault records (phasors before and during the fault) and which devices are offline;
when the feeder-head breaker this device watches opens (its own ``switch_position`` event), it runs
:func:`openfeeder.analysis.flisr.location.locate_fault` on what it collected, on the topology the
switches' position events describe (a grid already reconfigured by FLISR), and publishes the
faulted line, its buses and the distance from the line's from bus (``algo/<device>/floc``). The
FLISR coordinator in its edge variant isolates and restores from that.

Parameters (set by the coordinator when it assigns the algorithm): ``breaker`` (switch id of the
feeder head), ``devices`` (device id -> [bus id, element id or null], from the device catalog),
``switches`` (device id -> switch id: the devices that operate a switch and report its fault
indicator; an indicator no such device reports is unknown and widens the zone, as in the
coordinator; without it, every device placed at a switch counts) and ``case`` (a built-in case's
name or a case file the device can read; without it, the case its grid part names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from openfeeder.analysis.flisr.location import FAULT_TYPES, PhasorRecord, locate_fault
from openfeeder.errors import MessagingError
from openfeeder.iot.fault_record import FAULT_RECORD_EVENT, parse_record
from openfeeder.iot.schema import (
    Event,
    LinkState,
    Quality,
    Reading,
    Severity,
    Status,
    Unit,
    decode,
)
from openfeeder.iot.topics import parse_topic
from openfeeder.model.cases import resolve_case

if TYPE_CHECKING:
    from openfeeder.iot.agent.plugins import AlgorithmContext
    from openfeeder.model.grid import GridModel


class FaultLocator:
    """Collects indicators and records; locates the fault when its breaker trips."""

    def start(self, context: AlgorithmContext) -> None:
        self.positions: dict[int, bool] = {}
        self.offline: set[str] = set()
        self.undecodable = 0
        self._configure(context)
        self.reset()

    def reconfigure(self, context: AlgorithmContext) -> None:
        """New parameters or grid part (e.g. after FLISR published a topology): the evidence of a
        fault in progress, the switch positions seen and the offline devices are kept."""
        self._configure(context)

    def _configure(self, context: AlgorithmContext) -> None:
        parameters = context.parameters
        breaker = parameters.get("breaker")
        devices = parameters.get("devices")
        if not isinstance(breaker, int):
            raise ValueError(
                f"floc on {context.device_id}: parameter 'breaker' must be a switch id"
            )
        if not isinstance(devices, dict):
            raise ValueError(f"floc on {context.device_id}: parameter 'devices' must be a mapping")
        case = parameters.get("case")  # a built-in case or a case file the device can read
        if not isinstance(case, str) or not case:
            case = context.grid.case if context.grid is not None else None
        if not isinstance(case, str):
            raise ValueError(f"floc on {context.device_id}: no case (grid part or parameter)")
        if getattr(self, "case", None) != case:  # loaded once; kept across reconfigurations
            self.model: GridModel = resolve_case(case)
            self.case = case
        self.context = context
        self.breaker = breaker
        switch_ids = set(self.model.switch["id"].tolist())
        self.where: dict[str, tuple[int, int | None]] = {}
        self.switch_of: dict[str, int] = {}
        for device, place in devices.items():
            if not isinstance(place, list) or len(place) != 2 or not isinstance(place[0], int):
                raise ValueError(f"floc: devices[{device!r}] must be [bus id, element id or null]")
            element = place[1] if isinstance(place[1], int) else None
            self.where[str(device)] = (place[0], element)
            if element is not None and element in switch_ids:
                self.switch_of[str(device)] = element
        switches = parameters.get("switches")
        if isinstance(switches, dict):  # the devices that operate a switch and report its indicator
            self.switch_of = {}
            for device, switch in switches.items():
                if not isinstance(switch, int) or switch not in switch_ids:
                    raise ValueError(f"floc: switches[{device!r}] must be a switch id of the case")
                self.switch_of[str(device)] = switch
        self.positions = {s: c for s, c in self.positions.items() if s in switch_ids}
        fi = self.model.switch["fault_indicator"].astype(bool)
        self.fi_switches = [int(s) for s in self.model.switch["id"][fi].tolist()]
        self.window_ns = _seconds_ns(parameters, "late_window_s", 2.0)
        self.evidence_ns = _seconds_ns(parameters, "evidence_window_s", 10.0)

    def reset(self) -> None:
        self.latched: dict[int, int] = {}
        """Switch id -> t_ns of its fault indicator's report (until it is reset)."""
        self.records: dict[str, tuple[int, PhasorRecord]] = {}
        """Device id -> (t_ns, its latest fault record)."""
        self.tripped_ns: int | None = None

    def on_measurement(self, readings: Sequence[Reading], t_ns: int) -> None:
        del readings, t_ns

    def on_message(self, topic: str, payload: bytes) -> tuple[Reading, ...] | None:
        if not payload:
            return None  # a retained message being deleted (e.g. a decommissioned device's status)
        try:
            message = decode(parse_topic(topic).message_class, payload, topic=topic)
            if isinstance(message, Status):
                self._linked(message)
            elif isinstance(message, Event):
                return self._event(topic, message)
        except MessagingError:
            self.undecodable += 1  # someone else's bad message must not disable the locator
        return None

    def _linked(self, message: Status) -> None:
        if message.state is LinkState.OFFLINE:
            self.offline.add(message.device_id)
        else:
            self.offline.discard(message.device_id)

    def _event(self, topic: str, message: Event) -> tuple[Reading, ...] | None:
        device = message.device_id
        if message.kind == "fault_indicator" and device in self.switch_of:
            self.latched[self.switch_of[device]] = message.t_ns
            return self._late(message.t_ns)
        if message.kind == FAULT_RECORD_EVENT and device in self.where:
            phasors = parse_record(message.values, topic=topic)
            bus, element = self.where[device]
            self.records[device] = (
                message.t_ns,
                PhasorRecord(
                    device_id=device,
                    bus_id=bus,
                    u_pre_v=phasors.u_pre_v,
                    u_fault_v=phasors.u_fault_v,
                    branch_id=element if phasors.i_pre_a is not None else None,
                    i_pre_a=phasors.i_pre_a,
                    i_fault_a=phasors.i_fault_a,
                ),
            )
            return self._late(message.t_ns)
        if message.kind == "fault_indicator_cleared" and device in self.switch_of:
            self.latched.pop(self.switch_of[device], None)  # reset by the operator's clear
            return None
        if message.kind == "switch_position" and device in self.switch_of:
            return self._moved(self.switch_of[device], message)
        return None

    def _moved(self, switch: int, message: Event) -> tuple[Reading, ...] | None:
        """A switch reported its position: remember it; the breaker's opening is the trip."""
        closed = {r.channel: r.value for r in message.values}.get("closed")
        if closed not in (0.0, 1.0):
            return None
        self.positions[switch] = closed == 1.0
        if switch != self.breaker:
            return None
        if closed == 1.0:
            self.tripped_ns = None  # reclosed or restored: the next opening is a new trip
            return None
        latched, records = self._evidence(message.t_ns)
        if not latched and not records:
            return None
        self.tripped_ns = message.t_ns
        return self.locate()

    def _evidence(self, trip_ns: int) -> tuple[set[int], list[PhasorRecord]]:
        """The indicators and records of this trip's fault: reported from ``evidence_window_s``
        before the trip to ``late_window_s`` after it (older ones belong to earlier faults, on
        this feeder or another, whose indicators were not reset yet)."""
        first, last = trip_ns - self.evidence_ns, trip_ns + self.window_ns
        latched = {switch for switch, t_ns in self.latched.items() if first <= t_ns <= last}
        records = [record for t_ns, record in self.records.values() if first <= t_ns <= last]
        return latched, records

    def _late(self, t_ns: int) -> tuple[Reading, ...] | None:
        """Evidence that arrived after the trip but belongs to the fault (devices publish
        independently, so an indicator can overtake the trip on the way): locate again and publish
        the better answer; the coordinator takes the latest it has when it acts."""
        if self.tripped_ns is None or abs(t_ns - self.tripped_ns) > self.window_ns:
            return None
        return self.locate()

    def locate(self) -> tuple[Reading, ...] | None:
        if self.tripped_ns is None:
            return None
        latched, records = self._evidence(self.tripped_ns)
        indicators: dict[int, bool | None] = {}
        watched = {s for d, s in self.switch_of.items() if d not in self.offline}
        for switch in self.fi_switches:
            # unknown without a device reporting it (none there, or offline): widens the zone
            indicators[switch] = True if switch in latched else False if switch in watched else None
        try:
            location = locate_fault(
                self.model.with_switch_states(self.positions),
                tripped_breaker=self.breaker,
                indicators=indicators,
                records=records,
            )
        except Exception as err:  # reported, and the coordinator falls back to its own locator
            self.context.emit_event(
                "floc_failed", Severity.WARNING, f"fault location failed: {err}"[:2000], ()
            )
            return None
        values: dict[str, Any] = {
            "line_id": location.line_id if location.line_id is not None else -1,
            "from_bus": location.from_bus if location.from_bus is not None else -1,
            "to_bus": location.to_bus if location.to_bus is not None else -1,
            "distance_m": location.distance_m if location.distance_m is not None else -1.0,
            "sigma_m": location.sigma_m if location.sigma_m is not None else -1.0,
            "fault_type_code": (
                FAULT_TYPES.index(location.fault_type) if location.fault_type in FAULT_TYPES else -1
            ),
            "widened": 1.0 if location.widened else 0.0,
            "section_size": len(location.section_bus_ids),
            "indicators": len(latched),  # the evidence it had: lets the coordinator wait for more
            "records": len(records),
        }
        return tuple(
            Reading(
                channel=channel,
                value=float(value),
                unit=Unit.M if channel.endswith("_m") else Unit.ONE,
                quality=Quality.GOOD,
            )
            for channel, value in values.items()
        )

    def stop(self) -> None:
        self.reset()


def _seconds_ns(parameters: Mapping[str, Any], name: str, default_s: float) -> int:
    value = parameters.get(name, default_s)
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"floc: parameter {name!r} must be a number of seconds >= 0")
    return int(float(value) * 1e9)
