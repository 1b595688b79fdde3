"""The FLISR coordinator against the live twin: real broker, catalog, devices and switches.

Each test runs a turin scenario on an accelerated clock: normal operation, a fault, the feeder
breaker trips; the coordinator locates, isolates and restores over MQTT, and the switch positions
in the twin, the coordinator and the catalog must agree at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openfeeder.config import FlisrSettings, Settings
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.model.cases import load_builtin
from openfeeder.services.flisr.coordinator import FlisrCoordinator
from openfeeder.services.flisr.incident import Incident
from openfeeder.services.flisr.service import FlisrThread
from openfeeder.sim.clock import RealClock, clock_for_speed
from openfeeder.sim.live import LiveTwin
from openfeeder.sim.scenario import FaultEvent, parse_scenario
from openfeeder.sim.twin import Twin
from sim_platform import running_platform

SPEED = 2.0
FAULT_AFTER_S = 1.0


@dataclass
class Run:
    live: LiveTwin
    coordinator: FlisrCoordinator
    catalog: CatalogClient
    url: str


def _scenario(events: Sequence[dict[str, Any]]) -> Any:
    return parse_scenario(
        {
            "scenario": {
                "name": "flisr-test",
                "case": "turin",
                "start": "2026-01-14T17:59:00+01:00",
                "duration_s": 600,
                "step_s": 1.0,
                "seed": 5,
                "speed": SPEED,
            },
            "protection": {"trip_delay_s": 0.3, "reclose_s": []},
            "events": list(events),
        }
    )


def _fault(line: int, distance_m: float, kind: str = "slg") -> FaultEvent:
    return FaultEvent(type="fault", at_s=0.0, kind=kind, line=line, distance_m=distance_m)


@contextmanager
def _running(
    tmp_path: Path,
    fault: FaultEvent,
    events: Sequence[dict[str, Any]] = (),
    variant: str = "central",
) -> Iterator[Run]:
    """The platform, the live twin and the coordinator; ``fault`` injected once all are up."""
    scenario = _scenario(events)
    with running_platform(tmp_path) as platform:
        settings = platform.settings.model_copy(
            update={
                "catalog": platform.settings.catalog.model_copy(
                    update={"url": platform.catalog.base_url}
                ),
                # messages of the twin's hosted devices can take up to a reporting interval to
                # leave (a known latency issue, see README): give late indicators time to arrive
                "flisr": FlisrSettings(
                    listen_port=0,
                    incident_log=tmp_path / "incidents.jsonl",
                    variant=variant,
                    indicator_wait_s=1.5,
                ),
            }
        )
        clock = clock_for_speed(SPEED, scenario.scenario.start_ns)
        twin = Twin(scenario, clock=clock)
        live = LiveTwin(twin, settings, catalog=platform.catalog, case_name="turin")
        live.start()
        try:
            assert live.wait_running(60)
            with FlisrThread(settings, model=twin.model, clock=clock) as service:
                assert service.coordinator is not None
                assert service.url is not None
                live.inject(fault, after_s=FAULT_AFTER_S)
                yield Run(live, service.coordinator, platform.catalog, service.url)
        finally:
            live.stop()


def _finished(coordinator: FlisrCoordinator, timeout_s: float = 40.0) -> Incident:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = coordinator.log.all()
        if found and coordinator.active is None and found[-1].status != "open":
            return found[-1]
        time.sleep(0.05)
    pytest.fail(f"no incident finished; log: {[i.as_dict() for i in coordinator.log.all()]}")


def _consistent(run: Run) -> dict[int, bool]:
    """Twin, coordinator and catalog agree on every switch; the positions."""
    twin_states = run.live.world.switch_states()
    deadline = time.monotonic() + 5
    while run.coordinator.positions() != twin_states and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.coordinator.positions() == twin_states
    catalog = run.catalog.topology().switch_states
    assert {s: p.value == "closed" for s, p in catalog.items()} == twin_states
    return twin_states


def test_fault_is_isolated_restored_and_cleared(tmp_path: Path) -> None:
    with _running(tmp_path, _fault(103, 100.0)) as run:
        incident = _finished(run.coordinator)
        assert incident.status == "restored", incident.as_dict()["timeline"]
        states = _consistent(run)
        # line 103 lies between switches 306 and 307: exactly those are open and locked out
        assert not states[306]
        assert not states[307]
        assert states[300]  # breaker reclosed for the healthy upstream part
        assert states[325]  # the tie feeds the healthy downstream part from feeder 313
        assert sorted(incident.locked_switches) == [306, 307]
        assert run.live.devices["ftu-306"].lockout  # type: ignore[union-attr]
        kinds = [step.kind for step in incident.steps]
        for before, after in [
            ("trip", "located"),
            ("located", "isolated"),
            ("isolated", "restored"),
        ]:
            assert kinds.index(before) < kinds.index(after)
        assert incident.location is not None
        assert incident.location["line_id"] == 103
        assert abs(incident.location["distance_m"] - 100.0) < 50.0
        assert incident.summary["unserved_customers"] == 0
        assert (tmp_path / "incidents.jsonl").read_text().count(incident.incident_id) >= 1

        # the operator clears the repaired fault: back to the case's normal state
        response = __import__("httpx").post(f"{run.url}/v1/incidents/{incident.incident_id}/clear")
        assert response.status_code == 202
        deadline = time.monotonic() + 30
        while incident.status != "cleared" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert incident.status == "cleared", incident.as_dict()
        states = _consistent(run)
        assert states == {
            int(i): bool(c)
            for i, c in zip(
                run.coordinator.model.switch["id"],
                run.coordinator.model.switch["closed"],
                strict=True,
            )
        }
        assert not run.live.devices["ftu-306"].lockout  # type: ignore[union-attr]


def test_switch_that_fails_to_open_widens_isolation_upstream(tmp_path: Path) -> None:
    events = [{"at_s": 0.5, "type": "device_mode", "device": "ftu-306", "mode": "fail"}]
    with _running(tmp_path, _fault(103, 150.0), events) as run:
        incident = _finished(run.coordinator)
        assert incident.status == "restored", incident.as_dict()["timeline"]
        states = _consistent(run)
        assert 306 in incident.failed_switches
        assert states[306]  # stuck closed
        assert not states[305]  # the next switch upstream isolates instead
        assert not states[307]
        assert any(s.kind == "command_failed" and s.detail["switch"] == 306 for s in incident.steps)


def test_tie_that_fails_to_close_ends_in_a_consistent_plan(tmp_path: Path) -> None:
    events = [{"at_s": 0.5, "type": "device_mode", "device": "ftu-325", "mode": "fail"}]
    with _running(tmp_path, _fault(103, 100.0), events) as run:
        incident = _finished(run.coordinator)
        assert incident.status == "restored", incident.as_dict()["timeline"]
        states = _consistent(run)
        assert 325 in incident.failed_switches
        assert not states[325]
        assert states[300]
        # without the tie the sections behind the fault stay dark: reported as unserved
        assert incident.summary["unserved_customers"] > 0
        replans = [s for s in incident.steps if s.kind == "restoration_planned"]
        assert len(replans) >= 2


def test_edge_variant_locates_on_the_feeder_head_device(tmp_path: Path) -> None:
    with _running(tmp_path, _fault(105, 60.0), variant="edge") as run:
        incident = _finished(run.coordinator)
        assert incident.status == "restored", incident.as_dict()["timeline"]
        located = incident.first("located")
        assert located is not None
        assert str(located.detail["by"]).startswith("edge:ftu-300")
        assert located.detail["line"] == 105, located.detail
        states = _consistent(run)
        assert not states[310]
        assert not states[311]


def test_deleted_retained_messages_are_not_handler_errors(tmp_path: Path) -> None:
    settings = Settings(flisr=FlisrSettings(incident_log=tmp_path / "incidents.jsonl"))
    with CatalogClient("http://127.0.0.1:9") as catalog:
        coordinator = FlisrCoordinator(
            settings, model=load_builtin("turin"), clock=RealClock(), catalog=catalog
        )
        coordinator._on_message("openfeeder/v1/status/ftu-300", b"")  # a device removed
        assert coordinator.handler_errors == 0
        coordinator._on_message("openfeeder/v1/status/ftu-300", b"{not json")
        assert coordinator.handler_errors == 1
