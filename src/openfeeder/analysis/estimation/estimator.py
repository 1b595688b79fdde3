"""Centralized WLS state estimation: :func:`estimate_state`.

Steps (each reported in the :class:`~.result.StateEstimate`):

1. **Locate** the measurements on the model (errors name the measurement, element and field).
2. **Observability** (:mod:`.observability`): pseudo-measurements for the islands the policy
   picks (``all`` energized islands by default; ``needed`` checks the measurements as given first
   and only fills the islands they leave unobservable); observability of the final set. Islands still unobservable are left out
   of the solve: their buses come back with ``observable`` false and NaN values
   (``on_unobservable="raise"`` raises :class:`~openfeeder.errors.NotObservableError` instead;
   so does an estimate with no observable island at all).
   Steps 1 and 2 depend only on where the measurements are: an estimate of the same model object
   with measurements at the same places takes them from the last such estimate
   (:mod:`.prepared`), and the engine reuses its converted model, only given the new readings
   (written by index into its sensor buffers: :mod:`.reading_plan`).
3. **Solve** with power-grid-model (:mod:`.engine_wls`; iterative linear by default). Magnitude-only
   current measurements take part as currents whose angle against the local voltage is pinned to
   the last estimate's; the solve repeats until those angles move less than 1e-4 rad (starting
   from a power flow of the model's own loads).
4. **Bad data** (:mod:`.bad_data`): the chi-square test on the objective of the problem the engine
   solved (power measurements at a bus with a voltage sensor as the engine converted them: with
   the measured voltage, :attr:`.engine_wls.EngineEstimate.power_factor`); at the engine's point
   the plain WLS objective would be up to 30 % higher than its optimum, which alone would fail
   the test on clean data (docs/estimation.md). When the test fails, the objective of the plain
   WLS problem after one Gauss-Newton step from the engine's estimate is tested; if that fails, the
   measurement with the largest normalized residual above ``lnr_threshold`` is removed and the
   state re-estimated, until the test passes, nothing stands out, ``max_bad_data`` measurements are
   gone, or removing the next one would leave its island unobservable (then it stays, reported).
   The Jacobian and the residual covariance are only built when the test fails; with a reading
   plan the first test's objective is gathered from the engine's output without the rows.
5. **Uncertainty**: standard deviations of every estimated bus's voltage magnitude and angle from
   ``diag(G^-1)``; ``uncertainty=None`` (default) computes them up to
   :data:`UNCERTAINTY_MAX_BUSES` estimated buses, ``True`` always, ``False`` never (NaN).

The result's tables and per-measurement values are built when first read (:mod:`.result`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from power_grid_model import CalculationMethod

from openfeeder.analysis.estimation.bad_data import (
    ChiSquareTest,
    chi_square_of_objective,
    chi_square_test,
    normalized_residuals,
    optimal_residuals,
)
from openfeeder.analysis.estimation.engine_wls import (
    EngineEstimate,
    clear_engine_cache,
    engine_estimate,
    engine_values,
    solve_wls,
    voltage_sensors,
)
from openfeeder.analysis.estimation.jacobian import (
    GainFactor,
    StateJacobian,
    branch_admittance,
    state_jacobian,
)
from openfeeder.analysis.estimation.locate import (
    LocatedMeasurements,
    appliance_bus_rows,
    locate_measurements,
)
from openfeeder.analysis.estimation.measurement_set import END_TO, MeasurementSet, Quantity
from openfeeder.analysis.estimation.model_cache import clear_model_cache, ids_unique
from openfeeder.analysis.estimation.observability import (
    PSEUDO_PREFIX,
    Observability,
    PseudoOptions,
    PseudoPolicy,
    check_observability,
    closed_islands,
    located_pseudo_measurements,
)
from openfeeder.analysis.estimation.prepared import Placement, PlacementCache, placement_key
from openfeeder.analysis.estimation.reading_plan import ReadingPlan, reading_plan
from openfeeder.analysis.estimation.residuals import RowKind, ScalarRows, scalar_rows
from openfeeder.analysis.estimation.result import BadDataRemoval, Once, StateEstimate, build_result
from openfeeder.errors import AnalysisError, NotObservableError
from openfeeder.model.grid import GridModel

__all__ = [
    "DEFAULT_CHI2_CONFIDENCE",
    "DEFAULT_LNR_THRESHOLD",
    "UNCERTAINTY_MAX_BUSES",
    "clear_caches",
    "estimate_state",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_CHI2_CONFIDENCE: Final = 0.99
DEFAULT_LNR_THRESHOLD: Final = 3.0
DEFAULT_MAX_BAD_DATA: Final = 10
DEFAULT_EXACT_ROWS: Final = 20_000
UNCERTAINTY_MAX_BUSES: Final = 5_000
"""``uncertainty=None`` computes the standard deviations up to this many estimated buses (their
cost grows with the square of the size: 0.2 s at 1,000 buses, 30 s at 10,000 on 2 cores)."""
DEFAULT_ERROR_TOLERANCE_PU: Final = 1e-6
"""Largest voltage change (pu) of the engine's last iteration: far below any meter's noise."""
DEFAULT_MAX_ITERATIONS: Final = 100
_ANGLE_TOLERANCE_RAD: Final = 1e-4
_MAX_ANGLE_PASSES: Final = 10
_METHODS: Final = {
    "newton_raphson": CalculationMethod.newton_raphson,
    "iterative_linear": CalculationMethod.iterative_linear,
}


@dataclass(slots=True)
class _Solved:
    located: LocatedMeasurements
    estimate: EngineEstimate
    solves: int


def estimate_state(
    model: GridModel,
    measurements: MeasurementSet,
    *,
    pseudo: PseudoOptions | PseudoPolicy | str = PseudoPolicy.ALL,
    bad_data: bool = True,
    uncertainty: bool | None = None,
    method: Literal["newton_raphson", "iterative_linear"] = "iterative_linear",
    on_unobservable: Literal["mark", "raise"] = "mark",
    chi2_confidence: float = DEFAULT_CHI2_CONFIDENCE,
    lnr_threshold: float = DEFAULT_LNR_THRESHOLD,
    max_bad_data: int = DEFAULT_MAX_BAD_DATA,
    exact_rows: int = DEFAULT_EXACT_ROWS,
    error_tolerance: float = DEFAULT_ERROR_TOLERANCE_PU,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    file: str | None = None,
) -> StateEstimate:
    """Estimate the state of ``model`` from ``measurements`` (see the module docstring).

    ``pseudo`` is a :class:`PseudoOptions` or just its policy (``"needed"``, ``"all"``,
    ``"none"``); ``file`` names the measurement file in errors.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    if on_unobservable not in ("mark", "raise"):
        raise ValueError(f"on_unobservable must be 'mark' or 'raise', got {on_unobservable!r}")
    if not 0.0 < chi2_confidence < 1.0:
        raise ValueError(f"chi2_confidence must be in (0, 1), got {chi2_confidence!r}")
    options = (
        pseudo if isinstance(pseudo, PseudoOptions) else PseudoOptions(policy=PseudoPolicy(pseudo))
    )
    key = placement_key(measurements, options)
    placement = _PLACEMENTS.get(model, key)
    if placement is None:
        placement = _place(model, measurements, options, file, key=key)
        _PLACEMENTS.put(key, placement)
        readings = Once.of(placement.located)
    else:
        readings = Once(lambda: placement.with_readings(measurements))
    observability, first = placement.observability, placement.first_observability
    added = placement.pseudo
    if not observability.fully_observable and on_unobservable == "raise":
        raise _not_observable(observability)
    estimated = placement.estimated
    if not estimated.any():
        raise _not_observable(observability)
    if uncertainty is None:
        uncertainty = int(estimated.sum()) <= UNCERTAINTY_MAX_BUSES

    engine_method = _METHODS[method]
    columns = placement.columns
    plan = _plan(model, placement)
    first_test: ChiSquareTest | None = None
    if plan is not None:
        run = plan.run(
            measurements.table,
            method=engine_method,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
        )
        first_test = chi_square_of_objective(
            run.objective, run.rows, int(columns.size), chi2_confidence
        )
        prepared = plan.prepared
        if (not bad_data or first_test.passed or max_bad_data <= 0) and not uncertainty:
            # what the caller did not read yet is built when first read (result.py)
            return build_result(
                model,
                readings,
                Once(lambda: engine_values(model, placement.located, run.output, prepared)),
                observability=observability,
                first_observability=first,
                pseudo=added,
                estimated=estimated,
                tests=(first_test,),
                removals=(),
                kept_critical=None,
                exact_identification=True,
                u_sigma_pu=np.full(model.bus.size, np.nan),
                angle_sigma_rad=np.full(model.bus.size, np.nan),
                solves=1,
                method=method,
            )
        located = readings()
        voltage = voltage_sensors(model, located, prepared.next_id)
        estimate = engine_estimate(model, located, run.output, prepared, voltage)
        solved = _Solved(located, estimate, 1)
    else:
        solved = _solve(
            model,
            readings(),
            excluded=~estimated,
            method=engine_method,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
        )
    removals: list[BadDataRemoval] = []
    tests: list[ChiSquareTest] = []
    rows: ScalarRows | None = None
    gain: GainFactor | None = None
    kept_critical: str | None = None
    exact = True
    while True:
        if first_test is None:
            rows = _rows(model, solved, estimated, jacobian=False, engine_powers=True)
            test = chi_square_test(rows, int(columns.size), chi2_confidence)
        else:
            test, first_test = first_test, None
        tests.append(test)
        gain = None
        if not bad_data or test.passed or len(removals) >= max_bad_data:
            break
        rows = _rows(model, solved, estimated, jacobian=True)
        gain = GainFactor(_h(rows)[:, columns], 1.0 / rows.sigma**2)
        residual = optimal_residuals(rows, gain)
        optimal = chi_square_test(rows, int(columns.size), chi2_confidence, residual)
        if optimal.passed:
            tests[-1] = optimal
            break
        normalized = normalized_residuals(rows, residual, gain, exact_rows=exact_rows)
        exact = exact and normalized.exact
        largest = normalized.largest()
        if largest is None or largest[1] <= lnr_threshold:
            break
        row, value = largest
        culprit = _culprit(solved, rows, row)
        trial = solved.located.measurements.select(
            np.arange(len(solved.located.measurements)) != culprit
        )
        trial_located = locate_measurements(model, trial)
        trial_observability = check_observability(model, trial_located)
        if (estimated & ~trial_observability.observable).any():
            kept_critical = solved.located.measurements.ids[culprit]
            break
        removals.append(
            BadDataRemoval(
                measurement_id=solved.located.measurements.ids[culprit],
                quantity=str(_quantity_of(solved.located, culprit)),
                normalized_residual=value,
                objective_before=test.objective,
            )
        )
        solved = _solve(
            model,
            trial_located,
            excluded=~estimated,
            method=engine_method,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
            solves=solved.solves,
        )
        columns = _state_columns(model, trial_located, estimated)

    u_sigma_pu = np.full(model.bus.size, np.nan)
    angle_sigma_rad = np.full(model.bus.size, np.nan)
    if uncertainty and columns.size:
        if gain is None:
            rows = _rows(model, solved, estimated, jacobian=True)
            gain = GainFactor(_h(rows)[:, columns], 1.0 / rows.sigma**2)
        variance = gain.inverse_diagonal()
        n = model.bus.size
        std = np.sqrt(np.maximum(variance, 0.0))
        angle_cols = columns < n
        angle_sigma_rad[columns[angle_cols]] = std[angle_cols]
        angle_sigma_rad[estimated & np.isnan(angle_sigma_rad)] = 0.0  # angle references
        u_sigma_pu[columns[~angle_cols] - n] = std[~angle_cols]
    return build_result(
        model,
        Once.of(solved.located),
        Once.of(solved.estimate),
        observability=observability,
        first_observability=first,
        pseudo=added,
        estimated=estimated,
        tests=tuple(tests),
        removals=tuple(removals),
        kept_critical=kept_critical,
        exact_identification=exact,
        u_sigma_pu=u_sigma_pu,
        angle_sigma_rad=angle_sigma_rad,
        solves=solved.solves,
        method=method,
    )


def _plan(model: GridModel, placement: Placement) -> ReadingPlan | None:
    """The placement's :class:`~.reading_plan.ReadingPlan` (made on its first estimate)."""
    memo = placement.memo
    if "plan" not in memo:
        memo["plan"] = reading_plan(model, placement)
    plan: ReadingPlan | None = memo["plan"]
    return plan


_PLACEMENTS: Final = PlacementCache()


def clear_caches(*, models: bool = True) -> None:
    """Forget the placements and converted engine models kept for repeated estimates, and with
    ``models`` what was derived from the models alone (:mod:`.model_cache`)."""
    _PLACEMENTS.clear()
    clear_engine_cache()
    if models:
        clear_model_cache()


def _place(
    model: GridModel,
    measurements: MeasurementSet,
    options: PseudoOptions,
    file: str | None,
    *,
    key: bytes | None = None,
) -> Placement:
    """Locate, add pseudo-measurements, check observability (what depends on placement only);
    ``key`` is :func:`.prepared.placement_key` if known."""
    given = locate_measurements(model, measurements, file=file)
    # the policy "all" does not need to know what was observable before (and skips that check)
    first = check_observability(model, given) if options.policy is not PseudoPolicy.ALL else None
    located_added = located_pseudo_measurements(model, given, first, options)
    added = located_added.measurements
    unique = ids_unique(model)
    if len(added) and not unique:
        located_added = locate_measurements(model, added)  # as it was: branch ids first
    # pseudo-measurement names (pseudo-<load|gen|u>-<id>) are distinct when the model's ids are
    if len(added):
        located = given.concat(located_added, other_prefix=PSEUDO_PREFIX if unique else None)
    else:
        located = given
    observability = (
        first if first is not None and not len(added) else check_observability(model, located)
    )
    estimated = observability.energized & observability.observable
    return Placement(
        model=model,
        given_ids=measurements.ids,
        located=located,
        pseudo=added,
        first_observability=first,
        observability=observability,
        estimated=estimated,
        columns=_state_columns(model, located, estimated),
        key=placement_key(measurements, options) if key is None else key,
    )


def _not_observable(observability: Observability) -> NotObservableError:
    buses = observability.unobservable_bus_ids
    shown = ", ".join(str(b) for b in buses[:10].tolist())
    more = f" (and {buses.size - 10} more)" if buses.size > 10 else ""
    if buses.size == 0:
        return NotObservableError("no energized bus to estimate", buses=())
    return NotObservableError(
        f"the measurements do not determine the state of {buses.size} energized buses: "
        f"{shown}{more}",
        buses=tuple(int(b) for b in buses.tolist()),
    )


def _solve(
    model: GridModel,
    located: LocatedMeasurements,
    *,
    excluded: BoolArray,
    method: CalculationMethod,
    error_tolerance: float,
    max_iterations: int,
    solves: int = 0,
) -> _Solved:
    """The engine's estimate, repeated while magnitude-only currents' pinned angles move."""
    magnitude_only = np.flatnonzero(located.of_quantity(Quantity.I))
    angles = np.zeros(len(located.measurements))
    if magnitude_only.size:
        angles[magnitude_only] = _prior_local_angles(model, located, magnitude_only)
    for _ in range(_MAX_ANGLE_PASSES):
        estimate = solve_wls(
            model,
            located,
            excluded_bus=excluded,
            local_angle_rad=angles,
            method=method,
            error_tolerance=error_tolerance,
            max_iterations=max_iterations,
        )
        solves += 1
        if magnitude_only.size == 0:
            break
        new = _estimated_local_angles(located, estimate, magnitude_only)
        moved = np.abs(np.angle(np.exp(1j * (new - angles[magnitude_only]))))
        angles[magnitude_only] = new
        if not (moved > _ANGLE_TOLERANCE_RAD).any():
            break
    return _Solved(located, estimate, solves)


def _prior_local_angles(
    model: GridModel, located: LocatedMeasurements, rows: npt.NDArray[np.int64]
) -> FloatArray:
    """Local current angles at measured branch ends in a power flow of the model's own loads.

    The engine's local angle is the one by which the current lags the voltage at that end, i.e.
    the angle of ``S = V I*``: ``atan2(Q, P)``.
    """
    from openfeeder.analysis.powerflow import run_power_flow

    try:
        flow = run_power_flow(model)
    except AnalysisError:
        return np.zeros(rows.size)
    branch = located.target_row[rows]
    to = located.measurements.table["end"][rows] == END_TO
    p = np.where(to, flow.branch["p_to_mw"][branch], flow.branch["p_from_mw"][branch])
    q = np.where(to, flow.branch["q_to_mvar"][branch], flow.branch["q_from_mvar"][branch])
    angle: FloatArray = np.arctan2(q, p)
    return angle


def _estimated_local_angles(
    located: LocatedMeasurements, estimate: EngineEstimate, rows: npt.NDArray[np.int64]
) -> FloatArray:
    branch = located.target_row[rows]
    to = located.measurements.table["end"][rows] == END_TO
    p = np.where(to, estimate.branch["p_to_mw"][branch], estimate.branch["p_from_mw"][branch])
    q = np.where(to, estimate.branch["q_to_mvar"][branch], estimate.branch["q_from_mvar"][branch])
    angle: FloatArray = np.arctan2(np.nan_to_num(q), np.nan_to_num(p))
    return angle


def _rows(
    model: GridModel,
    solved: _Solved,
    estimated: BoolArray,
    *,
    jacobian: bool,
    engine_powers: bool = False,
) -> ScalarRows:
    """The WLS rows at the solved estimate; the Jacobian only with ``jacobian``; measured powers
    as the engine took them with ``engine_powers`` (:func:`.residuals.scalar_rows`)."""
    estimate = solved.estimate
    branches = solved.located.branches

    def build() -> StateJacobian:
        admittance = branch_admittance(model, branches)
        v = estimate.u_pu * np.exp(1j * estimate.u_angle_rad)
        s_from = estimate.branch["p_from_mw"] + 1j * estimate.branch["q_from_mvar"]
        s_to = estimate.branch["p_to_mw"] + 1j * estimate.branch["q_to_mvar"]
        return state_jacobian(branches, admittance, v, s_from, s_to)

    return scalar_rows(
        model,
        solved.located,
        estimate,
        build if jacobian else None,
        estimated,
        engine_powers=engine_powers,
    )


def _h(rows: ScalarRows) -> sp.csr_matrix:
    if rows.h is None:
        raise RuntimeError("rows were built without their Jacobian")
    return rows.h


def _state_columns(
    model: GridModel, located: LocatedMeasurements, estimated: BoolArray
) -> npt.NDArray[np.int64]:
    """Angle and magnitude columns of the estimated buses, without one angle reference per
    island that has no phasor measurement (its first source's bus)."""
    n = model.bus.size
    islands = closed_islands(model)
    observability_islands = islands.island
    with_phasor = np.zeros(islands.fed.size, dtype=bool)
    for quantity in (Quantity.U_PHASOR, Quantity.I_PHASOR):
        at = located.bus_row[located.rows_of_quantity(quantity)]
        with_phasor[observability_islands[at]] = True
    in_service = np.asarray(model.source["in_service"], dtype=bool)
    source_rows = appliance_bus_rows(model, "source")[in_service]
    source_rows = source_rows[estimated[source_rows]]
    source_islands = observability_islands[source_rows]
    first = np.unique(source_islands, return_index=True)[1]
    reference = source_rows[first][~with_phasor[source_islands[first]]]
    angle = estimated.copy()
    angle[reference] = False
    columns = np.concatenate([np.flatnonzero(angle), np.flatnonzero(estimated) + n])
    return columns.astype(np.int64, copy=False)


def _culprit(solved: _Solved, rows: ScalarRows, row: int) -> int:
    """The measurement (set position) to remove for the flagged ``row``."""
    if rows.kind[row] == RowKind.MEASUREMENT:
        return int(rows.ref[row])
    # an appliance sum: the real measurement at that bus that the estimate disagrees with most
    located = solved.located
    table = located.measurements.table
    at_bus = np.flatnonzero(
        located.of_quantity(Quantity.PQ)
        & (located.bus_row == rows.ref[row])
        & (located.target >= 2)
        & ~table["pseudo"]
    )
    estimate = solved.estimate
    worst, worst_value = int(at_bus[0]), -math.inf
    for k in at_bus.tolist():
        target = located.target[k]
        from openfeeder.analysis.estimation.locate import Target

        kind = Target(int(target))
        p_est = estimate.appliance_p_mw[kind][located.target_row[k]]
        q_est = estimate.appliance_q_mvar[kind][located.target_row[k]]
        value = max(
            abs(table["p_mw"][k] - p_est) / table["p_sigma_mw"][k],
            abs(table["q_mvar"][k] - q_est) / table["q_sigma_mvar"][k],
        )
        if value > worst_value:
            worst, worst_value = k, value
    return worst


def _quantity_of(located: LocatedMeasurements, row: int) -> Quantity:
    from openfeeder.analysis.estimation.measurement_set import QUANTITIES

    return QUANTITIES[int(located.measurements.table["quantity"][row])]
