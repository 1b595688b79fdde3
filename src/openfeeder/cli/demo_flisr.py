"""``openfeeder demo``: a self-healing grid in one command.

One process starts the whole platform on embedded defaults: the MQTT broker, the device catalog and
the historian (SQLite in a temporary folder), the digital twin of the case with every device a
platform device (meters, FTUs with fault indicators and recorders, remote-controlled switches), and
the FLISR coordinator. The grid runs normally for a while (devices boot, report, get stored); then a
fault is injected on a line, the feeder breaker trips, and the coordinator locates, isolates and
restores. The timeline is printed as it happens; then a summary: customers interrupted, restored and
left isolated, the time of each step, and the end-to-end time next to the IEC 61850-5 transfer-time
class it meets and seed 003's figures. Everything started is stopped before it returns.

Secured by default: a throwaway CA in the temporary folder, service certificates, devices that
enrol with the catalog, mutual TLS 1.3 on the broker with the ACL the catalog keeps, HTTPS
(:mod:`openfeeder.cli.demo_security`). ``--insecure`` runs it all in plain text; the header says
which.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from openfeeder.cli.demo_iot import DemoSettings, demo_settings
from openfeeder.cli.demo_security import DEMO_HISTORIAN_INSTANCE
from openfeeder.config import FlisrSettings, Settings
from openfeeder.errors import ConfigError, OpenFeederError
from openfeeder.iot.agent.identity import catalog_client
from openfeeder.model.grid import GridModel
from openfeeder.model.topology import analyze_topology
from openfeeder.services.flisr.coordinator import FlisrCoordinator
from openfeeder.services.flisr.incident import Incident, Step
from openfeeder.services.flisr.service import FlisrThread
from openfeeder.services.historian.service import HistorianThread
from openfeeder.sim.clock import NS_PER_S, clock_for_speed
from openfeeder.sim.live import LiveTwin
from openfeeder.sim.scenario import FaultEvent, parse_scenario
from openfeeder.sim.twin import TimelineEntry, Twin

__all__ = [
    "TRANSFER_TIME_CLASSES",
    "DemoOptions",
    "parse_fault",
    "run_flisr_demo",
    "transfer_time_class",
]

_LOG = logging.getLogger(__name__)

TRANSFER_TIME_CLASSES: Final = (
    ("TT6", 3.0),
    ("TT5", 10.0),
    ("TT4", 20.0),
    ("TT3", 100.0),
    ("TT2", 500.0),
    ("TT1", 1000.0),
)
"""IEC 61850-5 transfer-time classes: the largest time (ms) each allows; above 1 s it is TT0."""

SEED_003_S: Final = {"Raspberry Pi (worst case)": 10.5, "laptop": 2.5}
"""Seed 003's FLISR times, fault to restoration, for comparison."""

_START: Final = "2026-01-14T17:59:00+01:00"  # a winter evening peak in Turin
_FINISHED: Final = frozenset({"restored", "failed", "transient", "cleared"})


def transfer_time_class(ms: float) -> str:
    """The most demanding IEC 61850-5 transfer-time class that ``ms`` meets."""
    for name, limit in TRANSFER_TIME_CLASSES:
        if ms <= limit:
            return f"{name} (<= {limit:g} ms)"
    return "TT0 (> 1000 ms)"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    case: str = "turin"
    line: int = 103
    distance_m: float = 100.0
    fault_type: str = "slg"
    r_f_ohm: float = 0.0
    speed: float = 1.0
    normal_s: float = 5.0
    variant: str = "central"
    keep_running: bool = False
    secure: bool = True
    """Mutual TLS, topic ACL, HTTPS and enrolled devices (False: ``--insecure``, plain text)."""
    timeout_s: float = 60.0
    """Wall seconds to wait for the coordinator to finish the incident."""


def _scenario(options: DemoOptions) -> Any:
    return parse_scenario(
        {
            "scenario": {
                "name": "demo",
                "case": options.case,
                "start": _START,
                "duration_s": 3600,
                "step_s": 1.0,
                "seed": 3,
                "speed": options.speed,
            },
            # cable feeders: definite-time overcurrent, no reclosing (a cable fault is permanent)
            "protection": {"trip_delay_s": 0.3, "reclose_s": []},
        }
    )


def _fault_event(options: DemoOptions) -> FaultEvent:
    return FaultEvent.model_validate(
        {
            "type": "fault",
            "at_s": 0.0,
            "kind": options.fault_type,
            "line": options.line,
            "distance_m": options.distance_m,
            "r_f_ohm": options.r_f_ohm,
        }
    )


@dataclass(frozen=True, slots=True)
class _Platform:
    """The running broker and catalog, and each party's settings."""

    broker_url: str
    historian: Settings
    flisr: Settings
    devices: Settings


@contextmanager
def _platform(demo: DemoSettings, case: str, flisr: FlisrSettings) -> Iterator[_Platform]:
    with demo.broker_thread() as broker:
        catalog = demo.catalog_thread(broker, case)
        catalog.start()
        try:

            def settings(party: str) -> Settings:
                return demo.settings(broker, case, catalog, party).model_copy(
                    update={"flisr": flisr}
                )

            yield _Platform(
                broker_url=demo.broker_url(broker),
                historian=settings(f"historian-{DEMO_HISTORIAN_INSTANCE}"),
                flisr=settings("flisr"),
                devices=settings("devices"),
            )
        finally:
            catalog.stop()


def run_flisr_demo(out: Console, options: DemoOptions) -> dict[str, Any]:
    """Run the demo (see the module docstring); the incident as a dict."""
    quiet = ("openfeeder", "httpx", "uvicorn")
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="openfeeder-demo-") as tmp:
            return _run(out, options, Path(tmp))
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _run(out: Console, options: DemoOptions, workdir: Path) -> dict[str, Any]:
    scenario = _scenario(options)
    model = scenario.build_model()
    demo = demo_settings(workdir, secure=options.secure)
    out.print(f"security: {demo.describe()}")
    flisr = FlisrSettings.model_validate(
        {"listen_port": 0, "incident_log": workdir / "flisr.jsonl", "variant": options.variant}
    )
    with _platform(demo, model.name, flisr) as platform:
        historian = HistorianThread(platform.historian, instance=DEMO_HISTORIAN_INSTANCE)
        historian.start()
        try:
            clock = clock_for_speed(options.speed, scenario.scenario.start_ns)
            twin = Twin(scenario, clock=clock)
            printer = _Printer(out)
            devices = platform.devices
            with catalog_client(devices) as catalog:
                live = LiveTwin(
                    twin, devices, catalog=catalog, case_name=model.name, on_timeline=printer.twin
                )
                out.print(
                    f"platform: embedded broker {platform.broker_url}, catalog "
                    f"{devices.catalog.url}, historian {historian.url} (SQLite in {workdir})"
                )
                live.start()
                try:
                    return _drive(
                        out,
                        options,
                        platform.flisr,
                        live,
                        twin,
                        printer,
                        (historian.url, demo.http_verify()),
                    )
                finally:
                    live.stop()
        finally:
            historian.stop()


def _drive(  # noqa: PLR0917  (one call site; the parts of the running platform)
    out: Console,
    options: DemoOptions,
    settings: Settings,
    live: LiveTwin,
    twin: Twin,
    printer: _Printer,
    historian: tuple[str, ssl.SSLContext | bool],
) -> dict[str, Any]:
    started = time.monotonic()
    if not live.wait_running(60):
        raise OpenFeederError("the twin's devices did not all start within 60 s")
    devices = len(live.devices)
    out.print(
        f"twin of {twin.model.name}: {devices} devices running after "
        f"{time.monotonic() - started:.1f} s (meters, FTUs with fault indicators and recorders, "
        f"remote-controlled switches), clock x{options.speed:g}"
    )
    with FlisrThread(
        settings, model=twin.model, clock=twin.clock, on_step=printer.flisr
    ) as service:
        coordinator = service.coordinator
        assert coordinator is not None
        out.print(f"FLISR coordinator ({options.variant}) at {service.url}")
        out.rule(f"normal operation; fault in {options.normal_s:g} s (domain time)")
        printer.fault_ns = live.inject(_fault_event(options), after_s=options.normal_s)
        incident = _wait_incident(out, coordinator, twin, options, printer.fault_ns)
        stored = _stored(*historian)
        out.rule("summary")
        summary = _summary(out, twin.model, incident, stored)
        if options.keep_running:
            out.print(
                f"--keep-running: the platform stays up; clear the fault with "
                f"POST {service.url}/v1/incidents/{incident.incident_id}/clear; Ctrl-C stops"
            )
            _wait_forever()
        return summary


def _wait_incident(
    out: Console, coordinator: FlisrCoordinator, twin: Twin, options: DemoOptions, fault_ns: int
) -> Incident:
    deadline = time.monotonic() + options.timeout_s + options.normal_s / options.speed
    last_status = 0.0
    while time.monotonic() < deadline:
        found = coordinator.log.all()
        if found and found[-1].status in _FINISHED and coordinator.active is None:
            return found[-1]
        if twin.clock.now_ns() < fault_ns and time.monotonic() - last_status > 1.0:
            last_status = time.monotonic()
            left = (fault_ns - twin.clock.now_ns()) / NS_PER_S
            out.print(f"  normal operation, fault in {left:4.1f} s", style="dim")
        time.sleep(0.05)
    raise OpenFeederError(
        f"no FLISR incident finished within {options.timeout_s:g} s after the fault"
    )


def _stored(historian_url: str, verify: ssl.SSLContext | bool) -> tuple[int, int]:
    try:
        devices = httpx.get(f"{historian_url}/v1/devices", timeout=5, verify=verify).json()
    except httpx.HTTPError:
        return 0, 0
    return len(devices), sum(int(d["message_count"]) for d in devices)


class _Printer:
    """Prints the twin's and the coordinator's steps as they happen, in domain time from the fault."""

    def __init__(self, out: Console) -> None:
        self._out = out
        self.fault_ns = 0
        self._lock = threading.Lock()

    def _line(self, t_ns: int, who: str, text: str) -> None:
        at_ms = (t_ns - self.fault_ns) / 1e6
        with self._lock:
            self._out.print(f"{at_ms:+10.1f} ms  [bold]{who:<5}[/bold] {text}", highlight=False)

    def twin(self, entry: TimelineEntry) -> None:
        detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items())
        self._line(entry.t_ns, "grid", f"{entry.kind}: {detail}")

    def flisr(self, _incident: Incident, step: Step) -> None:
        detail = step.detail
        if step.kind == "ack" and detail.get("status") == "accepted":
            return  # the DONE that follows is what counts
        text = {
            "fault_inception": "fault inception (first indicator/record)",
            "trip": f"breaker {detail.get('breaker')} tripped",
            "located": (
                f"fault located: section {detail.get('section')}, line {detail.get('line')} "
                f"at {_m(detail.get('distance_m'))} +- {_m(detail.get('sigma_m'))} "
                f"({detail.get('by')})"
            ),
            "command": f"command {detail.get('action')} -> switch {detail.get('switch')}",
            "ack": f"switch {detail.get('switch')}: {detail.get('status')} ({detail.get('detail')})",
        }.get(step.kind, f"{step.kind}: {_brief(detail)}")
        self._line(step.t_ns, "flisr", text)


def _m(value: object) -> str:
    return f"{value:.1f} m" if isinstance(value, float) and np.isfinite(value) else "?"


def _brief(detail: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if k != "device_t_ns")


def _feeder_customers(model: GridModel, breaker: int) -> tuple[int, float]:
    topology = analyze_topology(model)
    rows = topology.bus_rows(model.load["bus"])
    on_feeder = topology.feeder_of_bus[rows] == breaker
    return int(model.load["customers"][on_feeder].sum()), float(model.load["p_mw"][on_feeder].sum())


def _summary(
    out: Console, model: GridModel, incident: Incident, stored: tuple[int, int]
) -> dict[str, Any]:
    interrupted, interrupted_mw = _feeder_customers(model, incident.breaker)
    restored = int(incident.summary.get("restored_customers", 0))
    isolated = int(incident.summary.get("unserved_customers", interrupted))
    table = Table(title=f"incident {incident.incident_id}: {incident.status}")
    table.add_column("")
    table.add_column("customers", justify="right")
    table.add_column("MW", justify="right")
    table.add_row("interrupted by the trip", f"{interrupted:,}", f"{interrupted_mw:.3f}")
    table.add_row(
        "restored", f"{restored:,}", f"{float(incident.summary.get('restored_mw', 0.0)):.3f}"
    )
    table.add_row(
        "left isolated", f"{isolated:,}", f"{float(incident.summary.get('unserved_mw', 0.0)):.3f}"
    )
    out.print(table)
    durations = incident.durations_ms()
    steps = Table(title="time from fault inception (domain clock)")
    steps.add_column("step")
    steps.add_column("ms", justify="right")
    for kind, ms in durations.items():
        steps.add_row(kind, f"{ms:,.1f}")
    out.print(steps)
    mechanism_ms = _mechanism_ms(incident)
    total = durations.get("restored")
    result: dict[str, Any] = {
        "incident": incident.as_dict(),
        "interrupted_customers": interrupted,
        "restored_customers": restored,
        "isolated_customers": isolated,
        "historian_devices": stored[0],
        "historian_messages": stored[1],
    }
    if total is not None:
        protection = durations.get("trip", 0.0)
        platform = total - mechanism_ms - protection
        result.update(
            end_to_end_ms=total,
            mechanism_ms=mechanism_ms,
            protection_ms=protection,
            platform_ms=platform,
        )
        out.print(
            f"end to end (fault inception -> last restoration acknowledgement): "
            f"[bold]{total / 1e3:.3f} s[/bold], of which protection (inception -> trip) "
            f"{protection / 1e3:.3f} s and switch mechanisms {mechanism_ms / 1e3:.3f} s; "
            f"the platform's share (detection, location, planning, messaging): "
            f"[bold]{platform:.0f} ms[/bold] -> IEC 61850-5 {transfer_time_class(platform)}"
        )
        figures = ", ".join(f"{k} {v:g} s" for k, v in SEED_003_S.items())
        out.print(f"seed 003 reports {figures}; a crew needs 40-80 minutes.")
    out.print(f"historian: {stored[1]:,} measurement messages stored from {stored[0]} devices")
    return result


def _mechanism_ms(incident: Incident) -> float:
    """Domain time the switch mechanisms took on the critical path: how long at least one of
    them was operating, i.e. the union of the ACCEPTED -> DONE intervals by the devices' own
    clocks (commands sent together overlap and count once; an acknowledgement that arrives
    between two commands of one batch changes nothing)."""
    accepted: dict[str, int] = {}
    intervals: list[tuple[int, int]] = []
    for step in incident.steps:
        if step.kind != "ack":
            continue
        command = str(step.detail.get("command_id"))
        device_t_ns = int(step.detail.get("device_t_ns", step.t_ns))
        if step.detail.get("status") == "accepted":
            accepted[command] = device_t_ns
        elif step.detail.get("status") == "done" and command in accepted:
            intervals.append((accepted[command], device_t_ns))
    total_ns = 0
    end_ns: int | None = None
    for start_ns, stop_ns in sorted(intervals):
        if end_ns is None or start_ns > end_ns:
            total_ns += stop_ns - start_ns
            end_ns = stop_ns
        elif stop_ns > end_ns:
            total_ns += stop_ns - end_ns
            end_ns = stop_ns
    return total_ns / 1e6


def _wait_forever() -> None:
    event = threading.Event()
    try:
        while not event.wait(1.0):
            pass
    except KeyboardInterrupt:
        return


def parse_fault(value: str) -> tuple[int, float]:
    """``LINE_ID@DISTANCE_M`` -> (line id, distance in metres)."""
    line, sep, distance = value.partition("@")
    try:
        if not sep:
            raise ValueError
        return int(line), float(distance)
    except ValueError as err:
        raise ConfigError(f"--fault {value!r}: expected LINE_ID@DISTANCE_M, e.g. 103@100") from err
