"""What the pandapower import and export share: array types, the imported tables and their id
slots, pandapower's names for OpenFeeder kinds, the vector-group and GeoJSON patterns, the
copper-loss formula, and the lazy import of pandapower itself (see the package documentation)."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.errors import DependencyError
from openfeeder.model.components import DerKind, SwitchKind

Table = npt.NDArray[np.void]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_INSTALL_HINT: Final = "pandapower is needed for this: install openfeeder[pandapower]"

SLOTS: Final = (
    "bus",
    "line",
    "trafo",
    "switch",
    "load",
    "sgen",
    "storage",
    "shunt",
    "ext_grid",
    "of_measurement",
)
"""Imported pandapower tables, in the order of their id slots (auxiliary buses come last)."""

BUS_REFERENCES: Final = {
    "line": ("from_bus", "to_bus"),
    "trafo": ("hv_bus", "lv_bus"),
    "switch": ("bus",),
    "load": ("bus",),
    "sgen": ("bus",),
    "storage": ("bus",),
    "shunt": ("bus",),
    "ext_grid": ("bus",),
}

UNSUPPORTED: Final = {
    "gen": "voltage-controlled generators are not modelled",
    "trafo3w": "three-winding transformers are not modelled",
    "impedance": "impedance elements are not modelled",
    "ward": "ward equivalents are not modelled",
    "xward": "extended ward equivalents are not modelled",
    "dcline": "DC lines are not modelled",
    "motor": "motors are not modelled",
    "asymmetric_load": "asymmetric loads are not modelled",
    "asymmetric_sgen": "asymmetric static generators are not modelled",
    "svc": "static var compensators are not modelled",
    "ssc": "static synchronous compensators are not modelled",
    "tcsc": "thyristor-controlled series capacitors are not modelled",
    "vsc": "voltage source converters are not modelled",
    "vsc_stacked": "voltage source converters are not modelled",
    "vsc_bipolar": "voltage source converters are not modelled",
    "bus_dc": "DC grids are not modelled",
    "line_dc": "DC grids are not modelled",
    "load_dc": "DC grids are not modelled",
    "source_dc": "DC grids are not modelled",
}

SWITCH_TYPE_OUT: Final = {
    SwitchKind.BREAKER: "CB",
    SwitchKind.RECLOSER: "CB",
    SwitchKind.LOAD_BREAK: "LBS",
    SwitchKind.SECTIONALIZER: "LBS",
    SwitchKind.FUSE: "LS",
    SwitchKind.DISCONNECTOR: "DS",
}
SWITCH_TYPE_IN: Final = {
    "CB": SwitchKind.BREAKER,
    "LBS": SwitchKind.LOAD_BREAK,
    "LS": SwitchKind.LOAD_BREAK,
    "DS": SwitchKind.DISCONNECTOR,
}
SGEN_TYPE_OUT: Final = {
    DerKind.PV: "PV",
    DerKind.WIND: "WP",
    DerKind.STORAGE: "storage",
    DerKind.EV_CHARGER: "EV",
    DerKind.CHP: "CHP",
    DerKind.OTHER: "other",
}
STORAGE_TYPE: Final = "storage"

VECTOR_GROUP: Final = r"^(YN|Y|D|ZN|Z)(yn|y|d|zn|z)(\d{1,2})$"
GEO_POINT: Final = r"[\"']coordinates[\"']\s*:\s*[\[(]\s*([^,\s\])]+)\s*,\s*([^,\s\])]+)"


def require_pandapower() -> Any:
    """The pandapower module, imported on first use (:class:`DependencyError` if not installed)."""
    try:
        import pandapower
    except ImportError as err:
        raise DependencyError(_INSTALL_HINT) from err
    return pandapower


def vkr_percent_from_pk(pk_kw: Floats, sn_mva: Floats) -> Floats:
    """pandapower's ``vkr_percent`` for copper losses ``pk_kw`` (the exporter's formula)."""
    return pk_kw / (sn_mva * 1000.0) * 100.0
