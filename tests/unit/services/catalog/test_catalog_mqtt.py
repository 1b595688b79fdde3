"""What the catalog announces on MQTT: liveness events, pushed configurations, topology.

Against the real Mosquitto (shared: unique device ids) and, for the topology topic that every
catalog shares, a private Mosquitto of the test's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from catalog_helpers import Watcher, catalog_settings, running_catalog, unique

from conftest import PrivateMosquitto
from openfeeder.iot.catalog_client import CatalogClient, DeviceSpec, DeviceStatus
from openfeeder.iot.device_settings import BootRequest, DeviceSettings, Location
from openfeeder.iot.schema import (
    ConfigChange,
    Event,
    Severity,
    SwitchPosition,
    TopologyChange,
    decode,
)
from openfeeder.iot.topics import (
    MessageClass,
    config_filter,
    config_topic,
    event_filter,
    event_topic,
    topology_filter,
    topology_topic,
)

pytestmark = pytest.mark.integration


def _event(payload: bytes, device: str) -> Event:
    event = decode(MessageClass.EVENT, payload, topic=event_topic(device))
    assert isinstance(event, Event)
    return event


def _config(payload: bytes, device: str) -> ConfigChange:
    change = decode(MessageClass.CONFIG, payload, topic=config_topic(device))
    assert isinstance(change, ConfigChange)
    return change


def test_silence_is_announced_within_the_timeout_plus_one_second_and_clears_on_poll(
    tmp_path: Path, mqtt_url: str
) -> None:
    device = unique("meter")
    timeout_s = 1.0
    settings = catalog_settings(tmp_path, mqtt_url=mqtt_url, disconnect_timeout_s=timeout_s)
    with (
        running_catalog(settings) as catalog,
        CatalogClient(catalog.url) as client,
        Watcher(mqtt_url, event_filter(device)) as watcher,
    ):
        last_request = time.monotonic()  # the device's last contact is at or after this
        booted = client.boot(BootRequest(device_id=device, device_type="meter"))
        payload = watcher.next_on(str(event_topic(device)), timeout_s=timeout_s + 10)
        silence_s = time.monotonic() - last_request
        disconnected = _event(payload, device)
        assert (disconnected.kind, disconnected.severity) == (
            "device_disconnected",
            Severity.WARNING,
        )
        # the functional requirement: marked disconnected within timeout + 1 s of silence
        assert timeout_s <= silence_s <= timeout_s + 1.0
        assert client.device(device).status is DeviceStatus.DISCONNECTED

        assert client.poll(device, booted.config_version) is None  # the next poll
        reconnected = _event(watcher.next_on(str(event_topic(device))), device)
        assert (reconnected.kind, reconnected.severity) == ("device_reconnected", Severity.INFO)
        assert reconnected.seq == disconnected.seq + 1
        assert client.device(device).status is DeviceStatus.CONNECTED
        client.delete_device(device)


def test_a_change_is_pushed_at_once_and_a_device_that_missed_it_polls_it(
    tmp_path: Path, mqtt_url: str
) -> None:
    device = unique("meter")
    topic = str(config_topic(device))
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        CatalogClient(catalog.url) as client,
    ):
        first = client.put_device(
            device, DeviceSpec(device_type="meter", location=Location(bus_id=7))
        )
        with Watcher(mqtt_url, config_filter(device)) as watcher:
            retained = _config(watcher.next_on(topic), device)  # a late subscriber gets it too
            assert retained.config_version == first.config_version

            updated = client.put_device(
                device,
                DeviceSpec(
                    device_type="meter", location=Location(bus_id=7), reporting_interval_s=0.25
                ),
            )
            pushed = _config(watcher.next_on(topic), device)
            assert pushed.config_version == updated.config_version > first.config_version
            pushed_settings = DeviceSettings.model_validate(pushed.settings)
            assert pushed_settings.reporting_interval_s == 0.25
            assert pushed_settings.config_version == pushed.config_version

            # a device that was offline during the push still holds the first version
            assert client.poll(device, first.config_version) == pushed_settings
            assert client.poll(device, pushed.config_version) is None

            client.delete_device(device)  # clears the retained configuration
            assert watcher.next_on(topic) == b""


def test_topology_change_pushes_only_the_devices_whose_grid_part_changed(
    tmp_path: Path, private_mosquitto: Callable[[], PrivateMosquitto]
) -> None:
    broker = private_mosquitto()
    upstream, downstream = unique("up"), unique("down")
    settings = catalog_settings(tmp_path, mqtt_url=broker.url)
    with (
        running_catalog(settings) as catalog,
        CatalogClient(catalog.url) as client,
        Watcher(broker.url, config_filter(), topology_filter()) as watcher,
    ):
        up = client.put_device(
            upstream, DeviceSpec(device_type="meter", location=Location(bus_id=7))
        )
        down = client.put_device(
            downstream, DeviceSpec(device_type="meter", location=Location(bus_id=15))
        )
        assert down.grid is not None
        assert down.grid.feeder_id == 300

        client.set_topology({305: SwitchPosition.OPEN}, reason="isolate section 6")

        seen: dict[str, list[int]] = {upstream: [], downstream: []}
        change: TopologyChange | None = None
        pushed: ConfigChange | None = None
        while pushed is None or change is None:
            topic, payload = watcher.next()
            if topic == str(topology_topic()):
                decoded = decode(MessageClass.TOPOLOGY, payload, topic=topic)
                assert isinstance(decoded, TopologyChange)
                change = decoded
                continue
            device = topic.rsplit("/", 1)[1]
            config = _config(payload, device)
            seen[device].append(config.config_version)
            if device == downstream and config.config_version > down.config_version:
                pushed = config
        assert change.topology_version == 1
        assert change.switch_states[305] is SwitchPosition.OPEN
        assert change.switch_states[325] is SwitchPosition.OPEN  # the tie, as in the case
        grid = DeviceSettings.model_validate(pushed.settings).grid
        assert grid is not None
        assert (grid.feeder_id, grid.topology_version) == (None, 1)  # de-energized now

        # the upstream device's part did not change: same version, nothing new pushed to it
        assert client.device(upstream).config_version == up.config_version
        while not watcher.messages.empty():
            topic, payload = watcher.messages.get_nowait()
            if topic == str(config_topic(upstream)):
                seen[upstream].append(_config(payload, upstream).config_version)
        assert all(version == up.config_version for version in seen[upstream])

        # a downstream device that missed the push gets the new settings at its next poll
        polled = client.poll(downstream, down.config_version)
        assert polled is not None
        assert polled.config_version == pushed.config_version


def test_a_new_catalog_configuration_reaches_devices_at_restart(
    tmp_path: Path, private_mosquitto: Callable[[], PrivateMosquitto]
) -> None:
    broker = private_mosquitto()
    device = unique("meter")
    settings = catalog_settings(tmp_path, mqtt_url=broker.url, reporting_interval_s=1.0)
    with running_catalog(settings) as catalog, CatalogClient(catalog.url) as client:
        booted = client.boot(BootRequest(device_id=device, device_type="meter"))

    slower = settings.model_copy(
        update={"catalog": settings.catalog.model_copy(update={"reporting_interval_s": 5.0})}
    )
    with (
        Watcher(broker.url, config_filter(device)) as watcher,
        running_catalog(slower) as catalog,
        CatalogClient(catalog.url) as client,
    ):
        pushed = _config(watcher.next_on(str(config_topic(device))), device)
        assert pushed.config_version > booted.config_version
        assert pushed.settings["reporting_interval_s"] == 5.0
        polled = client.poll(device, booted.config_version)
        assert polled is not None
        assert polled.reporting_interval_s == 5.0
