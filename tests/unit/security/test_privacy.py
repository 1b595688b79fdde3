"""Gaussian mechanism: the noise has the scale the privacy parameters require, and no more."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from openfeeder.security.privacy import (
    GaussianMethod,
    PrivacyAccountant,
    PrivacyBudgetError,
    gaussian_delta,
    gaussian_sigma,
    private_feeder_totals,
)


def test_classic_sigma_is_the_textbook_formula() -> None:
    sigma = gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=2.0, method=GaussianMethod.CLASSIC)
    assert sigma == pytest.approx(2.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5)
    with pytest.raises(PrivacyBudgetError, match="epsilon < 1 only"):
        gaussian_sigma(epsilon=1.5, delta=1e-5, sensitivity=1.0, method=GaussianMethod.CLASSIC)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 3.0])
def test_analytic_sigma_is_tight(epsilon: float) -> None:
    delta = 1e-6
    sigma = gaussian_sigma(epsilon=epsilon, delta=delta, sensitivity=1.0)
    assert gaussian_delta(sigma, epsilon=epsilon, sensitivity=1.0) <= delta
    assert (
        gaussian_delta(0.99 * sigma, epsilon=epsilon, sensitivity=1.0) > delta
    )  # 1 % less noise breaks it
    if epsilon < 1:
        classic = gaussian_sigma(
            epsilon=epsilon, delta=delta, sensitivity=1.0, method=GaussianMethod.CLASSIC
        )
        assert sigma < classic


def test_sigma_scales_with_sensitivity_and_falls_with_epsilon() -> None:
    base = gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=1.0)
    assert gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=3.0) == pytest.approx(3 * base)
    assert gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=1.0) < base


def test_noise_of_published_totals_has_the_required_scale() -> None:
    """2,000 releases of one feeder total: the noise is centred, normal, and of std sigma."""
    rng = random.Random(20260101)
    readings = {f"m{i}": [rng.uniform(0.1, 1.5)] for i in range(50)}
    feeder_of = dict.fromkeys(readings, "F1")
    true_total = sum(values[0] for values in readings.values())
    errors = []
    sigma = 0.0
    for _ in range(2000):
        release = private_feeder_totals(
            readings, feeder_of, epsilon=0.5, delta=1e-5, clip_kwh=2.0, rng=rng
        )
        sigma = release.sigma_kwh
        errors.append(release.totals_kwh["F1"][0] - true_total)
    assert sigma == pytest.approx(gaussian_sigma(epsilon=0.5, delta=1e-5, sensitivity=2.0))
    mean = sum(errors) / len(errors)
    std = math.sqrt(sum((e - mean) ** 2 for e in errors) / (len(errors) - 1))
    assert abs(mean) < 4 * sigma / math.sqrt(len(errors))
    assert std == pytest.approx(sigma, rel=0.06)  # standard error of std is 1.6 % here
    assert stats.kstest([e / sigma for e in errors], "norm").pvalue > 0.001


def test_profile_sensitivity_grows_with_sqrt_of_intervals() -> None:
    readings = {"m1": [0.5] * 24, "m2": [0.7] * 24}
    release = private_feeder_totals(
        readings,
        {"m1": "F1", "m2": "F2"},
        epsilon=1.0,
        delta=1e-5,
        clip_kwh=1.0,
        rng=random.Random(1),
    )
    assert release.sigma_kwh == pytest.approx(
        gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=math.sqrt(24))
    )
    assert set(release.totals_kwh) == {"F1", "F2"}
    assert all(len(row) == 24 for row in release.totals_kwh.values())
    assert release.meters == {"F1": 1, "F2": 1}


def test_clipping_bounds_one_meter_and_is_counted() -> None:
    readings = {"m1": [5.0, -1.0], "m2": [0.2, 0.3]}
    release = private_feeder_totals(
        readings,
        dict.fromkeys(readings, "F"),
        epsilon=1.0,
        delta=1e-5,
        clip_kwh=1.0,
        rng=random.Random(3),
    )
    assert release.clipped_readings == 2


def test_bad_inputs_are_named() -> None:
    with pytest.raises(PrivacyBudgetError, match="epsilon must be a positive"):
        gaussian_sigma(epsilon=0, delta=1e-5, sensitivity=1)
    with pytest.raises(PrivacyBudgetError, match="delta must be between"):
        gaussian_sigma(epsilon=1, delta=1, sensitivity=1)
    with pytest.raises(PrivacyBudgetError, match="meter 'm2' has no feeder"):
        private_feeder_totals(
            {"m1": [1.0], "m2": [1.0]}, {"m1": "F"}, epsilon=1, delta=1e-5, clip_kwh=1
        )
    with pytest.raises(PrivacyBudgetError, match="different numbers of intervals"):
        private_feeder_totals(
            {"m1": [1.0], "m2": [1.0, 2.0]},
            {"m1": "F", "m2": "F"},
            epsilon=1,
            delta=1e-5,
            clip_kwh=1,
        )
    with pytest.raises(PrivacyBudgetError, match="interval 0 is nan"):
        private_feeder_totals({"m1": [math.nan]}, {"m1": "F"}, epsilon=1, delta=1e-5, clip_kwh=1)


def test_accountant_refuses_a_release_beyond_the_budget() -> None:
    accountant = PrivacyAccountant(epsilon_budget=1.0, delta_budget=1e-5)
    accountant.spend(epsilon=0.5, delta=4e-6)
    accountant.spend(epsilon=0.5, delta=4e-6)
    with pytest.raises(PrivacyBudgetError, match="exceeds the budget"):
        accountant.spend(epsilon=0.1, delta=1e-7)
    assert accountant.releases == 2
    assert accountant.epsilon_spent == pytest.approx(1.0)
