"""The historian against the real Mosquitto: storing, committed marks, rejections, restarts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from historian_support import (
    DeviceListServer,
    MarkWatcher,
    Publisher,
    data_dropped,
    historian_settings,
    measurement,
    sqlite_url,
    unique,
    wait_until,
)

from openfeeder.config import Settings
from openfeeder.iot.schema import encode
from openfeeder.iot.topics import measurement_topic
from openfeeder.services.historian import HistorianThread

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Rig:
    """Two registered meters, the catalog listing them, a publisher and a committed-mark watcher."""

    mqtt_url: str
    devices: list[str]
    catalog: DeviceListServer
    publisher: Publisher
    watcher: MarkWatcher

    def settings(self, storage_url: str) -> Settings:
        return historian_settings(
            storage_url=storage_url, mqtt_url=self.mqtt_url, catalog_url=self.catalog.url
        )


@pytest.fixture
def rig(mqtt_url: str) -> Iterator[Rig]:
    devices = [unique("meter"), unique("meter")]
    catalog = DeviceListServer(devices).start()
    publisher = Publisher(mqtt_url)
    watcher = MarkWatcher(mqtt_url, devices)
    try:
        yield Rig(mqtt_url, devices, catalog, publisher, watcher)
    finally:
        watcher.stop()
        publisher.stop()
        catalog.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_measurements_are_stored_and_their_mark_published(storage_url: str, rig: Rig) -> None:
    first, second = rig.devices
    with HistorianThread(rig.settings(storage_url), instance=unique("h")) as running:
        rig.publisher.measurements(first, range(30))
        rig.publisher.measurements(second, [0, 1, 2, 4])  # 3 is missing: the mark stops at 2
        store = running.historian.store
        assert wait_until(lambda: store.message_count() == 34)
        assert rig.watcher.wait_for(first, 29)
        assert rig.watcher.wait_for(second, 2)
        assert store.stored_seqs(first) == list(range(30))
        counters = running.historian.counters()
        assert counters.messages_stored == 34
        assert counters.gaps == 1
        assert counters.missing == 1
        rig.publisher.measurements(second, [3])
        assert rig.watcher.wait_for(second, 4)
        assert running.historian.marks()[second] == 4


def test_bad_messages_are_rejected_counted_and_not_stored(
    tmp_path: Path, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    device = rig.devices[0]
    stranger = unique("stranger")
    topic = str(measurement_topic(device))
    outside = f"openfeeder/v1/meas/{device}!"  # '!' is not allowed in a device id
    good = json.loads(encode(measurement(device, 0)))
    bad = [
        (topic, b'{"schema_version": 1, "device_id": ', "malformed_json"),
        (topic, json.dumps({**good, "schema_version": 2}).encode(), "unknown_schema_version"),
        (topic, json.dumps({**good, "padding": "x" * 70_000}).encode(), "oversize"),
        (topic, json.dumps({**good, "seq": -1}).encode(), "invalid_payload"),
        (topic, json.dumps({**good, "device_id": rig.devices[1]}).encode(), "device_mismatch"),
        (outside, encode(measurement(device, 1)), "unknown_topic"),
        (str(measurement_topic(stranger)), encode(measurement(stranger, 0)), "unknown_device"),
    ]
    settings = rig.settings(sqlite_url(tmp_path))
    with (
        caplog.at_level(logging.WARNING, logger="openfeeder.services.historian"),
        HistorianThread(settings, instance=unique("h")) as running,
    ):
        for bad_topic, payload, _ in bad:
            rig.publisher.raw(bad_topic, payload)
        rig.publisher.measurements(device, [5])  # and the historian still works
        historian = running.historian
        assert wait_until(lambda: historian.store.message_count() == 1)
        ours = {bad_topic for bad_topic, _, _ in bad}

        def rejections() -> list[tuple[str, str]]:
            return sorted(
                (str(getattr(r, "topic", "")), str(getattr(r, "reason", "")))
                for r in caplog.records
                if getattr(r, "topic", None) in ours
            )

        # one structured log line per rejection (the broker may be shared with other tests)
        expected = sorted((bad_topic, reason) for bad_topic, _, reason in bad)
        assert wait_until(lambda: rejections() == expected), rejections()
        counted = historian.counters().rejected
        assert all(counted.get(reason, 0) >= 1 for _, _, reason in bad), counted
        assert historian.store.stored_seqs(device) == [5]
        assert historian.store.device(stranger) is None
        assert historian.health().status == "ok"


def test_a_device_registered_later_is_accepted_after_a_refresh(tmp_path: Path, rig: Rig) -> None:
    newcomer = unique("newcomer")
    settings = rig.settings(sqlite_url(tmp_path))
    with HistorianThread(settings, instance=unique("h")) as running:
        historian = running.historian

        def rejected_as_unknown() -> bool:
            rig.publisher.measurements(newcomer, [0])  # again until the intake is subscribed
            return historian.counters().rejected.get("unknown_device", 0) >= 1

        assert wait_until(rejected_as_unknown, timeout_s=10, interval_s=0.3)
        rig.catalog.device_ids.add(newcomer)

        def stored_after_a_resend() -> bool:
            rig.publisher.measurements(newcomer, [1])  # a meter re-sends until its mark moves
            return 1 in historian.store.stored_seqs(newcomer)

        assert wait_until(stored_after_a_resend, timeout_s=10, interval_s=0.3)


def test_a_restart_resumes_with_nothing_lost_or_duplicated(tmp_path: Path, rig: Rig) -> None:
    device = rig.devices[0]
    settings = rig.settings(sqlite_url(tmp_path))
    instance = unique("h")
    with HistorianThread(settings, instance=instance) as running:
        rig.publisher.measurements(device, range(50))
        assert wait_until(lambda: running.historian.store.message_count() == 50)
    # Down: the broker queues for the historian's persistent session.
    rig.publisher.measurements(device, range(50, 100))
    rig.publisher.measurements(device, range(40, 60))  # a meter re-sending part of its buffer
    with HistorianThread(settings, instance=instance) as running:
        store = running.historian.store
        assert wait_until(lambda: store.message_count() == 100)
        assert rig.watcher.wait_for(device, 99)
        assert wait_until(lambda: running.historian.counters().duplicates_ignored >= 10)
        assert store.stored_seqs(device) == list(range(100))  # each (device, seq) once


def test_a_data_dropped_event_lets_the_mark_pass_the_lost_range(tmp_path: Path, rig: Rig) -> None:
    device = rig.devices[0]
    settings = rig.settings(sqlite_url(tmp_path))
    with HistorianThread(settings, instance=unique("h")) as running:
        rig.publisher.measurements(device, [*range(5), *range(10, 15)])
        assert rig.watcher.wait_for(device, 4)
        rig.publisher.event(data_dropped(device, 5, 9))
        assert rig.watcher.wait_for(device, 14)
        losses = running.historian.store.losses(device)
        assert [(x.first_seq, x.last_seq) for x in losses] == [(5, 9)]
        assert running.historian.counters().losses_recorded == 1
