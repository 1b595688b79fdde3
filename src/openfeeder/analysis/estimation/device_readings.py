"""What meter agents publish, as estimator measurements: :func:`measurements_from_readings`.

A device (smart meter, FTU) sits at a bus and may watch one element there (a load, a generator
or a branch end); each reporting interval it publishes the RMS phase voltages ``u_a u_b u_c``
(V, phase to neutral) and the three-phase ``p`` (W) and ``q`` (var) flowing from its bus into the
element. They become, per device:

- ``u`` at its bus: the mean of the three phase voltages, line to line (``sqrt(3)`` times);
- ``pq`` of its element: a load's consumption, a generator's injection (the opposite of the
  flow into it), the flow into a branch at the device's end (the end at its bus).

Standard deviations come from the device's accuracy class as in the twin's instrument model
(:func:`~.measurement_set.sigmas_from_accuracy_class`), divided by ``sqrt(3)``: the three phases'
independent errors average down. Readings marked invalid or missing are left out; a device on a
source (the grid's slack) gives only its voltage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from openfeeder.analysis.estimation.measurement_set import (
    MeasurementSet,
    Quantity,
    sigmas_from_accuracy_class,
)
from openfeeder.model.grid import GridModel

__all__ = ["DeviceSite", "measurements_from_readings"]

_SQRT3: Final = math.sqrt(3.0)
_PHASES: Final = ("u_a", "u_b", "u_c")


@dataclass(frozen=True, slots=True)
class DeviceSite:
    """Where a device measures: its bus, the element it watches (or None), its class (%)."""

    device_id: str
    bus_id: int
    element_id: int | None
    accuracy_class: float


def measurements_from_readings(
    model: GridModel,
    sites: Iterable[DeviceSite],
    readings: Mapping[str, Mapping[str, float]],
) -> MeasurementSet:
    """Measurements from each device's latest readings (channel -> value; see the module
    docstring). Devices without readings, and elements unknown to ``model``, are left out."""
    records: list[dict[str, Any]] = []
    loads = set(model.load["id"].tolist())
    generators = set(model.generator["id"].tolist())
    branch_ends = _branch_ends(model)
    bus_kv = dict(zip(model.bus["id"].tolist(), model.bus["u_rated_kv"].tolist(), strict=True))
    for site in sites:
        values = readings.get(site.device_id)
        if not values or site.bus_id not in bus_kv:
            continue
        phases = [values[c] for c in _PHASES if c in values and values[c] > 0.0]
        if phases:
            u_kv = float(np.mean(phases)) * _SQRT3 / 1e3
            sigma = sigmas_from_accuracy_class(Quantity.U, site.accuracy_class, u_kv=u_kv)
            records.append(
                {
                    "id": f"{site.device_id}:u",
                    "quantity": "u",
                    "bus": site.bus_id,
                    "u_kv": u_kv,
                    "u_sigma_kv": sigma["u_sigma_kv"] / _SQRT3,
                }
            )
        element = site.element_id
        if element is None or "p" not in values or "q" not in values:
            continue
        p_mw, q_mvar = values["p"] / 1e6, values["q"] / 1e6
        record: dict[str, Any] = {"id": f"{site.device_id}:pq", "quantity": "pq"}
        if element in loads:
            record |= {"element": element, "p_mw": p_mw, "q_mvar": q_mvar}
        elif element in generators:
            record |= {"element": element, "p_mw": -p_mw, "q_mvar": -q_mvar}
        elif element in branch_ends:
            from_bus, to_bus = branch_ends[element]
            if site.bus_id not in (from_bus, to_bus):
                continue
            end = "from" if site.bus_id == from_bus else "to"
            record |= {"element": element, "end": end, "p_mw": p_mw, "q_mvar": q_mvar}
        else:
            continue
        sigmas = sigmas_from_accuracy_class(
            Quantity.PQ, site.accuracy_class, p_mw=p_mw, q_mvar=q_mvar
        )
        record["p_sigma_mw"] = sigmas["p_sigma_mw"] / _SQRT3
        record["q_sigma_mvar"] = sigmas["q_sigma_mvar"] / _SQRT3
        records.append(record)
    return MeasurementSet.from_records(records)


def _branch_ends(model: GridModel) -> dict[int, tuple[int, int]]:
    ends: dict[int, tuple[int, int]] = {}
    for table, a, b in (
        (model.line, "from_bus", "to_bus"),
        (model.transformer, "hv_bus", "lv_bus"),
        (model.switch, "from_bus", "to_bus"),
    ):
        ends.update(
            zip(
                table["id"].tolist(),
                zip(table[a].tolist(), table[b].tolist(), strict=True),
                strict=True,
            )
        )
    return ends
