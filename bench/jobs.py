"""One benchmark job, run in a fresh process so that its peak memory is its own.

A job builds its synthetic case (seeded, so every engine sees the same grid), prepares the engine's
input outside the timed region, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
then times the calculation ``repeat`` times and reports the fastest run and the peak memory above the
resident size before the calculation.

Engines:
* ``openfeeder``: the public API (``run_power_flow`` / ``run_time_series``), model in, results out.
* ``pgm``: raw power-grid-model on the same input arrays, no OpenFeeder layer (engine construction
  plus calculation, as a user of the engine would time it), asking for the same output columns.
* ``pandapower``: ``pandapower.runpp`` Newton-Raphson with numba, on the same grid exported with
  ``openfeeder.model.pandapower_io.to_pandapower``; a time series is a loop of ``runpp`` calls
  (pandapower's own time-series module adds overhead on top, so this is its best case).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from openfeeder.model.grid import GridModel
from openfeeder.model.synth import generate_feeders

__all__ = ["bench_case", "daily_profile", "run_job"]

SEED = 2026


def bench_case(buses: int) -> GridModel:
    """The synthetic grid used for ``buses`` (about 50 buses per feeder, a tie per two feeders)."""
    feeders = max(2, buses // 50)
    return generate_feeders(buses=buses, feeders=feeders, ties=feeders // 2, seed=SEED)


def daily_profile(model: GridModel, steps: int) -> np.ndarray:
    """Load snapshots (steps x loads): a daily shape with per-load noise, seeded."""
    rng = np.random.default_rng(SEED)
    hours = np.arange(steps) * 24.0 / steps
    shape = (
        0.55
        + 0.25 * np.sin((hours - 9.0) / 24.0 * 2 * np.pi)
        + 0.2 * np.exp(-((hours - 19.5) ** 2) / 4.0)
    )
    noise = rng.normal(1.0, 0.05, size=(steps, model.load.size))
    return np.outer(shape, model.load["p_mw"]) * noise


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _prepare(engine: str, mode: str, model: GridModel, steps: int) -> Callable[[], Any]:
    profile = daily_profile(model, steps)
    if engine == "openfeeder":
        from openfeeder.analysis.powerflow import run_power_flow, run_time_series

        if mode == "single":
            return lambda: run_power_flow(model)
        return lambda: run_time_series(model, load_p_mw=profile, threads=0)

    if engine == "pgm":
        from power_grid_model import CalculationMethod, ComponentType, PowerGridModel

        from openfeeder.analysis.engine_input import to_engine_input
        from openfeeder.analysis.powerflow import output_attributes

        engine_input = to_engine_input(model)
        if mode == "single":

            def single() -> Any:
                return PowerGridModel(engine_input).calculate_power_flow(
                    symmetric=True,
                    error_tolerance=1e-8,
                    max_iterations=20,
                    calculation_method=CalculationMethod.newton_raphson,
                    output_component_types=output_attributes(engine_input, symmetric=True),
                )

            return single
        ratio = np.divide(
            model.load["q_mvar"],
            model.load["p_mw"],
            out=np.zeros(model.load.size),
            where=model.load["p_mw"] != 0,
        )
        update = {
            ComponentType.sym_load: {
                "id": np.broadcast_to(model.load["id"], profile.shape),
                "p_specified": profile * 1e6,
                "q_specified": profile * ratio * 1e6,
            }
        }

        def batch() -> Any:
            return PowerGridModel(engine_input).calculate_power_flow(
                symmetric=True,
                error_tolerance=1e-8,
                max_iterations=20,
                calculation_method=CalculationMethod.newton_raphson,
                update_data=update,
                threading=0,
                output_component_types=output_attributes(engine_input, symmetric=True, batch=True),
            )

        return batch

    if engine == "pandapower":
        import warnings

        warnings.simplefilter("ignore")
        import pandapower as pp

        from openfeeder.model.pandapower_io import to_pandapower

        net = to_pandapower(model)
        if mode == "single":
            return lambda: pp.runpp(net, algorithm="nr", numba=True, tolerance_mva=1e-8)
        ratio = np.divide(
            model.load["q_mvar"],
            model.load["p_mw"],
            out=np.zeros(model.load.size),
            where=model.load["p_mw"] != 0,
        )

        def loop() -> None:
            for step in range(profile.shape[0]):
                net.load["p_mw"] = profile[step]
                net.load["q_mvar"] = profile[step] * ratio
                pp.runpp(net, algorithm="nr", numba=True, tolerance_mva=1e-8)

        pp.runpp(net, algorithm="nr", numba=True)  # warm-up: numba compiles on the first call
        return loop

    if engine == "topology":
        from openfeeder.model.topology import analyze_topology

        return lambda: analyze_topology(model)
    raise ValueError(f"unknown engine {engine}")


def run_job(engine: str, mode: str, buses: int, steps: int, repeat: int) -> dict[str, Any]:
    model = bench_case(buses)
    call = _prepare(engine, mode, model, steps)
    if mode == "single":
        call()  # warm caches (and numba's compilation) outside the measurement
    rss_before = _rss_kib("VmRSS")
    tracked = _reset_peak()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = _rss_kib("VmHWM") if tracked else 0
    return {
        "engine": engine,
        "mode": mode,
        "buses": int(model.bus.size),
        "steps": steps if mode == "batch" else 1,
        "seconds": min(times),
        "seconds_all": times,
        "peak_mib": max(0, peak - rss_before) / 1024 if tracked else None,
    }


if __name__ == "__main__":
    engine_arg, mode_arg, buses_arg, steps_arg, repeat_arg = sys.argv[1:6]
    print(
        json.dumps(run_job(engine_arg, mode_arg, int(buses_arg), int(steps_arg), int(repeat_arg)))
    )
