"""The OpenFeeder case file: one versioned JSON format for grid models.

A case file looks like::

    {
      "format": "openfeeder-case",
      "version": 1,
      "name": "turin",
      "description": "...",
      "frequency_hz": 50,
      "components": {
        "bus":  [{"id": 1, "u_rated_kv": 22.0}, ...],              # rows layout
        "line": {"id": [10, 11], "from_bus": [1, 2], ...}          # or columns layout
      }
    }

Each table may be written as a list of row objects (easy to write by hand) or as an object of
equal-length column arrays (compact and fast for 100,000-bus cases); :func:`save_case` picks rows for
small tables and columns for large ones. Columns, units and defaults are those of
:data:`openfeeder.model.components.TABLES`; ``null`` stands for NaN or "use the default".
Enumerations are written as their string values. ``docs/case-format.md`` describes the format and
``openfeeder case schema`` prints its JSON Schema.

Loading checks the structure while parsing (unknown tables or fields, wrong types, bad enum values,
missing required fields) and then validates the model (:mod:`openfeeder.model.validation`); every
error names the file, the component table and id, and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.errors import CaseError, CaseIssue, CaseValidationError
from openfeeder.model.components import TABLES, Column, TableSpec, empty_table, enum_codes
from openfeeder.model.grid import DEFAULT_FREQUENCY_HZ, GridModel
from openfeeder.model.validation import validate_model

__all__ = [
    "CASE_FORMAT",
    "CASE_VERSION",
    "case_from_dict",
    "case_json_schema",
    "case_tables_markdown",
    "case_to_dict",
    "load_case",
    "save_case",
]

CASE_FORMAT: Final = "openfeeder-case"
CASE_VERSION: Final = 1
ROWS_LAYOUT_MAX_ROWS: Final = 2000
"""Tables up to this many rows are written as row objects, larger ones as columns."""

_MISSING: Final = object()


def load_case(path: str | Path, *, validate: bool = True) -> GridModel:
    """Read and validate a case file; raises :class:`CaseError` naming what is wrong and where."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise CaseError(CaseIssue("no such file", file=file)) from err
    except OSError as err:
        raise CaseError(CaseIssue(f"cannot read: {err.strerror}", file=file)) from err
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        message = f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        raise CaseError(CaseIssue(message, file=file)) from err
    return case_from_dict(document, file=file, validate=validate)


def save_case(model: GridModel, path: str | Path) -> None:
    """Write ``model`` as a case file (atomically: a temporary file renamed into place)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(case_to_dict(model), indent=1, allow_nan=False) + "\n")
    tmp.replace(target)


def case_to_dict(model: GridModel) -> dict[str, Any]:
    """The JSON document of ``model`` (plain Python types, NaN written as null)."""
    components: dict[str, Any] = {}
    for name, table in model.tables():
        if table.size == 0:
            continue
        spec = TABLES[name]
        columns = {c.name: _column_to_json(c, table[c.name]) for c in spec.columns}
        if table.size <= ROWS_LAYOUT_MAX_ROWS:
            names = list(columns)
            components[name] = [
                dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)
            ]
        else:
            components[name] = columns
    return {
        "format": CASE_FORMAT,
        "version": CASE_VERSION,
        "name": model.name,
        "description": model.description,
        "frequency_hz": model.frequency_hz,
        "components": components,
    }


def _column_to_json(column: Column, values: npt.NDArray[Any]) -> list[Any]:
    if column.enum is not None:
        members = [m.value for m in column.enum]
        return [members[int(code)] for code in values]
    if values.dtype.kind == "f":
        return [None if math.isnan(v) else v for v in values.tolist()]
    return list(values.tolist())


def case_from_dict(
    document: object, *, file: str | None = None, validate: bool = True
) -> GridModel:
    """Build a model from a parsed case document; raises :class:`CaseError` on any problem."""

    def fail(message: str, component: str | None = None, field: str | None = None) -> CaseError:
        return CaseError(CaseIssue(message, component=component, field=field, file=file))

    if not isinstance(document, dict):
        raise fail("the top level must be a JSON object")
    if document.get("format") != CASE_FORMAT:
        raise fail(f"'format' must be \"{CASE_FORMAT}\"", field="format")
    version = document.get("version")
    if version != CASE_VERSION:
        raise fail(
            f"unsupported case format version {version!r}; this OpenFeeder reads version "
            f"{CASE_VERSION}",
            field="version",
        )
    unknown_keys = set(document) - {
        "format",
        "version",
        "name",
        "description",
        "frequency_hz",
        "components",
    }
    if unknown_keys:
        raise fail(f"unknown top-level key '{sorted(unknown_keys)[0]}'")
    frequency_hz = document.get("frequency_hz", DEFAULT_FREQUENCY_HZ)
    if frequency_hz not in (50, 60):
        raise fail(f"must be 50 or 60, got {frequency_hz!r}", field="frequency_hz")
    components = document.get("components")
    if not isinstance(components, dict):
        raise fail("'components' must be an object of component tables", field="components")
    tables: dict[str, Any] = {}
    for name, raw in components.items():
        if name not in TABLES:
            known = ", ".join(TABLES)
            raise fail(f"unknown component table '{name}' (known: {known})", component=name)
        tables[name] = _parse_table(TABLES[name], raw, file)
    model = GridModel(
        name=str(document.get("name") or (Path(file).stem if file else "unnamed")),
        description=str(document.get("description") or ""),
        frequency_hz=float(frequency_hz),
        **tables,
    )
    if validate:
        issues = validate_model(model)
        if issues:
            raise CaseValidationError([_with_file(i, file) for i in issues])
    return model


def _with_file(issue: CaseIssue, file: str | None) -> CaseIssue:
    if file is None or issue.file is not None:
        return issue
    return CaseIssue(issue.message, issue.component, issue.component_id, issue.field, file)


def _parse_table(spec: TableSpec, raw: object, file: str | None) -> npt.NDArray[np.void]:
    """Parse one table in either layout into a structured array, checking field types."""
    name = spec.name
    ids: list[Any] | None
    if isinstance(raw, list):
        columns, ids = _columns_from_rows(spec, raw, file)
    elif isinstance(raw, dict):
        columns = dict(raw)
        ids = columns.get("id")
        lengths = {k: len(v) for k, v in columns.items() if isinstance(v, list)}
        for key, value in columns.items():
            if not isinstance(value, list):
                raise CaseError(
                    CaseIssue("a column must be an array", component=name, field=key, file=file)
                )
        if len(set(lengths.values())) > 1:
            raise CaseError(
                CaseIssue(f"columns have different lengths: {lengths}", component=name, file=file)
            )
    else:
        raise CaseError(
            CaseIssue("a table must be a list of rows or an object of columns", name, file=file)
        )

    unknown = set(columns) - set(spec.column_names)
    if unknown:
        field = sorted(unknown)[0]
        raise CaseError(
            CaseIssue(
                f"unknown field (known: {', '.join(spec.column_names)})",
                component=name,
                field=field,
                file=file,
            )
        )
    if ids is None:
        raise CaseError(CaseIssue("missing required field", name, field="id", file=file))
    size = len(ids)
    table = empty_table(name, size)
    id_values = _parse_column(spec.column("id"), ids, name, None, file)
    table["id"] = id_values
    for column in spec.columns:
        if column.name == "id":
            continue
        values = columns.get(column.name, _MISSING)
        if values is _MISSING:
            if column.required and size > 0:
                raise CaseError(
                    CaseIssue(
                        "missing required field",
                        component=name,
                        component_id=int(id_values[0]),
                        field=column.name,
                        file=file,
                    )
                )
            continue
        assert isinstance(values, list)
        table[column.name] = _parse_column(column, values, name, id_values, file)
    return table


def _columns_from_rows(
    spec: TableSpec, rows: list[Any], file: str | None
) -> tuple[dict[str, list[Any]], list[Any]]:
    name = spec.name
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CaseError(CaseIssue(f"row {index} is not an object", name, file=file))
    keys: set[str] = set().union(*(row.keys() for row in rows)) if rows else set()
    ids = [row.get("id", _MISSING) for row in rows]
    for index, value in enumerate(ids):
        if value is _MISSING:
            raise CaseError(
                CaseIssue(f"row {index} has no id", component=name, field="id", file=file)
            )
    columns: dict[str, list[Any]] = {}
    for key in keys:
        column = spec.column(key) if key in spec.column_names else None
        default = None if column is None else column.default
        values = [row.get(key, _MISSING) for row in rows]
        if column is not None and column.required:
            for row_id, value in zip(ids, values, strict=True):
                if value is _MISSING:
                    raise CaseError(
                        CaseIssue("missing required field", name, _as_id(row_id), key, file)
                    )
        columns[key] = [default if v is _MISSING else v for v in values]
    return columns, ids


def _as_id(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _parse_column(
    column: Column,
    values: list[Any],
    table: str,
    ids: npt.NDArray[np.int32] | None,
    file: str | None,
) -> npt.NDArray[Any]:
    """Convert one column's JSON values; on a bad value, name the row id and the field."""

    def bad(position: int, message: str) -> CaseError:
        row_id = None if ids is None else int(ids[position])
        return CaseError(CaseIssue(message, table, row_id, column.name, file))

    if column.enum is not None:
        filled = [column.default if v is None else v for v in values]
        codes = enum_codes(column.enum, np.asarray(filled, dtype=object))
        wrong = np.flatnonzero(codes < 0)
        if wrong.size:
            allowed = ", ".join(m.value for m in column.enum)
            raise bad(int(wrong[0]), f"unknown value {filled[wrong[0]]!r} (allowed: {allowed})")
        return codes
    kind = np.dtype(column.dtype).kind
    if kind == "b":
        filled = [column.default if v is None else v for v in values]
        arr = np.asarray(filled, dtype=object)
        is_bool = np.fromiter((isinstance(v, bool) for v in filled), dtype=bool, count=len(filled))
        if not is_bool.all():
            position = int(np.flatnonzero(~is_bool)[0])
            raise bad(position, f"must be true or false, got {filled[position]!r}")
        return arr.astype(bool)
    if kind == "i":
        if column.required or column.default is None:
            missing = [i for i, v in enumerate(values) if v is None]
            if missing:
                raise bad(missing[0], "must not be null")
        filled = [column.default if v is None else v for v in values]
        is_int = np.fromiter(
            (isinstance(v, int) and not isinstance(v, bool) for v in filled),
            dtype=bool,
            count=len(filled),
        )
        if not is_int.all():
            position = int(np.flatnonzero(~is_int)[0])
            raise bad(position, f"must be an integer, got {filled[position]!r}")
        info = np.iinfo(np.dtype(column.dtype))
        arr64 = np.asarray(filled, dtype=np.int64)
        out_of_range = np.flatnonzero((arr64 < info.min) | (arr64 > info.max))
        if out_of_range.size:
            position = int(out_of_range[0])
            raise bad(position, f"{filled[position]} is out of range {info.min}..{info.max}")
        return arr64.astype(column.dtype)
    # float column
    is_number = np.fromiter(
        (v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values),
        dtype=bool,
        count=len(values),
    )
    if not is_number.all():
        position = int(np.flatnonzero(~is_number)[0])
        raise bad(position, f"must be a number, got {values[position]!r}")
    arr = np.asarray(values, dtype=np.float64)  # None becomes NaN
    if column.required:
        nan = np.flatnonzero(np.isnan(arr))
        if nan.size:
            raise bad(int(nan[0]), "must be a number, got null")
    elif column.default is not None and not (
        isinstance(column.default, float) and math.isnan(column.default)
    ):
        arr = np.where(np.isnan(arr), float(column.default), arr)
    return arr


def case_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the case format, generated from the column registry."""

    def column_schema(column: Column) -> dict[str, Any]:
        if column.enum is not None:
            return {"enum": [m.value for m in column.enum], "description": column.doc}
        kind = np.dtype(column.dtype).kind
        json_type: Any = {"b": "boolean", "i": "integer"}.get(kind, ["number", "null"])
        return {"type": json_type, "description": column.doc}

    tables: dict[str, Any] = {}
    for name, spec in TABLES.items():
        properties = {c.name: column_schema(c) for c in spec.columns}
        required = [c.name for c in spec.columns if c.required]
        row = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        columns = {
            "type": "object",
            "properties": {k: {"type": "array", "items": v} for k, v in properties.items()},
            "required": required,
            "additionalProperties": False,
        }
        tables[name] = {
            "description": spec.doc,
            "oneOf": [{"type": "array", "items": row}, columns],
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "OpenFeeder case file",
        "type": "object",
        "required": ["format", "version", "components"],
        "properties": {
            "format": {"const": CASE_FORMAT},
            "version": {"const": CASE_VERSION},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "frequency_hz": {"enum": [50, 60]},
            "components": {
                "type": "object",
                "properties": tables,
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }


def case_tables_markdown() -> str:
    """The column reference of every table as Markdown (the body of ``docs/case-format.md``)."""
    lines: list[str] = []
    for name, spec in TABLES.items():
        lines += [f"### `{name}`", "", spec.doc[0].upper() + spec.doc[1:] + ".", ""]
        lines += ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
        for column in spec.columns:
            if column.enum is not None:
                kind = " / ".join(f"`{m.value}`" for m in column.enum)
            elif column.refers_to:
                kind = "id of " + " / ".join(column.refers_to)
            else:
                kind = {"b": "boolean", "i": "integer"}.get(np.dtype(column.dtype).kind, "number")
            default = column.default
            if isinstance(default, float) and math.isnan(default):
                shown = "null"
            elif default is None:
                shown = ""
            elif isinstance(default, bool):
                shown = str(default).lower()
            elif isinstance(default, float):
                shown = f"{default:.6g}"
            else:
                shown = str(default)
            required = "yes" if column.required else ""
            lines.append(f"| `{column.name}` | {kind} | {required} | {shown} | {column.doc} |")
        lines.append("")
    return "\n".join(lines)
