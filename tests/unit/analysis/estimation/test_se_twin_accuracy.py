"""Estimates on the twin against its true state, over many random operating points.

Criterion: the true positive-sequence voltage magnitude and angle of at least 99 % of the estimated
buses lie within three of the estimate's own standard deviations, and the standardized errors have
a spread near one (the uncertainties are neither much too small nor much too large).
"""

from __future__ import annotations

import numpy as np
from se_cases import HOUR_NS, twin

from openfeeder.analysis.estimation import estimate_state
from openfeeder.sim.se_snapshot import se_snapshot


def _standardized_errors(seeds: list[int], points: int, **grid: object) -> tuple[np.ndarray, ...]:
    z_u, z_angle, du = [], [], []
    rng = np.random.default_rng(11)
    for seed in seeds:
        twin_ = twin(seed=seed, **grid)  # type: ignore[arg-type]
        for t_h in rng.uniform(0.0, 24.0, size=points):
            snap = se_snapshot(twin_, twin_.start_ns + int(t_h * HOUR_NS))
            estimate = estimate_state(twin_.model, snap.measurements)
            bus = estimate.bus
            ok = bus["observable"]
            assert ok.all(), "every bus of the twin is observable with its default devices"
            error_u = bus["u_pu"] - snap.u_pu
            error_angle = bus["u_angle_deg"] - snap.u_angle_deg
            reference = bus["u_angle_sigma_deg"] == 0.0  # none here: the PMUs give angles
            assert not reference.any()
            z_u.append(error_u / bus["u_sigma_pu"])
            z_angle.append(error_angle / bus["u_angle_sigma_deg"])
            du.append(error_u)
            assert not estimate.removed, "clean twin data must not lose measurements"
    return np.concatenate(z_u), np.concatenate(z_angle), np.concatenate(du)


def test_turin_true_state_inside_three_sigma_for_99_percent_of_buses() -> None:
    z_u, z_angle, du = _standardized_errors([3, 4, 5], points=10)
    assert z_u.size == 3 * 10 * 54
    assert np.mean(np.abs(z_u) <= 3.0) >= 0.99
    assert np.mean(np.abs(z_angle) <= 3.0) >= 0.99
    assert 0.5 <= z_u.std() <= 1.5
    assert 0.5 <= z_angle.std() <= 1.5
    # and the errors themselves are small: class-1 meters on every load
    assert np.abs(du).max() < 2e-3


def test_synthetic_grid_with_pv_and_feeder_terminal_units() -> None:
    z_u, z_angle, _ = _standardized_errors(
        [8, 9], points=5, case=None, synthetic={"buses": 400, "feeders": 4, "ties": 2, "seed": 2}
    )
    assert np.mean(np.abs(z_u) <= 3.0) >= 0.99
    assert np.mean(np.abs(z_angle) <= 3.0) >= 0.99
    assert 0.5 <= z_u.std() <= 1.5


def test_load_estimation_close_to_the_true_loads() -> None:
    twin_ = twin(seed=6)
    snap = se_snapshot(twin_, twin_.start_ns + 19 * HOUR_NS)
    estimate = estimate_state(twin_.model, snap.measurements, uncertainty=False)
    load = estimate.load
    assert load["estimated"].all()
    assert load["measured"].all()
    error = np.abs(load["p_mw"] - snap.load_p_mw)
    assert error.max() < 0.02 * np.abs(snap.load_p_mw).max()
    # without uncertainty the standard deviations are not computed (NaN), the state is the same
    assert np.isnan(estimate.bus["u_sigma_pu"]).all()
    with_sigma = estimate_state(twin_.model, snap.measurements)
    np.testing.assert_allclose(with_sigma.bus["u_pu"], estimate.bus["u_pu"], atol=1e-12)
