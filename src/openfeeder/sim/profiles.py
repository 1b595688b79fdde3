"""Quasi-static time series that drive the twin: customer load, photovoltaic output, EV charging.

Everything is generated from a seed in code; nothing is downloaded and no data file is read.

- :class:`LoadProfiles`: per customer class (residential, commercial, industrial, public) a daily
  shape with weekday / Saturday / Sunday variants, holidays treated as Sundays, seasonal heating,
  cooling and lighting (sunset and sunrise follow the date and the place); per load a seeded
  individuality (scale, a time shift, a correlated noise), so that a hundred households on a feeder
  do not move in lock step while their mean follows the class shape. Multipliers are fractions of a
  load's case ``p_mw``, read as the class's design peak: the noise-free class shape peaks at 1.0
  over a year. Reactive power follows from a power factor per class (:meth:`LoadProfiles.tan_phi`).
- :class:`PvModel`: clear-sky output from the sun's position (NOAA declination and equation of time,
  Haurwitz clear-sky irradiance, Erbs diffuse split, plane of array, cell temperature), times a seeded
  clear-sky index: a daily weather regime with day-to-day persistence, a semi-Markov sequence of sky
  states (clear, broken clouds, overcast) shared by the region, and minute-scale fluctuations that are
  partly common to all sites and partly each site's own.
- :class:`EvSessions`: per charger and day at most one session (home, work or public charging; arrival,
  stay and energy drawn per kind and day type), charged at rated power until the energy is delivered
  or the car leaves.

Determinism is the contract the twin relies on: a value depends only on the seed, the index of the
load / site / charger and the time, never on which other times were asked for or in which chunks.
Every random number is drawn from ``numpy.random.default_rng((seed, stream, block))`` for a block of
grid slots (one local day, or one solar day for PV), as a row per load, so that load ``i``'s draws are
the same whatever the number of loads; whole blocks are always computed the same way (then cached),
and a query only picks values out of them. Processes that need memory across blocks (a load's
deviation, the weather regime) are run over earlier blocks' innovations as a warm-up, long enough
(``exp(-16)`` of the past left out) that the seam is invisible, yet still a pure function of the
blocks' keys. PV's sky spells and minute-scale clouds start afresh at local solar midnight, when
the sun is down and nothing shows.

Time stamps are UTC int64 nanoseconds since the epoch. Day types and seasons follow the local date
(UTC + ``utc_offset_h``; a fixed offset, so daylight saving time is not modelled: pass 2.0 to study a
summer in Italy on its clocks). Sizes: a query returns ``(T, n)`` float64 and needs about six times
that in temporaries, so long series (a year at one minute for thousands of loads) are asked for in
chunks (a day or a week), which gives identical values by construction.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter
from scipy.special import ndtr, ndtri

from openfeeder.model.components import CustomerClass

__all__ = [
    "CLASS_POWER_FACTOR",
    "EV_CHARGER_POWERS_KW",
    "ITALIAN_HOLIDAYS",
    "ChargerKind",
    "EvSessionTable",
    "EvSessions",
    "LoadProfiles",
    "PvModel",
]

FloatArray = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

NS_PER_S: Final = 1_000_000_000
S_PER_DAY: Final = 86_400
NS_PER_DAY: Final = S_PER_DAY * NS_PER_S
MIN_PER_DAY: Final = 1_440

CLASS_POWER_FACTOR: Final[Mapping[CustomerClass, float]] = MappingProxyType(
    {
        CustomerClass.RESIDENTIAL: 0.95,
        CustomerClass.COMMERCIAL: 0.92,
        CustomerClass.INDUSTRIAL: 0.88,
        CustomerClass.PUBLIC: 0.96,
    }
)
"""Lagging power factor per class: motors and compressors lower it in industry and shops; LED
street lighting and households with mostly electronic loads are close to 0.95."""

ITALIAN_HOLIDAYS: Final[frozenset[tuple[int, int]]] = frozenset(
    {(1, 1), (1, 6), (4, 25), (5, 1), (6, 2), (8, 15), (11, 1), (12, 8), (12, 25), (12, 26)}
)
"""Fixed-date national holidays in Italy as (month, day); loads behave as on a Sunday. Easter Monday
moves with the moon and is left out."""

EV_CHARGER_POWERS_KW: Final = (3.7, 7.4, 11.0, 22.0)
"""Usual AC charger ratings: single-phase 16 A and 32 A, three-phase 16 A and 32 A."""

_N_CLASSES: Final = len(CustomerClass)
_DAY_BIAS: Final = 1 << 32
"""Added to day indices before they key a generator (SeedSequence takes only non-negative words)."""

# Random streams: one per kind of draw, so that adding a draw to one never shifts another.
_STREAM_LOAD_PARAMS: Final = 1
_STREAM_LOAD_NOISE: Final = 2
_STREAM_PV_REGIME: Final = 11
_STREAM_PV_SKY: Final = 12
_STREAM_PV_SITE: Final = 13
_STREAM_EV_PARAMS: Final = 21
_STREAM_EV_DAY: Final = 22

_RESOLUTIONS_S: Final = (60, 900)
_SLOW_TAU_S: Final = 2_700.0
"""Correlation time of a load's slow deviation from its class (habits over a day: 45 min)."""
_FAST_TAU_S: Final = 180.0
"""Correlation time of the fast, appliance-scale deviation seen at one-minute resolution."""
_FAST_SHARE_1MIN: Final = 0.35
"""Share of the deviation variance that is fast at one-minute resolution (none at 15 minutes, where
appliance cycles average out)."""
_WARMUP_TAUS: Final = 16.0
"""Warm-up of a day's deviation process over the previous day's innovations, in slow correlation
times: the history left out weighs ``exp(-16)`` (1e-7) and the variance lacks ``exp(-32)``."""
_CLASS_NOISE: Final = np.array([1.6, 0.8, 0.6, 0.3])
"""Deviation of one load from its class shape, per unit of ``individuality``, by class code: a
household varies most, a street-lighting circuit hardly at all."""
_SHIFT_MIN_PER_INDIVIDUALITY: Final = 80.0
"""Standard deviation of a load's time shift per unit of ``individuality`` (12 min at 0.15)."""
_MAX_SHIFT_MIN: Final = 120
_CACHE_BLOCKS: Final = 8


# --------------------------------------------------------------------------------------------------
# Checks and small pieces shared by the three generators


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_times(t_ns: npt.ArrayLike) -> Int64Array:
    arr = np.asarray(t_ns)
    if arr.ndim != 1:
        raise ValueError(f"t_ns must be a 1-D array of UTC nanoseconds, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"t_ns must be integer UTC nanoseconds since the epoch, got dtype {arr.dtype}"
        )
    return arr.astype(np.int64, copy=False)


def _check_offset_h(utc_offset_h: float) -> int:
    if not math.isfinite(utc_offset_h) or abs(utc_offset_h) > 14.0:
        raise ValueError(f"utc_offset_h must be within -14..14 hours, got {utc_offset_h!r}")
    return round(utc_offset_h * 3600 * NS_PER_S)


def _rng(seed: int, stream: int, block: int | None = None) -> np.random.Generator:
    key = (seed, stream) if block is None else (seed, stream, block + _DAY_BIAS)
    return np.random.default_rng(key)


def _sigmoid(x: FloatArray) -> FloatArray:
    """Logistic function written with tanh: no overflow warning for any argument."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _bump(h: FloatArray, mu: FloatArray, width: FloatArray) -> FloatArray:
    """Gaussian bump over the hour of day, on the circle so that evening bumps continue past midnight."""
    d = np.mod(h - mu + 12.0, 24.0) - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _plateau(h: FloatArray, start: FloatArray, end: FloatArray, edge: float) -> FloatArray:
    """About 1 between ``start`` and ``end`` hours, with logistic edges ``edge`` hours wide."""
    return _sigmoid((h - start) / edge) * _sigmoid((end - h) / edge)


def _dates(days: Int64Array) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Day of year (0-based), month and day of month of day indices since 1970-01-01."""
    d = days.astype("datetime64[D]")
    doy = (d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
    month_start = d.astype("datetime64[M]")
    month = month_start.astype(np.int64) % 12 + 1
    dom = (d - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    return doy, month, dom


def _declination_eot(gamma: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Solar declination (rad) and equation of time (min) from the fractional year (NOAA, Spencer)."""
    decl = (
        0.006918
        - 0.399912 * np.cos(gamma)
        + 0.070257 * np.sin(gamma)
        - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma)
        - 0.002697 * np.cos(3 * gamma)
        + 0.00148 * np.sin(3 * gamma)
    )
    eot_min = 229.18 * (
        0.000075
        + 0.001868 * np.cos(gamma)
        - 0.032077 * np.sin(gamma)
        - 0.014615 * np.cos(2 * gamma)
        - 0.040849 * np.sin(2 * gamma)
    )
    return decl, eot_min


def _seasons(doy: FloatArray | Int64Array) -> tuple[FloatArray, FloatArray]:
    """Winter and summer weights in 0..1: 1 in mid January resp. mid July, squared to keep spring and
    autumn mild."""
    s = np.cos(2.0 * np.pi * (np.asarray(doy, dtype=np.float64) - 15.0) / 365.25)
    return ((1.0 + s) / 2.0) ** 2, ((1.0 - s) / 2.0) ** 2


def _grid_query(
    t_ns: Int64Array, offset_ns: int, step_ns: int
) -> tuple[Int64Array, Int64Array, FloatArray]:
    """Slots that linear interpolation at ``t_ns`` needs (sorted, unique), the position of each
    query's left slot in that list, and the fraction of the way to the right slot."""
    local = t_ns + offset_ns
    k0 = np.floor_divide(local, step_ns)
    frac = (local - k0 * step_ns).astype(np.float64) / step_ns
    slots = np.unique(np.concatenate([k0, k0 + 1]))
    # k0 + 1 is in ``slots`` right after k0: no integer lies between them.
    return slots, np.searchsorted(slots, k0).astype(np.int64), frac


def _interpolate(values: FloatArray, i0: Int64Array, frac: FloatArray) -> FloatArray:
    """``v0 + frac * (v1 - v0)`` per query; a query on the grid gets ``v0`` exactly either way, so
    skipping the arithmetic when all are on the grid changes no value."""
    v0 = values[i0]
    if not frac.any():
        return v0
    step = values[i0 + 1]
    step -= v0
    step *= frac[:, None]
    step += v0
    return step


def _gather_blocks(
    slots: Int64Array,
    per_block: int,
    offset: int,
    block: Callable[[int], npt.NDArray[np.floating[Any]]],
    n: int,
) -> FloatArray:
    """Values at sorted grid ``slots`` from whole blocks ``block(b) -> (per_block, n)`` where block
    ``b`` holds slots ``b * per_block - offset`` onwards. Loops over blocks (days), not slots."""
    shifted = slots + offset
    b = np.floor_divide(shifted, per_block)
    j = shifted - b * per_block
    blocks, starts = np.unique(b, return_index=True)
    ends = np.append(starts[1:], slots.size)
    out = np.empty((slots.size, n), dtype=np.float64)
    for bi, s, e in zip(blocks.tolist(), starts.tolist(), ends.tolist(), strict=True):
        out[s:e] = block(bi)[j[s:e]]
    return out


def _day_type(day: int, holidays: Int64Array) -> int:
    """0 weekday, 1 Saturday, 2 Sunday or holiday (``holidays`` as ``month * 100 + day``)."""
    _, month, dom = _dates(np.array([day], dtype=np.int64))
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    if weekday == 6 or bool(np.isin(month * 100 + dom, holidays)[0]):
        return 2
    return 1 if weekday == 5 else 0


def _ar1(innovations: FloatArray, phi: float) -> FloatArray:
    """Unit-variance AR(1) along the last axis from unit normal innovations, started at 0: the first
    ``k`` values keep ``phi**(2k)`` too little variance, hence callers' warm-up."""
    out = lfilter([math.sqrt(1.0 - phi * phi)], [1.0, -phi], innovations, axis=-1)
    return np.asarray(out, dtype=np.float64)


class _BlockCache:
    """A small LRU of computed blocks: a twin stepping minute by minute asks for the same day again
    and again. Values never depend on what is cached, only the time to get them does."""

    def __init__(self, size: int = _CACHE_BLOCKS) -> None:
        self._size = size
        self._items: OrderedDict[tuple[int, ...], npt.NDArray[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, ...], make: Callable[[], npt.NDArray[Any]]) -> npt.NDArray[Any]:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = make()
        value.flags.writeable = False
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


# --------------------------------------------------------------------------------------------------
# Load profiles


def _class_shapes(
    doy: Int64Array, daytype: Int64Array, latitude_deg: float, longitude_deg: float, offset_h: float
) -> FloatArray:
    """Un-normalized class shapes ``(4, D, 1440)`` for days of year ``doy`` and day types ``daytype``
    (0 weekday, 1 Saturday, 2 Sunday or holiday), one value per local clock minute.

    The shapes are sums of smooth pieces (Gaussian bumps for meals and evenings, plateaus for opening
    hours and shifts), shaped after published typical profiles (the German BDEW H0/G0/L0 standard
    load profiles, Italian household curves) rather than fitted to them: a household uses about half its evening peak
    at midday on a weekday, a shop is nearly idle on Sunday, a factory runs two day shifts and a thin
    night shift, public circuits are street lights from dusk to dawn plus offices and schools.
    """
    h = (np.arange(MIN_PER_DAY, dtype=np.float64) / 60.0)[None, :]
    dt = daytype[:, None]
    winter, summer = _seasons(doy[:, None])
    gamma = 2.0 * np.pi * (doy[:, None].astype(np.float64) + 0.5) / 365.0
    decl, eot_min = _declination_eot(gamma)
    lat = math.radians(latitude_deg)
    # Sunrise / sunset at the standard -0.833 deg (refraction and the sun's radius), in clock hours.
    cos_h0 = (math.sin(math.radians(-0.833)) - math.sin(lat) * np.sin(decl)) / (
        math.cos(lat) * np.cos(decl)
    )
    half_day_h = np.degrees(np.arccos(np.clip(cos_h0, -1.0, 1.0))) / 15.0
    noon_h = 12.0 + offset_h - longitude_deg / 15.0 - eot_min / 60.0
    sunrise, sunset = noon_h - half_day_h, noon_h + half_day_h
    # Lights come on a quarter hour after sunset and go off a quarter hour before sunrise.
    dark = _sigmoid((h - sunset - 0.25) / 0.12) + _sigmoid((sunrise - 0.25 - h) / 0.12)

    def by_day(*values: float) -> FloatArray:
        return np.asarray(values, dtype=np.float64)[dt]

    # Residential: breakfast, lunch (mostly at weekends), dinner and evening; lights while awake and
    # dark; electric heating in winter, air conditioning on summer afternoons.
    # Awake hours end near midnight: the window is taken on the circle so that the shape runs on
    # smoothly into the next day.
    wake, sleep = by_day(6.3, 7.5, 7.8), by_day(23.4, 24.0, 23.6)
    awake = _plateau(h, wake, sleep, 0.4) + _plateau(h + 24.0, wake, sleep, 0.4)
    residential = (
        by_day(0.22, 0.24, 0.24)
        + by_day(0.30, 0.34, 0.34) * _bump(h, by_day(7.2, 9.0, 9.4), by_day(0.8, 1.3, 1.4))
        + by_day(0.10, 0.24, 0.32) * _bump(h, by_day(13.0, 13.0, 12.8), by_day(1.2, 1.5, 1.3))
        + by_day(0.55, 0.50, 0.48) * _bump(h, by_day(20.3, 20.0, 19.8), by_day(1.5, 1.7, 1.8))
        + 0.18 * dark * awake
    ) * (1.0 + 0.20 * winter) + 0.22 * summer * _bump(
        h, by_day(16.5, 16.5, 16.5), by_day(2.8, 2.8, 2.8)
    )

    # Commercial: opening hours, short on Saturday, almost closed on Sunday; cooling dominates the
    # summer afternoons, heating and lighting add in winter.
    open_ = by_day(0.62, 0.48, 0.08) * _plateau(
        h, by_day(8.0, 8.5, 10.0), by_day(19.5, 19.5, 13.0), 0.35
    )
    commercial = (
        0.20
        + open_
        * (
            1.0
            + 0.10 * winter
            + 0.60 * summer * _bump(h, by_day(15.0, 15.0, 15.0), by_day(3.5, 3.5, 3.5))
        )
        + 0.10 * dark * open_
    )

    # Industrial: two day shifts with a dip at the change, a thinner night shift on weekdays, one shift
    # on Saturday, continuous processes only on Sunday; the August shutdown around Ferragosto.
    shifts = _plateau(h, by_day(6.0, 6.0, 6.0), by_day(22.0, 14.0, 6.0), 0.2)
    production = by_day(0.58, 0.45, 0.0) * shifts - by_day(0.06, 0.0, 0.0) * _bump(
        h, by_day(14.0, 14.0, 14.0), by_day(0.3, 0.3, 0.3)
    )
    production = production + by_day(0.14, 0.0, 0.0) * (1.0 - shifts)
    doy_f = doy[:, None].astype(np.float64)
    august = _sigmoid((doy_f - 219.0) / 1.5) * _sigmoid((235.0 - doy_f) / 1.5)
    industrial = by_day(0.30, 0.30, 0.28) + production * (1.0 - 0.6 * august) * (
        1.0 + 0.04 * winter + 0.06 * summer
    )

    # Public: street lighting dusk to dawn, offices and schools by day (less in the summer holidays).
    offices = by_day(0.50, 0.18, 0.0) * _plateau(
        h, by_day(7.8, 8.0, 8.0), by_day(17.5, 13.0, 8.0), 0.3
    )
    public = 0.08 + 0.42 * dark + offices * (1.0 - 0.35 * summer) * (1.0 + 0.15 * winter)

    return np.stack([residential, commercial, industrial, public]).astype(np.float64)


@lru_cache(maxsize=16)
def _class_peaks(latitude_deg: float, longitude_deg: float, offset_h: float) -> FloatArray:
    """Yearly maximum of each un-normalized class shape (every day of year, every day type, every
    minute): dividing by it makes the noise-free shape peak at 1.0, the load's case ``p_mw``."""
    doy = np.repeat(np.arange(366, dtype=np.int64), 3)
    daytype = np.tile(np.arange(3, dtype=np.int64), 366)
    shapes = _class_shapes(doy, daytype, latitude_deg, longitude_deg, offset_h)
    peaks = np.asarray(shapes.max(axis=(1, 2)), dtype=np.float64)
    peaks.flags.writeable = False  # shared by every instance through the cache
    return peaks


class LoadProfiles:
    """Multipliers of each load's case ``p_mw`` over time, per customer class and per load.

    ``multipliers(codes, t_ns)[k, i]`` is load ``i``'s active power at ``t_ns[k]`` as a fraction of
    its ``p_mw``; ``codes`` are the int8 :class:`~openfeeder.model.components.CustomerClass` codes of
    the load table. Values are defined on a local-time grid of ``resolution_s`` (900 or 60 s) and
    interpolated linearly in between, so grid points are returned exactly.

    Load ``i`` differs from its class by a scale (lognormal, mean 1, spread ``individuality``), a fixed
    time shift (whole minutes, ``80 min x individuality`` standard deviation, at most 2 h) and a
    multiplicative lognormal deviation (mean 1) driven by an AR(1) process on the grid with a 45 min
    correlation time (plus a 3 min one at one-minute resolution), scaled by class: households deviate
    most, street lighting least. ``individuality=0`` gives every load its class shape exactly.
    """

    def __init__(
        self,
        seed: int,
        *,
        resolution_s: int = 900,
        utc_offset_h: float = 1.0,
        individuality: float = 0.15,
        latitude_deg: float = 45.07,
        longitude_deg: float = 7.69,
        holidays: Collection[tuple[int, int]] = ITALIAN_HOLIDAYS,
    ) -> None:
        self._seed = _check_seed(seed)
        if resolution_s not in _RESOLUTIONS_S:
            raise ValueError(
                f"resolution_s must be 900 (15 min) or 60 (1 min), got {resolution_s!r}"
            )
        if not (math.isfinite(individuality) and 0.0 <= individuality <= 1.0):
            raise ValueError(f"individuality must be within 0..1, got {individuality!r}")
        if not (math.isfinite(latitude_deg) and -90.0 <= latitude_deg <= 90.0):
            raise ValueError(f"latitude_deg must be within -90..90, got {latitude_deg!r}")
        if not (math.isfinite(longitude_deg) and -180.0 <= longitude_deg <= 180.0):
            raise ValueError(f"longitude_deg must be within -180..180, got {longitude_deg!r}")
        bad = [d for d in holidays if not (1 <= d[0] <= 12 and 1 <= d[1] <= 31)]
        if bad:
            raise ValueError(f"holidays must be (month, day) pairs, got {bad[0]!r}")
        self._offset_ns = _check_offset_h(utc_offset_h)
        self._offset_h = float(utc_offset_h)
        self._resolution_s = int(resolution_s)
        self._slots_per_day = S_PER_DAY // self._resolution_s
        self._min_per_slot = self._resolution_s // 60
        self._individuality = float(individuality)
        self._latitude_deg = float(latitude_deg)
        self._longitude_deg = float(longitude_deg)
        self._holidays = np.array(sorted(m * 100 + d for m, d in holidays), dtype=np.int64)
        self._peaks = _class_peaks(self._latitude_deg, self._longitude_deg, self._offset_h)
        self._filter_b, self._filter_a = _deviation_filter(self._resolution_s)
        self._warmup = min(
            self._slots_per_day, math.ceil(_WARMUP_TAUS * _SLOW_TAU_S / self._resolution_s)
        )
        self._shapes = _BlockCache(4 * _CACHE_BLOCKS)
        self._innovations = _BlockCache()
        self._noise = _BlockCache()

    @property
    def resolution_s(self) -> int:
        return self._resolution_s

    @staticmethod
    def power_factor(customer_class: npt.ArrayLike) -> FloatArray:
        """Lagging power factor per load from its class codes (:data:`CLASS_POWER_FACTOR`)."""
        codes = _check_codes(customer_class)
        table = np.array([CLASS_POWER_FACTOR[c] for c in CustomerClass], dtype=np.float64)
        return table[codes]

    @staticmethod
    def tan_phi(customer_class: npt.ArrayLike) -> FloatArray:
        """``q_mvar / p_mw`` per load: the twin sets ``Q = P * tan_phi`` at every step."""
        pf = LoadProfiles.power_factor(customer_class)
        return np.sqrt(1.0 - pf * pf) / pf

    def multipliers(self, customer_class: npt.ArrayLike, t_ns: npt.ArrayLike) -> FloatArray:
        """``(T, n_loads)`` fractions of each load's ``p_mw`` at the UTC times ``t_ns``."""
        codes = _check_codes(customer_class)
        times = _check_times(t_ns)
        return self._query(codes, times, individual=self._individuality > 0.0)

    def class_shape(self, customer_class: npt.ArrayLike, t_ns: npt.ArrayLike) -> FloatArray:
        """``(T, n)`` noise-free class shapes (what every load follows with ``individuality=0``): the
        expectation a forecaster or a test compares the individual loads against."""
        codes = _check_codes(customer_class)
        times = _check_times(t_ns)
        return self._query(codes, times, individual=False)

    # -- internals ---------------------------------------------------------------------------------

    def _query(self, codes: Int8Array, times: Int64Array, *, individual: bool) -> FloatArray:
        n = codes.size
        if times.size == 0 or n == 0:
            return np.zeros((times.size, n), dtype=np.float64)
        slots, i0, frac = _grid_query(times, self._offset_ns, self._resolution_s * NS_PER_S)
        values = self._grid_values(codes, slots, individual=individual)
        return _interpolate(values, i0, frac)

    def _load_params(self, n: int) -> tuple[FloatArray, Int64Array, FloatArray]:
        """Per load: scale, time shift (minutes) and the lognormal deviation's sigma before class."""
        s = self._individuality
        z = _rng(self._seed, _STREAM_LOAD_PARAMS).standard_normal((n, 2))
        scale = np.exp(s * z[:, 0] - 0.5 * s * s)
        shift = np.clip(
            np.rint(z[:, 1] * _SHIFT_MIN_PER_INDIVIDUALITY * s), -_MAX_SHIFT_MIN, _MAX_SHIFT_MIN
        ).astype(np.int64)
        return scale, shift, np.full(n, s)

    def _grid_values(self, codes: Int8Array, slots: Int64Array, *, individual: bool) -> FloatArray:
        """Values at the sorted unique local grid ``slots`` for every load: ``(len(slots), n)``."""
        n = codes.size
        spd = self._slots_per_day
        if individual:
            scale, shift, sigma = self._load_params(n)
        else:
            scale, shift, sigma = np.ones(n), np.zeros(n, dtype=np.int64), np.zeros(n)
        days = np.floor_divide(slots, spd)
        minute_in_day = (slots - days * spd) * self._min_per_slot
        # Shape tables of every day a shifted slot can fall in (shift < 1 day), days in order: the
        # day before ``d`` sits right before ``d`` in ``ext``.
        udays = np.unique(days)
        ext = np.unique(np.concatenate([udays - 1, udays, udays + 1]))
        span = ext.size * MIN_PER_DAY
        tables = np.concatenate([self._shape_day(d) for d in ext.tolist()], axis=1).ravel()
        row = np.searchsorted(ext, days) * MIN_PER_DAY + minute_in_day
        col = codes.astype(np.int64) * span - shift
        shape: FloatArray = tables[row[:, None] + col[None, :]]
        if not individual:
            return shape
        noise = _gather_blocks(slots, spd, 0, lambda d: self._noise_day(d, n), n)
        sig = sigma * _CLASS_NOISE[codes]
        # shape * scale * exp(sig * x - sig**2 / 2), one exp and no temporaries beyond ``noise``.
        noise *= sig
        noise += np.log(scale) - 0.5 * sig * sig
        np.exp(noise, out=noise)
        noise *= shape
        return noise

    def _shape_day(self, day: int) -> FloatArray:
        """Normalized class shapes ``(4, 1440)`` of local day ``day`` (days since 1970-01-01)."""

        def make() -> FloatArray:
            doy, _, _ = _dates(np.array([day], dtype=np.int64))
            daytype = _day_type(day, self._holidays)
            shapes = _class_shapes(
                doy,
                np.array([daytype], dtype=np.int64),
                self._latitude_deg,
                self._longitude_deg,
                self._offset_h,
            )[:, 0, :]
            return np.ascontiguousarray(shapes / self._peaks[:, None])

        return self._shapes.get((day,), make)

    def _innovation_day(self, day: int, n: int) -> npt.NDArray[np.float32]:
        """Unit normal innovations ``(n, slots_per_day)`` of local day ``day`` (float32: noise needs
        no more, and drawing and filtering it is most of the cost of a long series)."""
        return self._innovations.get(
            (day, n),
            lambda: _rng(self._seed, _STREAM_LOAD_NOISE, day).standard_normal(
                (n, self._slots_per_day), dtype=np.float32
            ),
        )

    def _noise_day(self, day: int, n: int) -> npt.NDArray[np.float32]:
        """Unit-variance deviations ``(slots_per_day, n)`` of local day ``day``, filtered from the
        day's innovations after a warm-up over the end of the previous day's."""

        def make() -> npt.NDArray[np.float32]:
            w = self._warmup
            series = np.concatenate(
                [self._innovation_day(day - 1, n)[:, -w:], self._innovation_day(day, n)], axis=1
            )
            x = lfilter(self._filter_b, self._filter_a, series, axis=1)[:, w:]
            return np.ascontiguousarray(np.asarray(x, dtype=np.float32).T)

        return self._noise.get((day, n), make)


def _deviation_filter(resolution_s: int) -> tuple[FloatArray, FloatArray]:
    """IIR filter from unit white noise to a load's unit-variance deviation on the grid: an AR(1)
    with the slow correlation time, plus at one-minute resolution a fast AR(1) pole driven by the
    same innovations (one draw and one filter pass instead of two), scaled to unit variance."""
    phi_s = math.exp(-resolution_s / _SLOW_TAU_S)
    if resolution_s != 60:
        return np.array([math.sqrt(1.0 - phi_s * phi_s)]), np.array([1.0, -phi_s])
    phi_f = math.exp(-resolution_s / _FAST_TAU_S)
    c_s = math.sqrt((1.0 - _FAST_SHARE_1MIN) * (1.0 - phi_s * phi_s))
    c_f = math.sqrt(_FAST_SHARE_1MIN * (1.0 - phi_f * phi_f))
    variance = 1.0 + 2.0 * c_s * c_f / (1.0 - phi_s * phi_f)
    norm = 1.0 / math.sqrt(variance)
    b = np.array([(c_s + c_f) * norm, -(c_s * phi_f + c_f * phi_s) * norm])
    a = np.array([1.0, -(phi_s + phi_f), phi_s * phi_f])
    return b, a


def _check_codes(customer_class: npt.ArrayLike) -> Int8Array:
    arr = np.asarray(customer_class)
    if arr.ndim != 1:
        raise ValueError(
            f"customer_class must be a 1-D array of class codes, got shape {arr.shape}"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"customer_class must hold integer CustomerClass codes (see enum_codes), got dtype {arr.dtype}"
        )
    bad = np.flatnonzero((arr < 0) | (arr >= _N_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"customer_class[{i}] = {int(arr[i])} is not a CustomerClass code (0..{_N_CLASSES - 1}: "
            f"{', '.join(c.value for c in CustomerClass)})"
        )
    return arr.astype(np.int8, copy=False)


# --------------------------------------------------------------------------------------------------
# Photovoltaics

_SKY_SEGMENTS: Final = 96
"""Sky-state segments drawn per solar day; each lasts at least 15 min, so 96 always cover the day."""
_SKY_MIN_SEGMENT_MIN: Final = 15.0
_SKY_MEAN_SEGMENT_MIN: Final = np.array([180.0, 60.0, 240.0])
"""Mean duration of a clear, broken-cloud and overcast spell."""
_SKY_DAY_STATE_P: Final = np.array([[0.85, 0.13, 0.02], [0.30, 0.50, 0.20], [0.05, 0.25, 0.70]])
"""Chance of each sky state per spell on a sunny, mixed and overcast day."""
_SKY_K_LOW: Final = np.array([0.96, 0.28, 0.10])
_SKY_K_HIGH: Final = np.array([1.03, 1.15, 0.45])
_SKY_K_GAIN: Final = np.array([1.0, 3.0, 1.0])
"""Clear-sky index per state: ``low + (high - low) * sigmoid(gain * x)`` with ``x`` a unit AR(1).
A gain of 3 makes broken clouds bimodal (sun out with edge enhancement above 1, or shaded), as
measured minute irradiance is."""
_SKY_TAU_MIN: Final = 5.0
_REGIME_PHI: Final = 0.6
"""Day-to-day persistence of the weather regime (one AR(1) step per day)."""
_REGIME_WARMUP_DAYS: Final = 40
"""Days of innovations summed into a regime: ``0.6**40`` (1e-9) of older weather is dropped."""
_SOLAR_CONSTANT_W_M2: Final = 1367.0


@dataclass(frozen=True, slots=True)
class _SolarGeometry:
    cos_zenith: FloatArray
    cos_incidence: FloatArray
    doy: Int64Array
    solar_hour: FloatArray


class PvModel:
    """Output of PV plants as a fraction of their rating, at a place, from a seed.

    ``output_pu(t_ns, n_sites)[k, i]`` is site ``i``'s AC output at ``t_ns[k]`` per unit of its rated
    power (the generator's case ``p_mw``). All sites share the place and the panel orientation;
    they share the regional weather (the daily regime and the sky-state spells) and, with
    ``site_correlation``, part of the minute-scale cloud fluctuation, the rest being each site's own.

    Chain: sun position (NOAA) -> Haurwitz clear-sky global horizontal irradiance -> times the
    clear-sky index (1-min grid, interpolated) -> Erbs split into beam and diffuse -> plane of array
    (isotropic sky, ground albedo) -> cell temperature (NOCT model, seasonal and daily ambient) ->
    ``performance_ratio`` and the inverter limit of 1.0 pu. Exactly zero while the sun is down.
    """

    def __init__(
        self,
        seed: int,
        *,
        latitude_deg: float = 45.07,
        longitude_deg: float = 7.69,
        tilt_deg: float = 30.0,
        azimuth_deg: float = 180.0,
        albedo: float = 0.2,
        performance_ratio: float = 0.9,
        temperature_coefficient_per_k: float = -0.0037,
        ambient_mean_c: float = 13.0,
        ambient_swing_c: float = 10.0,
        site_correlation: float = 0.7,
    ) -> None:
        self._seed = _check_seed(seed)
        checks = {
            "latitude_deg": (latitude_deg, -90.0, 90.0),
            "longitude_deg": (longitude_deg, -180.0, 180.0),
            "tilt_deg": (tilt_deg, 0.0, 90.0),
            "azimuth_deg": (azimuth_deg, 0.0, 360.0),
            "albedo": (albedo, 0.0, 1.0),
            "performance_ratio": (performance_ratio, 0.0, 1.0),
            "temperature_coefficient_per_k": (temperature_coefficient_per_k, -0.02, 0.0),
            "ambient_swing_c": (ambient_swing_c, 0.0, 40.0),
            "ambient_mean_c": (ambient_mean_c, -40.0, 50.0),
            "site_correlation": (site_correlation, 0.0, 1.0),
        }
        for name, (value, lo, hi) in checks.items():
            if not (math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"{name} must be within {lo:g}..{hi:g}, got {value!r}")
        self._lat = math.radians(latitude_deg)
        self._lon_deg = float(longitude_deg)
        tilt, azimuth = math.radians(tilt_deg), math.radians(azimuth_deg)
        self._tilt = tilt
        # Panel normal in (east, north, up).
        self._normal = (
            math.sin(tilt) * math.sin(azimuth),
            math.sin(tilt) * math.cos(azimuth),
            math.cos(tilt),
        )
        self._albedo = float(albedo)
        self._pr = float(performance_ratio)
        self._gamma_t = float(temperature_coefficient_per_k)
        self._t_mean = float(ambient_mean_c)
        self._t_swing = float(ambient_swing_c)
        self._rho = float(site_correlation)
        # Blocks are solar days: they start at local mean solar midnight, when the sun is down (away
        # from the polar summer), so nothing changes visibly where one block meets the next.
        self._block_offset_min = round(self._lon_deg * 4.0)
        self._phi = math.exp(-1.0 / _SKY_TAU_MIN)
        self._regime_z = _BlockCache(8 * _REGIME_WARMUP_DAYS)
        self._sky = _BlockCache()
        self._clouds = _BlockCache()

    def output_pu(self, t_ns: npt.ArrayLike, n_sites: int = 1) -> FloatArray:
        """``(T, n_sites)`` AC output per unit of rated power at the UTC times ``t_ns``."""
        times = _check_times(t_ns)
        n = _check_count("n_sites", n_sites)
        if times.size == 0 or n == 0:
            return np.zeros((times.size, n), dtype=np.float64)
        geo = self._geometry(times)
        ghi_clear = self._haurwitz(geo.cos_zenith)
        k = self.clear_sky_index(times, n)
        return self._plant_output(geo, ghi_clear[:, None] * k)

    def clear_sky_pu(self, t_ns: npt.ArrayLike) -> FloatArray:
        """``(T,)`` output under a cloudless sky (clear-sky index 1): the envelope of :meth:`output_pu`."""
        times = _check_times(t_ns)
        geo = self._geometry(times)
        return self._plant_output(geo, self._haurwitz(geo.cos_zenith)[:, None])[:, 0]

    def solar_elevation_deg(self, t_ns: npt.ArrayLike) -> FloatArray:
        """``(T,)`` apparent elevation of the sun's centre (no refraction) at the UTC times."""
        geo = self._geometry(_check_times(t_ns))
        return np.degrees(np.arcsin(np.clip(geo.cos_zenith, -1.0, 1.0)))

    def clear_sky_index(self, t_ns: npt.ArrayLike, n_sites: int = 1) -> FloatArray:
        """``(T, n_sites)`` ratio of global horizontal irradiance to its clear-sky value (the seeded
        cloud process; defined day and night on a UTC minute grid, interpolated linearly)."""
        times = _check_times(t_ns)
        n = _check_count("n_sites", n_sites)
        if times.size == 0 or n == 0:
            return np.zeros((times.size, n), dtype=np.float64)
        slots, i0, frac = _grid_query(times, 0, 60 * NS_PER_S)
        values = _gather_blocks(
            slots, MIN_PER_DAY, self._block_offset_min, lambda b: self._cloud_block(b, n), n
        )
        return _interpolate(values, i0, frac)

    # -- sun and plant -----------------------------------------------------------------------------

    def _geometry(self, times: Int64Array) -> _SolarGeometry:
        days = np.floor_divide(times, NS_PER_DAY)
        hour_utc = (times - days * NS_PER_DAY).astype(np.float64) / (3600.0 * NS_PER_S)
        doy, _, _ = _dates(days)
        gamma = 2.0 * np.pi / 365.0 * (doy + (hour_utc - 12.0) / 24.0)
        decl, eot_min = _declination_eot(gamma)
        solar_min = hour_utc * 60.0 + eot_min + 4.0 * self._lon_deg
        hour_angle = np.radians(solar_min / 4.0 - 180.0)
        sin_lat, cos_lat = math.sin(self._lat), math.cos(self._lat)
        up = sin_lat * np.sin(decl) + cos_lat * np.cos(decl) * np.cos(hour_angle)
        east = -np.cos(decl) * np.sin(hour_angle)
        north = cos_lat * np.sin(decl) - sin_lat * np.cos(decl) * np.cos(hour_angle)
        ne, nn, nu = self._normal
        incidence = east * ne + north * nn + up * nu
        return _SolarGeometry(
            cos_zenith=up,
            cos_incidence=incidence,
            doy=doy,
            solar_hour=np.mod(solar_min / 60.0, 24.0),
        )

    @staticmethod
    def _haurwitz(cos_zenith: FloatArray) -> FloatArray:
        """Clear-sky global horizontal irradiance in W/m2 (Haurwitz 1945): 0 with the sun down."""
        cz = np.maximum(cos_zenith, 1e-3)
        return np.where(cos_zenith > 0.0, 1098.0 * cz * np.exp(-0.059 / cz), 0.0)

    def _plant_output(self, geo: _SolarGeometry, ghi: FloatArray) -> FloatArray:
        """Per-unit AC output from global horizontal irradiance ``ghi`` ``(T, n)`` in W/m2."""
        sun_up = (geo.cos_zenith > 0.0)[:, None]
        cz = np.maximum(geo.cos_zenith, 0.087)[:, None]  # beam projection bounded below 85 deg
        e0 = 1.0 + 0.033 * np.cos(2.0 * np.pi * geo.doy / 365.0)
        kt = np.clip(ghi / (_SOLAR_CONSTANT_W_M2 * e0[:, None] * cz), 0.0, 1.0)
        # Erbs, Klein and Duffie (1982): diffuse fraction from the clearness index.
        kd = np.where(
            kt <= 0.22,
            1.0 - 0.09 * kt,
            np.where(
                kt <= 0.8,
                0.9511 - 0.1604 * kt + 4.388 * kt**2 - 16.638 * kt**3 + 12.336 * kt**4,
                0.165,
            ),
        )
        diffuse = kd * ghi
        beam_h = ghi - diffuse
        cos_inc = np.maximum(geo.cos_incidence, 0.0)[:, None]
        poa = (
            beam_h * cos_inc / cz
            + diffuse * (1.0 + math.cos(self._tilt)) / 2.0
            + ghi * self._albedo * (1.0 - math.cos(self._tilt)) / 2.0
        )
        ambient = (
            self._t_mean
            - self._t_swing * np.cos(2.0 * np.pi * (geo.doy - 20.0) / 365.25)
            + 5.0 * np.cos(2.0 * np.pi * (geo.solar_hour - 15.0) / 24.0)
        )
        cell = ambient[:, None] + poa * (45.0 - 20.0) / 800.0  # NOCT 45 C
        out = self._pr * poa / 1000.0 * (1.0 + self._gamma_t * (cell - 25.0))
        return np.where(sun_up, np.clip(out, 0.0, 1.0), 0.0)

    # -- clouds ------------------------------------------------------------------------------------

    def _regime_innovation(self, block: int) -> FloatArray:
        return self._regime_z.get(
            (block,), lambda: _rng(self._seed, _STREAM_PV_REGIME, block).standard_normal(1)
        )

    def _day_kind(self, block: int) -> int:
        """0 sunny, 1 mixed, 2 overcast: a unit AR(1) regime over days, cut at seasonal quantiles
        (Turin-like: sunny days from 40 % in winter to 60 % in summer, overcast from 30 % to 12 %)."""
        z = np.concatenate([self._regime_innovation(block - j) for j in range(_REGIME_WARMUP_DAYS)])
        weights = _REGIME_PHI ** np.arange(_REGIME_WARMUP_DAYS)
        regime = float(math.sqrt(1.0 - _REGIME_PHI**2) * np.dot(weights, z))
        doy, _, _ = _dates(np.array([block], dtype=np.int64))
        _, summer = _seasons(doy)
        u = float(ndtr(regime))
        p_sunny = 0.40 + 0.20 * float(summer[0])
        p_overcast = 0.30 - 0.18 * float(summer[0])
        return 0 if u < p_sunny else (2 if u > 1.0 - p_overcast else 1)

    def _sky_block(self, block: int) -> FloatArray:
        """Regional sky of one solar day ``(2, 1440)``: the state per minute and the common unit
        AR(1) fluctuation."""

        def make() -> FloatArray:
            rng = _rng(self._seed, _STREAM_PV_SKY, block)
            u_state = rng.random(_SKY_SEGMENTS)
            u_dur = rng.random(_SKY_SEGMENTS)
            common = rng.standard_normal(MIN_PER_DAY)
            cum = np.cumsum(_SKY_DAY_STATE_P[self._day_kind(block)])
            states = np.minimum(np.searchsorted(cum, u_state, side="right"), 2)
            mean_extra = _SKY_MEAN_SEGMENT_MIN[states] - _SKY_MIN_SEGMENT_MIN
            durations = _SKY_MIN_SEGMENT_MIN - mean_extra * np.log1p(-u_dur)
            ends = np.cumsum(durations)
            minute_state = states[np.searchsorted(ends, np.arange(MIN_PER_DAY) + 0.5, side="right")]
            common[0] /= math.sqrt(1.0 - self._phi**2)  # start the AR(1) in its stationary law
            return np.stack([minute_state.astype(np.float64), _ar1(common, self._phi)])

        return self._sky.get((block,), make)

    def _cloud_block(self, block: int, n: int) -> FloatArray:
        """Clear-sky index ``(1440, n)`` of one solar day for sites ``0..n-1``."""

        def make() -> FloatArray:
            sky = self._sky_block(block)
            state = sky[0].astype(np.int64)
            own_in = _rng(self._seed, _STREAM_PV_SITE, block).standard_normal((n, MIN_PER_DAY))
            own_in[:, 0] /= math.sqrt(1.0 - self._phi**2)
            own = _ar1(own_in, self._phi)
            x = math.sqrt(self._rho) * sky[1][None, :] + math.sqrt(1.0 - self._rho) * own
            lo, hi, gain = _SKY_K_LOW[state], _SKY_K_HIGH[state], _SKY_K_GAIN[state]
            k = lo + (hi - lo) * _sigmoid(gain * x)
            return np.ascontiguousarray(k.T)

        return self._clouds.get((block, n), make)


# --------------------------------------------------------------------------------------------------
# EV charging


class ChargerKind(StrEnum):
    """Where a charger is: it sets when cars arrive, how long they stay and how much they take."""

    HOME = "home"
    WORK = "work"
    PUBLIC = "public"


_EV_KIND_MIX: Final = np.array([0.7, 0.2, 0.1])
"""Default share of home, work and public chargers on a distribution feeder."""
_EV_POWER_MIX: Final = np.array(
    [[0.35, 0.45, 0.20, 0.0], [0.0, 0.20, 0.50, 0.30], [0.0, 0.0, 0.30, 0.70]]
)
"""Default chance of each rating in :data:`EV_CHARGER_POWERS_KW` per kind (home wallboxes are mostly
single-phase; workplaces and public posts three-phase)."""
_EV_SESSION_P: Final = np.array([[0.55, 0.45, 0.40], [0.80, 0.15, 0.05], [0.50, 0.50, 0.45]])
"""Chance of a session per kind (rows) and day type (weekday, Saturday, Sunday)."""
# Arrival (h of local day) and stay (h): truncated normals (mean, sd, low, high) per kind; public
# arrivals are uniform over the low..high window (sd 0).
_EV_ARRIVAL: Final = np.array(
    [[18.5, 1.6, 14.0, 23.9], [8.5, 0.8, 6.0, 11.0], [14.0, 0.0, 8.0, 21.0]]
)
_EV_STAY: Final = np.array([[13.0, 1.8, 6.0, 22.0], [8.5, 1.2, 3.0, 11.0], [1.5, 0.8, 0.25, 3.0]])
_EV_ENERGY_MEDIAN_KWH: Final = np.array([9.0, 11.0, 14.0])
_EV_ENERGY_SIGMA: Final = np.array([0.6, 0.5, 0.5])
_EV_ENERGY_RANGE_KWH: Final = (1.0, 70.0)
_EV_HOME_LATEST_DEPARTURE_H: Final = 36.0
"""A home session ends by noon of the next day, before the next evening's earliest arrival (14 h),
so sessions of one charger never overlap."""


def _truncated_normal(u: FloatArray, spec: FloatArray) -> FloatArray:
    """Inverse-CDF draw from normal(mean, sd) cut to [low, high] (uniform when sd is 0), per row."""
    mean, sd, lo, hi = spec[:, 0], spec[:, 1], spec[:, 2], spec[:, 3]
    safe_sd = np.where(sd > 0.0, sd, 1.0)
    a, b = ndtr((lo - mean) / safe_sd), ndtr((hi - mean) / safe_sd)
    normal = mean + safe_sd * ndtri(np.clip(a + u * (b - a), 1e-12, 1.0 - 1e-12))
    return np.where(sd > 0.0, np.clip(normal, lo, hi), lo + u * (hi - lo))


@dataclass(frozen=True, slots=True)
class EvSessionTable:
    """Charging sessions, one row per session (columns are equal-length arrays).

    ``charge_end_ns`` is when charging stops: the demanded energy delivered at rated power or the
    departure, whichever comes first, so ``delivered_kwh = power_kw * (charge_end - arrival)``.
    """

    charger: Int64Array
    arrival_ns: Int64Array
    departure_ns: Int64Array
    charge_end_ns: Int64Array
    energy_kwh: FloatArray
    delivered_kwh: FloatArray
    power_kw: FloatArray


@dataclass(frozen=True, slots=True)
class _DayDraw:
    occurs: BoolArray
    arrival_ns: Int64Array
    departure_ns: Int64Array
    charge_end_ns: Int64Array
    energy_kwh: FloatArray


class EvSessions:
    """Seeded charging sessions of ``n_chargers`` AC chargers and the power they draw.

    Per charger and local day at most one session starts: its chance depends on the charger's kind
    and the day type; arrival, stay and demanded energy (lognormal) are drawn per kind. The car
    charges at the charger's rated power from arrival until the energy is in or it leaves (no
    constant-voltage taper, no car-side power limit). ``kinds`` default to a seeded mix of 70 % home,
    20 % work and 10 % public chargers, ``power_kw`` to seeded ratings from
    :data:`EV_CHARGER_POWERS_KW` typical of each kind.
    """

    def __init__(
        self,
        seed: int,
        n_chargers: int,
        *,
        kinds: Sequence[ChargerKind | str] | None = None,
        power_kw: npt.ArrayLike | None = None,
        utc_offset_h: float = 1.0,
        holidays: Collection[tuple[int, int]] = ITALIAN_HOLIDAYS,
    ) -> None:
        self._seed = _check_seed(seed)
        n = _check_count("n_chargers", n_chargers)
        self._offset_ns = _check_offset_h(utc_offset_h)
        u = _rng(self._seed, _STREAM_EV_PARAMS).random((n, 2))
        if kinds is None:
            kind_codes = np.minimum(
                np.searchsorted(np.cumsum(_EV_KIND_MIX), u[:, 0], side="right"), 2
            )
        else:
            if len(kinds) != n:
                raise ValueError(f"kinds has {len(kinds)} entries for {n} chargers")
            members = list(ChargerKind)
            codes: list[int] = []
            for i, kind in enumerate(kinds):
                try:
                    codes.append(members.index(ChargerKind(kind)))
                except ValueError as err:
                    raise ValueError(
                        f"kinds[{i}] = {kind!r} is not a charger kind ({', '.join(members)})"
                    ) from err
            kind_codes = np.array(codes, dtype=np.int64)
        self._kind = kind_codes.astype(np.int64)
        if power_kw is None:
            cum = np.cumsum(_EV_POWER_MIX[self._kind], axis=1)
            pick = np.minimum((u[:, 1:2] >= cum).sum(axis=1), len(EV_CHARGER_POWERS_KW) - 1)
            self._power_kw: FloatArray = np.asarray(EV_CHARGER_POWERS_KW, dtype=np.float64)[pick]
        else:
            p = np.asarray(power_kw, dtype=np.float64)
            if p.shape != (n,):
                raise ValueError(
                    f"power_kw must have one rating per charger ({n}), got shape {p.shape}"
                )
            bad = np.flatnonzero(~(np.isfinite(p) & (p > 0.0)))
            if bad.size:
                raise ValueError(
                    f"power_kw[{int(bad[0])}] = {float(p[bad[0]])!r} is not a positive rating"
                )
            self._power_kw = p.copy()
        self._power_kw.flags.writeable = False
        self._kind.flags.writeable = False
        self._holidays = np.array(sorted(m * 100 + d for m, d in holidays), dtype=np.int64)
        self._days = _BlockCache(4 * _CACHE_BLOCKS)

    @property
    def n_chargers(self) -> int:
        return int(self._kind.size)

    @property
    def kinds(self) -> tuple[ChargerKind, ...]:
        members = list(ChargerKind)
        return tuple(members[int(c)] for c in self._kind)

    @property
    def power_kw(self) -> FloatArray:
        """Rated power per charger (read-only)."""
        return self._power_kw

    def power_mw(self, t_ns: npt.ArrayLike) -> FloatArray:
        """``(T, n_chargers)`` power drawn at the UTC times ``t_ns`` (a step function of time)."""
        times = _check_times(t_ns)
        n = self.n_chargers
        if times.size == 0 or n == 0:
            return np.zeros((times.size, n), dtype=np.float64)
        day = np.floor_divide(times + self._offset_ns, NS_PER_DAY)
        # A time can only be in a session that began that local day or the day before.
        udays = np.unique(day)
        need = np.unique(np.concatenate([udays - 1, udays]))
        table = np.stack([self._day_sessions(d) for d in need.tolist()])  # (days, 2, n)
        arrival, end = table[:, 0, :], table[:, 1, :]
        pos = np.searchsorted(need, day)
        t = times[:, None]
        active = ((arrival[pos] <= t) & (t < end[pos])) | (
            (arrival[pos - 1] <= t) & (t < end[pos - 1])
        )
        power: FloatArray = active * (self._power_kw / 1000.0)[None, :]
        return power

    def sessions(self, start_ns: int, end_ns: int) -> EvSessionTable:
        """Sessions arriving in ``[start_ns, end_ns)``, ordered by arrival then charger."""
        if end_ns < start_ns:
            raise ValueError(f"end_ns ({end_ns}) is before start_ns ({start_ns})")
        first = (int(start_ns) + self._offset_ns) // NS_PER_DAY
        last = (int(end_ns) + self._offset_ns) // NS_PER_DAY
        draws = [self._draw_day(d) for d in range(first, last + 1)]
        n_days = len(draws)
        charger = np.tile(np.arange(self.n_chargers, dtype=np.int64), n_days)
        arrival = np.concatenate([d.arrival_ns for d in draws])
        occurs = np.concatenate([d.occurs for d in draws])
        keep = np.flatnonzero(occurs & (arrival >= start_ns) & (arrival < end_ns))
        keep = keep[np.lexsort((charger[keep], arrival[keep]))]
        power = np.tile(self._power_kw, n_days)[keep]
        charge_end = np.concatenate([d.charge_end_ns for d in draws])[keep]
        return EvSessionTable(
            charger=charger[keep],
            arrival_ns=arrival[keep],
            departure_ns=np.concatenate([d.departure_ns for d in draws])[keep],
            charge_end_ns=charge_end,
            energy_kwh=np.concatenate([d.energy_kwh for d in draws])[keep],
            delivered_kwh=power * (charge_end - arrival[keep]) / (3600.0 * NS_PER_S),
            power_kw=power,
        )

    def _draw_day(self, day: int) -> _DayDraw:
        """Every charger's draw for local day ``day`` (times in whole seconds)."""
        n = self.n_chargers
        u = _rng(self._seed, _STREAM_EV_DAY, day).random((n, 4))
        kind = self._kind
        occurs = u[:, 0] < _EV_SESSION_P[kind, _day_type(day, self._holidays)]
        arrival_h = _truncated_normal(u[:, 1], _EV_ARRIVAL[kind])
        stay_h = _truncated_normal(u[:, 2], _EV_STAY[kind])
        stay_h = np.where(
            kind == 0, np.minimum(stay_h, _EV_HOME_LATEST_DEPARTURE_H - arrival_h), stay_h
        )
        lo, hi = _EV_ENERGY_RANGE_KWH
        z_energy = ndtri(np.clip(u[:, 3], 1e-12, 1.0 - 1e-12))
        energy = np.clip(
            _EV_ENERGY_MEDIAN_KWH[kind] * np.exp(_EV_ENERGY_SIGMA[kind] * z_energy), lo, hi
        )
        charge_h = np.minimum(energy / self._power_kw, stay_h)
        day_start_ns = day * NS_PER_DAY - self._offset_ns
        arrival_ns = day_start_ns + np.rint(arrival_h * 3600.0).astype(np.int64) * NS_PER_S
        departure_ns = arrival_ns + np.rint(stay_h * 3600.0).astype(np.int64) * NS_PER_S
        charge_ns = np.rint(charge_h * 3600.0).astype(np.int64) * NS_PER_S
        return _DayDraw(
            occurs=np.asarray(occurs, dtype=np.bool_),
            arrival_ns=arrival_ns,
            departure_ns=departure_ns,
            charge_end_ns=np.minimum(arrival_ns + charge_ns, departure_ns),
            energy_kwh=np.asarray(energy, dtype=np.float64),
        )

    def _day_sessions(self, day: int) -> Int64Array:
        """``(2, n)`` start and end of charging of each charger's session of local day ``day``
        (both 0 when there is none, so no time falls inside)."""

        def make() -> Int64Array:
            draw = self._draw_day(day)
            arrival = np.where(draw.occurs, draw.arrival_ns, 0)
            end = np.where(draw.occurs, draw.charge_end_ns, 0)
            return np.stack([arrival, end]).astype(np.int64)

        return self._days.get((day,), make)
