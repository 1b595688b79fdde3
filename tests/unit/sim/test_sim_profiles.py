"""Seeded time series of the twin: load multipliers, PV output, EV charging (openfeeder.sim.profiles)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from openfeeder.model.components import CustomerClass, enum_code, enum_codes
from openfeeder.sim.profiles import (
    CLASS_POWER_FACTOR,
    EV_CHARGER_POWERS_KW,
    ChargerKind,
    EvSessions,
    LoadProfiles,
    PvModel,
)

NS = 1_000_000_000
MIN_NS = 60 * NS
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS
RES = enum_code(CustomerClass.RESIDENTIAL)
COM = enum_code(CustomerClass.COMMERCIAL)
IND = enum_code(CustomerClass.INDUSTRIAL)
PUB = enum_code(CustomerClass.PUBLIC)
ALL_CLASSES = np.array([RES, COM, IND, PUB], dtype=np.int8)


def local_ns(stamp: str, utc_offset_h: float = 1.0) -> int:
    """UTC ns of a local (UTC + offset) clock time."""
    return int(np.datetime64(stamp, "ns").astype(np.int64)) - round(utc_offset_h * HOUR_NS)


def day_times(stamp: str, step_s: int, days: int = 1) -> np.ndarray:
    return local_ns(stamp) + np.arange(0, days * 86_400, step_s, dtype=np.int64) * NS


# ------------------------------------------------------------------------------------- loads


@pytest.fixture
def mixed_codes() -> np.ndarray:
    return np.tile(ALL_CLASSES, 5)


@pytest.mark.parametrize("resolution_s", [900, 60])
def test_multipliers_shape_and_chunking_identical(
    resolution_s: int, mixed_codes: np.ndarray
) -> None:
    lp = LoadProfiles(7, resolution_s=resolution_s)
    # Two days and a bit, off the grid, crossing midnights; chunks cut anywhere.
    t = local_ns("2024-03-08T22:00") + np.arange(0, 50 * 3600, 37, dtype=np.int64) * NS
    whole = lp.multipliers(mixed_codes, t)
    assert whole.shape == (t.size, mixed_codes.size)
    assert whole.dtype == np.float64
    assert np.all(np.isfinite(whole))
    assert np.all(whole > 0.0)
    cuts = [0, 1, 500, 2_345, 2_346, t.size]
    chunked = np.concatenate(
        [lp.multipliers(mixed_codes, t[a:b]) for a, b in itertools.pairwise(cuts)]
    )
    np.testing.assert_array_equal(chunked, whole)
    # A fresh instance (empty caches), times shuffled: the same values.
    perm = np.random.default_rng(0).permutation(t.size)
    again = LoadProfiles(7, resolution_s=resolution_s).multipliers(mixed_codes, t[perm])
    np.testing.assert_array_equal(again, whole[perm])


def test_load_values_do_not_depend_on_other_loads(mixed_codes: np.ndarray) -> None:
    lp = LoadProfiles(3, resolution_s=60)
    t = day_times("2024-07-02T00:00", 600)
    full = lp.multipliers(mixed_codes, t)
    few = LoadProfiles(3, resolution_s=60).multipliers(mixed_codes[:6], t)
    np.testing.assert_array_equal(few, full[:, :6])


def test_seed_changes_values_and_same_seed_repeats(mixed_codes: np.ndarray) -> None:
    t = day_times("2024-10-10T00:00", 900)
    a = LoadProfiles(1).multipliers(mixed_codes, t)
    b = LoadProfiles(1).multipliers(mixed_codes, t)
    c = LoadProfiles(2).multipliers(mixed_codes, t)
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.abs(a - c)) > 0.01


def test_empty_queries() -> None:
    lp = LoadProfiles(1)
    assert lp.multipliers(ALL_CLASSES, np.array([], dtype=np.int64)).shape == (0, 4)
    assert lp.multipliers(
        np.array([], dtype=np.int8), day_times("2024-01-01T00:00", 3600)
    ).shape == (
        24,
        0,
    )


@pytest.mark.parametrize("resolution_s", [900, 60])
def test_interpolation_exact_at_grid_points_and_linear_between(resolution_s: int) -> None:
    lp = LoadProfiles(11, resolution_s=resolution_s)
    codes = np.array([RES, COM, IND, PUB, RES], dtype=np.int8)
    grid = local_ns("2024-05-14T06:00") + np.arange(0, 4 * 3600, resolution_s, dtype=np.int64) * NS
    at_grid = lp.multipliers(codes, grid)
    step = resolution_s * NS
    quarter = lp.multipliers(codes, grid[:-1] + step // 4)
    expected = at_grid[:-1] + 0.25 * (at_grid[1:] - at_grid[:-1])
    np.testing.assert_allclose(quarter, expected, rtol=1e-12, atol=1e-15)
    # Each grid value is the same whether asked for alone or with its neighbours.
    np.testing.assert_array_equal(lp.multipliers(codes, grid[5:6]), at_grid[5:6])


def test_no_individuality_gives_the_class_shape(mixed_codes: np.ndarray) -> None:
    t = day_times("2024-02-01T00:00", 450)
    lp = LoadProfiles(5, individuality=0.0)
    np.testing.assert_array_equal(lp.multipliers(mixed_codes, t), lp.class_shape(mixed_codes, t))
    columns = lp.multipliers(mixed_codes, t)
    np.testing.assert_array_equal(columns[:, 0], columns[:, 4])  # same class, same values


def test_class_shapes_peak_near_one_over_a_year() -> None:
    lp = LoadProfiles(0)
    t = day_times("2023-01-01T00:00", 900, days=365)
    shape = lp.class_shape(ALL_CLASSES, t)
    peaks = shape.max(axis=0)
    assert np.all(peaks <= 1.0 + 1e-12)
    assert np.all(peaks > 0.98)
    assert np.all(shape.min(axis=0) > 0.05)


def test_residential_evening_peak_above_midday_and_night() -> None:
    lp = LoadProfiles(0)
    t = day_times("2024-04-10T00:00", 900)  # a Wednesday
    shape = lp.class_shape(np.array([RES], dtype=np.int8), t)[:, 0]
    hours = np.arange(96) / 4
    evening = shape[(hours >= 18) & (hours < 22)].max()
    midday = shape[(hours >= 11) & (hours < 15)].max()
    night = shape[(hours >= 2) & (hours < 5)].max()
    morning = shape[(hours >= 6) & (hours < 9)].max()
    assert evening > 1.5 * midday
    assert morning > 1.3 * night
    assert evening > morning


def test_weekday_saturday_sunday_differ() -> None:
    lp = LoadProfiles(0)
    week = day_times("2024-04-08T00:00", 900, days=7)  # Monday .. Sunday
    shape = lp.class_shape(ALL_CLASSES, week).reshape(7, 96, 4)
    daily = shape.mean(axis=1)  # (day, class)
    monday, saturday, sunday = daily[0], daily[5], daily[6]
    assert sunday[COM] < 0.6 * monday[COM]
    assert saturday[COM] < monday[COM]
    assert sunday[IND] < 0.6 * monday[IND]
    assert saturday[IND] < monday[IND]
    assert sunday[PUB] < monday[PUB]
    # Households: the morning peak comes later at weekends.
    hours = np.arange(96) / 4
    morning = (hours >= 5) & (hours < 12)
    assert (
        hours[morning][np.argmax(shape[6, morning, RES])]
        > hours[morning][np.argmax(shape[0, morning, RES])]
    )


def test_holiday_behaves_like_sunday() -> None:
    lp = LoadProfiles(0)
    codes = np.array([COM], dtype=np.int8)
    christmas = lp.class_shape(codes, day_times("2024-12-25T00:00", 900)).mean()  # a Wednesday
    eve = lp.class_shape(codes, day_times("2024-12-24T00:00", 900)).mean()
    sunday = lp.class_shape(codes, day_times("2024-12-22T00:00", 900)).mean()
    assert christmas < 0.6 * eve
    assert christmas == pytest.approx(sunday, rel=0.03)
    no_holidays = LoadProfiles(0, holidays=()).class_shape(
        codes, day_times("2024-12-25T00:00", 900)
    )
    assert no_holidays.mean() == pytest.approx(eve, rel=0.05)


def test_seasons_winter_and_summer_differ() -> None:
    lp = LoadProfiles(0)
    january = lp.class_shape(ALL_CLASSES, day_times("2024-01-17T00:00", 900))  # Wednesdays
    july = lp.class_shape(ALL_CLASSES, day_times("2024-07-17T00:00", 900))
    hours = np.arange(96) / 4
    # Households use more on a winter day (heating, lighting).
    assert january[:, RES].sum() > 1.05 * july[:, RES].sum()
    # Shops and offices cool on summer afternoons.
    afternoon = (hours >= 14) & (hours < 17)
    assert july[afternoon, COM].mean() > 1.15 * january[afternoon, COM].mean()
    # Street lighting: on at 17:30 in January, off at 17:30 and still off at 20:00 in July.
    at = {h: int(h * 4) for h in (17.5, 20.0, 22.0)}
    assert january[at[17.5], PUB] > july[at[17.5], PUB] + 0.3
    assert january[at[20.0], PUB] > july[at[20.0], PUB] + 0.3
    assert january[at[22.0], PUB] == pytest.approx(july[at[22.0], PUB], rel=0.05)
    # The evening lights make the winter residential evening peak come earlier and higher.
    evening = (hours >= 15) & (hours < 23)
    assert january[evening, RES].max() > july[evening, RES].max()


def test_mean_of_many_residential_loads_follows_the_class_shape() -> None:
    lp = LoadProfiles(42)
    codes = np.full(2_000, RES, dtype=np.int8)
    t = day_times("2024-11-06T00:00", 900)
    loads = lp.multipliers(codes, t)
    mean = loads.mean(axis=1)
    shape = lp.class_shape(codes[:1], t)[:, 0]
    assert np.max(np.abs(mean / shape - 1.0)) < 0.08
    assert mean.sum() == pytest.approx(shape.sum(), rel=0.02)
    # ... while single loads do not move in lock step.
    assert np.all(loads.std(axis=1) / mean > 0.15)
    deviations = loads / shape[:, None]
    corr = np.corrcoef(deviations[:, 0], deviations[:, 1])[0, 1]
    assert abs(corr) < 0.9


def test_power_factor_and_tan_phi() -> None:
    codes = enum_codes(CustomerClass, ["residential", "industrial", "public", "commercial"])
    pf = LoadProfiles.power_factor(codes)
    np.testing.assert_allclose(
        pf,
        [
            CLASS_POWER_FACTOR[CustomerClass.RESIDENTIAL],
            CLASS_POWER_FACTOR[CustomerClass.INDUSTRIAL],
            CLASS_POWER_FACTOR[CustomerClass.PUBLIC],
            CLASS_POWER_FACTOR[CustomerClass.COMMERCIAL],
        ],
    )
    tan_phi = LoadProfiles.tan_phi(codes)
    np.testing.assert_allclose(np.cos(np.arctan(tan_phi)), pf)
    assert tan_phi[0] == pytest.approx(0.3287, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resolution_s": 300}, "resolution_s must be 900 .* got 300"),
        ({"resolution_s": 3600}, "got 3600"),
        ({"individuality": -0.1}, "individuality .* got -0.1"),
        ({"utc_offset_h": 20.0}, "utc_offset_h .* got 20.0"),
        ({"latitude_deg": 91.0}, "latitude_deg"),
        ({"holidays": [(13, 1)]}, r"holidays .* \(13, 1\)"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoadProfiles(1, **kwargs)  # type: ignore[arg-type]


def test_bad_inputs_are_named() -> None:
    lp = LoadProfiles(1)
    t = day_times("2024-01-01T00:00", 3600)
    with pytest.raises(ValueError, match=r"customer_class\[2\] = 7 is not a CustomerClass code"):
        lp.multipliers(np.array([0, 1, 7], dtype=np.int8), t)
    with pytest.raises(ValueError, match=r"customer_class\[0\] = -1"):
        lp.multipliers(np.array([-1], dtype=np.int8), t)
    with pytest.raises(ValueError, match="dtype float64"):
        lp.multipliers(ALL_CLASSES, t.astype(np.float64))
    with pytest.raises(ValueError, match="1-D"):
        lp.multipliers(ALL_CLASSES, t.reshape(4, 6))
    with pytest.raises(ValueError, match="customer_class must hold integer"):
        lp.multipliers(np.array(["residential"]), t)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        LoadProfiles(-3)


# ---------------------------------------------------------------------------------------- PV


def test_pv_zero_at_night_and_shapes() -> None:
    pv = PvModel(4)
    t = day_times("2024-06-21T00:00", 300)
    out = pv.output_pu(t, n_sites=3)
    assert out.shape == (t.size, 3)
    elevation = pv.solar_elevation_deg(t)
    night = elevation < 0.0
    assert night.sum() > 50
    assert np.all(out[night] == 0.0)
    assert np.all(out[elevation > 10.0] > 0.0)
    assert np.all((out >= 0.0) & (out <= 1.0))
    assert pv.output_pu(t, n_sites=0).shape == (t.size, 0)
    assert pv.output_pu(np.array([], dtype=np.int64), n_sites=2).shape == (0, 2)


def test_pv_solar_geometry_in_turin() -> None:
    pv = PvModel(0)
    # Solar noon in Turin (7.69 E) is near 11:30 UTC; elevation = 90 - lat +- 23.44.
    summer = local_ns("2024-06-21T10:00", 0.0) + np.arange(0, 3 * 3600, 60, dtype=np.int64) * NS
    winter = local_ns("2024-12-21T10:00", 0.0) + np.arange(0, 3 * 3600, 60, dtype=np.int64) * NS
    assert pv.solar_elevation_deg(summer).max() == pytest.approx(90 - 45.07 + 23.44, abs=0.3)
    assert pv.solar_elevation_deg(winter).max() == pytest.approx(90 - 45.07 - 23.44, abs=0.3)
    noon_utc = summer[np.argmax(pv.solar_elevation_deg(summer))]
    assert abs(noon_utc - local_ns("2024-06-21T11:30", 0.0)) < 10 * MIN_NS


def test_pv_clear_sky_noon_above_morning_and_summer_above_winter() -> None:
    pv = PvModel(0)

    def clear(stamp: str) -> float:
        return float(pv.clear_sky_pu(np.array([local_ns(stamp)], dtype=np.int64))[0])

    assert clear("2024-06-21T13:30") > 1.5 * clear("2024-06-21T08:00")
    summer, winter = clear("2024-06-21T13:30"), clear("2024-12-21T12:30")
    assert summer > 1.25 * winter
    assert 0.7 < summer <= 1.0
    # Horizontal panels feel the season more than tilted ones.
    flat = PvModel(0, tilt_deg=0.0)
    ratio_flat = float(
        flat.clear_sky_pu(np.array([local_ns("2024-06-21T13:30")]))[0]
        / flat.clear_sky_pu(np.array([local_ns("2024-12-21T12:30")]))[0]
    )
    assert ratio_flat > summer / winter


def test_pv_determinism_chunks_sites_and_seeds() -> None:
    pv = PvModel(9)
    t = local_ns("2024-05-01T05:00") + np.arange(0, 40 * 3600, 23, dtype=np.int64) * NS
    whole = pv.output_pu(t, n_sites=4)
    cuts = [0, 7, 3_000, 3_001, t.size]
    chunked = np.concatenate([PvModel(9).output_pu(t[a:b], 4) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(PvModel(9).output_pu(t, n_sites=2), whole[:, :2])
    other = PvModel(10).output_pu(t, n_sites=4)
    assert np.mean(np.abs(other - whole)) > 0.01


def test_pv_clouds_reduce_yearly_energy_realistically() -> None:
    pv = PvModel(2)
    t = local_ns("2023-01-01T00:00") + np.arange(0, 365 * 86_400, 900, dtype=np.int64) * NS
    out = pv.output_pu(t, n_sites=1)[:, 0]
    clear = pv.clear_sky_pu(t)
    # Cloud-edge enhancement (sun out between bright clouds) is brief and bounded, as measured:
    # up to about 1.3 times clear sky on a tilted panel (more beam in the mix), a few % of the time.
    midday = clear > 0.3
    enhancement = out[midday] / clear[midday]
    assert enhancement.max() < 1.35
    assert np.mean(enhancement > 1.1) < 0.05
    ratio = out.sum() / clear.sum()
    assert 0.55 < ratio < 0.85
    full_load_hours = out.sum() * 0.25
    assert 1_000 < full_load_hours < 1_600  # Turin: about 1,300 kWh per kWp
    # Some days are overcast, some clear: daily energy ratios spread widely.
    daily = out.reshape(365, 96).sum(axis=1) / clear.reshape(365, 96).sum(axis=1)
    assert daily.min() < 0.4
    assert daily.max() > 0.9


def test_pv_sites_partly_correlated() -> None:
    t = local_ns("2024-04-01T00:00") + np.arange(0, 20 * 86_400, 60, dtype=np.int64) * NS

    def site_corr(rho: float) -> float:
        pv = PvModel(6, site_correlation=rho)
        day = pv.solar_elevation_deg(t) > 15.0
        k = pv.clear_sky_index(t[day], n_sites=2)
        return float(np.corrcoef(np.diff(k[:, 0]), np.diff(k[:, 1]))[0, 1])

    independent, partly = site_corr(0.0), site_corr(0.7)
    assert independent < 0.2
    assert 0.4 < partly < 0.95
    pv = PvModel(6, site_correlation=1.0)
    k = pv.clear_sky_index(t[:3_000], n_sites=2)
    np.testing.assert_array_equal(k[:, 0], k[:, 1])


def test_pv_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match=r"tilt_deg must be within 0\.\.90, got 95"):
        PvModel(1, tilt_deg=95.0)
    with pytest.raises(ValueError, match="site_correlation"):
        PvModel(1, site_correlation=1.5)
    with pytest.raises(ValueError, match="n_sites must be a non-negative integer, got -1"):
        PvModel(1).output_pu(np.array([0], dtype=np.int64), n_sites=-1)


# ---------------------------------------------------------------------------------------- EV


def test_ev_power_is_rated_or_zero_and_sessions_consistent() -> None:
    ev = EvSessions(5, 30)
    t = day_times("2024-03-04T00:00", 60, days=7)
    power = ev.power_mw(t)
    assert power.shape == (t.size, 30)
    rated = ev.power_kw / 1000.0
    assert np.all((power == 0.0) | (power == rated[None, :]))
    assert set(ev.power_kw.tolist()) <= set(EV_CHARGER_POWERS_KW)
    sessions = ev.sessions(int(t[0]), int(t[-1]))
    assert sessions.charger.size > 30
    duration_h = (sessions.charge_end_ns - sessions.arrival_ns) / HOUR_NS
    np.testing.assert_allclose(sessions.delivered_kwh, sessions.power_kw * duration_h)
    assert np.all(sessions.delivered_kwh <= sessions.energy_kwh + sessions.power_kw / 3600.0)
    done = sessions.charge_end_ns < sessions.departure_ns
    np.testing.assert_allclose(
        sessions.delivered_kwh[done], sessions.energy_kwh[done], atol=0.5 / 3600 * 22
    )
    assert np.all(sessions.charge_end_ns <= sessions.departure_ns)
    assert np.all(sessions.arrival_ns < sessions.charge_end_ns)


def test_ev_power_integral_equals_session_energy() -> None:
    ev = EvSessions(8, 6)
    start, end = local_ns("2024-05-06T00:00"), local_ns("2024-05-08T00:00")
    t = np.arange(start, end, NS, dtype=np.int64)  # every second: exact for whole-second edges
    energy_kwh = ev.power_mw(t).sum(axis=0) * 1000.0 / 3600.0
    sessions = ev.sessions(start - 2 * DAY_NS, end)
    overlap_s = (
        np.clip(sessions.charge_end_ns, start, end) - np.clip(sessions.arrival_ns, start, end)
    ) / NS
    expected = np.bincount(
        sessions.charger, weights=sessions.power_kw * overlap_s / 3600.0, minlength=6
    )
    np.testing.assert_allclose(energy_kwh, expected, rtol=1e-12)
    assert expected.sum() > 0.0


def test_ev_sessions_of_one_charger_never_overlap() -> None:
    ev = EvSessions(2, 40)
    s = ev.sessions(local_ns("2024-01-01T00:00"), local_ns("2024-03-01T00:00"))
    order = np.lexsort((s.arrival_ns, s.charger))
    same = s.charger[order][1:] == s.charger[order][:-1]
    assert np.all(s.arrival_ns[order][1:][same] >= s.departure_ns[order][:-1][same])


def test_ev_kinds_set_arrival_times() -> None:
    kinds = [ChargerKind.HOME] * 50 + ["work"] * 50
    ev = EvSessions(3, 100, kinds=kinds, power_kw=np.full(100, 11.0))
    assert ev.kinds[0] is ChargerKind.HOME
    assert ev.kinds[99] is ChargerKind.WORK
    start = local_ns("2024-04-01T00:00")  # a Monday
    s = ev.sessions(start, start + 28 * DAY_NS)
    local_hour = ((s.arrival_ns - start) % DAY_NS) / HOUR_NS
    weekday = ((s.arrival_ns - start) // DAY_NS) % 7
    home, work = s.charger < 50, s.charger >= 50
    assert np.all(local_hour[home] >= 14.0)
    assert 17.0 < np.median(local_hour[home]) < 20.0
    assert np.all((local_hour[work] >= 6.0) & (local_hour[work] <= 11.0))
    work_weekday = np.sum(work & (weekday < 5)) / 20
    work_sunday = np.sum(work & (weekday == 6)) / 4
    assert work_sunday < 0.2 * work_weekday
    demand_kwh = s.energy_kwh
    assert 5.0 < np.median(demand_kwh) < 15.0


def test_ev_determinism_chunks_chargers_and_seeds() -> None:
    t = local_ns("2024-02-10T12:00") + np.arange(0, 60 * 3600, 41, dtype=np.int64) * NS
    whole = EvSessions(4, 12).power_mw(t)
    cuts = [0, 3, 2_500, t.size]
    ev = EvSessions(4, 12)
    chunked = np.concatenate([ev.power_mw(t[a:b]) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(EvSessions(4, 5).power_mw(t), whole[:, :5])
    assert not np.array_equal(EvSessions(5, 12).power_mw(t), whole)


def test_ev_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="kinds has 1 entries for 2 chargers"):
        EvSessions(1, 2, kinds=["home"])
    with pytest.raises(ValueError, match=r"kinds\[1\] = 'garage' is not a charger kind"):
        EvSessions(1, 2, kinds=["home", "garage"])
    with pytest.raises(ValueError, match=r"power_kw\[0\] = -7.4 is not a positive rating"):
        EvSessions(1, 2, power_kw=[-7.4, 7.4])
    with pytest.raises(ValueError, match=r"power_kw must have one rating per charger \(2\)"):
        EvSessions(1, 2, power_kw=[7.4])
    with pytest.raises(ValueError, match="n_chargers"):
        EvSessions(1, -1)
    with pytest.raises(ValueError, match=r"end_ns .* is before start_ns"):
        EvSessions(1, 2).sessions(10, 5)
