"""Helpers for the historian's service tests: a device list over real HTTP, publishers, watchers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query

from openfeeder.config import (
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    HistorianSettings,
    Settings,
    StorageSettings,
)
from openfeeder.iot.mqtt import MqttLink
from openfeeder.iot.schema import (
    Committed,
    Event,
    Measurement,
    Quality,
    Reading,
    Severity,
    Unit,
    decode,
    encode,
)
from openfeeder.iot.topics import MessageClass, committed_filter, event_topic, measurement_topic
from openfeeder.services.runtime import HttpServer

SECOND_NS = 1_000_000_000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 15.0, interval_s: float = 0.02
) -> bool:
    """Poll until ``predicate()`` holds; False if it never did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class DeviceListServer:
    """A tiny stand-in for the catalog's ``GET /v1/devices`` (paged like the catalog), on loopback."""

    def __init__(self, device_ids: Iterable[str]) -> None:
        self.device_ids = set(device_ids)
        app = FastAPI()

        @app.get("/v1/devices")
        def devices(offset: int = Query(0), limit: int = Query(1000)) -> dict[str, Any]:
            ids = sorted(self.device_ids)
            page = [{"device_id": d, "device_type": "meter"} for d in ids[offset : offset + limit]]
            return {"total": len(ids), "offset": offset, "devices": page}

        self._server = HttpServer(app, host="127.0.0.1", port=0)
        self.url = self._server.url
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self._server.serve(self._stop))
        self._loop.close()

    def start(self) -> DeviceListServer:
        self._thread.start()
        if not wait_until(lambda: self._server.started, timeout_s=10):
            raise RuntimeError("device list server did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


def historian_settings(
    *,
    storage_url: str,
    mqtt_url: str,
    catalog_url: str = "http://127.0.0.1:9",
    require_registered: bool = True,
) -> Settings:
    broker = BrokerSettings(url=mqtt_url)
    return Settings(
        brokers=BrokersSettings(grid_ops=broker, monitoring=broker),
        storage=StorageSettings(url=storage_url),
        catalog=CatalogSettings(url=catalog_url, request_timeout_s=2),
        historian=HistorianSettings(
            listen_port=0,
            shared_group=unique("grp"),
            batch_max_delay_ms=20,
            committed_interval_ms=50,
            session_expiry_s=15,  # long enough for the restart tests; short on a shared broker
            require_registered_devices=require_registered,
            device_refresh_interval_s=0.2,
        ),
    )


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'historian.db'}"


def measurement(device: str, seq: int, *, u_a: float | None = None) -> Measurement:
    readings = (
        Reading(
            channel="u_a",
            value=230.0 + seq if u_a is None else u_a,
            unit=Unit.V,
            quality=Quality.GOOD,
        ),
        Reading(channel="i_a", value=12.5, unit=Unit.A, quality=Quality.GOOD),
    )
    return Measurement(device_id=device, seq=seq, t_ns=(1_000 + seq) * SECOND_NS, values=readings)


def data_dropped(device: str, first: int, last: int) -> Event:
    return Event(
        device_id=device,
        seq=0,
        t_ns=2_000 * SECOND_NS,
        kind="data_dropped",
        severity=Severity.WARNING,
        message=f"buffer full: {first}..{last} dropped",
        values=(
            Reading(channel="first_seq", value=first, unit=Unit.ONE, quality=Quality.GOOD),
            Reading(channel="last_seq", value=last, unit=Unit.ONE, quality=Quality.GOOD),
        ),
    )


class Publisher:
    """A plain MQTT client that publishes what a meter (or a broken one) would."""

    def __init__(self, mqtt_url: str) -> None:
        self.link = MqttLink(BrokerSettings(url=mqtt_url), client_id=unique("pub"))
        self.link.start()
        if not self.link.wait_connected(10):
            raise RuntimeError("publisher did not connect")

    def raw(self, topic: str, payload: bytes) -> None:
        if not self.link.publish(topic, payload).wait(10):
            raise RuntimeError(f"{topic}: not acknowledged")

    def measurements(self, device: str, seqs: Iterable[int]) -> None:
        handle = None
        for seq in seqs:
            handle = self.link.publish(measurement_topic(device), encode(measurement(device, seq)))
        if handle is not None and not handle.wait(10):
            raise RuntimeError("measurements not acknowledged")

    def event(self, event: Event) -> None:
        self.raw(str(event_topic(event.device_id)), encode(event))

    def stop(self) -> None:
        self.link.stop()


class MarkWatcher:
    """Collects the retained ``Committed`` marks of some devices from the grid_ops broker."""

    def __init__(self, mqtt_url: str, devices: Iterable[str]) -> None:
        self.highest: dict[str, int] = {}
        self.link = MqttLink(BrokerSettings(url=mqtt_url), client_id=unique("watch"))
        for device in devices:
            self.link.subscribe(committed_filter(device), self._on_message)
        self.link.start()
        if not self.link.wait_subscribed(10):
            raise RuntimeError("watcher did not connect and subscribe")

    def _on_message(self, topic: str, payload: bytes) -> None:
        committed = decode(MessageClass.COMMITTED, payload, topic=topic)
        if isinstance(committed, Committed):
            mark = max(self.highest.get(committed.device_id, -1), committed.high_water_seq)
            self.highest[committed.device_id] = mark

    def wait_for(self, device: str, mark: int, *, timeout_s: float = 15.0) -> bool:
        return wait_until(lambda: self.highest.get(device, -1) >= mark, timeout_s=timeout_s)

    def stop(self) -> None:
        self.link.stop()
