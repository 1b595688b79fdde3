"""The result of a state estimation and its JSON document.

:class:`StateEstimate` holds numpy tables in model order (SI-prefixed units in the names):

* ``bus``: ``id``, ``energized``, ``observable``, ``u_pu``, ``u_kv``, ``u_angle_deg``, ``u_sigma_pu``,
  ``u_angle_sigma_deg`` (NaN where not estimated, or where uncertainties were not asked for)
* ``branch`` (lines, transformers, switches): ``id``, ``kind`` (0 line, 1 transformer, 2 switch),
  ``energized``, ``i_from_ka``, ``i_to_ka``, ``i_ka``, ``loading_percent``, ``p_from_mw``,
  ``q_from_mvar``, ``p_to_mw``, ``q_to_mvar``, ``p_loss_mw``, ``q_loss_mvar``
* ``load`` (load estimation): ``id``, ``estimated``, ``measured`` (by a real measurement),
  ``pseudo`` (by a pseudo-measurement), ``p_mw``, ``q_mvar`` (consumption)
* ``source``: ``id``, ``p_mw``, ``q_mvar``

and per measurement (the final set, pseudo-measurements included): the estimated value of what it
measures and its weighted residual ``max |z - h(x)| / sigma`` over its components. The document of
:meth:`StateEstimate.as_dict` is described in ``docs/estimation.md``.

The tables, ``measurements``, ``estimated_value`` and ``weighted_residual`` are built from the
engine's output when first read (:class:`ResultSource`) and kept: an estimate whose caller only
needs the chi-square test, or the bus voltages, does not pay for the rest. The values are the
same whenever they are read (the source holds the engine's output of that estimate and its own
measurement readings, never a buffer the next estimate writes).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.estimation.bad_data import ChiSquareTest
from openfeeder.analysis.estimation.engine_wls import EngineEstimate
from openfeeder.analysis.estimation.locate import LocatedMeasurements, Target
from openfeeder.analysis.estimation.measurement_set import (
    END_TO,
    QUANTITIES,
    MeasurementSet,
    Quantity,
)
from openfeeder.analysis.estimation.observability import Observability
from openfeeder.analysis.estimation.prepared import model_index
from openfeeder.model.grid import GridModel

__all__ = ["BadDataRemoval", "Once", "ResultSource", "StateEstimate", "build_result"]

Table = npt.NDArray[np.void]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_BUS_DTYPE: Final = np.dtype(
    [
        ("id", "i8"),
        ("energized", "?"),
        ("observable", "?"),
        ("u_pu", "f8"),
        ("u_kv", "f8"),
        ("u_angle_deg", "f8"),
        ("u_sigma_pu", "f8"),
        ("u_angle_sigma_deg", "f8"),
    ]
)
_BRANCH_DTYPE: Final = np.dtype(
    [
        ("id", "i8"),
        ("kind", "i1"),
        ("energized", "?"),
        ("i_from_ka", "f8"),
        ("i_to_ka", "f8"),
        ("i_ka", "f8"),
        ("loading_percent", "f8"),
        ("p_from_mw", "f8"),
        ("q_from_mvar", "f8"),
        ("p_to_mw", "f8"),
        ("q_to_mvar", "f8"),
        ("p_loss_mw", "f8"),
        ("q_loss_mvar", "f8"),
    ]
)
_LOAD_DTYPE: Final = np.dtype(
    [
        ("id", "i8"),
        ("estimated", "?"),
        ("measured", "?"),
        ("pseudo", "?"),
        ("p_mw", "f8"),
        ("q_mvar", "f8"),
    ]
)
_SOURCE_DTYPE: Final = np.dtype([("id", "i8"), ("p_mw", "f8"), ("q_mvar", "f8")])


@dataclass(frozen=True, slots=True)
class BadDataRemoval:
    """One measurement removed as bad data, with the evidence."""

    measurement_id: str
    quantity: str
    normalized_residual: float
    objective_before: float


T = TypeVar("T")


class Once(Generic[T]):
    """A value computed by ``build`` on first use and kept (thread-safe)."""

    __slots__ = ("_build", "_lock", "_value")

    def __init__(self, build: Callable[[], T]) -> None:
        self._build: Callable[[], T] | None = build
        self._lock = threading.Lock()
        self._value: T | None = None

    @classmethod
    def of(cls, value: T) -> Once[T]:
        """An already known value."""
        once = cls(lambda: value)
        once._value, once._build = value, None
        return once

    def __call__(self) -> T:
        with self._lock:
            if self._build is not None:
                self._value, self._build = self._build(), None
            return self._value  # type: ignore[return-value]  # set above


@dataclass(frozen=True, slots=True, eq=False)
class ResultSource:
    """What the lazily built parts of a :class:`StateEstimate` are built from."""

    model: GridModel
    located: Once[LocatedMeasurements]
    """The final measurement set (readings of this estimate), located."""
    estimate: Once[EngineEstimate]
    """The engine's output in model order (its power factor is not used here)."""
    estimated: BoolArray
    energized: BoolArray
    u_sigma_pu: FloatArray
    angle_sigma_rad: FloatArray


@dataclass(frozen=True, eq=False)
class StateEstimate:
    """A state estimate; see the module docstring for the tables (built when first read)."""

    case: str
    method: str
    pseudo: MeasurementSet
    observability: Observability
    initial_observability: Observability | None
    """Of the measurements as given, before pseudo-measurements (checked for the policy
    ``needed``, which depends on it; None with ``all``)."""
    chi_square: tuple[ChiSquareTest, ...]
    """One test per solve of the bad-data loop; the last is the final estimate's."""
    removed: tuple[BadDataRemoval, ...]
    kept_critical: str | None
    """A measurement the bad-data test pointed at but that could not go (critical)."""
    exact_identification: bool
    solves: int
    """Engine solves (bad-data re-estimations and passes for magnitude-only currents)."""
    origin: ResultSource = field(repr=False)
    """What the tables are built from when first read."""

    @cached_property
    def bus(self) -> Table:
        return _bus_table(self.origin)

    @cached_property
    def branch(self) -> Table:
        return _branch_table(self.origin)

    @cached_property
    def load(self) -> Table:
        return _load_table(self.origin)

    @cached_property
    def source(self) -> Table:
        return _source_table(self.origin)

    @cached_property
    def measurements(self) -> MeasurementSet:
        """The set the final estimate used (the given one plus pseudo-measurements, minus bad
        data)."""
        return self.origin.located().measurements

    @cached_property
    def _per_measurement(self) -> tuple[FloatArray, FloatArray]:
        src = self.origin
        return _per_measurement(src.model, src.located(), src.estimate(), src.estimated)

    @property
    def estimated_value(self) -> FloatArray:
        """Per measurement (rows of ``measurements``): (first, second) component, e.g. (P, Q)."""
        return self._per_measurement[0]

    @property
    def weighted_residual(self) -> FloatArray:
        return self._per_measurement[1]

    @property
    def objective(self) -> float:
        return self.chi_square[-1].objective if self.chi_square else 0.0

    @property
    def unobservable_bus_ids(self) -> npt.NDArray[np.int64]:
        return self.observability.unobservable_bus_ids

    def as_dict(self) -> dict[str, Any]:
        """The JSON document (``openfeeder se --json``; see ``docs/estimation.md``)."""
        final = self.chi_square[-1] if self.chi_square else None
        bus = self.bus
        estimated = bus["energized"] & bus["observable"]
        return {
            "case": self.case,
            "method": self.method,
            "summary": {
                "buses": int(bus.size),
                "estimated_buses": int(estimated.sum()),
                "unobservable_buses": self.unobservable_bus_ids.tolist(),
                "measurements": len(self.measurements) - len(self.pseudo),
                "pseudo_measurements": len(self.pseudo),
                "objective": self.objective,
                "chi_square": None if final is None else final.as_dict(),
                "bad_data_removed": [
                    {
                        "id": r.measurement_id,
                        "quantity": r.quantity,
                        "normalized_residual": r.normalized_residual,
                        "objective_before": r.objective_before,
                    }
                    for r in self.removed
                ],
                "bad_data_kept_critical": self.kept_critical,
                "identification": "exact" if self.exact_identification else "largest weighted",
                "solves": self.solves,
                "uncertainty": bool(np.isfinite(bus["u_sigma_pu"][estimated]).any()),
                "u_min_pu": _nan_reduce(np.nanmin, bus["u_pu"][estimated]),
                "u_max_pu": _nan_reduce(np.nanmax, bus["u_pu"][estimated]),
            },
            "observability": {
                "before_pseudo": None
                if self.initial_observability is None
                else self.initial_observability.as_dict(),
                "after_pseudo": self.observability.as_dict(),
                "pseudo_measurements": self.pseudo.records(),
            },
            "buses": _rows(bus),
            "branches": _rows(self.branch),
            "loads": _rows(self.load),
            "sources": _rows(self.source),
            "measurements": [
                {
                    "id": mid,
                    "quantity": QUANTITIES[int(q)].value,
                    "pseudo": bool(pseudo),
                    "estimated": [_num(v) for v in value],
                    "weighted_residual": _num(residual),
                }
                for mid, q, pseudo, value, residual in zip(
                    self.measurements.ids,
                    self.measurements.table["quantity"].tolist(),
                    self.measurements.table["pseudo"].tolist(),
                    self.estimated_value.tolist(),
                    self.weighted_residual.tolist(),
                    strict=True,
                )
            ],
        }


def build_result(
    model: GridModel,
    located: Once[LocatedMeasurements],
    estimate: Once[EngineEstimate],
    *,
    observability: Observability,
    first_observability: Observability | None,
    pseudo: MeasurementSet,
    estimated: BoolArray,
    tests: tuple[ChiSquareTest, ...],
    removals: tuple[BadDataRemoval, ...],
    kept_critical: str | None,
    exact_identification: bool,
    u_sigma_pu: FloatArray,
    angle_sigma_rad: FloatArray,
    solves: int,
    method: str,
) -> StateEstimate:
    """The estimate; its tables are built from ``located`` and ``estimate`` when first read."""
    return StateEstimate(
        case=model.name,
        method=method,
        pseudo=pseudo,
        observability=observability,
        initial_observability=first_observability,
        chi_square=tests,
        removed=removals,
        kept_critical=kept_critical,
        exact_identification=exact_identification,
        solves=solves,
        origin=ResultSource(
            model=model,
            located=located,
            estimate=estimate,
            estimated=estimated,
            energized=observability.energized,
            u_sigma_pu=u_sigma_pu,
            angle_sigma_rad=angle_sigma_rad,
        ),
    )


def _bus_table(origin: ResultSource) -> Table:
    model, estimated, estimate = origin.model, origin.estimated, origin.estimate()
    bus = np.zeros(model.bus.size, dtype=_BUS_DTYPE)
    bus["id"] = model.bus["id"]
    bus["energized"] = origin.energized
    bus["observable"] = estimated
    nan = np.full(model.bus.size, np.nan)
    bus["u_pu"] = np.where(estimated, estimate.u_pu, nan)
    bus["u_kv"] = np.where(estimated, estimate.u_kv, nan)
    bus["u_angle_deg"] = np.where(estimated, np.rad2deg(estimate.u_angle_rad), nan)
    bus["u_sigma_pu"] = np.where(estimated, origin.u_sigma_pu, nan)
    bus["u_angle_sigma_deg"] = np.where(estimated, np.rad2deg(origin.angle_sigma_rad), nan)
    return bus


def _branch_table(origin: ResultSource) -> Table:
    model, estimated, estimate = origin.model, origin.estimated, origin.estimate()
    branches = origin.located().branches
    live = estimated[np.maximum(branches.from_row, 0)] | estimated[np.maximum(branches.to_row, 0)]
    live &= branches.connected
    branch = np.zeros(branches.id.size, dtype=_BRANCH_DTYPE)
    branch["id"] = branches.id
    branch["kind"] = branches.kind
    branch["energized"] = live
    values = estimate.branch
    for name in ("i_from_ka", "i_to_ka", "p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar"):
        branch[name] = np.where(live, values[name], np.nan)
    branch["i_ka"] = np.maximum(branch["i_from_ka"], branch["i_to_ka"])
    branch["p_loss_mw"] = branch["p_from_mw"] + branch["p_to_mw"]
    branch["q_loss_mvar"] = branch["q_from_mvar"] + branch["q_to_mvar"]
    loading = values["loading"] * 100.0
    switch = branches.kind == 2
    loading[switch] = branch["i_ka"][switch] / model.switch["i_rated_ka"] * 100.0
    branch["loading_percent"] = np.where(live, loading, np.nan)
    return branch


def _load_table(origin: ResultSource) -> Table:
    model, estimated, estimate = origin.model, origin.estimated, origin.estimate()
    located = origin.located()
    table = located.measurements.table
    load = np.zeros(model.load.size, dtype=_LOAD_DTYPE)
    load["id"] = model.load["id"]
    load_bus = _rows_of(model, "load")
    load_estimated = (
        estimated[load_bus] & model.load["in_service"] if load.size else np.zeros(0, bool)
    )
    load["estimated"] = load_estimated
    on_load = (located.target == Target.LOAD) & (table["quantity"] == QUANTITIES.index(Quantity.PQ))
    real = on_load & ~table["pseudo"]
    load["measured"][located.target_row[real]] = True
    load["pseudo"][located.target_row[on_load & table["pseudo"]]] = True
    load["p_mw"] = np.where(load_estimated, estimate.appliance_p_mw[Target.LOAD], np.nan)
    load["q_mvar"] = np.where(load_estimated, estimate.appliance_q_mvar[Target.LOAD], np.nan)
    return load


def _source_table(origin: ResultSource) -> Table:
    model, estimated, estimate = origin.model, origin.estimated, origin.estimate()
    source = np.zeros(model.source.size, dtype=_SOURCE_DTYPE)
    source["id"] = model.source["id"]
    source_estimated = estimated[_rows_of(model, "source")] if source.size else np.zeros(0, bool)
    source["p_mw"] = np.where(source_estimated, estimate.appliance_p_mw[Target.SOURCE], np.nan)
    source["q_mvar"] = np.where(source_estimated, estimate.appliance_q_mvar[Target.SOURCE], np.nan)
    return source


def _rows_of(model: GridModel, name: str) -> npt.NDArray[np.int64]:
    return model_index(model).bus_row[name]


def _per_measurement(
    model: GridModel, located: LocatedMeasurements, estimate: EngineEstimate, estimated: BoolArray
) -> tuple[FloatArray, FloatArray]:
    """Estimated (first, second) component of each measurement and its weighted residual."""
    table = located.measurements.table
    n = len(located.measurements)
    value = np.full((n, 2), np.nan)
    sigma = np.full((n, 2), np.nan)
    measured = np.full((n, 2), np.nan)
    angle = np.zeros((n, 2), dtype=bool)
    bus_row = np.maximum(located.bus_row, 0)
    branch_row = np.maximum(located.target_row, 0)
    to = table["end"] == END_TO
    mask = located.of_quantity

    volt = mask(Quantity.U, Quantity.U_PHASOR)
    value[volt, 0] = estimate.u_kv[bus_row[volt]]
    measured[volt, 0], sigma[volt, 0] = table["u_kv"][volt], table["u_sigma_kv"][volt]
    phasor = mask(Quantity.U_PHASOR)
    value[phasor, 1] = np.rad2deg(estimate.u_angle_rad[bus_row[phasor]])
    measured[phasor, 1], sigma[phasor, 1] = (
        table["u_angle_deg"][phasor],
        table["angle_sigma_deg"][phasor],
    )
    angle[phasor, 1] = True

    pq = mask(Quantity.PQ)
    for target in Target:
        k = pq & (located.target == target)
        if not k.any():
            continue
        if target is Target.BUS:
            p, q = estimate.injection_p_mw[bus_row[k]], estimate.injection_q_mvar[bus_row[k]]
        elif target is Target.BRANCH:
            b, t = branch_row[k], to[k]
            p = np.where(t, estimate.branch["p_to_mw"][b], estimate.branch["p_from_mw"][b])
            q = np.where(t, estimate.branch["q_to_mvar"][b], estimate.branch["q_from_mvar"][b])
        else:
            p = estimate.appliance_p_mw[target][located.target_row[k]]
            q = estimate.appliance_q_mvar[target][located.target_row[k]]
        value[k, 0], value[k, 1] = p, q
    measured[pq, 0], sigma[pq, 0] = table["p_mw"][pq], table["p_sigma_mw"][pq]
    measured[pq, 1], sigma[pq, 1] = table["q_mvar"][pq], table["q_sigma_mvar"][pq]

    current = mask(Quantity.I, Quantity.I_PHASOR)
    b, t = branch_row[current], to[current]
    value[current, 0] = np.where(t, estimate.branch["i_to_ka"][b], estimate.branch["i_from_ka"][b])
    measured[current, 0], sigma[current, 0] = table["i_ka"][current], table["i_sigma_ka"][current]
    i_phasor = mask(Quantity.I_PHASOR)
    b, t = branch_row[i_phasor], to[i_phasor]
    s = np.where(
        t,
        estimate.branch["p_to_mw"][b] + 1j * estimate.branch["q_to_mvar"][b],
        estimate.branch["p_from_mw"][b] + 1j * estimate.branch["q_from_mvar"][b],
    )
    u_angle = estimate.u_angle_rad[bus_row[i_phasor]]
    value[i_phasor, 1] = np.rad2deg(u_angle - np.angle(s))
    measured[i_phasor, 1] = table["i_angle_deg"][i_phasor]
    sigma[i_phasor, 1] = table["angle_sigma_deg"][i_phasor]
    angle[i_phasor, 1] = True

    difference = measured - value
    difference[angle] = (difference[angle] + 180.0) % 360.0 - 180.0
    with np.errstate(invalid="ignore"):
        weighted = np.abs(difference) / sigma
    here = estimated[bus_row] & (located.bus_row >= 0)
    value[~here] = np.nan
    residual = np.where(
        here, np.nanmax(np.where(np.isnan(weighted), -1.0, weighted), axis=1), np.nan
    )
    residual = np.where(residual < 0, np.nan, residual)
    del model
    return value, residual


def _rows(table: Table) -> list[dict[str, Any]]:
    names = table.dtype.names or ()
    columns = [table[name].tolist() for name in names]
    return [
        {name: _num(value) for name, value in zip(names, row, strict=True)}
        for row in zip(*columns, strict=True)
    ]


def _num(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nan_reduce(function: Any, values: FloatArray) -> float | None:
    if values.size == 0 or np.isnan(values).all():
        return None
    return float(function(values))
