"""Grid data model: component tables, case files, built-in cases, importers and topology."""

from openfeeder.model.components import (
    NO_ID,
    TABLES,
    BranchEnd,
    CustomerClass,
    DerKind,
    LineKind,
    MeasurementKind,
    SwitchKind,
    TapSide,
    WindingType,
    empty_table,
    enum_code,
    enum_codes,
    enum_from_code,
)
from openfeeder.model.grid import GridModel, lookup

__all__ = [
    "NO_ID",
    "TABLES",
    "BranchEnd",
    "CustomerClass",
    "DerKind",
    "GridModel",
    "LineKind",
    "MeasurementKind",
    "SwitchKind",
    "TapSide",
    "WindingType",
    "empty_table",
    "enum_code",
    "enum_codes",
    "enum_from_code",
    "lookup",
]
