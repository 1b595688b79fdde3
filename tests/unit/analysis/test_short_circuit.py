"""Short circuits (IEC 60909 against pandapower), line splitting, and the state during faults."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from openfeeder.analysis.faults import (
    FaultKind,
    fault_state,
    locate_on_line,
    split_line,
    symmetrical_components,
)
from openfeeder.analysis.phasors import solve_phasors
from openfeeder.analysis.shortcircuit import (
    FaultType,
    parse_phases,
    short_circuit,
    short_circuit_currents,
)
from openfeeder.errors import AnalysisError, CaseError
from openfeeder.model.cases import load_builtin
from openfeeder.model.grid import GridModel

pp = pytest.importorskip("pandapower")
sc = pytest.importorskip("pandapower.shortcircuit")

_PP_FAULT = {
    FaultType.THREE_PHASE: "3ph",
    FaultType.SINGLE_PHASE_TO_GROUND: "1ph",
    FaultType.PHASE_TO_PHASE: "2ph",
}
C_MAX_MV = 1.1


def _pandapower_net(model: GridModel, case: str) -> Any:
    """The exported net with the data pandapower needs for the same IEC 60909 model.

    Zero sequence: lines get the defaults the engine input uses where the case has none (3 x r1,
    3 x x1, 0.6 x c1), transformers z0 = z1 and (practically) no magnetizing branch, the external
    grid R0/X0 = R/X and X0/X = z01. Conventions: power-grid-model applies no K_T to transformers
    and takes a source's impedance as U^2 / sk, so pandapower's K_T is switched off (power station
    unit flag) and, in the max case, its s_sc_max_mva carries the c factor it divides by.
    Generators are switched off: power-grid-model's IEC 60909 leaves them out.
    """
    from openfeeder.model.pandapower_io import to_pandapower

    net = to_pandapower(model)
    line = net.line
    for zero, positive, factor in [
        ("r0_ohm_per_km", "r_ohm_per_km", 3.0),
        ("x0_ohm_per_km", "x_ohm_per_km", 3.0),
        ("c0_nf_per_km", "c_nf_per_km", 0.6),
    ]:
        default = factor * line[positive]
        line[zero] = line[zero].fillna(default) if zero in line.columns else default
    line["endtemp_degree"] = 20.0
    trafo = net.trafo
    trafo["vector_group"] = trafo["vector_group"].str.replace(r"\d+$", "", regex=True)
    trafo["vk0_percent"] = trafo["vk_percent"]
    trafo["vkr0_percent"] = trafo["vkr_percent"]
    trafo["mag0_percent"] = 1e9
    trafo["mag0_rx"] = 0.0
    trafo["si0_hv_partial"] = 0.5
    trafo["power_station_unit"] = True
    # power-grid-model leaves generators out of a short circuit (no sgen k factor to compare)
    net.sgen["in_service"] = False
    grid = net.ext_grid
    grid["x0x_min"] = grid["x0x_max"]
    grid["r0x0_min"] = grid["r0x0_max"]
    if case == "max":
        grid["s_sc_max_mva"] = grid["s_sc_max_mva"] * C_MAX_MV
    return net


@pytest.mark.parametrize("case", ["turin", "cigre-mv"])
@pytest.mark.parametrize("scaling", ["max", "min"])
def test_fault_currents_agree_with_pandapower(case: str, scaling: str) -> None:
    model = load_builtin(case)
    mv_buses = model.bus["id"][model.bus["u_rated_kv"] > 1.0]
    buses = mv_buses[mv_buses != model.source["bus"][0]]
    net = _pandapower_net(model, scaling)
    for fault_type, pp_fault in _PP_FAULT.items():
        ours = short_circuit_currents(
            model, bus_ids=buses, fault_type=fault_type, voltage_scaling=scaling
        )
        sc.calc_sc(net, fault=pp_fault, case=scaling)
        reference = net.res_bus_sc.loc[buses, "ikss_ka"].to_numpy() * 1e3
        deviation = np.abs(ours / reference - 1.0)
        assert deviation.max() < 0.01, (case, fault_type, buses[np.argmax(deviation)])


def test_single_fault_matches_batch_and_carries_a_state() -> None:
    model = load_builtin("turin")
    result = short_circuit(model, bus_id=12, fault_type="slg", voltage_scaling="min")
    batch = short_circuit_currents(model, bus_ids=[12], fault_type="slg", voltage_scaling="min")
    assert result.ik_a == pytest.approx(float(batch[0]), rel=1e-9)
    row = int(result.state.bus_rows([12])[0])
    assert abs(result.state.u_v[row, 0]) < 1e-6 * abs(result.state.u_v[row, 1])
    assert np.all(result.state.i_load_a == 0.0)
    # KCL at the fault bus: line 102 arrives at its to end, switch 305 leaves from its from end
    rows = result.state.branch_rows([102, 305])
    into_branches = result.state.i_to_a[rows[0]] + result.state.i_from_a[rows[1]]
    assert np.abs(into_branches + result.i_fault_a).max() < 1e-3 * result.ik_a


def test_phase_parsing_and_bad_input() -> None:
    assert parse_phases("slg", None) == (0,)
    assert parse_phases("ll", "ca") == (0, 2)
    assert parse_phases("lll", None) == (0, 1, 2)
    with pytest.raises(AnalysisError, match="'ab' does not fit a slg fault"):
        parse_phases("slg", "ab")
    with pytest.raises(AnalysisError):
        parse_phases("ll", "ax")
    model = load_builtin("turin")
    with pytest.raises(CaseError, match="bus with id 9999") as err:
        short_circuit(model, bus_id=9999, fault_type="lll")
    assert err.value.component_id == 9999


def test_split_line_divides_the_line_in_proportion() -> None:
    model = load_builtin("turin")
    split = locate_on_line(model, 102, 55.0)
    top = int(model.all_ids().max())
    assert (split.bus_id, split.first_line_id, split.second_line_id) == (top + 1, top + 2, top + 3)
    line = split.model.line
    halves = line[np.isin(line["id"], [split.first_line_id, split.second_line_id])]
    original = model.line[model.line["id"] == 102][0]
    assert 102 not in line["id"]
    assert halves["length_km"].sum() == pytest.approx(original["length_km"])
    assert halves["length_km"][0] == pytest.approx(0.055)
    r_total = (halves["r1_ohm_per_km"] * halves["length_km"]).sum()
    x_total = (halves["x1_ohm_per_km"] * halves["length_km"]).sum()
    assert r_total == pytest.approx(original["r1_ohm_per_km"] * original["length_km"])
    assert x_total == pytest.approx(original["x1_ohm_per_km"] * original["length_km"])
    assert (halves["from_bus"][0], halves["to_bus"][0]) == (original["from_bus"], split.bus_id)
    assert (halves["from_bus"][1], halves["to_bus"][1]) == (split.bus_id, original["to_bus"])
    # the ends: no new bus
    assert split_line(model, 102, 0.0) == (model, int(original["from_bus"]))
    assert split_line(model, 102, 220.0)[1] == int(original["to_bus"])


def test_split_without_fault_leaves_the_power_flow_unchanged() -> None:
    model = load_builtin("turin")
    split = locate_on_line(model, 102, 80.0)
    before = solve_phasors(model).state(0)
    after = solve_phasors(split.model).state(0)
    rows = after.bus_rows(model.bus["id"])
    assert np.abs(after.u_v[rows] - before.u_v).max() < 1e-6 * np.abs(before.u_v).max()
    first, second = after.branch_rows([split.first_line_id, split.second_line_id])
    line = before.branch_rows([102])[0]
    # to the power flow's tolerance (1e-8 pu of voltage)
    np.testing.assert_allclose(after.i_from_a[first], before.i_from_a[line], atol=1e-4)
    np.testing.assert_allclose(after.i_to_a[second], before.i_to_a[line], atol=1e-4)


def test_split_errors_name_the_line_the_distance_and_the_length() -> None:
    model = load_builtin("turin")
    with pytest.raises(CaseError, match=r"line 102.*300.*220") as err:
        split_line(model, 102, 300.0)
    assert (err.value.component, err.value.component_id) == ("line", 102)
    with pytest.raises(CaseError, match="line 102"):
        split_line(model, 102, -1.0)
    with pytest.raises(CaseError, match="no line with id 999"):
        fault_state(model, line_id=999, distance_m=10.0, kind="slg")


def test_bolted_faults_collapse_the_faulted_phases_and_keep_kcl() -> None:
    model = load_builtin("turin")
    for kind, faulted in [("slg", [0]), ("lll", [0, 1, 2]), ("llg", [1, 2])]:
        result = fault_state(model, line_id=102, distance_m=110.0, kind=kind)
        nominal = abs(result.u_prefault_v[0])
        assert np.abs(result.u_fault_v[faulted]).max() < 1e-3 * nominal
        healthy = [p for p in range(3) if p not in faulted]
        assert np.abs(result.u_fault_v[healthy]).min() > 0.5 * nominal if healthy else True
        # all current entering the line from both ends goes into the fault (less the cable's
        # charging current, well under an ampere)
        row = int(result.state.branch_rows([102])[0])
        entering = result.state.i_from_a[row] + result.state.i_to_a[row]
        assert np.abs(entering - result.i_fault_a).max() < 1.0
        assert np.abs(result.i_fault_a[faulted]).min() > 5000.0
    ll = fault_state(model, line_id=102, distance_m=110.0, kind="ll", phase="bc")
    # equal up to the pre-fault unbalance the superposition leaves out (~1e-5 of the voltage)
    np.testing.assert_allclose(ll.u_fault_v[1], ll.u_fault_v[2], atol=1.0)
    np.testing.assert_allclose(ll.i_fault_a[1], -ll.i_fault_a[2], rtol=1e-9)
    assert ll.i_fault_a[0] == 0.0


def test_kcl_at_an_existing_bus_with_load_current() -> None:
    model = load_builtin("turin")
    result = fault_state(model, line_id=102, distance_m=0.0, kind="slg")
    assert result.fault_bus_id == 10
    state = result.state
    from_bus = np.concatenate([model.line["from_bus"], model.transformer["hv_bus"]])
    from_bus = np.concatenate([from_bus, model.switch["from_bus"]])
    to_bus = np.concatenate([model.line["to_bus"], model.transformer["lv_bus"]])
    to_bus = np.concatenate([to_bus, model.switch["to_bus"]])
    leaving = state.i_from_a[from_bus == 10].sum(axis=0) + state.i_to_a[to_bus == 10].sum(axis=0)
    loads = state.i_load_a[model.load["bus"] == 10].sum(axis=0)
    assert np.abs(leaving + loads + result.i_fault_a).max() < 1e-6 * np.abs(result.i_fault_a).max()


def test_superposition_of_load_and_fault_current() -> None:
    model = load_builtin("turin")
    no_load = np.zeros(model.load.size)
    idle = fault_state(model, line_id=104, distance_m=70.0, kind="slg", load_p_mw=no_load)
    # at no load the fault current is IEC 60909 with c = 1 scaled to the pre-fault voltage
    split = locate_on_line(model, 104, 70.0)
    iec = short_circuit(split.model, bus_id=split.bus_id, fault_type="slg", voltage_scaling="min")
    rated_v = 22e3 / np.sqrt(3.0)
    e_pre = symmetrical_components(idle.u_prefault_v)[1]
    assert abs(idle.i_fault_a[0]) == pytest.approx(iec.ik_a * abs(e_pre) / rated_v, rel=1e-3)
    loaded = fault_state(
        model, line_id=104, distance_m=70.0, kind="slg", load_p_mw=3.0 * model.load["p_mw"]
    )
    row = int(loaded.state.branch_rows([300])[0])
    # the breaker carries the fault current on top of its pre-fault load current
    change = loaded.state.i_from_a[row] - loaded.prefault.i_from_a[row]
    assert abs(change[0] - loaded.i_fault_a[0]) < 0.01 * abs(loaded.i_fault_a[0])
    assert np.abs(loaded.prefault.i_from_a[row]).min() > 50.0
    # a meter downstream of the fault (switch 309, beyond line 104) sees load current only
    downstream = int(loaded.state.branch_rows([309])[0])
    assert (
        np.abs(loaded.state.i_from_a[downstream]).max()
        < 2.0 * np.abs(loaded.prefault.i_from_a[downstream]).max()
    )
    assert loaded.dc_time_constant_s > 0.0


def test_high_impedance_ground_fault_current_is_small() -> None:
    model = load_builtin("turin")
    result = fault_state(model, line_id=102, distance_m=110.0, kind="slg", r_f_ohm=2000.0)
    expected = abs(result.u_prefault_v[0]) / 2000.0
    assert abs(result.i_fault_a[0]) == pytest.approx(expected, rel=0.02)
    assert abs(result.u_fault_v[0]) == pytest.approx(2000.0 * abs(result.i_fault_a[0]), rel=1e-4)


def test_open_conductor_stops_the_phase_current_and_unbalances_downstream() -> None:
    model = load_builtin("turin")
    result = fault_state(model, line_id=102, distance_m=110.0, kind="open", phase="a")
    state, prefault = result.state, result.prefault
    down = state.branch_rows([305, 306, 103])
    assert np.abs(state.i_from_a[down, 0]).max() < 0.5
    assert np.abs(prefault.i_from_a[down, 0]).min() > 5.0
    assert np.abs(state.i_from_a[down, 1:]).min() > 5.0
    assert np.abs(result.i_fault_a).max() == 0.0
    # no overcurrent at the feeder head: every phase at or below its pre-fault current
    head = int(state.branch_rows([300])[0])
    assert np.all(np.abs(state.i_from_a[head]) <= np.abs(prefault.i_from_a[head]) + 0.5)
    unbalance = result.voltage_unbalance
    mv_down = state.bus_rows([12, 16, 24])
    assert unbalance[mv_down].min() > 0.2
    assert unbalance[state.bus_rows([4])[0]] < 0.02
    assert abs(result.u_load_side_v[0]) < 0.7 * abs(result.u_fault_v[0])


def test_open_conductor_with_ground_contact_on_the_load_side() -> None:
    model = load_builtin("turin")
    result = fault_state(
        model, line_id=102, distance_m=110.0, kind=FaultKind.OPEN_GROUND, r_f_ohm=20.0
    )
    ground = abs(result.i_fault_a[0])
    assert ground > 1.0
    assert ground == pytest.approx(abs(result.u_load_side_v[0]) / 20.0, rel=1e-3)
    open_only = fault_state(model, line_id=102, distance_m=110.0, kind="open")
    assert abs(result.u_load_side_v[0]) < abs(open_only.u_load_side_v[0])
    # the source side of the break stays at its voltage: the contact is beyond the break
    assert abs(result.u_fault_v[0]) > 0.95 * abs(result.u_prefault_v[0])


def test_open_conductor_at_a_line_end_and_no_break_is_the_power_flow() -> None:
    model = load_builtin("turin")
    at_end = fault_state(model, line_id=102, distance_m=220.0, kind="open", phase="b")
    down = at_end.state.branch_rows([305])[0]
    assert abs(at_end.state.i_from_a[down, 1]) < 0.5
    flow = solve_phasors(model).state(0)
    np.testing.assert_allclose(at_end.prefault.u_v, flow.u_v, rtol=0, atol=1e-6 * 12.7e3)
