"""Smoke tests of ``openfeeder agent``, ``openfeeder meters`` and ``openfeeder algorithm``.

The commands are not registered in ``openfeeder.cli`` by this module's owner, so they are invoked
through their click objects (in-process) or ``python -c`` (as real processes, with signals).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_support import Collector, LoopbackCatalog, clear_retained, new_device_id
from click.testing import CliRunner

from openfeeder.cli.agent_cmd import algorithm_group
from openfeeder.iot.agent.packages import package_sha256
from openfeeder.iot.schema import LinkState, Status
from openfeeder.iot.topics import measurement_filter, status_filter
from openfeeder.model.cases import resolve_case


def test_algorithm_package_builds_a_builtin_and_a_folder(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "energy.zip"
    result = runner.invoke(algorithm_group, ["package", "energy", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert f"sha256 {package_sha256(target.read_bytes())}" in result.output
    assert "energy 1.0.0" in result.output

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "manifest.json").write_text(
        '{"name": "mine", "version": "0.1", "entry": "mine:Mine", "outputs": []}'
    )
    (folder / "mine.py").write_text("class Mine: ...\n")
    result = runner.invoke(algorithm_group, ["package", str(folder), "-o", str(tmp_path / "m.zip")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.zip").stat().st_size > 0


def test_algorithm_package_refuses_what_is_not_a_package(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        algorithm_group, ["package", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.zip")]
    )
    assert result.exit_code == 2
    assert "neither a folder with manifest.json nor a built-in algorithm" in result.output
    assert not (tmp_path / "x.zip").exists()


def test_algorithm_builtin_list() -> None:
    result = CliRunner().invoke(algorithm_group, ["builtin-list", "--json"])
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["energy"]["outputs"] == ["e_p_import [Wh]", "e_p_export [Wh]", "e_q [varh]"]
    assert rows["voltage_monitor"]["inputs"] == ["u_a", "u_b", "u_c"]


@pytest.fixture
def catalog(mqtt_url: str) -> Iterator[LoopbackCatalog]:
    server = LoopbackCatalog(mqtt_url, reporting_interval_s=0.2).start()
    yield server
    server.stop()


def _config(tmp_path: Path, catalog: LoopbackCatalog, mqtt_url: str) -> Path:
    path = tmp_path / "openfeeder.toml"
    path.write_text(
        f'[brokers.grid_ops]\nurl = "{mqtt_url}"\n[brokers.monitoring]\nurl = "{mqtt_url}"\n'
        f'[catalog]\nurl = "{catalog.url}"\ncase = "turin"\n'
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    return path


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


@pytest.mark.integration
def test_agent_command_runs_until_sigterm_and_stops_cleanly(
    catalog: LoopbackCatalog, mqtt_url: str, tmp_path: Path
) -> None:
    device = new_device_id("cli")
    config = _config(tmp_path, catalog, mqtt_url)
    code = "import sys; from openfeeder.cli.agent_cmd import agent_command; agent_command.main(sys.argv[1:])"
    with Collector(mqtt_url, str(status_filter(device)), str(measurement_filter(device))) as seen:
        process = subprocess.Popen(
            _python(code, "--id", device, "--config", str(config), "--bus", "7"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            seen.wait_for(lambda t, _p: "/meas/" in t, timeout_s=20)
            request = catalog.boot_requests[device]
            assert request.location is not None
            assert (request.location.case, request.location.bus_id) == ("turin", 7)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, err[-2000:]
        seen.wait_for(
            lambda t, p: (
                "/status/" in t
                and Status.model_validate_json(p).state is LinkState.OFFLINE
                and Status.model_validate_json(p).reason == "shutdown"
            )
        )
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {log["service"] for log in logs} == {"agent"}
    assert any(log.get("event") == "signal" for log in logs)
    clear_retained(mqtt_url, device)


@pytest.mark.integration
def test_meters_command_runs_several_agents_for_a_duration(
    catalog: LoopbackCatalog, mqtt_url: str, tmp_path: Path
) -> None:
    prefix = f"{new_device_id('fleet')}-"
    config = _config(tmp_path, catalog, mqtt_url)
    code = "import sys; from openfeeder.cli.agent_cmd import meters_command; meters_command.main(sys.argv[1:])"
    result = subprocess.run(
        _python(
            code, "--count", "3", "--prefix", prefix, "--config", str(config), "--duration", "3"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("3 meters for ")
    assert "messages" in result.stdout
    # each meter was placed on its own load bus of the case: the catalog learns where at boot
    locations = [catalog.boot_requests[f"{prefix}{index}"].location for index in range(3)]
    buses = [location.bus_id for location in locations if location is not None]
    assert len(set(buses)) == 3
    assert set(buses) <= set(resolve_case("turin").load["bus"].tolist())
    for index in range(3):
        clear_retained(mqtt_url, f"{prefix}{index}")
