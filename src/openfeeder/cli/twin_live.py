"""``openfeeder twin run SCENARIO --live``: the twin with the platform in one process.

Starts the embedded broker, the device catalog (SQLite in a temporary folder), the emulated network
of the scenario's ``[network]`` table in front of the broker (devices connect through it; services
connect directly), and a :class:`~openfeeder.sim.live.LiveTwin` on the scenario's clock. Prints the
timeline as it happens and a status line every few seconds; stops at the end of the scenario or on
SIGINT/SIGTERM, shutting every device down cleanly.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from openfeeder.cli.demo_iot import _settings
from openfeeder.cli.render import console
from openfeeder.config import BrokerSettings, BrokersSettings
from openfeeder.errors import ScenarioError
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.services.catalog.service import CatalogThread
from openfeeder.sim.clock import NS_PER_S, clock_for_speed
from openfeeder.sim.live import LiveTwin
from openfeeder.sim.netem import NetworkEmulator
from openfeeder.sim.scenario import Scenario
from openfeeder.sim.twin import TimelineEntry, Twin

__all__ = ["run_live"]

_STATUS_EVERY_S = 5.0


def run_live(scenario: Scenario) -> None:
    spec = scenario.scenario
    if spec.speed == "max":
        raise ScenarioError(
            f"{scenario.source}: scenario.speed: a live run needs 'realtime' or a factor, not 'max'"
        )
    out = console()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="openfeeder-twin-") as tmp,
            BrokerThread(port=0) as broker,
        ):
            workdir = Path(tmp)
            direct = f"mqtt://127.0.0.1:{broker.port}"
            case = spec.case or ""
            catalog = CatalogThread(_settings(workdir, direct, case, "http://127.0.0.1:1", 0))
            catalog_url = catalog.start()
            with NetworkEmulator.for_broker(
                direct, config=scenario.network_config(), seed=spec.seed
            ) as netem:
                relayed = BrokerSettings(url=netem.url)
                settings = _settings(workdir, direct, case, catalog_url, catalog.port)
                device_settings = settings.model_copy(
                    update={"brokers": BrokersSettings(grid_ops=relayed, monitoring=relayed)}
                )
                clock = clock_for_speed(
                    "realtime" if spec.speed == "realtime" else float(spec.speed),
                    spec.start_ns,
                )
                twin = Twin(scenario, clock=clock)

                def show(entry: TimelineEntry) -> None:
                    details = ", ".join(f"{k}={v}" for k, v in entry.detail.items())
                    at = (entry.t_ns - twin.start_ns) / NS_PER_S
                    out.print(f"[bold]{at:9.3f} s[/bold] {entry.kind}: {details}")

                with CatalogClient(catalog_url) as client:
                    live = LiveTwin(
                        twin,
                        device_settings,
                        catalog=client,
                        case_name=case or None,
                        on_timeline=show,
                    )
                    out.print(
                        f"live twin {spec.name}: {len(twin.placements)} devices, broker {direct} "
                        f"(devices through the emulated network {netem.url}), catalog {catalog_url}, "
                        f"speed {spec.speed}"
                    )
                    live.start()
                    try:
                        _follow(live, twin, stop)
                    finally:
                        live.stop()
            catalog.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _follow(live: LiveTwin, twin: Twin, stop: threading.Event) -> None:
    out = console()
    next_status = time.monotonic()
    while not stop.is_set() and live.clock.now_ns() < twin.end_ns:
        if time.monotonic() >= next_status:
            stats = live.stats()
            at = (stats.t_ns - twin.start_ns) / NS_PER_S
            out.print(
                f"{at:9.1f} s  devices {stats.running}/{stats.devices} running, "
                f"{stats.produced:,} measurements, {stats.published:,} published, "
                f"stepper lag {stats.lag_s * 1e3:.0f} ms"
            )
            next_status += _STATUS_EVERY_S
        stop.wait(0.2)
