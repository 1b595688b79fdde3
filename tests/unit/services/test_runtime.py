"""Service runtime: JSON-line logs, the HTTP server on a free port, clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import httpx
import pytest
from fastapi import FastAPI

from openfeeder.services.runtime import HttpServer, JsonLineFormatter


def test_json_line_formatter_keeps_extra_fields() -> None:
    record = logging.LogRecord(
        "openfeeder.x", logging.WARNING, __file__, 1, "rejected %s", ("a",), None
    )
    record.topic = "openfeeder/v1/meas/m1"
    record.reason = "oversize"
    line = JsonLineFormatter(service="historian").format(record)
    document = json.loads(line)
    assert document["level"] == "warning"
    assert document["service"] == "historian"
    assert document["msg"] == "rejected a"
    assert document["topic"] == "openfeeder/v1/meas/m1"
    assert document["reason"] == "oversize"
    assert document["ts"].endswith("Z")
    assert "\n" not in line


def test_http_server_serves_on_a_free_port_and_stops() -> None:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    async def scenario() -> tuple[int, dict[str, str], int]:
        server = HttpServer(app, host="127.0.0.1", port=0)
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve(stop))
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.02)
            response = await client.get(f"{server.url}/health")
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        return response.status_code, response.json(), server.port

    status, body, port = asyncio.run(scenario())
    assert (status, body) == (200, {"status": "ok"})
    assert port > 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_http_server_names_a_port_in_use() -> None:
    app = FastAPI()
    first = HttpServer(app, host="127.0.0.1", port=0)
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            HttpServer(app, host="127.0.0.1", port=first.port)
    finally:
        asyncio.run(first.serve(_set_event()))


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def test_run_service_stops_cleanly_on_sigterm() -> None:
    program = textwrap.dedent(
        """
        import asyncio, sys
        from openfeeder.config import LoggingSettings
        from openfeeder.services.runtime import configure_logging, run_service

        async def main(stop):
            print("ready", flush=True)
            await stop.wait()
            print("cleaned up", flush=True)

        configure_logging(LoggingSettings(), service="probe")
        sys.exit(run_service(main, name="probe"))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0
    assert out.strip() == "cleaned up"
    events = [json.loads(line).get("event") for line in err.splitlines() if line.startswith("{")]
    assert events == ["starting", "signal", "stopped"]


def test_threads_are_not_left_behind_by_the_server() -> None:
    before = threading.active_count()
    asyncio.run(HttpServer(FastAPI(), host="127.0.0.1", port=0).serve(_set_event()))
    assert threading.active_count() == before
