"""pandapower net -> :class:`GridModel`: the entry points, the checks of unsupported elements and
the conversion of each table except transformers (:mod:`.trafo_import`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from openfeeder.errors import CaseError, CaseIssue
from openfeeder.model.components import (
    NO_ID,
    BranchEnd,
    CustomerClass,
    DerKind,
    LineKind,
    MeasurementKind,
    SwitchKind,
    empty_table,
    enum_code,
    enum_codes,
)
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.pandapower_io.frames import (
    check_bus_refs,
    fail,
    floats,
    hint_bools,
    hint_floats,
    hint_values,
    integral,
    strings,
    table_frame,
)
from openfeeder.model.pandapower_io.ids import Ids, Switches, branch_ends, split_switches
from openfeeder.model.pandapower_io.mapping import (
    BUS_REFERENCES,
    GEO_POINT,
    SGEN_TYPE_OUT,
    SLOTS,
    SWITCH_TYPE_IN,
    SWITCH_TYPE_OUT,
    UNSUPPORTED,
    Floats,
    Table,
    require_pandapower,
)
from openfeeder.model.pandapower_io.trafo_import import import_trafos

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["from_pandapower", "import_pandapower_json"]


def import_pandapower_json(path: str | Path, *, name: str | None = None) -> GridModel:
    """Read a net saved with ``pandapower.to_json`` and import it (see :func:`from_pandapower`)."""
    pp = require_pandapower()
    file = str(path)
    if not Path(path).is_file():
        raise CaseError(CaseIssue("no such file", file=file))
    try:
        net = pp.from_json(file)
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CaseError(CaseIssue(f"not a pandapower net: {err}", file=file)) from err
    try:
        return from_pandapower(net, name=name)
    except CaseError as err:
        issue = err.issue
        raise CaseError(
            CaseIssue(issue.message, issue.component, issue.component_id, issue.field, file)
        ) from err


def from_pandapower(net: Any, *, name: str | None = None) -> GridModel:
    """The OpenFeeder model of a pandapower net (ids and mapping: see the package documentation)."""
    require_pandapower()
    for table, reason in UNSUPPORTED.items():
        frame = net.get(table)
        if frame is not None and len(frame) > 0:
            fail(
                table, frame.index[0], f"unsupported element: pandapower table '{table}' ({reason})"
            )
    frames = {t: table_frame(net, t) for t in SLOTS}
    bus_df = frames["bus"]
    if "in_service" in bus_df:
        out = ~bus_df["in_service"].to_numpy(dtype=bool)
        if out.any():
            fail(
                "bus",
                bus_df.index[out][0],
                "bus is out of service; OpenFeeder buses have no in_service flag "
                "(drop it and its elements in pandapower, or put it in service)",
                "in_service",
            )
    for table, columns in BUS_REFERENCES.items():
        for column in columns:
            check_bus_refs(bus_df, table, frames[table], column)
    switches = split_switches(frames)
    ids = Ids.assign(frames, switches.aux_switch_index)
    bus = _import_buses(frames["bus"], ids, switches)
    line = _import_lines(frames["line"], ids, switches)
    transformer = import_trafos(frames["trafo"], ids, switches)
    switch = _import_switches(frames["switch"], ids, switches)
    load = _import_loads(frames["load"], ids)
    generator = np.concatenate(
        [_import_sgens(frames["sgen"], ids), _import_storages(frames["storage"], ids)]
    )
    shunt = _import_shunts(frames["shunt"], frames["bus"], ids)
    source = _import_ext_grids(frames["ext_grid"], ids)
    measurement = _import_measurements(frames, ids)
    net_name = net.get("name")
    description = net.get("of_description")
    return GridModel(
        name=name or (str(net_name) if net_name else "unnamed"),
        description=str(description) if isinstance(description, str) else "",
        frequency_hz=float(net.get("f_hz", 50.0)),
        bus=bus,
        line=line,
        transformer=transformer,
        switch=switch,
        load=load,
        generator=generator,
        shunt=shunt,
        source=source,
        measurement=measurement,
    )


def _import_buses(df: pd.DataFrame, ids: Ids, switches: Switches) -> Table:
    out = empty_table("bus", len(df))
    out["id"] = ids.rows("bus", df)
    out["u_rated_kv"] = floats(df, "vn_kv")
    if "geo" in df and len(df):
        x, y = _geo_points(df["geo"])
        out["x_m"], out["y_m"] = x, y
    aux = empty_table("bus", switches.aux_rows.size)
    if aux.size:
        rows = lookup(df.index.to_numpy(dtype=np.int64), switches.bus[switches.aux_rows])
        aux["id"] = ids.aux
        aux["u_rated_kv"] = out["u_rated_kv"][rows]
        aux["x_m"] = out["x_m"][rows]
        aux["y_m"] = out["y_m"][rows]
    return np.concatenate([out, aux])


def _geo_points(geo: pd.Series[Any]) -> tuple[Floats, Floats]:
    """x and y of GeoJSON points: text as pandapower 3 stores it (or the repr of a dict)."""
    xy = geo.astype("string").str.extract(GEO_POINT)
    x = np.asarray(xy[0].astype(float).to_numpy(na_value=np.nan), dtype=np.float64)
    y = np.asarray(xy[1].astype(float).to_numpy(na_value=np.nan), dtype=np.float64)
    return x, y


def _import_lines(df: pd.DataFrame, ids: Ids, switches: Switches) -> Table:
    out = empty_table("line", len(df))
    if not len(df):
        return out
    for column in ("g_us_per_km", "g0_us_per_km"):
        g = floats(df, column, 0.0)
        if (g != 0).any():
            row = int(np.flatnonzero(g != 0)[0])
            fail("line", df.index[row], "shunt conductance is not modelled (must be 0)", column)
    parallel = floats(df, "parallel", 1.0)
    out["id"] = ids.rows("line", df)
    out["from_bus"], out["to_bus"] = branch_ends(df, "line", ("from_bus", "to_bus"), ids, switches)
    overhead = strings(df, "type") == "ol"
    out["kind"] = np.where(overhead, enum_code(LineKind.OVERHEAD), enum_code(LineKind.CABLE))
    out["length_km"] = floats(df, "length_km")
    out["r1_ohm_per_km"] = floats(df, "r_ohm_per_km") / parallel
    out["x1_ohm_per_km"] = floats(df, "x_ohm_per_km") / parallel
    out["c1_nf_per_km"] = floats(df, "c_nf_per_km", 0.0) * parallel
    out["r0_ohm_per_km"] = floats(df, "r0_ohm_per_km") / parallel
    out["x0_ohm_per_km"] = floats(df, "x0_ohm_per_km") / parallel
    out["c0_nf_per_km"] = floats(df, "c0_nf_per_km") * parallel
    out["i_rated_ka"] = floats(df, "max_i_ka") * floats(df, "df", 1.0) * parallel
    out["in_service"] = floats(df, "in_service", 1.0) != 0
    return out


def _import_switches(df: pd.DataFrame, ids: Ids, switches: Switches) -> Table:
    out = empty_table("switch", len(df))
    if not len(df):
        return out
    out["id"] = ids.rows("switch", df)
    out["from_bus"] = ids.of("bus", switches.bus)
    to_bus = ids.of("bus", switches.other_bus)
    to_bus[switches.aux_rows] = ids.aux
    out["to_bus"] = to_bus
    pp_type = strings(df, "type")
    kind = np.full(len(df), enum_code(SwitchKind.LOAD_BREAK), dtype=np.int64)
    for pp_name, member in SWITCH_TYPE_IN.items():
        kind[pp_type == pp_name] = enum_code(member)
    hint, present = hint_values(df, "of_kind")
    hinted = enum_codes(SwitchKind, np.where(present, hint, ""))
    agree = np.zeros(len(df), dtype=bool)
    for member, pp_name in SWITCH_TYPE_OUT.items():
        agree |= (hinted == enum_code(member)) & (pp_type == pp_name)
    out["kind"] = np.where(agree, hinted, kind)
    closed = df["closed"].to_numpy(dtype=bool)
    out["closed"] = closed
    out["normally_open"] = hint_bools(df, "of_normally_open", ~closed)
    out["remote_controllable"] = hint_bools(df, "of_remote_controllable", np.zeros(len(df), bool))
    out["fault_indicator"] = hint_bools(df, "of_fault_indicator", np.zeros(len(df), bool))
    out["i_rated_ka"] = floats(df, "in_ka")
    return out


def _import_loads(df: pd.DataFrame, ids: Ids) -> Table:
    out = empty_table("load", len(df))
    if not len(df):
        return out
    for column in (
        "const_z_p_percent",
        "const_i_p_percent",
        "const_z_q_percent",
        "const_i_q_percent",
        "const_z_percent",
        "const_i_percent",
    ):
        share = floats(df, column, 0.0)
        if (share != 0).any():
            row = int(np.flatnonzero(share != 0)[0])
            fail(
                "load",
                df.index[row],
                f"voltage-dependent share {share[row]:g} %: loads are modelled as constant power",
                column,
            )
    scaling = floats(df, "scaling", 1.0)
    out["id"] = ids.rows("load", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["p_mw"] = floats(df, "p_mw") * scaling
    out["q_mvar"] = floats(df, "q_mvar", 0.0) * scaling
    customers, present = hint_floats(df, "of_customers")
    out["customers"] = np.where(present, customers, out["customers"])
    classes, present = hint_values(df, "of_customer_class")
    codes = enum_codes(CustomerClass, np.where(present, classes, ""))
    out["customer_class"] = np.where(codes >= 0, codes, out["customer_class"])
    for field in ("share_a", "share_b", "share_c", "priority"):
        values, present = hint_floats(df, f"of_{field}")
        out[field] = np.where(present, values, out[field])
    out["in_service"] = floats(df, "in_service", 1.0) != 0
    return out


def _import_sgens(df: pd.DataFrame, ids: Ids) -> Table:
    out = empty_table("generator", len(df))
    if not len(df):
        return out
    scaling = floats(df, "scaling", 1.0)
    pp_type = strings(df, "type")
    upper = np.char.upper(pp_type.astype(str))
    kind = np.full(len(df), enum_code(DerKind.OTHER), dtype=np.int64)
    kind[upper == "PV"] = enum_code(DerKind.PV)
    kind[upper == "WP"] = enum_code(DerKind.WIND)
    kind[np.char.startswith(upper, "CHP")] = enum_code(DerKind.CHP)
    hint, present = hint_values(df, "of_kind")
    hinted = enum_codes(DerKind, np.where(present, hint, ""))
    agree = np.zeros(len(df), dtype=bool)
    for member, pp_name in SGEN_TYPE_OUT.items():
        if member is not DerKind.STORAGE:
            agree |= (hinted == enum_code(member)) & (pp_type == pp_name)
    out["id"] = ids.rows("sgen", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["kind"] = np.where(agree, hinted, kind)
    out["p_mw"] = floats(df, "p_mw") * scaling
    out["q_mvar"] = floats(df, "q_mvar", 0.0) * scaling
    out["sn_mva"] = floats(df, "sn_mva")
    out["p_min_mw"] = floats(df, "min_p_mw")
    out["p_max_mw"] = floats(df, "max_p_mw")
    out["q_min_mvar"] = floats(df, "min_q_mvar")
    out["q_max_mvar"] = floats(df, "max_q_mvar")
    out["in_service"] = floats(df, "in_service", 1.0) != 0
    return out


def _import_storages(df: pd.DataFrame, ids: Ids) -> Table:
    out = empty_table("generator", len(df))
    if not len(df):
        return out
    scaling = floats(df, "scaling", 1.0)
    out["id"] = ids.rows("storage", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["kind"] = enum_code(DerKind.STORAGE)
    # pandapower storage follows the load convention (p > 0 charges); generators inject
    out["p_mw"] = -(floats(df, "p_mw") * scaling)
    out["q_mvar"] = -(floats(df, "q_mvar", 0.0) * scaling)
    out["sn_mva"] = floats(df, "sn_mva")
    out["p_min_mw"] = -floats(df, "max_p_mw")
    out["p_max_mw"] = -floats(df, "min_p_mw")
    out["q_min_mvar"] = -floats(df, "max_q_mvar")
    out["q_max_mvar"] = -floats(df, "min_q_mvar")
    out["in_service"] = floats(df, "in_service", 1.0) != 0
    return out


def _import_shunts(df: pd.DataFrame, bus_df: pd.DataFrame, ids: Ids) -> Table:
    out = empty_table("shunt", len(df))
    if not len(df):
        return out
    bus = df["bus"].to_numpy(dtype=np.int64)
    bus_kv = floats(bus_df, "vn_kv")[lookup(bus_df.index.to_numpy(dtype=np.int64), bus)]
    vn_kv = floats(df, "vn_kv")
    vn_kv = np.where(np.isnan(vn_kv), bus_kv, vn_kv)
    # pandapower gives the power at the shunt's vn_kv; ours is at the bus's rated voltage
    factor = (bus_kv / vn_kv) ** 2
    out["id"] = ids.rows("shunt", df)
    out["bus"] = ids.of("bus", bus)
    out["q_step_mvar"] = -floats(df, "q_mvar") * factor
    out["p_step_mw"] = floats(df, "p_mw", 0.0) * factor
    out["steps"] = integral(df, "shunt", "max_step", floats(df, "max_step", 1.0), "i2")
    out["step"] = integral(df, "shunt", "step", floats(df, "step", 1.0), "i2")
    out["in_service"] = floats(df, "in_service", 1.0) != 0
    return out


def _import_ext_grids(df: pd.DataFrame, ids: Ids) -> Table:
    out = empty_table("source", len(df))
    if not len(df):
        return out
    out["id"] = ids.rows("ext_grid", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["u_ref_pu"] = floats(df, "vm_pu", 1.0)
    out["u_ref_angle_deg"] = floats(df, "va_degree", 0.0)
    out["sk_mva"] = floats(df, "s_sc_max_mva", 1000.0)
    rx = floats(df, "rx_max", 0.1)
    out["rx_ratio"] = rx
    x0x = floats(df, "x0x_max")
    r0x0 = floats(df, "r0x0_max")
    z01 = np.where(np.isnan(r0x0), x0x, x0x * np.sqrt(1 + r0x0**2) / np.sqrt(1 + rx**2))
    hint, present = hint_floats(df, "of_z01_ratio")
    present &= (x0x == hint) & (r0x0 == rx)
    out["z01_ratio"] = np.where(present, hint, np.where(np.isnan(z01), 1.0, z01))
    out["in_service"] = floats(df, "in_service", 1.0) != 0
    return out


def _import_measurements(frames: dict[str, pd.DataFrame], ids: Ids) -> Table:
    df = frames["of_measurement"]
    out = empty_table("measurement", len(df))
    if not len(df):
        return out
    out["id"] = ids.rows("of_measurement", df)
    kinds = enum_codes(MeasurementKind, strings(df, "kind"))
    if (kinds < 0).any():
        row = int(np.flatnonzero(kinds < 0)[0])
        fail("of_measurement", df.index[row], "unknown measurement kind", "kind")
    out["kind"] = kinds
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    element = floats(df, "element", float(NO_ID)).astype(np.int64)
    element_table = strings(df, "element_table")
    ref = np.full(len(df), NO_ID, dtype=np.int64)
    for table in ("line", "trafo", "switch", "load"):
        mask = (element_table == table) & (element != NO_ID)
        ref[mask] = ids.of(table, element[mask])
    out["element"] = ref
    ends = enum_codes(BranchEnd, strings(df, "element_end"))
    out["element_end"] = np.where(ends >= 0, ends, out["element_end"])
    for field in ("measures_voltage", "measures_current", "measures_power", "phasor"):
        out[field] = hint_bools(df, field, out[field])
    out["accuracy_class"] = floats(df, "accuracy_class", 1.0)
    return out
