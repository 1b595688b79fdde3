"""Summary and JSON document of a power-flow result (what the CLI prints and services publish).

The JSON document (``openfeeder pf --json``)::

    {
      "case": "turin", "symmetric": true, "converged": true,
      "summary": {"buses": 54, "energized_buses": 54, "u_min_pu": 0.984, "u_min_bus": 54,
                  "u_max_pu": 1.0, "u_max_bus": 1, "max_loading_percent": 9.0,
                  "max_loading_branch": 100, "load_mw": 2.1, "generation_mw": 0.0,
                  "source_p_mw": 2.12, "source_q_mvar": 0.86, "losses_mw": 0.02},
      "buses": [{"id", "energized", "u_pu", "u_kv", "u_angle_deg"}, ...],
      "branches": [{"id", "kind", "energized", "i_ka", "loading_percent", "p_from_mw",
                    "q_from_mvar", "p_to_mw", "q_to_mvar", "p_loss_mw"}, ...],
      "sources": [{"id", "p_mw", "q_mvar"}, ...]
    }

In an asymmetric result ``u_pu``, ``u_kv`` and ``u_angle_deg`` are lists of three (phases a, b, c,
phase-to-ground) and ``u_min_pu`` / ``u_max_pu`` are over all phases; ``i_ka`` is the largest phase
current. De-energized buses have ``energized`` false and zero voltage; the summary's voltage figures
are over energized buses only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from openfeeder.analysis.powerflow import BranchKind, PowerFlowResult
from openfeeder.model.grid import GridModel

__all__ = ["PowerFlowSummary", "power_flow_document", "summarize_power_flow"]


@dataclass(frozen=True, slots=True)
class PowerFlowSummary:
    buses: int
    energized_buses: int
    u_min_pu: float
    u_min_bus: int | None
    u_max_pu: float
    u_max_bus: int | None
    max_loading_percent: float
    max_loading_branch: int | None
    load_mw: float
    generation_mw: float
    source_p_mw: float
    source_q_mvar: float
    losses_mw: float


def summarize_power_flow(model: GridModel, result: PowerFlowResult) -> PowerFlowSummary:
    bus = result.bus
    energized = bus["energized"]
    u = bus["u_pu"] if result.symmetric else bus["u_pu"].reshape(bus.size, -1)
    u_lo = u if result.symmetric else u.min(axis=1)
    u_hi = u if result.symmetric else u.max(axis=1)
    u_min_bus = u_max_bus = None
    u_min = u_max = math.nan
    if energized.any():
        lo = np.where(energized, u_lo, np.inf)
        hi = np.where(energized, u_hi, -np.inf)
        u_min_bus, u_max_bus = int(bus["id"][np.argmin(lo)]), int(bus["id"][np.argmax(hi)])
        u_min, u_max = float(lo.min()), float(hi.max())
    branch = result.branch
    loading = np.nan_to_num(branch["loading_percent"], nan=-1.0)
    max_branch = int(branch["id"][np.argmax(loading)]) if branch.size else None
    return PowerFlowSummary(
        buses=int(bus.size),
        energized_buses=int(energized.sum()),
        u_min_pu=u_min,
        u_min_bus=u_min_bus,
        u_max_pu=u_max,
        u_max_bus=u_max_bus,
        max_loading_percent=float(loading.max()) if branch.size else 0.0,
        max_loading_branch=max_branch,
        load_mw=float(result.load["p_mw"].sum()),
        generation_mw=float(model.generator["p_mw"][model.generator["in_service"]].sum()),
        source_p_mw=float(result.source["p_mw"].sum()),
        source_q_mvar=float(result.source["q_mvar"].sum()),
        losses_mw=float(branch["p_loss_mw"][branch["kind"] != BranchKind.SWITCH].sum()),
    )


def _clean(values: np.ndarray[Any, Any]) -> list[Any]:
    """Round to 9 significant digits for JSON, NaN as null."""
    rounded = np.round(values, 9).astype(object)
    rounded[np.isnan(values)] = None
    out: list[Any] = rounded.tolist()
    return out


def power_flow_document(model: GridModel, result: PowerFlowResult) -> dict[str, Any]:
    """The JSON document described in the module docstring."""
    bus, branch = result.bus, result.branch
    kinds = np.array([k.name.lower() for k in BranchKind])[branch["kind"]]
    buses = {
        "id": bus["id"].tolist(),
        "energized": bus["energized"].tolist(),
        "u_pu": _clean(bus["u_pu"]),
        "u_kv": _clean(bus["u_kv"]),
        "u_angle_deg": _clean(bus["u_angle_deg"]),
    }
    branches = {
        "id": branch["id"].tolist(),
        "kind": kinds.tolist(),
        "energized": branch["energized"].tolist(),
        "i_ka": _clean(branch["i_ka"]),
        "loading_percent": _clean(branch["loading_percent"]),
        "p_from_mw": _clean(branch["p_from_mw"]),
        "q_from_mvar": _clean(branch["q_from_mvar"]),
        "p_to_mw": _clean(branch["p_to_mw"]),
        "q_to_mvar": _clean(branch["q_to_mvar"]),
        "p_loss_mw": _clean(branch["p_loss_mw"]),
    }
    sources = {
        "id": result.source["id"].tolist(),
        "p_mw": _clean(result.source["p_mw"]),
        "q_mvar": _clean(result.source["q_mvar"]),
    }
    summary = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in asdict(summarize_power_flow(model, result)).items()
    }
    return {
        "case": model.name,
        "symmetric": result.symmetric,
        "converged": result.converged,
        "summary": summary,
        "buses": _rows(buses),
        "branches": _rows(branches),
        "sources": _rows(sources),
    }


def _rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
