"""Helpers shared by the catalog tests: settings, a running catalog, an MQTT watcher."""

from __future__ import annotations

import contextlib
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openfeeder.config import (
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    LoggingSettings,
    Settings,
    StorageSettings,
)
from openfeeder.iot.mqtt import MqttLink
from openfeeder.iot.topics import TopicFilter
from openfeeder.services.catalog import CatalogThread

UNREACHABLE_MQTT = "mqtt://127.0.0.1:1"
"""Nothing listens on port 1: the catalog runs without a broker."""


def unique(prefix: str) -> str:
    """An id no other test run uses (the broker may be shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def catalog_settings(
    tmp_path: Path,
    *,
    mqtt_url: str = UNREACHABLE_MQTT,
    storage_url: str | None = None,
    **catalog: Any,
) -> Settings:
    """Settings for a catalog on a free port with its own SQLite file (or ``storage_url``)."""
    broker = BrokerSettings(url=mqtt_url, connect_timeout_s=5)
    return Settings(
        brokers=BrokersSettings(grid_ops=broker, monitoring=broker),
        storage=StorageSettings(url=storage_url or f"sqlite:///{tmp_path / 'catalog.db'}"),
        logging=LoggingSettings(level="WARNING"),
        catalog=CatalogSettings(listen_port=0, **catalog),
    )


@contextlib.contextmanager
def running_catalog(settings: Settings, **options: Any) -> Iterator[CatalogThread]:
    catalog = CatalogThread(settings, client_id=unique("catalog"), **options)
    catalog.start()
    try:
        yield catalog
    finally:
        catalog.stop()


class Watcher:
    """A paho client (through MqttLink) that collects the messages of some filters."""

    def __init__(self, mqtt_url: str, *filters: TopicFilter | str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._link = MqttLink(BrokerSettings(url=mqtt_url), client_id=unique("watcher"))
        for topic_filter in filters:
            self._link.subscribe(topic_filter, self._on_message)
        self._probe_topic = f"openfeeder-test/probe/{unique('probe')}"
        self._probed: queue.Queue[bytes] = queue.Queue()
        self._link.subscribe(self._probe_topic, lambda _topic, data: self._probed.put(data))

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.messages.put((topic, payload))

    def __enter__(self) -> Watcher:
        self._link.start()
        if not self._link.wait_connected(10):
            self._link.stop()
            raise RuntimeError("the watcher could not connect to the broker")
        # The broker handles one client's packets in order: once the probe comes back, the
        # subscriptions sent before it are in place.
        try:
            self._link.publish(self._probe_topic, b"probe")
            self._probed.get(timeout=10)
        except BaseException:
            self._link.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._link.stop()

    def next(self, timeout_s: float = 10.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout_s)

    def next_on(self, topic: str, timeout_s: float = 10.0) -> bytes:
        """The next message on ``topic`` (others are skipped)."""
        while True:
            received, payload = self.messages.get(timeout=timeout_s)
            if received == topic:
                return payload
