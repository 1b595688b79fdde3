"""Grids and measurement sets shared by the state-estimation tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from openfeeder.analysis.estimation import MeasurementSet
from openfeeder.analysis.powerflow import PowerFlowResult, run_power_flow
from openfeeder.model.grid import GridModel
from openfeeder.model.synth import generate_feeders
from openfeeder.sim.scenario import parse_scenario
from openfeeder.sim.twin import Twin

HOUR_NS = 3600 * 10**9


def twin(*, seed: int, case: str | None = "turin", synthetic: dict[str, int] | None = None) -> Twin:
    """A one-day twin of ``case`` (or a synthetic grid) with the default device placements."""
    grid: dict[str, Any] = {"case": case} if synthetic is None else {"synthetic": synthetic}
    return Twin(
        parse_scenario(
            {
                "scenario": {
                    "name": f"se-{seed}",
                    **grid,
                    "start": "2026-03-11T00:00:00+01:00",
                    "duration_s": 86400,
                    "step_s": 60,
                    "seed": seed,
                },
                "profiles": {"utc_offset_h": 1.0},
                "devices": {"dropout_probability": 0.0},
            }
        )
    )


def feeder(buses: int = 120, seed: int = 4) -> tuple[GridModel, PowerFlowResult]:
    """A small synthetic grid (two feeders, one open tie) and its exact power flow."""
    model = generate_feeders(buses=buses, feeders=2, ties=1, seed=seed)
    return model, run_power_flow(model)


def metered(
    model: GridModel,
    flow: PowerFlowResult,
    *,
    seed: int,
    load_share: float = 1.0,
    voltage_every: int = 3,
    noise: bool = True,
) -> MeasurementSet:
    """Noisy measurements of ``flow``: P/Q of a share of the loads and generators, the voltage
    of every ``voltage_every``-th bus (class 0.5) and P/Q at both ends of every closed switch."""
    rng = np.random.default_rng(seed)
    scale = 1.0 if noise else 0.0
    records: list[dict[str, Any]] = []
    load = model.load
    picked = rng.random(load.size) < load_share
    for row in np.flatnonzero(picked).tolist():
        p, q = float(flow.load["p_mw"][row]), float(flow.load["q_mvar"][row])
        sigma = max(0.007 * float(np.hypot(p, q)), 1e-5)
        records.append(
            {
                "id": f"meter-{load['id'][row]}",
                "quantity": "pq",
                "element": int(load["id"][row]),
                "p_mw": p + scale * sigma * rng.normal(),
                "q_mvar": q + scale * sigma * rng.normal(),
                "p_sigma_mw": sigma,
                "q_sigma_mvar": sigma,
            }
        )
    gen = model.generator
    for row in np.flatnonzero(rng.random(gen.size) < load_share).tolist():
        p, q = float(gen["p_mw"][row]), float(gen["q_mvar"][row])
        sigma = max(0.007 * float(np.hypot(p, q)), 1e-5)
        records.append(
            {
                "id": f"meter-{gen['id'][row]}",
                "quantity": "pq",
                "element": int(gen["id"][row]),
                "p_mw": p + scale * sigma * rng.normal(),
                "q_mvar": q + scale * sigma * rng.normal(),
                "p_sigma_mw": sigma,
                "q_sigma_mvar": sigma,
            }
        )
    bus = flow.bus
    for row in range(0, bus.size, voltage_every):
        u, sigma = float(bus["u_kv"][row]), 0.0025 * float(bus["u_kv"][row])
        records.append(
            {
                "id": f"volt-{bus['id'][row]}",
                "quantity": "u",
                "bus": int(bus["id"][row]),
                "u_kv": u + scale * sigma * rng.normal(),
                "u_sigma_kv": sigma,
            }
        )
    branch = flow.branch
    switch_rows = np.flatnonzero((branch["kind"] == 2) & branch["energized"])
    for row in switch_rows.tolist():
        for end in ("from", "to"):
            p, q = float(branch[f"p_{end}_mw"][row]), float(branch[f"q_{end}_mvar"][row])
            sigma = max(0.004 * float(np.hypot(p, q)), 1e-4)
            records.append(
                {
                    "id": f"ftu-{branch['id'][row]}-{end}",
                    "quantity": "pq",
                    "element": int(branch["id"][row]),
                    "end": end,
                    "p_mw": p + scale * sigma * rng.normal(),
                    "q_mvar": q + scale * sigma * rng.normal(),
                    "p_sigma_mw": sigma,
                    "q_sigma_mvar": sigma,
                }
            )
    return MeasurementSet.from_records(records)
