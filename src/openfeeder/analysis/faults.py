"""The state of a grid *during* a fault on a line: what a meter or a fault indicator sees.

IEC 60909 (:mod:`openfeeder.analysis.shortcircuit`) answers "how large can the fault current be";
a digital twin needs "what flows where while this fault lasts, at this operating point". This
module answers that for a fault ``distance_m`` along a line (:func:`split_line` inserts the fault
point) and returns a :class:`FaultResult` whose :class:`~openfeeder.analysis.phasors.PhasorState`
has exactly the buses, branches and loads of the model given (the split is hidden again): the
split line's from-end current is that of its first half, its to-end current that of its second half.

Shunt faults (``slg``, ``ll``, ``lll``, ``llg``) -- superposition
    The pre-fault state is the asymmetric power flow at the operating point (source impedance
    included). The change the fault causes is the response of the network with its sources
    short-circuited to the fault, driven by the pre-fault voltage at the fault point (Thevenin).
    power-grid-model's short-circuit solver gives that response: a batch of two scenarios, the
    fault and no fault, whose difference is the network's response to ``-c U_n / sqrt(3)`` at the
    fault; it is scaled by the ratio of the pre-fault positive-sequence voltage at the fault point
    to the solver's own. The state during the fault is pre-fault + scaled change.
    Approximations: loads keep drawing their pre-fault current during the fault (the IEC 60909
    engine leaves them out of the change), and only the positive-sequence part of the pre-fault
    voltage drives the fault (the pre-fault unbalance, ~1 % here, does not). Both are the usual
    assumptions of a fault study with load flow; the fault current itself is exact for a linear
    network.

Open conductor (``open``, ``open_ground``) -- modified network
    The conductor of one phase is broken at the fault point: the line is cut there and the two ends
    joined by a three-phase series element (power-grid-model's ``asym_line``) that is practically a
    short circuit on the healthy phases (1e-4 ohm) and practically open on the broken one (1e7 ohm).
    ``open_ground``: the broken conductor's load-side end lies on the ground, an impedance
    ``r_f + j x_f`` from that phase to ground at the load-side end (a one-phase constant-impedance
    load). The load side is the end away from the source in the supply tree (the to end if the line
    is not part of the tree). The network is then solved with power-grid-model's linear method, with
    each load as the constant impedance that draws its pre-fault power at its pre-fault voltage:
    Newton-Raphson does not converge when a phase floats (the downstream phase is held only by the
    delta windings of the MV/LV transformers and the cable capacitance), and a constant-impedance
    load is the better description of load at the deep, unbalanced undervoltage of a broken phase
    anyway. Without a break this reproduces the pre-fault power flow exactly.

The loop's DC time constant ``X / (omega R)`` (for the decaying offset of fault waveforms) comes from
the complex power the pre-fault voltages at the fault point drive into the fault currents,
``S = sum_p U_pre,p conj(I_f,p)``: the loop impedance seen by the fault, fault impedance included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from power_grid_model import (
    CalculationMethod,
    ComponentType,
    DatasetType,
    LoadGenType,
    initialize_array,
)
from power_grid_model.errors import (  # type: ignore[attr-defined]  # re-exported
    IterationDiverge,
    MaxIterationReached,
    PowerGridError,
)

from openfeeder.analysis.engine_input import EngineInput, to_engine_input
from openfeeder.analysis.phasors import PhasorState, branch_ids
from openfeeder.analysis.powerflow import (
    DEFAULT_ERROR_TOLERANCE_PU,
    DEFAULT_MAX_ITERATIONS,
    _engine,
)
from openfeeder.analysis.shortcircuit import (
    FaultType,
    RawShortCircuit,
    VoltageScaling,
    parse_phases,
    run_short_circuits,
)
from openfeeder.errors import AnalysisError, CaseError, CaseIssue, NotConvergedError
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import analyze_topology

__all__ = [
    "FaultKind",
    "FaultResult",
    "LineSplit",
    "fault_state",
    "locate_on_line",
    "split_line",
    "symmetrical_components",
]

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

HEALTHY_PHASE_OHM: Final = 1e-4
"""Series impedance of a healthy phase across a conductor break (about half a metre of cable)."""
BROKEN_PHASE_OHM: Final = 1e7
"""Series resistance of the broken phase: leaves about a milliampere, i.e. none."""
MIN_GROUND_CONTACT_OHM: Final = 0.01
"""A ground contact below this impedance is modelled with it (a bolted contact of a broken end)."""
_END_TOLERANCE_M: Final = 1e-6
_A: Final = np.exp(2j * np.pi / 3)
_TO_SEQUENCE: Final = np.array([[1, 1, 1], [1, _A, _A**2], [1, _A**2, _A]]) / 3.0
_BRANCH_TYPES: Final = (
    ComponentType.line,
    ComponentType.asym_line,
    ComponentType.transformer,
    ComponentType.link,
)


class FaultKind(StrEnum):
    """Faults on a line: the four shunt faults and a broken conductor with or without ground."""

    THREE_PHASE = "lll"
    SINGLE_PHASE_TO_GROUND = "slg"
    PHASE_TO_PHASE = "ll"
    TWO_PHASE_TO_GROUND = "llg"
    OPEN = "open"
    OPEN_GROUND = "open_ground"


_SHUNT: Final = {
    FaultKind.THREE_PHASE: FaultType.THREE_PHASE,
    FaultKind.SINGLE_PHASE_TO_GROUND: FaultType.SINGLE_PHASE_TO_GROUND,
    FaultKind.PHASE_TO_PHASE: FaultType.PHASE_TO_PHASE,
    FaultKind.TWO_PHASE_TO_GROUND: FaultType.TWO_PHASE_TO_GROUND,
}


def symmetrical_components(values: npt.ArrayLike) -> ComplexArray:
    """Zero, positive and negative sequence (last axis 0, 1, 2) of phasors in a, b, c order."""
    abc = np.asarray(values, dtype=np.complex128)
    out: ComplexArray = abc @ _TO_SEQUENCE.T
    return out


@dataclass(frozen=True, slots=True, eq=False)
class LineSplit:
    """A model with a fault point on one of its lines (see :func:`locate_on_line`)."""

    model: GridModel
    bus_id: int
    """The fault point: the new auxiliary bus, or the line's end bus at distance 0 or full length."""
    line_id: int
    first_line_id: int
    """From bus to fault point (the original line id when it was not split)."""
    second_line_id: int
    """Fault point to to bus (the original line id when it was not split)."""

    @property
    def was_split(self) -> bool:
        return self.first_line_id != self.second_line_id


def split_line(model: GridModel, line_id: int, distance_m: float) -> tuple[GridModel, int]:
    """The model with a bus ``distance_m`` along line ``line_id`` from its from bus, and its id.

    See :func:`locate_on_line` for the ids given to the new bus and the two halves.
    """
    split = locate_on_line(model, line_id, distance_m)
    return split.model, split.bus_id


def locate_on_line(model: GridModel, line_id: int, distance_m: float) -> LineSplit:
    """Insert a fault point ``distance_m`` from the from bus of ``line_id``.

    Inside the line, a new bus (id: the model's largest id + 1, the from bus's voltage, coordinates
    interpolated) splits the line into two lines with the original per-km data and proportional
    lengths, so every impedance and capacitance divides in proportion; the halves get the ids
    largest + 2 (from side) and largest + 3 (to side) and take the original's place in the table.
    Measurements on the line move to the half at their end. At 0 (or the full length) the fault
    point is the from (to) bus itself and the model is returned unchanged. Anything else raises
    :class:`~openfeeder.errors.CaseError` naming the line, the distance and the length.
    """
    line = model.line
    row = int(lookup(line["id"], np.array([line_id]))[0])
    if row < 0:
        raise CaseError(
            CaseIssue(
                f"no line with id {line_id} to put a fault on",
                component="line",
                component_id=int(line_id),
                field="id",
            )
        )
    length_m = float(line["length_km"][row]) * 1e3
    distance = float(distance_m)
    if (
        not np.isfinite(distance)
        or distance < -_END_TOLERANCE_M
        or distance > length_m + (_END_TOLERANCE_M)
    ):
        raise CaseError(
            CaseIssue(
                f"fault distance {distance_m} m lies outside the line (length {length_m:g} m, "
                "distance counted from the from bus)",
                component="line",
                component_id=int(line_id),
                field="length_km",
            )
        )
    if distance <= _END_TOLERANCE_M or distance >= length_m - _END_TOLERANCE_M:
        end = "from_bus" if distance <= _END_TOLERANCE_M else "to_bus"
        return LineSplit(model, int(line[end][row]), int(line_id), int(line_id), int(line_id))
    top = int(model.all_ids().max())
    bus_id, first_id, second_id = top + 1, top + 2, top + 3
    fraction = distance / length_m
    bus_rows = lookup(model.bus["id"], np.array([line["from_bus"][row], line["to_bus"][row]]))
    ends = model.bus[bus_rows]
    new_bus = model.bus[bus_rows[:1]].copy()
    new_bus["id"] = bus_id
    for axis in ("x_m", "y_m"):
        new_bus[axis] = ends[axis][0] + fraction * (ends[axis][1] - ends[axis][0])
    halves = np.repeat(line[row : row + 1], 2)
    halves["id"] = (first_id, second_id)
    halves["to_bus"][0] = bus_id
    halves["from_bus"][1] = bus_id
    halves["length_km"] = (distance / 1e3, (length_m - distance) / 1e3)
    new_line = np.concatenate([line[:row], halves, line[row + 1 :]])
    meas = model.measurement.copy()
    on_line = meas["element"] == line_id
    from_end = meas["element_end"] == 0  # BranchEnd.FROM is the first member
    meas["element"][on_line & from_end] = first_id
    meas["element"][on_line & ~from_end] = second_id
    split_model = model.replace(
        bus=np.concatenate([model.bus, new_bus]), line=new_line, measurement=meas
    )
    return LineSplit(split_model, bus_id, int(line_id), first_id, second_id)


@dataclass(frozen=True, slots=True, eq=False)
class FaultResult:
    """The state during a fault on a line (see the module docstring)."""

    kind: FaultKind
    line_id: int
    distance_m: float
    phases: tuple[int, ...]
    """Faulted (or broken) phases, 0 a, 1 b, 2 c."""
    r_f_ohm: float
    x_f_ohm: float
    fault_bus_id: int
    """The fault point in the split model (:func:`locate_on_line`); not a bus of ``state``."""
    state: PhasorState
    """During the fault, with the buses, branches and loads of the unsplit model."""
    prefault: PhasorState
    """The power flow at the same operating point without the fault (same arrays)."""
    u_fault_v: ComplexArray
    """Phase-to-ground voltage at the fault point, (3,); for a broken conductor its source side."""
    u_prefault_v: ComplexArray
    """Phase-to-ground voltage at the fault point before the fault, (3,)."""
    u_load_side_v: ComplexArray
    """For a broken conductor the load-side end of the break; else the same as ``u_fault_v``."""
    i_fault_a: ComplexArray
    """Current from the network into the fault (into the ground contact for ``open_ground``)."""
    loop_impedance_ohm: complex
    """Impedance of the fault loop, fault impedance included (NaN for a broken conductor)."""
    dc_time_constant_s: float
    """``X / (omega R)`` of the fault loop: decay of the DC offset at fault inception (0 for a
    broken conductor, which causes no sudden current step worth an offset)."""

    @property
    def voltage_unbalance(self) -> FloatArray:
        """Per bus ``|U2| / |U1|`` during the fault (0 on de-energized buses)."""
        return _unbalance(self.state.u_v)

    @property
    def energized(self) -> bool:
        """The fault point had voltage before the fault (else nothing happened)."""
        return bool(np.abs(self.u_fault_v).max() > 0.0 or np.abs(self.i_fault_a).max() > 0.0)


def fault_state(
    model: GridModel,
    *,
    line_id: int,
    distance_m: float,
    kind: FaultKind | str,
    r_f_ohm: float = 0.0,
    x_f_ohm: float = 0.0,
    phase: str | None = None,
    load_p_mw: npt.ArrayLike | None = None,
    load_q_mvar: npt.ArrayLike | None = None,
) -> FaultResult:
    """The state during a fault ``distance_m`` along ``line_id`` at one operating point.

    ``phase`` names the faulted phases (``"a"``, ``"bc"``, ...; default a, or b and c), the broken
    phase for the open-conductor kinds (one letter). ``r_f_ohm + j x_f_ohm`` is the fault impedance
    (to ground, between the phases for ``ll``, of the ground contact for ``open_ground``).
    ``load_p_mw``/``load_q_mvar`` (one value per load) set the operating point; by default the
    model's loads, and ``load_q_mvar`` defaults to each load's own power factor.
    """
    fault_kind = FaultKind(kind)
    if fault_kind in _SHUNT:
        phases = parse_phases(_SHUNT[fault_kind], phase)
    else:
        phases = parse_phases(FaultType.SINGLE_PHASE_TO_GROUND, phase)
    if not (np.isfinite(r_f_ohm) and np.isfinite(x_f_ohm)) or r_f_ohm < 0.0:
        raise AnalysisError(
            f"fault impedance on line {line_id} must be finite with r_f_ohm >= 0, "
            f"got {r_f_ohm} + j{x_f_ohm} ohm"
        )
    split = locate_on_line(model, line_id, distance_m)
    engine_input = to_engine_input(split.model, symmetric=False, source_impedance=True)
    p_w, q_w = _operating_point(split.model, load_p_mw, load_q_mvar)
    engine_input[ComponentType.asym_load] = _with_loads(engine_input, p_w, q_w)
    pre = _power_flow(engine_input, split.model.frequency_hz)
    view = _UnsplitView(model, split)
    setup = _Setup(engine_input, model, split, view, pre, phases, r_f_ohm, x_f_ohm, p_w, q_w)
    setup.common = {
        "kind": fault_kind,
        "line_id": int(line_id),
        "distance_m": float(distance_m),
        "phases": phases,
        "r_f_ohm": float(r_f_ohm),
        "x_f_ohm": float(x_f_ohm),
        "fault_bus_id": split.bus_id,
        "prefault": view.state(pre),
    }
    if fault_kind in _SHUNT:
        return _shunt_fault(setup, _SHUNT[fault_kind])
    ground = fault_kind == FaultKind.OPEN_GROUND
    return _open_conductor(setup, ground=ground)


@dataclass(frozen=True, slots=True, eq=False)
class _Solved:
    """A solved engine network keyed by engine ids (nodes, branches of every type, loads)."""

    node_id: IntArray
    u_rated_v: FloatArray
    u_v: ComplexArray
    branch_id: IntArray
    i_from_a: ComplexArray
    i_to_a: ComplexArray
    load_id: IntArray
    i_load_a: ComplexArray

    def u_at(self, bus_id: int) -> ComplexArray:
        return cast(ComplexArray, self.u_v[int(lookup(self.node_id, np.array([bus_id]))[0])])


class _UnsplitView:
    """Maps a solved split network back onto the arrays of the unsplit model."""

    def __init__(self, model: GridModel, split: LineSplit) -> None:
        self.model = model
        ids = branch_ids(model).astype(np.int64)
        self.bus_id = model.bus["id"].astype(np.int64)
        self.from_id = np.where(ids == split.line_id, split.first_line_id, ids)
        self.to_id = np.where(ids == split.line_id, split.second_line_id, ids)
        self.load_id = model.load["id"].astype(np.int64)

    def state(self, solved: _Solved) -> PhasorState:
        model = self.model
        return PhasorState(
            bus_id=model.bus["id"].astype(np.int32),
            u_v=solved.u_v[lookup(solved.node_id, self.bus_id)],
            branch_id=branch_ids(model),
            i_from_a=solved.i_from_a[lookup(solved.branch_id, self.from_id)],
            i_to_a=solved.i_to_a[lookup(solved.branch_id, self.to_id)],
            load_id=model.load["id"].astype(np.int32),
            i_load_a=solved.i_load_a[lookup(solved.load_id, self.load_id)],
            frequency_hz=model.frequency_hz,
        )


@dataclass(slots=True, eq=False)
class _Setup:
    """What both fault constructions start from: the split network at its operating point."""

    engine_input: EngineInput
    model: GridModel
    split: LineSplit
    view: _UnsplitView
    pre: _Solved
    phases: tuple[int, ...]
    r_f_ohm: float
    x_f_ohm: float
    p_w: FloatArray
    q_w: FloatArray
    common: dict[str, Any] = field(default_factory=dict)
    """The :class:`FaultResult` fields every construction shares."""


def _shunt_fault(setup: _Setup, fault_type: FaultType) -> FaultResult:
    """Pre-fault power flow + the short-circuit solver's response scaled to the pre-fault voltage."""
    engine_input, split, view, pre = setup.engine_input, setup.split, setup.view, setup.pre
    phases, r_f_ohm, x_f_ohm, common = setup.phases, setup.r_f_ohm, setup.x_f_ohm, setup.common
    raw = run_short_circuits(
        engine_input,
        frequency_hz=split.model.frequency_hz,
        bus_ids=np.array([split.bus_id]),
        fault_type=fault_type,
        phases=phases,
        r_f_ohm=r_f_ohm,
        x_f_ohm=x_f_ohm,
        voltage_scaling=VoltageScaling.MIN,
        with_healthy=True,
    )
    solver = _from_raw(raw, split.model)
    row = int(lookup(pre.node_id, np.array([split.bus_id]))[0])
    u_pre = pre.u_v[row]
    e_solver = symmetrical_components(raw.u_v[1, row])[1]
    e_pre = symmetrical_components(u_pre)[1]
    scale = complex(e_pre / e_solver) if abs(e_solver) > 0.0 and abs(e_pre) > 0.0 else 0.0
    during = _Solved(
        node_id=pre.node_id,
        u_rated_v=pre.u_rated_v,
        u_v=pre.u_v + scale * (raw.u_v[0] - raw.u_v[1]),
        branch_id=pre.branch_id,
        i_from_a=pre.i_from_a + scale * _aligned(solver, pre, raw.i_from_a),
        i_to_a=pre.i_to_a + scale * _aligned(solver, pre, raw.i_to_a),
        load_id=pre.load_id,
        i_load_a=pre.i_load_a,
    )
    i_fault = scale * raw.i_fault_a[0]
    loop, tau = _loop(u_pre, i_fault, split.model.frequency_hz)
    u_fault = during.u_v[row]
    return FaultResult(
        state=view.state(during),
        u_fault_v=u_fault,
        u_prefault_v=u_pre,
        u_load_side_v=u_fault,
        i_fault_a=i_fault,
        loop_impedance_ohm=loop,
        dc_time_constant_s=tau,
        **common,
    )


def _aligned(solver: _Solved, pre: _Solved, values: ComplexArray) -> ComplexArray:
    """Fault-minus-healthy branch currents of the solver in the power flow's branch order."""
    rows = lookup(solver.branch_id, pre.branch_id)
    out: ComplexArray = (values[0] - values[1])[rows]
    return out


def _open_conductor(setup: _Setup, *, ground: bool) -> FaultResult:
    """Cut the line, bridge the cut with an open-in-one-phase element, solve with Z loads."""
    engine_input, model, split, pre = setup.engine_input, setup.model, setup.split, setup.pre
    phase, r_f_ohm, x_f_ohm, common = setup.phases[0], setup.r_f_ohm, setup.x_f_ohm, setup.common
    view, p_w, q_w = setup.view, setup.p_w, setup.q_w
    data = dict(engine_input)
    top = int(max(int(t["id"].max()) for t in data.values() if t.size))
    node_q, break_id, contact_id = top + 1, top + 2, top + 3
    cut = split.bus_id
    downstream_to = _downstream_is_to(model, split.line_id)
    line = data[ComponentType.line].copy()
    if split.was_split:
        moved = split.second_line_id if downstream_to else split.first_line_id
        end = "from_node" if downstream_to else "to_node"
        load_side = node_q
        break_from, break_to = cut, node_q
    else:
        moved = split.line_id
        at_from = int(model.line["from_bus"][lookup(model.line["id"], [split.line_id])[0]]) == cut
        end = "from_node" if at_from else "to_node"
        # the line's end moves to the new node; which side of the break is the load side depends
        # on whether the line lies downstream of the cut
        load_side = node_q if at_from == downstream_to else cut
        break_from, break_to = (cut, node_q) if at_from else (node_q, cut)
    line[end][line["id"] == moved] = node_q
    data[ComponentType.line] = line
    node = data[ComponentType.node]
    new_node = initialize_array(DatasetType.input, ComponentType.node, 1)
    new_node["id"] = node_q
    new_node["u_rated"] = node["u_rated"][node["id"] == cut][0]
    data[ComponentType.node] = np.concatenate([node, new_node])
    data[ComponentType.asym_line] = _break_element(break_id, break_from, break_to, phase)
    loads = _impedance_loads(data[ComponentType.asym_load], pre, p_w, q_w)
    if ground:
        contact = initialize_array(DatasetType.input, ComponentType.asym_load, 1)
        u_phase = float(new_node["u_rated"][0]) / np.sqrt(3.0)
        z = complex(r_f_ohm, x_f_ohm)
        if abs(z) < MIN_GROUND_CONTACT_OHM:
            z = complex(MIN_GROUND_CONTACT_OHM, 0.0)
        s_va = u_phase**2 / np.conj(z)  # S = |U|^2 / conj(Z) at the rated phase voltage
        contact["id"] = contact_id
        contact["node"] = load_side
        contact["status"] = 1
        contact["type"] = LoadGenType.const_impedance
        contact["p_specified"] = 0.0
        contact["q_specified"] = 0.0
        contact["p_specified"][0, phase] = s_va.real
        contact["q_specified"][0, phase] = s_va.imag
        loads = np.concatenate([loads, contact])
    data[ComponentType.asym_load] = loads
    during = _power_flow(data, model.frequency_hz, method=CalculationMethod.linear)
    i_fault = np.zeros(3, dtype=np.complex128)
    if ground:
        i_fault = during.i_load_a[int(lookup(during.load_id, np.array([contact_id]))[0])]
    source_side = break_from if load_side == break_to else break_to
    # no sudden current step worth an offset: the break interrupts load current, and a ground
    # contact's current is small and driven through a resistive contact by the back-fed voltage
    loop, tau = complex("nan"), 0.0
    return FaultResult(
        state=view.state(during),
        u_fault_v=during.u_at(source_side),
        u_prefault_v=pre.u_at(cut),
        u_load_side_v=during.u_at(load_side),
        i_fault_a=i_fault,
        loop_impedance_ohm=loop,
        dc_time_constant_s=tau,
        **common,
    )


def _downstream_is_to(model: GridModel, line_id: int) -> bool:
    """Whether the to end of the line lies away from the source (True if the line is not in the
    supply tree: an open-ended, de-energized or loop line has no downstream side to prefer)."""
    topology = analyze_topology(model)
    row = int(lookup(model.line["id"], np.array([line_id]))[0])
    from_row = topology.bus_row(int(model.line["from_bus"][row]))
    return not bool(topology.parent_branch[from_row] == line_id)


def _break_element(element_id: int, from_node: int, to_node: int, phase: int) -> Any:
    """A short three-phase series element, open (1e7 ohm) in ``phase``, uncoupled, no capacitance."""
    element = initialize_array(DatasetType.input, ComponentType.asym_line, 1)
    element["id"] = element_id
    element["from_node"] = from_node
    element["to_node"] = to_node
    element["from_status"] = 1
    element["to_status"] = 1
    for name in ("r_aa", "r_bb", "r_cc", "x_aa", "x_bb", "x_cc"):
        element[name] = HEALTHY_PHASE_OHM
    for name in ("r_ba", "r_ca", "r_cb", "x_ba", "x_ca", "x_cb"):
        element[name] = 0.0
    element[("r_aa", "r_bb", "r_cc")[phase]] = BROKEN_PHASE_OHM
    element["c0"] = 0.0
    element["c1"] = 0.0
    element["i_n"] = np.inf
    return element


def _impedance_loads(loads: Any, pre: _Solved, p_w: FloatArray, q_w: FloatArray) -> Any:
    """Loads as constant impedances drawing their pre-fault power at their pre-fault voltage.

    power-grid-model's linear method takes every load as the impedance that draws the specified
    power at the rated phase voltage, so the specified power is rescaled by (rated / actual)^2.
    """
    out = loads.copy()
    if not out.size:
        return out
    u_rated = pre.u_rated_v[lookup(pre.node_id, out["node"])]
    u_pre = np.abs(pre.u_v[lookup(pre.node_id, out["node"])])
    factor = np.divide(
        (u_rated / np.sqrt(3.0))[:, None] ** 2,
        u_pre**2,
        out=np.zeros_like(u_pre),
        where=u_pre > 0.0,
    )
    out["p_specified"] = p_w * factor
    out["q_specified"] = q_w * factor
    out["type"] = LoadGenType.const_impedance
    return out


def _operating_point(
    model: GridModel, load_p_mw: npt.ArrayLike | None, load_q_mvar: npt.ArrayLike | None
) -> tuple[FloatArray, FloatArray]:
    """Per-phase load powers in W and var, (loads, 3), from the operating point or the model."""
    load = model.load
    p = load["p_mw"] if load_p_mw is None else np.asarray(load_p_mw, dtype=np.float64)
    if p.shape != (load.size,):
        raise AnalysisError(
            f"load_p_mw must have one value per load ({load.size}), got shape {p.shape}"
        )
    if load_q_mvar is None:
        ratio = np.divide(
            load["q_mvar"], load["p_mw"], out=np.zeros(load.size), where=load["p_mw"] != 0
        )
        q = p * ratio
    else:
        q = np.asarray(load_q_mvar, dtype=np.float64)
        if q.shape != p.shape:
            raise AnalysisError(f"load_q_mvar must have shape {p.shape}, got {q.shape}")
    shares = np.stack([load["share_a"], load["share_b"], load["share_c"]], axis=1)
    return p[:, None] * shares * 1e6, q[:, None] * shares * 1e6


def _with_loads(engine_input: EngineInput, p_w: FloatArray, q_w: FloatArray) -> Any:
    loads = engine_input.get(ComponentType.asym_load)
    if loads is None:
        return initialize_array(DatasetType.input, ComponentType.asym_load, 0)
    out = loads.copy()
    out["p_specified"] = p_w
    out["q_specified"] = q_w
    return out


def _power_flow(
    engine_input: EngineInput,
    frequency_hz: float,
    *,
    method: CalculationMethod = CalculationMethod.newton_raphson,
) -> _Solved:
    """Asymmetric power flow of an engine input; currents from I = conj(S / U) at each end."""
    data = {k: v for k, v in engine_input.items() if v.size}
    engine = _engine(data, frequency_hz)
    try:
        output = engine.calculate_power_flow(
            symmetric=False,
            error_tolerance=DEFAULT_ERROR_TOLERANCE_PU,
            max_iterations=DEFAULT_MAX_ITERATIONS,
            calculation_method=method,
        )
    except (IterationDiverge, MaxIterationReached) as err:
        raise NotConvergedError(
            f"three-phase power flow of the faulted network did not converge: {err}",
            iterations=None,
            max_deviation=None,
            worst_bus=None,
        ) from err
    except PowerGridError as err:
        raise AnalysisError(f"three-phase power flow of the faulted network failed: {err}") from err
    columns = cast(dict[ComponentType, Any], output)
    node = columns[ComponentType.node]
    node_id = node["id"].astype(np.int64)
    u_v = node["u"] * np.exp(1j * node["u_angle"])
    ids, i_from, i_to = [], [], []
    for component in _BRANCH_TYPES:
        if component not in columns:
            continue
        result, given = columns[component], data[component]
        rows_from = lookup(node_id, given["from_node"])
        rows_to = lookup(node_id, given["to_node"])
        ids.append(result["id"].astype(np.int64))
        i_from.append(_current(result["p_from"] + 1j * result["q_from"], u_v[rows_from]))
        i_to.append(_current(result["p_to"] + 1j * result["q_to"], u_v[rows_to]))
    load = columns.get(ComponentType.asym_load)
    if load is None:
        load_id = np.zeros(0, dtype=np.int64)
        i_load = np.zeros((0, 3), dtype=np.complex128)
    else:
        load_id = load["id"].astype(np.int64)
        v_load = u_v[lookup(node_id, data[ComponentType.asym_load]["node"])]
        i_load = _current(load["p"] + 1j * load["q"], v_load)
    return _Solved(
        node_id=node_id,
        u_rated_v=data[ComponentType.node]["u_rated"].astype(np.float64),
        u_v=u_v,
        branch_id=np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64),
        i_from_a=np.concatenate(i_from) if i_from else np.zeros((0, 3), dtype=np.complex128),
        i_to_a=np.concatenate(i_to) if i_to else np.zeros((0, 3), dtype=np.complex128),
        load_id=load_id,
        i_load_a=i_load,
    )


def _from_raw(raw: RawShortCircuit, model: GridModel) -> _Solved:
    return _Solved(
        node_id=model.bus["id"].astype(np.int64),
        u_rated_v=model.bus["u_rated_kv"] * 1e3,
        u_v=raw.u_v[0],
        branch_id=branch_ids(model).astype(np.int64),
        i_from_a=raw.i_from_a[0],
        i_to_a=raw.i_to_a[0],
        load_id=model.load["id"].astype(np.int64),
        i_load_a=raw.i_load_a[0],
    )


def _current(s_va: npt.NDArray[Any], u_v: ComplexArray) -> ComplexArray:
    out = np.zeros(u_v.shape, dtype=np.complex128)
    np.divide(np.asarray(s_va, dtype=np.complex128), u_v, out=out, where=np.abs(u_v) > 0.0)
    return np.conj(out)


def _loop(u_pre: ComplexArray, i_fault: ComplexArray, frequency_hz: float) -> tuple[complex, float]:
    """Loop impedance S / sum |I|^2 and its X / (omega R), S = sum U_pre conj(I_f)."""
    i_squared = float(np.sum(np.abs(i_fault) ** 2))
    if i_squared <= 0.0:
        return complex("nan"), 0.0
    z = complex(np.sum(u_pre * np.conj(i_fault))) / i_squared
    omega = 2.0 * np.pi * frequency_hz
    tau = z.imag / (omega * z.real) if z.real > 0.0 and z.imag > 0.0 else 0.0
    return z, float(tau)


def _unbalance(u_v: ComplexArray) -> FloatArray:
    seq = symmetrical_components(u_v)
    positive = np.abs(seq[..., 1])
    out: FloatArray = np.divide(
        np.abs(seq[..., 2]), positive, out=np.zeros(positive.shape), where=positive > 0.0
    )
    return out
