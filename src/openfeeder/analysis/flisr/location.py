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
    indicator (where MV loads are wye-grounded the residual current of the two healthy phases may
    trip the breaker on ground overcurrent; the head record then shows one phase current *falling*,
    which no short circuit does, and with no indicator latched this is taken as a break). Downstream of a broken phase the voltage is strongly unbalanced (negative sequence
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
    millisecond offsets are tens of degrees. All predictions come from one reference record (the
    most precise), so its errors move them together: they are treated as correlated noise
    (generalized least squares with the record's errors as nuisance parameters). The misfit (in
    squared standard deviations) of the impedance estimate and of the voltages ranks the lines the
    impedance estimate can reach (within 5 sigma; ``candidates``, best first) and is minimized over
    ``x`` on each. Devices behind a transformer are not used for distance.

Assumptions: radial operation, solidly grounded MV (zero-sequence current returns through the
source), lines described by sequence impedances. Not modelled: the change of cable charging current
during the fault, mutual coupling between feeders, load that changes with the voltage sag.
Everything runs on arrays of the zone and the path to it (step 2 lives in the private
:mod:`._floc_distance`); docs/flisr-location.md has the measured accuracy and run times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.faults import symmetrical_components
from openfeeder.analysis.flisr._floc_distance import (
    MODEL_SIGMA_FRACTION,
    RESISTIVE_Z,
    Grid,
    RecordArrays,
    estimate_shunt,
)
from openfeeder.errors import AnalysisError
from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import analyze_topology

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
"""Fault types :func:`locate_fault` knows (``fault_type``), as in :mod:`openfeeder.sim.faults`.
The order is fixed: edge devices publish a type as its index here."""
_OPEN_TYPES: Final = frozenset({"open", "open_ground"})
UNBALANCE_STEP: Final = 0.1
"""Rise of ``|U2| / |U1|`` (fault minus pre-fault) that puts a device below a broken conductor."""
_PHASES: Final = "abc"


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
    grid = Grid.build(model, topology)
    table = _record_arrays(grid, records)
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


# -- records as arrays ------------------------------------------------------------------------------


def _record_arrays(grid: Grid, records: Sequence[PhasorRecord]) -> RecordArrays:
    """The records as arrays; every bus and branch checked against the model."""
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

    return RecordArrays(
        device_id=tuple(r.device_id for r in records),
        bus_row=bus_row,
        branch_row=branch_row.astype(np.int64),
        u_pre=stack("u_pre_v"),
        u_fault=stack("u_fault_v"),
        i_pre=stack("i_pre_a"),
        i_fault=stack("i_fault_a"),
        accuracy=np.fromiter((r.accuracy_class for r in records), np.float64, n),
    )


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
    grid: Grid, tripped_breaker: int | None, indicators: Mapping[int, bool | None]
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
    if true_rows.size == 0:  # a head switch inside one section: nothing bounds the feeder
        raise FaultLocationError(
            f"feeder head {head} does not separate two switching sections",
            field="tripped_breaker",
            element_id=head,
        )
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


def _zone_result(grid: Grid, zone: _Zone) -> dict[str, Any]:
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


def _broken_at_head(grid: Grid, table: RecordArrays, head: int | None) -> bool:
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


def _locate_open(grid: Grid, table: RecordArrays, kind: str | None) -> FaultLocation:
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


def _locate_shunt(grid: Grid, table: RecordArrays, zone: _Zone, kind: str | None) -> FaultLocation:
    found = estimate_shunt(grid, table, zone.bus_rows, kind)
    notes = list(zone.notes)
    line = grid.model.line
    candidates = tuple(
        DistanceCandidate(
            line_id=int(line["id"][fit.line_row]),
            from_bus=int(line["from_bus"][fit.line_row]),
            to_bus=int(line["to_bus"][fit.line_row]),
            distance_m=fit.distance_m,
            sigma_m=fit.sigma_m,
            residual=fit.residual,
        )
        for fit in found.fits
    )
    common = {
        **_zone_result(grid, zone),
        "fault_type": found.fault_type,
        "fault_type_classified": found.classified,
        "phases": "".join(_PHASES[p] for p in found.phases),
    }
    if not candidates:
        return FaultLocation(**common, method="none", reason=found.reason, notes=tuple(notes))
    if found.resistive:
        notes.append(
            "arc: distance from the fundamental phasors as a resistive ground fault (Takagi)"
            if found.fault_type == "arc"
            else "fault resistance significant: distance from the reactive part (Takagi)"
        )
    top = candidates[0]
    return FaultLocation(
        **common,
        method="impedance+voltage" if found.voltage_devices else "impedance",
        line_id=top.line_id,
        from_bus=top.from_bus,
        to_bus=top.to_bus,
        distance_m=top.distance_m,
        sigma_m=top.sigma_m,
        fault_resistance_ohm=found.resistance_ohm if found.resistive else None,
        candidates=candidates,
        records_used=found.current_devices + found.voltage_devices,
        notes=tuple(notes),
    )
