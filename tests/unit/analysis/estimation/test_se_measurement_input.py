"""Measurement sets and files: what is accepted, and errors that say where the problem is."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from openfeeder.analysis.estimation import (
    MeasurementSet,
    Quantity,
    estimate_state,
    locate_measurements,
    measurement_document,
    parse_measurement_document,
    sigmas_from_accuracy_class,
)
from openfeeder.errors import MeasurementError
from openfeeder.model.cases import resolve_case

GOOD: list[dict[str, Any]] = [
    {"id": "v1", "quantity": "u", "bus": 1, "u_kv": 22.0, "u_sigma_kv": 0.05},
    {"id": "p400", "quantity": "pq", "element": 400, "p_mw": 0.1, "q_mvar": 0.03, "accuracy_class": 1},
    {"id": "f300", "quantity": "pq", "element": 300, "end": "from", "p_mw": 1.0, "q_mvar": 0.3,
     "p_sigma_mw": 0.005, "q_sigma_mvar": 0.005},
    {"id": "i300", "quantity": "i", "element": 300, "end": "from", "i_ka": 0.03, "i_sigma_ka": 0.0002},
    {"id": "pmu", "quantity": "u_phasor", "bus": 1, "u_kv": 22.0, "u_angle_deg": 0.0,
     "u_sigma_kv": 0.01, "angle_sigma_deg": 0.01, "pseudo": False},
]  # fmt: skip


def _document(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": "openfeeder-measurements", "version": 1, "measurements": records}


def test_records_round_trip_through_the_file_document() -> None:
    measurements, meta = parse_measurement_document(_document(GOOD), file="m.json")
    assert meta == {}
    assert measurements.ids == ("v1", "p400", "f300", "i300", "pmu")
    # the accuracy class gave P and Q their standard deviations
    p_sigma = measurements.table["p_sigma_mw"][1]
    expected = sigmas_from_accuracy_class(Quantity.PQ, 1.0, p_mw=0.1, q_mvar=0.03)
    assert p_sigma == pytest.approx(expected["p_sigma_mw"])
    document = measurement_document(measurements, case="turin", t_ns=5)
    again, meta = parse_measurement_document(document)
    assert meta == {"case": "turin", "t_ns": 5}
    assert again.ids == measurements.ids
    assert again.records() == measurements.records()


def test_accuracy_class_sigmas_follow_the_class_limit_at_two_sigma() -> None:
    sigma = sigmas_from_accuracy_class(Quantity.U, 0.5, u_kv=20.0)
    assert sigma["u_sigma_kv"] == pytest.approx(0.05)  # 0.5 % of 20 kV is two sigma
    pmu = sigmas_from_accuracy_class(Quantity.I_PHASOR, 0.1, i_ka=0.2)
    assert pmu["i_sigma_ka"] == pytest.approx(0.0001)
    assert pmu["angle_sigma_deg"] == pytest.approx(np.rad2deg(0.1 * 0.015 / 2))


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"quantity": "voltage"}, "quantity", "unknown quantity"),
        ({"u_sigma_kv": -1.0}, "u_sigma_kv", "finite number > 0"),
        ({"u_sigma_kv": None}, "u_sigma_kv", "must be a number"),
        ({"u_kv": "high"}, "u_kv", "must be a number"),
        ({"bus": -3}, "bus", "non-negative integer"),
        ({"colour": "red"}, "colour", "unknown key"),
        ({"p_mw": 1.0}, "p_mw", "not a field of a u measurement"),
        ({"id": ""}, "id", "non-empty string"),
    ],
)
def test_bad_fields_name_file_index_id_and_field(
    change: dict[str, Any], field: str, fragment: str
) -> None:
    records = [dict(r) for r in GOOD]
    records[0] = {**records[0], **change}
    with pytest.raises(MeasurementError) as caught:
        parse_measurement_document(_document(records), file="m.json")
    error = caught.value
    assert error.file == "m.json"
    assert error.index == 0
    assert error.field == field
    assert fragment in str(error)
    assert str(error).startswith("m.json: measurement 0")


def test_missing_values_and_duplicates() -> None:
    records = [dict(r) for r in GOOD]
    del records[2]["end"]
    records[3] = {k: v for k, v in records[3].items() if k != "i_ka"}
    with pytest.raises(MeasurementError, match="measurement 3 \\(id 'i300'\\): field 'i_ka'"):
        parse_measurement_document(_document(records))
    with pytest.raises(MeasurementError, match="id used twice"):
        MeasurementSet.from_records([GOOD[0], GOOD[0]])


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"format": "other", "version": 1, "measurements": []}, "format"),
        ({"format": "openfeeder-measurements", "version": 2, "measurements": []}, "version"),
        ({"format": "openfeeder-measurements", "version": 1, "measurements": {}}, "measurements"),
        ({"format": "openfeeder-measurements", "version": 1, "measurements": [], "x": 1}, "x"),
        (
            {"format": "openfeeder-measurements", "version": 1, "measurements": [], "t_ns": 1.5},
            "t_ns",
        ),
    ],
)
def test_bad_documents(document: dict[str, Any], field: str) -> None:
    with pytest.raises(MeasurementError) as caught:
        parse_measurement_document(document, file="m.json")
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("record", "field", "element", "fragment"),
    [
        ({"id": "x", "quantity": "u", "bus": 999, "u_kv": 22.0, "u_sigma_kv": 0.1}, "bus", 999,
         "no bus with this id"),
        ({"id": "x", "quantity": "pq", "element": 77777, "p_mw": 1.0, "q_mvar": 0.0,
          "p_sigma_mw": 0.1, "q_sigma_mvar": 0.1}, "element", 77777, "no line, transformer"),
        ({"id": "x", "quantity": "i", "element": 400, "end": "from", "i_ka": 0.01,
          "i_sigma_ka": 0.001}, "element", 400, "a current is measured on a line"),
        ({"id": "x", "quantity": "pq", "element": 300, "p_mw": 1.0, "q_mvar": 0.0,
          "p_sigma_mw": 0.1, "q_sigma_mvar": 0.1}, "end", 300, "needs 'end'"),
        ({"id": "x", "quantity": "pq", "element": 300, "end": "from", "bus": 54, "p_mw": 1.0,
          "q_mvar": 0.0, "p_sigma_mw": 0.1, "q_sigma_mvar": 0.1}, "bus", 54, "not at this bus"),
    ],
)  # fmt: skip
def test_measurements_on_unknown_or_wrong_elements(
    record: dict[str, Any], field: str, element: int, fragment: str
) -> None:
    model = resolve_case("turin")
    measurements = MeasurementSet.from_records([GOOD[0], record], file="m.json")
    with pytest.raises(MeasurementError) as caught:
        estimate_state(model, measurements, file="m.json")
    error = caught.value
    assert (error.file, error.index, error.measurement_id) == ("m.json", 1, "x")
    assert (error.field, error.element_id) == (field, element)
    assert fragment in str(error)


def test_located_targets_and_buses() -> None:
    model = resolve_case("turin")
    measurements, _ = parse_measurement_document(_document(GOOD))
    located = locate_measurements(model, measurements)
    bus_ids = model.bus["id"][located.bus_row]
    assert bus_ids[0] == 1  # voltage at bus 1
    assert bus_ids[1] == model.load["bus"][model.load["id"] == 400][0]
    switch = model.switch[model.switch["id"] == 300][0]
    assert bus_ids[2] == switch["from_bus"]
