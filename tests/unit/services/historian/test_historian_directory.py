"""Registered devices from the catalog's REST list, over real HTTP; an outage keeps what is known."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from historian_support import DeviceListServer

from openfeeder.services.historian import CatalogDirectory, OpenDirectory, StaticDirectory
from openfeeder.services.runtime import HttpServer


@pytest.fixture
def directory() -> Iterator[tuple[DeviceListServer, CatalogDirectory]]:
    # more devices than one page holds, so that paging is exercised
    server = DeviceListServer(f"m{i:05d}" for i in range(10_050)).start()
    client = CatalogDirectory(server.url, timeout_s=5)
    yield server, client
    client.close()
    server.stop()


def test_the_catalog_list_is_read_page_by_page(
    directory: tuple[DeviceListServer, CatalogDirectory],
) -> None:
    _, client = directory
    assert not client.known("m00000")
    client.refresh()
    assert client.count == 10_050
    assert client.known("m00000")
    assert client.known("m10049")
    assert not client.known("m10050")


def test_an_unreachable_catalog_keeps_the_known_devices(
    directory: tuple[DeviceListServer, CatalogDirectory], caplog: pytest.LogCaptureFixture
) -> None:
    server, client = directory
    client.refresh()
    server.stop()
    with caplog.at_level(logging.WARNING):
        client.refresh()
    assert client.known("m00042")
    assert client.failures == 1
    assert not client.reachable
    assert "unreachable" in caplog.text


def test_a_plain_list_of_devices_is_accepted_too() -> None:
    app = FastAPI()

    @app.get("/v1/devices")
    def devices() -> list[dict[str, Any]]:
        return [{"id": "a1"}, {"id": "b2"}, {"name": "no id"}]

    import asyncio
    import threading

    server = HttpServer(app, host="127.0.0.1", port=0)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve(stop)))
    thread.start()
    client = CatalogDirectory(server.url, timeout_s=5)
    try:
        while not server.started:
            threading.Event().wait(0.01)
        client.refresh()
        assert client.known("a1")
        assert client.known("b2")
        assert client.count == 2
    finally:
        client.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_open_and_static_directories() -> None:
    assert OpenDirectory().known("anything")
    fixed = StaticDirectory(["m1"])
    fixed.refresh()
    assert fixed.known("m1")
    assert not fixed.known("m2")
