"""The ``turin`` case: the two-feeder urban test grid of seed 003 (Orlando et al., section V).

What the paper gives (its Table II and Fig. 7): two HV/MV primary substations at 220/22 kV, twelve
22 kV / 230 V (phase voltage, so 0.4 kV line-to-line) secondary substations 220 m apart, every
secondary substation supplying a residential LV grid, one normally-open switch between the two
feeders, radial operation required, one smart meter at each primary and each secondary substation
(14 in all).

What it does not give, and the typical values chosen here:

* External grid: 220 kV, short-circuit power 5000 MVA, R/X 0.1 (typical of a meshed 220 kV grid).
* Primary transformers: 40 MVA, 220/22 kV, uk 13 %, copper losses 160 kW, iron losses 25 kW,
  i0 0.3 %, on-load tap changer +-10 steps of 1.5 % on the HV side (typical of Italian HV/MV
  primaries, which use 25-63 MVA units with uk 12-15 %). Vector group YNyn0 with both neutrals
  earthed: Italian MV networks are actually compensated (Petersen coil); the solid earth here keeps a
  measurable ground-fault current for the fault-location functions, and an earthing impedance can be
  added later.
* The primary-to-first-secondary distance is "n.d." in the paper; 220 m like the others.
* MV cable: 3 x 1 x 185 mm2 Al, 12/20 kV (e.g. ARG7H1R): r1 0.20 ohm/km (at operating temperature),
  x1 0.11 ohm/km, c1 280 nF/km, rating 0.32 kA buried; zero sequence r0 0.90, x0 0.42 ohm/km, c0 = c1
  (screened single-core cables).
* Each secondary substation is a ring-main unit: an incoming and an outgoing remote-controlled
  load-break switch with fault indicators around the RMU busbar, and a 400 kVA 22/0.4 kV Dyn11
  transformer (uk 4 %, copper losses 4.6 kW, iron losses 0.61 kW, i0 0.5 %) to the LV busbar.
* Feeder head: a remote-controlled breaker with a fault indicator at each primary's MV busbar.
* The open point is the outgoing switch of the last secondary substation of feeder B; a 220 m cable
  joins the last RMUs of both feeders.
* Residential loads: 80-150 customers per secondary substation, about 1.5 kW per customer at peak
  (Italian households have 3 kW contracts; after diversity), power factor 0.95, a mild phase imbalance
  (shares 0.36 / 0.33 / 0.31 and permutations) for unbalanced studies.
* Measurement devices: an FTU at each feeder-head breaker (voltage, current and power, class 0.5) and
  a smart meter at each secondary substation's LV load (class 1).

Ids: buses 1-99, lines 100-199, transformers 200-299, switches 300-399, loads 400-499,
sources 500-509, measurement devices 600-699.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from openfeeder.model.components import (
    NO_ID,
    BranchEnd,
    CustomerClass,
    LineKind,
    MeasurementKind,
    SwitchKind,
    TapSide,
    WindingType,
    empty_table,
    enum_code,
)
from openfeeder.model.grid import GridModel

__all__ = ["SPACING_M", "build_turin"]

SPACING_M: Final = 220.0
SECONDARIES_PER_FEEDER: Final = 6
_CUSTOMERS: Final = (120, 95, 140, 80, 150, 110, 100, 130, 85, 145, 90, 125)
_SHARES: Final = ((0.36, 0.33, 0.31), (0.31, 0.36, 0.33), (0.33, 0.31, 0.36))
_KW_PER_CUSTOMER: Final = 1.5
_POWER_FACTOR: Final = 0.95


def build_turin() -> GridModel:
    """Build the ``turin`` case (54 buses, 13 lines, 14 transformers, 26 switches, 12 loads)."""
    buses: list[tuple[int, float, float, float]] = []  # id, kV, x, y
    lines: list[tuple[int, int, int, float]] = []  # id, from, to, km
    trafos: list[tuple[int, int, int, bool]] = []  # id, hv, lv, is_primary
    switches: list[tuple[int, int, int, int, bool, bool]] = []  # id, from, to, kind, closed, no
    loads: list[tuple[int, int, int, tuple[float, float, float]]] = []
    sources: list[tuple[int, int]] = []
    meters: list[tuple[int, int, int, int, int]] = []  # id, kind, bus, element, end

    next_id = {"bus": 1, "line": 100, "trafo": 200, "switch": 300, "load": 400, "meas": 600}

    def new(kind: str) -> int:
        value = next_id[kind]
        next_id[kind] += 1
        return value

    def bus(u_kv: float, x_m: float, y_m: float) -> int:
        bus_id = new("bus")
        buses.append((bus_id, u_kv, x_m, y_m))
        return bus_id

    last_out: list[int] = []
    last_rmu: list[int] = []
    total_span_m = (2 * SECONDARIES_PER_FEEDER + 1) * SPACING_M
    for feeder in range(2):
        direction = 1.0 if feeder == 0 else -1.0
        x0 = 0.0 if feeder == 0 else total_span_m
        hv = bus(220.0, x0, -60.0)
        mv = bus(22.0, x0, -30.0)
        sources.append((500 + feeder, hv))
        trafos.append((new("trafo"), hv, mv, True))
        head = bus(22.0, x0, 0.0)
        breaker = new("switch")
        switches.append((breaker, mv, head, enum_code(SwitchKind.BREAKER), True, False))
        meters.append(
            (new("meas"), enum_code(MeasurementKind.FTU), mv, breaker, enum_code(BranchEnd.FROM))
        )
        upstream = head
        for k in range(SECONDARIES_PER_FEEDER):
            x = x0 + direction * SPACING_M * (k + 1)
            cable_in, rmu, cable_out = bus(22.0, x, 0.0), bus(22.0, x, 0.0), bus(22.0, x, 0.0)
            lv = bus(0.4, x, 30.0)
            lines.append((new("line"), upstream, cable_in, SPACING_M / 1000.0))
            is_open_point = feeder == 1 and k == SECONDARIES_PER_FEEDER - 1
            lbs = enum_code(SwitchKind.LOAD_BREAK)
            switches.append((new("switch"), cable_in, rmu, lbs, True, False))
            switches.append((new("switch"), rmu, cable_out, lbs, not is_open_point, is_open_point))
            trafos.append((new("trafo"), rmu, lv, False))
            index = feeder * SECONDARIES_PER_FEEDER + k
            load_id = new("load")
            loads.append((load_id, lv, _CUSTOMERS[index], _SHARES[index % 3]))
            meters.append((new("meas"), enum_code(MeasurementKind.METER), lv, load_id, NO_ID))
            upstream = cable_out
        last_out.append(upstream)
        last_rmu.append(rmu)
    # the cable joining the last RMUs of both feeders; B's outgoing switch is the open point
    lines.append((new("line"), last_out[0], last_out[1], SPACING_M / 1000.0))

    bus_t = empty_table("bus", len(buses))
    bus_t["id"], bus_t["u_rated_kv"], bus_t["x_m"], bus_t["y_m"] = np.array(buses).T

    line_t = empty_table("line", len(lines))
    arr = np.array(lines)
    line_t["id"], line_t["from_bus"], line_t["to_bus"], line_t["length_km"] = arr.T
    line_t["kind"] = enum_code(LineKind.CABLE)
    line_t["r1_ohm_per_km"], line_t["x1_ohm_per_km"], line_t["c1_nf_per_km"] = 0.20, 0.11, 280.0
    line_t["r0_ohm_per_km"], line_t["x0_ohm_per_km"], line_t["c0_nf_per_km"] = 0.90, 0.42, 280.0
    line_t["i_rated_ka"] = 0.32

    trafo_t = empty_table("transformer", len(trafos))
    primary = np.array([t[3] for t in trafos])
    trafo_t["id"] = [t[0] for t in trafos]
    trafo_t["hv_bus"] = [t[1] for t in trafos]
    trafo_t["lv_bus"] = [t[2] for t in trafos]
    trafo_t["sn_mva"] = np.where(primary, 40.0, 0.4)
    trafo_t["u_hv_kv"] = np.where(primary, 220.0, 22.0)
    trafo_t["u_lv_kv"] = np.where(primary, 22.0, 0.4)
    trafo_t["uk_percent"] = np.where(primary, 13.0, 4.0)
    trafo_t["pk_kw"] = np.where(primary, 160.0, 4.6)
    trafo_t["p0_kw"] = np.where(primary, 25.0, 0.61)
    trafo_t["i0_percent"] = np.where(primary, 0.3, 0.5)
    trafo_t["winding_hv"] = np.where(primary, enum_code(WindingType.YN), enum_code(WindingType.D))
    trafo_t["winding_lv"] = enum_code(WindingType.YN)
    trafo_t["clock"] = np.where(primary, 0, 11)
    trafo_t["tap_side"] = enum_code(TapSide.HV)
    trafo_t["tap_min"] = np.where(primary, -10, -2)
    trafo_t["tap_max"] = np.where(primary, 10, 2)
    trafo_t["tap_step_percent"] = np.where(primary, 1.5, 2.5)

    switch_t = empty_table("switch", len(switches))
    arr = np.array(switches, dtype=np.int64)
    switch_t["id"], switch_t["from_bus"], switch_t["to_bus"], switch_t["kind"] = arr[:, :4].T
    switch_t["closed"], switch_t["normally_open"] = arr[:, 4].astype(bool), arr[:, 5].astype(bool)
    switch_t["remote_controllable"] = True
    switch_t["fault_indicator"] = True
    is_breaker = switch_t["kind"] == enum_code(SwitchKind.BREAKER)
    switch_t["i_rated_ka"] = np.where(is_breaker, 1.25, 0.63)

    load_t = empty_table("load", len(loads))
    load_t["id"] = [ld[0] for ld in loads]
    load_t["bus"] = [ld[1] for ld in loads]
    load_t["customers"] = [ld[2] for ld in loads]
    load_t["p_mw"] = load_t["customers"] * _KW_PER_CUSTOMER / 1000.0
    load_t["q_mvar"] = load_t["p_mw"] * np.tan(np.arccos(_POWER_FACTOR))
    load_t["customer_class"] = enum_code(CustomerClass.RESIDENTIAL)
    shares = np.array([ld[3] for ld in loads])
    load_t["share_a"], load_t["share_b"], load_t["share_c"] = shares.T

    source_t = empty_table("source", len(sources))
    source_t["id"] = [s[0] for s in sources]
    source_t["bus"] = [s[1] for s in sources]
    source_t["sk_mva"] = 5000.0
    source_t["rx_ratio"] = 0.1

    meas_t = empty_table("measurement", len(meters))
    arr = np.array(meters, dtype=np.int64)
    meas_t["id"], meas_t["kind"], meas_t["bus"], meas_t["element"] = arr[:, :4].T
    is_ftu = meas_t["kind"] == enum_code(MeasurementKind.FTU)
    meas_t["element_end"] = enum_code(BranchEnd.FROM)
    meas_t["measures_current"] = is_ftu
    meas_t["measures_power"] = True
    meas_t["accuracy_class"] = np.where(is_ftu, 0.5, 1.0)

    return GridModel(
        name="turin",
        description=(
            "Two-feeder urban grid after seed 003 (Orlando et al. 2022): two 220/22 kV primaries, "
            "twelve 22/0.4 kV secondary substations 220 m apart, one normally-open tie"
        ),
        bus=bus_t,
        line=line_t,
        transformer=trafo_t,
        switch=switch_t,
        load=load_t,
        source=source_t,
        measurement=meas_t,
    )
