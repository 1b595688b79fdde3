"""``openfeeder historian serve`` and ``query``: a real process stopped by SIGTERM, a real query."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from historian_support import (
    DeviceListServer,
    Publisher,
    historian_settings,
    sqlite_url,
    unique,
    wait_until,
)

from openfeeder.cli.historian_cmd import historian_group
from openfeeder.errors import OpenFeederError
from openfeeder.services.historian import HistorianThread


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(historian_group, ["--help"])
    assert result.exit_code == 0
    assert "serve" in result.output
    assert "query" in result.output


@pytest.mark.integration
def test_serve_runs_until_sigterm_and_exits_0(tmp_path: Path, mqtt_url: str) -> None:
    config = tmp_path / "openfeeder.toml"
    config.write_text(
        f'[brokers.grid_ops]\nurl = "{mqtt_url}"\n[brokers.monitoring]\nurl = "{mqtt_url}"\n'
        f'[storage]\nurl = "{sqlite_url(tmp_path)}"\n[logging]\njson_lines = true\n'
        f'[historian]\nlisten_port = 0\nshared_group = "{unique("grp")}"\n'
        "require_registered_devices = false\nsession_expiry_s = 15\n",
        encoding="utf-8",
    )
    code = "import sys; from openfeeder.cli.historian_cmd import historian_group; historian_group()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--config", str(config), "--instance", unique("h")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.rsplit(" ", 1)[-1].strip()
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["backend"] == "sqlite"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _, errors = process.communicate()
    events = [json.loads(line).get("event") for line in errors.splitlines() if line.startswith("{")]
    assert "signal" in events
    assert "stopped" in events


@pytest.fixture
def running_url(tmp_path: Path, mqtt_url: str) -> Iterator[tuple[str, str]]:
    device = unique("meter")
    catalog = DeviceListServer([device]).start()
    settings = historian_settings(
        storage_url=sqlite_url(tmp_path), mqtt_url=mqtt_url, catalog_url=catalog.url
    )
    publisher = Publisher(mqtt_url)
    try:
        with HistorianThread(settings, instance=unique("h")) as running:
            publisher.measurements(device, range(6))
            assert wait_until(lambda: running.historian.store.stored_seqs(device) == [*range(6)])
            yield running.url, device
    finally:
        publisher.stop()
        catalog.stop()


@pytest.mark.integration
def test_query_prints_raw_readings_and_buckets(running_url: tuple[str, str]) -> None:
    url, device = running_url
    runner = CliRunner()
    raw = runner.invoke(historian_group, ["query", device, "--channel", "u_a", "--url", url])
    assert raw.exit_code == 0, raw.output
    assert "235" in raw.output
    assert "6 readings" in raw.output
    start = "1970-01-01T00:16:42"  # 1002 s
    buckets = runner.invoke(
        historian_group,
        ["query", device, "--channel", "u_a", "--start", start, "--bucket", "60", "--url", url],
    )
    assert buckets.exit_code == 0, buckets.output
    assert "1 bucket" in buckets.output
    assert "233.5" in buckets.output
    as_json = runner.invoke(
        historian_group, ["query", device, "--channel", "i_a", "--url", url, "--json"]
    )
    assert json.loads(as_json.output)["unit"] == "A"


@pytest.mark.integration
def test_query_of_an_unknown_device_fails_with_the_problem(running_url: tuple[str, str]) -> None:
    url, _ = running_url
    with pytest.raises(OpenFeederError, match="404"):
        historian_group.main(
            ["query", "nobody", "--channel", "u_a", "--url", url], standalone_mode=False
        )
    bad_time = CliRunner().invoke(
        historian_group, ["query", "x", "--channel", "u_a", "--start", "yesterday", "--url", url]
    )
    assert bad_time.exit_code == 2
    assert "--start" in bad_time.output
