"""The work an estimate shares with the next one of the same model and measurement placement.

A periodic estimator sees the same meters at the same places every cycle, only their readings
change. What depends on the places alone is done once and kept (:class:`PlacementCache`, the last
:data:`PLACEMENT_CACHE_SIZE` model and placement pairs): locating the measurements on the model,
the pseudo-measurements, both observability reports, the estimated buses and the WLS state
columns. A later estimate whose measurements have the same quantities at the same buses, elements
and branch ends, in the same order and with the same pseudo flags, on the same model object and
with the same pseudo-measurement options, takes them from here and only puts the new readings in.
The engine keeps its converted model the same way (:mod:`.engine_wls`).

Models are recognised by identity: their tables must not be written in place (as
:mod:`openfeeder.model.grid` asks anyway).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.estimation.locate import LocatedMeasurements
from openfeeder.analysis.estimation.measurement_set import MeasurementSet
from openfeeder.analysis.estimation.model_cache import RecentPerModel
from openfeeder.analysis.estimation.observability import Observability, PseudoOptions
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "PLACEMENT_CACHE_SIZE",
    "ModelIndex",
    "Placement",
    "PlacementCache",
    "model_index",
    "placement_key",
]

PLACEMENT_CACHE_SIZE: Final = 8


@dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """What an estimate derived from where its measurements are (module docstring)."""

    model: GridModel
    given_ids: tuple[str, ...]
    located: LocatedMeasurements
    """The given measurements and the pseudo-measurements, located (values of the first call)."""
    pseudo: MeasurementSet
    first_observability: Observability | None
    observability: Observability
    estimated: npt.NDArray[np.bool_]
    columns: npt.NDArray[np.int64]
    key: bytes
    """:func:`placement_key` of the measurements and options it was made for."""
    memo: dict[str, Any] = field(default_factory=dict, repr=False)
    """Per-placement work made on first use (the estimator's reading plan)."""

    def with_readings(self, measurements: MeasurementSet) -> LocatedMeasurements:
        """The located set with the readings of ``measurements`` (same placement) instead."""
        if measurements.ids == self.given_ids:
            ids = self.located.measurements.ids
            full = MeasurementSet.joined((measurements, self.pseudo), ids=ids)
        else:
            full = measurements.concat(self.pseudo)
        old = self.located
        return LocatedMeasurements(
            measurements=full,
            branches=old.branches,
            target=old.target,
            target_row=old.target_row,
            bus_row=old.bus_row,
        ).with_placement_of(old)


def placement_key(measurements: MeasurementSet, options: PseudoOptions) -> bytes:
    """The placement of ``measurements`` and the pseudo-measurement options, as bytes."""
    column = measurements.column
    parts = [
        str((options.policy.value, options.sigma_fraction, options.sigma_floor_mw)).encode(),
        str(options.voltage_sigma_pu).encode(),
        column("quantity").tobytes(),
        column("bus").tobytes(),
        column("element").tobytes(),
        column("end").tobytes(),
        column("pseudo").tobytes(),
    ]
    parts.extend(
        b"-" if forecast is None else np.asarray(forecast, np.float64).tobytes()
        for forecast in (options.load_p_mw, options.load_q_mvar)
    )
    return b"|".join(parts)


class PlacementCache(RecentPerModel[bytes, Placement]):
    """The last few :class:`Placement` by model identity and :func:`placement_key`."""

    def __init__(self, size: int = PLACEMENT_CACHE_SIZE) -> None:
        super().__init__(size)


_APPLIANCE_TABLES: Final = ("load", "generator", "source", "shunt")


@dataclass(frozen=True, slots=True, eq=False)
class ModelIndex:
    """Row lookups of one model that every estimate needs."""

    model: GridModel
    bus_row: dict[str, npt.NDArray[np.int64]]
    """Per appliance table (``load``, ``generator``, ``source``, ``shunt``): each one's bus row."""


_INDEX_LOCK: Final = threading.Lock()
_INDEXES: Final[OrderedDict[int, ModelIndex]] = OrderedDict()


def model_index(model: GridModel) -> ModelIndex:
    """The :class:`ModelIndex` of ``model`` (kept for the last few models, by identity)."""
    with _INDEX_LOCK:
        index = _INDEXES.get(id(model))
        if index is not None and index.model is model:
            _INDEXES.move_to_end(id(model))
            return index
    bus_id = model.bus["id"]
    index = ModelIndex(
        model=model,
        bus_row={name: lookup(bus_id, model.table(name)["bus"]) for name in _APPLIANCE_TABLES},
    )
    with _INDEX_LOCK:
        _INDEXES[id(model)] = index
        while len(_INDEXES) > PLACEMENT_CACHE_SIZE:
            _INDEXES.popitem(last=False)
    return index
