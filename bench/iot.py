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
import signal
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

RESULTS = Path(__file__).parent / "results"
POSTGRES_URL = os.environ.get(
    "OPENFEEDER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=150)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
        config = workdir / f"mosquitto-{port}.conf"
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
        _stop(process)
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.iot", description=__doc__)
    parser.add_argument("which", choices=["broker", "all"])
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--messages", type=int, default=25_000, help="per publisher")
    parser.add_argument("--size", type=int, default=600, help="payload bytes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.which in ("broker", "all"):
        report["broker"] = bench_broker(args.publishers, args.messages, args.size)
    path = args.out or RESULTS / f"iot-{args.which}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    err.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
