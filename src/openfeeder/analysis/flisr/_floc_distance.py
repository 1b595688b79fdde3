"""FLOC's distance estimate on the lines of a faulted zone (see :mod:`.location` for the method).

Private to :mod:`openfeeder.analysis.flisr.location`: the path model of the grid (:class:`Grid`),
the impedance estimate from the current records above the zone, and the ranking and refinement by
the zone's voltage magnitudes. Everything works on arrays of the zone and the path to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import Topology

__all__ = [
    "FAULTED_PHASE_SHARE",
    "GROUND_SHARE",
    "MAX_CANDIDATES",
    "MIN_FAULT_CURRENT_A",
    "MODEL_SIGMA_FRACTION",
    "PLAUSIBLE_PENALTY",
    "PREFAULT_ROTATION_SIGMA_RAD",
    "RESISTIVE_Z",
    "VOLTAGE_MODEL_SIGMA",
    "Grid",
    "LineFit",
    "RecordArrays",
    "ShuntEstimate",
    "estimate_shunt",
]

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

RESISTIVE_Z: Final = 3.0
"""A fault resistance this many standard deviations above zero makes the estimate resistive."""
MODEL_SIGMA_FRACTION: Final = 0.01
"""Model error of an impedance estimate as a fraction of the distance from the record (line data,
charging currents, load shared out by expected power)."""
VOLTAGE_MODEL_SIGMA: Final = 0.0005
"""Model error of a predicted voltage magnitude, as a fraction of the nominal phase voltage."""
PREFAULT_ROTATION_SIGMA_RAD: Final = 0.035
"""Angle between a device's pre-fault and fault readings not explained by the grid: two readings'
timestamps jitter (100 us for an FTU is 31 mrad at 50 Hz)."""
FAULTED_PHASE_SHARE: Final = 0.5
"""A phase is faulted when its current change reaches this share of the largest one."""
GROUND_SHARE: Final = 0.02
"""A fault involves ground when ``|3 dI0|`` reaches this share of the largest phase change."""
MAX_CANDIDATES: Final = 5
"""Lines listed as candidates at most (those within 9 squared sigmas of the best)."""
PLAUSIBLE_PENALTY: Final = 25.0
"""Lines whose impedance estimate falls this many squared sigmas further outside them than the
best line's are not considered (5 sigma)."""
MIN_FAULT_CURRENT_A: Final = 1.0
"""Below this change of current (fault minus pre-fault) the records hold no fault to measure."""
_CANDIDATE_MARGIN: Final = 9.0
_LIMIT_SIGMAS: Final = 2.0
"""Accuracy classes are limits at 2 sigma (as in :mod:`openfeeder.sim.measurements`)."""
_PHASE_CRAD_PER_PERCENT: Final = 1.5
_SEARCH_SIGMAS: Final = np.linspace(-4.0, 4.0, 41)
"""Where the voltage refinement looks around the impedance estimate (in its sigmas)."""


@dataclass(frozen=True, slots=True, eq=False)
class Grid:
    """Topology plus per-bus path sums from the source (all in ``model.bus`` row order).

    ``z1``/``z0``: sequence impedance of the lines from the source to the bus; ``zw1``/``zw0``:
    the same with each segment weighted by the conjugate expected complex power below it;
    ``trafos``: transformers on the way; ``load_va``: expected complex power of the subtree.
    """

    model: GridModel
    topology: Topology
    branch_id: IntArray
    branch_from: IntArray
    """Bus rows of every branch's from (hv) end, in phasor-state order (lines, trafos, switches)."""
    branch_to: IntArray
    z1: ComplexArray
    z0: ComplexArray
    zw1: ComplexArray
    zw0: ComplexArray
    trafos: IntArray
    length_m: FloatArray
    load_va: ComplexArray
    u_phase_v: FloatArray
    """Nominal phase-to-ground voltage of each bus."""

    @classmethod
    def build(cls, model: GridModel, topology: Topology) -> Grid:
        line, trafo, switch = model.line, model.transformer, model.switch
        bus_ids = model.bus["id"]
        branch_id = np.concatenate([line["id"], trafo["id"], switch["id"]]).astype(np.int64)
        branch_from = lookup(
            bus_ids, np.concatenate([line["from_bus"], trafo["hv_bus"], switch["from_bus"]])
        )
        branch_to = lookup(
            bus_ids, np.concatenate([line["to_bus"], trafo["lv_bus"], switch["to_bus"]])
        )
        n = int(bus_ids.size)
        u_phase = model.bus["u_rated_kv"].astype(np.float64) * 1e3 / math.sqrt(3.0)

        # expected complex power at each bus: loads less generation less line charging
        s_bus = np.zeros(n, dtype=np.complex128)
        load = model.load[model.load["in_service"]]
        np.add.at(s_bus, lookup(bus_ids, load["bus"]), load["p_mw"] + 1j * load["q_mvar"])
        gen = model.generator[model.generator["in_service"]]
        np.subtract.at(s_bus, lookup(bus_ids, gen["bus"]), gen["p_mw"] + 1j * gen["q_mvar"])
        live = line[line["in_service"]]
        ends = lookup(bus_ids, np.concatenate([live["from_bus"], live["to_bus"]]))
        u_kv = model.bus["u_rated_kv"][ends]
        c_f = np.tile(live["c1_nf_per_km"] * live["length_km"], 2) * 1e-9
        charging = 2.0 * np.pi * model.frequency_hz * c_f * u_kv**2 / 2.0  # Mvar, half per end
        np.add.at(s_bus, ends, -1j * charging)

        order, start = topology.order, topology.order_index
        stop = start + topology.subtree_size
        prefix = np.zeros(n + 1, dtype=np.complex128)
        np.cumsum(s_bus[order], out=prefix[1:])
        load_va = (prefix[np.minimum(stop, n)] - prefix[start]) * 1e6

        # per-bus segment (its parent branch) values, then summed down the tree
        parent_branch = topology.parent_branch
        rows = lookup(branch_id, parent_branch)
        has = parent_branch >= 0
        n_line, n_trafo = int(line.size), int(trafo.size)
        is_line = has & (rows >= 0) & (rows < n_line)
        is_trafo = has & (rows >= n_line) & (rows < n_line + n_trafo)
        seg_z1 = np.zeros(n, dtype=np.complex128)
        seg_z0 = np.zeros(n, dtype=np.complex128)
        seg_len = np.zeros(n)
        lr = rows[is_line]
        km = line["length_km"][lr]
        seg_z1[is_line] = (line["r1_ohm_per_km"][lr] + 1j * line["x1_ohm_per_km"][lr]) * km
        seg_z0[is_line] = (line["r0_ohm_per_km"][lr] + 1j * line["x0_ohm_per_km"][lr]) * km
        seg_len[is_line] = km * 1e3
        weight = np.conj(load_va)
        sums = _sum_down(
            topology,
            np.stack(
                [seg_z1, seg_z0, seg_z1 * weight, seg_z0 * weight, seg_len + 0j, is_trafo + 0j]
            ),
        )
        return cls(
            model=model,
            topology=topology,
            branch_id=branch_id,
            branch_from=branch_from,
            branch_to=branch_to,
            z1=sums[0],
            z0=sums[1],
            zw1=sums[2],
            zw0=sums[3],
            length_m=sums[4].real,
            trafos=np.rint(sums[5].real).astype(np.int64),
            load_va=load_va,
            u_phase_v=u_phase,
        )

    def line_rows(self) -> tuple[IntArray, IntArray]:
        """Bus rows whose parent branch is a line, and the line's row in ``model.line``."""
        rows = lookup(self.model.line["id"], self.topology.parent_branch)
        child = np.flatnonzero((self.topology.parent_branch >= 0) & (rows >= 0))
        return child, rows[child]

    def is_below(self, rows: IntArray, tops: IntArray) -> BoolArray:
        """``[i, j]``: bus row ``rows[i]`` lies in the subtree of bus row ``tops[j]``."""
        start = self.topology.order_index
        size = self.topology.subtree_size
        pos = start[rows][:, None]
        return (pos >= start[tops][None, :]) & (pos < (start[tops] + size[tops])[None, :])


def _sum_down(topology: Topology, values: ComplexArray) -> ComplexArray:
    """Per bus, the sum of ``values`` (k, buses: the value of each bus's parent segment) over the
    segments from the source to it; every subtree is a run of the preorder, so this is one
    difference array and one cumulative sum."""
    n = topology.bus_ids.size
    start = topology.order_index
    stop = start + topology.subtree_size
    diff = np.zeros((n + 1, values.shape[0]), dtype=np.complex128)
    np.add.at(diff, start, values.T)
    np.subtract.at(diff, np.minimum(stop, n), values.T)
    running = np.cumsum(diff[:n], axis=0)
    out: ComplexArray = running[start].T
    return out


@dataclass(frozen=True, slots=True, eq=False)
class RecordArrays:
    """The records as arrays (checked against the model by :mod:`.location`)."""

    device_id: tuple[str, ...]
    bus_row: IntArray
    branch_row: IntArray
    """Row in :attr:`Grid.branch_id`, -1 for voltage-only records."""
    u_pre: ComplexArray
    u_fault: ComplexArray
    i_pre: ComplexArray
    """Zeros for voltage-only records."""
    i_fault: ComplexArray
    accuracy: FloatArray

    def __len__(self) -> int:
        return len(self.device_id)


@dataclass(frozen=True, slots=True)
class LineFit:
    """One line of the zone with the fault's distance on it: its row in ``model.line``."""

    line_row: int
    distance_m: float
    """From the line's from bus."""
    sigma_m: float
    residual: float


@dataclass(frozen=True, slots=True)
class ShuntEstimate:
    """What :func:`estimate_shunt` found: type, phases and the ranked lines (or why none)."""

    fault_type: str
    phases: tuple[int, ...]
    classified: bool
    fits: tuple[LineFit, ...]
    """Best first; empty when ``reason`` says why."""
    reason: str | None
    resistive: bool
    resistance_ohm: float
    current_devices: tuple[str, ...]
    voltage_devices: tuple[str, ...]


def estimate_shunt(
    grid: Grid, table: RecordArrays, zone_rows: IntArray, kind: str | None
) -> ShuntEstimate:
    """Type, phases and distance of a shunt fault in the zone of bus rows ``zone_rows``."""
    topo = grid.topology
    depth = np.where(topo.energized[zone_rows], topo.depth[zone_rows], np.iinfo(np.int64).max)
    entry = int(zone_rows[np.argmin(depth)])
    current = _current_records(grid, table, entry)

    def without(
        reason: str, fault_type: str, phases: tuple[int, ...], classified: bool
    ) -> ShuntEstimate:
        return ShuntEstimate(
            fault_type=fault_type,
            phases=phases,
            classified=classified,
            fits=(),
            reason=reason,
            resistive=False,
            resistance_ohm=math.nan,
            current_devices=(),
            voltage_devices=(),
        )

    if current.rows.size == 0:
        return without(
            "no fault record with current on the path from the feeder head to the zone",
            kind if kind is not None else "unknown",
            (),
            False,
        )
    if np.abs(current.i_fault - current.i_pre).max() < MIN_FAULT_CURRENT_A:
        return without(
            "the records above the zone show no fault current (a fault below the relays' and "
            "recorders' reach, or records taken outside the fault)",
            kind if kind is not None else "unknown",
            (),
            False,
        )
    fault_type, phases, classified = _classify(current, kind)
    lines = _zone_lines(grid, zone_rows)
    if lines.child.size == 0:
        return without(
            "the zone holds no line on the medium-voltage path", fault_type, phases, classified
        )
    estimate = _impedance_estimates(grid, current, lines, fault_type, phases)
    if not (np.isfinite(estimate.x_m) & np.isfinite(estimate.sigma_m)).any():
        return without(
            "the fault loop of the records is degenerate (no usable current change)",
            fault_type,
            phases,
            classified,
        )
    usable = np.flatnonzero(np.isfinite(estimate.x_m) & np.isfinite(estimate.sigma_m))
    lines, estimate = lines.subset(usable), estimate.subset(usable)
    # only lines the impedance estimate can reach go on to the voltage comparison
    off = np.maximum(np.maximum(-estimate.x_m, estimate.x_m - lines.length_m), 0.0)
    penalty = (off / estimate.sigma_m) ** 2
    plausible = np.flatnonzero(penalty <= penalty.min() + PLAUSIBLE_PENALTY)
    lines, estimate = lines.subset(plausible), estimate.subset(plausible)
    voltage = _voltage_devices(grid, table, zone_rows, current)
    refined = _refine(
        grid,
        current=current,
        lines=lines,
        estimate=estimate,
        voltage=voltage,
        zone_rows=zone_rows,
    )
    order = np.argsort(refined.residual, kind="stable")[:MAX_CANDIDATES].tolist()
    best = refined.residual[order[0]]
    fits = tuple(
        LineFit(
            line_row=int(lines.line_row[k]),
            distance_m=float(refined.distance_from_bus[k]),
            sigma_m=float(refined.sigma_m[k]),
            residual=float(refined.residual[k]),
        )
        for k in order
        if refined.residual[k] <= best + _CANDIDATE_MARGIN
    )
    return ShuntEstimate(
        fault_type=fault_type,
        phases=phases,
        classified=classified,
        fits=fits,
        reason=None,
        resistive=estimate.resistive,
        resistance_ohm=estimate.resistance_ohm,
        current_devices=current.device_id,
        voltage_devices=tuple(voltage.device_id[k] for k in refined.voltage_used),
    )


@dataclass(frozen=True, slots=True, eq=False)
class _Current:
    """Current records on the supply path above the zone, oriented downstream."""

    rows: IntArray
    """Rows in the record table."""
    device_id: tuple[str, ...]
    bus_row: IntArray
    """Where each measures voltage (the point its path impedance counts from)."""
    below_row: IntArray
    """The bus below its branch: the current measured flows into this subtree."""
    u_fault: ComplexArray
    i_fault: ComplexArray
    """Downstream, (records, 3)."""
    i_pre: ComplexArray
    accuracy: FloatArray


def _current_records(grid: Grid, table: RecordArrays, entry: int) -> _Current:
    topo = grid.topology
    has = table.branch_row >= 0
    branch = np.where(has, grid.branch_id[np.maximum(table.branch_row, 0)], NO_ID)
    # the branches above the zone: parent branches of the entry bus and its ancestors
    ancestors = np.flatnonzero(grid.is_below(np.array([entry]), np.arange(topo.bus_ids.size))[0])
    ancestors = ancestors[topo.parent_branch[ancestors] >= 0]
    path_branch = topo.parent_branch[ancestors]
    k = lookup(path_branch, branch)
    usable = has & (k >= 0)
    below = np.where(usable, ancestors[np.maximum(k, 0)], -1)
    above = np.where(usable, topo.parent_bus[np.maximum(below, 0)], -1)
    at_top = usable & (table.bus_row == above)
    at_bottom = usable & (table.bus_row == below)
    usable &= at_top | at_bottom
    # no transformer between the measuring point and the zone
    usable &= grid.trafos[entry] == grid.trafos[np.where(usable, table.bus_row, entry)]
    rows = np.flatnonzero(usable)
    sign = np.where(at_top[rows], 1.0, -1.0)[:, None]
    return _Current(
        rows=rows,
        device_id=tuple(table.device_id[r] for r in rows.tolist()),
        bus_row=table.bus_row[rows],
        below_row=below[rows],
        u_fault=table.u_fault[rows],
        i_fault=sign * table.i_fault[rows],
        i_pre=sign * table.i_pre[rows],
        accuracy=table.accuracy[rows],
    )


def _classify(current: _Current, kind: str | None) -> tuple[str, tuple[int, ...], bool]:
    """Fault type and faulted phases from the largest current change among the records."""
    delta = current.i_fault - current.i_pre
    magnitude = np.abs(delta)
    ref = int(np.argmax(magnitude.max(axis=1)))
    m = magnitude[ref]
    top = float(m.max())
    ground = abs(complex(delta[ref].sum())) >= GROUND_SHARE * top
    by_size = tuple(int(p) for p in np.argsort(-m, kind="stable"))
    if kind is None:
        faulted = tuple(sorted(p for p in range(3) if m[p] >= FAULTED_PHASE_SHARE * top))
        if len(faulted) == 1:
            return "slg", faulted, True
        if len(faulted) == 2:
            return ("llg" if ground else "ll"), faulted, True
        return "lll", (0, 1, 2), True
    count = {"slg": 1, "arc": 1, "ll": 2, "llg": 2, "lll": 3}[kind]
    return kind, tuple(sorted(by_size[:count])), False


@dataclass(frozen=True, slots=True, eq=False)
class _Lines:
    """The zone's lines, oriented downstream."""

    child: IntArray
    """Bus row of each line's downstream end."""
    top: IntArray
    """Bus row of its upstream end."""
    line_row: IntArray
    length_m: FloatArray
    z1_per_m: ComplexArray
    z0_per_m: ComplexArray
    top_is_from: BoolArray

    def subset(self, keep: IntArray) -> _Lines:
        return _Lines(
            child=self.child[keep],
            top=self.top[keep],
            line_row=self.line_row[keep],
            length_m=self.length_m[keep],
            z1_per_m=self.z1_per_m[keep],
            z0_per_m=self.z0_per_m[keep],
            top_is_from=self.top_is_from[keep],
        )


def _zone_lines(grid: Grid, zone_rows: IntArray) -> _Lines:
    child, line_rows = grid.line_rows()
    keep = np.isin(child, zone_rows) & np.isin(grid.topology.parent_bus[child], zone_rows)
    keep &= grid.trafos[child] == grid.trafos[zone_rows].min()
    child, line_rows = child[keep], line_rows[keep]
    line = grid.model.line
    top = grid.topology.parent_bus[child]
    km = line["length_km"][line_rows]
    from_rows = lookup(grid.model.bus["id"], line["from_bus"][line_rows])
    return _Lines(
        child=child,
        top=top,
        line_row=line_rows,
        length_m=km * 1e3,
        z1_per_m=(line["r1_ohm_per_km"][line_rows] + 1j * line["x1_ohm_per_km"][line_rows]) / 1e3,
        z0_per_m=(line["r0_ohm_per_km"][line_rows] + 1j * line["x0_ohm_per_km"][line_rows]) / 1e3,
        top_is_from=from_rows == top,
    )


def _drop(dz1: ComplexArray, dz0: ComplexArray, current: ComplexArray) -> ComplexArray:
    """Per-phase drop ``z1 I_p + (z0 - z1) I_0`` of currents (..., 3) through impedances (...)."""
    i0 = current.mean(axis=-1, keepdims=True)
    out: ComplexArray = dz1[..., None] * current + (dz0 - dz1)[..., None] * i0
    return out


_PERTURBATIONS: Final = 19
"""Base + ratio and phase of 3 voltages and 3 currents + the pre-fault rotation."""


def _perturbed(current: _Current) -> tuple[ComplexArray, ComplexArray, ComplexArray]:
    """(records, perturbations, 3) voltages, fault and pre-fault currents, each perturbation one
    standard deviation of one error (the first none)."""
    n = current.rows.size
    ratio = current.accuracy / 100.0 / _LIMIT_SIGMAS
    angle = ratio * _PHASE_CRAD_PER_PERCENT
    factor = np.ones((n, _PERTURBATIONS, 2, 3), dtype=np.complex128)
    for which in range(2):
        for p in range(3):
            k = 1 + which * 6 + p
            factor[:, k, which, p] = 1.0 + ratio
            factor[:, k + 3, which, p] = np.exp(1j * angle)
    u = current.u_fault[:, None, :] * factor[:, :, 0, :]
    i = current.i_fault[:, None, :] * factor[:, :, 1, :]
    pre = np.repeat(current.i_pre[:, None, :], _PERTURBATIONS, axis=1)
    pre[:, -1, :] *= np.exp(1j * PREFAULT_ROTATION_SIGMA_RAD)
    return u, i, pre


@dataclass(frozen=True, slots=True, eq=False)
class _Estimate:
    x_m: FloatArray
    """Per zone line, from its upstream end (may lie outside the line)."""
    sigma_m: FloatArray
    resistive: bool
    resistance_ohm: float
    best_record: int
    """Index (in :class:`_Current`) of the most precise record: the voltage model's reference."""

    def subset(self, keep: IntArray) -> _Estimate:
        return _Estimate(
            x_m=self.x_m[keep],
            sigma_m=self.sigma_m[keep],
            resistive=self.resistive,
            resistance_ohm=self.resistance_ohm,
            best_record=self.best_record,
        )


def _loops(fault_type: str, phases: tuple[int, ...]) -> tuple[list[tuple[int, int | None]], bool]:
    """Loop equations (phase, minus phase) of a fault type, and whether they hold a fault
    resistance."""
    if fault_type in ("slg", "arc"):
        return [(phases[0], None)], True
    if fault_type == "ll":
        return [(phases[0], phases[1])], True
    if fault_type == "llg":
        return [(phases[0], phases[1])], False
    return [(0, None), (1, None), (2, None)], True


def _impedance_estimates(
    grid: Grid,
    current: _Current,
    lines: _Lines,
    fault_type: str,
    phases: tuple[int, ...],
) -> _Estimate:
    u, i, pre = _perturbed(current)  # (R, K, 3)
    delta = i - pre
    w_rec = np.conj(grid.load_va[current.below_row])  # (R,)
    share = np.divide(1.0, w_rec, out=np.zeros_like(w_rec), where=np.abs(w_rec) > 0.0)
    load_unit = pre * share[:, None, None]  # pre-fault current per unit conj(power) below
    m = current.bus_row[:, None]
    top = lines.top[None, :]
    dz1 = grid.z1[top] - grid.z1[m]  # (R, L)
    dz0 = grid.z0[top] - grid.z0[m]
    dzw1 = grid.zw1[top] - grid.zw1[m]
    dzw0 = grid.zw0[top] - grid.zw0[m]
    # (R, K, L, 3)
    a = (
        u[:, :, None, :]
        - _drop(dz1[:, None, :], dz0[:, None, :], delta[:, :, None, :])
        - _drop(dzw1[:, None, :], dzw0[:, None, :], load_unit[:, :, None, :])
    )
    w_line = np.conj(grid.load_va[lines.child])  # (L,)
    seg = delta[:, :, None, :] + load_unit[:, :, None, :] * w_line[None, None, :, None]
    b = _drop(lines.z1_per_m[None, None, :], lines.z0_per_m[None, None, :], seg)
    loops, resistive_loops = _loops(fault_type, phases)
    if fault_type in ("slg", "arc"):
        pol = [delta.sum(axis=-1)]  # 3 dI0
        i_fault = [np.abs(pol[0])]
    elif fault_type in ("ll", "llg"):
        p, q = phases[0], phases[1]
        pol = [delta[..., p] - delta[..., q]]
        i_fault = [np.abs(delta[..., p] - delta[..., q]) / 2.0]
    else:
        pol = [delta[..., p] for p in range(3)]
        i_fault = [np.abs(delta[..., p]) for p in range(3)]
    a_loop = np.stack([a[..., p] - (a[..., q] if q is not None else 0.0) for p, q in loops])
    b_loop = np.stack([b[..., p] - (b[..., q] if q is not None else 0.0) for p, q in loops])
    # (loops, R, K, L)
    x_bolted = (a_loop * np.conj(b_loop)).real.sum(axis=0) / (np.abs(b_loop) ** 2).sum(axis=0)
    unit = np.stack([np.exp(-1j * np.angle(pp)) for pp in pol])[..., None]  # (loops, R, K, 1)
    ai = (a_loop * unit).imag
    bi = (b_loop * unit).imag
    x_takagi = (ai * bi).sum(axis=0) / np.maximum((bi * bi).sum(axis=0), 1e-30)
    v_res = ((a_loop - x_takagi[None] * b_loop) * unit).real  # volts in phase with the fault
    r_ohm = (v_res / np.maximum(np.stack(i_fault)[..., None], 1e-9)).mean(axis=0)  # (R, K, L)

    def spread(values: FloatArray) -> FloatArray:
        out: FloatArray = np.sqrt(((values[:, 1:, :] - values[:, :1, :]) ** 2).sum(axis=1))
        return out  # (R, L)

    x_b, x_t, r = x_bolted[:, 0, :], x_takagi[:, 0, :], r_ohm[:, 0, :]
    s_b, s_t, s_r = spread(x_bolted), spread(x_takagi), spread(r_ohm)
    reach = grid.length_m[top] - grid.length_m[m]  # (R, L) path length from record to line
    model_b = MODEL_SIGMA_FRACTION * (reach + np.clip(x_b, 0.0, lines.length_m[None, :]))
    model_t = MODEL_SIGMA_FRACTION * (reach + np.clip(x_t, 0.0, lines.length_m[None, :]))
    s_b = np.hypot(s_b, model_b) + 0.5
    s_t = np.hypot(s_t, model_t) + 0.5
    # decide bolted or resistive with the most precise record on the line nearest in impedance
    best_line = int(np.argmin(np.abs(x_t - np.clip(x_t, 0.0, lines.length_m)).min(axis=0)))
    best_record = int(np.argmin(s_t[:, best_line]))
    z_r = r[best_record, best_line] / max(float(s_r[best_record, best_line]), 1e-12)
    resistive = resistive_loops and (fault_type == "arc" or z_r > RESISTIVE_Z)
    x, s = (x_t, s_t) if resistive else (x_b, s_b)
    weight = 1.0 / s**2
    x_comb = (weight * x).sum(axis=0) / weight.sum(axis=0)
    s_comb = 1.0 / np.sqrt(weight.sum(axis=0))
    return _Estimate(
        x_m=x_comb,
        sigma_m=s_comb,
        resistive=resistive,
        resistance_ohm=float(max(r[best_record, best_line], 0.0)),
        best_record=best_record,
    )


@dataclass(frozen=True, slots=True, eq=False)
class _Voltage:
    """Voltage magnitudes measured in the zone (or joined to it by a closed switch)."""

    device_id: tuple[str, ...]
    at_row: IntArray
    """The zone bus each one's voltage stands for."""
    magnitude: FloatArray
    """(devices, 3)"""
    sigma: FloatArray


def _voltage_devices(
    grid: Grid, table: RecordArrays, zone_rows: IntArray, current: _Current
) -> _Voltage:
    model = grid.model
    in_zone = np.zeros(model.bus.size, dtype=bool)
    in_zone[zone_rows] = True
    at = np.where(in_zone[table.bus_row], table.bus_row, -1)
    # devices on the far side of a closed switch that bounds the zone stand for its zone end
    closed = model.switch[model.switch["closed"]]
    ends = lookup(model.bus["id"], np.stack([closed["from_bus"], closed["to_bus"]]))
    ok = (ends >= 0).all(axis=0)
    ends = ends[:, ok]
    for outside, inside in ((0, 1), (1, 0)):
        bridge = in_zone[ends[inside]] & ~in_zone[ends[outside]]
        if not bridge.any():
            continue
        hit = lookup(ends[outside][bridge], table.bus_row)
        at = np.where((at < 0) & (hit >= 0), ends[inside][bridge][np.maximum(hit, 0)], at)
    keep = at >= 0
    keep &= ~np.isin(np.arange(len(table)), current.rows)
    keep &= grid.trafos[np.maximum(at, 0)] == grid.trafos[np.maximum(table.bus_row, 0)]
    rows = np.flatnonzero(keep)
    magnitude = np.abs(table.u_fault[rows])
    noise = table.accuracy[rows][:, None] / 100.0 / _LIMIT_SIGMAS * magnitude
    model_sigma = VOLTAGE_MODEL_SIGMA * grid.u_phase_v[at[rows]][:, None]
    return _Voltage(
        device_id=tuple(table.device_id[r] for r in rows.tolist()),
        at_row=at[rows],
        magnitude=magnitude,
        sigma=np.hypot(noise, model_sigma),
    )


@dataclass(frozen=True, slots=True, eq=False)
class _Refined:
    distance_from_bus: FloatArray
    sigma_m: FloatArray
    residual: FloatArray
    voltage_used: tuple[int, ...]


def _refine(
    grid: Grid,
    *,
    current: _Current,
    lines: _Lines,
    estimate: _Estimate,
    voltage: _Voltage,
    zone_rows: IntArray,
) -> _Refined:
    """Rank the zone's lines by the misfit of impedance and voltages; refine ``x`` on each.

    The predicted voltages all come from one reference record, so its errors move them together:
    they enter as correlated noise (generalized least squares, the record's errors as nuisance
    parameters of known spread) instead of counting once per device.
    """
    length = lines.length_m
    x_imp, s_imp = estimate.x_m, estimate.sigma_m
    n_lines = length.size
    steps = x_imp[:, None] + s_imp[:, None] * _SEARCH_SIGMAS[None, :]
    grid_x = np.clip(steps, 0.0, length[:, None])
    grid_x = np.concatenate([grid_x, np.zeros((n_lines, 1)), length[:, None]], axis=1)  # (L, G)
    cost = ((grid_x - x_imp[:, None]) / s_imp[:, None]) ** 2
    lanes = np.arange(n_lines)
    if not voltage.at_row.size:
        pick = np.argmin(cost, axis=1)
        x = grid_x[lanes, pick]
        distance = np.where(lines.top_is_from, x, length - x)
        return _Refined(distance, s_imp.copy(), cost[lanes, pick], ())
    model = _VoltageModel(
        grid,
        current=current,
        lines=lines,
        voltage=voltage,
        record=estimate.best_record,
        zone_rows=zone_rows,
    )
    weight = 1.0 / voltage.sigma**2  # (D, 3)
    x_ref = np.clip(x_imp, 0.0, length)
    jw, gram = _weighted_jacobian(model.jacobian(x_ref), weight)
    predicted = model.magnitude(grid_x)  # (D, L, G, 3)
    resid = predicted - voltage.magnitude[:, None, None, :]
    cost = cost + _gls(resid, weight, jw, gram)
    pick = np.argmin(cost, axis=1)
    x = grid_x[lanes, pick]
    # information the voltages add at the chosen point
    h = np.maximum(1e-3 * length, 0.01)
    ahead = np.minimum(x + h, length)
    behind = np.maximum(ahead - h, 0.0)
    gradient = (
        model.magnitude(ahead[:, None])[:, :, 0, :] - model.magnitude(behind[:, None])[:, :, 0, :]
    ) / np.maximum(ahead - behind, 1e-9)[None, :, None]
    info = _gls(gradient[:, :, None, :], weight, jw, gram)[:, 0]
    sigma = np.maximum(1.0 / np.sqrt(1.0 / s_imp**2 + info), 0.5)
    distance = np.where(lines.top_is_from, x, length - x)
    return _Refined(distance, sigma, cost[lanes, pick], tuple(range(voltage.at_row.size)))


def _gls(resid: FloatArray, weight: FloatArray, jw: FloatArray, gram: FloatArray) -> FloatArray:
    """``r' C^-1 r`` per line and point, ``C = diag(1 / weight) + J J'`` (Woodbury identity).

    ``resid`` (D, L, G, 3), ``weight`` (D, 3), ``jw`` the weighted Jacobian laid out (L, K, D*3)
    (:func:`_weighted_jacobian`), ``gram`` (L, K, K) is ``I + J' W J``.
    """
    d, n_lines, g, _ = resid.shape
    flat = resid.transpose(1, 2, 0, 3).reshape(n_lines, g, d * 3)  # (L, G, D*3)
    plain = (flat**2 * weight.reshape(1, 1, d * 3)).sum(axis=-1)
    projected = flat @ jw.transpose(0, 2, 1)  # (L, G, K)
    solved = np.linalg.solve(gram, projected.transpose(0, 2, 1)).transpose(0, 2, 1)
    out: FloatArray = plain - (projected * solved).sum(axis=-1)
    return out


def _weighted_jacobian(jacobian: FloatArray, weight: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``W J`` laid out (L, K, D*3) and the Gram matrix ``I + J' W J`` (L, K, K)."""
    k, d, n_lines, _ = jacobian.shape
    j = jacobian.transpose(2, 0, 1, 3).reshape(n_lines, k, d * 3)
    jw = j * weight.reshape(1, 1, d * 3)
    gram = np.eye(k)[None, :, :] + jw @ j.transpose(0, 2, 1)
    return jw, gram


class _VoltageModel:
    """Voltage magnitudes the reference record predicts at the zone's devices for a fault at
    ``x`` on each zone line (and how the record's errors move them)."""

    def __init__(
        self,
        grid: Grid,
        *,
        current: _Current,
        lines: _Lines,
        voltage: _Voltage,
        record: int,
        zone_rows: IntArray,
    ) -> None:
        u, i, pre = _perturbed(current)
        self.u, self.i, self.pre = u[record], i[record], pre[record]  # (K, 3)
        self.grid = grid
        m = int(current.bus_row[record])
        w_rec = np.conj(grid.load_va[current.below_row[record]])
        self.share = 1.0 / w_rec if abs(w_rec) > 0.0 else 0.0
        dev = voltage.at_row
        junction = _junction(grid, dev, lines.top, zone_rows)  # (D, L)
        self.below = grid.is_below(dev, lines.child)  # (D, L)
        self.dz1 = grid.z1[junction] - grid.z1[m]
        self.dz0 = grid.z0[junction] - grid.z0[m]
        self.dzw1 = grid.zw1[dev] - grid.zw1[m]  # (D,)
        self.dzw0 = grid.zw0[dev] - grid.zw0[m]
        self.lines = lines

    def phasors(self, x: FloatArray, k: int | slice) -> ComplexArray:
        """(K?, D, L, G, 3) predicted phasors for points ``x`` (L, G), perturbation(s) ``k``."""
        u, i, pre = self.u[k], self.i[k], self.pre[k]
        delta = i - pre
        load = pre * self.share
        lead = delta.shape[:-1]
        shape = (*lead, 1, 1, 1, 3)
        delta_b, load_b, u_b = delta.reshape(shape), load.reshape(shape), u.reshape(shape)
        fault_part = _drop(self.dz1[..., None], self.dz0[..., None], delta_b)
        load_part = _drop(self.dzw1[:, None, None], self.dzw0[:, None, None], load_b)
        per_m = _drop(
            self.lines.z1_per_m[:, None], self.lines.z0_per_m[:, None], delta_b[..., 0, :, :, :]
        )  # (K?, L, 1, 3)
        slope = np.where(self.below[:, :, None, None], per_m[..., None, :, :, :], 0.0)
        out: ComplexArray = u_b - fault_part - load_part - x[None, :, :, None] * slope
        return out

    def magnitude(self, x: FloatArray) -> FloatArray:
        """(D, L, G, 3) predicted magnitudes without errors."""
        out: FloatArray = np.abs(self.phasors(x, 0))
        return out

    def jacobian(self, x: FloatArray) -> FloatArray:
        """(K, D, L, 3): the change of the magnitudes at ``x`` (L,) for one standard deviation of
        each of the record's errors."""
        values = np.abs(self.phasors(x[:, None], slice(None)))[..., 0, :]  # (K, D, L, 3)
        out: FloatArray = values[1:] - values[:1]
        return out


def _junction(grid: Grid, rows: IntArray, tops: IntArray, zone_rows: IntArray) -> IntArray:
    """``[i, j]``: the deepest common ancestor (in the supply tree) of the zone's bus rows
    ``rows[i]`` and ``tops[j]`` (the zone's top bus is an ancestor of all its buses)."""
    topo = grid.topology
    candidates = zone_rows
    a = grid.is_below(rows, candidates)  # (D, C): candidate is ancestor-or-self of row
    b = grid.is_below(tops, candidates)  # (L, C)
    common = a[:, None, :] & b[None, :, :]
    depth = np.where(common, topo.depth[candidates][None, None, :], -1)
    pick = np.argmax(depth, axis=2)
    out: IntArray = candidates[pick]
    return out
