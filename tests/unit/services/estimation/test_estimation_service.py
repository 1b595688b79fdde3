"""The estimation service on the live twin: real broker, catalog, devices and level plug-ins.

The service deploys the hierarchical estimator's levels to the twin's devices through the
catalog, runs a cycle over MQTT, publishes and stores the result; after a reconfiguration
published to the catalog it re-partitions, redeploys and the next cycle covers the new areas.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import PrivateMosquitto
from openfeeder.config import (
    AgentSettings,
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    EstimationSettings,
    LoggingSettings,
    Settings,
    StorageSettings,
)
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.iot.mqtt import Messenger
from openfeeder.iot.schema import AlgorithmOutput, Event, Severity, decode
from openfeeder.iot.topics import BrokerContext, MessageClass, algorithm_filter
from openfeeder.services.catalog.service import CatalogThread
from openfeeder.services.estimation.coordinator import EstimationCoordinator
from openfeeder.services.estimation.service import EstimationThread
from openfeeder.sim.clock import clock_for_speed
from openfeeder.sim.live import LiveTwin
from openfeeder.sim.scenario import parse_scenario
from openfeeder.sim.twin import Twin
from sim_platform import Platform, running_platform

SPEED = 2.0


@dataclass
class Run:
    live: LiveTwin
    coordinator: EstimationCoordinator
    catalog: CatalogClient
    settings: Settings
    url: str


@contextmanager
def _mosquitto_platform(tmp_path: Path, url: str) -> Iterator[Platform]:
    """The device catalog on a real Mosquitto (the test's own instance, so the twin's fixed
    device ids meet nobody else's)."""
    endpoint = BrokerSettings(url=url, connect_timeout_s=5, keepalive_s=5)
    settings = Settings(
        brokers=BrokersSettings(grid_ops=endpoint, monitoring=endpoint),
        storage=StorageSettings(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        logging=LoggingSettings(level="WARNING"),
        catalog=CatalogSettings(listen_port=0, case="turin", reporting_interval_s=1.0),
        agent=AgentSettings(state_dir=tmp_path / "state"),
    )
    with (
        CatalogThread(settings) as catalog,
        CatalogClient(catalog.url, timeout_s=10) as client,
    ):
        yield Platform(settings, client, url)


@contextmanager
def _running(
    tmp_path: Path, mode: str, *, broker_url: str | None = None, **estimation: Any
) -> Iterator[Run]:
    scenario = parse_scenario(
        {
            "scenario": {
                "name": "estimation-test",
                "case": "turin",
                "start": "2026-01-14T12:00:00+01:00",
                "duration_s": 3600,
                "step_s": 1.0,
                "seed": 7,
                "speed": SPEED,
            },
            "devices": {"dropout_probability": 0.0},
        }
    )
    platform_context = (
        running_platform(tmp_path)
        if broker_url is None
        else _mosquitto_platform(tmp_path, broker_url)
    )
    with platform_context as platform:
        settings = platform.settings.model_copy(
            update={
                "catalog": platform.settings.catalog.model_copy(
                    update={"url": platform.catalog.base_url}
                ),
                # cycles on request only: the test triggers them
                "estimation": EstimationSettings(
                    listen_port=0,
                    mode=mode,  # type: ignore[arg-type]
                    interval_s=3600,
                    storage=tmp_path / "estimates.jsonl",
                    **({"cycle_timeout_s": 20} | estimation),
                ),
            }
        )
        clock = clock_for_speed(SPEED, scenario.scenario.start_ns)
        twin = Twin(scenario, clock=clock)
        live = LiveTwin(twin, settings, catalog=platform.catalog, case_name="turin")
        live.start()
        try:
            assert live.wait_running(60)
            with EstimationThread(settings, model=twin.model, clock=clock) as service:
                assert service.coordinator is not None
                assert service.url is not None
                yield Run(live, service.coordinator, platform.catalog, settings, service.url)
        finally:
            live.stop()


def _plugins_running(run: Run, timeout_s: float = 40.0) -> None:
    """Every hosting device runs its level (the catalog pushed it, the agent loaded it)."""
    deadline = time.monotonic() + timeout_s
    hosts = dict(run.coordinator.hosts)
    while time.monotonic() < deadline:
        waiting = []
        for area, device in hosts.items():
            device_object = run.live.devices[device]
            agent = getattr(device_object, "agent", device_object)  # a switch wraps its agent
            names = {s.name: s.state.value for s in agent.stats().plugins}
            level = run.coordinator.partition.area(area).level.value
            if names.get(f"se_{level}") != "running":
                waiting.append(device)
        if not waiting:
            time.sleep(1.5)  # a reporting interval or two: every device's readings are in
            return
        time.sleep(0.1)
    pytest.fail(f"level plug-ins not running on {waiting}")


def _result(run: Run, reason: str, timeout_s: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for result in list(run.coordinator.results):
            if result["reason"].startswith(reason):
                return result
        time.sleep(0.05)
    pytest.fail(f"no cycle for {reason!r}: {[r['reason'] for r in run.coordinator.results]}")


@pytest.mark.slow
def test_distributed_cycle_on_the_live_twin(tmp_path: Path) -> None:
    with _running(tmp_path, "distributed") as run:
        coordinator = run.coordinator
        assert set(coordinator.hosts) == set(coordinator.partition.names())  # all hosted
        assert coordinator.hosts["mv-500"] == "ftu-300"  # an FTU before a meter
        _plugins_running(run)
        published: list[AlgorithmOutput] = []
        got = threading.Event()

        def seen(topic: str, payload: bytes) -> None:
            message = decode(MessageClass.ALGORITHM, payload, topic=topic)
            assert isinstance(message, AlgorithmOutput)
            published.append(message)
            got.set()

        listener = Messenger(run.settings.brokers, client_id="se-test-listener")
        listener.subscribe(
            algorithm_filter("estimation", "se_state"), seen, context=BrokerContext.MONITORING
        )
        listener.start()
        try:
            assert listener.wait_subscribed(10)  # SUBACK in: the summary cannot miss it
            coordinator.trigger("test")
            result = _result(run, "test")
            assert got.wait(10), "the summary is published on algo/estimation/se_state"
        finally:
            listener.stop()

        assert result["areas_reported"] == 14, result["areas_missing"]
        assert result["estimated_buses"] == 54
        u = np.array([b["u_pu"] for b in result["buses"]], dtype=float)
        assert ((u > 0.95) & (u < 1.05)).all()
        # against the centralized estimate of the readings the service heard meanwhile (the
        # same meters, at most a reporting interval apart)
        central = coordinator.estimate_central(result["t_ns"])
        u_central = np.array([b["u_pu"] for b in central["buses"]], dtype=float)
        assert np.max(np.abs(u - u_central)) < 5e-3
        summary = {r.channel: r.value for r in published[-1].outputs}
        assert summary["cycle"] == result["cycle"]
        assert summary["estimated_buses"] == 54
        lines = (tmp_path / "estimates.jsonl").read_text(encoding="utf-8").splitlines()
        stored = [json.loads(line) for line in lines]
        assert stored[-1]["cycle"] == result["cycle"]
        latest = httpx.get(f"{run.url}/v1/estimates/latest", timeout=10).json()
        assert latest["cycle"] == result["cycle"]
        assert len(latest["buses"]) == 54
        health = httpx.get(f"{run.url}/health", timeout=10).json()
        assert health["status"] == "ok"
        assert health["mode"] == "distributed"


@pytest.mark.slow
def test_areas_follow_a_reconfiguration(tmp_path: Path) -> None:
    """FLISR's reconfiguration published to the catalog: the service re-partitions, the moved
    LV areas' plug-ins report to the other MV area's device, and the cycle covers every
    energized bus of the new topology."""
    with _running(tmp_path, "distributed") as run:
        coordinator = run.coordinator
        _plugins_running(run)
        world = run.live.world
        world.operate_switch(325, True)
        world.operate_switch(306, False)
        world.operate_switch(307, False)
        run.catalog.set_topology({325: "closed", 306: "open", 307: "open"}, reason="test")
        deadline = time.monotonic() + 20
        while coordinator.topology_version == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert coordinator.topology_version > 0
        result = _result(run, "topology")
        partition = coordinator.partition
        assert partition.area("lv-205").parent == "mv-501"
        assert coordinator.hosts["mv-501"] == "ftu-313"
        parameters = next(
            a.parameters
            for a in run.catalog.device(coordinator.hosts["lv-205"]).algorithms
            if a.name == "se_lv"
        )
        assert parameters["parent_device"] == "ftu-313"
        assert 325 not in parameters["open_switches"]
        if result["areas_missing"]:  # a device still on the old settings: the next cycle
            _plugins_running(run)
            coordinator.trigger("again")
            result = _result(run, "again")
        assert result["areas_missing"] == []
        assert result["estimated_buses"] == 52  # buses 14 and 16 are isolated
        by_id = {b["id"]: b["u_pu"] for b in result["buses"]}
        assert by_id[14] is None
        assert by_id[16] is None
        assert by_id[19] is not None


def test_central_mode_cycle(tmp_path: Path) -> None:
    with _running(tmp_path, "central") as run:
        time.sleep(2.0)  # readings of every device
        run.coordinator.trigger("test")
        result = _result(run, "test")
        assert result["mode"] == "central"
        assert result["estimated_buses"] == 54
        assert result["measurements"] >= 26  # 14 devices: a voltage and a power each


def test_bad_data_event_runs_a_cycle_at_once(tmp_path: Path) -> None:
    """A level that removed bad data raises a ``bad_data`` event: the service runs a cycle then,
    not at its next interval (an hour here); a second alarm within a quarter interval does not
    run another."""
    with _running(tmp_path, "central") as run:
        time.sleep(1.0)
        device = f"se-bad-{uuid.uuid4().hex[:8]}"
        sender = Messenger(run.settings.brokers, client_id=device)
        sender.start()
        try:
            assert sender.wait_connected(10)
            for seq in (1, 2):
                sender.publish(
                    Event(
                        device_id=device,
                        seq=seq,
                        t_ns=time.time_ns(),
                        kind="bad_data",
                        severity=Severity.WARNING,
                        message="area lv-205: bad data removed: meter-405:pq",
                    )
                )
            result = _result(run, f"bad data at {device}", timeout_s=20)
            time.sleep(1.0)
        finally:
            sender.stop()
        assert result["estimated_buses"] == 54
        alarms = [r for r in run.coordinator.results if r["reason"].startswith("bad data")]
        assert len(alarms) == 1, [r["reason"] for r in run.coordinator.results]


@pytest.mark.slow
def test_a_silent_child_is_reported_missing(tmp_path: Path) -> None:
    """The device running lv-210 stops: its parent waits ``child_timeout_s`` for its
    equivalent, then estimates with that area's loads as pseudo-measurements; the cycle
    completes, says which area is missing and covers every other bus."""
    with _running(tmp_path, "distributed", child_timeout_s=1.0, cycle_timeout_s=8.0) as run:
        coordinator = run.coordinator
        _plugins_running(run)
        host = coordinator.hosts["lv-210"]
        device = run.live.devices[host]
        getattr(device, "agent", device).stop()
        coordinator.trigger("silent child")
        result = _result(run, "silent child", timeout_s=30)
        assert result["areas_missing"] == ["lv-210"]
        assert result["areas_reported"] == 13
        missing = set(coordinator.partition.area("lv-210").own_bus_ids.tolist())
        by_id = {b["id"]: b["u_pu"] for b in result["buses"]}
        assert all(by_id[bus] is None for bus in missing)
        assert all(u is not None for bus, u in by_id.items() if bus not in missing)
        assert result["estimated_buses"] == 54 - len(missing)


@pytest.mark.integration
@pytest.mark.slow
def test_distributed_cycle_through_mosquitto(
    tmp_path: Path, private_mosquitto: Callable[[], PrivateMosquitto]
) -> None:
    """The whole distributed cycle (catalog pushes, the levels' messages up and down, the
    service's assembly) through a real Mosquitto instead of the embedded broker."""
    broker = private_mosquitto()
    with _running(tmp_path, "distributed", broker_url=broker.url) as run:
        coordinator = run.coordinator
        _plugins_running(run)
        coordinator.trigger("mosquitto")
        result = _result(run, "mosquitto")
        if result["areas_missing"]:  # a level still loading when the cycle began
            _plugins_running(run)
            coordinator.trigger("mosquitto again")
            result = _result(run, "mosquitto again")
        assert result["areas_missing"] == []
        assert result["estimated_buses"] == 54
        central = coordinator.estimate_central(result["t_ns"])
        u = np.array([b["u_pu"] for b in result["buses"]], dtype=float)
        u_central = np.array([b["u_pu"] for b in central["buses"]], dtype=float)
        assert np.max(np.abs(u - u_central)) < 5e-3
