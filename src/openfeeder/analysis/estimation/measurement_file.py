"""The measurement file: a versioned JSON document holding one measurement set (no file I/O here).

::

    {
      "format": "openfeeder-measurements",
      "version": 1,
      "case": "turin",                      optional: the case the measurements belong to
      "t_ns": 1767261600000000000,          optional: the instant measured (UTC ns)
      "measurements": [
        {"id": "meter-601", "quantity": "pq", "element": 601, "p_mw": 0.12, "q_mvar": 0.03,
         "p_sigma_mw": 0.0009, "q_sigma_mvar": 0.0009},
        {"id": "meter-601-u", "quantity": "u", "bus": 12, "u_kv": 22.1, "accuracy_class": 1},
        ...
      ],
      "truth": {...}                        optional, ignored by the estimator (the twin writes the
                                            true state here: "buses", "loads")
    }

The keys of a measurement are those of :meth:`MeasurementSet.from_records`; standard deviations
may be given as ``accuracy_class`` (%) instead. Errors name the file, the measurement's index and
id, the element and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from openfeeder.analysis.estimation.measurement_set import MeasurementSet
from openfeeder.errors import MeasurementError

__all__ = [
    "MEASUREMENT_FORMAT",
    "MEASUREMENT_FORMAT_VERSION",
    "measurement_document",
    "parse_measurement_document",
]

MEASUREMENT_FORMAT: Final = "openfeeder-measurements"
MEASUREMENT_FORMAT_VERSION: Final = 1
_TOP_KEYS: Final = frozenset({"format", "version", "case", "t_ns", "measurements", "truth"})


def parse_measurement_document(
    data: Any, *, file: str | None = None
) -> tuple[MeasurementSet, dict[str, Any]]:
    """The set in a parsed measurement document and its other top-level keys (case, t_ns, truth)."""
    if not isinstance(data, Mapping):
        raise MeasurementError("a measurement file is a JSON object", file=file)
    if data.get("format") != MEASUREMENT_FORMAT:
        raise MeasurementError(
            f"'format' must be {MEASUREMENT_FORMAT!r}, got {data.get('format')!r}",
            file=file,
            field="format",
        )
    version = data.get("version")
    if version != MEASUREMENT_FORMAT_VERSION:
        raise MeasurementError(
            f"unsupported version {version!r} (this OpenFeeder reads version "
            f"{MEASUREMENT_FORMAT_VERSION})",
            file=file,
            field="version",
        )
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise MeasurementError(
            f"unknown top-level key; expected some of {sorted(_TOP_KEYS)}",
            file=file,
            field=unknown[0],
        )
    records = data.get("measurements")
    if not isinstance(records, list):
        raise MeasurementError("'measurements' must be a list", file=file, field="measurements")
    if "case" in data and not isinstance(data["case"], str):
        raise MeasurementError("'case' must be a string", file=file, field="case")
    t_ns = data.get("t_ns")
    if t_ns is not None and (isinstance(t_ns, bool) or not isinstance(t_ns, int)):
        raise MeasurementError("'t_ns' must be integer nanoseconds", file=file, field="t_ns")
    measurements = MeasurementSet.from_records(records, file=file)
    meta = {key: data[key] for key in ("case", "t_ns", "truth") if key in data}
    return measurements, meta


def measurement_document(
    measurements: MeasurementSet,
    *,
    case: str | None = None,
    t_ns: int | None = None,
    truth: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document of a measurement set (what :func:`parse_measurement_document` reads back)."""
    document: dict[str, Any] = {"format": MEASUREMENT_FORMAT, "version": MEASUREMENT_FORMAT_VERSION}
    if case is not None:
        document["case"] = case
    if t_ns is not None:
        document["t_ns"] = int(t_ns)
    document["measurements"] = measurements.records()
    if truth is not None:
        document["truth"] = dict(truth)
    return document
