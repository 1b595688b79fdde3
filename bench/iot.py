"""IoT benchmarks: ``python -m bench.iot {broker,ingest,storm,disconnect,all} [options]``.

- ``broker``: raw MQTT throughput (QoS 1, several publisher processes -> one subscriber) through the
  embedded broker and through Mosquitto, side by side.
- ``ingest``: virtual meters -> broker -> historian -> SQLite / PostgreSQL: sustained messages/s and
  readings/s, end-to-end latency (message time stamp -> historian's committed mark seen) p50/p99,
  and the loss count, for each broker x storage pair.
- ``storm``: 10,000 devices boot at once against the device catalog: time until all are configured
  and request latency p50/p99, SQLite vs PostgreSQL.
- ``disconnect``: delay between a device's timeout expiring and the catalog announcing it.

Every service and load generator runs in its own process. Prints tables and writes
``bench/results/iot-<which>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench._processes import free_port, stop_process

RESULTS = Path(__file__).parent / "results"
POSTGRES_URL = os.environ.get(
    "OPENFEEDER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=150)


def _wait_port(port: int, process: subprocess.Popen[Any], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


def openfeeder_cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from openfeeder.cli import main; sys.exit(main())",
        *args,
    ]


@contextmanager
def broker(kind: str, workdir: Path) -> Iterator[str]:
    """Start a broker of ``kind`` (embedded | mosquitto) on a free port; yields its URL."""
    port = free_port()
    if kind == "embedded":
        cmd = openfeeder_cmd("broker", "--port", str(port), "--log-level", "warning")
    elif kind == "mosquitto":
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        workdir = workdir / f"mosquitto-{port}"  # its own persistence file, never a previous run's
        workdir.mkdir()
        config = workdir / "mosquitto.conf"
        # the machine's production settings (/etc/mosquitto), on a private port
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nmax_queued_messages 1000000\n"
        )
        cmd = [binary, "-c", str(config)]
    else:
        raise ValueError(kind)
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, process)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        stop_process(process, timeout_s=20)
        if process.stderr is not None:
            process.stderr.close()


def _load(role: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.iot_load", role, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


def _result(process: subprocess.Popen[str], timeout_s: float = 300) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=timeout_s)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"load process failed: {stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --- broker -----------------------------------------------------------------------------------


def bench_broker(publishers: int, messages: int, size: int) -> dict[str, Any]:
    rows = []
    total = publishers * messages
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("embedded", "mosquitto"):
            err.print(
                f"broker {kind}: {publishers} x {messages:,} QoS 1 messages of {size} B ...",
                end=" ",
            )
            with broker(kind, Path(tmp)) as url:
                sub = _load("sub", url, "bench/#", total)
                assert sub.stdout is not None
                if sub.stdout.readline().strip() != "ready":
                    raise RuntimeError("subscriber did not start")
                started_ns = time.time_ns()
                pubs = [_load("pub", url, f"bench/{n}", messages, size) for n in range(publishers)]
                pub_results = [_result(p) for p in pubs]
                received = _result(sub)
            # steady state: from the first to the last message at the subscriber (process start-up
            # of the publishers is not the broker's cost)
            seconds = (received["last_ns"] - received["first_ns"]) / 1e9
            first_latency_s = (received["first_ns"] - started_ns) / 1e9
            row = {
                "broker": kind,
                "publishers": publishers,
                "sent": total,
                "acked": sum(r["acked"] for r in pub_results),
                "received": received["received"],
                "seconds": seconds,
                "startup_s": first_latency_s,
                "msg_per_s": received["received"] / seconds if seconds > 0 else 0.0,
            }
            err.print(f"{row['msg_per_s']:,.0f} msg/s")
            rows.append(row)
    table = Table(
        title=f"MQTT broker throughput: {publishers} publishers -> 1 subscriber, QoS 1, {size} B"
    )
    for col in ("broker", "sent", "received", "lost", "seconds", "msg/s"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            row["broker"],
            f"{row['sent']:,}",
            f"{row['received']:,}",
            f"{row['sent'] - row['received']:,}",
            f"{row['seconds']:.2f}",
            f"{row['msg_per_s']:,.0f}",
        )
    out.print(table)
    return {"rows": rows}


# --- shared service plumbing --------------------------------------------------------------------


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one run (dropped afterwards); yields a URL using it."""
    import uuid

    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def storage(kind: str, workdir: Path, name: str) -> Iterator[str]:
    """A fresh, empty database for one run."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/{name}-{time.monotonic_ns()}.db"
    else:
        with postgres_schema() as url:
            yield url


def write_config(path: Path, broker_url: str, **sections: dict[str, Any]) -> Path:
    lines = [
        f'[brokers.grid_ops]\nurl = "{broker_url}"',
        f'[brokers.monitoring]\nurl = "{broker_url}"',
    ]
    lines.append('[logging]\nlevel = "WARNING"')
    for section, values in sections.items():
        body = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append(f"[{section}]\n{body}")
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def service(
    args: list[str], port: int, workdir: Path, name: str
) -> Iterator[subprocess.Popen[Any]]:
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(openfeeder_cmd(*args), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, process, timeout_s=60)
        yield process
    finally:
        stop_process(process, timeout_s=20)
        log.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- storm --------------------------------------------------------------------------------------


def bench_storm(devices: int, concurrency: int, storages: tuple[str, ...]) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for kind in storages:
            err.print(f"storm: {devices:,} devices boot, catalog on {kind} ...", end=" ")
            port = free_port()
            with broker("mosquitto", workdir) as url, storage(kind, workdir, "catalog") as db:
                config = write_config(
                    workdir / f"storm-{kind}.toml",
                    url,
                    catalog={
                        "listen_port": port,
                        "url": f"http://127.0.0.1:{port}",
                        "storage_url": db,
                    },
                )
                with service(
                    ["catalog", "serve", "--config", str(config)], port, workdir, f"catalog-{kind}"
                ):
                    result = _result(
                        _load("storm", f"http://127.0.0.1:{port}", devices, concurrency)
                    )
            row = {
                "storage": kind,
                "devices": devices,
                "configured": result["configured"],
                "boot_seconds": result["boot_seconds"],
                "boot_p50_ms": percentile(result["boot_latency_s"], 50) * 1e3,
                "boot_p99_ms": percentile(result["boot_latency_s"], 99) * 1e3,
                "poll_seconds": result["poll_seconds"],
                "poll_p99_ms": percentile(result["poll_latency_s"], 99) * 1e3,
            }
            err.print(f"{row['boot_seconds']:.1f} s")
            rows.append(row)
    table = Table(
        title=f"self-configuration storm: {devices:,} devices boot at once ({concurrency} in flight); target < 30 s"
    )
    for col in ("catalog storage", "configured", "all configured in", "boot p50", "boot p99",
                "then all poll (304) in", "poll p99"):  # fmt: skip
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            row["storage"],
            f"{row['configured']:,}",
            f"{row['boot_seconds']:.1f} s",
            f"{row['boot_p50_ms']:.0f} ms",
            f"{row['boot_p99_ms']:.0f} ms",
            f"{row['poll_seconds']:.1f} s",
            f"{row['poll_p99_ms']:.0f} ms",
        )
    out.print(table)
    return {"rows": rows, "concurrency": concurrency}


# --- ingest -------------------------------------------------------------------------------------


class MarkWatcher:
    """Subscribes to the historian's committed marks; remembers when each mark was first seen."""

    def __init__(self, url: str) -> None:
        import threading
        from urllib.parse import urlsplit

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.seen: dict[str, list[tuple[int, int]]] = {}  # device -> [(high_water_seq, time_ns)]
        self._lock = threading.Lock()
        parts = urlsplit(url)
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-marks-{time.monotonic_ns()}",
            protocol=paho.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self._client.subscribe("openfeeder/v1/committed/+", qos=1)
        self._client.loop_start()

    def _on_message(self, _client: object, _userdata: object, message: Any) -> None:
        now = time.time_ns()
        if not message.payload:
            return
        document = json.loads(message.payload)
        with self._lock:
            self.seen.setdefault(document["device_id"], []).append(
                (document["high_water_seq"], now)
            )

    def high_water(self, device: str) -> int:
        with self._lock:
            marks = self.seen.get(device)
            return max(mark for mark, _ in marks) if marks else -1

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _latencies(watcher: MarkWatcher, loads: list[dict[str, Any]]) -> list[float]:
    """Per message: time from its t_ns to the first committed mark covering it."""
    latencies: list[float] = []
    for load in loads:
        sent_ns = load["sent_ns"]
        for device in load["devices"]:
            marks = sorted(watcher.seen.get(device, []), key=lambda item: item[1])
            index, best = 0, -1
            for seq, t_ns in enumerate(sent_ns):
                while best < seq and index < len(marks):
                    best = max(best, marks[index][0])
                    seen_ns = marks[index][1]
                    index += 1
                if best >= seq:
                    latencies.append((seen_ns - t_ns) / 1e9)
    return latencies


def _historian_counts(port: int) -> dict[str, int]:
    import httpx

    response = httpx.get(f"http://127.0.0.1:{port}/v1/devices", timeout=30)
    response.raise_for_status()
    body = response.json()
    items = body["devices"] if isinstance(body, dict) else body
    return {item["device_id"]: int(item["message_count"]) for item in items}


def bench_ingest(
    *,
    brokers: tuple[str, ...],
    storages: tuple[str, ...],
    processes: int,
    meters_per_process: int,
    rate_hz: float,
    seconds: float,
) -> dict[str, Any]:
    rows = []
    messages = max(1, int(rate_hz * seconds))
    expected = processes * meters_per_process * messages
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for broker_kind in brokers:
            for storage_kind in storages:
                err.print(
                    f"ingest: {processes * meters_per_process} meters x {rate_hz:g}/s for {seconds:g} s "
                    f"via {broker_kind} into {storage_kind} ...",
                    end=" ",
                )
                port = free_port()
                with (
                    broker(broker_kind, workdir) as url,
                    storage(storage_kind, workdir, "historian") as db,
                ):
                    config = write_config(
                        workdir / f"ingest-{broker_kind}-{storage_kind}.toml",
                        url,
                        historian={
                            "listen_port": port,
                            "storage_url": db,
                            "require_registered_devices": False,
                            "committed_interval_ms": 100,
                        },
                    )
                    args = ["historian", "serve", "--config", str(config)]
                    with service(args, port, workdir, f"historian-{broker_kind}-{storage_kind}"):
                        watcher = MarkWatcher(url)
                        started_ns = time.time_ns()
                        loads = [
                            _load(
                                "meters",
                                url,
                                n * meters_per_process,
                                meters_per_process,
                                messages,
                                rate_hz,
                            )
                            for n in range(processes)
                        ]
                        results = [_result(load, timeout_s=seconds * 10 + 120) for load in loads]
                        devices = [d for r in results for d in r["devices"]]
                        deadline = time.monotonic() + 120
                        while time.monotonic() < deadline:
                            if all(watcher.high_water(d) >= messages - 1 for d in devices):
                                break
                            time.sleep(0.1)
                        watcher.stop()
                        counts = _historian_counts(port)
                last_ns = max(
                    (t for marks in watcher.seen.values() for _, t in marks), default=started_ns
                )
                stored = sum(counts.get(d, 0) for d in devices)
                # from the first message sent (not the load processes' start-up) to the last mark
                first_sent_ns = min(r["sent_ns"][0] for r in results)
                elapsed = (last_ns - first_sent_ns) / 1e9
                latencies = _latencies(watcher, results)
                row = {
                    "broker": broker_kind,
                    "storage": storage_kind,
                    "meters": len(devices),
                    "offered_msg_per_s": len(devices) * rate_hz,
                    "sent": expected,
                    "stored": stored,
                    "lost": expected - stored,
                    "seconds": elapsed,
                    "msg_per_s": stored / elapsed if elapsed > 0 else 0.0,
                    "readings_per_s": 16 * stored / elapsed if elapsed > 0 else 0.0,
                    "latency_p50_ms": percentile(latencies, 50) * 1e3,
                    "latency_p99_ms": percentile(latencies, 99) * 1e3,
                }
                err.print(f"{row['msg_per_s']:,.0f} msg/s, lost {row['lost']}")
                rows.append(row)
    table = Table(
        title=f"ingestion: meters -> broker -> historian (QoS 1, 16 readings/message, "
        f"offered {processes * meters_per_process * rate_hz:,.0f} msg/s); target 10,000 msg/s into PostgreSQL via Mosquitto, zero loss"
    )
    for col in (
        "broker",
        "storage",
        "sent",
        "stored",
        "lost",
        "msg/s",
        "readings/s",
        "latency p50",
        "latency p99",
    ):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            row["broker"],
            row["storage"],
            f"{row['sent']:,}",
            f"{row['stored']:,}",
            f"{row['lost']:,}",
            f"{row['msg_per_s']:,.0f}",
            f"{row['readings_per_s']:,.0f}",
            f"{row['latency_p50_ms']:.0f} ms",
            f"{row['latency_p99_ms']:.0f} ms",
        )
    out.print(table)
    return {"rows": rows}


# --- disconnect detection -------------------------------------------------------------------------


class EventWatcher:
    """Records when each device's catalog events (kind -> first arrival time_ns) arrive."""

    def __init__(self, url: str) -> None:
        import threading
        from urllib.parse import urlsplit

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.events: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        parts = urlsplit(url)
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-events-{time.monotonic_ns()}",
            protocol=paho.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self._client.subscribe("openfeeder/v1/event/+", qos=1)
        self._client.loop_start()
        self._subscribed.wait(10)

    def _on_message(self, _client: object, _userdata: object, message: Any) -> None:
        now = time.time_ns()
        document = json.loads(message.payload)
        with self._lock:
            self.events.setdefault((document["device_id"], document["kind"]), now)

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for _, k in self.events if k == kind)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def bench_disconnect(devices: int, timeouts_s: tuple[float, ...]) -> dict[str, Any]:
    import httpx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for timeout_s in timeouts_s:
            err.print(
                f"disconnect: {devices} devices fall silent, timeout {timeout_s:g} s ...", end=" "
            )
            port = free_port()
            with broker("mosquitto", workdir) as url:
                config = write_config(
                    workdir / f"disconnect-{timeout_s:g}.toml",
                    url,
                    catalog={
                        "listen_port": port,
                        "url": f"http://127.0.0.1:{port}",
                        "storage_url": f"sqlite:///{workdir}/catalog-{timeout_s:g}.db",
                        "disconnect_timeout_s": timeout_s,
                    },
                )
                with service(
                    ["catalog", "serve", "--config", str(config)],
                    port,
                    workdir,
                    f"catalog-disc-{timeout_s:g}",
                ):
                    watcher = EventWatcher(url)
                    last_seen_ns: dict[str, int] = {}
                    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                        for number in range(devices):
                            device = f"silent-{number:04d}"
                            body = {"device_id": device, "device_type": "meter"}
                            client.post("/v1/devices/boot", json=body).raise_for_status()
                            last_seen_ns[device] = time.time_ns()  # the catalog saw it by now
                        deadline = time.monotonic() + timeout_s + 30
                        while (
                            watcher.count("device_disconnected") < devices
                            and time.monotonic() < deadline
                        ):
                            time.sleep(0.05)
                        polled_ns = {}
                        for device in last_seen_ns:
                            polled_ns[device] = time.time_ns()
                            client.get(f"/v1/devices/{device}/settings").raise_for_status()
                        deadline = time.monotonic() + 30
                        while (
                            watcher.count("device_reconnected") < devices
                            and time.monotonic() < deadline
                        ):
                            time.sleep(0.05)
                    watcher.stop()
            delays = [
                (watcher.events[(d, "device_disconnected")] - seen) / 1e9 - timeout_s
                for d, seen in last_seen_ns.items()
                if (d, "device_disconnected") in watcher.events
            ]
            clears = [
                (watcher.events[(d, "device_reconnected")] - polled) / 1e9
                for d, polled in polled_ns.items()
                if (d, "device_reconnected") in watcher.events
            ]
            row = {
                "devices": devices,
                "timeout_s": timeout_s,
                "detected": len(delays),
                "delay_after_timeout_p50_s": percentile(delays, 50),
                "delay_after_timeout_p99_s": percentile(delays, 99),
                "delay_after_timeout_max_s": max(delays, default=float("nan")),
                "cleared": len(clears),
                "clear_p99_s": percentile(clears, 99),
            }
            err.print(f"max {row['delay_after_timeout_max_s']:.2f} s after the timeout")
            rows.append(row)
    table = Table(
        title="disconnect detection: announced delay after the configured timeout (requirement: <= 1 s)"
    )
    for col in (
        "devices",
        "timeout",
        "detected",
        "p50 after timeout",
        "p99",
        "max",
        "cleared on poll",
        "clear p99",
    ):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            str(row["devices"]),
            f"{row['timeout_s']:g} s",
            str(row["detected"]),
            f"{row['delay_after_timeout_p50_s'] * 1e3:.0f} ms",
            f"{row['delay_after_timeout_p99_s'] * 1e3:.0f} ms",
            f"{row['delay_after_timeout_max_s'] * 1e3:.0f} ms",
            str(row["cleared"]),
            f"{row['clear_p99_s'] * 1e3:.0f} ms",
        )
    out.print(table)
    return {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.iot", description=__doc__)
    parser.add_argument("which", choices=["broker", "ingest", "storm", "disconnect", "all"])
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--messages", type=int, default=25_000, help="per publisher")
    parser.add_argument("--size", type=int, default=600, help="payload bytes")
    parser.add_argument("--devices", type=int, default=10_000, help="storm: devices booting")
    parser.add_argument("--concurrency", type=int, default=200, help="storm: requests in flight")
    parser.add_argument("--storages", default="sqlite,postgresql")
    parser.add_argument("--brokers", default="embedded,mosquitto")
    parser.add_argument("--processes", type=int, default=4, help="ingest: load processes")
    parser.add_argument("--meters", type=int, default=25, help="ingest: meters per process")
    parser.add_argument("--rate", type=float, default=100.0, help="ingest: messages/s per meter")
    parser.add_argument("--seconds", type=float, default=20.0, help="ingest: duration")
    parser.add_argument("--disconnect-devices", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.which in ("broker", "all"):
        report["broker"] = bench_broker(args.publishers, args.messages, args.size)
    storages = tuple(s for s in args.storages.split(",") if s)
    broker_kinds = tuple(b for b in args.brokers.split(",") if b)
    if args.which in ("ingest", "all"):
        report["ingest"] = bench_ingest(
            brokers=broker_kinds,
            storages=storages,
            processes=args.processes,
            meters_per_process=args.meters,
            rate_hz=args.rate,
            seconds=args.seconds,
        )
    if args.which in ("storm", "all"):
        report["storm"] = bench_storm(args.devices, args.concurrency, storages)
    if args.which in ("disconnect", "all"):
        report["disconnect"] = bench_disconnect(args.disconnect_devices, (2.0, 5.0))
    path = args.out or RESULTS / f"iot-{args.which}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    err.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
