"""The hierarchical distributed estimator of seed 003 (section III-C): one WLS estimate per area.

The areas are :func:`~.areas.partition_areas`'s (concentrators, LV, MV). Each level estimates its
own area with :func:`~.estimator.estimate_state` on a model of that area alone, and the levels
exchange only boundary quantities:

**Upward** (concentrator -> LV -> MV), an :class:`Equivalent` per child area: the power flowing
from the boundary bus into the area (``p_mw``, ``q_mvar``) and the boundary bus's voltage as the
area's own measurements give them, with their covariance (standard deviations and the
correlations of voltage, P and Q; no voltage when the area measures none). In its own estimate a
child area hangs from a reference source at its boundary bus; the mean is that estimate (the
source's injection, the bus's voltage), the covariance is read from how the area's estimate
answers two *pulls* on its power (see :func:`_equivalent`). The correlation matters: where
unmetered customers (pseudo-measurements) sit next to voltage-measuring meters, the area's
boundary voltage depends on the power it assumes those customers draw, so when the parent
corrects the power, the voltage must follow.

In the parent's estimate the child becomes an *equivalent load* measured with that power and,
when it carries a voltage, the load sits behind an *equivalent line* on a bus of its own whose
voltage is measured: the line's impedance is the slope of the child's boundary voltage with its
power and the measurement's variance is the voltage's variance given the power, so the parent
moves the child's voltage with the power it assigns to it (:func:`_stand_in`).

**Downward** (MV -> LV -> concentrator), a :class:`BoundaryState` per child area: the parent's
final estimate of the boundary bus's voltage phasor and of the power into the child. The child
estimates again with both as (tight) measurements, which pins its reference to the parent's and
spreads the parent's correction of its total power over its own injections by their variances:
what the centralized WLS does with the whole grid at once. On the twin's measurements the result
agrees with :func:`~.estimator.estimate_state` on the whole grid within 1e-4 pu, with 10-30 % of
the LV customers unmetered within 8e-4 pu (tested to 1e-3).

:func:`estimate_area` is one level's step (what a plug-in or a service runs for its area);
:func:`estimate_hierarchical` runs all of them in one process, bottom-up then top-down.

What is approximated: the equivalent is Gaussian and linear around the child's own estimate (the
parent's correction of a child's power is a few of its standard deviations at most in practice);
the parent holds the correlation of P and Q only as far as the voltage carries it; an angle
measured inside a child area (a PMU there) only passes up its magnitude.
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
S_BASE_MVA: Final = 1.0
_U_STEP_PU: Final = 1e-3
_LOOSE_SIGMA: Final = 1e3
_MIN_STEP: Final = 1e-6
"""MW (Mvar): the smallest probe step (1 W)."""
_MIN_IMPEDANCE_PU: Final = 1e-5
_TIGHT_ANGLE_DEG: Final = 1e-5
_POWER_FLOOR: Final = 1e-7
_PQ: Final = QUANTITIES.index(Quantity.PQ)
_VOLTAGE: Final = (QUANTITIES.index(Quantity.U), QUANTITIES.index(Quantity.U_PHASOR))


@dataclass(frozen=True, slots=True)
class Equivalent:
    """What a child area passes up: the power into it at its boundary bus and that bus's voltage
    as its own measurements give them, a Gaussian with the standard deviations and correlations
    of the area's estimate (the correlations are what lets the parent move the child's boundary
    voltage with the power it assigns to it, as the centralized estimate would)."""

    area: str
    boundary_bus_id: int
    p_mw: float
    q_mvar: float
    p_sigma_mw: float
    q_sigma_mvar: float
    u_pu: float = math.nan
    """NaN when the area measures no voltage (then ``u_sigma_pu`` and the correlations with the
    voltage are NaN too)."""
    u_sigma_pu: float = math.nan
    rho_pq: float = 0.0
    """Correlation of P and Q."""
    rho_up: float = math.nan
    """Correlation of the voltage and P."""
    rho_uq: float = math.nan
    """Correlation of the voltage and Q."""

    @property
    def carries_voltage(self) -> bool:
        return math.isfinite(self.u_pu) and math.isfinite(self.u_sigma_pu)

    def covariance(self) -> FloatArray:
        """The covariance of (u, p, q) (pu, MW, Mvar); (p, q) alone without a voltage."""
        sp, sq, rpq = self.p_sigma_mw, self.q_sigma_mvar, self.rho_pq
        if not self.carries_voltage:
            return np.array([[sp * sp, rpq * sp * sq], [rpq * sp * sq, sq * sq]])
        su, rup, ruq = self.u_sigma_pu, _finite(self.rho_up), _finite(self.rho_uq)
        return np.array(
            [
                [su * su, rup * su * sp, ruq * su * sq],
                [rup * su * sp, sp * sp, rpq * sp * sq],
                [ruq * su * sq, rpq * sp * sq, sq * sq],
            ]
        )

    @classmethod
    def from_covariance(
        cls,
        area: str,
        boundary_bus_id: int,
        mean: tuple[float, float, float],
        covariance: FloatArray,
    ) -> Equivalent:
        """From the mean (u, p, q) and a 3x3 covariance, or a 2x2 one of (p, q) with u NaN."""
        u_pu, p_mw, q_mvar = mean
        sigma = np.sqrt(np.maximum(np.diag(covariance), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.clip(covariance / np.outer(sigma, sigma), -1.0, 1.0)
        rho = np.where(np.isfinite(rho), rho, 0.0)
        if covariance.shape == (2, 2):
            return cls(
                area,
                boundary_bus_id,
                p_mw,
                q_mvar,
                float(sigma[0]),
                float(sigma[1]),
                rho_pq=float(rho[0, 1]),
            )
        return cls(
            area,
            boundary_bus_id,
            p_mw,
            q_mvar,
            float(sigma[1]),
            float(sigma[2]),
            u_pu=u_pu,
            u_sigma_pu=float(sigma[0]),
            rho_pq=float(rho[1, 2]),
            rho_up=float(rho[0, 1]),
            rho_uq=float(rho[0, 2]),
        )


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


def area_model(
    model: GridModel,
    partition: AreaPartition,
    area: Area,
    equivalents: Mapping[str, Equivalent] | None = None,
) -> GridModel:
    """The model of ``area`` alone: its buses, branches and appliances, one equivalent load per
    child area (at the model's own loads of that child, the estimator's pseudo value when the
    child sends nothing) and, for a child area, a reference source at its boundary bus.

    A child whose equivalent carries a voltage hangs from its boundary bus through an equivalent
    line to a bus of its own (``equivalent_bus_id``) where its load and its voltage are measured:
    the line's impedance is the equivalent's voltage slopes (``R = du_dp * u``, ``X = du_dq * u``
    per unit), so the parent's estimate moves the child's boundary voltage with its power as
    the child's own estimate would."""
    own = area.own_bus_ids
    given = equivalents or {}
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
        behind = [i for i, c in enumerate(children) if _behind_line(given.get(c.name))]
        if behind:
            hidden = [children[i] for i in behind]
            extra["bus"][behind] = [c.equivalent_bus_id for c in hidden]
            buses = empty_table("bus", len(hidden))
            buses["id"] = [c.equivalent_bus_id for c in hidden]
            rated = np.array([_rated_kv(model, c.boundary_bus_id) for c in hidden])
            buses["u_rated_kv"] = rated
            lines = empty_table("line", len(hidden))
            lines["id"] = [c.equivalent_line_id for c in hidden]
            lines["from_bus"] = [c.boundary_bus_id for c in hidden]
            lines["to_bus"] = [c.equivalent_bus_id for c in hidden]
            z_ohm = np.array([_stand_in(given[c.name]).z_pu for c in hidden]) * (
                rated**2 / S_BASE_MVA
            )
            lines["length_km"] = 1.0
            lines["r1_ohm_per_km"] = z_ohm.real
            lines["x1_ohm_per_km"] = z_ohm.imag
            lines["r0_ohm_per_km"] = 3.0 * z_ohm.real
            lines["x0_ohm_per_km"] = 3.0 * z_ohm.imag
            lines["c1_nf_per_km"] = 0.0
            lines["c0_nf_per_km"] = 0.0
            lines["i_rated_ka"] = 1.0
            lines["in_service"] = True
            tables["bus"] = np.concatenate([bus, buses])
            tables["line"] = np.concatenate([tables["line"], lines])
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

    On the way up (no ``boundary``, a child area) the step also makes the area's
    :class:`Equivalent` for its parent: two more estimates with the boundary power pulled off the
    estimate in P, then in Q, give its covariance (:func:`_equivalent`).
    ``uncertainty=False`` leaves the buses' standard deviations out (NaN)."""
    if partition.crossing_branch_ids.size:
        raise AnalysisError(
            "the grid's areas are joined by closed branches outside the supply tree "
            f"({partition.crossing_branch_ids[:5].tolist()}): the hierarchical estimator needs "
            "a radial grid between areas; use the centralized estimator"
        )
    area = partition.area(name)
    given = {c: e for c, e in (children or {}).items() if c in area.children}
    sub = area_model(model, partition, area, given)
    extra: list[dict[str, Any]] = []
    for child_name, sent in given.items():
        extra += _equivalent_measurements(model, partition.area(child_name), sent)
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
    options: dict[str, Any] = {"error_tolerance": error_tolerance, "max_iterations": max_iterations}
    passes_up = area.boundary_bus_id != NO_ID and boundary is None
    measured_u = _measures_voltage(measurements) or any(e.carries_voltage for e in given.values())
    estimate = estimate_state(sub, own, bad_data=bad_data, uncertainty=uncertainty, **options)
    rows = lookup(estimate.bus["id"], area.bus_ids)
    bus = estimate.bus[rows]
    equivalent = None
    if passes_up:
        equivalent = _equivalent(sub, area, estimate, measured_u=measured_u, options=options)
    states = {}
    for child_name in area.children:
        child = partition.area(child_name)
        b = int(lookup(estimate.bus["id"], [child.boundary_bus_id])[0])
        if _behind_line(given.get(child_name)):
            line = int(lookup(estimate.branch["id"], [child.equivalent_line_id])[0])
            p_mw = float(estimate.branch["p_from_mw"][line])
            q_mvar = float(estimate.branch["q_from_mvar"][line])
        else:
            load = int(lookup(estimate.load["id"], [child.equivalent_id])[0])
            p_mw = float(estimate.load["p_mw"][load])
            q_mvar = float(estimate.load["q_mvar"][load])
        states[child_name] = BoundaryState(
            u_pu=float(estimate.bus["u_pu"][b]),
            u_angle_deg=float(estimate.bus["u_angle_deg"][b]),
            p_mw=p_mw,
            q_mvar=q_mvar,
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


@dataclass(frozen=True, slots=True)
class _StandIn:
    """How a parent's model holds a child's :class:`Equivalent` (see :func:`area_model`)."""

    z_pu: complex | None
    """The equivalent line's impedance (1 MVA base); None: the load sits at the boundary bus."""
    p_sigma_mw: float
    q_sigma_mvar: float
    u_sigma_pu: float = math.nan
    """Of the voltage measurement at the equivalent's bus (behind the line)."""


def _stand_in(equivalent: Equivalent) -> _StandIn:
    """Independent measurements that carry the equivalent's information on (u, p, q).

    With ``L`` the inverse of the equivalent's covariance, the voltage measured behind a line of
    impedance ``(a, c) u`` (per unit) reads ``u - a p - c q``: with ``a = -L_up / L_uu``,
    ``c = -L_uq / L_uu`` and variance ``1 / L_uu`` it is the boundary voltage given the power,
    and the power's own measurement keeps the information the voltage does not carry (the Schur
    complement ``L_ss - L_su L_us / L_uu``, the inverse of the power's covariance). Only the
    correlation of P and Q beyond what the voltage brings is dropped (their information's
    diagonal is kept). Without a voltage: the power's information's diagonal."""
    info = _inverse(equivalent.covariance())
    if not equivalent.carries_voltage:
        return _StandIn(None, _inv_sqrt(info[0, 0]), _inv_sqrt(info[1, 1]))
    l_uu = float(info[0, 0])
    schur = info[1:, 1:] - np.outer(info[1:, 0], info[0, 1:]) / l_uu
    a, c = -float(info[0, 1]) / l_uu, -float(info[0, 2]) / l_uu
    return _StandIn(
        _line_impedance(a, c, equivalent.u_pu),
        _inv_sqrt(float(schur[0, 0])),
        _inv_sqrt(float(schur[1, 1])),
        _inv_sqrt(l_uu),
    )


def _line_impedance(a: float, c: float, u_pu: float) -> complex:
    z = complex(a * u_pu, c * u_pu) * S_BASE_MVA
    if abs(z) < _MIN_IMPEDANCE_PU:
        z = complex(z.real, _MIN_IMPEDANCE_PU)
    return z


def _inverse(matrix: FloatArray) -> FloatArray:
    scale = np.sqrt(np.maximum(np.diag(matrix), 1e-300))
    normalized = matrix / np.outer(scale, scale)
    return np.asarray(np.linalg.pinv(normalized) / np.outer(scale, scale), dtype=np.float64)


def _inv_sqrt(information: float) -> float:
    return 1.0 / math.sqrt(information) if information > 0 else _LOOSE_SIGMA


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _equivalent_measurements(
    model: GridModel, child: Area, equivalent: Equivalent
) -> list[dict[str, Any]]:
    """The parent's measurements of a child's equivalent (see :func:`area_model`) at the
    child's operating point: its power at the equivalent load and the voltages of its stand-in."""
    stand_in = _stand_in(equivalent)
    p_mw, q_mvar = equivalent.p_mw, equivalent.q_mvar
    u_kv = _rated_kv(model, child.boundary_bus_id)
    records: list[dict[str, Any]] = []
    if stand_in.z_pu is not None:
        v_b = complex(equivalent.u_pu, 0.0)
        current = complex(p_mw, -q_mvar) / S_BASE_MVA / v_b.conjugate()
        arriving = complex(p_mw, q_mvar) - stand_in.z_pu * abs(current) ** 2 * S_BASE_MVA
        records.append(
            {
                "id": f"{child.name}:u",
                "quantity": "u",
                "bus": child.equivalent_bus_id,
                "u_kv": abs(v_b - stand_in.z_pu * current) * u_kv,
                "u_sigma_kv": max(stand_in.u_sigma_pu, TIGHT_SIGMA_PU) * u_kv,
            }
        )
        p_mw, q_mvar = arriving.real, arriving.imag  # what reaches the equivalent's bus
    records.append(
        {
            "id": f"{child.name}:pq",
            "quantity": "pq",
            "element": child.equivalent_id,
            "p_mw": p_mw,
            "q_mvar": q_mvar,
            "p_sigma_mw": max(stand_in.p_sigma_mw, _POWER_FLOOR),
            "q_sigma_mvar": max(stand_in.q_sigma_mvar, _POWER_FLOOR),
        }
    )
    return records


def _behind_line(equivalent: Equivalent | None) -> bool:
    return equivalent is not None and equivalent.carries_voltage


def _equivalent(
    sub: GridModel,
    area: Area,
    estimate: StateEstimate,
    *,
    measured_u: bool,
    options: Mapping[str, Any],
) -> Equivalent:
    """The area's :class:`Equivalent`: the mean from ``estimate`` (the reference source's
    injection and the boundary bus's voltage), the covariance from how the estimate answers a
    pull on its power.

    Estimating again with a measurement of the power added at ``s + d`` with standard deviations
    ``t`` (``T = diag(t^2)``) moves the estimate of ``z = (u, p, q)`` by ``C_zs (C_ss + T)^-1 d``:
    a Gaussian's conditioning. Pulling by ``d = t`` in P, then in Q (``t`` the standard deviation
    of the area's injection measurements summed) gives ``G = C_zs (C_ss + T)^-1``; the power's
    own rows ``A`` give ``C_ss = (I - A)^-1 A T``, the voltage's row ``C_us = G_u (C_ss + T)``,
    and the first pulled estimate's voltage standard deviation the voltage's variance given the
    power. Reading the covariance from the engine's answers (rather than from the Jacobian) makes
    the equivalent that of the problem the engine solves, which the centralized estimate solves
    too (powers at buses with a voltage sensor converted with the measured voltage). Two extra
    estimates of the area, bad data already removed."""
    source = estimate.source[estimate.source["id"] == area.reference_id]
    p_mw, q_mvar = float(source["p_mw"][0]), float(source["q_mvar"][0])
    b = int(lookup(estimate.bus["id"], [area.boundary_bus_id])[0])
    u_pu = float(estimate.bus["u_pu"][b])
    steps = np.array(_power_scale(sub, area, estimate))
    base = estimate.measurements

    def pulled(record: dict[str, Any], *, uncertainty: bool) -> tuple[FloatArray, float]:
        probe = base.concat(MeasurementSet.from_records([{"id": f"{area.name}:pull", **record}]))
        result = estimate_state(sub, probe, bad_data=False, uncertainty=uncertainty, **options)
        row = int(lookup(result.bus["id"], [area.boundary_bus_id])[0])
        move = np.array(
            [
                float(result.bus["u_pu"][row]) - u_pu,
                float(result.source["p_mw"][0]) - p_mw,
                float(result.source["q_mvar"][0]) - q_mvar,
            ]
        )
        return move, float(result.bus["u_sigma_pu"][row])

    moves = np.empty((3, 2))
    spread = math.nan
    for k in range(2):
        step = np.where(np.arange(2) == k, steps, 0.0)
        moves[:, k], sigma = pulled(
            {
                "quantity": "pq",
                "element": area.reference_id,
                "p_mw": p_mw + step[0],
                "q_mvar": q_mvar + step[1],
                "p_sigma_mw": steps[0],
                "q_sigma_mvar": steps[1],
            },
            uncertainty=measured_u and k == 0,
        )
        spread = sigma if k == 0 else spread
    gain = moves / steps  # C_zs (C_ss + T)^-1
    pull = np.diag(steps**2)
    try:
        c_ss = np.linalg.solve(np.eye(2) - gain[1:], gain[1:] @ pull)
        c_ss = 0.5 * (c_ss + c_ss.T)
        np.linalg.cholesky(c_ss)
    except np.linalg.LinAlgError:  # no sensible answer to the pulls: the measurements' variance
        c_ss = pull
    if not measured_u:
        return Equivalent.from_covariance(
            area.name, area.boundary_bus_id, (math.nan, p_mw, q_mvar), c_ss
        )
    c_us = gain[0] @ (c_ss + pull)
    slopes = np.linalg.solve(c_ss, c_us)  # C_ss symmetric: K = C_us C_ss^-1
    # the pulled estimate's voltage variance is the one given the power plus what the pull
    # leaves of the power's: K (C_ss^-1 + T^-1)^-1 K^T
    left = np.linalg.inv(np.linalg.inv(c_ss) + np.linalg.inv(pull))
    given_power = spread**2 - float(slopes @ left @ slopes)
    if not given_power > 0:
        given_power = spread**2
    covariance = np.empty((3, 3))
    covariance[0, 0] = given_power + float(slopes @ c_ss @ slopes)
    covariance[0, 1:] = covariance[1:, 0] = c_us
    covariance[1:, 1:] = c_ss
    return Equivalent.from_covariance(
        area.name, area.boundary_bus_id, (u_pu, p_mw, q_mvar), covariance
    )


def _power_scale(sub: GridModel, area: Area, estimate: StateEstimate) -> tuple[float, float]:
    """The standard deviation of the area's power from its injection measurements alone (the
    sum of their variances): the pulls' step and standard deviation."""
    final = estimate.measurements
    located = locate_measurements(sub, final)
    table = final.table
    injection = (table["quantity"] == _PQ) & np.isin(
        located.target, (Target.BUS, Target.LOAD, Target.GENERATOR)
    )
    boundary_row = int(lookup(sub.bus["id"], [area.boundary_bus_id])[0])
    injection &= (located.bus_row >= 0) & (located.bus_row != boundary_row)
    p_var = float((table["p_sigma_mw"][injection] ** 2).sum())
    q_var = float((table["q_sigma_mvar"][injection] ** 2).sum())
    return math.sqrt(max(p_var, _MIN_STEP**2)), math.sqrt(max(q_var, _MIN_STEP**2))
