"""Where the twin's virtual devices sit and what each one measures.

A :class:`DevicePlacement` is one device: a smart meter, a feeder terminal unit (FTU) or a phasor
measurement unit (PMU). It sits at a bus, whose phase-to-ground voltages it measures, and may measure
the current of one element there: a branch (line, transformer, switch) at the end touching that bus,
or a load. The measurement model (:mod:`openfeeder.sim.measurements`) turns a solved phasor state into
what every placed device reports.

Placements come from a case's ``measurement`` table (:func:`placements_from_case`) or from the rules
a utility rolling out automation would follow (:func:`default_placements`): a smart meter at every
load, an FTU at every automated switch, a PMU at the head of every feeder. :func:`check_placements`
verifies them against a model before a twin runs, so a typo in a scenario fails at load time with
the device and the field named, not as a wrong number in a measurement file hours later.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.errors import ConfigError
from openfeeder.model.components import NO_ID, BranchEnd, MeasurementKind
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "DEFAULT_ACCURACY_CLASS",
    "DEVICE_ID_PATTERN",
    "DevicePlacement",
    "PlacementError",
    "check_placements",
    "default_placements",
    "placements_from_case",
]

DEVICE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""Device ids are MQTT topic levels and file names: letters, digits, ``_ . -``, at most 64."""

DEFAULT_ACCURACY_CLASS: Final[Mapping[MeasurementKind, float]] = MappingProxyType(
    {
        # IEC 62053-21 class 1 is the usual residential smart meter.
        MeasurementKind.METER: 1.0,
        # FTUs on medium voltage use protection/metering CTs and VTs of class 0.5 (IEC 61869).
        MeasurementKind.FTU: 0.5,
        # PMUs sit on class 0.1 instrument transformers; the total vector error that results stays
        # well inside IEEE C37.118.1's 1 % (see openfeeder.sim.measurements).
        MeasurementKind.PMU: 0.1,
    }
)
"""Accuracy class (%) a placement gets when none is given."""

_KINDS: Final = tuple(MeasurementKind)
_ENDS: Final = tuple(BranchEnd)


class PlacementError(ConfigError):
    """A device placement is unusable; ``device_id`` and ``field`` say which and where.

    ``field`` is a :class:`DevicePlacement` attribute (``device_id``, ``bus_id``, ``element_id``,
    ``element_end``, ``accuracy_class``, ``kind``) or ``measurement`` for a case row.
    """

    def __init__(self, message: str, *, device_id: str, field: str) -> None:
        super().__init__(f"device {device_id!r}, field '{field}': {message}")
        self.device_id = device_id
        self.field = field


@dataclass(frozen=True, slots=True)
class DevicePlacement:
    """One virtual device: where it is, what it measures, how accurate it is.

    The device measures the voltage of ``bus_id`` and, unless ``element_id`` is
    :data:`~openfeeder.model.components.NO_ID`, the current of that element: a branch at its
    ``element_end`` (which must touch ``bus_id``) or a load (at ``bus_id``). Currents are taken into
    the element, so ``P = V I*`` is the power flowing from the bus into the element.
    """

    device_id: str
    kind: MeasurementKind
    bus_id: int
    element_id: int = NO_ID
    element_end: BranchEnd = BranchEnd.FROM
    accuracy_class: float = math.nan
    """Accuracy class in %; NaN (the default) takes :data:`DEFAULT_ACCURACY_CLASS` of the kind."""
    measurement_id: int | None = None
    """The row of the case's ``measurement`` table this device comes from, if any."""

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not DEVICE_ID_PATTERN.fullmatch(self.device_id):
            raise PlacementError(
                "a device id is 1 to 64 characters of letters, digits, '_', '.' or '-'",
                device_id=str(self.device_id),
                field="device_id",
            )
        try:
            kind = MeasurementKind(self.kind)
        except ValueError:
            raise PlacementError(
                f"unknown kind {self.kind!r}; expected one of {[k.value for k in _KINDS]}",
                device_id=self.device_id,
                field="kind",
            ) from None
        try:
            end = BranchEnd(self.element_end)
        except ValueError:
            raise PlacementError(
                f"unknown element end {self.element_end!r}; expected 'from' or 'to'",
                device_id=self.device_id,
                field="element_end",
            ) from None
        accuracy = float(self.accuracy_class)
        if math.isnan(accuracy):
            accuracy = DEFAULT_ACCURACY_CLASS[kind]
        if not (math.isfinite(accuracy) and accuracy >= 0.0):
            raise PlacementError(
                f"accuracy class must be a finite percentage >= 0, got {self.accuracy_class!r}",
                device_id=self.device_id,
                field="accuracy_class",
            )
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "element_end", end)
        object.__setattr__(self, "accuracy_class", accuracy)
        object.__setattr__(self, "bus_id", int(self.bus_id))
        object.__setattr__(self, "element_id", int(self.element_id))

    @property
    def measures_current(self) -> bool:
        return self.element_id != NO_ID


def placements_from_case(model: GridModel) -> list[DevicePlacement]:
    """One device per row of the model's ``measurement`` table, checked against the model.

    Device ids are ``<kind>-<measurement id>`` (``meter-601``, ``ftu-600``). A row that measures
    neither current nor power becomes a voltage-only device (its element is not used).
    """
    table = model.measurement
    uses_element = table["measures_current"] | table["measures_power"]
    placements = [
        DevicePlacement(
            device_id=f"{_KINDS[kind].value}-{mid}",
            kind=_KINDS[kind],
            bus_id=bus,
            element_id=element if uses else NO_ID,
            element_end=_ENDS[end],
            accuracy_class=accuracy,
            measurement_id=mid,
        )
        for mid, kind, bus, element, end, uses, accuracy in zip(
            table["id"].tolist(),
            table["kind"].tolist(),
            table["bus"].tolist(),
            table["element"].tolist(),
            table["element_end"].tolist(),
            uses_element.tolist(),
            table["accuracy_class"].tolist(),
            strict=True,
        )
    ]
    check_placements(model, placements)
    return placements


def default_placements(
    model: GridModel,
    *,
    meters: bool = True,
    ftus: bool = True,
    pmus: bool = True,
    accuracy_class: Mapping[MeasurementKind, float] | None = None,
) -> list[DevicePlacement]:
    """Devices where a utility automating this grid would put them.

    - ``meters``: a smart meter ``meter-<load id>`` at every in-service load, measuring its current;
    - ``ftus``: an FTU ``ftu-<switch id>`` at every switch with a fault indicator or a remote
      control, measuring the current through the switch at its from end and the from bus voltage;
    - ``pmus``: a PMU ``pmu-<source id>`` at every in-service source's bus, measuring the first
      in-service branch connected there (lines, transformers, switches, in that order): the head of
      the feeder or the substation transformer.

    ``accuracy_class`` overrides :data:`DEFAULT_ACCURACY_CLASS` per kind.
    """
    accuracy = {**DEFAULT_ACCURACY_CLASS, **(accuracy_class or {})}
    placements: list[DevicePlacement] = []
    if meters:
        load = model.load[model.load["in_service"]]
        placements += [
            DevicePlacement(
                device_id=f"meter-{lid}",
                kind=MeasurementKind.METER,
                bus_id=bus,
                element_id=lid,
                accuracy_class=accuracy[MeasurementKind.METER],
            )
            for lid, bus in zip(load["id"].tolist(), load["bus"].tolist(), strict=True)
        ]
    if ftus:
        switch = model.switch[model.switch["fault_indicator"] | model.switch["remote_controllable"]]
        placements += [
            DevicePlacement(
                device_id=f"ftu-{sid}",
                kind=MeasurementKind.FTU,
                bus_id=bus,
                element_id=sid,
                element_end=BranchEnd.FROM,
                accuracy_class=accuracy[MeasurementKind.FTU],
            )
            for sid, bus in zip(switch["id"].tolist(), switch["from_bus"].tolist(), strict=True)
        ]
    if pmus:
        branch_id, from_bus, to_bus, live = _branch_table(model)
        source = model.source[model.source["in_service"]]
        for sid, bus in zip(source["id"].tolist(), source["bus"].tolist(), strict=True):
            touching = np.flatnonzero(live & ((from_bus == bus) | (to_bus == bus)))
            if touching.size == 0:
                continue  # a source feeding nothing has no feeder head to measure
            row = int(touching[0])
            placements.append(
                DevicePlacement(
                    device_id=f"pmu-{sid}",
                    kind=MeasurementKind.PMU,
                    bus_id=bus,
                    element_id=int(branch_id[row]),
                    element_end=BranchEnd.FROM if from_bus[row] == bus else BranchEnd.TO,
                    accuracy_class=accuracy[MeasurementKind.PMU],
                )
            )
    return placements


def check_placements(model: GridModel, placements: Sequence[DevicePlacement]) -> None:
    """Raise :class:`PlacementError` for the first placement that does not fit ``model``.

    Checks: device ids unique; the bus exists; the element exists as a line, transformer, switch or
    load; a branch's ``element_end`` touches the device's bus; a load sits at the device's bus.
    Vectorized over the placements (one id lookup per table), so 100,000 devices check in
    milliseconds.
    """
    if not placements:
        return
    ids = [p.device_id for p in placements]
    seen: set[str] = set()
    for device_id in ids:
        if device_id in seen:
            raise PlacementError("device id used twice", device_id=device_id, field="device_id")
        seen.add(device_id)
    bus = np.fromiter((p.bus_id for p in placements), dtype=np.int64, count=len(placements))
    element = np.fromiter((p.element_id for p in placements), dtype=np.int64, count=len(ids))
    to_end = np.fromiter((p.element_end is BranchEnd.TO for p in placements), bool, len(ids))

    bad_bus = lookup(model.bus["id"], bus) < 0
    _raise_first(bad_bus, ids, "bus_id", lambda k: f"no bus with id {bus[k]} in the model")

    branch_id, from_bus, to_bus, _ = _branch_table(model)
    branch_row = lookup(branch_id, element)
    load_row = lookup(model.load["id"], element)
    has_element = element != NO_ID
    unknown = has_element & (branch_row < 0) & (load_row < 0)
    _raise_first(
        unknown,
        ids,
        "element_id",
        lambda k: f"no line, transformer, switch or load with id {element[k]} in the model",
    )
    is_branch = has_element & (branch_row >= 0)
    end_bus = np.where(to_end, _take(to_bus, branch_row), _take(from_bus, branch_row))
    _raise_first(
        is_branch & (end_bus != bus),
        ids,
        "element_end",
        lambda k: (
            f"the {'to' if to_end[k] else 'from'} end of branch {element[k]} is at bus "
            f"{end_bus[k]}, not at the device's bus {bus[k]}"
        ),
    )
    is_load = has_element & ~is_branch
    load_bus = _take(model.load["bus"].astype(np.int64), load_row)
    _raise_first(
        is_load & (load_bus != bus),
        ids,
        "bus_id",
        lambda k: f"load {element[k]} is at bus {load_bus[k]}, not at the device's bus {bus[k]}",
    )


def _raise_first(
    bad: npt.NDArray[np.bool_],
    ids: Sequence[str],
    field: str,
    message: Callable[[int], str],
) -> None:
    """Raise for the first ``bad`` placement; ``message`` is built only then."""
    if not bad.any():
        return
    first = int(np.argmax(bad))
    more = int(bad.sum()) - 1
    suffix = f" (and {more} more devices with the same problem)" if more else ""
    raise PlacementError(message(first) + suffix, device_id=ids[first], field=field)


def _take(values: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``values[rows]`` with -1 where a row is -1 (absent), also when ``values`` is empty."""
    if values.size == 0:
        return np.full(rows.shape, -1, dtype=np.int64)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], -1)


def _branch_table(
    model: GridModel,
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]
]:
    """Id, from bus, to bus and "carries current" of every branch, in the phasor state's order."""
    parts: Iterable[tuple[npt.NDArray[np.void], str, str, npt.NDArray[np.bool_]]] = (
        (model.line, "from_bus", "to_bus", model.line["in_service"]),
        (model.transformer, "hv_bus", "lv_bus", model.transformer["in_service"]),
        (model.switch, "from_bus", "to_bus", model.switch["closed"]),
    )
    ids, frm, to, live = [], [], [], []
    for table, f, t, on in parts:
        ids.append(table["id"].astype(np.int64))
        frm.append(table[f].astype(np.int64))
        to.append(table[t].astype(np.int64))
        live.append(np.asarray(on, dtype=bool))
    return np.concatenate(ids), np.concatenate(frm), np.concatenate(to), np.concatenate(live)
