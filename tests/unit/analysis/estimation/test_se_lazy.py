"""The reading plan's chi-square objective and the lazily built result tables give what the
general path (sensor arrays, full engine estimate, WLS rows, eager tables) gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from power_grid_model import CalculationMethod, ComponentType
from se_cases import feeder, metered

from openfeeder.analysis.estimation import MeasurementSet, estimate_state
from openfeeder.analysis.estimation.bad_data import chi_square_test
from openfeeder.analysis.estimation.estimator import (
    _PLACEMENTS,
    _place,
    _rows,
    _solve,
    clear_caches,
)
from openfeeder.analysis.estimation.measurement_set import Quantity
from openfeeder.analysis.estimation.model_cache import find, find_ids
from openfeeder.analysis.estimation.observability import PseudoOptions
from openfeeder.analysis.estimation.prepared import placement_key
from openfeeder.analysis.estimation.reading_plan import reading_plan
from openfeeder.analysis.estimation.result import Once, StateEstimate, build_result
from openfeeder.analysis.powerflow import PowerFlowResult, run_power_flow
from openfeeder.model.grid import GridModel, lookup

_TABLES = ("bus", "branch", "load", "source")


def _with_phasors(model: GridModel, flow: PowerFlowResult, seed: int) -> MeasurementSet:
    """``metered`` plus a voltage phasor at a bus without a magnitude meter and a current phasor
    at the from end of the first energized switch (PMU class: 0.1 %, 0.01 degree)."""
    base = metered(model, flow, seed=seed)
    rng = np.random.default_rng(seed)
    metered_buses = set(base.table["bus"][base.table["quantity"] == 0].tolist())
    bus = flow.bus
    row = next(k for k in range(1, bus.size) if int(bus["id"][k]) not in metered_buses)
    u_kv = float(bus["u_kv"][row])
    branch = flow.branch
    s = int(np.flatnonzero((branch["kind"] == 2) & branch["energized"])[0])
    switch = model.switch[model.switch["id"] == branch["id"][s]][0]
    at = int(lookup(bus["id"], [int(switch["from_bus"])])[0])
    p, q = float(branch["p_from_mw"][s]), float(branch["q_from_mvar"][s])
    i_angle_deg = float(bus["u_angle_deg"][at]) - float(np.degrees(np.arctan2(q, p)))
    i_ka = float(branch["i_from_ka"][s])
    extra = MeasurementSet.from_records(
        [
            {
                "id": "pmu-u",
                "quantity": "u_phasor",
                "bus": int(bus["id"][row]),
                "u_kv": u_kv * (1 + 0.001 * rng.normal()),
                "u_angle_deg": float(bus["u_angle_deg"][row]) + 0.01 * rng.normal(),
                "u_sigma_kv": 0.001 * u_kv,
                "angle_sigma_deg": 0.01,
            },
            {
                "id": "pmu-i",
                "quantity": "i_phasor",
                "element": int(branch["id"][s]),
                "end": "from",
                "i_ka": i_ka * (1 + 0.001 * rng.normal()),
                "i_angle_deg": i_angle_deg + 0.01 * rng.normal(),
                "i_sigma_ka": 0.001 * i_ka,
                "angle_sigma_deg": 0.01,
            },
        ]
    )
    return base.concat(extra)


def _eager(model: GridModel, measurements: MeasurementSet) -> tuple[float, StateEstimate]:
    """The general path: sensor arrays, the full engine estimate, the WLS rows' objective and
    the tables built from them."""
    clear_caches()
    placement = _place(model, measurements, PseudoOptions(), None)
    solved = _solve(
        model,
        placement.located,
        excluded=~placement.estimated,
        method=CalculationMethod.iterative_linear,
        error_tolerance=1e-6,
        max_iterations=100,
    )
    rows = _rows(model, solved, placement.estimated, jacobian=False, engine_powers=True)
    test = chi_square_test(rows, int(placement.columns.size), 0.99)
    result = build_result(
        model,
        Once.of(solved.located),
        Once.of(solved.estimate),
        observability=placement.observability,
        first_observability=placement.first_observability,
        pseudo=placement.pseudo,
        estimated=placement.estimated,
        tests=(test,),
        removals=(),
        kept_critical=None,
        exact_identification=True,
        u_sigma_pu=np.full(model.bus.size, np.nan),
        angle_sigma_rad=np.full(model.bus.size, np.nan),
        solves=solved.solves,
        method="iterative_linear",
    )
    clear_caches()
    return test.objective, result


def _assert_same_tables(lazy: StateEstimate, eager: StateEstimate, **tolerance: Any) -> None:
    for name in _TABLES:
        a, b = getattr(lazy, name), getattr(eager, name)
        assert a.dtype == b.dtype, name
        for column in a.dtype.names or ():
            np.testing.assert_allclose(
                a[column].astype(np.float64),
                b[column].astype(np.float64),
                equal_nan=True,
                err_msg=f"{name}.{column}",
                **tolerance,
            )
    assert lazy.measurements.ids == eager.measurements.ids
    for column in lazy.measurements.table.dtype.names or ():
        np.testing.assert_array_equal(
            lazy.measurements.table[column], eager.measurements.table[column], err_msg=column
        )
    np.testing.assert_allclose(
        lazy.estimated_value, eager.estimated_value, equal_nan=True, **tolerance
    )
    np.testing.assert_allclose(
        lazy.weighted_residual, eager.weighted_residual, equal_nan=True, rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    ("phasors", "pv"),
    [(False, True), (True, True), (False, False)],
    ids=["meters", "meters+pmu", "one-appliance-per-bus"],
)
def test_the_plans_objective_and_lazy_tables_equal_the_general_paths(
    phasors: bool, pv: bool
) -> None:
    model, flow = feeder()
    if not pv:  # every summed bus has one appliance (the plan scatters instead of summing)
        model = model.replace(generator=model.generator[:0])
        flow = run_power_flow(model)
    measurements = _with_phasors(model, flow, 41) if phasors else metered(model, flow, seed=41)
    objective, eager = _eager(model, measurements)
    lazy = estimate_state(model, measurements, uncertainty=False)
    placement = _PLACEMENTS.get(model, placement_key(measurements, PseudoOptions()))
    assert placement is not None
    plan = placement.memo["plan"]
    assert plan is not None  # the plan was taken
    assert plan.appliances.single is not pv
    assert lazy.chi_square[0].degrees_of_freedom == eager.chi_square[0].degrees_of_freedom
    assert lazy.chi_square[0].objective == pytest.approx(objective, rel=1e-9)
    assert "bus" not in vars(lazy)  # nothing built before it is read
    _assert_same_tables(lazy, eager, rtol=1e-10, atol=1e-12)
    assert lazy.as_dict()["buses"] == eager.as_dict()["buses"]


def test_a_lazy_result_read_after_later_estimates_keeps_its_own_readings() -> None:
    model, flow = feeder()
    first, second = metered(model, flow, seed=42), metered(model, flow, seed=43)
    early = estimate_state(model, first, uncertainty=False)
    late = estimate_state(model, second, uncertainty=False)  # rewrites the plan's buffers
    _, eager_first = _eager(model, first)
    _, eager_second = _eager(model, second)
    _assert_same_tables(early, eager_first, rtol=1e-10, atol=1e-12)
    _assert_same_tables(late, eager_second, rtol=1e-10, atol=1e-12)
    assert np.abs(early.bus["u_pu"] - late.bus["u_pu"]).max() > 0.0


def test_magnitude_only_currents_and_merged_voltages_take_the_general_path() -> None:
    model, flow = feeder()
    measurements = metered(model, flow, seed=44)
    table = measurements.table.copy()
    ftu = np.flatnonzero(np.char.startswith(np.asarray(measurements.ids), "ftu-"))[:1]
    table["quantity"][ftu] = 3  # a current magnitude instead of the switch's powers
    table["i_ka"][ftu] = 0.05
    table["i_sigma_ka"][ftu] = 0.001
    with_current = MeasurementSet(measurements.ids, table)
    placement = _place(model, with_current, PseudoOptions(), None)
    assert reading_plan(model, placement) is None
    metered_bus = int(measurements.table["bus"][measurements.table["quantity"] == 0][0])
    pmu = MeasurementSet.from_records(
        [
            {
                "id": "pmu",
                "quantity": "u_phasor",
                "bus": metered_bus,
                "u_kv": 20.0,
                "u_angle_deg": 0.0,
                "u_sigma_kv": 0.02,
                "angle_sigma_deg": 0.01,
            }
        ]
    )
    placement = _place(model, measurements.concat(pmu), PseudoOptions(), None)
    assert reading_plan(model, placement) is None


def test_model_cache_lookups_equal_the_sorting_lookup() -> None:
    model, _ = feeder()
    wanted = np.concatenate([model.bus["id"][::-3], [-5, 10**9]])
    np.testing.assert_array_equal(find(model, "bus", wanted), lookup(model.bus["id"], wanted))
    np.testing.assert_array_equal(
        find(model, "load", model.load["id"][::2]), lookup(model.load["id"], model.load["id"][::2])
    )


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(100, 160)[::-1],  # dense: a table over the id range
        np.array([5, 10**6, 7, 3 * 10**6, 11]),  # sparse: the sorted column
        np.array([4, 9, 4, 6, 9, 5]),  # an id used twice: the first row, as lookup gives
        np.zeros(0, dtype=np.int64),
    ],
    ids=["dense", "sparse", "repeated", "empty"],
)
def test_model_cache_id_index_equals_the_sorting_lookup(ids: npt.NDArray[np.int64]) -> None:
    model, _ = feeder()
    wanted = np.concatenate([ids, ids[::-2], [-5, 0, 99, 161, 10**9, 4, 9]]).astype(np.int64)
    found = find_ids(model, ("test ids", ids.tobytes()), lambda: ids, wanted)
    np.testing.assert_array_equal(found, lookup(ids, wanted))


def test_sets_joined_or_taken_with_names_make_their_ids_when_read() -> None:
    first = MeasurementSet.from_columns(
        ["a", "b"], Quantity.U, bus=[1, 2], u_kv=20.0, u_sigma_kv=0.1
    )
    every = MeasurementSet.from_columns(
        ["0", "1", "2"], Quantity.U, bus=[3, 4, 5], u_kv=[19.0, 19.5, 20.5], u_sigma_kv=0.2
    )
    names = np.array(["x-3", "x-4", "x-5"], dtype=object)
    taken = every.take(np.array([2, 0]), names)
    assert len(taken) == 2
    assert taken.ids == ("x-5", "x-3")
    np.testing.assert_array_equal(taken.column("bus"), [5, 3])
    joined = MeasurementSet.joined((first, every.take(np.array([1]), names)))
    assert len(joined) == 3
    assert joined.ids == ("a", "b", "x-4")
    np.testing.assert_array_equal(joined.table["u_kv"], [20.0, 20.0, 19.5])
    first.column("bus")  # a part's kept column is copied, the others written from its rows
    for name in ("bus", "u_kv", "u_sigma_kv", "quantity", "pseudo"):
        column = joined.column(name)
        assert column.dtype == joined.table.dtype[name]
        np.testing.assert_array_equal(column, joined.table[name])
    # a later join keeps the parts; its ids are theirs
    assert MeasurementSet.joined((joined, taken)).ids == ("a", "b", "x-4", "x-5", "x-3")
    with pytest.raises(ValueError, match="names"):
        every.take(np.array([0]), names[:2])


def test_measured_switches_become_the_same_lines_from_the_kept_model_input() -> None:
    from openfeeder.analysis.engine_input import to_engine_input
    from openfeeder.analysis.estimation.engine_wls import (
        _measured_switches_as_lines,
        _model_engine_input,
    )
    from openfeeder.analysis.estimation.locate import locate_measurements

    model, flow = feeder()
    located = locate_measurements(model, metered(model, flow, seed=42))
    kept = dict(_model_engine_input(model))  # its links are taken by row
    fresh = to_engine_input(model)  # another array: taken by id
    rows = _measured_switches_as_lines(model, located, kept)
    assert rows.size > 0
    np.testing.assert_array_equal(rows, _measured_switches_as_lines(model, located, fresh))
    assert kept.keys() == fresh.keys()
    for kind, array in kept.items():  # NaN where the engine's null is
        assert array.dtype == fresh[kind].dtype
        for name in array.dtype.names or ():
            floats = array.dtype[name].kind == "f"
            assert np.array_equal(array[name], fresh[kind][name], equal_nan=floats), (kind, name)
    measured = model.switch["id"][rows]
    assert not np.isin(kept[ComponentType.link]["id"], measured).any()
    assert np.isin(measured, kept[ComponentType.line]["id"]).all()
