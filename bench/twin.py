"""Digital-twin speed: ``python -m bench.twin {study,live,all} [options]``.

- ``study``: the twin without messaging, as fast as possible, reported as a real-time factor
  (simulated seconds per wall second). ``turin`` with ~200 devices at 1-s steps for an hour
  (target >= 100x real time on 2 cores) and the shipped synthetic 1,000-bus day at 1-min steps.
- ``live``: a synthetic 2,000-bus grid with ~2,000 devices, every one a meter agent of the IoT
  infrastructure publishing every second through the broker, the twin on the real-time clock
  (target: keeps real time with no backlog). The devices are spread over worker processes that
  each run the same deterministic twin and host a share of the devices; the main process runs the
  broker, the catalog and a subscriber that counts what arrives and how late.

Prints a table and writes ``bench/results/twin.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
out = Console(highlight=False, width=150)
err = Console(stderr=True, highlight=False)


# -- study ---------------------------------------------------------------------------------------


def _with_meters(model: Any, devices: int) -> list[Any]:
    """The default placements, topped up with smart meters at loads to ``devices`` in all."""
    from openfeeder.model.components import MeasurementKind
    from openfeeder.sim.placements import DevicePlacement, default_placements

    placements = default_placements(model)
    loads = model.load
    k = 0
    while len(placements) < devices:  # more smart meters per LV district, as in seed 003's field
        row = k % loads.size
        placements.append(
            DevicePlacement(
                device_id=f"meter-{int(loads['id'][row])}-{k // loads.size}",
                kind=MeasurementKind.METER,
                bus_id=int(loads["bus"][row]),
                element_id=int(loads["id"][row]),
            )
        )
        k += 1
    return placements


def _turin_200(seconds: float) -> tuple[Any, Any]:
    from openfeeder.sim.scenario import parse_scenario

    scenario = parse_scenario(
        {
            "scenario": {
                "name": "bench-turin-200",
                "case": "turin",
                "start": "2026-06-17T16:00:00+00:00",
                "duration_s": seconds,
                "step_s": 1.0,
                "seed": 3,
            },
            "profiles": {"resolution_s": 60, "ev_chargers": 24},
            "devices": {"dropout_probability": 0.001},
        }
    )
    return scenario, _with_meters(scenario.build_model(), 200)


def run_study(seconds: float) -> list[dict[str, Any]]:
    from openfeeder.sim.scenario import load_scenario
    from openfeeder.sim.twin import Twin

    rows = []
    scenario, placements = _turin_200(seconds)
    for name, sc, placed in (
        ("turin, 1-s steps", scenario, placements),
        ("synthetic-1000-day, 1-min steps", load_scenario("synthetic-1000-day"), None),
    ):
        build = time.perf_counter()
        twin = Twin(sc, placements=placed)
        build_s = time.perf_counter() - build
        run = twin.run_study()
        rows.append(
            {
                "scenario": name,
                "buses": run.buses,
                "devices": run.devices,
                "steps": run.steps,
                "simulated_s": run.simulated_s,
                "build_s": build_s,
                "wall_s": run.wall_s,
                "readings": run.readings,
                "realtime_factor": run.realtime_factor,
                "target": 100.0 if name.startswith("turin") else None,
            }
        )
        err.print(f"{name}: {run.realtime_factor:,.0f}x real time")
    return rows


# -- live ----------------------------------------------------------------------------------------


def _live_scenario(buses: int, seconds: float, start_iso: str) -> dict[str, Any]:
    return {
        "scenario": {
            "name": f"bench-live-{buses}",
            "synthetic": {"buses": buses, "feeders": max(1, buses // 100), "ties": buses // 200},
            "start": start_iso,
            "duration_s": seconds + 600.0,
            "step_s": 1.0,
            "seed": 5,
        },
        "devices": {"reporting_interval_s": 1.0},
    }


def _worker(  # noqa: PLR0917 - a multiprocessing target takes its arguments positionally
    index: int,
    workers: int,
    devices: int,
    data: dict[str, Any],
    start_ns: int,
    settings_json: str,
    catalog_url: str,
    stop: Any,
    results: Any,
) -> None:
    import logging

    from openfeeder.config import Settings
    from openfeeder.iot.catalog_client import CatalogClient
    from openfeeder.sim.clock import ScaledClock
    from openfeeder.sim.live import LiveTwin
    from openfeeder.sim.scenario import parse_scenario
    from openfeeder.sim.twin import Twin

    logging.basicConfig(level=logging.ERROR)
    settings = Settings.model_validate_json(settings_json)
    scenario = parse_scenario(data)
    model = scenario.build_model()
    twin = Twin(
        scenario,
        model=model,
        clock=ScaledClock(time.time_ns(), 1.0),
        placements=_with_meters(model, devices),
    )
    with CatalogClient(catalog_url) as catalog:
        live = LiveTwin(twin, settings, catalog=catalog, hosted=lambda i, _p: i % workers == index)
        live.start()
        running = live.wait_running(120.0)
        results.put(("ready", index, running, len(live.devices)))
        stop.wait()
        stats = live.stats()
        cpu = time.process_time()
        live.stop(timeout_s=20.0)
    results.put(
        (
            "stats",
            index,
            {
                "devices": stats.devices,
                "produced": stats.produced,
                "published": stats.published,
                "buffered": stats.buffered,
                "max_lag_s": stats.max_lag_s,
                "steps": stats.steps,
                "cpu_s": cpu,
            },
        )
    )
    del start_ns  # every worker runs the same domain clock: the wall clock from its own start


class _Counter:
    """Counts measurements arriving at the monitoring broker and how late they are."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.count = 0
        self.latencies: list[float] = []
        self.measuring = False
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="bench-twin-counter", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe("openfeeder/v1/meas/+", qos=0)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        now = time.time_ns()
        if not self.measuring:
            return
        payload = message.payload
        at = payload.find(b'"t_ns":')
        t_ns = int(payload[at + 7 : payload.find(b",", at)]) if at >= 0 else now
        with self._lock:
            self.count += 1
            if self.count % 7 == 0:
                self.latencies.append((now - t_ns) / 1e6)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _one_second(settings: Any) -> Any:
    """Every device reports once a second; polls are rare (they are not what is measured)."""
    return settings.model_copy(
        update={
            "catalog": settings.catalog.model_copy(
                update={"reporting_interval_s": 1.0, "poll_interval_s": 30.0}
            )
        }
    )


def run_live(buses: int, devices: int, seconds: float, workers: int, broker: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    from openfeeder.cli.demo_iot import _settings
    from openfeeder.iot.broker import BrokerThread
    from openfeeder.services.catalog.service import CatalogThread

    start_ns = time.time_ns()
    start_iso = datetime.fromtimestamp(start_ns / 1e9, UTC).isoformat()
    data = _live_scenario(buses, seconds, start_iso)
    with tempfile.TemporaryDirectory(prefix="bench-twin-") as tmp:
        workdir = Path(tmp)
        embedded = BrokerThread(port=0) if broker == "embedded" else None
        if embedded is not None:
            embedded.start()
            host, port = "127.0.0.1", embedded.port
        else:
            host, port = "127.0.0.1", 1883
        url = f"mqtt://{host}:{port}"
        catalog = CatalogThread(_one_second(_settings(workdir, url, "", "http://127.0.0.1:1", 0)))
        catalog_url = catalog.start()
        settings = _one_second(_settings(workdir, url, "", catalog_url, catalog.port))
        counter = _Counter(host, port)
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker,
                args=(
                    k,
                    workers,
                    devices,
                    data,
                    start_ns,
                    settings.model_dump_json(),
                    catalog_url,
                    stop,
                    results,
                ),
                daemon=True,
            )
            for k in range(workers)
        ]
        boot = time.monotonic()
        for proc in procs:
            proc.start()
        ready = [results.get(timeout=300) for _ in procs]
        boot_s = time.monotonic() - boot
        devices = sum(r[3] for r in ready)
        err.print(f"{devices} devices running in {workers} processes after {boot_s:.1f} s")
        time.sleep(5.0)  # settle
        counter.measuring = True
        window_start = time.monotonic()
        time.sleep(seconds)
        counter.measuring = False
        window_s = time.monotonic() - window_start
        received = counter.count
        stop.set()
        stats = [results.get(timeout=120)[2] for _ in procs]
        for proc in procs:
            proc.join(30)
        counter.close()
        catalog.stop()
        if embedded is not None:
            embedded.stop()
    latencies = sorted(counter.latencies) or [math.nan]
    expected = devices * window_s
    return {
        "buses": buses,
        "devices": devices,
        "workers": workers,
        "broker": broker,
        "boot_s": boot_s,
        "window_s": window_s,
        "received": received,
        "expected": expected,
        "delivered_ratio": received / expected if expected else math.nan,
        "msg_per_s": received / window_s,
        "latency_p50_ms": latencies[len(latencies) // 2],
        "latency_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_stepper_lag_s": max(s["max_lag_s"] for s in stats),
        "unsent_at_end": sum(s["produced"] - s["published"] for s in stats),
        "cpu_s": sum(s["cpu_s"] for s in stats),
        "cores": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.twin")
    parser.add_argument("what", choices=("study", "live", "all"), nargs="?", default="all")
    parser.add_argument("--study-seconds", type=float, default=3600.0)
    parser.add_argument("--buses", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0, help="live measurement window")
    parser.add_argument("--devices", type=int, default=2000, help="live devices (meters added)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--broker", choices=("embedded", "mosquitto"), default="embedded")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    if args.what in ("study", "all"):
        report["study"] = run_study(args.study_seconds)
        table = Table(
            "scenario", "buses", "devices", "steps", "simulated", "wall", "x real time", "target"
        )
        for row in report["study"]:
            table.add_row(
                row["scenario"],
                str(row["buses"]),
                str(row["devices"]),
                str(row["steps"]),
                f"{row['simulated_s']:,.0f} s",
                f"{row['wall_s']:.2f} s",
                f"{row['realtime_factor']:,.0f}x",
                "-" if row["target"] is None else f">= {row['target']:.0f}x",
            )
        out.print(table)
    if args.what in ("live", "all"):
        live = run_live(args.buses, args.devices, args.seconds, args.workers, args.broker)
        report["live"] = live
        table = Table(
            "grid",
            "devices",
            "broker",
            "window",
            "received / expected",
            "msg/s",
            "latency p50 / p99",
            "stepper lag max",
            "unsent at end",
            "CPU",
        )
        table.add_row(
            f"synthetic {live['buses']} buses",
            f"{live['devices']} in {live['workers']} processes",
            live["broker"],
            f"{live['window_s']:.0f} s",
            f"{live['received']:,} / {live['expected']:,.0f} ({live['delivered_ratio']:.1%})",
            f"{live['msg_per_s']:,.0f}",
            f"{live['latency_p50_ms']:.0f} / {live['latency_p99_ms']:.0f} ms",
            f"{live['max_stepper_lag_s'] * 1e3:.0f} ms",
            str(live["unsent_at_end"]),
            f"{live['cpu_s']:.0f} s",
        )
        out.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "twin.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.print(f"wrote {path}")


if __name__ == "__main__":
    main()
