"""Three-phase phasors of a whole grid: the state a digital twin's devices sense.

:func:`solve_phasors` runs power-grid-model's asymmetric power flow (loads split over the phases by
their shares) for one or many operating points on one topology and returns a :class:`PhasorSeries`:
per step, the phase-to-ground voltage phasor of every bus and the current phasor of every branch end
and every load. Short-circuit and open-conductor calculations (:mod:`openfeeder.analysis.faults`)
return the same :class:`PhasorState`, so a meter, a fault indicator, a waveform generator or a
COMTRADE record reads normal operation and faults the same way.

Conventions: RMS values in volts and amperes; angles relative to the source's phase-a reference;
branch currents flow *into* the branch at the end named (``i_from_a`` at the from bus, ``i_to_a`` at
the to bus); load currents flow into the load. Branches are in the model's order: lines, then
transformers, then switches (as in :mod:`openfeeder.analysis.powerflow`). De-energized buses and
branches carry exact zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from power_grid_model import CalculationMethod, ComponentType
from power_grid_model.errors import (  # type: ignore[attr-defined]  # re-exported
    IterationDiverge,
    MaxIterationReached,
    PowerGridError,
)

from openfeeder.analysis.engine_input import to_engine_input
from openfeeder.analysis.powerflow import (
    DEFAULT_ERROR_TOLERANCE_PU,
    DEFAULT_MAX_ITERATIONS,
    _batch_update,
    _engine,
    load_arrays,
)
from openfeeder.errors import AnalysisError, NotConvergedError
from openfeeder.model.grid import GridModel, lookup

__all__ = ["PhasorSeries", "PhasorState", "branch_ids", "solve_phasors"]

ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]

_BRANCH_TYPES: Final = (ComponentType.line, ComponentType.transformer, ComponentType.link)


def branch_ids(model: GridModel) -> IntArray:
    """Branch ids in result order: lines, transformers, switches."""
    return np.concatenate([model.line["id"], model.transformer["id"], model.switch["id"]]).astype(
        np.int32
    )


@dataclass(frozen=True, slots=True, eq=False)
class PhasorState:
    """Phasors of every bus, branch end and load at one instant (see the module docstring)."""

    bus_id: IntArray
    u_v: ComplexArray
    """Phase-to-ground voltage phasors, shape (buses, 3)."""
    branch_id: IntArray
    i_from_a: ComplexArray
    """Current into the branch at its from end, shape (branches, 3)."""
    i_to_a: ComplexArray
    """Current into the branch at its to end, shape (branches, 3)."""
    load_id: IntArray
    i_load_a: ComplexArray
    """Current drawn by each load, shape (loads, 3)."""
    frequency_hz: float

    def bus_rows(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Rows of ``ids`` in the bus arrays (KeyError naming the first unknown id)."""
        return _rows(self.bus_id, ids, "bus")

    def branch_rows(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        return _rows(self.branch_id, ids, "branch")

    def load_rows(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        return _rows(self.load_id, ids, "load")

    @property
    def energized(self) -> npt.NDArray[np.bool_]:
        """Buses with voltage on any phase."""
        return cast(npt.NDArray[np.bool_], np.abs(self.u_v).max(axis=1) > 0.0)


@dataclass(frozen=True, slots=True, eq=False)
class PhasorSeries:
    """Many :class:`PhasorState` on one topology: the same arrays with a leading step axis."""

    bus_id: IntArray
    u_v: ComplexArray
    branch_id: IntArray
    i_from_a: ComplexArray
    i_to_a: ComplexArray
    load_id: IntArray
    i_load_a: ComplexArray
    frequency_hz: float

    @property
    def steps(self) -> int:
        return int(self.u_v.shape[0])

    def state(self, step: int) -> PhasorState:
        return PhasorState(
            bus_id=self.bus_id,
            u_v=self.u_v[step],
            branch_id=self.branch_id,
            i_from_a=self.i_from_a[step],
            i_to_a=self.i_to_a[step],
            load_id=self.load_id,
            i_load_a=self.i_load_a[step],
            frequency_hz=self.frequency_hz,
        )


def solve_phasors(
    model: GridModel,
    *,
    load_p_mw: FloatArray | None = None,
    load_q_mvar: FloatArray | None = None,
    generator_p_mw: FloatArray | None = None,
    generator_q_mvar: FloatArray | None = None,
    source_impedance: bool = True,
    error_tolerance: float = DEFAULT_ERROR_TOLERANCE_PU,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    threads: int = 1,
) -> PhasorSeries:
    """Asymmetric power flow of ``steps`` operating points; arrays are (steps, loads) etc.

    Without ``load_p_mw`` the model's own values make one step. ``load_q_mvar`` defaults to each
    load's power factor applied to ``load_p_mw``; generator arrays default to the model's setpoints.
    The source's short-circuit impedance is part of the network by default (a twin's voltages sag
    with load as a real feeder's do); ``source_impedance=False`` makes it an ideal slack.
    """
    load, gen = model.load, model.generator
    load_p, load_q = load_arrays(
        model, model.load["p_mw"][None, :] if load_p_mw is None else load_p_mw, load_q_mvar
    )
    steps = load_p.shape[0]
    engine_input = to_engine_input(model, symmetric=False, source_impedance=source_impedance)
    engine = _engine(engine_input, model.frequency_hz)
    update: dict[ComponentType, Any] = {}
    if load.size:
        update[ComponentType.asym_load] = _batch_update(load["id"], load_p, load_q, load, False)
    if gen.size and (generator_p_mw is not None or generator_q_mvar is not None):
        gen_p = (
            np.broadcast_to(gen["p_mw"], (steps, gen.size))
            if generator_p_mw is None
            else np.asarray(generator_p_mw, dtype=np.float64)
        )
        gen_q = (
            np.broadcast_to(gen["q_mvar"], (steps, gen.size))
            if generator_q_mvar is None
            else np.asarray(generator_q_mvar, dtype=np.float64)
        )
        if gen_p.shape != (steps, gen.size) or gen_q.shape != (steps, gen.size):
            raise AnalysisError(
                f"generator arrays must have shape ({steps}, {gen.size}), "
                f"got {gen_p.shape} and {gen_q.shape}"
            )
        update[ComponentType.asym_gen] = _batch_update(gen["id"], gen_p, gen_q, None, False)
    wanted: dict[ComponentType, Any] = {ComponentType.node: ["u", "u_angle"]}
    for component in _BRANCH_TYPES:
        if component in engine_input:
            wanted[component] = ["p_from", "q_from", "p_to", "q_to"]
    if ComponentType.asym_load in engine_input:
        wanted[ComponentType.asym_load] = ["p", "q"]
    try:
        output = engine.calculate_power_flow(
            symmetric=False,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
            calculation_method=CalculationMethod.newton_raphson,
            update_data=cast(Any, update if update else None),
            threading=threads,
            output_component_types=wanted,
        )
    except (IterationDiverge, MaxIterationReached) as err:
        raise NotConvergedError(
            f"three-phase power flow did not converge: {err}",
            iterations=None,
            max_deviation=None,
            worst_bus=None,
        ) from err
    except PowerGridError as err:
        raise AnalysisError(f"three-phase power flow failed: {err}") from err
    columns = cast(dict[ComponentType, dict[str, npt.NDArray[Any]]], output)
    node = columns[ComponentType.node]
    u_v = _reshape(node["u"] * np.exp(1j * node["u_angle"]), steps)  # (steps, buses, 3)
    bus_id = model.bus["id"].astype(np.int32)
    v_from, v_to = _branch_end_voltages(model, bus_id, u_v)
    i_from_parts, i_to_parts = [], []
    for component in _BRANCH_TYPES:
        data = columns.get(component)
        if data is None:
            continue
        i_from_parts.append(_reshape(data["p_from"] + 1j * data["q_from"], steps))
        i_to_parts.append(_reshape(data["p_to"] + 1j * data["q_to"], steps))
    n_branch = model.line.size + model.transformer.size + model.switch.size
    empty = np.zeros((steps, 0, 3), dtype=np.complex128)
    s_from = np.concatenate(i_from_parts, axis=1) if i_from_parts else empty
    s_to = np.concatenate(i_to_parts, axis=1) if i_to_parts else empty
    if s_from.shape[1] != n_branch:
        raise AnalysisError(f"engine returned {s_from.shape[1]} branches, expected {n_branch}")
    if load.size:
        data = columns[ComponentType.asym_load]
        s_load = _reshape(data["p"] + 1j * data["q"], steps)
        v_load = u_v[:, lookup(bus_id, load["bus"])]
    else:
        s_load = np.zeros((steps, 0, 3), dtype=np.complex128)
        v_load = s_load
    return PhasorSeries(
        bus_id=bus_id,
        u_v=u_v,
        branch_id=branch_ids(model),
        i_from_a=_current(s_from, v_from),
        i_to_a=_current(s_to, v_to),
        load_id=load["id"].astype(np.int32),
        i_load_a=_current(s_load, v_load),
        frequency_hz=model.frequency_hz,
    )


def _reshape(values: npt.NDArray[Any], steps: int) -> ComplexArray:
    out = np.asarray(values, dtype=np.complex128)
    return out.reshape(steps, -1, 3)


def _branch_end_voltages(
    model: GridModel, bus_id: IntArray, u_v: ComplexArray
) -> tuple[ComplexArray, ComplexArray]:
    from_bus = np.concatenate(
        [model.line["from_bus"], model.transformer["hv_bus"], model.switch["from_bus"]]
    )
    to_bus = np.concatenate(
        [model.line["to_bus"], model.transformer["lv_bus"], model.switch["to_bus"]]
    )
    return u_v[:, lookup(bus_id, from_bus)], u_v[:, lookup(bus_id, to_bus)]


def _current(s_va: ComplexArray, v_v: ComplexArray) -> ComplexArray:
    """Phase current from per-phase complex power and phase-to-ground voltage: I = conj(S / V)."""
    out = np.zeros(s_va.shape, dtype=np.complex128)
    live = np.abs(v_v) > 0.0
    np.divide(s_va, v_v, out=out, where=live)
    return np.conj(out)


def _rows(ids: IntArray, wanted: npt.ArrayLike, what: str) -> npt.NDArray[np.int64]:
    wanted_arr = np.atleast_1d(np.asarray(wanted, dtype=np.int64))
    order = np.argsort(ids, kind="stable")
    position = np.searchsorted(ids, wanted_arr, sorter=order)
    position = np.minimum(position, max(ids.size - 1, 0))
    rows = order[position] if ids.size else np.zeros(wanted_arr.size, dtype=np.int64)
    bad = (
        (ids.size == 0) | (ids[rows] != wanted_arr) if ids.size else np.ones(wanted_arr.size, bool)
    )
    if np.any(bad):
        raise KeyError(f"unknown {what} id {int(wanted_arr[np.argmax(bad)])}")
    return rows.astype(np.int64)
