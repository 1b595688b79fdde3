"""FLOC: where on the feeder the fault is, from the trip, the fault indicators and fault records.

:func:`locate_fault` answers in two steps, and the first is the one that must always be right.

1. The faulted *zone* (:mod:`openfeeder.model.topology` switching sections)
    Shunt faults (``slg``, ``ll``, ``lll``, ``llg``, ``arc``): the fault current flows from the
    tripped feeder-head breaker down one path to the fault, so every indicator on that path latches
    and none elsewhere does. The zone starts at the section below the deepest switch whose indicator
    saw fault current (the breaker itself when none did) and takes in every section reached from
    there through switches whose indicator is unknown (``None``, left out of the mapping, or a
    switch without an indicator): a missing indicator widens the zone (``widened``, with the switches
    in ``unknown_indicators``) instead of failing. A False indicator above a True one is overruled
    (noted in ``notes``); two True indicators on different branches are an error.

    Open conductors (``open``, ``open_ground``): no overcurrent, so usually no trip and no latched
    indicator. Downstream of a broken phase the voltage is strongly unbalanced (negative sequence
    ``|U2| / |U1|`` of 0.5 to 1), upstream it is not. A device whose unbalance rose by
    :data:`UNBALANCE_STEP` or more lies below the break, one whose did not lies off the broken
    path, so the break is on a line above every unbalanced device and above no balanced one; the
    zone is made of the sections holding such lines. The unbalance ratio passes MV/LV transformers
    unchanged, so LV meters count too. The distance is not estimated (no fault current, no
    impedance): ``method`` is ``"none"`` with the reason, and ``line_id`` is set when only one line
    fits. A break with no device below it is invisible and raises :class:`FaultLocationError`.

2. The distance on the line (shunt faults)
    From every *current record* on the supply path above the zone (the feeder-head FTU, FTUs of
    switches on the way, the section's upstream FTU; not across a transformer) the voltage at the
    fault point is predicted for each line of the zone as ``V_f(x) = A - x B``: the record's voltage
    minus the drop along the path, with per-phase drops ``z1 I_p + (z0 - z1) I_0`` per segment. The
    current in a segment is the record's change of current (fault minus pre-fault, the fault's
    share) on the segments leading to the fault plus the pre-fault current shared out in proportion
    to the expected load below each segment (loads keep drawing their current during a fault).
    The fault loop of the type (phase to ground for ``slg``/``arc``, each phase for ``lll``, phase
    to phase for ``ll`` and ``llg``) then gives ``x``:

    * bolted (``V_f = 0``): ``x = Re(A conj B) / |B|^2``, least squares over the loop equations;
    * resistive (Takagi): ``V_f`` is in phase with the fault current, whose angle is that of the
      polarizing current change (``3 dI0`` for ground faults, ``dIp - dIq`` for phase-to-phase,
      ``dIp`` for three-phase): ``x = Im(A conj P) / Im(B conj P)``.

    Takagi is used when the fault resistance it finds is significant (more than
    :data:`RESISTIVE_Z` standard deviations above zero, or the type is ``arc``); for ``llg`` the
    phase-to-phase loop holds no fault resistance and the bolted equation is exact. Standard
    deviations come from the records' accuracy classes (ratio and phase errors of every phasor, read
    as 2-sigma limits, pushed through the estimate by finite differences) plus a model error of
    :data:`MODEL_SIGMA_FRACTION` of the distance from the record. Estimates of several records are
    combined weighted by their variances.

    Voltages inside the zone refine and rank (seed 003's sparse voltage measurements): for each
    line and ``x`` the same path model predicts the voltage at every device in the zone (or joined
    to it through a closed switch): below the fault it is the fault point's voltage less the load
    drop, elsewhere the voltage where the device's path leaves the fault path. Only *magnitudes* are
    compared across devices: unsynchronized devices stamp their phasors with their own clocks, whose
    millisecond offsets are tens of degrees. The misfit (in standard deviations, squared) of the
    impedance estimate and of the voltages ranks the zone's lines (``candidates``); on the best one
    ``x`` is refined by minimizing it. Devices behind a transformer are not used for distance.

Assumptions: radial operation, solidly grounded MV (zero-sequence current returns through the
source), lines described by sequence impedances. Not modelled: the change of cable charging current
during the fault, mutual coupling between feeders, load that changes with the voltage sag.
Everything runs on arrays of the zone and the path to it; a 1,000-bus case takes a few ms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.faults import symmetrical_components
from openfeeder.errors import AnalysisError
from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import Topology, analyze_topology

__all__ = [
    "FAULT_TYPES",
    "MODEL_SIGMA_FRACTION",
    "RESISTIVE_Z",
    "UNBALANCE_STEP",
    "DistanceCandidate",
    "FaultLocation",
    "FaultLocationError",
    "PhasorRecord",
    "locate_fault",
]

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

FAULT_TYPES: Final = ("slg", "ll", "lll", "llg", "arc", "open", "open_ground")
"""Fault types :func:`locate_fault` knows (``fault_type``), as in :mod:`openfeeder.sim.faults`."""
_OPEN_TYPES: Final = frozenset({"open", "open_ground"})
UNBALANCE_STEP: Final = 0.1
"""Rise of ``|U2| / |U1|`` (fault minus pre-fault) that puts a device below a broken conductor."""
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
PLAUSIBLE_PENALTY: Final = 25.0
"""Lines whose impedance estimate falls this many squared sigmas further outside them than the
best line's are not considered (5 sigma)."""
_LIMIT_SIGMAS: Final = 2.0
"""Accuracy classes are limits at 2 sigma (as in :mod:`openfeeder.sim.measurements`)."""
_PHASE_CRAD_PER_PERCENT: Final = 1.5
_PHASES: Final = "abc"
_SEARCH_SIGMAS: Final = np.linspace(-4.0, 4.0, 41)
"""Where the voltage refinement looks around the impedance estimate (in its sigmas)."""


class FaultLocationError(AnalysisError):
    """The inputs of :func:`locate_fault` are unusable, or nothing can be located.

    ``field`` names the argument or record field (``"tripped_breaker"``, ``"indicators"``,
    ``"records.bus_id"``, ...), ``element_id`` the grid element concerned and ``device_id`` the
    record's device, where there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        element_id: int | None = None,
        device_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.element_id = element_id
        self.device_id = device_id


# -- records ---------------------------------------------------------------------------------------


def _phasors(value: Any, device_id: str, name: str) -> ComplexArray:
    try:
        out = np.array(value, dtype=np.complex128).reshape(-1)
    except (TypeError, ValueError) as err:
        raise FaultLocationError(
            f"record {device_id!r}: {name} must be 3 complex phasors: {err}",
            field=f"records.{name}",
            device_id=device_id,
        ) from err
    if out.shape != (3,) or not np.isfinite(out).all():
        raise FaultLocationError(
            f"record {device_id!r}: {name} must be 3 finite complex phasors (a, b, c), got {value!r}",
            field=f"records.{name}",
            device_id=device_id,
        )
    out.setflags(write=False)
    return out


@dataclass(frozen=True, slots=True, eq=False)
class PhasorRecord:
    """What one recording device (FTU, PMU, a meter's fault recorder) captured around a fault.

    Phasors are RMS, phases a, b, c, in the device's own time reference: the angles of one record
    are comparable with each other, not with another device's (unless both are synchronized).
    """

    device_id: str
    bus_id: int
    """Where it measures phase-to-ground voltage (model bus id)."""
    u_pre_v: ComplexArray
    """(3,) before the fault."""
    u_fault_v: ComplexArray
    """(3,) during the fault."""
    branch_id: int | None = None
    """Branch whose current it measures, at the end touching ``bus_id``."""
    i_pre_a: ComplexArray | None = None
    """(3,) current flowing from ``bus_id`` into the branch, before the fault."""
    i_fault_a: ComplexArray | None = None
    accuracy_class: float = 0.5
    """% (2-sigma ratio error), for the uncertainty."""

    def __post_init__(self) -> None:
        device = str(self.device_id)
        object.__setattr__(self, "device_id", device)
        object.__setattr__(self, "bus_id", int(self.bus_id))
        object.__setattr__(self, "u_pre_v", _phasors(self.u_pre_v, device, "u_pre_v"))
        object.__setattr__(self, "u_fault_v", _phasors(self.u_fault_v, device, "u_fault_v"))
        currents = (self.i_pre_a is not None, self.i_fault_a is not None)
        if any(currents) and not (all(currents) and self.branch_id is not None):
            raise FaultLocationError(
                f"record {device!r}: a current record needs branch_id, i_pre_a and i_fault_a",
                field="records.branch_id",
                device_id=device,
            )
        if self.branch_id is not None:
            if not all(currents):
                raise FaultLocationError(
                    f"record {device!r}: branch_id {self.branch_id} given without its currents",
                    field="records.i_fault_a",
                    device_id=device,
                )
            object.__setattr__(self, "branch_id", int(self.branch_id))
            object.__setattr__(self, "i_pre_a", _phasors(self.i_pre_a, device, "i_pre_a"))
            object.__setattr__(self, "i_fault_a", _phasors(self.i_fault_a, device, "i_fault_a"))
        accuracy = float(self.accuracy_class)
        if not (math.isfinite(accuracy) and accuracy >= 0.0):
            raise FaultLocationError(
                f"record {device!r}: accuracy_class must be a finite percentage >= 0, "
                f"got {self.accuracy_class!r}",
                field="records.accuracy_class",
                device_id=device,
            )
        object.__setattr__(self, "accuracy_class", accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: complex phasors as ``[re, im]`` pairs, absent currents as None."""

        def pairs(values: ComplexArray | None) -> list[list[float]] | None:
            if values is None:
                return None
            return [[float(v.real), float(v.imag)] for v in values]

        return {
            "device_id": self.device_id,
            "bus_id": self.bus_id,
            "branch_id": self.branch_id,
            "accuracy_class": self.accuracy_class,
            "u_pre_v": pairs(self.u_pre_v),
            "u_fault_v": pairs(self.u_fault_v),
            "i_pre_a": pairs(self.i_pre_a),
            "i_fault_a": pairs(self.i_fault_a),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhasorRecord:
        """The record of :meth:`to_dict`; :class:`FaultLocationError` names the bad field."""
        device = str(data.get("device_id", "?"))

        def complexes(name: str) -> list[complex] | None:
            raw = data.get(name)
            if raw is None:
                return None
            try:
                return [complex(float(re), float(im)) for re, im in raw]
            except (TypeError, ValueError) as err:
                raise FaultLocationError(
                    f"record {device!r}: {name} must be a list of [re, im] pairs, got {raw!r}",
                    field=f"records.{name}",
                    device_id=device,
                ) from err

        for name in ("device_id", "bus_id", "u_pre_v", "u_fault_v"):
            if data.get(name) is None:
                raise FaultLocationError(
                    f"record {device!r}: missing {name}", field=f"records.{name}", device_id=device
                )
        try:
            bus_id = int(data["bus_id"])
            branch = data.get("branch_id")
            branch_id = None if branch is None else int(branch)
            accuracy = float(data.get("accuracy_class", 0.5))
        except (TypeError, ValueError) as err:
            raise FaultLocationError(
                f"record {device!r}: bus_id, branch_id and accuracy_class must be numbers: {err}",
                field="records.bus_id",
                device_id=device,
            ) from err
        return cls(
            device_id=device,
            bus_id=bus_id,
            u_pre_v=np.asarray(complexes("u_pre_v"), dtype=np.complex128),
            u_fault_v=np.asarray(complexes("u_fault_v"), dtype=np.complex128),
            branch_id=branch_id,
            i_pre_a=_optional(complexes("i_pre_a")),
            i_fault_a=_optional(complexes("i_fault_a")),
            accuracy_class=accuracy,
        )


def _optional(values: list[complex] | None) -> ComplexArray | None:
    return None if values is None else np.asarray(values, dtype=np.complex128)


# -- result ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DistanceCandidate:
    """One line of the zone with the fault's distance on it and how well that fits."""

    line_id: int
    from_bus: int
    to_bus: int
    distance_m: float
    """From the line's from bus."""
    sigma_m: float
    residual: float
    """Misfit of the impedance estimate and the zone's voltages here, in squared sigmas."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "line_id": self.line_id,
            "from_bus": self.from_bus,
            "to_bus": self.to_bus,
            "distance_m": self.distance_m,
            "sigma_m": self.sigma_m,
            "residual": self.residual,
        }


@dataclass(frozen=True, slots=True)
class FaultLocation:
    """Result of :func:`locate_fault` (see the module docstring)."""

    feeder: int
    """Head switch id of the faulted feeder."""
    fault_type: str
    """One of :data:`FAULT_TYPES`, or ``"unknown"`` when nothing could classify it."""
    fault_type_classified: bool
    """True when the type was classified from the records (not given by the caller)."""
    phases: str
    """Faulted (or broken) phases, e.g. ``"a"``, ``"bc"``; empty when unknown."""
    section_bus_ids: tuple[int, ...]
    """The faulted zone: the buses of one switching section, or of several when widened."""
    bounding_switch_ids: tuple[int, ...]
    """Switches with one end in the zone: opening them isolates it."""
    widened: bool
    unknown_indicators: tuple[int, ...]
    """Switches inside the zone whose unknown indicator made it span several sections."""
    section_basis: str
    """``"indicators"`` (trip and fault indicators) or ``"voltage_unbalance"`` (open conductor)."""
    method: str
    """``"impedance"``, ``"impedance+voltage"`` or ``"none"`` (see ``reason``)."""
    line_id: int | None = None
    from_bus: int | None = None
    to_bus: int | None = None
    distance_m: float | None = None
    """From the line's from bus."""
    sigma_m: float | None = None
    """1-sigma uncertainty of ``distance_m``."""
    fault_resistance_ohm: float | None = None
    """Estimated fault resistance when the estimate was resistive (Takagi), else None."""
    reason: str | None = None
    """Why the distance is missing (``method == "none"``)."""
    candidates: tuple[DistanceCandidate, ...] = ()
    """Lines of the zone the fault fits on, best first (the first is the result)."""
    records_used: tuple[str, ...] = ()
    """Devices whose records entered the distance estimate."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """What an operator should know: widened zones, overruled indicators, assumptions taken."""

    @property
    def located(self) -> bool:
        """A distance was estimated."""
        return self.distance_m is not None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "feeder": self.feeder,
            "fault_type": self.fault_type,
            "fault_type_classified": self.fault_type_classified,
            "phases": self.phases,
            "section_bus_ids": list(self.section_bus_ids),
            "bounding_switch_ids": list(self.bounding_switch_ids),
            "widened": self.widened,
            "unknown_indicators": list(self.unknown_indicators),
            "section_basis": self.section_basis,
            "method": self.method,
            "line_id": self.line_id,
            "from_bus": self.from_bus,
            "to_bus": self.to_bus,
            "distance_m": self.distance_m,
            "sigma_m": self.sigma_m,
            "fault_resistance_ohm": self.fault_resistance_ohm,
            "reason": self.reason,
            "candidates": [c.as_dict() for c in self.candidates],
            "records_used": list(self.records_used),
            "notes": list(self.notes),
        }


# -- entry point -----------------------------------------------------------------------------------


def locate_fault(
    model: GridModel,
    *,
    tripped_breaker: int | None,
    indicators: Mapping[int, bool | None],
    records: Sequence[PhasorRecord] = (),
    fault_type: str | None = None,
) -> FaultLocation:
    """The faulted zone and the fault's distance on its line (see the module docstring).

    ``model`` is the grid as it was before the trip (a tripped breaker that is open in it is taken
    as closed). ``indicators`` maps switch ids to True (fault current passed), False (it did not)
    or None (device offline); switches missing from it count as unknown. ``fault_type`` None lets
    the records classify the fault (``fault_type_classified``). Raises
    :class:`FaultLocationError` for unknown ids or unusable records, and when nothing locates a
    fault (no trip, no latched indicator, no device sees a broken conductor).
    """
    kind = _check_fault_type(fault_type)
    _check_switches(model, tripped_breaker, indicators)
    if tripped_breaker is not None:
        row = int(lookup(model.switch["id"], np.array([tripped_breaker]))[0])
        if not model.switch["closed"][row]:
            model = model.with_switch_states({int(tripped_breaker): True})
    topology = analyze_topology(model)
    grid = _Grid.build(model, topology)
    table = _RecordTable.build(grid, records)
    latched = [int(k) for k, v in indicators.items() if v is True and k != tripped_breaker]
    if kind in _OPEN_TYPES or (kind is None and tripped_breaker is None and not latched):
        return _locate_open(grid, table, kind)
    if kind is None and not latched and _broken_at_head(grid, table, tripped_breaker):
        # a trip (ground overcurrent of loads fed on two phases) with the current of one phase
        # *falling*: a broken conductor, not a short circuit
        try:
            return _locate_open(grid, table, kind)
        except FaultLocationError:
            pass
    zone = _zone_from_indicators(grid, tripped_breaker, indicators)
    return _locate_shunt(grid, table, zone, kind)


def _check_fault_type(fault_type: str | None) -> str | None:
    if fault_type is None:
        return None
    value = str(fault_type).lower()
    if value not in FAULT_TYPES:
        raise FaultLocationError(
            f"unknown fault_type {fault_type!r}; expected one of {list(FAULT_TYPES)} or None",
            field="fault_type",
        )
    return value


def _check_switches(
    model: GridModel, tripped_breaker: int | None, indicators: Mapping[int, bool | None]
) -> None:
    ids = model.switch["id"]
    if tripped_breaker is not None and lookup(ids, np.array([tripped_breaker]))[0] < 0:
        raise FaultLocationError(
            f"tripped_breaker {tripped_breaker} is not a switch of the model",
            field="tripped_breaker",
            element_id=int(tripped_breaker),
        )
    if not indicators:
        return
    keys = np.fromiter((int(k) for k in indicators), dtype=np.int64, count=len(indicators))
    missing = keys[lookup(ids, keys) < 0]
    if missing.size:
        raise FaultLocationError(
            f"indicators name switch {int(missing[0])}, which is not a switch of the model"
            + (f" (and {missing.size - 1} more unknown ids)" if missing.size > 1 else ""),
            field="indicators",
            element_id=int(missing[0]),
        )
    for key, value in indicators.items():
        if value is not None and not isinstance(value, bool | np.bool_):
            raise FaultLocationError(
                f"indicator of switch {key} must be True, False or None, got {value!r}",
                field="indicators",
                element_id=int(key),
            )


# -- the grid as the locator needs it --------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Grid:
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
    def build(cls, model: GridModel, topology: Topology) -> _Grid:
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
class _RecordTable:
    """The records as arrays; every bus and branch checked against the model."""

    device_id: tuple[str, ...]
    bus_row: IntArray
    branch_row: IntArray
    """Row in :attr:`_Grid.branch_id`, -1 for voltage-only records."""
    u_pre: ComplexArray
    u_fault: ComplexArray
    i_pre: ComplexArray
    i_fault: ComplexArray
    accuracy: FloatArray

    @classmethod
    def build(cls, grid: _Grid, records: Sequence[PhasorRecord]) -> _RecordTable:
        n = len(records)
        seen: set[str] = set()
        for record in records:
            if not isinstance(record, PhasorRecord):
                raise FaultLocationError(
                    f"records must be PhasorRecord, got {type(record).__name__}", field="records"
                )
            if record.device_id in seen:
                raise FaultLocationError(
                    f"two records from device {record.device_id!r}",
                    field="records.device_id",
                    device_id=record.device_id,
                )
            seen.add(record.device_id)
        bus_id = np.fromiter((r.bus_id for r in records), dtype=np.int64, count=n)
        bus_row = lookup(grid.model.bus["id"], bus_id)
        if (bus_row < 0).any():
            k = int(np.argmax(bus_row < 0))
            raise FaultLocationError(
                f"record {records[k].device_id!r} is at bus {int(bus_id[k])}, "
                "which is not a bus of the model",
                field="records.bus_id",
                element_id=int(bus_id[k]),
                device_id=records[k].device_id,
            )
        branch = np.fromiter(
            (NO_ID if r.branch_id is None else r.branch_id for r in records), np.int64, n
        )
        branch_row = np.where(branch == NO_ID, -1, lookup(grid.branch_id, branch))
        bad = (branch != NO_ID) & (branch_row < 0)
        if bad.any():
            k = int(np.argmax(bad))
            raise FaultLocationError(
                f"record {records[k].device_id!r} measures branch {int(branch[k])}, which is not "
                "a line, transformer or switch of the model",
                field="records.branch_id",
                element_id=int(branch[k]),
                device_id=records[k].device_id,
            )
        safe = np.maximum(branch_row, 0)
        touching = (grid.branch_from[safe] == bus_row) | (grid.branch_to[safe] == bus_row)
        bad = (branch_row >= 0) & ~touching
        if bad.any():
            k = int(np.argmax(bad))
            raise FaultLocationError(
                f"record {records[k].device_id!r}: branch {int(branch[k])} does not end at its "
                f"bus {int(bus_id[k])}",
                field="records.branch_id",
                element_id=int(branch[k]),
                device_id=records[k].device_id,
            )
        zeros = np.zeros(3, dtype=np.complex128)

        def stack(name: str) -> ComplexArray:
            if not n:
                return np.zeros((0, 3), dtype=np.complex128)
            values = [getattr(r, name) for r in records]
            flat = np.concatenate([zeros if v is None else v for v in values])
            return flat.reshape(n, 3)

        return cls(
            device_id=tuple(r.device_id for r in records),
            bus_row=bus_row,
            branch_row=branch_row.astype(np.int64),
            u_pre=stack("u_pre_v"),
            u_fault=stack("u_fault_v"),
            i_pre=stack("i_pre_a"),
            i_fault=stack("i_fault_a"),
            accuracy=np.fromiter((r.accuracy_class for r in records), np.float64, n),
        )

    def __len__(self) -> int:
        return len(self.device_id)


# -- step 1: the zone ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Zone:
    feeder: int
    bus_rows: IntArray
    widened: bool
    unknown: tuple[int, ...]
    basis: str
    notes: tuple[str, ...]


def _zone_from_indicators(
    grid: _Grid, tripped_breaker: int | None, indicators: Mapping[int, bool | None]
) -> _Zone:
    topo = grid.topology
    switch_ids = grid.model.switch["id"].astype(np.int64)
    # switches of the supply tree that join two sections, by the bus below them
    child = np.flatnonzero(np.isin(topo.parent_branch, switch_ids))
    parent = topo.parent_bus[child]
    crossing = topo.section_of_bus[child] != topo.section_of_bus[parent]
    child = child[crossing]
    sw = topo.parent_branch[child]
    status = np.array([_status(indicators.get(int(s))) for s in sw.tolist()], dtype=np.int8)

    notes: list[str] = []
    if tripped_breaker is not None:
        head = int(tripped_breaker)
        if head not in topo.feeder_ids:
            raise FaultLocationError(
                f"tripped_breaker {head} is not the head of an energized feeder",
                field="tripped_breaker",
                element_id=head,
            )
    else:
        saw = child[status == 1]
        feeders = np.unique(topo.feeder_of_bus[saw])
        feeders = feeders[feeders >= 0]
        if feeders.size != 1:
            raise FaultLocationError(
                "no breaker tripped and the latched indicators do not lie on one feeder "
                f"(feeders {feeders.tolist()})",
                field="indicators",
            )
        head = int(feeders[0])
        notes.append(f"no breaker tripped; feeder {head} found from its latched indicators")
    on_feeder = topo.feeder_of_bus[child] == head
    stray = child[(status == 1) & ~on_feeder]
    if stray.size:
        raise FaultLocationError(
            f"indicator of switch {int(topo.parent_branch[stray[0]])} saw fault current but lies "
            f"off feeder {head}",
            field="indicators",
            element_id=int(topo.parent_branch[stray[0]]),
        )
    child, sw, status = child[on_feeder], sw[on_feeder], status[on_feeder]
    status[sw == head] = 1  # the trip (or the latched indicators below it) proves it
    true_rows = child[status == 1]
    deepest = true_rows[int(np.argmax(topo.depth[true_rows]))]
    above = grid.is_below(np.array([deepest]), child)[0]
    off_path = (status == 1) & ~above
    if off_path.any():
        other = int(sw[np.argmax(off_path)])
        raise FaultLocationError(
            f"indicators of switches {int(topo.parent_branch[deepest])} and {other} both saw "
            "fault current but lie on different branches: one of them is wrong",
            field="indicators",
            element_id=other,
        )
    overruled = sw[(status == 0) & above]
    if overruled.size:
        notes.append(
            f"indicator(s) {overruled.tolist()} reported no fault current although one below "
            "did; taken as failed"
        )
    # from the deepest section that saw the current, down through every unknown indicator
    sections = {int(topo.section_of_bus[deepest])}
    unknown_rows = child[status < 0]
    unknown_parent = topo.section_of_bus[topo.parent_bus[unknown_rows]]
    unknown_child = topo.section_of_bus[unknown_rows]
    merged: list[int] = []
    while True:
        grow = np.isin(unknown_parent, list(sections)) & ~np.isin(unknown_child, list(sections))
        if not grow.any():
            break
        sections.update(unknown_child[grow].tolist())
        merged += topo.parent_branch[unknown_rows[grow]].tolist()
    bus_rows = np.flatnonzero(np.isin(topo.section_of_bus, list(sections)))
    widened = len(sections) > 1
    if widened:
        notes.append(
            f"indicator(s) {sorted(merged)} unknown: the zone spans {len(sections)} sections"
        )
    return _Zone(head, bus_rows, widened, tuple(sorted(merged)), "indicators", tuple(notes))


def _status(value: bool | None) -> int:
    if value is None:
        return -1
    return 1 if value else 0


def _zone_result(grid: _Grid, zone: _Zone) -> dict[str, Any]:
    """The zone's fields of :class:`FaultLocation`."""
    model = grid.model
    in_zone = np.zeros(model.bus.size, dtype=bool)
    in_zone[zone.bus_rows] = True
    rows = lookup(
        model.bus["id"], np.concatenate([model.switch["from_bus"], model.switch["to_bus"]])
    )
    ends = np.where(rows >= 0, in_zone[np.maximum(rows, 0)], False).reshape(2, -1)
    bounding = model.switch["id"][ends[0] != ends[1]]
    return {
        "feeder": zone.feeder,
        "section_bus_ids": tuple(sorted(model.bus["id"][zone.bus_rows].tolist())),
        "bounding_switch_ids": tuple(sorted(int(s) for s in bounding)),
        "widened": zone.widened,
        "unknown_indicators": zone.unknown,
        "section_basis": zone.basis,
    }


# -- open conductors -------------------------------------------------------------------------------


def _unbalance(u_v: ComplexArray) -> tuple[FloatArray, FloatArray]:
    seq = symmetrical_components(u_v)
    positive = np.abs(seq[..., 1])
    ratio: FloatArray = np.divide(
        np.abs(seq[..., 2]), positive, out=np.zeros(positive.shape), where=positive > 0.0
    )
    return ratio, positive


def _broken_at_head(grid: _Grid, table: _RecordTable, head: int | None) -> bool:
    """The head's record shows a phase current that fell by more than any rose: a break."""
    if head is None:
        return False
    has = table.branch_row >= 0
    at_head = has & (grid.branch_id[np.maximum(table.branch_row, 0)] == head)
    if not at_head.any():
        return False
    k = int(np.flatnonzero(at_head)[0])
    change = np.abs(table.i_fault[k]) - np.abs(table.i_pre[k])
    return bool(-change.min() > change.max())


def _locate_open(grid: _Grid, table: _RecordTable, kind: str | None) -> FaultLocation:
    topo = grid.topology
    unb_pre, pos_pre = _unbalance(table.u_pre)
    unb_fault, _ = _unbalance(table.u_fault)
    live = (pos_pre > 0.0) & topo.energized[table.bus_row]
    high = live & (unb_fault - unb_pre >= UNBALANCE_STEP)
    if not high.any():
        raise FaultLocationError(
            "nothing to locate: no breaker tripped, no indicator latched and no record shows the "
            "voltage unbalance of a broken conductor"
            + ("" if len(table) else " (no records given)"),
            field="records" if kind in _OPEN_TYPES else "indicators",
        )
    feeders = np.unique(topo.feeder_of_bus[table.bus_row[high]])
    feeders = feeders[feeders >= 0]
    if feeders.size != 1:
        raise FaultLocationError(
            f"the unbalanced records lie on {feeders.size} feeders ({feeders.tolist()}), not one",
            field="records",
        )
    head = int(feeders[0])
    child, line_rows = grid.line_rows()
    on = topo.feeder_of_bus[child] == head
    child, line_rows = child[on], line_rows[on]
    low = live & ~high
    below = grid.is_below(table.bus_row, child)  # (records, lines)
    fits = below[high].all(axis=0) & ~below[low].any(axis=0)
    if not fits.any():
        raise FaultLocationError(
            "the balanced and unbalanced records do not bound one broken path "
            "(a record above the break is unbalanced, or one below it is not)",
            field="records",
        )
    line = grid.model.line
    ends = lookup(grid.model.bus["id"], np.concatenate([line["from_bus"], line["to_bus"]]))
    ends = ends.reshape(2, -1)[:, line_rows[fits]].ravel()
    sections = np.unique(topo.section_of_bus[ends])
    bus_rows = np.flatnonzero(np.isin(topo.section_of_bus, sections))
    zone = _Zone(head, bus_rows, sections.size > 1, (), "voltage_unbalance", ())
    # the broken phase: the lowest voltage (against its own pre-fault) below the break
    mv = grid.u_phase_v[table.bus_row[high]] >= grid.u_phase_v[ends].max() * 0.5
    rows = np.flatnonzero(high)[mv] if mv.any() else np.flatnonzero(high)
    ratio = np.abs(table.u_fault[rows]) / np.maximum(np.abs(table.u_pre[rows]), 1e-9)
    phase = _PHASES[int(np.argmin(ratio.mean(axis=0)))]
    candidates = line["id"][line_rows[fits]]
    notes = [
        "open conductor: located by the boundary between balanced and unbalanced voltages",
    ]
    if zone.widened:
        notes.append(
            f"the records cannot separate {sections.size} sections: the break is on one of "
            f"lines {sorted(candidates.tolist())}"
        )
    one = candidates.size == 1
    row = int(line_rows[fits][0]) if one else -1
    return FaultLocation(
        **_zone_result(grid, zone),
        fault_type=kind if kind is not None else "open",
        fault_type_classified=kind is None,
        phases=phase,
        method="none",
        reason=(
            "an open conductor draws no fault current, so there is no fault impedance to measure; "
            "the break lies between the last balanced and the first unbalanced device"
        ),
        line_id=int(candidates[0]) if one else None,
        from_bus=int(line["from_bus"][row]) if one else None,
        to_bus=int(line["to_bus"][row]) if one else None,
        records_used=tuple(table.device_id[k] for k in np.flatnonzero(live).tolist()),
        notes=tuple(notes),
    )


# -- shunt faults ----------------------------------------------------------------------------------


def _locate_shunt(grid: _Grid, table: _RecordTable, zone: _Zone, kind: str | None) -> FaultLocation:
    topo = grid.topology
    zone_fields = _zone_result(grid, zone)
    entry = int(
        zone.bus_rows[
            np.argmin(
                np.where(
                    topo.energized[zone.bus_rows], topo.depth[zone.bus_rows], np.iinfo(np.int64).max
                )
            )
        ]
    )
    current = _current_records(grid, table, entry)
    notes = list(zone.notes)
    if current.rows.size == 0:
        return FaultLocation(
            **zone_fields,
            fault_type=kind if kind is not None else "unknown",
            fault_type_classified=False,
            phases="",
            method="none",
            reason="no fault record with current on the path from the feeder head to the zone",
            notes=tuple(notes),
        )
    fault_type, phases, classified = _classify(current, kind)
    lines = _zone_lines(grid, zone)
    if lines.child.size == 0:
        return FaultLocation(
            **zone_fields,
            fault_type=fault_type,
            fault_type_classified=classified,
            phases=_phase_letters(phases),
            method="none",
            reason="the zone holds no line on the medium-voltage path",
            notes=tuple(notes),
        )
    estimate = _impedance_estimates(grid, current, lines, fault_type, phases)
    # only lines the impedance estimate can reach go on to the voltage comparison
    off = np.maximum(np.maximum(-estimate.x_m, estimate.x_m - lines.length_m), 0.0)
    penalty = (off / estimate.sigma_m) ** 2
    plausible = np.flatnonzero(penalty <= penalty.min() + PLAUSIBLE_PENALTY)
    lines, estimate = lines.subset(plausible), estimate.subset(plausible)
    voltage = _voltage_devices(grid, table, zone, current)
    refined = _refine(
        grid,
        current=current,
        lines=lines,
        estimate=estimate,
        voltage=voltage,
        zone_rows=zone.bus_rows,
    )
    order = np.argsort(refined.residual, kind="stable")
    best = int(order[0])
    line = grid.model.line
    cands = []
    for k in order[:MAX_CANDIDATES].tolist():
        if k != best and refined.residual[k] > refined.residual[best] + 9.0:
            continue
        row = int(lines.line_row[k])
        cands.append(
            DistanceCandidate(
                line_id=int(line["id"][row]),
                from_bus=int(line["from_bus"][row]),
                to_bus=int(line["to_bus"][row]),
                distance_m=float(refined.distance_from_bus[k]),
                sigma_m=float(refined.sigma_m[k]),
                residual=float(refined.residual[k]),
            )
        )
    top = cands[0]
    if estimate.resistive:
        notes.append(
            "fault resistance significant: distance from the reactive part (Takagi)"
            if fault_type != "arc"
            else "arc: distance from the fundamental phasors as a resistive ground fault (Takagi)"
        )
    used = current.device_id + tuple(voltage.device_id[k] for k in refined.voltage_used)
    return FaultLocation(
        **zone_fields,
        fault_type=fault_type,
        fault_type_classified=classified,
        phases=_phase_letters(phases),
        method="impedance+voltage" if refined.voltage_used else "impedance",
        line_id=top.line_id,
        from_bus=top.from_bus,
        to_bus=top.to_bus,
        distance_m=top.distance_m,
        sigma_m=top.sigma_m,
        fault_resistance_ohm=estimate.resistance_ohm if estimate.resistive else None,
        candidates=tuple(cands),
        records_used=used,
        notes=tuple(notes),
    )


def _phase_letters(phases: tuple[int, ...]) -> str:
    return "".join(_PHASES[p] for p in phases)


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


def _current_records(grid: _Grid, table: _RecordTable, entry: int) -> _Current:
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


def _zone_lines(grid: _Grid, zone: _Zone) -> _Lines:
    child, line_rows = grid.line_rows()
    keep = np.isin(child, zone.bus_rows) & np.isin(grid.topology.parent_bus[child], zone.bus_rows)
    keep &= grid.trafos[child] == grid.trafos[zone.bus_rows].min()
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
    grid: _Grid,
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


def _voltage_devices(grid: _Grid, table: _RecordTable, zone: _Zone, current: _Current) -> _Voltage:
    model = grid.model
    in_zone = np.zeros(model.bus.size, dtype=bool)
    in_zone[zone.bus_rows] = True
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
    grid: _Grid,
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
    ) / (ahead - behind)[None, :, None]
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
        grid: _Grid,
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


def _junction(grid: _Grid, rows: IntArray, tops: IntArray, zone_rows: IntArray) -> IntArray:
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
