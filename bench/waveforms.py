"""Fault-record benchmark: ``python -m bench.waveforms [options]``.

One fault event on the built-in "turin" case: ``--prefault-s`` of pre-fault, a phase-a fault with
its DC offset lasting ``--fault-s``, then ``--after-s`` after the trip. The pre-fault state is the
real three-phase power flow; the fault state adds a 400 A phase-a fault current and a phase-a sag
by hand (the fault calculation is not needed to time the waveform generator). Timed, best of
``--repeat``:

- generating the record (``generate_waveforms``) at one measuring point and at ``--points``
  points, plain and with an intermittent arc on phase a;
- writing it as COMTRADE ASCII and BINARY (revision 1999), with the file sizes.

Prints a table and writes ``bench/results/waveforms.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

from openfeeder.analysis.phasors import PhasorState, solve_phasors
from openfeeder.model.cases import load_builtin
from openfeeder.model.grid import GridModel
from openfeeder.sim.comtrade import write_comtrade
from openfeeder.sim.segments import ArcBehaviour, StateSegment
from openfeeder.sim.waveforms import MeasuringPoint, WaveformRecord, generate_waveforms

RESULTS = Path(__file__).parent / "results"
START_NS = 1_700_000_000_000_000_000
NS_PER_S = 1_000_000_000

T = TypeVar("T")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=150)


def _best(action: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Best wall time of ``repeat`` runs (the least disturbed by the shared machine)."""
    started = time.perf_counter()
    result = action()
    best = time.perf_counter() - started
    for _ in range(repeat - 1):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return best, result


def _segments(
    prefault: PhasorState, prefault_s: float, fault_s: float, arc: bool
) -> list[StateSegment]:
    i_from, i_to, u_v = prefault.i_from_a.copy(), prefault.i_to_a.copy(), prefault.u_v.copy()
    fault_a = 400.0 * np.exp(-1j * np.deg2rad(80.0))
    i_from[:, 0] += fault_a
    i_to[:, 0] -= fault_a
    u_v[:, 0] *= 0.3
    fault = dataclasses.replace(prefault, i_from_a=i_from, i_to_a=i_to, u_v=u_v)
    tripped = dataclasses.replace(
        prefault,
        u_v=np.zeros_like(u_v),
        i_from_a=np.zeros_like(i_from),
        i_to_a=np.zeros_like(i_to),
        i_load_a=np.zeros_like(prefault.i_load_a),
    )
    fault_ns = START_NS + round(prefault_s * NS_PER_S)
    arcing = ArcBehaviour(phases=(0,), arc_voltage_v=1500.0) if arc else None
    return [
        StateSegment(START_NS, prefault, "prefault"),
        StateSegment(fault_ns, fault, "fault", transient=True, dc_time_constant_s=0.03, arc=arcing),
        StateSegment(fault_ns + round(fault_s * NS_PER_S), tripped, "trip"),
    ]


def _points(model: GridModel, count: int) -> list[MeasuringPoint]:
    """Feeder-head and sectionalizing switches first, then loads: where recorders sit."""
    points = [MeasuringPoint.at_branch_end(model, int(i)) for i in model.switch["id"]]
    points += [MeasuringPoint.at_load(model, int(i)) for i in model.load["id"]]
    if count > len(points):
        raise SystemExit(f"--points {count}: the case has only {len(points)} measuring points")
    return points[:count]


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_builtin("turin")
    prefault = solve_phasors(model).state(0)
    end_ns = START_NS + round((args.prefault_s + args.fault_s + args.after_s) * NS_PER_S)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for count in (1, args.points):
            for arc in (False, True):
                segments = _segments(prefault, args.prefault_s, args.fault_s, arc)
                points = _points(model, count)

                def generate(
                    segments: list[StateSegment] = segments, points: list[MeasuringPoint] = points
                ) -> WaveformRecord:
                    return generate_waveforms(
                        segments,
                        points,
                        start_ns=START_NS,
                        end_ns=end_ns,
                        sampling_rate_hz=args.rate,
                    )

                generate_s, record = _best(generate, args.repeat)
                row: dict[str, Any] = {
                    "points": count,
                    "arc": arc,
                    "samples": record.samples,
                    "channels": 6 * count,
                    "generate_s": generate_s,
                }
                for data_format in ("ASCII", "BINARY"):
                    name = f"p{count}_{'arc' if arc else 'plain'}_{data_format.lower()}"

                    def write(
                        record: WaveformRecord = record, name: str = name, fmt: str = data_format
                    ) -> tuple[Path, Path]:
                        return write_comtrade(
                            record,
                            folder,
                            name,
                            station_name="Turin S1",
                            device_id="openfeeder-bench",
                            data_format=fmt,  # type: ignore[arg-type]
                        )

                    write_s, (cfg, dat) = _best(write, args.repeat)
                    row[f"{data_format.lower()}_write_s"] = write_s
                    row[f"{data_format.lower()}_dat_bytes"] = dat.stat().st_size
                    row[f"{data_format.lower()}_cfg_bytes"] = cfg.stat().st_size
                err.print(
                    f"{count:>3} point(s) {'arc' if arc else 'plain':>5}: "
                    f"generate {generate_s * 1e3:.1f} ms"
                )
                rows.append(row)

    table = Table(
        title=(
            f"fault record: {args.prefault_s} s pre-fault + {args.fault_s} s fault + "
            f"{args.after_s} s after the trip at {args.rate} Hz (best of {args.repeat})"
        )
    )
    for col in ("points", "arc", "samples", "generate", "ASCII write", "ASCII .dat",
                "BINARY write", "BINARY .dat"):  # fmt: skip
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            str(row["points"]),
            "yes" if row["arc"] else "no",
            f"{row['samples']:,}",
            f"{row['generate_s'] * 1e3:.1f} ms",
            f"{row['ascii_write_s'] * 1e3:.1f} ms",
            f"{row['ascii_dat_bytes'] / 1024:.0f} KiB",
            f"{row['binary_write_s'] * 1e3:.1f} ms",
            f"{row['binary_dat_bytes'] / 1024:.0f} KiB",
        )
    out.print(table)
    return {
        "case": "turin",
        "sampling_rate_hz": args.rate,
        "prefault_s": args.prefault_s,
        "fault_s": args.fault_s,
        "after_s": args.after_s,
        "repeat": args.repeat,
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waveforms", description=__doc__)
    parser.add_argument("--rate", type=int, default=8000, choices=(3200, 4000, 8000))
    parser.add_argument("--prefault-s", type=float, default=0.2)
    parser.add_argument("--fault-s", type=float, default=0.1)
    parser.add_argument("--after-s", type=float, default=0.3)
    parser.add_argument("--points", type=int, default=10, help="measuring points of the big run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = parser.parse_args()
    if args.repeat < 1 or args.points < 1:
        parser.error("--repeat and --points must be at least 1")
    from importlib.metadata import version

    report: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "numpy": version("numpy"),
        },
        "waveforms": run(args),
    }
    path = args.out or RESULTS / "waveforms.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    err.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
