"""The edge fault locator plug-in on its own: the messages a feeder-head device receives in a row
of faults, and what it publishes."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest

from openfeeder.iot.agent.packages import builtin_algorithms
from openfeeder.iot.agent.plugins import AlgorithmContext
from openfeeder.iot.fault_record import FAULT_RECORD_EVENT, record_readings
from openfeeder.iot.schema import Event, Quality, Reading, Severity, Unit, encode
from openfeeder.iot.topics import event_topic
from openfeeder.model.cases import load_builtin
from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel
from openfeeder.sim.fault_records import fault_records
from openfeeder.sim.faults import FaultSpec, ProtectionSettings, fault_timeline
from openfeeder.sim.placements import default_placements

S = 1_000_000_000
T0_NS = 1_700_000_000 * S


def _locator_class() -> Any:
    path = builtin_algorithms()["floc"] / "floc.py"
    spec = importlib.util.spec_from_file_location("floc_under_test", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FaultLocator


class _Device:
    """A feeder-head device's plug-in with the events it emitted."""

    def __init__(self, model: GridModel, tmp_path: Path, *, breaker: int) -> None:
        self.events: list[tuple[str, str]] = []
        placements = default_placements(model)
        self.device_of = {int(p.element_id): p.device_id for p in placements}
        self.parameters: dict[str, Any] = {
            "breaker": breaker,
            "devices": {
                p.device_id: [int(p.bus_id), None if p.element_id == NO_ID else int(p.element_id)]
                for p in placements
            },
            "case": "turin",
        }
        self.placements = placements
        self.context = AlgorithmContext(
            device_id=self.device_of[breaker],
            algorithm="floc",
            version="1.0.0",
            parameters=self.parameters,
            grid=None,
            state_dir=tmp_path,
            emit_event=lambda kind, _severity, message, _values: self.events.append(
                (kind, message)
            ),
            logger=logging.getLogger("test.floc"),
        )
        self.locator = _locator_class()()
        self.locator.start(self.context)

    def send(self, device_id: str, kind: str, values: tuple[Reading, ...], t_ns: int) -> Any:
        event = Event(
            device_id=device_id,
            seq=0,
            t_ns=t_ns,
            kind=kind,
            severity=Severity.ALARM,
            message=kind,
            values=values,
        )
        return self.locator.on_message(str(event_topic(device_id)), encode(event))

    def fault(self, model: GridModel, line_id: int, t_ns: int) -> Any:
        """Play one fault's evidence (indicators, records, then the trip); the last answer."""
        spec = FaultSpec(kind="slg", line_id=line_id, distance_m=80.0, start_ns=t_ns)
        timeline = fault_timeline(model, spec, ProtectionSettings())
        result = next(r for r in timeline.fault_results if r is not None)
        for switch, state in timeline.fault_indicators.items():
            if state.latched:
                self.send(self.device_of[switch], "fault_indicator", (_one("fault_passed"),), t_ns)
        for record in fault_records(model, result, self.placements, seed=1, t_ns=t_ns):
            values = record_readings(
                fault_t_ns=t_ns,
                u_pre_v=record.u_pre_v,
                u_fault_v=record.u_fault_v,
                i_pre_a=record.i_pre_a,
                i_fault_a=record.i_fault_a,
            )
            self.send(record.device_id, FAULT_RECORD_EVENT, values, t_ns)
        breaker = timeline.tripped_breaker
        trip = (_one("closed", 0.0),)
        return self.send(self.device_of[breaker], "switch_position", trip, t_ns + S // 3)


def _one(channel: str, value: float = 1.0) -> Reading:
    return Reading(channel=channel, value=value, unit=Unit.ONE, quality=Quality.GOOD)


def _answer(readings: Any) -> dict[str, float]:
    assert readings, "the locator published nothing"
    return {r.channel: r.value for r in readings}


@pytest.fixture(scope="module")
def turin() -> GridModel:
    return load_builtin("turin")


def test_a_fault_on_the_other_feeder_does_not_spoil_the_next_answer(
    turin: GridModel, tmp_path: Path
) -> None:
    device = _Device(turin, tmp_path, breaker=300)
    # a fault on feeder 313 first: its indicators stay latched (no operator clear yet)
    assert device.fault(turin, 108, T0_NS) is None  # not this device's breaker
    answer = _answer(device.fault(turin, 102, T0_NS + 30 * S))
    assert answer["line_id"] == 102
    assert answer["widened"] == 0.0
    assert device.events == []


def test_an_earlier_fault_on_the_same_feeder_is_not_evidence_for_the_next(
    turin: GridModel, tmp_path: Path
) -> None:
    device = _Device(turin, tmp_path, breaker=300)
    assert _answer(device.fault(turin, 104, T0_NS))["line_id"] == 104
    reclosed = (_one("closed", 1.0),)
    device.send("ftu-300", "switch_position", reclosed, T0_NS + 60 * S)
    assert _answer(device.fault(turin, 101, T0_NS + 90 * S))["line_id"] == 101


def test_reconfiguration_keeps_the_evidence_of_a_fault_in_progress(
    turin: GridModel, tmp_path: Path
) -> None:
    device = _Device(turin, tmp_path, breaker=300)
    spec = FaultSpec(kind="lll", line_id=103, distance_m=50.0, start_ns=T0_NS)
    timeline = fault_timeline(turin, spec, ProtectionSettings())
    for switch, state in timeline.fault_indicators.items():
        if state.latched:
            device.send(device.device_of[switch], "fault_indicator", (_one("fault_passed"),), T0_NS)
    device.locator.reconfigure(device.context)  # e.g. a topology published meanwhile
    answer = device.send("ftu-300", "switch_position", (_one("closed", 0.0),), T0_NS + S // 3)
    located = _answer(answer)  # nothing would be published without the indicators
    assert located["section_size"] >= 2
    latched = sum(1 for state in timeline.fault_indicators.values() if state.latched)
    assert located["indicators"] == latched  # what the coordinator compares with its own count
    assert located["records"] == 0
    assert located["line_id"] == -1  # indicators alone give the zone, the records the line


def test_foreign_and_deleted_messages_are_ignored_not_fatal(
    turin: GridModel, tmp_path: Path
) -> None:
    device = _Device(turin, tmp_path, breaker=300)
    assert device.locator.on_message("openfeeder/v1/status/ghost", b"") is None
    assert device.locator.on_message("openfeeder/v1/event/ghost", b"{not json") is None
    assert device.locator.undecodable == 1
    assert _answer(device.fault(turin, 105, T0_NS))["line_id"] == 105
