"""Conversion of a grid model into power-grid-model input arrays (vectorized, SI units).

The model's id space is power-grid-model's id space, so ids pass through unchanged. Switches become
``link`` components (zero impedance, status from ``closed``); lines, transformers and the rest map
field by field with unit conversion (kV -> V, MVA -> VA, per-km -> total, % -> fraction).

Sources: in a power flow the external grid is an ideal voltage source at its bus by default (the
usual slack-bus meaning, and what pandapower does), which is done by giving it a very large
short-circuit power; ``source_impedance=True`` uses the model's ``sk_mva`` and ``rx_ratio`` instead.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt
from power_grid_model import (
    ComponentType,
    DatasetType,
    LoadGenType,
    initialize_array,
    power_grid_meta_data,
)

from openfeeder.model.components import TapSide, enum_code
from openfeeder.model.grid import GridModel, lookup

__all__ = ["IDEAL_SOURCE_SK_VA", "EngineInput", "to_engine_input"]

IDEAL_SOURCE_SK_VA: Final = 1e15
"""Short-circuit power that makes a source ideal for power flow (drop < 1e-7 pu per 100 MVA)."""

EngineInput = dict[ComponentType, npt.NDArray[np.void]]


def to_engine_input(
    model: GridModel, *, symmetric: bool = True, source_impedance: bool = False
) -> EngineInput:
    """power-grid-model input data for ``model``."""
    data: EngineInput = {}
    bus = model.bus
    node = _uninitialized(ComponentType.node, bus.size)
    node["id"] = bus["id"]
    node["u_rated"] = bus["u_rated_kv"] * 1e3
    data[ComponentType.node] = node

    line = model.line
    pgm_line = _uninitialized(ComponentType.line, line.size)
    length = line["length_km"]
    pgm_line["id"] = line["id"]
    pgm_line["from_node"] = line["from_bus"]
    pgm_line["to_node"] = line["to_bus"]
    pgm_line["from_status"] = line["in_service"]
    pgm_line["to_status"] = line["in_service"]
    r1 = line["r1_ohm_per_km"] * length
    x1 = line["x1_ohm_per_km"] * length
    c1 = line["c1_nf_per_km"] * 1e-9 * length
    pgm_line["r1"], pgm_line["x1"], pgm_line["c1"], pgm_line["tan1"] = r1, x1, c1, 0.0
    pgm_line["r0"] = _or(line["r0_ohm_per_km"] * length, 3.0 * r1)
    pgm_line["x0"] = _or(line["x0_ohm_per_km"] * length, 3.0 * x1)
    pgm_line["c0"] = _or(line["c0_nf_per_km"] * 1e-9 * length, 0.6 * c1)
    pgm_line["tan0"] = 0.0
    pgm_line["i_n"] = line["i_rated_ka"] * 1e3
    data[ComponentType.line] = pgm_line

    trafo = model.transformer
    pgm_trafo = initialize_array(DatasetType.input, ComponentType.transformer, trafo.size)
    pgm_trafo["id"] = trafo["id"]
    pgm_trafo["from_node"] = trafo["hv_bus"]
    pgm_trafo["to_node"] = trafo["lv_bus"]
    pgm_trafo["from_status"] = trafo["in_service"]
    pgm_trafo["to_status"] = trafo["in_service"]
    pgm_trafo["u1"] = trafo["u_hv_kv"] * 1e3
    pgm_trafo["u2"] = trafo["u_lv_kv"] * 1e3
    pgm_trafo["sn"] = trafo["sn_mva"] * 1e6
    pgm_trafo["uk"] = trafo["uk_percent"] / 100.0
    pgm_trafo["pk"] = trafo["pk_kw"] * 1e3
    pgm_trafo["i0"] = trafo["i0_percent"] / 100.0
    pgm_trafo["p0"] = trafo["p0_kw"] * 1e3
    # WindingType codes are ordered as power-grid-model's (wye, wye_n, delta, zigzag, zigzag_n)
    pgm_trafo["winding_from"] = trafo["winding_hv"]
    pgm_trafo["winding_to"] = trafo["winding_lv"]
    pgm_trafo["clock"] = trafo["clock"]
    on_hv = trafo["tap_side"] == enum_code(TapSide.HV)
    pgm_trafo["tap_side"] = np.where(on_hv, 0, 1)  # BranchSide.from_side / to_side
    pgm_trafo["tap_pos"] = trafo["tap_pos"]
    pgm_trafo["tap_min"] = trafo["tap_min"]
    pgm_trafo["tap_max"] = trafo["tap_max"]
    pgm_trafo["tap_nom"] = trafo["tap_nom"]
    tap_winding_v = np.where(on_hv, trafo["u_hv_kv"], trafo["u_lv_kv"]) * 1e3
    pgm_trafo["tap_size"] = trafo["tap_step_percent"] / 100.0 * tap_winding_v
    data[ComponentType.transformer] = pgm_trafo

    switch = model.switch
    link = _uninitialized(ComponentType.link, switch.size)
    link["id"] = switch["id"]
    link["from_node"] = switch["from_bus"]
    link["to_node"] = switch["to_bus"]
    link["from_status"] = switch["closed"]
    link["to_status"] = switch["closed"]
    data[ComponentType.link] = link

    load = model.load
    load_type = ComponentType.sym_load if symmetric else ComponentType.asym_load
    pgm_load = _uninitialized(load_type, load.size)
    pgm_load["id"] = load["id"]
    pgm_load["node"] = load["bus"]
    pgm_load["status"] = load["in_service"]
    pgm_load["type"] = LoadGenType.const_power
    pgm_load["p_specified"] = _per_phase(load["p_mw"] * 1e6, load, symmetric)
    pgm_load["q_specified"] = _per_phase(load["q_mvar"] * 1e6, load, symmetric)
    data[load_type] = pgm_load

    gen = model.generator
    gen_type = ComponentType.sym_gen if symmetric else ComponentType.asym_gen
    pgm_gen = initialize_array(DatasetType.input, gen_type, gen.size)
    pgm_gen["id"] = gen["id"]
    pgm_gen["node"] = gen["bus"]
    pgm_gen["status"] = gen["in_service"]
    pgm_gen["type"] = LoadGenType.const_power
    pgm_gen["p_specified"] = _per_phase(gen["p_mw"] * 1e6, None, symmetric)
    pgm_gen["q_specified"] = _per_phase(gen["q_mvar"] * 1e6, None, symmetric)
    data[gen_type] = pgm_gen

    shunt = model.shunt
    pgm_shunt = initialize_array(DatasetType.input, ComponentType.shunt, shunt.size)
    u_rated_v = bus["u_rated_kv"][lookup(bus["id"], shunt["bus"])] * 1e3
    steps = shunt["step"].astype(np.float64)
    pgm_shunt["id"] = shunt["id"]
    pgm_shunt["node"] = shunt["bus"]
    pgm_shunt["status"] = shunt["in_service"]
    # S = U^2 * conj(Y): a capacitor (b > 0) supplies reactive power
    pgm_shunt["g1"] = steps * shunt["p_step_mw"] * 1e6 / u_rated_v**2
    pgm_shunt["b1"] = steps * shunt["q_step_mvar"] * 1e6 / u_rated_v**2
    pgm_shunt["g0"] = pgm_shunt["g1"]
    pgm_shunt["b0"] = pgm_shunt["b1"]
    data[ComponentType.shunt] = pgm_shunt

    src = model.source
    pgm_source = initialize_array(DatasetType.input, ComponentType.source, src.size)
    pgm_source["id"] = src["id"]
    pgm_source["node"] = src["bus"]
    pgm_source["status"] = src["in_service"]
    pgm_source["u_ref"] = src["u_ref_pu"]
    pgm_source["u_ref_angle"] = np.deg2rad(src["u_ref_angle_deg"])
    pgm_source["sk"] = src["sk_mva"] * 1e6 if source_impedance else IDEAL_SOURCE_SK_VA
    pgm_source["rx_ratio"] = src["rx_ratio"]
    pgm_source["z01_ratio"] = src["z01_ratio"]
    data[ComponentType.source] = pgm_source
    return {k: v for k, v in data.items() if v.size > 0}


def _uninitialized(component: ComponentType, size: int) -> npt.NDArray[np.void]:
    """An input array for a component whose every attribute is set by the caller.

    Skips the NaN fill of ``initialize_array``, which is measurable on 100,000-row tables; only for
    components where :func:`to_engine_input` writes every field.
    """
    dtype = power_grid_meta_data[DatasetType.input][component].dtype
    return np.empty(size, dtype=dtype)


def _or(values: npt.NDArray[np.float64], fallback: npt.NDArray[np.float64]) -> Any:
    return np.where(np.isnan(values), fallback, values)


def _per_phase(
    total: npt.NDArray[np.float64], load: npt.NDArray[np.void] | None, symmetric: bool
) -> npt.NDArray[np.float64]:
    """Total three-phase power, or its split over phases a, b, c (shape n x 3)."""
    if symmetric:
        return total
    if load is None:
        return np.repeat(total[:, None] / 3.0, 3, axis=1)
    shares = np.stack([load["share_a"], load["share_b"], load["share_c"]], axis=1)
    split: npt.NDArray[np.float64] = total[:, None] * shares
    return split
