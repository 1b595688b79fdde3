"""The rebuilt measurement model agrees with the engine's; magnitude-only currents and phasors."""

from __future__ import annotations

import numpy as np
import pytest
from se_cases import feeder, metered

from openfeeder.analysis.estimation import MeasurementSet, estimate_state
from openfeeder.analysis.estimation.jacobian import branch_admittance, state_jacobian
from openfeeder.analysis.estimation.locate import branch_table
from openfeeder.analysis.powerflow import run_power_flow
from openfeeder.model.cases import resolve_case
from openfeeder.model.synth import generate_feeders


@pytest.mark.parametrize("case", ["turin", "cigre-mv", "synthetic"])
def test_branch_admittances_reproduce_the_engines_branch_flows(case: str) -> None:
    model = (
        generate_feeders(buses=200, feeders=3, ties=1, seed=9)
        if case == "synthetic"
        else resolve_case(case)
    )
    flow = run_power_flow(model)
    branches = branch_table(model)
    y = branch_admittance(model, branches)
    v = flow.bus["u_pu"] * np.exp(1j * np.deg2rad(flow.bus["u_angle_deg"]))
    f, t = branches.from_row, branches.to_row
    s_from = v[f] * np.conj(y.yff * v[f] + y.yft * v[t])
    s_to = v[t] * np.conj(y.ytf * v[f] + y.ytt * v[t])
    impedance = branches.kind < 2  # lines and transformers (a switch's flow is set by the rest)
    branch = flow.branch
    expected_from = branch["p_from_mw"] + 1j * branch["q_from_mvar"]
    expected_to = branch["p_to_mw"] + 1j * branch["q_to_mvar"]
    assert (branches.kind[impedance] == 1).any()  # transformers are part of it
    np.testing.assert_allclose(s_from[impedance], expected_from[impedance], atol=1e-9)
    np.testing.assert_allclose(s_to[impedance], expected_to[impedance], atol=1e-9)


def test_jacobian_matches_finite_differences() -> None:
    model = resolve_case("turin")
    flow = run_power_flow(model)
    branches = branch_table(model)
    y = branch_admittance(model, branches)
    magnitude = flow.bus["u_pu"].copy()
    angle = np.deg2rad(flow.bus["u_angle_deg"])
    f, t = branches.from_row, branches.to_row

    def flows(a: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, ...]:
        v = m * np.exp(1j * a)
        i_from = y.yff * v[f] + y.yft * v[t]
        i_to = y.ytf * v[f] + y.ytt * v[t]
        return v[f] * np.conj(i_from), v[t] * np.conj(i_to), i_from, i_to

    s_from, s_to, _, _ = flows(angle, magnitude)
    jacobian = state_jacobian(branches, y, magnitude * np.exp(1j * angle), s_from, s_to)
    n = model.bus.size
    step = 1e-7
    for column in range(2 * n):
        a, m = angle.copy(), magnitude.copy()
        if column < n:
            a[column] += step
        else:
            m[column - n] += step
        moved = flows(a, m)
        base = flows(angle, magnitude)
        for analytic, k in (
            (jacobian.ds_from, 0),
            (jacobian.ds_to, 1),
            (jacobian.di_from, 2),
            (jacobian.di_to, 3),
        ):
            numeric = (moved[k] - base[k]) / step
            exact = analytic[:, column].toarray().ravel()
            scale = max(1.0, float(np.abs(exact).max()))
            assert np.abs(numeric - exact).max() < 1e-4 * scale, (column, k)


def _currents_instead_of_switch_powers(measurements: MeasurementSet, flow) -> MeasurementSet:  # type: ignore[no-untyped-def]
    records = []
    branch = flow.branch
    for record in measurements.records():
        if record["id"].startswith("ftu-"):
            row = int(np.flatnonzero(branch["id"] == record["element"])[0])
            i_ka = float(branch[f"i_{record['end']}_ka"][row])
            records.append(
                {
                    "id": record["id"],
                    "quantity": "i",
                    "element": record["element"],
                    "end": record["end"],
                    "i_ka": i_ka,
                    "i_sigma_ka": max(0.004 * i_ka, 1e-5),
                }
            )
        else:
            records.append(record)
    return MeasurementSet.from_records(records)


def test_current_magnitudes_take_part_through_pinned_angles() -> None:
    model, flow = feeder()
    with_powers = metered(model, flow, seed=31, noise=False)
    with_currents = _currents_instead_of_switch_powers(with_powers, flow)
    estimate = estimate_state(model, with_currents)
    assert estimate.solves >= 2  # the pinned angles were refined at least once
    assert estimate.chi_square[-1].passed
    assert not estimate.removed
    # exact measurements: the estimate is the true state and each current is reproduced
    assert np.abs(estimate.bus["u_pu"] - flow.bus["u_pu"]).max() < 2e-4
    currents = np.flatnonzero(with_currents.table["quantity"] == 3)
    rows = estimate.measurements.rows_of([with_currents.ids[k] for k in currents])
    np.testing.assert_allclose(
        estimate.estimated_value[rows, 0],
        with_currents.table["i_ka"][currents],
        rtol=2e-3,
        atol=1e-6,
    )


def test_phasor_measurements_fix_the_absolute_angle() -> None:
    model, flow = feeder()
    measurements = metered(model, flow, seed=32, noise=False)
    source_bus = int(model.source["bus"][0])
    row = int(np.flatnonzero(flow.bus["id"] == source_bus)[0])
    shifted = 12.0  # the PMU's reference is 12 degrees ahead of the case's source angle
    pmu = MeasurementSet.from_records(
        [
            {
                "id": "pmu",
                "quantity": "u_phasor",
                "bus": source_bus,
                "u_kv": float(flow.bus["u_kv"][row]),
                "u_angle_deg": float(flow.bus["u_angle_deg"][row]) + shifted,
                "u_sigma_kv": 0.001 * float(flow.bus["u_kv"][row]),
                "angle_sigma_deg": 0.01,
            }
        ]
    )
    estimate = estimate_state(model, measurements.concat(pmu))
    angle_error = estimate.bus["u_angle_deg"] - flow.bus["u_angle_deg"]
    np.testing.assert_allclose(angle_error, shifted, atol=0.05)
    assert (estimate.bus["u_angle_sigma_deg"] > 0.0).all()  # no bus is the reference
