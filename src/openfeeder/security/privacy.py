"""Differential privacy for published consumption aggregates: the Gaussian mechanism.

A feeder total published every interval lets anyone who knows the other customers' use (or sees
the total with and without one customer) learn one household's consumption. Adding Gaussian noise
of standard deviation ``sigma`` to each published total makes the release
(``epsilon``, ``delta``)-differentially private with respect to one meter joining or leaving:

- **Sensitivity.** Each meter's reading is clipped to ``[0, clip_kwh]`` per interval, so one meter
  moves one interval's total by at most ``clip_kwh``; a release of ``T`` intervals (a profile) moves
  by at most ``clip_kwh * sqrt(T)`` in L2 norm. Meters of different feeders touch different totals
  (parallel composition), so every feeder's totals get the same noise.
- **Noise.** ``classic``: ``sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` (Dwork and
  Roth, Theorem A.1; the formula of seed 000, eq. 6), proven for ``epsilon < 1`` only and refused
  above. ``analytic`` (the default): the smallest ``sigma`` for which the privacy loss of the
  Gaussian mechanism is bounded exactly (Balle and Wang 2018, Theorem 8), found by bisection;
  valid for every ``epsilon``, with 23-37 % less noise than the classic one for ``epsilon`` from
  0.1 to 1.
- **Randomness** comes from the operating system (``random.SystemRandom``): a seeded generator
  would let anyone with the seed subtract the noise. Tests pass their own generator.
- **Budget.** Each release spends its (epsilon, delta); :class:`PrivacyAccountant` adds them up
  (basic composition) and refuses a release that would exceed the budget.

Utility: the absolute error of a total is about ``sigma`` whatever the feeder's size, so the
relative error falls as ``1/n`` with ``n`` meters (``docs/security-payload.md`` has measured
numbers, ``bench/privacy.py`` measures them again).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from openfeeder.errors import SecurityError

__all__ = [
    "GaussianMethod",
    "PrivacyAccountant",
    "PrivacyBudgetError",
    "PrivateTotals",
    "gaussian_delta",
    "gaussian_sigma",
    "private_feeder_totals",
]

_BISECTION_STEPS: Final = 200


class PrivacyBudgetError(SecurityError):
    """A release would exceed the privacy budget, or its parameters are unusable."""


class GaussianMethod(StrEnum):
    CLASSIC = "classic"
    ANALYTIC = "analytic"


def _check(epsilon: float, delta: float, sensitivity: float) -> None:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise PrivacyBudgetError(f"epsilon must be a positive number, not {epsilon}")
    if not 0 < delta < 1:
        raise PrivacyBudgetError(f"delta must be between 0 and 1 (exclusive), not {delta}")
    if not (sensitivity > 0 and math.isfinite(sensitivity)):
        raise PrivacyBudgetError(f"sensitivity must be a positive number, not {sensitivity}")


def _phi(x: float) -> float:
    """Standard normal distribution function."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, *, epsilon: float, sensitivity: float) -> float:
    """The smallest delta the Gaussian mechanism with ``sigma`` achieves at ``epsilon``."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return _phi(a - b) - math.exp(epsilon) * _phi(-a - b)


def gaussian_sigma(
    *,
    epsilon: float,
    delta: float,
    sensitivity: float,
    method: GaussianMethod = GaussianMethod.ANALYTIC,
) -> float:
    """Noise standard deviation for an (epsilon, delta) release of L2 ``sensitivity``."""
    _check(epsilon, delta, sensitivity)
    if method is GaussianMethod.CLASSIC:
        if epsilon >= 1:
            raise PrivacyBudgetError(
                f"the classic Gaussian bound holds for epsilon < 1 only (got {epsilon}); "
                "use the analytic method"
            )
        return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    low, high = 1e-12 * sensitivity, sensitivity
    while gaussian_delta(high, epsilon=epsilon, sensitivity=sensitivity) > delta:
        high *= 2.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if gaussian_delta(middle, epsilon=epsilon, sensitivity=sensitivity) > delta:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return high


@dataclass(frozen=True, slots=True)
class PrivateTotals:
    """Noisy totals per feeder and interval, with what it took to make them private."""

    totals_kwh: Mapping[str, tuple[float, ...]]
    sigma_kwh: float
    epsilon: float
    delta: float
    clip_kwh: float
    clipped_readings: int
    meters: Mapping[str, int]


def private_feeder_totals(
    readings_kwh: Mapping[str, Sequence[float]],
    feeder_of: Mapping[str, str],
    *,
    epsilon: float,
    delta: float,
    clip_kwh: float,
    method: GaussianMethod = GaussianMethod.ANALYTIC,
    rng: random.Random | None = None,
) -> PrivateTotals:
    """Per-feeder totals of each interval, with Gaussian noise for (epsilon, delta).

    ``readings_kwh`` maps a meter id to its consumption per interval (all of equal length),
    ``feeder_of`` a meter id to its feeder. Readings are clipped to ``[0, clip_kwh]`` (the count of
    clipped readings is returned: many means ``clip_kwh`` is too low and biases the totals).
    """
    if not readings_kwh:
        raise PrivacyBudgetError("no meter readings to aggregate")
    lengths = {len(values) for values in readings_kwh.values()}
    if len(lengths) != 1:
        raise PrivacyBudgetError(f"meters report different numbers of intervals: {sorted(lengths)}")
    (intervals,) = lengths
    if intervals == 0:
        raise PrivacyBudgetError("meters report no interval")
    sensitivity = clip_kwh * math.sqrt(intervals)
    sigma = gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=sensitivity, method=method)
    sums: dict[str, list[float]] = {}
    meters: dict[str, int] = {}
    clipped = 0
    for meter_id, values in readings_kwh.items():
        feeder = feeder_of.get(meter_id)
        if feeder is None:
            raise PrivacyBudgetError(f"meter {meter_id!r} has no feeder")
        row = sums.setdefault(feeder, [0.0] * intervals)
        meters[feeder] = meters.get(feeder, 0) + 1
        for index, value in enumerate(values):
            if not math.isfinite(value):
                raise PrivacyBudgetError(f"meter {meter_id!r}: interval {index} is {value}")
            bounded = min(max(value, 0.0), clip_kwh)
            clipped += bounded != value
            row[index] += bounded
    source = rng if rng is not None else random.SystemRandom()
    totals = {
        feeder: tuple(total + source.gauss(0.0, sigma) for total in row)
        for feeder, row in sorted(sums.items())
    }
    return PrivateTotals(
        totals_kwh=totals,
        sigma_kwh=sigma,
        epsilon=epsilon,
        delta=delta,
        clip_kwh=clip_kwh,
        clipped_readings=clipped,
        meters=meters,
    )


class PrivacyAccountant:
    """Adds up the (epsilon, delta) of releases about the same meters (basic composition)."""

    def __init__(self, *, epsilon_budget: float, delta_budget: float) -> None:
        _check(epsilon_budget, delta_budget, 1.0)
        self.epsilon_budget = epsilon_budget
        self.delta_budget = delta_budget
        self.epsilon_spent = 0.0
        self.delta_spent = 0.0
        self.releases = 0

    def spend(self, *, epsilon: float, delta: float) -> None:
        """Record a release; PrivacyBudgetError (and nothing recorded) if it does not fit."""
        _check(epsilon, delta, 1.0)
        if self.epsilon_spent + epsilon > self.epsilon_budget * (1 + 1e-12) or (
            self.delta_spent + delta > self.delta_budget * (1 + 1e-12)
        ):
            raise PrivacyBudgetError(
                f"release of epsilon {epsilon}, delta {delta} exceeds the budget: spent "
                f"epsilon {self.epsilon_spent:g} of {self.epsilon_budget:g}, delta "
                f"{self.delta_spent:g} of {self.delta_budget:g}"
            )
        self.epsilon_spent += epsilon
        self.delta_spent += delta
        self.releases += 1
