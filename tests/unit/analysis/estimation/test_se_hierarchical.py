"""The hierarchical estimator against the centralized one on the same measurements, and its areas.

Criterion (issue 6): on the same measurements, the bus voltages of the distributed estimate
(concentrator, LV and MV levels, bottom-up then top-down) agree with the centralized WLS within
1e-3 pu. Checked on the twin's Turin grid (LV and MV levels) at several instants and on Turin with
LV feeders and customers added (all three levels), every customer metered or 10-30 % of them
unmetered (pseudo-measurements next to meters that measure voltage: the case where the boundary
voltage an LV area passes up depends on the power it assumes, so the parent needs their
correlation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from se_cases import HOUR_NS, twin

from openfeeder.analysis.estimation import (
    Level,
    MeasurementSet,
    estimate_area,
    estimate_hierarchical,
    estimate_state,
    partition_areas,
)
from openfeeder.analysis.estimation.hierarchical import area_measurements, area_model
from openfeeder.analysis.powerflow import run_power_flow
from openfeeder.errors import AnalysisError
from openfeeder.model.cases import resolve_case
from openfeeder.model.components import empty_table
from openfeeder.model.grid import GridModel
from openfeeder.sim.se_snapshot import se_snapshot

AGREEMENT_PU = 1e-3


def with_lv_feeders(model: GridModel, lv_buses: tuple[int, ...] = (7, 11, 38)) -> GridModel:
    """Turin with an LV feeder below each of ``lv_buses``: three trunk buses 80 m apart, two
    customers on each (25 m service cables), the busbar's load spread over the customers."""
    bus, line, load = [model.bus], [model.line], [model.load]
    next_id = 1000
    for lv_bus in lv_buses:
        row = int(np.flatnonzero(model.load["bus"] == lv_bus)[0])
        total_p, total_q = float(model.load["p_mw"][row]), float(model.load["q_mvar"][row])
        keep = model.load.copy()
        keep["in_service"][row] = False
        load[0] = np.where(model.load["bus"] == lv_bus, keep, load[0])
        previous = lv_bus
        for _trunk in range(3):
            trunk = next_id
            next_id += 1
            bus.append(_bus(trunk))
            line.append(_line(next_id, previous, trunk, 0.08, r=0.21, x=0.08))
            next_id += 1
            previous = trunk
            for _customer in range(2):
                customer = next_id
                bus.append(_bus(customer))
                line.append(_line(next_id + 1, trunk, customer, 0.025, r=1.2, x=0.09))
                new = empty_table("load", 1)
                new["id"] = next_id + 2
                new["bus"] = customer
                new["p_mw"] = total_p / 6
                new["q_mvar"] = total_q / 6
                new["customers"] = 1
                new["in_service"] = True
                new["share_a"] = new["share_b"] = new["share_c"] = 1 / 3
                load.append(new)
                next_id += 3
    return model.replace(
        name="turin-lv",
        bus=np.concatenate(bus),
        line=np.concatenate(line),
        load=np.concatenate(load),
    )


def _bus(bus_id: int) -> Any:
    row = empty_table("bus", 1)
    row["id"] = bus_id
    row["u_rated_kv"] = 0.4
    return row


def _line(line_id: int, a: int, b: int, km: float, *, r: float, x: float) -> Any:
    row = empty_table("line", 1)
    row["id"] = line_id
    row["from_bus"] = a
    row["to_bus"] = b
    row["length_km"] = km
    row["r1_ohm_per_km"] = r
    row["x1_ohm_per_km"] = x
    row["r0_ohm_per_km"] = 4 * r
    row["x0_ohm_per_km"] = 4 * x
    row["c1_nf_per_km"] = row["c0_nf_per_km"] = 200.0
    row["i_rated_ka"] = 0.3
    row["in_service"] = True
    return row


def _measured(model: GridModel, seed: int) -> MeasurementSet:
    """A noisy smart meter on every load (P, Q, voltage; class 1) and on the feeder heads (flow
    and voltage, class 0.5); the true loads are the model's times 0.6-1.4."""
    loads = model.load.copy()
    rng = np.random.default_rng(seed)
    loads["p_mw"] *= rng.uniform(0.6, 1.4, loads.size)  # the truth differs from the model
    loads["q_mvar"] *= rng.uniform(0.6, 1.4, loads.size)
    truth = model.replace(load=loads)
    flow = run_power_flow(truth)
    records: list[dict[str, Any]] = []
    for row in np.flatnonzero(loads["in_service"]).tolist():
        p, q = float(flow.load["p_mw"][row]), float(flow.load["q_mvar"][row])
        sigma = max(0.007 * float(np.hypot(p, q)), 1e-6)
        bus_row = int(np.flatnonzero(flow.bus["id"] == loads["bus"][row])[0])
        u = float(flow.bus["u_kv"][bus_row])
        records += [
            {
                "id": f"meter-{loads['id'][row]}:pq",
                "quantity": "pq",
                "element": int(loads["id"][row]),
                "p_mw": p + sigma * rng.normal(),
                "q_mvar": q + sigma * rng.normal(),
                "p_sigma_mw": sigma,
                "q_sigma_mvar": sigma,
            },
            {
                "id": f"meter-{loads['id'][row]}:u",
                "quantity": "u",
                "bus": int(loads["bus"][row]),
                "u_kv": u * (1 + 0.003 * rng.normal()),
                "u_sigma_kv": 0.003 * u,
            },
        ]
    for switch in (300, 313):
        row = int(np.flatnonzero(flow.branch["id"] == switch)[0])
        p, q = float(flow.branch["p_from_mw"][row]), float(flow.branch["q_from_mvar"][row])
        sigma = 0.004 * float(np.hypot(p, q))
        bus_id = int(model.switch["from_bus"][model.switch["id"] == switch][0])
        u = float(flow.bus["u_kv"][flow.bus["id"] == bus_id][0])
        records += [
            {
                "id": f"ftu-{switch}:pq",
                "quantity": "pq",
                "element": switch,
                "end": "from",
                "p_mw": p + sigma * rng.normal(),
                "q_mvar": q + sigma * rng.normal(),
                "p_sigma_mw": sigma,
                "q_sigma_mvar": sigma,
            },
            {
                "id": f"ftu-{switch}:u",
                "quantity": "u",
                "bus": bus_id,
                "u_kv": u * (1 + 0.0015 * rng.normal()),
                "u_sigma_kv": 0.0015 * u,
            },
        ]
    return MeasurementSet.from_records(records)


def _max_difference(
    model: GridModel, measurements: MeasurementSet, **options: Any
) -> tuple[float, float]:
    central = estimate_state(model, measurements, **options)
    distributed = estimate_hierarchical(model, measurements, **options)
    assert not np.isnan(distributed.u_pu).any(), "every energized bus is estimated"
    assert np.array_equal(distributed.bus_ids, central.bus["id"])
    du = float(np.max(np.abs(distributed.u_pu - central.bus["u_pu"])))
    da = float(np.max(np.abs(distributed.u_angle_deg - central.bus["u_angle_deg"])))
    return du, da


@pytest.mark.parametrize("hour", [3, 12, 19])
def test_distributed_agrees_with_central_on_the_twin(hour: int) -> None:
    twin_ = twin(seed=3)
    snap = se_snapshot(twin_, twin_.start_ns + hour * HOUR_NS)
    du, da = _max_difference(twin_.model, snap.measurements)
    assert du < AGREEMENT_PU, du
    assert da < 0.01, da  # degrees; about 1e-4 rad


@pytest.mark.parametrize("seed", [1, 2])
def test_three_levels_agree_with_central(seed: int) -> None:
    model = with_lv_feeders(resolve_case("turin"))
    parts = partition_areas(model)
    assert len(parts.names(Level.CONCENTRATOR)) == 9  # one per LV trunk bus with customers
    # power-grid-model's iterative-linear estimate stalls near 1e-5 pu on these LV cables
    # (R/X up to 13): both estimators stop at 5e-5 pu, still far below the agreement asked
    du, da = _max_difference(model, _measured(model, seed), error_tolerance=5e-5)
    assert du < AGREEMENT_PU, du
    assert da < 0.05, da


def _without_meters(
    model: GridModel, measurements: MeasurementSet, share: float, seed: int
) -> MeasurementSet:
    """``measurements`` with the meters (power and voltage) of ``share`` of the LV customers
    taken away: those customers become pseudo-measurements."""
    customers = model.load[(model.load["customers"] == 1) & model.load["in_service"]]
    rng = np.random.default_rng(100 + seed)
    count = max(1, round(share * customers.size))
    gone = rng.choice(customers["id"], count, replace=False).tolist()
    names = {f"meter-{load_id}:{q}" for load_id in gone for q in ("pq", "u")}
    return measurements.select(np.array([i not in names for i in measurements.ids]))


@pytest.mark.parametrize(
    ("share", "seed"), [(0.1, 1), (0.1, 3), (0.2, 5), (0.2, 6), (0.3, 2), (0.3, 3)]
)
def test_three_levels_agree_with_unmetered_customers(share: float, seed: int) -> None:
    """Before the equivalents carried the correlation of their voltage and power, these cases
    differed from the centralized estimate by 2e-3 to 6e-3 pu."""
    model = with_lv_feeders(resolve_case("turin"))
    measured = _without_meters(model, _measured(model, seed), share, seed)
    du, da = _max_difference(model, measured, error_tolerance=5e-5)
    assert du < AGREEMENT_PU, du
    # degrees (2e-3 rad); the angles inside LV areas follow how the unmetered customers' power
    # is split, which the equivalent carries only through its total (0.23 deg before)
    assert da < 0.15, da


def test_equivalent_carries_the_voltage_slope() -> None:
    """An LV area with an unmetered customer passes up a boundary voltage correlated with its
    power; in its parent the voltage sits behind a line whose impedance is that slope."""
    model = with_lv_feeders(resolve_case("turin"))
    measured = _without_meters(model, _measured(model, 1), 0.1, 1)
    parts = partition_areas(model)
    own = area_measurements(model, parts, measured)
    first: dict[str, Any] = {}
    for level in (Level.CONCENTRATOR, Level.LV):
        for name in parts.names(level):
            children = {c: first[c].equivalent for c in parts.area(name).children}
            first[name] = estimate_area(
                model, parts, name, own[name], children=children, error_tolerance=5e-5
            )
    lv = first["lv-209"].equivalent  # its customer 1068 is unmetered
    assert lv.carries_voltage
    assert lv.rho_up > 0.2
    assert lv.rho_uq > 0.2
    fully_metered = first["lv-202"].equivalent
    assert abs(fully_metered.rho_up) < 0.2
    assert fully_metered.p_sigma_mw < 0.1 * lv.p_sigma_mw
    mv = area_model(model, parts, parts.area("mv-501"), {"lv-209": lv})
    child = parts.area("lv-209")
    line = mv.line[mv.line["id"] == child.equivalent_line_id]
    assert line.size == 1
    assert int(line["to_bus"][0]) == child.equivalent_bus_id
    assert line["r1_ohm_per_km"][0] > 0
    assert line["x1_ohm_per_km"][0] > 0
    assert int(mv.load["bus"][mv.load["id"] == child.equivalent_id][0]) == child.equivalent_bus_id


def test_partition_of_turin_follows_the_supply_tree() -> None:
    model = resolve_case("turin")
    parts = partition_areas(model)
    assert parts.names(Level.MV) == ("mv-500", "mv-501")
    assert len(parts.names(Level.LV)) == 12
    lv = parts.area("lv-201")
    assert lv.boundary_bus_id == 5
    assert lv.bus_ids.tolist() == [5, 7]
    assert lv.parent == "mv-500"
    assert lv.branch_ids.tolist() == [201]  # the transformer is the LV area's
    assert "lv-201" in parts.area("mv-500").children
    assert parts.area_of_bus(5) == "mv-500"  # a boundary bus belongs to the parent
    assert parts.area_of_bus(7) == "lv-201"
    assert parts.crossing_branch_ids.size == 0


def test_partition_follows_a_reconfiguration() -> None:
    """FLISR opens 306/307 around a fault on line 103 and closes the tie 325: the secondary
    substations behind the fault are fed from source 501 and move to its MV area."""
    model = resolve_case("turin")
    before = partition_areas(model)
    after = partition_areas(model.with_switch_states({306: False, 307: False, 325: True}))
    assert after.fingerprint != before.fingerprint
    moved = {"lv-204", "lv-205", "lv-206"}
    for name in moved:
        assert before.area(name).parent == "mv-500"
        assert after.area(name).parent == "mv-501"
    assert after.area("lv-203").parent == "mv-500"
    assert after.area_of_bus(17) == "mv-501"  # the RMU behind the fault: on the other feeder now
    # the isolated section (buses 14, 16 between 306 and 307) is de-energized: in no area
    assert after.area_of_bus(14) is None
    assert after.area_of_bus(16) is None


def test_child_without_its_equivalent_uses_pseudo_values() -> None:
    """A child that does not report (offline) stands in its parent's estimate for the model's
    own load, as a pseudo-measurement: the MV estimate still covers every MV bus."""
    twin_ = twin(seed=3)
    model = twin_.model
    snap = se_snapshot(twin_, twin_.start_ns + 12 * HOUR_NS)
    parts = partition_areas(model)
    own = area_measurements(model, parts, snap.measurements)
    result = estimate_area(model, parts, "mv-500", own["mv-500"], children={})
    assert result.final
    assert np.isfinite(result.u_pu).all()
    assert len(result.estimate.pseudo) >= 6  # one per missing LV area


def test_meshed_areas_are_refused() -> None:
    model = resolve_case("turin")
    looped = with_lv_feeders(model, (7, 11))
    extra = _line(5000, 1016, 1040, 0.1, r=0.2, x=0.08)  # joins the LV feeders of two RMUs
    looped = looped.replace(line=np.concatenate([looped.line, extra]))
    parts = partition_areas(looped)
    assert parts.crossing_branch_ids.size == 1  # one branch of the loop closes it between areas
    with pytest.raises(AnalysisError, match="radial"):
        estimate_hierarchical(looped, _measured(looped, 1), error_tolerance=5e-5)
