"""Tests of the synthetic feeder generator (openfeeder.model.synth)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from openfeeder.model import (
    NO_ID,
    CustomerClass,
    DerKind,
    GridModel,
    LineKind,
    MeasurementKind,
    SwitchKind,
    TapSide,
    WindingType,
    enum_code,
    lookup,
)
from openfeeder.model.synth import MAX_FEEDERS_PER_SUBSTATION, generate_feeders

BREAKER = enum_code(SwitchKind.BREAKER)


@pytest.fixture(scope="module")
def grid() -> GridModel:
    # Module scope is safe: GridModel tables are never written by these tests.
    return generate_feeders(buses=1000, feeders=20, ties=10, seed=1)


def _components(
    model: GridModel, *, breakers: bool, transformers: bool, close: npt.ArrayLike = ()
) -> tuple[int, int, npt.NDArray[np.int32]]:
    """(closed edges, islands, island label per bus row) of the graph of closed branches."""
    sw = model.switch
    closed = sw["closed"].copy()
    closed[lookup(sw["id"], close)] = True
    if not breakers:
        closed &= sw["kind"] != BREAKER
    ends = [
        (
            model.line["from_bus"][model.line["in_service"]],
            model.line["to_bus"][model.line["in_service"]],
        ),
        (sw["from_bus"][closed], sw["to_bus"][closed]),
    ]
    if transformers:
        ends.append((model.transformer["hv_bus"], model.transformer["lv_bus"]))
    src = lookup(model.bus["id"], np.concatenate([e[0] for e in ends]))
    dst = lookup(model.bus["id"], np.concatenate([e[1] for e in ends]))
    assert (src >= 0).all()
    assert (dst >= 0).all()
    n = model.bus.size
    graph = coo_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
    islands, labels = connected_components(graph, directed=False)
    return int(src.size), int(islands), labels


def _feeder_labels(model: GridModel) -> tuple[npt.NDArray[np.int32], set[int]]:
    """Island label of every bus without breakers and transformers, and the labels of feeders."""
    _, _, labels = _components(model, breakers=False, transformers=False)
    heads = lookup(model.bus["id"], model.switch["to_bus"][model.switch["kind"] == BREAKER])
    return labels, {int(x) for x in labels[heads]}


@pytest.mark.parametrize(
    ("buses", "feeders", "ties"),
    [(1000, 20, 10), (26, 10, 2), (4, 1, 0), (10_000, 200, 100), (5000, 3, 0), (777, 9, 0)],
)
def test_exact_bus_count_and_component_counts(buses: int, feeders: int, ties: int) -> None:
    model = generate_feeders(buses=buses, feeders=feeders, ties=ties, seed=3)
    n_sub = -(-feeders // MAX_FEEDERS_PER_SUBSTATION)
    assert model.bus.size == buses
    assert model.transformer.size == n_sub
    assert model.source.size == n_sub
    assert (model.switch["kind"] == BREAKER).sum() == feeders
    assert (~model.switch["closed"]).sum() == ties
    assert model.load.size > 0


def test_same_seed_same_model_other_seed_other_model() -> None:
    first = generate_feeders(buses=2000, feeders=30, ties=12, seed=42)
    again = generate_feeders(buses=2000, feeders=30, ties=12, seed=42)
    other = generate_feeders(buses=2000, feeders=30, ties=12, seed=43)
    assert first.name == again.name
    for name, table in first.tables():
        assert _same_table(table, again.table(name)), name
    assert not np.array_equal(first.bus["x_m"], other.bus["x_m"])
    assert not np.array_equal(first.load["p_mw"], other.load["p_mw"])


def _same_table(a: npt.NDArray[np.void], b: npt.NDArray[np.void]) -> bool:
    return a.dtype == b.dtype and all(
        np.array_equal(a[f], b[f], equal_nan=np.issubdtype(a.dtype[f], np.floating))
        for f in a.dtype.names or ()
    )


def test_name_defaults_and_can_be_given() -> None:
    assert generate_feeders(buses=100, feeders=2, ties=1, seed=5).name == "synthetic-100b-2f-1t-s5"
    assert generate_feeders(buses=100, feeders=2, ties=1, seed=5, name="x").name == "x"


def test_ids_unique_and_references_resolve(grid: GridModel) -> None:
    ids = grid.all_ids()
    assert np.unique(ids).size == ids.size
    assert (ids >= 0).all()
    bus_ids = grid.bus["id"]
    for table, column in [
        ("line", "from_bus"),
        ("line", "to_bus"),
        ("switch", "from_bus"),
        ("switch", "to_bus"),
        ("transformer", "hv_bus"),
        ("transformer", "lv_bus"),
        ("load", "bus"),
        ("generator", "bus"),
        ("source", "bus"),
        ("measurement", "bus"),
    ]:
        assert (lookup(bus_ids, grid.table(table)[column]) >= 0).all(), (table, column)
    element = grid.measurement["element"]
    assert (element != NO_ID).all()
    targets = np.concatenate([grid.switch["id"], grid.load["id"]])
    assert (lookup(targets, element) >= 0).all()


def test_radial_with_ties_open(grid: GridModel) -> None:
    edges, islands, _ = _components(grid, breakers=True, transformers=True)
    # A forest: one tree per primary substation (HV bus, transformer, busbar, its feeders).
    assert islands == grid.source.size
    assert edges == grid.bus.size - islands


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_feeder_radial_and_separate(seed: int) -> None:
    model = generate_feeders(buses=3000, feeders=40, ties=30, seed=seed)
    edges, islands, labels = _components(model, breakers=False, transformers=False)
    assert edges == model.bus.size - islands
    _, feeder_labels = _feeder_labels(model)
    assert len(feeder_labels) == 40  # each breaker feeds its own island
    hv = lookup(model.bus["id"], model.source["bus"])
    busbar = lookup(model.bus["id"], model.transformer["lv_bus"])
    assert not feeder_labels & {int(x) for x in labels[np.concatenate([hv, busbar])]}


def test_ties_are_open_and_join_different_feeders(grid: GridModel) -> None:
    sw = grid.switch
    tie = sw[sw["normally_open"]]
    assert tie.size == 10
    assert not tie["closed"].any()
    assert (tie["kind"] == enum_code(SwitchKind.LOAD_BREAK)).all()
    assert tie["remote_controllable"].all()
    labels, feeders = _feeder_labels(grid)
    a = labels[lookup(grid.bus["id"], tie["from_bus"])]
    b = labels[lookup(grid.bus["id"], tie["to_bus"])]
    assert (a != b).all()
    assert {int(x) for x in a} <= feeders
    assert {int(x) for x in b} <= feeders


def test_closing_one_tie_gives_a_loop_free_transfer_path(grid: GridModel) -> None:
    tie_ids = grid.switch["id"][grid.switch["normally_open"]]
    before_edges, before_islands, _ = _components(grid, breakers=False, transformers=False)
    for tie_id in tie_ids:
        edges, islands, _ = _components(grid, breakers=False, transformers=False, close=[tie_id])
        assert edges == before_edges + 1
        assert islands == before_islands - 1  # two feeders merged, still a tree
        assert edges == grid.bus.size - islands


def test_many_ties_fall_back_but_stay_between_feeders() -> None:
    model = generate_feeders(buses=500, feeders=6, ties=150, seed=9)
    labels, _ = _feeder_labels(model)
    tie = model.switch[model.switch["normally_open"]]
    assert tie.size == 150
    a = labels[lookup(model.bus["id"], tie["from_bus"])]
    b = labels[lookup(model.bus["id"], tie["to_bus"])]
    assert (a != b).all()


def test_sectionalizing_switches(grid: GridModel) -> None:
    sw = grid.switch
    sect = sw[(sw["kind"] != BREAKER) & ~sw["normally_open"]]
    assert set(np.unique(sect["kind"]).tolist()) <= {
        enum_code(SwitchKind.LOAD_BREAK),
        enum_code(SwitchKind.SECTIONALIZER),
    }
    assert sect["closed"].all()
    assert sect["fault_indicator"].all()
    assert 0 < sect["remote_controllable"].sum() < sect.size
    n_tie = int(sw["normally_open"].sum())
    sections = sect.size + grid.line.size - n_tie
    assert 0.08 <= sect.size / sections <= 0.17
    # Co-located ring main unit: both ends at the same place.
    rows_from = lookup(grid.bus["id"], sect["from_bus"])
    rows_to = lookup(grid.bus["id"], sect["to_bus"])
    for axis in ("x_m", "y_m"):
        assert np.allclose(grid.bus[axis][rows_from], grid.bus[axis][rows_to], rtol=0, atol=1e-6)


def test_head_breakers_and_ftus(grid: GridModel) -> None:
    sw = grid.switch
    breakers = sw[sw["kind"] == BREAKER]
    assert breakers["closed"].all()
    assert breakers["remote_controllable"].all()
    assert breakers["fault_indicator"].all()
    assert set(breakers["from_bus"].tolist()) == set(grid.transformer["lv_bus"].tolist())
    meas = grid.measurement
    ftu = meas[meas["kind"] == enum_code(MeasurementKind.FTU)]
    assert sorted(ftu["element"].tolist()) == sorted(breakers["id"].tolist())
    assert ftu["measures_current"].all()
    assert ftu["measures_power"].all()
    assert ftu["measures_voltage"].all()
    assert (ftu["accuracy_class"] == 0.5).all()
    meter = meas[meas["kind"] == enum_code(MeasurementKind.METER)]
    assert (lookup(grid.load["id"], meter["element"]) >= 0).all()
    assert (meter["accuracy_class"] == 1.0).all()
    assert 0.2 <= meter.size / grid.load.size <= 0.4


def test_lines_use_catalog_types_and_zero_sequence(grid: GridModel) -> None:
    line = grid.line
    assert (line["length_km"] > 0).all()
    assert np.isfinite(line["r0_ohm_per_km"]).all()
    assert np.isfinite(line["x0_ohm_per_km"]).all()
    assert np.isfinite(line["c0_nf_per_km"]).all()
    assert (line["r0_ohm_per_km"] > line["r1_ohm_per_km"]).all()
    cable = line[line["kind"] == enum_code(LineKind.CABLE)]
    overhead = line[line["kind"] == enum_code(LineKind.OVERHEAD)]
    assert cable.size > 0
    assert overhead.size > 0
    assert set(cable["r1_ohm_per_km"].tolist()) == {0.161, 0.313}
    assert np.array_equal(cable["c0_nf_per_km"], cable["c1_nf_per_km"])
    assert set(overhead["r1_ohm_per_km"].tolist()) == {0.306, 0.5939}
    assert np.allclose(overhead["x0_ohm_per_km"], 3 * overhead["x1_ohm_per_km"])
    feeder_lines = line[
        ~np.isin(line["to_bus"], grid.switch["from_bus"][grid.switch["normally_open"]])
    ]
    assert feeder_lines["length_km"].min() >= 0.15
    assert feeder_lines["length_km"].max() <= 0.45


def test_loads(grid: GridModel) -> None:
    load = grid.load
    assert (load["p_mw"] > 0).all()
    cos_phi = load["p_mw"] / np.hypot(load["p_mw"], load["q_mvar"])
    assert cos_phi.min() >= 0.95 - 1e-9
    assert cos_phi.max() <= 0.98 + 1e-9
    assert (load["customers"] >= 1).all()
    assert (load["customers"] <= 300).all()
    shares = np.stack([load["share_a"], load["share_b"], load["share_c"]])
    assert np.allclose(shares.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    assert (np.abs(shares - 1 / 3) < 0.1).all()
    assert set(np.unique(load["customer_class"]).tolist()) == {enum_code(c) for c in CustomerClass}
    # Residential stations: 1.5-3 kW per customer (checked where rounding to whole customers is
    # small and the count is not clipped at 300).
    res = load[load["customer_class"] == enum_code(CustomerClass.RESIDENTIAL)]
    kw = res["p_mw"] * 1000 / res["customers"]
    normal = (res["customers"] >= 10) & (res["customers"] < 300)
    assert normal.sum() > 100
    assert ((kw[normal] > 1.4) & (kw[normal] < 3.2)).all()
    # Most feeder buses carry a load, the bay buses in the substation do not.
    heads = grid.switch["to_bus"][grid.switch["kind"] == BREAKER]
    assert not np.isin(load["bus"], heads).any()
    assert load.size / grid.bus.size > 0.7


def test_feeder_peak_and_head_current(grid: GridModel) -> None:
    labels, feeders = _feeder_labels(grid)
    load_label = labels[lookup(grid.bus["id"], grid.load["bus"])]
    peak_mw = np.bincount(load_label, weights=grid.load["p_mw"])[sorted(feeders)]
    assert peak_mw.min() >= 2.0 - 1e-9
    assert peak_mw.max() <= 6.0 + 1e-9
    # Head current at about 1 pu stays below 70 % of the smallest trunk rating (0.35 kA).
    assert (peak_mw / 0.95 / (np.sqrt(3) * 20.0) < 0.7 * 0.35).all()


def test_pv_generators(grid: GridModel) -> None:
    gen = grid.generator
    assert (gen["kind"] == enum_code(DerKind.PV)).all()
    assert 0.08 <= gen.size / grid.load.size <= 0.22
    assert (gen["q_mvar"] == 0).all()
    assert (gen["sn_mva"] >= gen["p_mw"]).all()
    load_rows = lookup(grid.load["bus"], gen["bus"])
    assert (load_rows >= 0).all()
    assert (gen["p_mw"] <= 0.5 * grid.load["p_mw"][load_rows] + 1e-12).all()


def test_substations(grid: GridModel) -> None:
    tr = grid.transformer
    assert (tr["u_hv_kv"] == 110).all()
    assert (tr["u_lv_kv"] == 20).all()
    assert (tr["uk_percent"] == 12).all()
    assert (tr["winding_hv"] == enum_code(WindingType.D)).all()
    assert (tr["winding_lv"] == enum_code(WindingType.YN)).all()
    assert (tr["clock"] == 11).all()
    assert (tr["tap_side"] == enum_code(TapSide.HV)).all()
    assert (tr["tap_min"] == -8).all()
    assert (tr["tap_max"] == 8).all()
    assert (tr["tap_step_percent"] == 1.25).all()
    assert ((tr["tap_pos"] >= -8) & (tr["tap_pos"] <= 8)).all()
    assert set(tr["hv_bus"].tolist()) == set(grid.source["bus"].tolist())
    hv = lookup(grid.bus["id"], tr["hv_bus"])
    assert (grid.bus["u_rated_kv"][hv] == 110).all()
    assert (grid.source["sk_mva"] == 3000).all()
    assert (grid.source["rx_ratio"] == 0.1).all()


def test_coordinates_are_finite_and_spread(grid: GridModel) -> None:
    x, y = grid.bus["x_m"], grid.bus["y_m"]
    assert np.isfinite(x).all()
    assert np.isfinite(y).all()
    assert x.max() - x.min() > 3000
    assert y.max() - y.min() > 3000


def test_hundred_thousand_buses() -> None:
    model = generate_feeders(buses=100_000, feeders=2000, ties=1000, seed=7)
    assert model.bus.size == 100_000
    edges, islands, _ = _components(model, breakers=True, transformers=True)
    assert islands == model.source.size
    assert edges == model.bus.size - islands
    ids = model.all_ids()
    assert np.unique(ids).size == ids.size
    assert ids.max() < np.iinfo(np.int32).max


@pytest.mark.parametrize(
    ("buses", "feeders", "ties", "message"),
    [
        (10, 20, 0, "too small"),
        (45, 20, 1, "too small"),
        (1000, 20, 400, "too many"),
        (100, 1, 1, "at least 2 feeders"),
        (100, 0, 0, "feeders must be at least 1"),
        (100, 2, -1, "ties must not be negative"),
        (10**9, 2, 0, "at most"),
    ],
)
def test_impossible_parameters_raise(buses: int, feeders: int, ties: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_feeders(buses=buses, feeders=feeders, ties=ties, seed=0)


def test_negative_seed_raises() -> None:
    with pytest.raises(ValueError, match="seed must not be negative"):
        generate_feeders(buses=100, feeders=2, ties=0, seed=-1)


def test_non_integer_parameters_raise() -> None:
    with pytest.raises(TypeError, match="buses must be an integer"):
        generate_feeders(buses=100.0, feeders=2, ties=0, seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an integer"):
        generate_feeders(buses=100, feeders=2, ties=0, seed=True)
