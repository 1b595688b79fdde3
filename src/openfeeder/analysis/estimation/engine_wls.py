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

The engine converts a power measurement to a current with the *measured* voltage of its bus
where the bus has a voltage sensor (the magnitude with the estimate's angle; the phasor of a PMU),
not with the estimated one. Its estimate is then the WLS optimum for powers scaled by
``u_estimated / u_measured`` at those buses: :attr:`EngineEstimate.power_factor` gives that factor
per bus, so the objective of the problem the engine solved can be evaluated (see :mod:`.estimator`).

A model converted once is kept with its sensors (:class:`_EngineCache`, a few models): a later
solve of the same model with measurements in the same places (the same quantities at the same
buses, elements and ends, in the same order, the same unobservable buses) only writes the new
sensor values into it and runs the engine again; only model identity is checked, so a model's
tables must not be written in place (as :mod:`openfeeder.model.grid` asks anyway).

The engine takes no power or current sensor on a ``link`` (its switch), yet feeder terminal units
measure exactly there. A measured switch is therefore handed over as a line of
:data:`SWITCH_LINE_Z_PU` (x; r a tenth of it) per unit of its bus's rated voltage on 1 MVA: 4 mOhm at
20 kV, a voltage drop of about 1 V at 300 A, far below any meter's resolution.
"""

from __future__ import annotations

import dataclasses
import threading
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
    power_grid_meta_data,
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
from openfeeder.analysis.estimation.locate import BranchTable, LocatedMeasurements, Target
from openfeeder.analysis.estimation.measurement_set import END_TO, Quantity
from openfeeder.analysis.estimation.model_cache import (
    RecentPerModel,
    find,
    ids_unique,
    model_memo,
    next_free_id,
)
from openfeeder.analysis.estimation.table_rows import join_rows, take_rows
from openfeeder.errors import AnalysisError, NotConvergedError, NotObservableError
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "BRANCH_TYPES",
    "ENGINE_CACHE_SIZE",
    "SWITCH_LINE_Z_PU",
    "EngineEstimate",
    "PreparedEngine",
    "branch_order",
    "engine_estimate",
    "engine_layout",
    "engine_values",
    "prepare_engine",
    "run_engine",
    "solve_wls",
    "voltage_sensors",
]

SWITCH_LINE_Z_PU: Final = 1e-5
ENGINE_CACHE_SIZE: Final = 8
"""Converted engine models kept (model and measurement placement pairs, least recently used out)."""

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

BRANCH_TYPES: Final = (ComponentType.line, ComponentType.transformer, ComponentType.link)
"""The engine's branch components; their outputs, concatenated in this order, are what
:func:`branch_order` indexes."""
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
    power_factor: npt.NDArray[np.complex128]
    """Per bus: ``u_estimated / u_linearized``, where the engine converted the bus's power
    measurements with its measured voltage (1 at buses without a voltage sensor); a measured power
    ``S`` entered the engine's problem as ``S * power_factor``."""


@dataclass(slots=True, eq=False)
class PreparedEngine:
    """One converted model with its sensors (what a repeated solve reuses)."""

    model: GridModel
    pending: dict[ComponentType, Any] | None
    """The engine input, until :attr:`engine` converts it."""
    output_filter: dict[
        ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None
    ]
    next_id: int
    lock: threading.RLock
    branch_ids: npt.NDArray[np.int64]
    """Ids of the engine's branches in the order of their outputs (:data:`BRANCH_TYPES`)."""
    switch_lines: npt.NDArray[np.int64]
    """Rows of the switches handed over as lines (after the model's lines, in this order)."""
    branch_parts: tuple[tuple[ComponentType, int], ...]
    """The engine's branch components in :data:`BRANCH_TYPES` order and how many of each."""
    branch_order: npt.NDArray[np.int64] | None = None
    voltage_bus_row: npt.NDArray[np.int64] | None = None
    converted: PowerGridModel | None = None

    @property
    def engine(self) -> PowerGridModel:
        """The engine's model, converted from :attr:`pending` on first use: the first solve
        converts right before it runs, with the engine's data still in the processor's cache
        (the caller's own preparation in between would evict them on a large grid)."""
        with self.lock:
            if self.converted is None:
                pending = self.pending if self.pending is not None else {}
                try:
                    self.converted = PowerGridModel(
                        pending, system_frequency=self.model.frequency_hz
                    )
                except PowerGridError as err:
                    message = str(err).splitlines()[0]
                    raise AnalysisError(f"state estimation failed: {message}") from err
                self.pending = None
            return self.converted


Layout = bytes | tuple[str, bytes]
"""What a kept engine model is found by besides its model: :func:`engine_layout`, or a name and a
key that determines it (a placement's: ``("placement", key)``)."""


class _EngineCache(RecentPerModel[Layout, PreparedEngine]):
    """The last :data:`ENGINE_CACHE_SIZE` converted models, keyed by model identity and the
    measurements' placement (a model is used by one solve at a time)."""


_ENGINES: Final = _EngineCache(ENGINE_CACHE_SIZE)


def clear_engine_cache() -> None:
    """Forget every converted model (the next solve of each converts it again)."""
    _ENGINES.clear()


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
    prepared, sensors, fresh = prepare_engine(
        model, located, excluded_bus=excluded_bus, local_angle_rad=local_angle_rad
    )
    update = None if fresh else {kind: _as_update(kind, v) for kind, v in sensors.items()}
    output = run_engine(
        prepared,
        update,
        method=method,
        error_tolerance=error_tolerance,
        max_iterations=max_iterations,
    )
    return engine_estimate(
        model, located, output, prepared, sensors.get(ComponentType.sym_voltage_sensor)
    )


def prepare_engine(
    model: GridModel,
    located: LocatedMeasurements,
    *,
    excluded_bus: BoolArray,
    local_angle_rad: FloatArray,
    layout: Layout | None = None,
    columnar: bool = False,
) -> tuple[PreparedEngine, dict[ComponentType, Any], bool]:
    """The engine model for this placement (kept, or made now with these sensors: then
    ``True``; converted on first use, :attr:`PreparedEngine.engine`) and the sensors of
    ``located``'s readings, as input arrays or with ``columnar`` as :data:`SensorColumns`
    (the engine takes both); ``layout`` is :func:`engine_layout` if known."""
    key = engine_layout(located, excluded_bus) if layout is None else layout
    build = _sensor_columns if columnar else _sensors
    prepared = _ENGINES.get(model, key)
    if prepared is not None:
        return prepared, build(model, located, local_angle_rad, prepared.next_id), False
    next_id = next_free_id(model)
    sensors: dict[ComponentType, Any] = build(model, located, local_angle_rad, next_id)
    engine_input, switch_lines = _engine_input(model, located, excluded_bus)
    engine_input.update(sensors)
    prepared = PreparedEngine(
        model=model,
        pending=engine_input,
        output_filter=_output_filter(engine_input),
        next_id=next_id,
        lock=threading.RLock(),
        branch_ids=np.concatenate(
            [engine_input[t]["id"] for t in BRANCH_TYPES if t in engine_input]
            or [np.zeros(0, np.int64)]
        ).astype(np.int64),
        switch_lines=switch_lines,
        branch_parts=tuple((t, engine_input[t].size) for t in BRANCH_TYPES if t in engine_input),
    )
    _ENGINES.put(key, prepared)
    return prepared, sensors, True


def run_engine(
    prepared: PreparedEngine,
    update: dict[ComponentType, Any] | None,
    *,
    method: CalculationMethod,
    error_tolerance: float,
    max_iterations: int,
) -> dict[Any, dict[str, Any]]:
    """Write ``update`` (new sensor values, row or column arrays) into the converted model and
    run the estimate; the engine's errors as :mod:`openfeeder.errors` ones."""
    try:
        with prepared.lock:
            if update:
                prepared.engine.update(update_data=update)
            output = prepared.engine.calculate_state_estimation(
                symmetric=True,
                error_tolerance=error_tolerance,
                max_iterations=max_iterations,
                calculation_method=method,
                output_component_types=prepared.output_filter,
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
    return cast(dict[Any, dict[str, Any]], output)


def engine_estimate(
    model: GridModel,
    located: LocatedMeasurements,
    output: dict[Any, dict[str, Any]],
    prepared: PreparedEngine,
    voltage: npt.NDArray[np.void] | None,
) -> EngineEstimate:
    """The engine's ``output`` in model order, with the power factor of the ``voltage`` sensors
    it was given."""
    estimate = engine_values(model, located, output, prepared)
    return _with_power_factor(model, estimate, voltage, prepared)


def engine_layout(located: LocatedMeasurements, excluded_bus: BoolArray) -> bytes:
    """What the converted model depends on besides the model: where each measurement is."""
    measurements = located.measurements
    return b"".join(
        (
            located.target.tobytes(),
            located.target_row.tobytes(),
            located.bus_row.tobytes(),
            measurements.column("quantity").tobytes(),
            measurements.column("end").tobytes(),
            np.packbits(excluded_bus).tobytes(),
        )
    )


def _engine_input(
    model: GridModel, located: LocatedMeasurements, excluded_bus: BoolArray
) -> tuple[dict[ComponentType, Any], npt.NDArray[np.int64]]:
    """The engine input without sensors and the rows of the switches it has as lines."""
    engine_input = dict(_model_engine_input(model))
    if excluded_bus.any() and ComponentType.source in engine_input:
        sources = engine_input[ComponentType.source].copy()
        rows = find(model, "bus", sources["node"])
        sources["status"] = np.where(excluded_bus[rows], 0, sources["status"])
        engine_input[ComponentType.source] = sources
    return engine_input, _measured_switches_as_lines(model, located, engine_input)


def _as_update(kind: ComponentType, values: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    update = initialize_array(DatasetType.update, kind, values.size)
    for name in update.dtype.names or ():
        if name in (values.dtype.names or ()):
            update[name] = values[name]
    return update


def _with_power_factor(
    model: GridModel,
    estimate: EngineEstimate,
    voltage: npt.NDArray[np.void] | None,
    prepared: PreparedEngine,
) -> EngineEstimate:
    """``estimate`` with :attr:`EngineEstimate.power_factor` from the voltage sensors handed over.

    The engine combines a bus's sensors by inverse variance: magnitudes when one has no angle
    (then the estimate's angle is used), phasors otherwise (the module docstring)."""
    n = model.bus.size
    factor = np.ones(n, dtype=np.complex128)
    if voltage is not None and voltage.size:
        rows = prepared.voltage_bus_row
        if rows is None:
            rows = prepared.voltage_bus_row = lookup(model.bus["id"], voltage["measured_object"])
        u_rated_v = model.bus["u_rated_kv"][rows] * 1e3
        weight = 1.0 / (voltage["u_sigma"] / u_rated_v) ** 2
        magnitude = voltage["u_measured"] / u_rated_v
        angle = voltage["u_angle_measured"]
        no_angle = np.bincount(rows, np.isnan(angle), n) > 0
        total = np.bincount(rows, weight, n)
        mean_magnitude = np.bincount(rows, weight * magnitude, n)
        phasor = magnitude * np.exp(1j * np.nan_to_num(angle))
        mean_re = np.bincount(rows, weight * phasor.real, n)
        mean_im = np.bincount(rows, weight * phasor.imag, n)
        measured = total > 0
        estimated = estimate.u_pu * np.exp(1j * estimate.u_angle_rad)
        with np.errstate(divide="ignore", invalid="ignore"):
            linearized = np.where(
                no_angle,
                mean_magnitude / total * np.exp(1j * estimate.u_angle_rad),
                (mean_re + 1j * mean_im) / total,
            )
            ratio = estimated / linearized
        usable = measured & np.isfinite(ratio)
        factor[usable] = ratio[usable]
    return dataclasses.replace(estimate, power_factor=factor)


def _measured_switches_as_lines(
    model: GridModel, located: LocatedMeasurements, engine_input: dict[ComponentType, Any]
) -> npt.NDArray[np.int64]:
    """Replace measured switches (links) by near-zero-impedance lines (module docstring);
    their switch rows (appended to the lines in this order)."""
    first = model.line.size + model.transformer.size  # switches follow in the branch table
    branch = located.target_row[located.target == Target.BRANCH]
    measured = np.zeros(model.switch.size, dtype=bool)
    measured[branch[branch >= first] - first] = True
    switch_rows: npt.NDArray[np.int64] = np.flatnonzero(measured).astype(np.int64, copy=False)
    if switch_rows.size == 0:
        return switch_rows
    every = _every_switch_as_line(model)
    links = engine_input[ComponentType.link]
    if links is every.links:  # the model's own links: one per switch, in switch order
        kept = ~measured
    else:
        kept = ~np.isin(links["id"], model.switch["id"][switch_rows])
    engine_input[ComponentType.link] = take_rows(links, kept)
    if engine_input[ComponentType.link].size == 0:
        del engine_input[ComponentType.link]
    line = take_rows(every.lines, switch_rows)
    existing = engine_input.get(ComponentType.line)
    engine_input[ComponentType.line] = line if existing is None else join_rows([existing, line])
    return switch_rows


@dataclass(frozen=True, slots=True, eq=False)
class _SwitchLines:
    lines: npt.NDArray[np.void]
    """Every switch of the model as the line it is handed over as when measured."""
    links: npt.NDArray[np.void] | None
    """The links of the model's kept engine input, if they are its switches in order and the
    model's ids unique (a measured switch's link is then the one at its row)."""


def _every_switch_as_line(model: GridModel) -> _SwitchLines:
    """:class:`_SwitchLines` of ``model`` (made once per model)."""

    def build() -> _SwitchLines:
        switch = model.switch
        u_rated_kv = model.bus["u_rated_kv"][find(model, "bus", switch["from_bus"])]
        z_base_ohm = u_rated_kv**2
        line = _input_array(ComponentType.line, switch.size, _LINE_WRITTEN)
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
        links = _model_engine_input(model).get(ComponentType.link)
        in_order = (
            links is not None
            and ids_unique(model)
            and np.array_equal(links["id"], np.asarray(switch["id"]))
        )
        return _SwitchLines(line, links if in_order else None)

    return model_memo(model, "switch_lines", build)


def _model_engine_input(model: GridModel) -> dict[ComponentType, Any]:
    """The engine input of ``model`` without sensors (made once per model; do not write)."""
    return model_memo(model, "engine_input", lambda: to_engine_input(model))


def _output_filter(
    engine_input: dict[ComponentType, Any],
) -> dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None]:
    wanted: dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None]
    wanted = {ComponentType.node: ["energized", "u_pu", "u", "u_angle", "p", "q"]}
    for branch_type in BRANCH_TYPES:
        wanted[branch_type] = ["id", *_BRANCH_COLUMNS]
    for appliance in _APPLIANCE_TYPES.values():
        wanted[appliance] = ["p", "q"]
    return {k: v for k, v in wanted.items() if k in engine_input}


def engine_values(
    model: GridModel,
    located: LocatedMeasurements,
    output: dict[Any, dict[str, Any]],
    prepared: PreparedEngine,
) -> EngineEstimate:
    """The engine's ``output`` in model order (``located``: only its branch table is used), with
    a power factor of 1 (:func:`engine_estimate` has the real one)."""
    node = output[ComponentType.node]
    parts = [output[t] for t in BRANCH_TYPES if t in output]
    order = branch_order(prepared, located)
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
        power_factor=np.ones(energized.size, dtype=np.complex128),
    )


def branch_order(prepared: PreparedEngine, located: LocatedMeasurements) -> npt.NDArray[np.int64]:
    """Per branch of ``located.branches``: its position in the engine's branch outputs."""
    order = prepared.branch_order
    if order is None:
        order = prepared.branch_order = _branch_positions(prepared, located.branches)
    return order


def _branch_positions(prepared: PreparedEngine, branches: BranchTable) -> npt.NDArray[np.int64]:
    """``lookup(prepared.branch_ids, branches.id)``. The engine's branches are the model's
    lines, the measured switches, the transformers and the other switches, in model order
    (:func:`_engine_input`): with unique ids that order is checked against the ids and taken."""
    model, ids = prepared.model, prepared.branch_ids
    lines, transformers = model.line.size, model.transformer.size
    measured = np.zeros(model.switch.size, dtype=bool)
    measured[prepared.switch_lines] = True
    m = prepared.switch_lines.size
    order = np.concatenate(
        [
            np.arange(lines),
            lines + m + np.arange(transformers),
            np.where(
                measured,
                lines + np.cumsum(measured) - 1,
                lines + m + transformers + np.cumsum(~measured) - 1,
            ),
        ]
    ).astype(np.int64)
    if (
        ids.size == branches.id.size
        and ids_unique(model)
        and np.array_equal(ids[order], branches.id)
    ):
        return order
    return lookup(ids, branches.id)


_TABLE_OF: Final = {Target.LOAD: "load", Target.GENERATOR: "generator", Target.SOURCE: "source"}


def _sensors(
    model: GridModel, located: LocatedMeasurements, local_angle_rad: FloatArray, next_id: int
) -> dict[ComponentType, npt.NDArray[np.void]]:
    """The sensors of ``located`` as engine input arrays (one row per sensor)."""
    return {
        kind: _packed(kind, columns)
        for kind, columns in _sensor_columns(model, located, local_angle_rad, next_id).items()
    }


SensorColumns = dict[ComponentType, dict[str, npt.NDArray[Any]]]
"""Sensors per engine component type as columns (attribute: contiguous array of its type); the
engine takes them as they are (a columnar component) and gives absent attributes their null."""


def _sensor_columns(
    model: GridModel, located: LocatedMeasurements, local_angle_rad: FloatArray, next_id: int
) -> SensorColumns:
    """The sensors of ``located`` by attribute (:func:`_sensors` packs the same values in rows):
    each attribute one contiguous array instead of a field written across the rows."""
    column = located.measurements.column
    out: SensorColumns = {}

    voltage = _voltage_columns(model, located, next_id)
    if voltage is not None:
        out[ComponentType.sym_voltage_sensor] = voltage

    power = located.rows_of_quantity(Quantity.PQ)
    if power.size:
        out[ComponentType.sym_power_sensor] = _typed(
            ComponentType.sym_power_sensor,
            id=next_id + power,
            measured_object=_power_objects(model, located, power),
            measured_terminal_type=_terminal(located, power),
            p_measured=_scaled(column("p_mw"), power, 1e6),
            q_measured=_scaled(column("q_mvar"), power, 1e6),
            p_sigma=_scaled(column("p_sigma_mw"), power, 1e6),
            q_sigma=_scaled(column("q_sigma_mvar"), power, 1e6),
        )

    current = np.flatnonzero(located.of_quantity(Quantity.I, Quantity.I_PHASOR))
    if current.size:
        phasor = located.of_quantity(Quantity.I_PHASOR)[current]
        i_a = column("i_ka")[current] * 1e3
        sigma_a = column("i_sigma_ka")[current] * 1e3
        pinned_sigma = sigma_a / np.maximum(i_a, sigma_a)
        out[ComponentType.sym_current_sensor] = _typed(
            ComponentType.sym_current_sensor,
            id=next_id + current,
            measured_object=column("element")[current],
            measured_terminal_type=_terminal(located, current),
            angle_measurement_type=np.where(
                phasor, AngleMeasurementType.global_angle, AngleMeasurementType.local_angle
            ),
            i_sigma=sigma_a,
            i_angle_sigma=np.where(
                phasor, np.deg2rad(column("angle_sigma_deg")[current]), pinned_sigma
            ),
            i_measured=i_a,
            i_angle_measured=np.where(
                phasor, np.deg2rad(column("i_angle_deg")[current]), local_angle_rad[current]
            ),
        )
    return out


def _power_objects(
    model: GridModel, located: LocatedMeasurements, power: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The measured object of each power measurement at ``power``: the bus's id for a bus
    injection, else the element."""
    out: npt.NDArray[np.int64] = located.measurements.column("element")[power]
    at_bus = np.flatnonzero(located.target[power] == Target.BUS)
    if at_bus.size:
        bus_rows = located.bus_row[power[at_bus]]
        out[at_bus] = model.bus["id"][np.maximum(bus_rows, 0)] if model.bus.size else -1
    return out


def _scaled(column: FloatArray, rows: npt.NDArray[np.int64], scale: float) -> FloatArray:
    """``column[rows] * scale``, multiplied in the gathered copy."""
    out = column[rows]
    out *= scale
    return out


def _radians(column: FloatArray, rows: npt.NDArray[np.int64]) -> FloatArray:
    """``np.deg2rad(column[rows])``, converted in the gathered copy."""
    out = column[rows]
    np.deg2rad(out, out=out)
    return out


def _typed(kind: ComponentType, **columns: npt.ArrayLike) -> dict[str, npt.NDArray[Any]]:
    """``columns`` as arrays of the engine's types for ``kind``'s input attributes."""
    dtype = _INPUT_DTYPES[kind]
    return {name: np.asarray(values, dtype=dtype[name]) for name, values in columns.items()}


def _packed(kind: ComponentType, columns: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.void]:
    """``columns`` of ``kind`` as one input array (the other attributes the engine's null)."""
    size = next(iter(columns.values())).size
    out = _input_array(kind, size, tuple(columns))
    for name, values in columns.items():
        out[name] = values
    return out


def voltage_sensors(
    model: GridModel, located: LocatedMeasurements, next_id: int
) -> npt.NDArray[np.void] | None:
    """Voltage sensors; a magnitude at a bus that also has a phasor is merged into the phasor(s).

    The engine merges all sensors of a bus into one and drops the angle when one of them has
    none; inverse-variance weighting of the magnitudes here keeps the angle and the information.
    """
    columns = _voltage_columns(model, located, next_id)
    return None if columns is None else _packed(ComponentType.sym_voltage_sensor, columns)


_ROWS_NONE: Final = np.zeros(0, dtype=np.int64)


def _voltage_columns(
    model: GridModel, located: LocatedMeasurements, next_id: int
) -> dict[str, npt.NDArray[Any]] | None:
    """:func:`voltage_sensors` by attribute."""
    magnitude = located.rows_of_quantity(Quantity.U)
    phasor = located.rows_of_quantity(Quantity.U_PHASOR)
    if magnitude.size + phasor.size == 0:
        return None
    n = model.bus.size
    u_kv = located.measurements.column("u_kv")
    sigma_kv = located.measurements.column("u_sigma_kv")
    merged = _ROWS_NONE
    if phasor.size:  # magnitudes at a bus with a phasor
        phasor_buses = np.zeros(n, dtype=bool)
        phasor_buses[located.bus_row[phasor]] = True
        merged = magnitude[phasor_buses[located.bus_row[magnitude]]]
    if merged.size:
        u_kv, sigma_kv = u_kv.copy(), sigma_kv.copy()
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
        kept = np.ones(len(located.measurements), dtype=bool)
        kept[merged] = False
        magnitude = magnitude[kept[magnitude]]
    rows = np.concatenate([magnitude, phasor]) if phasor.size else magnitude
    return _typed(
        ComponentType.sym_voltage_sensor,
        id=next_id + rows,
        measured_object=model.bus["id"][located.bus_row[rows]],
        u_sigma=_scaled(sigma_kv, rows, 1e3),
        u_measured=_scaled(u_kv, rows, 1e3),
        u_angle_measured=_radians(located.measurements.column("u_angle_deg"), rows),
    )


_LINE_WRITTEN: Final = (
    "id",
    "from_node",
    "to_node",
    "from_status",
    "to_status",
    "r1",
    "x1",
    "c1",
    "tan1",
    "r0",
    "x0",
    "c0",
    "tan0",
    "i_n",
)


def _input_array(kind: ComponentType, size: int, written: tuple[str, ...]) -> npt.NDArray[np.void]:
    """An engine input array of ``kind`` for a caller that writes every attribute in ``written``:
    the others hold the engine's null value, as :func:`initialize_array` fills them (filling
    every attribute first would cost as much as writing them)."""
    out: npt.NDArray[np.void] = initialize_array(DatasetType.input, kind, size, empty=True)
    null = initialize_array(DatasetType.input, kind, 1)
    for name in out.dtype.names or ():
        if name not in written:
            out[name] = null[name][0]
    return out


def _terminal(located: LocatedMeasurements, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int8]:
    target = located.target[rows]
    out: npt.NDArray[np.int8] = _TERMINAL_OF_TARGET[target]
    branch = target == Target.BRANCH
    if branch.any():
        to = located.measurements.column("end")[rows[branch]] == END_TO
        out[branch] = np.where(to, MeasuredTerminalType.branch_to, MeasuredTerminalType.branch_from)
    return out


_INPUT_DTYPES: Final = {
    kind: power_grid_meta_data[DatasetType.input][kind].dtype
    for kind in (
        ComponentType.sym_voltage_sensor,
        ComponentType.sym_power_sensor,
        ComponentType.sym_current_sensor,
    )
}

_TERMINAL_OF_TARGET: Final = np.array(
    [_TERMINAL.get(target, MeasuredTerminalType.branch_from) for target in Target], dtype=np.int8
)
"""The engine's terminal type of a measurement by its :class:`~.locate.Target` (branches: the
``from`` end, the ``to`` end set by :func:`_terminal`)."""
