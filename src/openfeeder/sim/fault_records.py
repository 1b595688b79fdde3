"""The fault records the twin's devices capture: what FLOC (:mod:`openfeeder.analysis.flisr.location`)
reads.

:func:`fault_records` measures the pre-fault and the fault state of a
:class:`~openfeeder.analysis.faults.FaultResult` with the twin's instruments
(:class:`~openfeeder.sim.measurements.MeasurementModel`: accuracy class, phase displacement, clock
offset and jitter, dropouts), so the records carry the same "default measurement noise" as every
other reading of the twin. The live twin publishes them, the offline CLI feeds them to
:func:`~openfeeder.analysis.flisr.location.locate_fault`.

Which devices record: FTUs and PMUs (they measure the current of a branch and sit on MV or above)
and the smart meters on medium-voltage buses (aggregated MV/LV substations of synthetic grids);
meters on low-voltage buses only with ``lv_meters=True`` (their voltage sits behind a transformer,
which the locator uses only to find broken conductors). A device on a bus without voltage before
the fault records nothing, and a reading lost to a dropout (either of the two) loses the record.
A meter's own current is a load's, not a branch's, so its record holds voltages only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from openfeeder.analysis.faults import FaultResult
from openfeeder.analysis.flisr.location import PhasorRecord
from openfeeder.model.components import MeasurementKind
from openfeeder.model.grid import GridModel, lookup
from openfeeder.sim.measurements import MeasurementModel
from openfeeder.sim.placements import DevicePlacement, check_placements

__all__ = ["DEFAULT_PREFAULT_LEAD_NS", "MV_MIN_KV", "fault_records"]

DEFAULT_PREFAULT_LEAD_NS: Final = 100_000_000
"""The pre-fault reading is taken this long before ``t_ns`` (the twin's pre-fault segment)."""
MV_MIN_KV: Final = 1.0
"""Buses rated at or above this are medium (or high) voltage."""


def fault_records(
    model: GridModel,
    result: FaultResult,
    placements: Sequence[DevicePlacement],
    *,
    t_ns: int,
    measurement_model: MeasurementModel | None = None,
    seed: int | None = None,
    prefault_t_ns: int | None = None,
    lv_meters: bool = False,
) -> list[PhasorRecord]:
    """Noisy records of ``result`` as the devices of ``placements`` capture them.

    The fault reading is taken at ``t_ns`` from ``result.state``, the pre-fault one at
    ``prefault_t_ns`` (default ``t_ns - DEFAULT_PREFAULT_LEAD_NS``) from ``result.prefault``.
    Instruments: ``measurement_model`` (it must know every placed device) or a new
    :class:`MeasurementModel` of ``placements`` with ``seed``; exactly one of the two.
    """
    if (measurement_model is None) == (seed is None):
        raise ValueError("give exactly one of measurement_model and seed")
    check_placements(model, placements)
    pre_t = int(t_ns) - DEFAULT_PREFAULT_LEAD_NS if prefault_t_ns is None else int(prefault_t_ns)
    rated_kv = model.bus["u_rated_kv"][lookup(model.bus["id"], [p.bus_id for p in placements])]
    branch_ids = np.concatenate(
        [model.line["id"], model.transformer["id"], model.switch["id"]]
    ).astype(np.int64)
    chosen = [
        p
        for p, kv in zip(placements, rated_kv.tolist(), strict=True)
        if p.kind is not MeasurementKind.METER or lv_meters or kv >= MV_MIN_KV
    ]
    if not chosen:
        return []
    if measurement_model is not None:
        instruments = measurement_model
    else:
        instruments = MeasurementModel(chosen, seed=int(seed or 0))
    ids = [p.device_id for p in chosen]
    pre = instruments.measure(result.prefault, pre_t, device_ids=ids)
    during = instruments.measure(result.state, int(t_ns), device_ids=ids)
    live = np.abs(pre.u_true_v).max(axis=1) > 0.0
    keep = pre.valid & during.valid & live
    is_branch = np.isin(
        np.fromiter((p.element_id for p in chosen), np.int64, len(chosen)), branch_ids
    )
    records = []
    for k in np.flatnonzero(keep).tolist():
        placement = chosen[k]
        current = bool(is_branch[k] and pre.measures_current[k])
        records.append(
            PhasorRecord(
                device_id=placement.device_id,
                bus_id=placement.bus_id,
                u_pre_v=pre.u_v[k],
                u_fault_v=during.u_v[k],
                branch_id=placement.element_id if current else None,
                i_pre_a=pre.i_a[k] if current else None,
                i_fault_a=during.i_a[k] if current else None,
                accuracy_class=placement.accuracy_class,
            )
        )
    return records
