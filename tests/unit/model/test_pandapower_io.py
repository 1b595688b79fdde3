"""pandapower import/export: mapping, ids, round trips, power-flow equivalence and errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from openfeeder.errors import CaseError, DependencyError
from openfeeder.model.case_file import load_case
from openfeeder.model.cases import load_builtin
from openfeeder.model.cases.cigre_mv import DATA_FILE, build_cigre_mv
from openfeeder.model.components import (
    TABLES,
    DerKind,
    LineKind,
    SwitchKind,
    TapSide,
    WindingType,
    enum_code,
)
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.pandapower_io import (
    export_pandapower_json,
    from_pandapower,
    import_pandapower_json,
    to_pandapower,
)
from openfeeder.model.synth import generate_feeders

pp = pytest.importorskip("pandapower")
pn = pytest.importorskip("pandapower.networks")


def assert_same_model(actual: GridModel, expected: GridModel, *, atol: float = 0.0) -> None:
    """Table by table, column by column; NaN equals NaN; exact unless ``atol`` is given."""
    assert (actual.name, actual.description, actual.frequency_hz) == (
        expected.name,
        expected.description,
        expected.frequency_hz,
    )
    for name, table in expected.tables():
        other = actual.table(name)
        assert other.shape == table.shape, name
        for column in TABLES[name].column_names:
            message = f"{name}.{column}"
            if atol and table[column].dtype.kind == "f":
                np.testing.assert_allclose(
                    other[column], table[column], rtol=0, atol=atol, err_msg=message
                )
            else:
                np.testing.assert_array_equal(other[column], table[column], err_msg=message)


def cigre_net() -> Any:
    return pn.create_cigre_network_mv(with_der="pv_wind")


def handmade_net() -> Any:
    """110/20 kV with switches at line and transformer ends, parallel lines, storage, shunt."""
    net = pp.create_empty_network(name="handmade")
    hv = pp.create_bus(net, 110.0, geodata=(0.0, 0.0))
    b1, b2, b3, b4, b5 = (pp.create_bus(net, 20.0, geodata=(float(i), 1.0)) for i in range(1, 6))
    pp.create_ext_grid(net, hv, vm_pu=1.02, va_degree=0.0, s_sc_max_mva=2000.0, rx_max=0.1)
    trafo = pp.create_transformer_from_parameters(
        net, hv, b1, 40.0, 110.0, 20.0, 0.35, 12.0, 18.0, 0.05, shift_degree=150.0,
        tap_side="hv", tap_pos=-2, tap_neutral=0, tap_min=-8, tap_max=8, tap_step_percent=1.25,
        tap_changer_type="Ratio", vector_group="Dyn5",
    )  # fmt: skip
    l0 = pp.create_line_from_parameters(net, b1, b2, 2.0, 0.16, 0.12, 270.0, 0.36)
    l1 = pp.create_line_from_parameters(net, b2, b3, 1.5, 0.3, 0.13, 210.0, 0.25, parallel=2)
    l2 = pp.create_line_from_parameters(net, b3, b4, 1.0, 0.3, 0.13, 210.0, 0.25, type="ol")
    pp.create_line_from_parameters(net, b1, b4, 3.0, 0.16, 0.12, 270.0, 0.36, df=0.8)
    pp.create_switch(net, hv, trafo, et="t", type="CB")
    pp.create_switch(net, b1, trafo, et="t", type="DS")
    pp.create_switch(net, b1, l0, et="l", type="CB")
    pp.create_switch(net, b3, l1, et="l", type="LS")
    pp.create_switch(net, b4, l2, et="l", type="LBS", closed=False)
    pp.create_switch(net, b4, b5, et="b", type="LS", in_ka=0.63)
    pp.create_load(net, b2, 1.2, 0.4, scaling=0.5)
    pp.create_load(net, b3, 0.8, 0.2)
    pp.create_load(net, b5, 0.5, 0.1, in_service=False)
    pp.create_sgen(net, b3, 0.3, type="PV", sn_mva=0.35)
    pp.create_sgen(net, b4, 1.0, q_mvar=0.1, type="WP", scaling=0.8)
    pp.create_storage(net, b2, 0.5, max_e_mwh=2.0, q_mvar=0.05)
    pp.create_shunt(net, b3, q_mvar=-0.4, p_mw=0.001, vn_kv=20.0, step=1, max_step=2)
    return net


# ------------------------------------------------------------------------------------- mapping


def test_cigre_ids_follow_per_table_offsets() -> None:
    model = from_pandapower(cigre_net())
    assert model.bus["id"][:15].tolist() == list(range(15))
    assert model.line["id"].tolist() == list(range(100, 115))
    assert model.transformer["id"].tolist() == [200, 201]
    assert model.switch["id"].tolist() == list(range(300, 308))
    assert model.load["id"].tolist() == list(range(400, 418))
    assert model.generator["id"].tolist() == list(range(500, 509))
    assert model.source["id"].tolist() == [800]
    # one auxiliary bus per line or transformer switch, at 1000 + switch index
    assert model.bus["id"][15:].tolist() == list(range(1000, 1008))
    assert np.unique(model.all_ids()).size == model.all_ids().size


def test_handmade_net_mapping() -> None:
    model = from_pandapower(handmade_net())
    bus, line, trafo, switch = model.bus, model.line, model.transformer, model.switch
    assert bus.size == 6 + 5  # five line/transformer switches get an auxiliary bus
    aux = bus[6:]
    np.testing.assert_array_equal(aux["u_rated_kv"], [110.0, 20.0, 20.0, 20.0, 20.0])
    np.testing.assert_array_equal(aux["x_m"], [0.0, 1.0, 1.0, 3.0, 4.0])
    # the transformer now runs between the two auxiliary buses of its switches
    assert (trafo["hv_bus"][0], trafo["lv_bus"][0]) == (aux["id"][0], aux["id"][1])
    assert trafo["winding_hv"][0] == enum_code(WindingType.D)
    assert trafo["winding_lv"][0] == enum_code(WindingType.YN)
    assert trafo["clock"][0] == 5
    assert trafo["pk_kw"][0] == pytest.approx(0.35 / 100 * 40.0 * 1000.0)
    assert trafo["p0_kw"][0] == 18.0
    assert trafo["tap_side"][0] == enum_code(TapSide.HV)
    assert (trafo["tap_pos"][0], trafo["tap_min"][0], trafo["tap_max"][0]) == (-2, -8, 8)
    # switch 3 sits at bus 3 (index 3) and the end of line 1 (its to_bus)
    assert line["to_bus"][1] == aux["id"][3]
    assert (switch["from_bus"][3], switch["to_bus"][3]) == (3, aux["id"][3])
    assert switch["kind"].tolist() == [
        enum_code(k)
        for k in (
            SwitchKind.BREAKER,
            SwitchKind.DISCONNECTOR,
            SwitchKind.BREAKER,
            SwitchKind.LOAD_BREAK,
            SwitchKind.LOAD_BREAK,
            SwitchKind.LOAD_BREAK,
        )
    ]
    assert switch["normally_open"].tolist() == [False] * 4 + [True, False]
    assert switch["i_rated_ka"][5] == 0.63
    # parallel lines: half the impedance, double the capacitance and rating; df derates
    assert line["r1_ohm_per_km"][1] == pytest.approx(0.15)
    assert line["c1_nf_per_km"][1] == pytest.approx(420.0)
    assert line["i_rated_ka"][1] == pytest.approx(0.5)
    assert line["i_rated_ka"][3] == pytest.approx(0.288)
    assert line["kind"][2] == enum_code(LineKind.OVERHEAD)
    assert model.load["p_mw"][0] == pytest.approx(0.6)
    assert not model.load["in_service"][2]
    gen = model.generator
    kinds = (DerKind.PV, DerKind.WIND, DerKind.STORAGE)
    assert gen["kind"].tolist() == [enum_code(k) for k in kinds]
    assert gen["p_mw"][1] == pytest.approx(0.8)
    assert (gen["p_mw"][2], gen["q_mvar"][2]) == (-0.5, -0.05)  # charging consumes
    assert model.shunt["q_step_mvar"][0] == 0.4  # a capacitor supplies reactive power
    assert (model.shunt["step"][0], model.shunt["steps"][0]) == (1, 2)
    src = model.source
    assert (src["u_ref_pu"][0], src["sk_mva"][0], src["rx_ratio"][0]) == (1.02, 2000.0, 0.1)


def test_shunt_rated_at_another_voltage_is_scaled_to_the_bus() -> None:
    net = handmade_net()
    net.shunt["vn_kv"] = 10.0
    model = from_pandapower(net)
    assert model.shunt["q_step_mvar"][0] == pytest.approx(0.4 * 4.0)


def test_missing_short_circuit_data_gets_defaults() -> None:
    net = handmade_net()
    net.ext_grid["s_sc_max_mva"] = np.nan
    net.ext_grid["rx_max"] = np.nan
    src = from_pandapower(net).source
    assert (src["sk_mva"][0], src["rx_ratio"][0]) == (1000.0, 0.1)


def test_transformer_without_tap_changer_or_vector_group() -> None:
    trafo = from_pandapower(cigre_net()).transformer
    assert (trafo["tap_pos"] == 0).all()
    assert (trafo["tap_step_percent"] == 0).all()
    assert (trafo["clock"] == 1).all()  # shift 30 degrees
    assert (trafo["winding_hv"] == enum_code(WindingType.D)).all()


# ------------------------------------------------------------------------------------- round trips


def _models() -> dict[str, Callable[[], GridModel]]:
    return {
        "cigre-mv": lambda: load_builtin("cigre-mv"),
        "turin": lambda: load_builtin("turin"),
        "synthetic": lambda: generate_feeders(buses=600, feeders=8, ties=4, seed=11),
        "handmade": lambda: from_pandapower(handmade_net()),
    }


@pytest.mark.parametrize("case", list(_models()))
def test_export_then_import_gives_the_same_model(case: str) -> None:
    model = _models()[case]()
    assert_same_model(from_pandapower(to_pandapower(model)), model)


def _nets() -> dict[str, Callable[[], Any]]:
    return {"cigre-mv": cigre_net, "mv_oberrhein": pn.mv_oberrhein, "handmade": handmade_net}


@pytest.mark.parametrize("case", list(_nets()))
def test_import_export_import_gives_the_same_model(case: str) -> None:
    model = from_pandapower(_nets()[case]())
    assert_same_model(from_pandapower(to_pandapower(model)), model)


def test_json_files_round_trip(tmp_path: Path) -> None:
    model = load_builtin("turin")  # has measurement devices and every load field
    path = tmp_path / "turin.json"
    export_pandapower_json(model, path)
    # pandapower's JSON keeps 15 decimals, so floats come back to within 1e-15
    assert_same_model(import_pandapower_json(path), model, atol=1e-14)
    net = pp.from_json(str(path))
    assert "of_measurement" in net
    assert len(net.of_measurement) == model.measurement.size


def test_renumbering_keeps_measurement_references() -> None:
    model = load_builtin("turin")
    net = to_pandapower(model)
    bus_ids = net.bus.index[:2]
    # a line whose index collides with a bus id forces the per-table renumbering
    pp.create_line_from_parameters(
        net, bus_ids[0], bus_ids[1], 0.1, 0.2, 0.1, 200.0, 0.3, index=int(bus_ids[0])
    )
    renumbered = from_pandapower(net)
    meas, orig = renumbered.measurement, model.measurement
    assert meas.size == orig.size
    # same buses (bus ids are the pandapower bus indices in both schemes)
    np.testing.assert_array_equal(meas["bus"], orig["bus"])
    # each element reference points at the row of the same element
    for table in ("line", "transformer", "switch", "load"):
        old_rows = lookup(model.table(table)["id"], orig["element"])
        new_rows = lookup(renumbered.table(table)["id"], meas["element"])
        np.testing.assert_array_equal(new_rows >= 0, old_rows >= 0)
        np.testing.assert_array_equal(new_rows[new_rows >= 0], old_rows[old_rows >= 0])


def test_hints_give_way_to_edits_in_pandapower() -> None:
    model = load_builtin("turin")
    net = to_pandapower(model)
    first = net.switch.index[0]
    net.switch.loc[first, "type"] = "DS"  # of_kind no longer matches the pandapower type
    net.trafo["vkr_percent"] *= 2.0
    again = from_pandapower(net)
    assert again.switch["kind"][0] == enum_code(SwitchKind.DISCONNECTOR)
    np.testing.assert_allclose(again.transformer["pk_kw"], 2.0 * model.transformer["pk_kw"])


def test_shipped_cigre_case_equals_a_fresh_import() -> None:
    fresh = build_cigre_mv()
    assert_same_model(load_case(DATA_FILE), fresh)
    assert_same_model(load_builtin("cigre-mv"), fresh)


# ------------------------------------------------------------------------- power-flow equivalence


@pytest.mark.parametrize("case", list(_nets()))
def test_switch_mapping_preserves_the_power_flow(case: str) -> None:
    original = _nets()[case]()
    model = from_pandapower(original)
    again = to_pandapower(model)
    options = {"calculate_voltage_angles": True, "tolerance_mva": 1e-9, "init": "dc"}
    pp.runpp(original, **options)
    pp.runpp(again, **options)
    # bus ids are the pandapower bus indices; other tables keep their row order
    ours = again.res_bus.loc[original.bus.index]
    np.testing.assert_allclose(ours["vm_pu"], original.res_bus["vm_pu"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours["va_degree"], original.res_bus["va_degree"], atol=1e-4, rtol=0)
    for table, ours_table, column in (
        ("line", "line", "i_ka"),
        ("trafo", "transformer", "i_hv_ka"),
    ):
        np.testing.assert_allclose(
            again[f"res_{table}"].loc[model.table(ours_table)["id"]][column],
            original[f"res_{table}"][column],
            atol=1e-7,
            rtol=0,
        )


# ----------------------------------------------------------------------------------------- errors


def _add_gen(net: Any) -> None:
    pp.create_gen(net, 5, 1.0, index=3)


def _add_trafo3w(net: Any) -> None:
    pp.create_transformer3w_from_parameters(
        net, 0, 1, 12, 25.0, 10.0, 10.0, 110.0, 20.0, 20.0, 10.0, 10.0, 10.0, 0.3, 0.3, 0.3,
        0.0, 0.0, index=3,
    )  # fmt: skip


def _add_impedance(net: Any) -> None:
    pp.create_impedance(net, 1, 12, 0.01, 0.01, sn_mva=1.0, index=3)


def _add_ward(net: Any) -> None:
    pp.create_ward(net, 5, 1.0, 0.1, 0.0, 0.0, index=3)


def _add_xward(net: Any) -> None:
    pp.create_xward(net, 5, 1.0, 0.1, 0.0, 0.0, 0.01, 0.1, 1.0, index=3)


def _add_dcline(net: Any) -> None:
    pp.create_dcline(net, 1, 12, 1.0, 1.0, 0.0, 1.0, 1.0, index=3)


@pytest.mark.parametrize(
    ("table", "add"),
    [
        ("gen", _add_gen),
        ("trafo3w", _add_trafo3w),
        ("impedance", _add_impedance),
        ("ward", _add_ward),
        ("xward", _add_xward),
        ("dcline", _add_dcline),
    ],
)
def test_unsupported_elements_name_table_and_index(table: str, add: Callable[[Any], None]) -> None:
    net = cigre_net()
    add(net)
    with pytest.raises(
        CaseError, match=rf"unsupported element: pandapower table '{table}'"
    ) as info:
        from_pandapower(net)
    assert (info.value.component, info.value.component_id) == (table, 3)
    assert str(info.value).startswith(f"{table} 3: ")


@pytest.mark.parametrize(
    ("table", "index", "column", "value", "field"),
    [
        ("load", 4, "const_z_p_percent", 30.0, "const_z_p_percent"),
        ("load", 2, "const_i_q_percent", 50.0, "const_i_q_percent"),
        ("line", 6, "g_us_per_km", 1.0, "g_us_per_km"),
        ("bus", 7, "in_service", False, "in_service"),
        ("trafo", 1, "shift_degree", 45.0, "shift_degree"),
        ("trafo", 0, "vector_group", "Dyn11", "vector_group"),
        ("trafo", 1, "vector_group", "Xyz1", "vector_group"),
    ],
)
def test_unsupported_values_name_table_index_and_field(
    table: str, index: int, column: str, value: object, field: str
) -> None:
    net = cigre_net()
    if column not in net[table]:
        net[table][column] = None
    net[table].loc[index, column] = value
    with pytest.raises(CaseError) as info:
        from_pandapower(net)
    err = info.value
    assert (err.component, err.component_id, err.field) == (table, index, field)


def test_switch_impedance_is_refused() -> None:
    net = handmade_net()
    net.switch.loc[5, "z_ohm"] = 0.1
    with pytest.raises(CaseError) as info:
        from_pandapower(net)
    assert (info.value.component, info.value.component_id, info.value.field) == (
        "switch",
        5,
        "z_ohm",
    )


def test_missing_file_is_a_case_error(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="no such file"):
        import_pandapower_json(tmp_path / "missing.json")


def test_without_pandapower_a_dependency_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = load_builtin("turin")
    monkeypatch.setitem(sys.modules, "pandapower", None)
    with pytest.raises(DependencyError, match=r"openfeeder\[pandapower\]"):
        to_pandapower(model)
