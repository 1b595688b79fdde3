"""OpenFeeder :class:`GridModel` -> pandapower net: DataFrame indices are the OpenFeeder ids, fields
pandapower has no column for go to ``of_*`` columns (see *Round trips* in the package
documentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    TapSide,
    WindingType,
    enum_code,
    enum_from_code,
)
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.pandapower_io.mapping import (
    SGEN_TYPE_OUT,
    STORAGE_TYPE,
    SWITCH_TYPE_OUT,
    Floats,
    Table,
    require_pandapower,
    vkr_percent_from_pk,
)

__all__ = ["export_pandapower_json", "to_pandapower"]


def export_pandapower_json(model: GridModel, path: str | Path) -> None:
    """Write ``model`` as a pandapower JSON file (``pandapower.from_json`` reads it)."""
    pp = require_pandapower()
    pp.to_json(to_pandapower(model), str(path))


def to_pandapower(model: GridModel) -> Any:
    """A pandapower net of ``model``: DataFrame indices are the OpenFeeder ids."""
    pp = require_pandapower()
    import pandas as pd

    negative = [t for t, table in model.tables() if table.size and table["id"].min() < 0]
    if negative:
        raise CaseError(CaseIssue("pandapower needs ids >= 0", component=negative[0], field="id"))
    net = pp.create_empty_network(name=model.name, f_hz=model.frequency_hz)
    net["of_description"] = model.description
    bus = model.bus
    if bus.size:
        pp.create_buses(net, bus.size, bus["u_rated_kv"], index=bus["id"])
        net.bus["geo"] = _geo_strings(bus["x_m"], bus["y_m"])
    _export_lines(pp, net, model.line)
    _export_trafos(pp, net, model.transformer)
    _export_switches(pp, net, model.switch)
    _export_loads(pp, net, model.load)
    _export_generators(pp, net, model.generator)
    _export_shunts(pp, net, model)
    for row in model.source:
        rx = float(row["rx_ratio"])
        sk = float(row["sk_mva"])
        pp.create_ext_grid(
            net,
            int(row["bus"]),
            vm_pu=float(row["u_ref_pu"]),
            va_degree=float(row["u_ref_angle_deg"]),
            in_service=bool(row["in_service"]),
            s_sc_max_mva=sk,
            s_sc_min_mva=sk,
            rx_max=rx,
            rx_min=rx,
            x0x_max=float(row["z01_ratio"]),
            r0x0_max=rx,
            index=int(row["id"]),
            of_z01_ratio=float(row["z01_ratio"]),
        )
    net["of_measurement"] = _measurement_frame(pd, model)
    return net


def _geo_strings(x: Floats, y: Floats) -> list[str | None]:
    """GeoJSON points with the shortest exact float text (None where both are unknown)."""
    xs = np.char.replace(x.astype(str), "nan", "NaN")
    ys = np.char.replace(y.astype(str), "nan", "NaN")
    text = np.char.add(np.char.add(np.char.add('{"coordinates": [', xs), ", "), ys)
    text = np.char.add(text, '], "type": "Point"}')
    geo = text.astype(object)
    geo[np.isnan(x) & np.isnan(y)] = None
    points: list[str | None] = geo.tolist()
    return points


def _export_lines(pp: Any, net: Any, line: Table) -> None:
    if not line.size:
        return
    kind = np.where(line["kind"] == enum_code(LineKind.OVERHEAD), "ol", "cs").tolist()
    pp.create_lines_from_parameters(
        net,
        line["from_bus"],
        line["to_bus"],
        length_km=line["length_km"],
        r_ohm_per_km=line["r1_ohm_per_km"],
        x_ohm_per_km=line["x1_ohm_per_km"],
        c_nf_per_km=line["c1_nf_per_km"],
        max_i_ka=line["i_rated_ka"],
        index=line["id"],
        type=kind,
        in_service=line["in_service"],
        r0_ohm_per_km=line["r0_ohm_per_km"],
        x0_ohm_per_km=line["x0_ohm_per_km"],
        c0_nf_per_km=line["c0_nf_per_km"],
        g0_us_per_km=0.0,
    )


def _export_trafos(pp: Any, net: Any, trafo: Table) -> None:
    if not trafo.size:
        return
    hv = np.char.upper(enum_from_code(WindingType, trafo["winding_hv"]))
    lv = enum_from_code(WindingType, trafo["winding_lv"])
    clock = trafo["clock"].astype(np.int64)
    pp.create_transformers_from_parameters(
        net,
        trafo["hv_bus"],
        trafo["lv_bus"],
        sn_mva=trafo["sn_mva"],
        vn_hv_kv=trafo["u_hv_kv"],
        vn_lv_kv=trafo["u_lv_kv"],
        vkr_percent=vkr_percent_from_pk(trafo["pk_kw"], trafo["sn_mva"]),
        vk_percent=trafo["uk_percent"],
        pfe_kw=trafo["p0_kw"],
        i0_percent=trafo["i0_percent"],
        shift_degree=clock * 30.0,
        tap_side=enum_from_code(TapSide, trafo["tap_side"]).tolist(),
        tap_neutral=trafo["tap_nom"].astype(np.float64),
        tap_max=trafo["tap_max"].astype(np.float64),
        tap_min=trafo["tap_min"].astype(np.float64),
        tap_pos=trafo["tap_pos"].astype(np.float64),
        tap_step_percent=trafo["tap_step_percent"],
        tap_step_degree=0.0,
        tap_changer_type="Ratio",
        in_service=trafo["in_service"],
        index=trafo["id"],
        of_pk_kw=trafo["pk_kw"],
    )
    # pandapower's create function cannot take a list of vector groups
    net.trafo["vector_group"] = np.char.add(np.char.add(hv, lv), clock.astype(str)).astype(object)


def _export_switches(pp: Any, net: Any, switch: Table) -> None:
    if not switch.size:
        return
    kinds = enum_from_code(SwitchKind, switch["kind"])
    pp_type = np.array([SWITCH_TYPE_OUT[SwitchKind(k)] for k in SwitchKind])[switch["kind"]]
    pp.create_switches(
        net,
        switch["from_bus"],
        switch["to_bus"],
        et="b",
        closed=switch["closed"],
        type=pp_type.tolist(),
        index=switch["id"],
        in_ka=switch["i_rated_ka"],
        of_kind=kinds.tolist(),
        of_normally_open=switch["normally_open"],
        of_remote_controllable=switch["remote_controllable"],
        of_fault_indicator=switch["fault_indicator"],
    )


def _export_loads(pp: Any, net: Any, load: Table) -> None:
    if not load.size:
        return
    pp.create_loads(
        net,
        load["bus"],
        p_mw=load["p_mw"],
        q_mvar=load["q_mvar"],
        index=load["id"],
        in_service=load["in_service"],
        of_customers=load["customers"],
        of_customer_class=enum_from_code(CustomerClass, load["customer_class"]).tolist(),
        of_share_a=load["share_a"],
        of_share_b=load["share_b"],
        of_share_c=load["share_c"],
        of_priority=load["priority"],
    )


def _export_generators(pp: Any, net: Any, gen: Table) -> None:
    storage = gen["kind"] == enum_code(DerKind.STORAGE)
    sgen = gen[~storage]
    if sgen.size:
        pp_type = np.array([SGEN_TYPE_OUT[DerKind(k)] for k in DerKind])[sgen["kind"]]
        pp.create_sgens(
            net,
            sgen["bus"],
            p_mw=sgen["p_mw"],
            q_mvar=sgen["q_mvar"],
            sn_mva=sgen["sn_mva"],
            index=sgen["id"],
            type=pp_type.tolist(),
            in_service=sgen["in_service"],
            min_p_mw=sgen["p_min_mw"],
            max_p_mw=sgen["p_max_mw"],
            min_q_mvar=sgen["q_min_mvar"],
            max_q_mvar=sgen["q_max_mvar"],
            of_kind=enum_from_code(DerKind, sgen["kind"]).tolist(),
        )
    store = gen[storage]
    if store.size:
        pp.create_storages(
            net,
            store["bus"],
            p_mw=-store["p_mw"],
            max_e_mwh=np.nan,
            q_mvar=-store["q_mvar"],
            sn_mva=store["sn_mva"],
            index=store["id"],
            type=STORAGE_TYPE,
            in_service=store["in_service"],
            min_p_mw=-store["p_max_mw"],
            max_p_mw=-store["p_min_mw"],
            min_q_mvar=-store["q_max_mvar"],
            max_q_mvar=-store["q_min_mvar"],
        )


def _export_shunts(pp: Any, net: Any, model: GridModel) -> None:
    shunt = model.shunt
    if not shunt.size:
        return
    bus_kv = model.bus["u_rated_kv"][lookup(model.bus["id"], shunt["bus"])]
    pp.create_shunts(
        net,
        shunt["bus"],
        q_mvar=-shunt["q_step_mvar"],
        p_mw=shunt["p_step_mw"],
        vn_kv=bus_kv,
        step=shunt["step"],
        max_step=shunt["steps"],
        index=shunt["id"],
        in_service=shunt["in_service"],
    )


def _measurement_frame(pd: Any, model: GridModel) -> Any:
    meas = model.measurement
    element = meas["element"].astype(np.int64)
    element_table = np.full(meas.size, "", dtype=object)
    for ours, theirs in (
        ("line", "line"),
        ("transformer", "trafo"),
        ("switch", "switch"),
        ("load", "load"),
    ):
        found = lookup(model.table(ours)["id"], element) >= 0
        element_table[found & (element != NO_ID)] = theirs
    return pd.DataFrame(
        {
            "kind": enum_from_code(MeasurementKind, meas["kind"]).astype(object),
            "bus": meas["bus"].astype(np.int64),
            "element_table": element_table,
            "element": element,
            "element_end": enum_from_code(BranchEnd, meas["element_end"]).astype(object),
            "measures_voltage": meas["measures_voltage"],
            "measures_current": meas["measures_current"],
            "measures_power": meas["measures_power"],
            "phasor": meas["phasor"],
            "accuracy_class": meas["accuracy_class"],
        },
        index=pd.Index(meas["id"].astype(np.int64)),
    )
