"""The historian through a broker restart (a private Mosquitto it may stop): it reconnects, resumes."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from historian_support import (
    DeviceListServer,
    MarkWatcher,
    Publisher,
    historian_settings,
    sqlite_url,
    unique,
    wait_until,
)

from conftest import PrivateMosquitto
from openfeeder.services.historian import HistorianThread

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["clean-stop", "kill-9"])
def test_the_historian_reconnects_after_a_broker_restart_and_keeps_storing(
    tmp_path: Path, private_mosquitto: Callable[[], PrivateMosquitto], sig: signal.Signals
) -> None:
    broker = private_mosquitto()
    device = unique("meter")
    catalog = DeviceListServer([device]).start()
    settings = historian_settings(
        storage_url=sqlite_url(tmp_path), mqtt_url=broker.url, catalog_url=catalog.url
    )
    try:
        with HistorianThread(settings, instance=unique("h")) as running:
            historian = running.historian
            publisher = Publisher(broker.url)
            publisher.measurements(device, range(50))
            publisher.stop()
            assert wait_until(lambda: historian.store.stored_seqs(device) == [*range(50)])
            broker.stop(sig)
            assert wait_until(lambda: not historian.mqtt_connected["monitoring"])
            broker.start()  # same port, same persistence directory
            assert historian.wait_ready(20)
            publisher = Publisher(broker.url)
            watcher = MarkWatcher(broker.url, [device])
            try:
                publisher.measurements(device, range(50, 100))
                assert watcher.wait_for(device, 99, timeout_s=20)
            finally:
                watcher.stop()
                publisher.stop()
            assert historian.store.stored_seqs(device) == [*range(100)]
            assert historian.health().status == "ok"
    finally:
        catalog.stop()
