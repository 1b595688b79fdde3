"""Case files: round trips in both layouts, and a clear error for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from openfeeder.errors import CaseError, CaseValidationError
from openfeeder.model import GridModel
from openfeeder.model.case_file import (
    case_from_dict,
    case_json_schema,
    case_to_dict,
    load_case,
    save_case,
)
from openfeeder.model.cases import load_builtin


def assert_models_equal(a: GridModel, b: GridModel) -> None:
    assert (a.name, a.description, a.frequency_hz) == (b.name, b.description, b.frequency_hz)
    for name, table in a.tables():
        other = b.table(name)
        assert table.dtype == other.dtype, name
        assert table.size == other.size, name
        for field in table.dtype.names or ():
            np.testing.assert_array_equal(table[field], other[field], err_msg=f"{name}.{field}")


@pytest.fixture
def turin_doc() -> dict[str, Any]:
    return case_to_dict(load_builtin("turin"))


def test_round_trip_through_file(tmp_path: Path) -> None:
    model = load_builtin("turin")
    path = tmp_path / "turin.json"
    save_case(model, path)
    assert_models_equal(model, load_case(path))


def test_columns_layout_reads_like_rows(turin_doc: dict[str, Any]) -> None:
    rows_model = case_from_dict(turin_doc)
    columnar = dict(turin_doc)
    columnar["components"] = {
        name: {key: [row[key] for row in rows] for key in rows[0]}
        for name, rows in turin_doc["components"].items()
    }
    assert_models_equal(rows_model, case_from_dict(columnar))


def test_defaults_fill_optional_fields() -> None:
    doc = {
        "format": "openfeeder-case",
        "version": 1,
        "components": {
            "bus": [{"id": 1, "u_rated_kv": 20.0}, {"id": 2, "u_rated_kv": 20.0}],
            "line": [
                {
                    "id": 3,
                    "from_bus": 1,
                    "to_bus": 2,
                    "length_km": 1.0,
                    "r1_ohm_per_km": 0.2,
                    "x1_ohm_per_km": 0.1,
                    "i_rated_ka": 0.3,
                }
            ],
            "source": [{"id": 4, "bus": 1}],
        },
    }
    model = case_from_dict(doc)
    assert model.line["in_service"][0]
    assert np.isnan(model.line["r0_ohm_per_km"][0])
    assert model.source["sk_mva"][0] == 1000.0
    assert model.bus["x_m"].size == 2
    assert np.isnan(model.bus["x_m"]).all()


def test_json_schema_lists_every_table() -> None:
    schema = case_json_schema()
    tables = schema["properties"]["components"]["properties"]
    assert set(tables) == {
        "bus", "line", "transformer", "switch", "load", "generator", "shunt", "source",
        "measurement",
    }  # fmt: skip
    row = tables["line"]["oneOf"][0]["items"]
    assert "length_km" in row["required"]
    assert row["properties"]["kind"]["enum"] == ["cable", "overhead"]


def _find(doc: dict[str, Any], table: str, component_id: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = doc["components"][table]
    return next(r for r in rows if r["id"] == component_id)


def _error(doc: dict[str, Any], tmp_path: Path) -> CaseError:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    return info.value


def test_unknown_reference(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "line", 101)["to_bus"] = 999
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id, err.field) == ("line", 101, "to_bus")
    assert "unknown bus 999" in str(err)


def test_duplicate_id_across_tables(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "load", 400)["id"] = 101  # the id of a line
    err = _error(turin_doc, tmp_path)
    assert isinstance(err, CaseValidationError)
    assert (err.component, err.component_id, err.field) == ("load", 101, "id")
    assert "duplicate id (also used by a line" in str(err)


def test_negative_length(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "line", 102)["length_km"] = -0.22
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id, err.field) == ("line", 102, "length_km")
    assert "must be > 0" in str(err)


def test_bad_units_volts_for_kilovolts(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "bus", 3)["u_rated_kv"] = 22000.0
    err = _error(turin_doc, tmp_path)
    assert isinstance(err, CaseValidationError)
    fields = {(i.component, i.component_id, i.field) for i in err.issues}
    assert ("bus", 3, "u_rated_kv") in fields
    assert any("in kV, not V" in str(i) for i in err.issues)


def test_bad_units_metres_for_kilometres(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "line", 100)["length_km"] = 220.0 * 1000
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id, err.field) == ("line", 100, "length_km")
    assert "in km, not m" in str(err)


def test_missing_source(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    del turin_doc["components"]["source"]
    err = _error(turin_doc, tmp_path)
    assert err.component == "source"
    assert "no in-service source" in str(err)


def test_unknown_field(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "line", 100)["lenght_km"] = 0.2
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.field) == ("line", "lenght_km")
    assert "unknown field" in str(err)


def test_missing_required_field(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    del _find(turin_doc, "line", 104)["r1_ohm_per_km"]
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id, err.field) == ("line", 104, "r1_ohm_per_km")
    assert "missing required field" in str(err)


def test_bad_enum_value(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "switch", 301)["kind"] = "circuit_breaker"
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id, err.field) == ("switch", 301, "kind")
    assert "unknown value 'circuit_breaker' (allowed: breaker," in str(err)


def test_wrong_type(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "load", 403)["p_mw"] = "0.2 MW"
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id, err.field) == ("load", 403, "p_mw")
    assert "must be a number" in str(err)


def test_phase_shares_must_sum_to_one(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "load", 405)["share_a"] = 0.5
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id) == ("load", 405)
    assert "sum to 1" in str(err)


def test_transformer_sides_swapped(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    trafo = _find(turin_doc, "transformer", 201)
    trafo["hv_bus"], trafo["lv_bus"] = trafo["lv_bus"], trafo["hv_bus"]
    err = _error(turin_doc, tmp_path)
    assert (err.component, err.component_id) == ("transformer", 201)
    assert "check the side or the units" in str(err)


def test_all_issues_are_reported(turin_doc: dict[str, Any], tmp_path: Path) -> None:
    _find(turin_doc, "line", 100)["length_km"] = -1.0
    _find(turin_doc, "line", 101)["i_rated_ka"] = 0.0
    err = _error(turin_doc, tmp_path)
    assert isinstance(err, CaseValidationError)
    found = {(i.component_id, i.field) for i in err.issues}
    assert {(100, "length_km"), (101, "i_rated_ka")} <= found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else", "version": 1}', "'format' must be"),
        ('{"format": "openfeeder-case", "version": 7, "components": {}}', "version 7"),
        ('{"format": "openfeeder-case", "version": 1, "components": {"buses": []}}', "'buses'"),
    ],
)
def test_document_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "case.json"
    path.write_text(text)
    with pytest.raises(CaseError, match=expected):
        load_case(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="no such file"):
        load_case(tmp_path / "absent.json")
