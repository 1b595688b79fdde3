"""Bad data: a gross error in any single redundant measurement is found, removed, and the estimate
returns to the clean-data one; clean data passes the chi-square test untouched."""

from __future__ import annotations

import numpy as np
import pytest
from power_grid_model import CalculationMethod
from se_cases import feeder, metered

from openfeeder.analysis.estimation import MeasurementSet, estimate_state
from openfeeder.analysis.estimation.estimator import _rows, _solve, _state_columns
from openfeeder.analysis.estimation.jacobian import GainFactor
from openfeeder.analysis.estimation.locate import locate_measurements
from openfeeder.analysis.estimation.observability import (
    PseudoOptions,
    check_observability,
    pseudo_measurements,
)
from openfeeder.analysis.estimation.residuals import RowKind
from openfeeder.model.grid import GridModel

GROSS_SIGMAS = 20.0


def _redundant_measurements(model: GridModel, measurements: MeasurementSet) -> list[str]:
    """Real measurements whose error shows: residual variance at least half their own, and no
    other measurement's normalized residual moving in lock step with theirs (|correlation| < 0.9:
    a pair of measurements that only check each other cannot tell which one is wrong)."""
    located = locate_measurements(model, measurements)
    first = check_observability(model, located)
    added = pseudo_measurements(model, located, first, PseudoOptions(policy="all"))
    located = locate_measurements(model, measurements.concat(added))
    estimated = first.energized
    solved = _solve(
        model,
        located,
        excluded=~estimated,
        method=CalculationMethod.iterative_linear,
        error_tolerance=1e-8,
        max_iterations=100,
    )
    rows = _rows(model, solved, estimated, jacobian=True)
    assert rows.h is not None
    columns = _state_columns(model, located, estimated)
    gain = GainFactor(rows.h[:, columns], 1.0 / rows.sigma**2)
    h = rows.h[:, columns].toarray()
    omega = np.diag(rows.sigma**2) - h @ gain.solve(h.T)
    diagonal = np.diag(omega).copy()
    redundancy = diagonal / rows.sigma**2
    scale = np.sqrt(np.maximum(diagonal, 1e-300))
    correlation = np.abs(omega / scale[:, None] / scale[None, :])
    np.fill_diagonal(correlation, 0.0)
    correlation[:, redundancy < 1e-3] = 0.0  # critical rows: no residual to move in step with
    real = np.flatnonzero((rows.kind == RowKind.MEASUREMENT) & ~rows.pseudo)
    chosen = [
        measurements.ids[int(rows.ref[row])]
        for row in real.tolist()
        if redundancy[row] >= 0.5 and correlation[row].max() < 0.9
    ]
    return sorted(set(chosen))


def _corrupt(measurements: MeasurementSet, mid: str, sigmas: float) -> MeasurementSet:
    table = measurements.table.copy()
    row = measurements.ids.index(mid)
    if np.isfinite(table["u_kv"][row]):
        table["u_kv"][row] += sigmas * table["u_sigma_kv"][row]
    else:
        table["p_mw"][row] += sigmas * table["p_sigma_mw"][row]
    return MeasurementSet(measurements.ids, table)


def test_clean_data_passes_the_chi_square_test_and_keeps_every_measurement() -> None:
    model, flow = feeder()
    for seed in range(5):
        estimate = estimate_state(model, metered(model, flow, seed=seed))
        assert estimate.chi_square[-1].passed
        assert not estimate.removed
        assert len(estimate.chi_square) == 1


def test_gross_error_in_each_redundant_measurement_is_identified_and_removed() -> None:
    model, flow = feeder()
    clean = metered(model, flow, seed=21)
    reference = estimate_state(model, clean, uncertainty=False)
    candidates = _redundant_measurements(model, clean)
    kinds = {mid.split("-")[0] for mid in candidates}
    assert len(candidates) >= 20
    assert {"volt", "ftu"} <= kinds
    rng = np.random.default_rng(5)
    for mid in rng.choice(candidates, size=min(24, len(candidates)), replace=False).tolist():
        for sign in (1.0, -1.0):
            estimate = estimate_state(
                model, _corrupt(clean, mid, sign * GROSS_SIGMAS), uncertainty=False
            )
            assert [r.measurement_id for r in estimate.removed] == [mid], mid
            assert estimate.removed[0].normalized_residual > 3.0
            assert estimate.chi_square[0].passed is False
            assert estimate.chi_square[-1].passed
            # the final estimate is the clean one without that measurement: as good as clean
            du = np.abs(estimate.bus["u_pu"] - reference.bus["u_pu"])
            assert du.max() < 2e-4, (mid, du.max())
            assert mid not in estimate.measurements.ids


def test_two_gross_errors_far_apart_are_both_removed() -> None:
    model, flow = feeder()
    clean = metered(model, flow, seed=22)
    candidates = _redundant_measurements(model, clean)
    volts = [m for m in candidates if m.startswith("volt")]
    first, last = volts[0], volts[-1]
    dirty = _corrupt(_corrupt(clean, first, 30.0), last, -25.0)
    estimate = estimate_state(model, dirty, uncertainty=False)
    assert sorted(r.measurement_id for r in estimate.removed) == sorted([first, last])


@pytest.mark.parametrize("bad_data", [True, False])
def test_bad_data_off_keeps_the_error_in(bad_data: bool) -> None:
    model, flow = feeder()
    clean = metered(model, flow, seed=23)
    mid = _redundant_measurements(model, clean)[0]
    estimate = estimate_state(model, _corrupt(clean, mid, 25.0), bad_data=bad_data)
    assert bool(estimate.removed) is bad_data
    assert estimate.chi_square[-1].passed is bad_data
