"""The twin with the platform: virtual devices boot from the catalog, measure the twin's grid over
MQTT, and report the protection's actions of a fault as a field device would."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openfeeder.config import (
    BrokerSettings,
    Settings,
)
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.iot.mqtt import MqttLink
from openfeeder.iot.schema import Event, Measurement
from openfeeder.iot.topics import event_filter, measurement_filter
from openfeeder.sim.clock import NS_PER_S, ScaledClock
from openfeeder.sim.live import LiveTwin
from openfeeder.sim.scenario import parse_scenario
from openfeeder.sim.twin import Twin
from sim_platform import running_platform

FACTOR = 4.0
TIMEOUT_S = 30.0


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[Settings, CatalogClient, str]]:
    with running_platform(tmp_path) as running:
        yield running.settings, running.catalog, running.broker_url


def _listen(url: str) -> tuple[MqttLink, queue.Queue[Any]]:
    received: queue.Queue[Any] = queue.Queue()
    link = MqttLink(BrokerSettings(url=url), client_id=f"observer-{uuid.uuid4().hex[:8]}")
    link.subscribe(event_filter(), lambda _t, p: received.put(Event.model_validate_json(p)))
    link.subscribe(
        measurement_filter("meter-402"),
        lambda _t, p: received.put(Measurement.model_validate_json(p)),
    )
    link.start()
    assert link.wait_subscribed(10)  # SUBACK in: the twin's messages cannot miss it
    return link, received


def test_a_live_fault_is_seen_over_mqtt_by_the_twins_devices(
    platform: tuple[Settings, CatalogClient, str],
) -> None:
    settings, client, url = platform
    scenario = parse_scenario(
        {
            "scenario": {"name": "live", "case": "turin", "duration_s": 60, "step_s": 1, "seed": 4},
            "protection": {"trip_delay_s": 0.3},
            "events": [
                {"at_s": 15, "type": "fault", "kind": "lll", "line": 102, "distance_m": 100},
            ],
        }
    )
    clock = ScaledClock(scenario.scenario.start_ns, FACTOR)
    twin = Twin(scenario, clock=clock)
    observer, received = _listen(url)
    live = LiveTwin(twin, settings, catalog=client, case_name="turin")
    try:
        live.start()
        assert live.wait_running(TIMEOUT_S)
        assert len(live.devices) == 40
        meter_402: list[Measurement] = []
        trip: Event | None = None
        indicators: set[str] = set()
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and (trip is None or len(indicators) < 5):
            try:
                item = received.get(timeout=1.0)
            except queue.Empty:
                continue
            if isinstance(item, Measurement):
                meter_402.append(item)
            elif item.kind == "fault_indicator":
                indicators.add(item.device_id)
            elif (
                item.kind == "switch_position"
                and item.device_id == "ftu-300"
                and next(r.value for r in item.values if r.channel == "closed") == 0.0
            ):
                trip = item
        assert trip is not None, "the feeder-head breaker's FTU never reported the trip"
        trip_after_s = (trip.t_ns - scenario.scenario.start_ns) / NS_PER_S
        assert trip_after_s >= 15.3  # fault at 15 s + 0.3 s overcurrent delay, in domain time
        assert indicators == {"ftu-300", "ftu-301", "ftu-302", "ftu-303", "ftu-304"}
        # the meter on the faulted feeder measured voltage before the fault, none after the trip
        seqs = [m.seq for m in meter_402]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        before = [m for m in meter_402 if m.t_ns < scenario.scenario.start_ns + 14 * NS_PER_S]
        assert before
        volts = {r.channel: r.value for r in before[-1].values}
        assert 200.0 < volts["u_a"] < 260.0
        assert not twin.world.switch_closed(300)
    finally:
        live.stop()
        observer.stop()
