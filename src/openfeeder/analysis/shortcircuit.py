"""Short-circuit currents after IEC 60909 (power-grid-model's ``calculate_short_circuit``).

:func:`short_circuit` answers the protection engineer's question for one fault at one bus: the fault
current phasors and what every bus, branch end and load sees meanwhile, as a
:class:`~openfeeder.analysis.phasors.PhasorState` (the same type a power flow gives, so a device model
reads a fault like normal operation). :func:`short_circuit_currents` gives the fault currents at many
buses at once (one batch calculation of the engine), for fault-level maps and protection settings.

The method is IEC 60909's equivalent voltage source at the fault: loads and generators are ignored,
every source drives ``c * U_n / sqrt(3)`` behind its short-circuit impedance (``sk_mva``,
``rx_ratio``, ``z01_ratio`` of the case: always, a short circuit without the grid's own impedance
would be meaningless), and ``voltage_scaling`` picks ``c``: ``max`` (1.1 above 1 kV, 1.05 below:
breaker ratings, thermal stress) or ``min`` (1.0 and 0.95: protection reach). power-grid-model
applies no transformer correction factor ``K_T`` and takes a source's impedance as
``U_n^2 / sk`` (no ``c``); a pandapower study gives the same currents once its ``K_T`` is disabled
and its external grid's ``s_sc_max_mva`` carries the ``c`` (see the tests).

The result's phasors follow :mod:`openfeeder.analysis.phasors`: RMS volts and amperes, angles against
the source's phase a; branch currents flow into the branch at the end named; ``i_fault_a`` flows
from the network into the fault.

For the state *during* a fault at a given operating point (load current included, faults on a line,
open conductors), see :mod:`openfeeder.analysis.faults`, which builds on the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from power_grid_model import (
    ComponentType,
    DatasetType,
    FaultPhase,
    ShortCircuitVoltageScaling,
    initialize_array,
)
from power_grid_model import FaultType as PgmFaultType
from power_grid_model.errors import PowerGridError  # type: ignore[attr-defined]  # re-exported

from openfeeder.analysis.engine_input import EngineInput, to_engine_input
from openfeeder.analysis.phasors import PhasorState, branch_ids
from openfeeder.analysis.powerflow import _engine
from openfeeder.errors import AnalysisError, CaseError, CaseIssue
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "FaultType",
    "ShortCircuitResult",
    "VoltageScaling",
    "parse_phases",
    "short_circuit",
    "short_circuit_currents",
]

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]

_BRANCH_TYPES: Final = (ComponentType.line, ComponentType.transformer, ComponentType.link)


class FaultType(StrEnum):
    """The shunt faults of IEC 60909."""

    THREE_PHASE = "lll"
    SINGLE_PHASE_TO_GROUND = "slg"
    PHASE_TO_PHASE = "ll"
    TWO_PHASE_TO_GROUND = "llg"


class VoltageScaling(StrEnum):
    """IEC 60909 voltage factor ``c``: maximum or minimum short-circuit currents."""

    MAX = "max"
    MIN = "min"


_PGM_FAULT_TYPE: Final = {
    FaultType.THREE_PHASE: PgmFaultType.three_phase,
    FaultType.SINGLE_PHASE_TO_GROUND: PgmFaultType.single_phase_to_ground,
    FaultType.PHASE_TO_PHASE: PgmFaultType.two_phase,
    FaultType.TWO_PHASE_TO_GROUND: PgmFaultType.two_phase_to_ground,
}
_PGM_SCALING: Final = {
    VoltageScaling.MAX: ShortCircuitVoltageScaling.maximum,
    VoltageScaling.MIN: ShortCircuitVoltageScaling.minimum,
}
_DEFAULT_PHASES: Final = {
    FaultType.THREE_PHASE: (0, 1, 2),
    FaultType.SINGLE_PHASE_TO_GROUND: (0,),
    FaultType.PHASE_TO_PHASE: (1, 2),
    FaultType.TWO_PHASE_TO_GROUND: (1, 2),
}
_PGM_PHASE: Final = {
    (0, 1, 2): FaultPhase.abc,
    (0,): FaultPhase.a,
    (1,): FaultPhase.b,
    (2,): FaultPhase.c,
    (0, 1): FaultPhase.ab,
    (1, 2): FaultPhase.bc,
    (0, 2): FaultPhase.ac,
}
_PHASE_COUNT: Final = {
    FaultType.THREE_PHASE: 3,
    FaultType.SINGLE_PHASE_TO_GROUND: 1,
    FaultType.PHASE_TO_PHASE: 2,
    FaultType.TWO_PHASE_TO_GROUND: 2,
}


def parse_phases(fault_type: FaultType | str, phase: str | None) -> tuple[int, ...]:
    """Phase indices (0 a, 1 b, 2 c) of a fault from letters such as ``"a"``, ``"bc"``, ``"ca"``.

    ``None`` gives the usual reference choice: phase a for a phase-to-ground fault, b and c for the
    two-phase faults (where the symmetrical components come out simplest). The number of letters
    must match the fault type, so that a misspelt phase cannot silently change the fault.
    """
    kind = FaultType(fault_type)
    if phase is None:
        return _DEFAULT_PHASES[kind]
    letters = phase.strip().lower()
    indices = sorted({"abc".find(ch) for ch in letters})
    if -1 in indices or len(indices) != len(letters) or len(indices) != _PHASE_COUNT[kind]:
        raise AnalysisError(
            f"phase {phase!r} does not fit a {kind.value} fault: give "
            f"{_PHASE_COUNT[kind]} distinct letters of 'abc'"
        )
    return tuple(indices)


@dataclass(frozen=True, slots=True, eq=False)
class ShortCircuitResult:
    """One IEC 60909 short circuit: the fault currents and the network's phasors meanwhile."""

    bus_id: int
    fault_type: FaultType
    phases: tuple[int, ...]
    """Faulted phases (0 a, 1 b, 2 c)."""
    voltage_scaling: VoltageScaling
    i_fault_a: ComplexArray
    """Current from the network into the fault, per phase, shape (3,)."""
    state: PhasorState
    """Bus voltages and branch currents during the fault (loads carry zero current: IEC 60909)."""

    @property
    def ik_a(self) -> float:
        """Initial symmetrical short-circuit current ``I_k''``: the largest phase's RMS value."""
        return float(np.abs(self.i_fault_a).max())


def short_circuit(
    model: GridModel,
    *,
    bus_id: int,
    fault_type: FaultType | str,
    r_f_ohm: float = 0.0,
    x_f_ohm: float = 0.0,
    phase: str | None = None,
    voltage_scaling: VoltageScaling | str = VoltageScaling.MAX,
) -> ShortCircuitResult:
    """IEC 60909 short circuit at ``bus_id`` (see the module docstring).

    ``r_f_ohm``/``x_f_ohm`` is the fault impedance (to ground for the earth faults, between the
    phases for a phase-to-phase fault); ``phase`` selects the faulted phases (:func:`parse_phases`).
    """
    kind = FaultType(fault_type)
    phases = parse_phases(kind, phase)
    scaling = VoltageScaling(voltage_scaling)
    _check_bus(model, bus_id)
    engine_input = to_engine_input(model, symmetric=False, source_impedance=True)
    raw = run_short_circuits(
        engine_input,
        frequency_hz=model.frequency_hz,
        bus_ids=np.array([bus_id]),
        fault_type=kind,
        phases=phases,
        r_f_ohm=r_f_ohm,
        x_f_ohm=x_f_ohm,
        voltage_scaling=scaling,
    )
    return ShortCircuitResult(
        bus_id=int(bus_id),
        fault_type=kind,
        phases=phases,
        voltage_scaling=scaling,
        i_fault_a=raw.i_fault_a[0],
        state=raw.state(model, 0),
    )


def short_circuit_currents(
    model: GridModel,
    *,
    bus_ids: npt.ArrayLike,
    fault_type: FaultType | str,
    r_f_ohm: float = 0.0,
    x_f_ohm: float = 0.0,
    phase: str | None = None,
    voltage_scaling: VoltageScaling | str = VoltageScaling.MAX,
) -> FloatArray:
    """``I_k''`` in amperes (largest faulted phase) for a fault at each of ``bus_ids``.

    One batch calculation of the engine, one scenario per bus, asking only for the fault output.
    """
    kind = FaultType(fault_type)
    phases = parse_phases(kind, phase)
    buses = np.atleast_1d(np.asarray(bus_ids, dtype=np.int64))
    for bus in buses[lookup(model.bus["id"], buses) < 0][:1].tolist():
        _check_bus(model, bus)
    engine_input = to_engine_input(model, symmetric=False, source_impedance=True)
    raw = run_short_circuits(
        engine_input,
        frequency_hz=model.frequency_hz,
        bus_ids=buses,
        fault_type=kind,
        phases=phases,
        r_f_ohm=r_f_ohm,
        x_f_ohm=x_f_ohm,
        voltage_scaling=VoltageScaling(voltage_scaling),
        fault_only=True,
    )
    return cast(FloatArray, np.abs(raw.i_fault_a).max(axis=1))


@dataclass(frozen=True, slots=True, eq=False)
class RawShortCircuit:
    """Engine output of a batch of short circuits as complex arrays (leading axis: scenario).

    Shared by :mod:`openfeeder.analysis.faults`, which works on engine inputs it modified itself.
    Branch arrays follow the engine input's lines, transformers and links in that order.
    """

    i_fault_a: ComplexArray
    """(scenarios, 3)."""
    u_v: ComplexArray
    """(scenarios, nodes, 3), in the order of the engine input's nodes."""
    i_from_a: ComplexArray
    """(scenarios, branches, 3)."""
    i_to_a: ComplexArray
    i_load_a: ComplexArray
    """(scenarios, loads, 3)."""

    def state(self, model: GridModel, scenario: int) -> PhasorState:
        """One scenario as a :class:`PhasorState` of ``model`` (the model the input came from)."""
        return PhasorState(
            bus_id=model.bus["id"].astype(np.int32),
            u_v=self.u_v[scenario],
            branch_id=branch_ids(model),
            i_from_a=self.i_from_a[scenario],
            i_to_a=self.i_to_a[scenario],
            load_id=model.load["id"].astype(np.int32),
            i_load_a=self.i_load_a[scenario],
            frequency_hz=model.frequency_hz,
        )


def run_short_circuits(
    engine_input: EngineInput,
    *,
    frequency_hz: float,
    bus_ids: npt.NDArray[np.int64],
    fault_type: FaultType,
    phases: tuple[int, ...],
    r_f_ohm: float,
    x_f_ohm: float,
    voltage_scaling: VoltageScaling,
    fault_only: bool = False,
    with_healthy: bool = False,
) -> RawShortCircuit:
    """One engine batch: a fault at each of ``bus_ids`` (then, if ``with_healthy``, no fault).

    The healthy scenario (the fault's status 0) is the network's state with the source EMFs alone:
    subtracting it from a fault scenario leaves the change the fault causes, which is what
    :mod:`openfeeder.analysis.faults` superposes on a power flow.
    """
    if r_f_ohm < 0.0 or not np.isfinite(r_f_ohm) or not np.isfinite(x_f_ohm):
        raise AnalysisError(f"fault resistance must be finite and >= 0 ohm, got {r_f_ohm}")
    ids = np.concatenate([t["id"] for t in engine_input.values()])
    fault_id = int(ids.max()) + 1 if ids.size else 1
    fault = initialize_array(DatasetType.input, ComponentType.fault, 1)
    fault["id"] = fault_id
    fault["status"] = 1
    fault["fault_type"] = _PGM_FAULT_TYPE[fault_type]
    fault["fault_phase"] = _PGM_PHASE[phases]
    fault["fault_object"] = bus_ids[0]
    fault["r_f"] = r_f_ohm
    fault["x_f"] = x_f_ohm
    data = dict(engine_input)
    data[ComponentType.fault] = fault
    scenarios = bus_ids.size + int(with_healthy)
    update = np.repeat(fault, scenarios).reshape(scenarios, 1)
    update["fault_object"][: bus_ids.size, 0] = bus_ids
    if with_healthy:
        update["status"][-1, 0] = 0
    wanted: dict[ComponentType, Any] = {ComponentType.fault: ["i_f", "i_f_angle"]}
    if not fault_only:
        wanted[ComponentType.node] = ["u", "u_angle"]
        for component in (*_BRANCH_TYPES, ComponentType.asym_load):
            if component in engine_input:
                wanted[component] = (
                    ["i", "i_angle"]
                    if component == ComponentType.asym_load
                    else ["i_from", "i_from_angle", "i_to", "i_to_angle"]
                )
    engine = _engine(data, frequency_hz)
    try:
        output = engine.calculate_short_circuit(
            update_data={ComponentType.fault: update},
            short_circuit_voltage_scaling=_PGM_SCALING[voltage_scaling],
            output_component_types=wanted,
        )
    except PowerGridError as err:
        raise AnalysisError(f"short-circuit calculation failed: {err}") from err
    columns = cast(dict[ComponentType, dict[str, npt.NDArray[Any]]], output)
    i_fault = _polar(columns[ComponentType.fault], "i_f", "i_f_angle")[:, 0, :]
    empty = np.zeros((scenarios, 0, 3), dtype=np.complex128)
    if fault_only:
        return RawShortCircuit(i_fault, empty, empty, empty, empty)
    u_v = _polar(columns[ComponentType.node], "u", "u_angle")
    i_from = [_polar(columns[c], "i_from", "i_from_angle") for c in _BRANCH_TYPES if c in columns]
    i_to = [_polar(columns[c], "i_to", "i_to_angle") for c in _BRANCH_TYPES if c in columns]
    load = columns.get(ComponentType.asym_load)
    return RawShortCircuit(
        i_fault_a=i_fault,
        u_v=u_v,
        i_from_a=np.concatenate(i_from, axis=1) if i_from else empty,
        i_to_a=np.concatenate(i_to, axis=1) if i_to else empty,
        i_load_a=empty if load is None else _polar(load, "i", "i_angle"),
    )


def _polar(data: dict[str, npt.NDArray[Any]], magnitude: str, angle: str) -> ComplexArray:
    """Engine magnitude and angle columns (scenarios, n, 3) as complex phasors."""
    out: ComplexArray = data[magnitude] * np.exp(1j * data[angle])
    return out


def _check_bus(model: GridModel, bus_id: int) -> None:
    if lookup(model.bus["id"], np.array([bus_id]))[0] < 0:
        raise CaseError(
            CaseIssue(
                f"no bus with id {bus_id} to put a fault on",
                component="bus",
                component_id=int(bus_id),
                field="id",
            )
        )
