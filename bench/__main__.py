"""Run the benchmarks: ``python -m bench {powerflow,topology,all} [options]``.

Every measurement runs in its own process (``bench/jobs.py``) so its peak memory is its own. Prints
a table and writes ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
ENGINES = ("openfeeder", "pgm", "pandapower")
PANDAPOWER_BATCH_MAX_BUSES = 10_000
"""A 96-step pandapower loop above this size takes tens of minutes; it is not run (and said so)."""

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=150)


def _job(engine: str, mode: str, buses: int, steps: int, repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.jobs", engine, mode, str(buses), str(steps), str(repeat)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"engine": engine, "mode": mode, "buses": buses, "error": tail[0]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _environment() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "power-grid-model": version("power-grid-model"),
        "pandapower": version("pandapower"),
        "numba": version("numba"),
    }


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def powerflow(
    sizes: list[int], steps: int, repeat: int, engines: tuple[str, ...]
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    plan = [
        (mode, size, engine) for size in sizes for mode in ("single", "batch") for engine in engines
    ]
    for number, (mode, size, engine) in enumerate(plan, 1):
        if engine == "pandapower" and mode == "batch" and size > PANDAPOWER_BATCH_MAX_BUSES:
            rows.append({"engine": engine, "mode": mode, "buses": size, "skipped": "too slow"})
            continue
        err.print(f"[{number}/{len(plan)}] {engine:>10} {mode:>6} {size:>7} buses ...", end=" ")
        reps = repeat if mode == "single" or size <= PANDAPOWER_BATCH_MAX_BUSES else 2
        if engine == "pandapower" and mode == "batch":
            reps = 1  # minutes per run; one is enough to show the order of magnitude
        row = _job(engine, mode, size, steps, reps)
        err.print(row.get("error") or _fmt_s(row.get("seconds")))
        rows.append(row)

    table = Table(title=f"power flow (Newton-Raphson; batch = {steps} steps)")
    for col in ("buses", "mode", "openfeeder", "raw PGM", "pandapower", "OF / PGM", "PP / OF",
                "peak MiB OF / PGM / PP"):  # fmt: skip
        table.add_column(col, justify="right")
    summary = []
    for size in sizes:
        for mode in ("single", "batch"):
            found = {r["engine"]: r for r in rows if r["buses"] == size and r["mode"] == mode}
            t = {e: found.get(e, {}).get("seconds") for e in ENGINES}
            mem = {e: found.get(e, {}).get("peak_mib") for e in ENGINES}
            of_vs_pgm = t["openfeeder"] / t["pgm"] if t["openfeeder"] and t["pgm"] else None
            pp_vs_of = (
                t["pandapower"] / t["openfeeder"] if t["openfeeder"] and t["pandapower"] else None
            )
            summary.append({"buses": size, "mode": mode, "seconds": t, "peak_mib": mem,
                            "openfeeder_over_pgm": of_vs_pgm, "pandapower_over_openfeeder": pp_vs_of})  # fmt: skip
            pp_text = _fmt_s(t["pandapower"])
            if found.get("pandapower", {}).get("skipped"):
                pp_text = "not run"
            table.add_row(
                f"{size:,}",
                mode,
                _fmt_s(t["openfeeder"]),
                _fmt_s(t["pgm"]),
                pp_text,
                f"{of_vs_pgm:.3f}x" if of_vs_pgm else "-",
                f"{pp_vs_of:.0f}x" if pp_vs_of else "-",
                " / ".join("-" if mem[e] is None else f"{mem[e]:.0f}" for e in ENGINES),
            )
    out.print(table)
    return {"rows": rows, "summary": summary}


def topology(sizes: list[int], repeat: int) -> dict[str, Any]:
    rows = []
    for size in sizes:
        err.print(f"topology {size:>7} buses ...", end=" ")
        row = _job("topology", "single", size, 1, repeat)
        err.print(row.get("error") or _fmt_s(row.get("seconds")))
        rows.append(row)
    table = Table(title="topology (islands, feeders, sections, ties, radiality)")
    for col in ("buses", "time", "peak MiB"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            f"{row['buses']:,}",
            _fmt_s(row.get("seconds")),
            "-" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f}",
        )
    out.print(table)
    return {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("which", choices=["powerflow", "topology", "all"])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated bus counts")
    parser.add_argument("--steps", type=int, default=96, help="time-series steps")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="subset of " + ",".join(ENGINES)
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = tuple(e for e in args.engines.split(",") if e)
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine(s): {', '.join(sorted(unknown))}")
    report: dict[str, Any] = {"environment": _environment(), "sizes": sizes}
    if args.which in ("powerflow", "all"):
        report["powerflow"] = powerflow(sizes, args.steps, args.repeat, engines)
    if args.which in ("topology", "all"):
        report["topology"] = topology(sizes, args.repeat)
    path = args.out or RESULTS / f"{args.which}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    err.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
