"""Component tables of the grid model: enums, column definitions and numpy dtypes.

Every component table is a numpy structured array with an ``id`` column. Ids are unique across the
whole model (one id space, as in power-grid-model), so an id names one component without its table.
Quantities carry their unit in the column name. Enumerations are stored as small integer codes (the
position of the member in its ``StrEnum``) and written to case files by their string value.

The :data:`TABLES` registry is the single description of the columns: dtypes, defaults, which columns
are required in a case file, which enum a code column holds and which columns refer to other
components. Case-file parsing, validation, the JSON schema and the documentation all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "NO_ID",
    "TABLES",
    "BranchEnd",
    "Column",
    "CustomerClass",
    "DerKind",
    "LineKind",
    "MeasurementKind",
    "SwitchKind",
    "TableSpec",
    "TapSide",
    "WindingType",
    "empty_table",
    "enum_code",
    "enum_codes",
    "enum_from_code",
]

NO_ID: Final = -1
"""Placeholder for an optional reference to another component (e.g. a bus-only measurement)."""


class LineKind(StrEnum):
    CABLE = "cable"
    OVERHEAD = "overhead"


class SwitchKind(StrEnum):
    BREAKER = "breaker"
    RECLOSER = "recloser"
    LOAD_BREAK = "load_break"
    SECTIONALIZER = "sectionalizer"
    FUSE = "fuse"
    DISCONNECTOR = "disconnector"


class CustomerClass(StrEnum):
    RESIDENTIAL = "residential"
    COMMERCIAL = "commercial"
    INDUSTRIAL = "industrial"
    PUBLIC = "public"


class DerKind(StrEnum):
    PV = "pv"
    WIND = "wind"
    STORAGE = "storage"
    EV_CHARGER = "ev_charger"
    CHP = "chp"
    OTHER = "other"


class MeasurementKind(StrEnum):
    METER = "meter"
    FTU = "ftu"
    PMU = "pmu"


class WindingType(StrEnum):
    """Transformer winding connection, as in IEC vector groups (``Dyn11``: D on HV, yn on LV)."""

    Y = "y"
    YN = "yn"
    D = "d"
    Z = "z"
    ZN = "zn"


class TapSide(StrEnum):
    HV = "hv"
    LV = "lv"


class BranchEnd(StrEnum):
    FROM = "from"
    TO = "to"


def enum_codes(enum: type[StrEnum], values: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Map string values to the integer codes stored in tables; unknown values give -1."""
    members = [m.value for m in enum]
    arr = np.asarray(values, dtype=object)
    out = np.full(arr.shape, -1, dtype=np.int8)
    for code, value in enumerate(members):
        out[arr == value] = code
    return out


def enum_code(member: StrEnum) -> int:
    """The integer code of one enum member."""
    return list(type(member)).index(member)


def enum_from_code(enum: type[StrEnum], codes: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """Map stored integer codes back to the string values written in case files."""
    members = np.array([m.value for m in enum])
    return members[np.asarray(codes, dtype=np.int64)]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a component table."""

    name: str
    dtype: str
    doc: str
    required: bool = False
    default: float | int | bool | str | None = None
    enum: type[StrEnum] | None = None
    refers_to: tuple[str, ...] = ()
    """Tables whose ids this column may hold (empty: not a reference)."""
    optional_ref: bool = False
    """The reference may be :data:`NO_ID` (absent)."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    doc: str
    columns: tuple[Column, ...]
    dtype: np.dtype[np.void] = field(init=False)

    def __post_init__(self) -> None:
        dt = np.dtype([(c.name, np.int8 if c.enum else np.dtype(c.dtype)) for c in self.columns])
        object.__setattr__(self, "dtype", dt)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _id() -> Column:
    return Column("id", "i4", "unique id across the whole model", required=True)


def _ref(name: str, doc: str, *tables: str, optional: bool = False) -> Column:
    default = NO_ID if optional else None
    return Column(
        name,
        "i4",
        doc,
        required=not optional,
        default=default,
        refers_to=tables,
        optional_ref=optional,
    )


def _f(name: str, doc: str, default: float | None = None) -> Column:
    return Column(name, "f8", doc, required=default is None, default=default)


def _b(name: str, doc: str, default: bool) -> Column:
    return Column(name, "?", doc, default=default)


def _i(name: str, doc: str, default: int | None = None, dtype: str = "i4") -> Column:
    return Column(name, dtype, doc, required=default is None, default=default)


def _e(name: str, enum: type[StrEnum], doc: str, default: StrEnum | None = None) -> Column:
    return Column(
        name,
        "i1",
        doc,
        required=default is None,
        default=None if default is None else default.value,
        enum=enum,
    )


_BRANCHES = ("line", "transformer", "switch")

TABLES: Final[dict[str, TableSpec]] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "bus",
            "electrical node (busbar, substation, pole, customer connection point)",
            (
                _id(),
                _f("u_rated_kv", "nominal line-to-line voltage, kV"),
                _f("x_m", "easting for drawings and distances, m (NaN: unknown)", np.nan),
                _f("y_m", "northing for drawings and distances, m (NaN: unknown)", np.nan),
            ),
        ),
        TableSpec(
            "line",
            "overhead line or underground cable between two buses of the same voltage",
            (
                _id(),
                _ref("from_bus", "bus at the from end", "bus"),
                _ref("to_bus", "bus at the to end", "bus"),
                _e("kind", LineKind, "cable or overhead", LineKind.CABLE),
                _f("length_km", "length, km"),
                _f("r1_ohm_per_km", "positive-sequence resistance, ohm/km"),
                _f("x1_ohm_per_km", "positive-sequence reactance, ohm/km"),
                _f("c1_nf_per_km", "positive-sequence capacitance, nF/km", 0.0),
                _f("r0_ohm_per_km", "zero-sequence resistance, ohm/km (NaN: 3 x r1)", np.nan),
                _f("x0_ohm_per_km", "zero-sequence reactance, ohm/km (NaN: 3 x x1)", np.nan),
                _f("c0_nf_per_km", "zero-sequence capacitance, nF/km (NaN: 0.6 x c1)", np.nan),
                _f("i_rated_ka", "thermal current rating, kA"),
                _b("in_service", "connected at both ends", True),
            ),
        ),
        TableSpec(
            "transformer",
            "two-winding transformer with an optional tap changer",
            (
                _id(),
                _ref("hv_bus", "bus on the high-voltage side", "bus"),
                _ref("lv_bus", "bus on the low-voltage side", "bus"),
                _f("sn_mva", "rated apparent power, MVA"),
                _f("u_hv_kv", "rated voltage of the HV winding, kV"),
                _f("u_lv_kv", "rated voltage of the LV winding, kV"),
                _f("uk_percent", "short-circuit voltage, % of rated voltage"),
                _f("pk_kw", "short-circuit (copper) losses at rated current, kW", 0.0),
                _f("i0_percent", "no-load current, % of rated current", 0.0),
                _f("p0_kw", "no-load (iron) losses, kW", 0.0),
                _e("winding_hv", WindingType, "HV winding connection", WindingType.D),
                _e("winding_lv", WindingType, "LV winding connection", WindingType.YN),
                _i("clock", "vector group clock number (phase shift / 30 degrees)", 11, "i1"),
                _e("tap_side", TapSide, "side of the tap changer", TapSide.HV),
                _i("tap_pos", "present tap position", 0, "i1"),
                _i("tap_min", "lowest tap position", 0, "i1"),
                _i("tap_max", "highest tap position", 0, "i1"),
                _i("tap_nom", "neutral tap position", 0, "i1"),
                _f("tap_step_percent", "voltage change per tap step, % of rated voltage", 0.0),
                _b("in_service", "connected at both sides", True),
            ),
        ),
        TableSpec(
            "switch",
            "switching device between two buses (zero impedance when closed)",
            (
                _id(),
                _ref("from_bus", "bus on one side", "bus"),
                _ref("to_bus", "bus on the other side", "bus"),
                _e("kind", SwitchKind, "breaker, recloser, load_break, sectionalizer, fuse, ..."),
                _b("closed", "present position", True),
                _b("normally_open", "open in the normal configuration (e.g. a tie)", False),
                _b("remote_controllable", "can be operated remotely", False),
                _b("fault_indicator", "reports whether fault current passed it", False),
                _f("i_rated_ka", "rated current, kA", np.nan),
            ),
        ),
        TableSpec(
            "load",
            "consumer or aggregated group of customers at a bus",
            (
                _id(),
                _ref("bus", "bus it is connected to", "bus"),
                _f("p_mw", "active power consumed, MW (3-phase total)"),
                _f("q_mvar", "reactive power consumed, Mvar (3-phase total)", 0.0),
                _i("customers", "number of customers supplied", 1),
                _e(
                    "customer_class",
                    CustomerClass,
                    "residential, commercial, industrial or public",
                    CustomerClass.RESIDENTIAL,
                ),
                _f("share_a", "fraction of the load on phase a", 1 / 3),
                _f("share_b", "fraction of the load on phase b", 1 / 3),
                _f("share_c", "fraction of the load on phase c", 1 / 3),
                _i("priority", "restoration priority, 0 normal .. 3 critical", 0, "i1"),
                _b("in_service", "connected", True),
            ),
        ),
        TableSpec(
            "generator",
            "distributed energy resource (PQ injection): PV, wind, storage, EV charger, ...",
            (
                _id(),
                _ref("bus", "bus it is connected to", "bus"),
                _e("kind", DerKind, "pv, wind, storage, ev_charger, chp or other"),
                _f("p_mw", "active power injected, MW (negative: consuming, e.g. charging)"),
                _f("q_mvar", "reactive power injected, Mvar", 0.0),
                _f("sn_mva", "rated apparent power, MVA", np.nan),
                _f("p_min_mw", "lowest active power, MW", np.nan),
                _f("p_max_mw", "highest active power, MW", np.nan),
                _f("q_min_mvar", "lowest reactive power, Mvar", np.nan),
                _f("q_max_mvar", "highest reactive power, Mvar", np.nan),
                _b("in_service", "connected", True),
            ),
        ),
        TableSpec(
            "shunt",
            "switched shunt capacitor bank (or reactor, with negative q_step_mvar)",
            (
                _id(),
                _ref("bus", "bus it is connected to", "bus"),
                _f("q_step_mvar", "reactive power supplied per step at rated voltage, Mvar"),
                _f("p_step_mw", "active losses per step at rated voltage, MW", 0.0),
                _i("steps", "number of steps installed", 1, "i2"),
                _i("step", "steps in service now", 1, "i2"),
                _b("in_service", "connected", True),
            ),
        ),
        TableSpec(
            "source",
            "external grid (slack) with its short-circuit power",
            (
                _id(),
                _ref("bus", "bus it is connected to", "bus"),
                _f("u_ref_pu", "voltage setpoint, pu", 1.0),
                _f("u_ref_angle_deg", "voltage angle setpoint, degrees", 0.0),
                _f("sk_mva", "short-circuit power of the external grid, MVA", 1000.0),
                _f("rx_ratio", "R/X ratio of the external grid impedance", 0.1),
                _f("z01_ratio", "ratio of zero- to positive-sequence impedance", 1.0),
                _b("in_service", "connected", True),
            ),
        ),
        TableSpec(
            "measurement",
            "measurement device: smart meter, feeder terminal unit (FTU) or PMU",
            (
                _id(),
                _e("kind", MeasurementKind, "meter, ftu or pmu"),
                _ref("bus", "bus where the device sits (voltage is measured here)", "bus"),
                _ref(
                    "element",
                    "measured element: a line, transformer, switch (branch flow) or load",
                    *_BRANCHES,
                    "load",
                    optional=True,
                ),
                _e("element_end", BranchEnd, "for a branch: the end at the device", BranchEnd.FROM),
                _b("measures_voltage", "measures voltage at the bus", True),
                _b("measures_current", "measures current of the element", False),
                _b("measures_power", "measures P and Q of the element", False),
                _b("phasor", "synchronized phasors (PMU)", False),
                _f("accuracy_class", "accuracy class, % (e.g. 0.5, 1, 2)", 1.0),
            ),
        ),
    )
}


def empty_table(name: str, size: int = 0) -> npt.NDArray[np.void]:
    """A table of ``size`` rows filled with the column defaults (0 / NaN where there is none)."""
    spec = TABLES[name]
    arr = np.zeros(size, dtype=spec.dtype)
    for col in spec.columns:
        if col.default is None:
            continue
        if col.enum is not None:
            arr[col.name] = list(col.enum).index(col.enum(str(col.default)))
        else:
            arr[col.name] = col.default
    return arr
