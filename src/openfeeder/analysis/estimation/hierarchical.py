"""The hierarchical distributed estimator of seed 003 (section III-C): one WLS estimate per area.

The areas are :func:`~.areas.partition_areas`'s (concentrators, LV, MV). Each level estimates its
own area with :func:`~.estimator.estimate_state` on a model of that area alone, and the levels
exchange only boundary quantities:

**Upward** (concentrator -> LV -> MV), an :class:`Equivalent` per child area: the power flowing
from the boundary bus into the area (``p_mw``, ``q_mvar``) with its standard deviation, and the
voltage of the boundary bus the area's own voltage measurements give (with its standard deviation;
NaN when the area measures no voltage). In its own estimate a child area hangs from a reference
source at its boundary bus; the equivalent's power is that source's estimated injection, its
variance the sum of the variances of the area's injection measurements (real, pseudo and its own
children's equivalents), tightened by any flow measured on a branch at the boundary bus. In the
parent's estimate the child becomes an *equivalent load* at the boundary bus measured with that
power, plus a voltage measurement there.

**Downward** (MV -> LV -> concentrator), a :class:`BoundaryState` per child area: the parent's
final estimate of the boundary bus's voltage phasor and of the power into the child. The child
estimates again with both as (tight) measurements, which pins its reference to the parent's and
spreads the parent's correction of its total power over its own injections by their variances:
what the centralized WLS does with the whole grid at once. On the twin's measurements the result
agrees with :func:`~.estimator.estimate_state` on the whole grid within 1e-4 pu (tested to 1e-3).

:func:`estimate_area` is one level's step (what a plug-in or a service runs for its area);
:func:`estimate_hierarchical` runs all of them in one process, bottom-up then top-down.

What is approximated: the correlation between an equivalent's power and its voltage is dropped
(each is a separate measurement), an angle measured inside a child area (a PMU there) only passes
up its magnitude, and the variance of the power is the measurements' (losses add nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.estimation.areas import (
    LEVELS_BOTTOM_UP,
    Area,
    AreaPartition,
    Level,
    measurement_owner,
    partition_areas,
)
from openfeeder.analysis.estimation.estimator import (
    DEFAULT_ERROR_TOLERANCE_PU,
    DEFAULT_MAX_ITERATIONS,
    estimate_state,
)
from openfeeder.analysis.estimation.locate import Target, locate_measurements
from openfeeder.analysis.estimation.measurement_set import QUANTITIES, MeasurementSet, Quantity
from openfeeder.analysis.estimation.result import StateEstimate
from openfeeder.errors import AnalysisError
from openfeeder.model.components import NO_ID, empty_table
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "AreaEstimate",
    "BoundaryState",
    "Equivalent",
    "HierarchicalEstimate",
    "area_measurements",
    "area_model",
    "estimate_area",
    "estimate_hierarchical",
]

FloatArray = npt.NDArray[np.float64]

TIGHT_SIGMA_PU: Final = 1e-4
"""Relative standard deviation of the parent's boundary state in a child's second estimate."""
_TIGHT_ANGLE_DEG: Final = 1e-5
_POWER_FLOOR: Final = 1e-7
_PQ: Final = QUANTITIES.index(Quantity.PQ)
_VOLTAGE: Final = (QUANTITIES.index(Quantity.U), QUANTITIES.index(Quantity.U_PHASOR))


@dataclass(frozen=True, slots=True)
class Equivalent:
    """What a child area passes up: the power into it at its boundary bus and that bus's voltage."""

    area: str
    boundary_bus_id: int
    p_mw: float
    q_mvar: float
    p_sigma_mw: float
    q_sigma_mvar: float
    u_pu: float = math.nan
    """NaN when the area measures no voltage."""
    u_sigma_pu: float = math.nan


@dataclass(frozen=True, slots=True)
class BoundaryState:
    """What a parent passes down: its final estimate at the child's boundary bus."""

    u_pu: float
    u_angle_deg: float
    p_mw: float
    q_mvar: float


@dataclass(frozen=True, slots=True, eq=False)
class AreaEstimate:
    """One level's estimate of its area (bus arrays in ``area.bus_ids`` order)."""

    area: Area
    u_pu: FloatArray
    u_angle_deg: FloatArray
    u_sigma_pu: FloatArray
    equivalent: Equivalent | None
    """For the parent (None for an MV area)."""
    children: dict[str, BoundaryState]
    """For each child area: this estimate at its boundary."""
    final: bool
    """Made with the parent's boundary state (or an MV area's): the area's final estimate."""
    estimate: StateEstimate

    @property
    def objective(self) -> float:
        return self.estimate.objective


@dataclass(frozen=True, slots=True, eq=False)
class HierarchicalEstimate:
    """All areas' final estimates and the grid's bus voltages assembled from them."""

    partition: AreaPartition
    areas: dict[str, AreaEstimate]
    bus_ids: npt.NDArray[np.int64]
    u_pu: FloatArray
    """Model order; NaN where no area covers the bus (de-energized)."""
    u_angle_deg: FloatArray
    u_sigma_pu: FloatArray


def area_model(model: GridModel, partition: AreaPartition, area: Area) -> GridModel:
    """The model of ``area`` alone: its buses, branches and appliances, one equivalent load per
    child area (at the model's own loads of that child, the estimator's pseudo value when the
    child sends nothing) and, for a child area, a reference source at its boundary bus."""
    own = area.own_bus_ids
    bus = model.bus[np.isin(model.bus["id"], area.bus_ids)]
    tables: dict[str, Any] = {"bus": bus}
    for name in ("line", "transformer", "switch"):
        table = model.table(name)
        tables[name] = table[np.isin(table["id"], area.branch_ids)]
    for name in ("load", "generator", "shunt"):
        table = model.table(name)
        tables[name] = table[np.isin(table["bus"], own)]
    children = [partition.area(c) for c in area.children]
    if children:
        extra = empty_table("load", len(children))
        extra["id"] = [c.equivalent_id for c in children]
        extra["bus"] = [c.boundary_bus_id for c in children]
        totals = np.array([_model_power(model, c) for c in children])
        extra["p_mw"] = totals[:, 0]
        extra["q_mvar"] = totals[:, 1]
        extra["in_service"] = True
        extra["customers"] = 0
        tables["load"] = np.concatenate([tables["load"], extra])
    if area.boundary_bus_id == NO_ID:
        tables["source"] = model.source[np.isin(model.source["id"], area.source_ids)]
    else:
        source = empty_table("source", 1)
        source["id"] = area.reference_id
        source["bus"] = area.boundary_bus_id
        source["u_ref_pu"] = 1.0
        source["in_service"] = True
        tables["source"] = source
    tables["measurement"] = empty_table("measurement")
    return model.replace(name=f"{model.name}/{area.name}", **tables)


def area_measurements(
    model: GridModel, partition: AreaPartition, measurements: MeasurementSet
) -> dict[str, MeasurementSet]:
    """The measurements of each area (see :func:`~.areas.measurement_owner`); measurements of
    de-energized parts are left out."""
    located = locate_measurements(model, measurements)
    owner = measurement_owner(partition, located)
    return {a.name: measurements.select(owner == a.index) for a in partition.areas}


def estimate_area(
    model: GridModel,
    partition: AreaPartition,
    name: str,
    measurements: MeasurementSet,
    *,
    children: Mapping[str, Equivalent] | None = None,
    boundary: BoundaryState | None = None,
    bad_data: bool = True,
    uncertainty: bool = True,
    error_tolerance: float = DEFAULT_ERROR_TOLERANCE_PU,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> AreaEstimate:
    """One level's step for area ``name``: its own ``measurements`` (only the area's), the
    equivalents its children sent (a child missing gets the model's loads as pseudo values) and,
    on the way down, its parent's ``boundary`` state. See the module docstring.

    ``uncertainty=False`` leaves the buses' standard deviations out (NaN) where nothing needs
    them: a child area's first estimate still computes them when it passes a voltage up."""
    if partition.crossing_branch_ids.size:
        raise AnalysisError(
            "the grid's areas are joined by closed branches outside the supply tree "
            f"({partition.crossing_branch_ids[:5].tolist()}): the hierarchical estimator needs "
            "a radial grid between areas; use the centralized estimator"
        )
    area = partition.area(name)
    sub = area_model(model, partition, area)
    extra: list[dict[str, Any]] = []
    given = dict(children or {})
    for child_name in area.children:
        equivalent = given.get(child_name)
        if equivalent is None:
            continue
        child = partition.area(child_name)
        extra.append(
            {
                "id": f"{child_name}:pq",
                "quantity": "pq",
                "element": child.equivalent_id,
                "p_mw": equivalent.p_mw,
                "q_mvar": equivalent.q_mvar,
                "p_sigma_mw": max(equivalent.p_sigma_mw, _POWER_FLOOR),
                "q_sigma_mvar": max(equivalent.q_sigma_mvar, _POWER_FLOOR),
            }
        )
        if math.isfinite(equivalent.u_pu) and math.isfinite(equivalent.u_sigma_pu):
            u_kv = _rated_kv(model, child.boundary_bus_id)
            extra.append(
                {
                    "id": f"{child_name}:u",
                    "quantity": "u",
                    "bus": child.boundary_bus_id,
                    "u_kv": equivalent.u_pu * u_kv,
                    "u_sigma_kv": max(equivalent.u_sigma_pu, TIGHT_SIGMA_PU) * u_kv,
                }
            )
    if boundary is not None:
        if area.boundary_bus_id == NO_ID:
            raise ValueError(f"area {name!r} has no parent to take a boundary state from")
        u_kv = _rated_kv(model, area.boundary_bus_id)
        extra.append(
            {
                "id": f"{name}:boundary_u",
                "quantity": "u_phasor",
                "bus": area.boundary_bus_id,
                "u_kv": boundary.u_pu * u_kv,
                "u_angle_deg": boundary.u_angle_deg,
                "u_sigma_kv": TIGHT_SIGMA_PU * u_kv,
                "angle_sigma_deg": _TIGHT_ANGLE_DEG,
            }
        )
        extra.append(
            {
                "id": f"{name}:boundary_pq",
                "quantity": "pq",
                "element": area.reference_id,
                "p_mw": boundary.p_mw,
                "q_mvar": boundary.q_mvar,
                "p_sigma_mw": max(TIGHT_SIGMA_PU * abs(boundary.p_mw), _POWER_FLOOR),
                "q_sigma_mvar": max(TIGHT_SIGMA_PU * abs(boundary.q_mvar), _POWER_FLOOR),
            }
        )
    own = measurements.concat(MeasurementSet.from_records(extra)) if extra else measurements
    measured_u = _measures_voltage(measurements) or any(
        math.isfinite(e.u_pu) for e in given.values()
    )
    passes_u = boundary is None and area.boundary_bus_id != NO_ID and measured_u
    estimate = estimate_state(
        sub,
        own,
        bad_data=bad_data,
        uncertainty=uncertainty or passes_u,
        error_tolerance=error_tolerance,
        max_iterations=max_iterations,
    )
    rows = lookup(estimate.bus["id"], area.bus_ids)
    bus = estimate.bus[rows]
    equivalent = None
    if area.boundary_bus_id != NO_ID:
        equivalent = _equivalent(sub, area, estimate, measured_u=measured_u)
    states = {}
    load_rows = lookup(
        estimate.load["id"], [partition.area(c).equivalent_id for c in area.children]
    )
    for child_name, load_row in zip(area.children, load_rows.tolist(), strict=True):
        child = partition.area(child_name)
        b = int(lookup(estimate.bus["id"], [child.boundary_bus_id])[0])
        states[child_name] = BoundaryState(
            u_pu=float(estimate.bus["u_pu"][b]),
            u_angle_deg=float(estimate.bus["u_angle_deg"][b]),
            p_mw=float(estimate.load["p_mw"][load_row]),
            q_mvar=float(estimate.load["q_mvar"][load_row]),
        )
    return AreaEstimate(
        area=area,
        u_pu=bus["u_pu"].astype(np.float64),
        u_angle_deg=bus["u_angle_deg"].astype(np.float64),
        u_sigma_pu=bus["u_sigma_pu"].astype(np.float64),
        equivalent=equivalent,
        children=states,
        final=boundary is not None or area.boundary_bus_id == NO_ID,
        estimate=estimate,
    )


def estimate_hierarchical(
    model: GridModel,
    measurements: MeasurementSet,
    *,
    partition: AreaPartition | None = None,
    bad_data: bool = True,
    error_tolerance: float = DEFAULT_ERROR_TOLERANCE_PU,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> HierarchicalEstimate:
    """Every level in one process: bottom-up, then each child again with its parent's boundary
    state (top-down); the grid's voltages assembled from the final estimates."""
    parts = partition_areas(model) if partition is None else partition
    own = area_measurements(model, parts, measurements)
    options: dict[str, Any] = {
        "bad_data": bad_data,
        "error_tolerance": error_tolerance,
        "max_iterations": max_iterations,
    }
    first: dict[str, AreaEstimate] = {}
    for level in LEVELS_BOTTOM_UP:
        for name in parts.names(level):
            area = parts.area(name)
            equivalents = {c: _need(first[c].equivalent) for c in area.children}
            first[name] = estimate_area(
                model, parts, name, own[name], children=equivalents, **options
            )
    final: dict[str, AreaEstimate] = {n: first[n] for n in parts.names(Level.MV)}
    for level in reversed(LEVELS_BOTTOM_UP[:-1]):
        for name in parts.names(level):
            area = parts.area(name)
            parent = final[str(area.parent)]
            equivalents = {c: _need(first[c].equivalent) for c in area.children}
            final[name] = estimate_area(
                model,
                parts,
                name,
                own[name],
                children=equivalents,
                boundary=parent.children[name],
                **options,
            )
    u, angle, sigma = assemble(parts, final)
    return HierarchicalEstimate(
        partition=parts,
        areas=final,
        bus_ids=parts.bus_ids,
        u_pu=u,
        u_angle_deg=angle,
        u_sigma_pu=sigma,
    )


def assemble(
    partition: AreaPartition, finals: Mapping[str, AreaEstimate]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Bus voltage magnitude, angle and sigma in model order from the areas' final estimates
    (each bus from the area that owns it; NaN where an area's estimate is missing)."""
    n = partition.bus_ids.size
    u = np.full(n, np.nan)
    angle = np.full(n, np.nan)
    sigma = np.full(n, np.nan)
    for name, result in finals.items():
        area = partition.area(name)
        skip = 1 if area.boundary_bus_id != NO_ID else 0
        rows = lookup(partition.bus_ids, area.bus_ids[skip:])
        u[rows] = result.u_pu[skip:]
        angle[rows] = result.u_angle_deg[skip:]
        sigma[rows] = result.u_sigma_pu[skip:]
    return u, angle, sigma


def _need(equivalent: Equivalent | None) -> Equivalent:
    if equivalent is None:
        raise RuntimeError("a child area's estimate has no equivalent")
    return equivalent


def _rated_kv(model: GridModel, bus_id: int) -> float:
    return float(model.bus["u_rated_kv"][lookup(model.bus["id"], [bus_id])[0]])


def _measures_voltage(measurements: MeasurementSet) -> bool:
    table = measurements.table
    return bool((np.isin(table["quantity"], _VOLTAGE) & ~table["pseudo"]).any())


def _model_power(model: GridModel, area: Area) -> tuple[float, float]:
    """The model's own consumption of an area (loads minus generators), for pseudo values."""
    load = model.load[model.load["in_service"] & np.isin(model.load["bus"], area.own_bus_ids)]
    gen = model.generator[
        model.generator["in_service"] & np.isin(model.generator["bus"], area.own_bus_ids)
    ]
    return (
        float(load["p_mw"].sum() - gen["p_mw"].sum()),
        float(load["q_mvar"].sum() - gen["q_mvar"].sum()),
    )


def _equivalent(
    sub: GridModel, area: Area, estimate: StateEstimate, *, measured_u: bool
) -> Equivalent:
    """The area's power at its boundary (the reference source's injection) and voltage."""
    source = estimate.source[estimate.source["id"] == area.reference_id]
    final = estimate.measurements
    located = locate_measurements(sub, final)
    table = final.table
    pq = table["quantity"] == _PQ
    injection = pq & np.isin(located.target, (Target.BUS, Target.LOAD, Target.GENERATOR))
    injection &= located.bus_row >= 0
    boundary_row = int(lookup(sub.bus["id"], [area.boundary_bus_id])[0])
    injection &= located.bus_row != boundary_row
    p_var = float((table["p_sigma_mw"][injection] ** 2).sum())
    q_var = float((table["q_sigma_mvar"][injection] ** 2).sum())
    on_branch = pq & (located.target == Target.BRANCH) & ~table["pseudo"]
    at_boundary = on_branch & (located.bus_row == boundary_row)
    if at_boundary.any():  # a flow measured where the area hangs: its power, measured
        p_info = 1.0 / p_var if p_var > 0 else 0.0
        q_info = 1.0 / q_var if q_var > 0 else 0.0
        p_var = 1.0 / (p_info + float((table["p_sigma_mw"][at_boundary] ** -2).sum()))
        q_var = 1.0 / (q_info + float((table["q_sigma_mvar"][at_boundary] ** -2).sum()))
    b = int(lookup(estimate.bus["id"], [area.boundary_bus_id])[0])
    return Equivalent(
        area=area.name,
        boundary_bus_id=area.boundary_bus_id,
        p_mw=float(source["p_mw"][0]),
        q_mvar=float(source["q_mvar"][0]),
        p_sigma_mw=math.sqrt(max(p_var, _POWER_FLOOR**2)),
        q_sigma_mvar=math.sqrt(max(q_var, _POWER_FLOOR**2)),
        u_pu=float(estimate.bus["u_pu"][b]) if measured_u else math.nan,
        u_sigma_pu=float(estimate.bus["u_sigma_pu"][b]) if measured_u else math.nan,
    )
