"""One weighted-least-squares solve on power-grid-model: sensors in, the engine's estimate out.

The model's engine input (:mod:`openfeeder.analysis.engine_input`) gets one sensor per measurement:

- ``u`` / ``u_phasor``: a ``sym_voltage_sensor`` (line-to-line volts; the angle only for a phasor);
- ``pq``: a ``sym_power_sensor`` on the node (injection), the appliance, or the branch end;
- ``i_phasor``: a ``sym_current_sensor`` with a global angle;
- ``i`` (magnitude only): a ``sym_current_sensor`` with a *local* angle (the angle by which the
  current lags the voltage at that end, ``atan2(Q, P)``) pinned to the angle the caller passes,
  normally the previous estimate's. At
  a fixed point (pinned angle = estimated angle) the residual lies along the measured magnitude,
  so the estimate is the one of a magnitude-only measurement (see :mod:`.estimator`).

Islands the caller excludes (unobservable ones) lose their sources, so the engine treats them as
de-energized instead of failing on them. Sensor ids are allocated above the model's largest id.

The engine takes no power or current sensor on a ``link`` (its switch), yet feeder terminal units
measure exactly there. A measured switch is therefore handed over as a line of
:data:`SWITCH_LINE_Z_PU` (x; r a tenth of it) per unit of its bus's rated voltage on 1 MVA: 4 mOhm at
20 kV, a voltage drop of about 1 V at 300 A, far below any meter's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from power_grid_model import (
    AngleMeasurementType,
    CalculationMethod,
    ComponentAttributeFilterOptions,
    ComponentType,
    DatasetType,
    MeasuredTerminalType,
    PowerGridModel,
    initialize_array,
)
from power_grid_model.errors import (  # type: ignore[attr-defined]  # re-exported
    IterationDiverge,
    MaxIterationReached,
    PowerGridError,
)
from power_grid_model.errors import (  # type: ignore[attr-defined]  # re-exported
    NotObservableError as EngineNotObservable,
)

from openfeeder.analysis.engine_input import to_engine_input
from openfeeder.analysis.estimation.locate import LocatedMeasurements, Target
from openfeeder.analysis.estimation.measurement_set import END_TO, Quantity
from openfeeder.errors import AnalysisError, NotConvergedError, NotObservableError
from openfeeder.model.grid import GridModel, lookup

__all__ = ["SWITCH_LINE_Z_PU", "EngineEstimate", "solve_wls"]

SWITCH_LINE_Z_PU: Final = 1e-5

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_BRANCH_TYPES: Final = (ComponentType.line, ComponentType.transformer, ComponentType.link)
_BRANCH_COLUMNS: Final = [
    "energized",
    "loading",
    "i_from",
    "i_to",
    "p_from",
    "q_from",
    "p_to",
    "q_to",
]
_APPLIANCE_TYPES: Final = {
    Target.LOAD: ComponentType.sym_load,
    Target.GENERATOR: ComponentType.sym_gen,
    Target.SOURCE: ComponentType.source,
}
_TERMINAL: Final = {
    Target.BUS: MeasuredTerminalType.node,
    Target.LOAD: MeasuredTerminalType.load,
    Target.GENERATOR: MeasuredTerminalType.generator,
    Target.SOURCE: MeasuredTerminalType.source,
}


@dataclass(frozen=True, slots=True, eq=False)
class EngineEstimate:
    """The engine's estimate in model order and SI-prefixed units (symmetric quantities)."""

    energized: BoolArray
    u_pu: FloatArray
    u_kv: FloatArray
    u_angle_rad: FloatArray
    injection_p_mw: FloatArray
    injection_q_mvar: FloatArray
    branch: dict[str, FloatArray]
    """Branches in :class:`~.locate.BranchTable` order: ``energized``, ``loading``, ``i_from_ka``,
    ``i_to_ka``, ``p_from_mw``, ``q_from_mvar``, ``p_to_mw``, ``q_to_mvar``."""
    appliance_p_mw: dict[Target, FloatArray]
    appliance_q_mvar: dict[Target, FloatArray]


def solve_wls(
    model: GridModel,
    located: LocatedMeasurements,
    *,
    excluded_bus: BoolArray,
    local_angle_rad: FloatArray,
    method: CalculationMethod,
    error_tolerance: float,
    max_iterations: int,
) -> EngineEstimate:
    """The engine's WLS estimate; ``local_angle_rad`` (per measurement) pins magnitude-only
    currents' angles; sources on ``excluded_bus`` rows are switched off."""
    engine_input = to_engine_input(model)
    if excluded_bus.any() and ComponentType.source in engine_input:
        sources = engine_input[ComponentType.source].copy()
        rows = lookup(model.bus["id"], sources["node"])
        sources["status"] = np.where(excluded_bus[rows], 0, sources["status"])
        engine_input[ComponentType.source] = sources
    _measured_switches_as_lines(model, located, engine_input)
    engine_input.update(_sensors(model, located, local_angle_rad))
    try:
        engine = PowerGridModel(engine_input, system_frequency=model.frequency_hz)
        output = engine.calculate_state_estimation(
            symmetric=True,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
            calculation_method=method,
            output_component_types=_output_filter(engine_input),
        )
    except EngineNotObservable as err:
        raise NotObservableError(
            f"the engine found the measurements insufficient: {err}".split("\n")[0], buses=()
        ) from err
    except (IterationDiverge, MaxIterationReached) as err:
        raise NotConvergedError(
            f"state estimation did not converge: {str(err).splitlines()[0]}",
            iterations=max_iterations,
            max_deviation=None,
            worst_bus=None,
        ) from err
    except PowerGridError as err:
        raise AnalysisError(f"state estimation failed: {str(err).splitlines()[0]}") from err
    return _estimate(model, located, cast(dict[Any, dict[str, Any]], output))


def _measured_switches_as_lines(
    model: GridModel, located: LocatedMeasurements, engine_input: dict[ComponentType, Any]
) -> None:
    """Replace measured switches (links) by near-zero-impedance lines (module docstring)."""
    measured = located.target == Target.BRANCH
    rows = np.unique(located.target_row[measured])
    switch_rows = rows[located.branches.kind[rows] == 2] - model.line.size - model.transformer.size
    if switch_rows.size == 0:
        return
    switch = model.switch[switch_rows]
    links = engine_input[ComponentType.link]
    engine_input[ComponentType.link] = links[~np.isin(links["id"], switch["id"])]
    if engine_input[ComponentType.link].size == 0:
        del engine_input[ComponentType.link]
    u_rated_kv = model.bus["u_rated_kv"][lookup(model.bus["id"], switch["from_bus"])]
    z_base_ohm = u_rated_kv**2
    line = initialize_array(DatasetType.input, ComponentType.line, switch.size)
    line["id"] = switch["id"]
    line["from_node"] = switch["from_bus"]
    line["to_node"] = switch["to_bus"]
    line["from_status"] = switch["closed"]
    line["to_status"] = switch["closed"]
    line["x1"] = line["x0"] = SWITCH_LINE_Z_PU * z_base_ohm
    line["r1"] = line["r0"] = 0.1 * SWITCH_LINE_Z_PU * z_base_ohm
    line["c1"] = line["c0"] = 0.0
    line["tan1"] = line["tan0"] = 0.0
    line["i_n"] = np.where(np.isfinite(switch["i_rated_ka"]), switch["i_rated_ka"] * 1e3, 1e6)
    existing = engine_input.get(ComponentType.line)
    engine_input[ComponentType.line] = (
        line if existing is None else np.concatenate([existing, line])
    )


def _output_filter(
    engine_input: dict[ComponentType, Any],
) -> dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None]:
    wanted: dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None]
    wanted = {ComponentType.node: ["energized", "u_pu", "u", "u_angle", "p", "q"]}
    for branch_type in _BRANCH_TYPES:
        wanted[branch_type] = ["id", *_BRANCH_COLUMNS]
    for appliance in _APPLIANCE_TYPES.values():
        wanted[appliance] = ["p", "q"]
    return {k: v for k, v in wanted.items() if k in engine_input}


def _estimate(
    model: GridModel, located: LocatedMeasurements, output: dict[Any, dict[str, Any]]
) -> EngineEstimate:
    node = output[ComponentType.node]
    parts = [output[t] for t in _BRANCH_TYPES if t in output]
    engine_ids = np.concatenate([p["id"] for p in parts]) if parts else np.zeros(0, np.int64)
    order = lookup(engine_ids, located.branches.id)
    branch: dict[str, FloatArray] = {}
    for column, name, scale in (
        ("energized", "energized", 1.0),
        ("loading", "loading", 1.0),
        ("i_from", "i_from_ka", 1e-3),
        ("i_to", "i_to_ka", 1e-3),
        ("p_from", "p_from_mw", 1e-6),
        ("q_from", "q_from_mvar", 1e-6),
        ("p_to", "p_to_mw", 1e-6),
        ("q_to", "q_to_mvar", 1e-6),
    ):
        values = np.concatenate([p[column] for p in parts]) if parts else np.zeros(0)
        branch[name] = values[order].astype(np.float64) * scale
    appliance_p: dict[Target, FloatArray] = {}
    appliance_q: dict[Target, FloatArray] = {}
    for target, component in _APPLIANCE_TYPES.items():
        size = model.table(_TABLE_OF[target]).size
        data = output.get(component)
        appliance_p[target] = np.zeros(size) if data is None else data["p"] * 1e-6
        appliance_q[target] = np.zeros(size) if data is None else data["q"] * 1e-6
    energized = node["energized"].astype(bool)
    return EngineEstimate(
        energized=energized,
        u_pu=np.where(energized, node["u_pu"], np.nan),
        u_kv=np.where(energized, node["u"] * 1e-3, np.nan),
        u_angle_rad=np.where(energized, node["u_angle"], np.nan),
        injection_p_mw=node["p"] * 1e-6,
        injection_q_mvar=node["q"] * 1e-6,
        branch=branch,
        appliance_p_mw=appliance_p,
        appliance_q_mvar=appliance_q,
    )


_TABLE_OF: Final = {Target.LOAD: "load", Target.GENERATOR: "generator", Target.SOURCE: "source"}


def _sensors(
    model: GridModel, located: LocatedMeasurements, local_angle_rad: FloatArray
) -> dict[ComponentType, npt.NDArray[np.void]]:
    table = located.measurements.table
    next_id = int(model.all_ids().max(initial=0)) + 1
    element_or_bus = np.where(
        located.target == Target.BUS,
        model.bus["id"][np.maximum(located.bus_row, 0)] if model.bus.size else -1,
        table["element"],
    )
    out: dict[ComponentType, npt.NDArray[np.void]] = {}

    voltage = _voltage_sensors(model, located, next_id)
    if voltage is not None:
        out[ComponentType.sym_voltage_sensor] = voltage

    power = np.flatnonzero(located.of_quantity(Quantity.PQ))
    if power.size:
        sensor = initialize_array(DatasetType.input, ComponentType.sym_power_sensor, power.size)
        sensor["id"] = next_id + power
        sensor["measured_object"] = element_or_bus[power]
        sensor["measured_terminal_type"] = _terminal(located, power)
        sensor["p_measured"] = table["p_mw"][power] * 1e6
        sensor["q_measured"] = table["q_mvar"][power] * 1e6
        sensor["p_sigma"] = table["p_sigma_mw"][power] * 1e6
        sensor["q_sigma"] = table["q_sigma_mvar"][power] * 1e6
        out[ComponentType.sym_power_sensor] = sensor

    current = np.flatnonzero(located.of_quantity(Quantity.I, Quantity.I_PHASOR))
    if current.size:
        phasor = located.of_quantity(Quantity.I_PHASOR)[current]
        sensor = initialize_array(DatasetType.input, ComponentType.sym_current_sensor, current.size)
        sensor["id"] = next_id + current
        sensor["measured_object"] = table["element"][current]
        sensor["measured_terminal_type"] = _terminal(located, current)
        sensor["angle_measurement_type"] = np.where(
            phasor, AngleMeasurementType.global_angle, AngleMeasurementType.local_angle
        )
        i_a = table["i_ka"][current] * 1e3
        sigma_a = table["i_sigma_ka"][current] * 1e3
        sensor["i_measured"] = i_a
        sensor["i_sigma"] = sigma_a
        sensor["i_angle_measured"] = np.where(
            phasor, np.deg2rad(table["i_angle_deg"][current]), local_angle_rad[current]
        )
        pinned_sigma = sigma_a / np.maximum(i_a, sigma_a)
        sensor["i_angle_sigma"] = np.where(
            phasor, np.deg2rad(table["angle_sigma_deg"][current]), pinned_sigma
        )
        out[ComponentType.sym_current_sensor] = sensor
    return out


def _voltage_sensors(
    model: GridModel, located: LocatedMeasurements, next_id: int
) -> npt.NDArray[np.void] | None:
    """Voltage sensors; a magnitude at a bus that also has a phasor is merged into the phasor(s).

    The engine merges all sensors of a bus into one and drops the angle when one of them has
    none; inverse-variance weighting of the magnitudes here keeps the angle and the information.
    """
    table = located.measurements.table
    magnitude = np.flatnonzero(located.of_quantity(Quantity.U))
    phasor = np.flatnonzero(located.of_quantity(Quantity.U_PHASOR))
    if magnitude.size + phasor.size == 0:
        return None
    n = model.bus.size
    u_kv = table["u_kv"].copy()
    sigma_kv = table["u_sigma_kv"].copy()
    phasor_buses = np.zeros(n, dtype=bool)
    phasor_buses[located.bus_row[phasor]] = True
    merged = magnitude[phasor_buses[located.bus_row[magnitude]]]
    if merged.size:
        buses = located.bus_row[merged]
        weight = np.bincount(buses, 1.0 / sigma_kv[merged] ** 2, n)
        weighted = np.bincount(buses, u_kv[merged] / sigma_kv[merged] ** 2, n)
        # each phasor sensor at such a bus takes an equal share of the magnitudes' information
        share = np.bincount(located.bus_row[phasor], minlength=n).astype(np.float64)
        b = located.bus_row[phasor]
        w_phasor = 1.0 / sigma_kv[phasor] ** 2
        w_extra = weight[b] / share[b]
        u_kv[phasor] = (u_kv[phasor] * w_phasor + weighted[b] / share[b]) / (w_phasor + w_extra)
        sigma_kv[phasor] = 1.0 / np.sqrt(w_phasor + w_extra)
    rows = np.concatenate([np.setdiff1d(magnitude, merged), phasor])
    sensor = initialize_array(DatasetType.input, ComponentType.sym_voltage_sensor, rows.size)
    sensor["id"] = next_id + rows
    sensor["measured_object"] = model.bus["id"][located.bus_row[rows]]
    sensor["u_sigma"] = sigma_kv[rows] * 1e3
    sensor["u_measured"] = u_kv[rows] * 1e3
    sensor["u_angle_measured"] = np.deg2rad(table["u_angle_deg"][rows])
    return sensor


def _terminal(located: LocatedMeasurements, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int8]:
    target = located.target[rows]
    end = located.measurements.table["end"][rows]
    out = np.where(
        end == END_TO, MeasuredTerminalType.branch_to, MeasuredTerminalType.branch_from
    ).astype(np.int8)
    for kind, terminal in _TERMINAL.items():
        out[target == kind] = terminal
    return out
