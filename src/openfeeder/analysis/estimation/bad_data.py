"""Bad-data tests on a WLS estimate: chi-square detection, largest normalized residual.

**Detection.** With Gaussian errors the objective ``J = sum (r_i / sigma_i)^2`` follows a
chi-square distribution with ``m - n`` degrees of freedom (scalar rows minus states); the estimate
fails the test when ``J`` exceeds the ``confidence`` quantile.

**Identification.** The residual covariance is ``Omega = R - H G^-1 H^T``; the normalized residual
``|r_i| / sqrt(Omega_ii)`` of the measurement in gross error is the largest (for a single error in
a measurement that is not critical). Rows whose ``Omega_ii / sigma_i^2`` is below
:data:`CRITICAL_REDUNDANCY` are critical (their residual is always zero): an error in one cannot be
seen and they are never named. Pseudo-measurements and zero-injection rows are never named either.

Cost: ``Omega_ii`` needs one solve with the gain matrix per row. Up to ``exact_rows`` candidate
rows all are computed; above, only the ``exact_rows`` rows with the largest weighted residuals
``|r_i| / sigma_i``, which contain the largest normalized residual unless a row with an unusually
low redundancy hides behind a small weighted residual (the result says which was done).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2

from openfeeder.analysis.estimation.jacobian import GainFactor
from openfeeder.analysis.estimation.residuals import RowKind, ScalarRows

__all__ = [
    "CRITICAL_REDUNDANCY",
    "ChiSquareTest",
    "NormalizedResiduals",
    "chi_square_of_objective",
    "chi_square_test",
    "normalized_residuals",
    "optimal_residuals",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CRITICAL_REDUNDANCY: Final = 1e-4
"""Rows whose residual variance is below this share of their own are taken as critical: a 20 sigma
error in one would show as a 0.2 sigma residual."""


@dataclass(frozen=True, slots=True)
class ChiSquareTest:
    objective: float
    degrees_of_freedom: int
    threshold: float
    confidence: float

    @property
    def passed(self) -> bool:
        return self.degrees_of_freedom <= 0 or self.objective <= self.threshold

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "objective": self.objective,
            "degrees_of_freedom": self.degrees_of_freedom,
            "threshold": self.threshold,
            "confidence": self.confidence,
            "passed": self.passed,
        }


def chi_square_test(
    rows: ScalarRows, n_states: int, confidence: float, residual: FloatArray | None = None
) -> ChiSquareTest:
    """The test on ``residual`` (default: the rows' own residuals)."""
    r = rows.residual if residual is None else residual
    return chi_square_of_objective(
        float(np.sum((r / rows.sigma) ** 2)), len(rows), n_states, confidence
    )


def chi_square_of_objective(
    objective: float, n_rows: int, n_states: int, confidence: float
) -> ChiSquareTest:
    """The test of an objective ``J`` of ``n_rows`` scalar rows and ``n_states`` states."""
    dof = n_rows - n_states
    return ChiSquareTest(objective, dof, _threshold(confidence, dof), confidence)


@lru_cache(maxsize=64)
def _threshold(confidence: float, dof: int) -> float:
    """The chi-square quantile (kept: a periodic estimator asks for the same one every time)."""
    return float(chi2.ppf(confidence, dof)) if dof > 0 else float("inf")


@dataclass(frozen=True, slots=True, eq=False)
class NormalizedResiduals:
    """Normalized residuals of the rows tested (NaN elsewhere) and how they were computed."""

    value: FloatArray
    exact: bool
    """All candidate rows were computed (False: only the largest weighted residuals)."""

    def largest(self) -> tuple[int, float] | None:
        if not np.isfinite(self.value).any():
            return None
        row = int(np.nanargmax(self.value))
        return row, float(self.value[row])


def optimal_residuals(rows: ScalarRows, gain: GainFactor) -> FloatArray:
    """Residuals after one Gauss-Newton step of the WLS problem from the engine's estimate.

    The engine's iterative-linear method converges to a point slightly off the optimum of the
    power-measurement WLS problem (it weighs linearized currents), which leaves critical
    measurements with small non-zero residuals; normalized by their (near-zero) residual variance
    those would look like gross errors. One step ``dx = G^-1 H^T W r`` and ``r - H dx`` put the
    residuals where the tests assume them.
    """
    weight = 1.0 / rows.sigma**2
    step = gain.solve(gain.h.T @ (weight * rows.residual))
    out: FloatArray = rows.residual - gain.h @ step
    return out


def normalized_residuals(
    rows: ScalarRows, residual: FloatArray, gain: GainFactor, *, exact_rows: int
) -> NormalizedResiduals:
    """``|r_i| / sqrt(Omega_ii)`` for the rows that can be named (see the module docstring);
    ``gain`` is built from the rows' Jacobian over the estimated states."""
    candidate = np.flatnonzero((rows.kind != RowKind.ZERO_INJECTION) & ~rows.pseudo)
    exact = candidate.size <= exact_rows
    if not exact:
        weighted = np.abs(residual[candidate]) / rows.sigma[candidate]
        candidate = candidate[np.argsort(-weighted, kind="stable")[:exact_rows]]
    value = np.full(len(rows), np.nan)
    if candidate.size == 0:
        return NormalizedResiduals(value, exact)
    variance = rows.sigma[candidate] ** 2
    omega = variance - gain.projection_diagonal(candidate)
    testable = omega > CRITICAL_REDUNDANCY * variance
    value[candidate[testable]] = np.abs(residual[candidate[testable]]) / np.sqrt(omega[testable])
    return NormalizedResiduals(value, exact)
