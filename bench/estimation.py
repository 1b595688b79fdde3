"""State estimation speed (issue #6): ``python -m bench.estimation [--sizes ...] [--out FILE]``.

For each size the synthetic grid of the power-flow benchmarks (``bench.jobs.bench_case``: about 50
buses per feeder) is measured as a utility would meter it: its ``measurement`` table puts a feeder
terminal unit on every feeder-head breaker (busbar voltage and the feeder's P/Q, class 0.5) and
smart meters on about 30 % of the loads (voltage and P/Q, class 1). The true state is a power flow
with every load drawn between 50 % and 120 % of its case value (seeded); readings get Gaussian
noise of their class (the limit at two sigma). The other loads and the PV get pseudo-measurements
from their case values, 50 % standard deviation, as ``estimate_state`` adds them.

Engines, each timed in a process of its own on the same measurements, cold (everything from the
model and the readings) and warm (the same model and meters as the call before, fresh readings: a
tenth of a sigma of new noise on every value, as a periodic estimator gets them):

* ``openfeeder``: ``estimate_state(model, measurements, uncertainty=False)``: locating and checking
  the measurements, observability, pseudo-measurements, the engine and the chi-square test (the
  clean data pass it, so no Jacobian is built); the result tables, the per-measurement values and
  residuals are built when first read (docs/estimation.md), so a second warm time includes
  ``as_dict()`` (every table and per-measurement value materialized). Cold: a first estimate with
  this placement of meters (placement and engine caches cleared; what depends on the model alone,
  its id lookups, branch table, islands, engine input without sensors and the pseudo-measurement
  rows of its own load values, is kept, as raw power-grid-model's cold gets its converted input);
  first: also the model caches cleared (a model never seen); warm: reusing the placement and the
  converted engine model it kept;
* ``openfeeder-nobad``: the same without the bad-data test (``bad_data=False``);
* ``openfeeder+sigma``: with the voltage standard deviations (``uncertainty=True``);
* ``pgm``: raw power-grid-model handed the same sensors (pseudo-measurements included, measured
  switches as the same short lines), iterative linear, tolerance 1e-6, the same output columns;
  cold: ``PowerGridModel(input)`` plus ``calculate_state_estimation``; warm: ``update()`` of the
  kept instance's sensors (update arrays prepared outside the timing) plus the calculation;
* ``pandapower``: ``pandapower.estimation.estimate`` (WLS, flat start, tolerance 1e-6, zero-injection
  buses as virtual measurements) on the grid exported with ``to_pandapower`` and the same
  measurements; a feeder-head switch's flow is put on the cable leaving its bay bus (the same flow:
  the bay bus has nothing else), appliance measurements on the loads and generators. It keeps
  nothing between calls: cold and warm are the same full estimate.

With ``--paired N`` the run then puts openfeeder and raw power-grid-model side by side in one
process of its own per size, call by call: N cold pairs, then N warm pairs, the order flipping
every pair, and reports the median of the per-pair ratios with its quartiles. Separate processes
keep each engine's memory to itself but compare medians taken minutes apart; on a shared machine
those drift by more than the 1.2x the issue allows, and pairs cancel the drift.

Times are medians of ``--repeat`` calls of each kind after one untimed call
(pandapower: a single call of each above 10,000 buses); a job over ``--timeout`` seconds is
reported as "timeout". Prints a table and writes ``bench/results/estimation.json``.
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
from typing import Any, Final

import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
ENGINES: Final = ("openfeeder", "openfeeder-nobad", "openfeeder+sigma", "pgm", "pandapower")
SEED: Final = 2026
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=150)


# -- the case and its measurements ----------------------------------------------------------------


def _case(buses: int) -> tuple[Any, Any, Any]:
    """Model, true power flow and the measurement set for ``buses``."""
    from bench.jobs import bench_case
    from openfeeder.analysis.estimation import MeasurementSet, sigmas_from_accuracy_class
    from openfeeder.analysis.estimation.measurement_set import Quantity
    from openfeeder.analysis.powerflow import run_power_flow
    from openfeeder.model.components import MeasurementKind, enum_code

    model = bench_case(buses)
    rng = np.random.default_rng(SEED)
    load = model.load.copy()
    factor = rng.uniform(0.5, 1.2, size=load.size)
    load["p_mw"] *= factor
    load["q_mvar"] *= factor
    flow = run_power_flow(model.replace(load=load))
    table = model.measurement
    bus_row = {int(b): k for k, b in enumerate(model.bus["id"].tolist())}
    load_row = {int(i): k for k, i in enumerate(model.load["id"].tolist())}
    branch_row = {int(i): k for k, i in enumerate(flow.branch["id"].tolist())}
    records: list[dict[str, Any]] = []
    for row in table:
        mid, bus, element = int(row["id"]), int(row["bus"]), int(row["element"])
        accuracy = float(row["accuracy_class"])
        u_kv = float(flow.bus["u_kv"][bus_row[bus]])
        sigma = sigmas_from_accuracy_class(Quantity.U, accuracy, u_kv=u_kv)["u_sigma_kv"]
        records.append(
            {"id": f"{mid}:u", "quantity": "u", "bus": bus,
             "u_kv": u_kv + sigma * rng.normal(), "u_sigma_kv": sigma}
        )  # fmt: skip
        if not row["measures_power"]:
            continue
        if row["kind"] == enum_code(MeasurementKind.METER):
            p = float(flow.load["p_mw"][load_row[element]])
            q = float(flow.load["q_mvar"][load_row[element]])
            where: dict[str, Any] = {"element": element}
        else:
            k = branch_row[element]
            end = "to" if int(row["element_end"]) == 1 else "from"
            p, q = float(flow.branch[f"p_{end}_mw"][k]), float(flow.branch[f"q_{end}_mvar"][k])
            where = {"element": element, "end": end}
        sigmas = sigmas_from_accuracy_class(Quantity.PQ, accuracy, p_mw=p, q_mvar=q)
        records.append(
            {"id": f"{mid}:pq", "quantity": "pq", **where,
             "p_mw": p + sigmas["p_sigma_mw"] * rng.normal(),
             "q_mvar": q + sigmas["q_sigma_mvar"] * rng.normal(), **sigmas}
        )  # fmt: skip
    return model, flow, MeasurementSet.from_records(records)


def _full_set(model: Any, measurements: Any) -> Any:
    """The measurements plus the pseudo-measurements ``estimate_state`` adds."""
    from openfeeder.analysis.estimation import locate_measurements
    from openfeeder.analysis.estimation.observability import PseudoOptions, pseudo_measurements

    located = locate_measurements(model, measurements)
    added = pseudo_measurements(model, located, None, PseudoOptions())
    return measurements.concat(added)


# -- one job ---------------------------------------------------------------------------------------


def _readings(measurements: Any, cycles: int) -> list[Any]:
    """``cycles`` sets of the same meters with fresh readings (a tenth of a sigma of new noise on
    every value), as a periodic estimator gets them."""
    from openfeeder.analysis.estimation import MeasurementSet

    rng = np.random.default_rng(SEED + 1)
    out = []
    for _ in range(cycles):
        table = measurements.table.copy()
        for value, sigma in (
            ("u_kv", "u_sigma_kv"),
            ("p_mw", "p_sigma_mw"),
            ("q_mvar", "q_sigma_mvar"),
        ):
            noise = 0.1 * table[sigma] * rng.normal(size=table.size)
            table[value] = np.where(np.isfinite(table[value]), table[value] + noise, np.nan)
        out.append(MeasurementSet(measurements.ids, table))
    return out


def _prepare(engine: str, model: Any, measurements: Any, cycles: int) -> tuple[Any, Any, Any]:
    """The calls to time by kind (``cold``, ``warm``; openfeeder also ``first`` and
    ``warm_as_dict``), each given a cycle number, and a function from a result to the bus
    voltages (pu, model order). Cold: a new placement of meters; warm: the same model and meters
    as the call before, new readings (what a periodic estimator does)."""
    sets = _readings(measurements, cycles)
    if engine.startswith("openfeeder"):
        from openfeeder.analysis.estimation import estimate_state
        from openfeeder.analysis.estimation.estimator import clear_caches

        sigma = engine == "openfeeder+sigma"  # explicit: the default computes them up to 5,000
        bad_data = engine != "openfeeder-nobad"

        def warm_estimate(k: int) -> Any:
            return estimate_state(model, sets[k], uncertainty=sigma, bad_data=bad_data)

        def cold_estimate(k: int) -> Any:
            clear_caches(models=False)
            return warm_estimate(k)

        def first_estimate(k: int) -> Any:
            clear_caches()
            return warm_estimate(k)

        def warm_as_dict(k: int) -> Any:
            result = warm_estimate(k)
            result.as_dict()
            return result

        calls = {
            "cold": cold_estimate,
            "warm": warm_estimate,
            "first": first_estimate,
            "warm_as_dict": warm_as_dict,
        }
        return calls, None, lambda result: result.bus["u_pu"]
    if engine == "pgm":
        from power_grid_model import (
            CalculationMethod,
            ComponentType,
            DatasetType,
            PowerGridModel,
            initialize_array,
        )

        from openfeeder.analysis.engine_input import to_engine_input
        from openfeeder.analysis.estimation import locate_measurements
        from openfeeder.analysis.estimation.engine_wls import (
            _measured_switches_as_lines,
            _output_filter,
            _sensors,
        )

        full_sets = [_full_set(model, m) for m in sets]
        located = [locate_measurements(model, m) for m in full_sets]
        engine_input = to_engine_input(model)
        _measured_switches_as_lines(model, located[0], engine_input)
        next_id = int(model.all_ids().max(initial=0)) + 1
        sensors = [
            _sensors(model, loc, np.zeros(len(loc.measurements)), next_id) for loc in located
        ]
        engine_input.update(sensors[0])
        columns = _output_filter(engine_input)

        def update_of(values: dict[Any, Any]) -> dict[Any, Any]:
            out = {}
            for kind, array in values.items():
                update = initialize_array(DatasetType.update, kind, array.size)
                for name in update.dtype.names or ():
                    if name in (array.dtype.names or ()):
                        update[name] = array[name]
                out[kind] = update
            return out

        updates = [update_of(v) for v in sensors]  # prepared outside the timing
        options = {
            "symmetric": True,
            "error_tolerance": 1e-6,
            "max_iterations": 100,
            "calculation_method": CalculationMethod.iterative_linear,
            "output_component_types": columns,
        }
        kept: dict[str, Any] = {}

        def cold(k: int) -> Any:
            data = dict(engine_input)
            data.update(sensors[k])
            kept["model"] = PowerGridModel(data)
            return kept["model"].calculate_state_estimation(**options)

        def warm(k: int) -> Any:
            kept["model"].update(update_data=updates[k])
            return kept["model"].calculate_state_estimation(**options)

        return {"cold": cold, "warm": warm}, None, lambda r: r[ComponentType.node]["u_pu"]
    if engine == "pandapower":
        import warnings

        warnings.simplefilter("ignore")
        from pandapower.estimation import estimate

        net = _pandapower_net(model, _full_set(model, sets[0]))

        def wls(k: int) -> Any:
            del k  # pandapower keeps nothing between estimates: every call starts over
            ok = estimate(
                net,
                algorithm="wls",
                init="flat",
                tolerance=1e-6,
                maximum_iterations=50,
                zero_injection="no_inj_bus",
            )
            if not ok:
                raise RuntimeError("pandapower's estimate did not converge")
            return net

        return (
            {"cold": wls, "warm": wls},
            None,
            lambda result: result.res_bus_est.loc[model.bus["id"], "vm_pu"].to_numpy(),
        )
    raise ValueError(f"unknown engine {engine}")


def _pandapower_net(model: Any, measurements: Any) -> Any:
    """The grid in pandapower with the same measurements: voltages on buses; appliance powers
    summed per bus (pandapower takes injections on buses only, consumption positive, as the
    engine sums them too); a feeder-head switch's flow on the cable leaving its bay bus."""
    import pandas as pd

    from openfeeder.analysis.estimation import locate_measurements
    from openfeeder.analysis.estimation.locate import Target
    from openfeeder.model.pandapower_io import to_pandapower

    net = to_pandapower(model)
    located = locate_measurements(model, measurements)
    table = measurements.table
    bus_id = model.bus["id"]
    vn = model.bus["u_rated_kv"]
    rows: list[tuple[str, str, int, float, float, Any]] = []
    voltage = np.flatnonzero(table["quantity"] == 0)
    for k in voltage.tolist():
        b = located.bus_row[k]
        rows.append(
            (
                "v",
                "bus",
                int(bus_id[b]),
                table["u_kv"][k] / vn[b],
                table["u_sigma_kv"][k] / vn[b],
                None,
            )
        )
    appliance = (located.target == Target.LOAD) | (located.target == Target.GENERATOR)
    appliance &= table["quantity"] == 2
    sign = np.where(located.target == Target.LOAD, 1.0, -1.0)
    n = bus_id.size
    k = np.flatnonzero(appliance)
    b = located.bus_row[k]
    p = np.bincount(b, sign[k] * table["p_mw"][k], n)
    q = np.bincount(b, sign[k] * table["q_mvar"][k], n)
    p_var = np.bincount(b, table["p_sigma_mw"][k] ** 2, n)
    q_var = np.bincount(b, table["q_sigma_mvar"][k] ** 2, n)
    for row in np.flatnonzero(p_var > 0).tolist():
        rows.append(("p", "bus", int(bus_id[row]), p[row], float(np.sqrt(p_var[row])), None))
        rows.append(("q", "bus", int(bus_id[row]), q[row], float(np.sqrt(q_var[row])), None))
    lines = model.line
    for k in np.flatnonzero((located.target == Target.BRANCH) & (table["quantity"] == 2)).tolist():
        switch = model.switch[model.switch["id"] == table["element"][k]][0]
        bay = int(switch["to_bus"] if table["end"][k] == 0 else switch["from_bus"])
        touching = np.flatnonzero((lines["from_bus"] == bay) | (lines["to_bus"] == bay))
        if touching.size != 1:
            raise RuntimeError(f"switch {switch['id']}: bay bus {bay} has {touching.size} lines")
        line = lines[touching[0]]
        side = "from" if int(line["from_bus"]) == bay else "to"
        rows.append(("p", "line", int(line["id"]), table["p_mw"][k], table["p_sigma_mw"][k], side))
        rows.append(
            ("q", "line", int(line["id"]), table["q_mvar"][k], table["q_sigma_mvar"][k], side)
        )
    frame = pd.DataFrame(
        rows, columns=["measurement_type", "element_type", "element", "value", "std_dev", "side"]
    )
    frame["name"] = None
    frame["check_existing"] = False
    net.measurement = pd.concat(
        [net.measurement, frame[[c for c in net.measurement.columns if c in frame]]],
        ignore_index=True,
    )
    return net


def run_job(engine: str, buses: int, repeat: int) -> dict[str, Any]:
    """Medians of ``repeat`` calls of each kind (pandapower: one of each above 10,000 buses)."""
    model, flow, measurements = _case(buses)
    runs = repeat if engine != "pandapower" or buses <= 10_000 else 1
    calls, _, voltages = _prepare(engine, model, measurements, 4 * runs + 3)
    times: dict[str, list[float]] = {}
    result = calls["cold"](0)  # imports and first-touch costs out of the timing
    cycle = 1
    for mode in ("first", "cold", "warm", "warm_as_dict"):
        if mode not in calls:
            continue
        times[mode] = []
        if mode.startswith("warm"):
            calls["warm"](cycle)  # the call before (same placement) is not timed
            cycle += 1
        for _ in range(runs):
            start = time.perf_counter()
            result = calls[mode](cycle)
            times[mode].append(time.perf_counter() - start)
            cycle += 1
    result = calls["warm"](0)  # every engine's error on the same readings
    u = np.asarray(voltages(result), dtype=np.float64)
    error = np.abs(u - flow.bus["u_pu"])
    row: dict[str, Any] = {
        "engine": engine,
        "buses": int(model.bus.size),
        "measurements": len(measurements),
    }
    for mode, values in times.items():
        row[f"{mode}_seconds"] = float(np.median(values))
        row[f"{mode}_seconds_all"] = values
    row["u_max_error_pu"] = float(np.nanmax(error))
    row["u_rms_error_pu"] = float(np.sqrt(np.nanmean(error**2)))
    return row


def run_paired(buses: int, pairs: int) -> dict[str, Any]:
    """openfeeder against raw power-grid-model in one process, call by call: ``pairs`` cold pairs
    and then ``pairs`` warm pairs, the order within a pair flipping every pair, each pair's
    ratio taken at once (the machine's drift between processes and moments cancels)."""
    model, _, measurements = _case(buses)
    ours, _, _ = _prepare("openfeeder", model, measurements, 4 * pairs + 4)
    raw, _, _ = _prepare("pgm", model, measurements, 4 * pairs + 4)
    ours["cold"](0)  # imports and first-touch costs out of the timing
    raw["cold"](0)
    cycle = 1

    def timed(call: Any, k: int) -> float:
        start = time.perf_counter()
        call(k)
        return time.perf_counter() - start

    out: dict[str, Any] = {"buses": int(model.bus.size), "pairs": pairs}
    for mode in ("cold", "warm"):
        if mode == "warm":  # the calls before (same placement) are not timed
            ours["warm"](cycle)
            raw["warm"](cycle)
            cycle += 1
        ratios = []
        for number in range(pairs):
            if number % 2 == 0:
                ours_s, raw_s = timed(ours[mode], cycle), timed(raw[mode], cycle)
            else:
                raw_s, ours_s = timed(raw[mode], cycle), timed(ours[mode], cycle)
            cycle += 1
            ratios.append(ours_s / raw_s)
        quartiles = np.percentile(ratios, [25, 50, 75])
        out[mode] = {
            "ratio_median": float(quartiles[1]),
            "ratio_quartiles": [float(quartiles[0]), float(quartiles[2])],
            "ratios": ratios,
        }
    return out


def print_paired(rows: list[dict[str, Any]]) -> None:
    table = Table("buses", "pairs", "cold: openfeeder / pgm, median (quartiles)",
                  "warm: openfeeder / pgm, median (quartiles)",
                  title="paired in one process, call by call")  # fmt: skip
    for row in rows:
        cells = [
            f"{row[m]['ratio_median']:.2f}x ({row[m]['ratio_quartiles'][0]:.2f}"
            f"-{row[m]['ratio_quartiles'][1]:.2f})"
            for m in ("cold", "warm")
        ]
        table.add_row(str(row["buses"]), str(row["pairs"]), *cells)
    out.print(table)


# -- the run ---------------------------------------------------------------------------------------


def _job(engine: str, buses: int, repeat: int, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.estimation", "--job", engine, str(buses), str(repeat)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, check=False, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"engine": engine, "buses": buses, "timeout": timeout_s}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"engine": engine, "buses": buses, "error": tail[0]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _paired_job(buses: int, pairs: int, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.estimation", "--paired-job", str(buses), str(pairs)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, check=False, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"buses": buses, "timeout": timeout_s}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"buses": buses, "error": tail[0]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _fmt(row: dict[str, Any] | None, mode: str = "warm") -> str:
    if row is None:
        return "-"
    if "timeout" in row:
        return f"timeout (> {row['timeout']:g} s)"
    if "error" in row:
        return "error"
    if f"{mode}_seconds" not in row:
        return "-"
    value = row[f"{mode}_seconds"]
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = tuple(e for e in args.engines.split(",") if e)
    rows = []
    for size in sizes:
        for engine in engines:
            err.print(f"{engine:>17} {size:>7} buses ...", end=" ")
            row = _job(engine, size, args.repeat, args.timeout)
            err.print(row.get("error") or f"cold {_fmt(row, 'cold')}, warm {_fmt(row)}")
            rows.append(row)
    from importlib.metadata import version

    load = os.getloadavg()
    return {
        "benchmark": "state estimation",
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1min_after": load[0],
            "power-grid-model": version("power-grid-model"),
            "pandapower": version("pandapower"),
        },
        "rows": rows,
    }


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None, mode: str) -> str:
    """``num``'s time over ``den``'s, both cold or both warm."""
    key = f"{mode}_seconds"
    if num is None or den is None or key not in den:
        return "-"
    if "timeout" in num:
        return f"> {num['timeout'] / den[key]:.0f}x"
    if key not in num:
        return "-"
    return f"{num[key] / den[key]:.2f}x"


_MODES: Final = ("first", "cold", "warm", "warm_as_dict")
_MODE_NAMES: Final = {
    "first": "first",
    "cold": "cold",
    "warm": "warm",
    "warm_as_dict": "warm+as_dict",
}


def print_table(report: dict[str, Any]) -> None:
    rows = report["rows"]
    sizes = sorted({r["buses"] for r in rows})
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    columns = [
        (e, m)
        for e in engines
        if e != "pandapower"
        for m in _MODES
        if any(f"{m}_seconds" in r for r in rows if r["engine"] == e)
    ]
    heads = [f"{e} {_MODE_NAMES[m]}" for e, m in columns]
    heads += ["pandapower"] if "pandapower" in engines else []
    table = Table("buses", "measurements", *heads, "openfeeder / pgm (cold, warm)",
                  "pandapower / openfeeder (cold, warm)", "max |du| pu (of / pgm / pp)",
                  title="state estimation, one snapshot (medians)")  # fmt: skip
    for size in sizes:
        at = {r["engine"]: r for r in rows if r["buses"] == size}
        ours, pgm, pp = at.get("openfeeder"), at.get("pgm"), at.get("pandapower")
        cells = [_fmt(at.get(e), m) for e, m in columns]
        cells += [_fmt(pp)] if "pandapower" in engines else []
        errors = " / ".join(
            f"{r['u_max_error_pu']:.1e}" if r and "u_max_error_pu" in r else "-"
            for r in (ours, pgm, pp)
        )
        measured = next((r["measurements"] for r in at.values() if "measurements" in r), "-")
        versus_pgm = f"{_ratio(ours, pgm, 'cold')}, {_ratio(ours, pgm, 'warm')}"
        versus_pp = f"{_ratio(pp, ours, 'cold')}, {_ratio(pp, ours, 'warm')}"
        table.add_row(str(size), str(measured), *cells, versus_pgm, versus_pp, errors)
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.estimation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeat", type=int, default=5, help="cold and warm calls per job")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per job")
    parser.add_argument("--out", type=Path, default=RESULTS / "estimation.json")
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="also openfeeder against pgm in one process, N cold and N warm pairs per size",
    )
    parser.add_argument(
        "--job", nargs=3, metavar=("ENGINE", "BUSES", "REPEAT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--paired-job", nargs=2, metavar=("BUSES", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        engine, buses, repeat = args.job
        print(json.dumps(run_job(engine, int(buses), int(repeat))))
        return 0
    if args.paired_job:
        buses, pairs = args.paired_job
        print(json.dumps(run_paired(int(buses), int(pairs))))
        return 0
    report = run(args)
    print_table(report)
    if args.paired:
        report["paired"] = []
        for size in (int(s) for s in args.sizes.split(",")):
            err.print(f"{'paired':>17} {size:>7} buses ...")
            report["paired"].append(_paired_job(size, args.paired, args.timeout))
        print_paired([row for row in report["paired"] if "cold" in row])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
