"""``openfeeder catalog``: serve as a real process, and the client commands against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from catalog_helpers import UNREACHABLE_MQTT, unique
from click.testing import CliRunner

from openfeeder.cli.catalog_cmd import catalog_group

_LAUNCH = "from openfeeder.cli.catalog_cmd import catalog_group; catalog_group()"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``catalog serve`` in its own process on a free port; stopped with SIGTERM afterwards."""
    config = tmp_path / "openfeeder.toml"
    config.write_text(
        f'[brokers.grid_ops]\nurl = "{UNREACHABLE_MQTT}"\n'
        f'[brokers.monitoring]\nurl = "{UNREACHABLE_MQTT}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "catalog.db"}"\n'
        '[logging]\nlevel = "INFO"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("openfeeder catalog listening on http://127.0.0.1:"), line
        yield line.split()[-1], process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_serve_runs_until_sigterm_and_exits_0(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = served
    runner = CliRunner()
    result = runner.invoke(catalog_group, ["devices", "--url", url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=20)
    assert process.returncode == 0
    events = [json.loads(line).get("event") for line in err.splitlines() if line.startswith("{")]
    assert events[0] == "starting"
    assert "signal" in events
    assert events[-1] == "stopped"


def test_client_commands(served: tuple[str, subprocess.Popen[str]], tmp_path: Path) -> None:
    url, _process = served
    runner = CliRunner()
    package = tmp_path / "fault_detect.py"
    package.write_bytes(b"def run(inputs):\n    return {}\n")
    upload = runner.invoke(
        catalog_group,
        [
            "upload-algorithm",
            str(package),
            "--name",
            "fault-detect",
            "--version",
            "1.0",
            "--url",
            url,
        ],
    )
    assert upload.exit_code == 0, upload.output
    assert "sha256" in upload.output
    assert f"{url}/v1/algorithms/fault-detect/1.0" in upload.output

    topology = runner.invoke(
        catalog_group,
        ["topology", "set", "325=closed", "312=open", "--url", url, "--reason", "test"],
    )
    assert topology.exit_code == 0, topology.output
    assert "topology version 1" in topology.output
    assert "312" in topology.output
    shown = runner.invoke(catalog_group, ["topology", "show", "--url", url, "--json"])
    assert json.loads(shown.output)["switch_states"]["325"] == "closed"

    devices = runner.invoke(catalog_group, ["devices", "--url", url])
    assert devices.exit_code == 0
    assert "0 devices" in devices.output
    services = runner.invoke(catalog_group, ["services", "--url", url, "--json"])
    assert services.exit_code == 0
    assert json.loads(services.output) == []


def test_topology_set_checks_its_arguments() -> None:
    result = CliRunner().invoke(catalog_group, ["topology", "set", "325=ajar"])
    assert result.exit_code == 2
    assert "SWITCH_ID=open or SWITCH_ID=closed" in result.output


def test_a_client_command_without_a_catalog_fails_naming_the_url() -> None:
    url = f"http://127.0.0.1:1/{unique('nowhere')}"
    result = CliRunner().invoke(catalog_group, ["devices", "--url", url])
    assert result.exit_code != 0
    assert url in str(result.exception)
