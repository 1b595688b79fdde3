"""Synthetic radial MV distribution grids of any size, fully vectorized and deterministic per seed.

:func:`generate_feeders` builds primary substations (110/20 kV), their radial 20 kV feeders with
trunks, laterals and sub-laterals, sectionalizing switches, normally-open ties between feeders,
aggregated MV/LV loads, PV generators and measurement devices. Everything is drawn from
``numpy.random.default_rng(seed)`` with numpy array operations (no Python loop over buses), so
100,000 buses take well under a second and the same seed always gives the same model.

Typical values used, and where they come from
---------------------------------------------
Primary substation
    HV bus 110 kV with a ``source``: short-circuit power 3000 MVA, R/X 0.1 (a meshed 110 kV grid;
    IEC 60909 examples use 2-5 GVA). One HV/MV transformer per substation, 110/20 kV Dyn11
    (``winding_hv`` D, ``winding_lv`` YN, clock 11), uk 12 %, copper losses 0.35 % of rating, iron
    losses 0.045 %, no-load current 0.05 % (pandapower standard type "40 MVA 110/20 kV"), rating the
    smallest of 25 / 31.5 / 40 / 63 MVA that keeps the peak below 85 % (mostly 40 MVA). On-load tap
    changer on the HV side, +-8 steps of 1.25 %; ``tap_pos`` is set so that the MV busbar sits at
    1.02-1.04 pu at peak load (what the automatic voltage regulator would hold). At most
    ``MAX_FEEDERS_PER_SUBSTATION`` (8) feeders leave one 20 kV busbar; more feeders mean more
    substations, placed on a jittered square grid with feeders radiating from each.
Feeders
    A feeder-head breaker (remote controllable, with fault indicator, 630 A) joins the MV busbar to
    the feeder's bay bus in the substation. The first cable leaves from there. A trunk of 30-45 % of
    the feeder's buses (at most 50 sections, i.e. 7-20 km) runs outward; every further bus continues
    the current lateral with probability 0.7 or starts a new one from a random earlier bus (half of
    the time a trunk bus), which gives laterals and sub-laterals with a depth growing only with the
    logarithm of the size. Sections are 150-300 m on urban cable feeders and 200-400 m on rural
    overhead ones (distance between MV/LV substations or poles with a transformer); the route is
    1.05-1.25 (cable, streets) or 1.0-1.1 (overhead) times the straight distance. Real feeders have
    15-100 buses (5-30 km of line). Far larger ones are generated (``buses`` much larger than about
    50 x ``feeders``) but are a whole town on one breaker; above 1000 buses a feeder's sections are
    shortened in proportion so that its total length and cable charging (about 250 km, 8 Mvar)
    stay those of a 1000-bus feeder, which keeps the power flow in a sane range.
Lines (pandapower standard types, which follow the manufacturers' catalogs)
    Urban substations (60 %) have 85 % cable feeders, rural ones 25 %, so about 60 % of the feeders
    are cable. Cable trunk NA2XS2Y 1x185 RM/25 12/20 kV (r1 0.161, x1 0.117 ohm/km, c1 273 nF/km,
    0.362 kA), cable laterals NA2XS2Y 1x95 RM/25 12/20 kV (0.313, 0.132, 216, 0.252 kA). Overhead
    trunk 94-AL1/15-ST1A 20 kV (0.306, 0.350, 10.0, 0.35 kA), overhead laterals 48-AL1/8-ST1A 20 kV
    (0.5939, 0.372, 9.5, 0.21 kA).
Zero sequence (set explicitly on every line)
    Single-core screened XLPE cables with the screens bonded at both ends: the zero-sequence current
    returns in the three 25 mm2 copper screens, so r0 = r1 + 0.727 ohm/km (screen resistance; r0/r1
    is 5.5 for 1x185 and 3.3 for 1x95), x0 = x1 (the return runs right around the core) and c0 = c1
    (each core has its own earthed screen). Overhead lines without earth wire, 100 ohm m soil
    (Carson): r0 = r1 + 0.148 ohm/km (3 x the earth-return resistance pi^2 f 1e-4 at 50 Hz, so r0/r1
    is about 1.5 for 94-AL1 and 1.25 for 48-AL1), x0 = 3 x1 and c0 = 0.55 c1.
Sectionalizing switches
    10-15 % of the feeder sections (not the first cable) are switches in a ring main unit instead of
    lines, zero length, three times as likely on the trunk as on laterals: load-break switches
    (mostly on the trunk) or sectionalizers, with fault indicators, half of the trunk ones and 15 %
    of the lateral ones remote controllable (typical of a partly automated grid), rated 630 A.
Ties
    Each tie is a line from a leaf of one feeder to a new tie bus in a ring main unit next to a bus
    of another feeder, and a normally-open, remote-controllable load-break switch between the two.
    The leaf and the bus are chosen geographically close (nearest bus of another feeder, found with
    a KD-tree), one per pair of feeders and one per feeder first, so ties mostly join neighbouring
    feeders and spread over them. With more ties than such leaves, buses inside feeders are used
    too, then far ends are shared, and only then random buses of the next feeder are joined.
Loads (aggregated MV/LV substations)
    On 85 % of the feeder buses other than the bay bus. Classes residential 65 %, commercial 20 %,
    industrial 8 %, public 7 %; peak power lognormal (sigma 0.5) times a class factor, scaled so
    that each feeder's peak is 3-6 MW (cable) or 2-4.5 MW (overhead), and never more than 60 % of
    the trunk rating at the head. cos phi 0.95-0.98 (inductive). Customers from the power per
    customer after diversity: residential 1.5-3 kW, commercial 8-25 kW, industrial 80-400 kW,
    public 10-40 kW, clipped to 1..300. Phase shares 1/3 +- about 1.5 % (sum 1). Priority 0 except
    industrial 1 and public 2 (a third of them 3, e.g. hospitals).
PV
    On 10-20 % of the load buses (one share per model), p_mw 10-50 % of the local load, rated
    sn_mva p_mw / 0.6-0.9, q_mvar 0, p between 0 and sn_mva, q within +-0.33 sn_mva (cos phi 0.95,
    as VDE-AR-N 4110 asks).
Measurements
    A feeder terminal unit (FTU) on every head breaker (voltage, current and power, class 0.5) and
    smart meters on about 30 % of the loads (voltage and power, class 1).

Ids are assigned in one block per table: with ``B`` the smallest power of ten above ``buses`` (the
largest table; at least 1000), buses get ids ``B + row``, lines ``2B + row``, transformers
``3B + row``, switches ``4B + row``, loads ``5B + row``, generators ``6B + row``, (shunts ``7B``),
sources ``8B + row`` and measurements ``9B + row``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.spatial import KDTree

from openfeeder.model.components import (
    CustomerClass,
    DerKind,
    LineKind,
    MeasurementKind,
    SwitchKind,
    TapSide,
    WindingType,
    empty_table,
    enum_code,
)
from openfeeder.model.grid import DEFAULT_FREQUENCY_HZ, GridModel

__all__ = ["MAX_BUSES", "MAX_FEEDERS_PER_SUBSTATION", "generate_feeders"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MAX_FEEDERS_PER_SUBSTATION: Final = 8
MAX_BUSES: Final = 10_000_000

_U_HV_KV: Final = 110.0
_U_MV_KV: Final = 20.0
_SK_MVA: Final = 3000.0
_UK_PERCENT: Final = 12.0
_VKR_PERCENT: Final = 0.35
_TRAFO_SIZES_MVA: Final = (25.0, 31.5, 40.0, 63.0)
_TAP_STEP_PERCENT: Final = 1.25
_TAP_STEPS: Final = 8
_BUSBAR_TARGET_PU: Final = 1.025
_SWITCH_RATING_KA: Final = 0.63
_MAX_TRUNK_SECTIONS: Final = 50
_P_CONTINUE_LATERAL: Final = 0.7
_P_LOAD: Final = 0.85
_P_METER: Final = 0.30
_CABLE_SCREEN_OHM_PER_KM: Final = 0.727
_EARTH_RETURN_OHM_PER_KM: Final = 0.148
_TIE_NEIGHBOURS: Final = 16
_FULL_LENGTH_BUSES: Final = 1000


@dataclass(frozen=True, slots=True)
class _LineType:
    name: str
    kind: LineKind
    r1_ohm_per_km: float
    x1_ohm_per_km: float
    c1_nf_per_km: float
    i_rated_ka: float

    @property
    def r0_ohm_per_km(self) -> float:
        extra = (
            _CABLE_SCREEN_OHM_PER_KM if self.kind is LineKind.CABLE else _EARTH_RETURN_OHM_PER_KM
        )
        return self.r1_ohm_per_km + extra

    @property
    def x0_ohm_per_km(self) -> float:
        return self.x1_ohm_per_km * (1.0 if self.kind is LineKind.CABLE else 3.0)

    @property
    def c0_nf_per_km(self) -> float:
        return self.c1_nf_per_km * (1.0 if self.kind is LineKind.CABLE else 0.55)


# Index = 2 * overhead + lateral: cable trunk, cable lateral, overhead trunk, overhead lateral.
_LINE_TYPES: Final = (
    _LineType("NA2XS2Y 1x185 RM/25 12/20 kV", LineKind.CABLE, 0.161, 0.117, 273.0, 0.362),
    _LineType("NA2XS2Y 1x95 RM/25 12/20 kV", LineKind.CABLE, 0.313, 0.132, 216.0, 0.252),
    _LineType("94-AL1/15-ST1A 20.0", LineKind.OVERHEAD, 0.306, 0.350, 10.0, 0.35),
    _LineType("48-AL1/8-ST1A 20.0", LineKind.OVERHEAD, 0.5939, 0.372, 9.5, 0.21),
)

# Customer classes in CustomerClass order: residential, commercial, industrial, public.
_CLASS_SHARE: Final = (0.65, 0.20, 0.08, 0.07)
_CLASS_P_FACTOR: Final = (1.0, 1.6, 3.0, 1.2)
_CLASS_KW_PER_CUSTOMER: Final = ((1.5, 3.0), (8.0, 25.0), (80.0, 400.0), (10.0, 40.0))


@dataclass(frozen=True, slots=True)
class _Trees:
    """Feeder buses of all feeders, contiguous per feeder; index 0 of each feeder is its bay bus."""

    sizes: IntArray  # buses per feeder
    start: IntArray  # first index of each feeder
    feeder: IntArray  # feeder of each bus
    local: IntArray  # index within the feeder
    parent: IntArray  # parent index (-1 for the bay bus)
    trunk: BoolArray  # on the trunk (the bay bus is not)
    branch_start: BoolArray  # first bus of the trunk or of a lateral


def generate_feeders(
    *, buses: int, feeders: int, ties: int, seed: int, name: str | None = None
) -> GridModel:
    """A synthetic grid of radial 20 kV feeders fed from 110/20 kV substations.

    ``buses`` is the exact number of buses of the model: two per primary substation (110 kV bus and
    20 kV busbar; ``ceil(feeders / 8)`` substations), one tie bus per tie, the rest split over the
    feeders (at least two each: the bay bus in the substation and one MV/LV substation). ``ties``
    normally-open switches join buses of two different feeders. The result is the same for the same
    arguments. See the module documentation for the values used.

    Raises ValueError when the buses cannot hold the feeders and ties asked for.
    """
    n_sub = _check_arguments(buses=buses, feeders=feeders, ties=ties, seed=seed)
    rng = np.random.default_rng(seed)

    n_feeder_buses = buses - 2 * n_sub - ties
    feeders_per_sub = np.full(n_sub, feeders // n_sub, dtype=np.int64)
    feeders_per_sub[: feeders % n_sub] += 1
    sub_of_feeder = np.repeat(np.arange(n_sub), feeders_per_sub)

    urban_sub = rng.random(n_sub) < 0.6
    overhead = rng.random(feeders) >= np.where(urban_sub[sub_of_feeder], 0.85, 0.25)

    trees = _grow_trees(rng, _split_sizes(rng, n_feeder_buses, feeders))
    is_switch = _pick_switch_sections(rng, trees)
    section_m = np.where(
        overhead[trees.feeder],
        rng.uniform(200.0, 400.0, trees.feeder.size),
        rng.uniform(150.0, 300.0, trees.feeder.size),
    )
    section_m[(trees.local == 0) | is_switch] = 0.0
    # Oversized feeders are compressed to the length of a _FULL_LENGTH_BUSES one (see above).
    section_m *= np.minimum(1.0, _FULL_LENGTH_BUSES / trees.sizes)[trees.feeder]
    xy_m, sub_xy_m = _lay_out(rng, trees, section_m, sub_of_feeder, feeders_per_sub)

    tie_a, tie_b = _pick_ties(rng, trees, xy_m, ties)

    # Row layout of the bus table: HV buses, MV busbars, feeder buses, tie buses.
    feeder_row0 = 2 * n_sub
    tie_row0 = feeder_row0 + n_feeder_buses
    id_block: int = 10 ** max(3, math.ceil(math.log10(buses + 1)))

    def bus_id(rows: IntArray) -> IntArray:
        return id_block + rows

    bus = empty_table("bus", buses)
    bus["id"] = bus_id(np.arange(buses))
    bus["u_rated_kv"] = _U_MV_KV
    bus["u_rated_kv"][:n_sub] = _U_HV_KV
    tie_xy_m = xy_m[tie_b] + rng.uniform(-5.0, 5.0, (ties, 2))
    all_xy_m = np.concatenate([sub_xy_m, sub_xy_m, xy_m, tie_xy_m])
    bus["x_m"] = all_xy_m[:, 0]
    bus["y_m"] = all_xy_m[:, 1]

    # Lines: tree sections that are not switches, then one per tie.
    section = (trees.local > 0) & ~is_switch
    line_child = np.flatnonzero(section)
    line_type = 2 * overhead[trees.feeder[line_child]] + ~trees.trunk[line_child]
    tie_type = 2 * overhead[trees.feeder[tie_a]] + 1
    tie_gap_m = tie_xy_m - xy_m[tie_a]
    tie_m = np.maximum(np.hypot(tie_gap_m[:, 0], tie_gap_m[:, 1]), 50.0)
    detour = np.where(
        overhead[trees.feeder[line_child]],
        rng.uniform(1.0, 1.1, line_child.size),
        rng.uniform(1.05, 1.25, line_child.size),
    )
    line = _lines(
        from_rows=np.concatenate([feeder_row0 + trees.parent[line_child], feeder_row0 + tie_a]),
        to_rows=np.concatenate([feeder_row0 + line_child, tie_row0 + np.arange(ties)]),
        type_index=np.concatenate([line_type, tie_type]),
        length_km=np.concatenate([section_m[line_child] * detour, tie_m * 1.1]) / 1000.0,
        id0=2 * id_block,
        bus_id0=id_block,
    )

    # Switches: head breakers, sectionalizing switches, ties.
    heads = trees.start
    sect_child = np.flatnonzero(is_switch)
    n_break, n_sect = feeders, sect_child.size
    switch = empty_table("switch", n_break + n_sect + ties)
    switch["id"] = 4 * id_block + np.arange(switch.size)
    switch["from_bus"] = bus_id(
        np.concatenate(
            [
                n_sub + sub_of_feeder,
                feeder_row0 + trees.parent[sect_child],
                tie_row0 + np.arange(ties),
            ]
        )
    )
    switch["to_bus"] = bus_id(
        np.concatenate([feeder_row0 + heads, feeder_row0 + sect_child, feeder_row0 + tie_b])
    )
    on_trunk = trees.trunk[sect_child]
    load_break = rng.random(n_sect) < np.where(on_trunk, 0.7, 0.4)
    switch["kind"] = np.concatenate(
        [
            np.full(n_break, enum_code(SwitchKind.BREAKER)),
            np.where(
                load_break,
                enum_code(SwitchKind.LOAD_BREAK),
                enum_code(SwitchKind.SECTIONALIZER),
            ),
            np.full(ties, enum_code(SwitchKind.LOAD_BREAK)),
        ]
    )
    remote = rng.random(n_sect) < np.where(on_trunk, 0.5, 0.15)
    switch["remote_controllable"] = np.concatenate(
        [np.ones(n_break, bool), remote, np.ones(ties, bool)]
    )
    switch["fault_indicator"] = True
    switch["closed"][n_break + n_sect :] = False
    switch["normally_open"][n_break + n_sect :] = True
    switch["i_rated_ka"] = _SWITCH_RATING_KA

    trunk_type = np.where(overhead, 2, 0)
    trunk_i_ka = np.array([t.i_rated_ka for t in _LINE_TYPES])[trunk_type]
    load, generator = _loads_and_pv(
        rng,
        trees,
        overhead=overhead,
        trunk_i_ka=trunk_i_ka,
        id_block=id_block,
        bus_row0=feeder_row0,
    )

    # Peak exchange of each substation: loads minus PV, reactive power less the line charging.
    sub_of_row = sub_of_feeder[trees.feeder]
    load_sub = sub_of_row[load["bus"] - id_block - feeder_row0]
    gen_sub = sub_of_row[generator["bus"] - id_block - feeder_row0]
    line_sub = sub_of_row[line["from_bus"] - id_block - feeder_row0]
    omega = 2 * np.pi * DEFAULT_FREQUENCY_HZ
    charging_mvar = _U_MV_KV**2 * omega * 1e-9 * line["c1_nf_per_km"] * line["length_km"]
    p_sub_mw = _sum_by(load_sub, load["p_mw"], n_sub) - _sum_by(gen_sub, generator["p_mw"], n_sub)
    q_sub_mvar = _sum_by(load_sub, load["q_mvar"], n_sub) - _sum_by(line_sub, charging_mvar, n_sub)
    transformer, source = _substations(p_sub_mw, q_sub_mvar, id_block)

    measurement = _measurements(rng, switch[:n_break], load, id_block)

    n_pv = generator.size
    return GridModel(
        name=name if name is not None else f"synthetic-{buses}b-{feeders}f-{ties}t-s{seed}",
        description=(
            f"synthetic MV grid (openfeeder.model.synth, seed {seed}): {n_sub} primary "
            f"substations 110/20 kV, {feeders} radial feeders, {ties} normally-open ties, "
            f"{load.size} loads, {n_pv} PV"
        ),
        bus=bus,
        line=line,
        transformer=transformer,
        switch=switch,
        load=load,
        generator=generator,
        source=source,
        measurement=measurement,
    )


def _check_arguments(*, buses: int, feeders: int, ties: int, seed: int) -> int:
    """Validate the arguments; return the number of primary substations."""
    for label, value in (("buses", buses), ("feeders", feeders), ("ties", ties), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{label} must be an integer, got {value!r}")
    if feeders < 1:
        raise ValueError(f"feeders must be at least 1, got {feeders}")
    if ties < 0:
        raise ValueError(f"ties must not be negative, got {ties}")
    if ties > 0 and feeders < 2:
        raise ValueError(f"ties join two different feeders: {ties} ties need at least 2 feeders")
    if seed < 0:
        raise ValueError(f"seed must not be negative, got {seed}")
    if buses > MAX_BUSES:
        raise ValueError(f"buses must be at most {MAX_BUSES}, got {buses}")
    n_sub = -(-feeders // MAX_FEEDERS_PER_SUBSTATION)
    needed = 2 * n_sub + 2 * feeders + ties
    if buses < needed:
        raise ValueError(
            f"buses={buses} is too small for {feeders} feeders and {ties} ties: needs at least "
            f"{needed} (2 per primary substation x {n_sub}, 2 per feeder, 1 per tie)"
        )
    # Each tie needs two feeder buses to join, ideally its own: at most half the non-bay buses.
    max_ties = (buses - 2 * n_sub - feeders) // 3
    if ties > max_ties:
        raise ValueError(
            f"ties={ties} is too many for {buses} buses and {feeders} feeders: at most {max_ties} "
            "(each tie needs its own tie bus and two feeder buses to join)"
        )
    return n_sub


def _split_sizes(rng: np.random.Generator, total: int, feeders: int) -> IntArray:
    """Buses per feeder: at least 2 each, the rest shared by lognormal weights (sum exactly)."""
    rest = total - 2 * feeders
    weight = rng.lognormal(0.0, 0.35, feeders)
    share = rest * weight / weight.sum()
    sizes = np.floor(share).astype(np.int64)
    left = rest - int(sizes.sum())
    order = np.argsort(-(share - sizes), kind="stable")
    sizes[order[:left]] += 1
    result: IntArray = sizes + 2
    return result


def _grow_trees(rng: np.random.Generator, sizes: IntArray) -> _Trees:
    n = int(sizes.sum())
    start = np.cumsum(sizes) - sizes
    feeder = np.repeat(np.arange(sizes.size), sizes)
    local = np.arange(n) - start[feeder]
    below = sizes - 1  # buses below the bay bus
    trunk_len = np.clip(np.rint(below * rng.uniform(0.30, 0.45, sizes.size)), 1, None)
    trunk_len = np.minimum(trunk_len, np.minimum(below, _MAX_TRUNK_SECTIONS)).astype(np.int64)
    t_len = trunk_len[feeder]
    trunk = (local >= 1) & (local <= t_len)
    lateral = local > t_len
    # Past the trunk: continue the current lateral, or start a new one from an earlier bus.
    jump = lateral & ((rng.random(n) >= _P_CONTINUE_LATERAL) | (local == t_len + 1))
    u = rng.random(n)
    to_trunk = 1 + np.floor(u * t_len).astype(np.int64)
    to_any = 1 + np.floor(u * np.maximum(local - 1, 0)).astype(np.int64)
    target = np.where(rng.random(n) < 0.5, to_trunk, to_any)
    parent_local = np.where(jump, target, local - 1)
    parent = np.where(local == 0, -1, start[feeder] + parent_local)
    branch_start = (local == 1) | jump
    return _Trees(sizes, start, feeder, local, parent, trunk, branch_start)


def _pick_switch_sections(rng: np.random.Generator, trees: _Trees) -> BoolArray:
    """Sections that are switches in a ring main unit: 10-15 %, three times as likely on trunks."""
    eligible = trees.local >= 2
    n_sections = int((trees.local >= 1).sum())
    weight = np.where(trees.trunk, 3.0, 1.0) * eligible
    total = weight.sum()
    if total == 0:
        return np.zeros(trees.local.size, dtype=bool)
    target = rng.uniform(0.10, 0.15) * n_sections
    prob = np.minimum(weight * (target / total), 0.9)
    picked: BoolArray = rng.random(trees.local.size) < prob
    return picked


def _accumulate_to_root(values: FloatArray, parent: IntArray) -> FloatArray:
    """Sum of ``values`` over each node and all its ancestors (pointer jumping, log depth steps)."""
    acc = values.copy()
    anc = parent.copy()
    active = np.flatnonzero(anc >= 0)
    while active.size:
        up = anc[active]
        acc[active] += acc[up]
        anc[active] = anc[up]
        active = active[anc[active] >= 0]
    return acc


def _lay_out(
    rng: np.random.Generator,
    trees: _Trees,
    section_m: FloatArray,
    sub_of_feeder: IntArray,
    feeders_per_sub: IntArray,
) -> tuple[FloatArray, FloatArray]:
    """Coordinates of the feeder buses and of the substations, m."""
    n_sub = feeders_per_sub.size
    n_feeders = trees.sizes.size
    sub_first = np.cumsum(feeders_per_sub) - feeders_per_sub
    slot = np.arange(n_feeders) - sub_first[sub_of_feeder]
    per_sub = feeders_per_sub[sub_of_feeder]
    sub_angle = rng.uniform(0.0, 2 * np.pi, n_sub)
    feeder_angle = sub_angle[sub_of_feeder] + 2 * np.pi * (
        slot + rng.normal(0.0, 0.1, n_feeders)
    ) / np.maximum(per_sub, 1)

    n = trees.local.size
    side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    offset = np.where(trees.trunk, 0.0, side * np.deg2rad(rng.uniform(45.0, 100.0, n)))
    branch_angle = feeder_angle[trees.feeder] + offset
    first = np.maximum.accumulate(np.where(trees.branch_start, np.arange(n), 0))
    angle = branch_angle[first] + np.deg2rad(rng.normal(0.0, 12.0, n))
    step = np.stack([section_m * np.cos(angle), section_m * np.sin(angle)], axis=1)
    local_xy = np.stack(
        [
            _accumulate_to_root(step[:, 0], trees.parent),
            _accumulate_to_root(step[:, 1], trees.parent),
        ],
        axis=1,
    )

    reach_m = np.zeros(n_feeders)
    np.maximum.at(reach_m, trees.feeder, np.hypot(local_xy[:, 0], local_xy[:, 1]))
    spacing_m = max(1000.0, 1.8 * float(np.median(reach_m)))
    cols = math.ceil(math.sqrt(n_sub))
    grid = np.stack([np.arange(n_sub) % cols, np.arange(n_sub) // cols], axis=1).astype(float)
    sub_xy = (grid + rng.uniform(-0.15, 0.15, (n_sub, 2))) * spacing_m
    xy = local_xy + sub_xy[sub_of_feeder[trees.feeder]]
    return xy, sub_xy


def _pick_ties(
    rng: np.random.Generator, trees: _Trees, xy_m: FloatArray, ties: int
) -> tuple[IntArray, IntArray]:
    """Feeder-bus indices of the two ends of each tie (leaf of feeder A, close bus of feeder B)."""
    empty = np.zeros(0, dtype=np.int64)
    if ties == 0:
        return empty, empty
    n = trees.local.size
    below = np.flatnonzero(trees.local > 0)
    children = np.bincount(trees.parent[trees.parent >= 0], minlength=n)
    is_leaf = (trees.local > 0) & (children == 0)
    kd_tree = KDTree(xy_m[below])

    a, b = _close_pairs(trees, xy_m, kd_tree, below, np.flatnonzero(is_leaf))
    if np.count_nonzero(_distinct(a, b, n, distinct_b=True)) < ties:
        # Not enough leaves near other feeders: also from buses inside the feeders.
        inner_a, inner_b = _close_pairs(trees, xy_m, kd_tree, below, np.flatnonzero(~is_leaf))
        a, b = np.r_[a, inner_a], np.r_[b, inner_b]
    # Distinct far ends first; when there are too few, ties may share a far-end bus.
    strict = _distinct(a, b, n, distinct_b=True)
    relaxed = _distinct(a, b, n, distinct_b=False) & ~strict
    order = np.r_[np.flatnonzero(strict), np.flatnonzero(relaxed)][:ties]
    a, b = a[order], b[order]

    missing = ties - a.size
    if missing > 0:
        # Still too few (very many ties): a random bus and a random bus of the next feeder.
        extra_a = below[rng.integers(0, below.size, missing)]
        next_feeder = (trees.feeder[extra_a] + 1) % trees.sizes.size
        extra_b = trees.start[next_feeder] + 1 + rng.integers(0, trees.sizes[next_feeder] - 1)
        a = np.concatenate([a, extra_a])
        b = np.concatenate([b, extra_b])
    return a, b


def _close_pairs(
    trees: _Trees, xy_m: FloatArray, kd_tree: KDTree, below: IntArray, candidates: IntArray
) -> tuple[IntArray, IntArray]:
    """For each candidate bus the nearest bus of another feeder (if among its nearest neighbours).

    Ordered round-robin: first the closest pair of every two feeders, then the second, ...; within
    a round one per feeder first, shortest first.
    """
    k = min(_TIE_NEIGHBOURS, below.size)
    dist, near = kd_tree.query(xy_m[candidates], k=list(range(1, k + 1)))
    near_idx = below[np.asarray(near, dtype=np.int64)]
    foreign = trees.feeder[near_idx] != trees.feeder[candidates][:, None]
    has = foreign.any(axis=1)
    pick = np.argmax(foreign, axis=1)
    rows = np.arange(candidates.size)
    a = candidates[has]
    b = near_idx[rows, pick][has]
    d = np.asarray(dist, dtype=np.float64)[rows, pick][has]
    f_a, f_b = trees.feeder[a], trees.feeder[b]
    n_feeders = trees.sizes.size
    pair_rank = _rank_within(np.minimum(f_a, f_b) * n_feeders + np.maximum(f_a, f_b), d)
    feeder_rank = _rank_within(f_a, d)
    order = np.lexsort((d, feeder_rank, pair_rank))
    return a[order], b[order]


def _distinct(a: IntArray, b: IntArray, n: int, *, distinct_b: bool) -> BoolArray:
    """First of the ties between the same two buses (and, with distinct_b, ending at the same b)."""
    keep = np.zeros(a.size, dtype=bool)
    keep[np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_index=True)[1]] = True
    if distinct_b:
        first_b = np.zeros(a.size, dtype=bool)
        first_b[np.unique(b, return_index=True)[1]] = True
        keep &= first_b
    return keep


def _sum_by(group: npt.ArrayLike, values: npt.ArrayLike, size: int) -> FloatArray:
    """Sum of ``values`` per group number 0 .. size-1."""
    total: FloatArray = np.bincount(group, weights=values, minlength=size).astype(np.float64)
    return total


def _rank_within(group: IntArray, key: FloatArray) -> IntArray:
    """Position of each element within its group when the group is sorted by ``key``."""
    order = np.lexsort((key, group))
    sorted_group = group[order]
    first = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    size = np.diff(np.r_[first, sorted_group.size])
    rank = np.empty(group.size, dtype=np.int64)
    rank[order] = np.arange(group.size) - np.repeat(first, size)
    return rank


def _lines(
    *,
    from_rows: IntArray,
    to_rows: IntArray,
    type_index: IntArray,
    length_km: FloatArray,
    id0: int,
    bus_id0: int,
) -> npt.NDArray[np.void]:
    line = empty_table("line", from_rows.size)
    line["id"] = id0 + np.arange(from_rows.size)
    line["from_bus"] = bus_id0 + from_rows
    line["to_bus"] = bus_id0 + to_rows
    line["length_km"] = length_km
    for column in (
        "r1_ohm_per_km",
        "x1_ohm_per_km",
        "c1_nf_per_km",
        "r0_ohm_per_km",
        "x0_ohm_per_km",
        "c0_nf_per_km",
        "i_rated_ka",
    ):
        values = np.array([getattr(t, column) for t in _LINE_TYPES])
        line[column] = values[type_index]
    kinds = np.array([enum_code(t.kind) for t in _LINE_TYPES])
    line["kind"] = kinds[type_index]
    return line


def _loads_and_pv(
    rng: np.random.Generator,
    trees: _Trees,
    *,
    overhead: BoolArray,
    trunk_i_ka: FloatArray,
    id_block: int,
    bus_row0: int,
) -> tuple[npt.NDArray[np.void], npt.NDArray[np.void]]:
    """Aggregated MV/LV loads on most feeder buses and PV on some of them."""
    n_feeders = trees.sizes.size
    has_load = (trees.local > 0) & (rng.random(trees.local.size) < _P_LOAD)
    unloaded = np.bincount(trees.feeder[has_load], minlength=n_feeders) == 0
    has_load[(trees.start + trees.sizes - 1)[unloaded]] = True
    at = np.flatnonzero(has_load)
    n_load = at.size
    feeder = trees.feeder[at]

    cls = np.searchsorted(np.cumsum(_CLASS_SHARE), rng.random(n_load), side="right")
    cls = np.minimum(cls, len(_CLASS_SHARE) - 1)
    base = rng.lognormal(0.0, 0.5, n_load) * np.array(_CLASS_P_FACTOR)[cls]
    peak_mw = np.where(overhead, rng.uniform(2.0, 4.5, n_feeders), rng.uniform(3.0, 6.0, n_feeders))
    # Head current at most 60 % of the trunk rating (cos phi >= 0.95, 0.97 pu).
    peak_mw = np.minimum(peak_mw, 0.6 * math.sqrt(3) * _U_MV_KV * 0.97 * trunk_i_ka * 0.95)
    p_mw = base * (peak_mw / _sum_by(feeder, base, n_feeders))[feeder]
    cos_phi = rng.uniform(0.95, 0.98, n_load)

    kw_range = np.array(_CLASS_KW_PER_CUSTOMER)[cls]
    kw_per_customer = rng.uniform(kw_range[:, 0], kw_range[:, 1])
    customers = np.clip(np.rint(p_mw * 1000.0 / kw_per_customer), 1, 300)

    shares = np.clip(1 / 3 + rng.normal(0.0, 0.015, (n_load, 3)), 0.25, 0.42)
    shares /= shares.sum(axis=1, keepdims=True)

    priority = np.select(
        [cls == enum_code(CustomerClass.INDUSTRIAL), cls == enum_code(CustomerClass.PUBLIC)],
        [1, np.where(rng.random(n_load) < 1 / 3, 3, 2)],
        0,
    )

    load = empty_table("load", n_load)
    load["id"] = 5 * id_block + np.arange(n_load)
    load["bus"] = id_block + bus_row0 + at
    load["p_mw"] = p_mw
    load["q_mvar"] = p_mw * np.tan(np.arccos(cos_phi))
    load["customers"] = customers
    load["customer_class"] = cls
    load["share_a"] = shares[:, 0]
    load["share_b"] = shares[:, 1]
    load["share_c"] = 1.0 - shares[:, 0] - shares[:, 1]
    load["priority"] = priority

    with_pv = np.flatnonzero(rng.random(n_load) < rng.uniform(0.10, 0.20))
    pv_mw = p_mw[with_pv] * rng.uniform(0.1, 0.5, with_pv.size)
    sn_mva = pv_mw / rng.uniform(0.6, 0.9, with_pv.size)
    gen = empty_table("generator", with_pv.size)
    gen["id"] = 6 * id_block + np.arange(with_pv.size)
    gen["bus"] = load["bus"][with_pv]
    gen["kind"] = enum_code(DerKind.PV)
    gen["p_mw"] = pv_mw
    gen["q_mvar"] = 0.0
    gen["sn_mva"] = sn_mva
    gen["p_min_mw"] = 0.0
    gen["p_max_mw"] = sn_mva
    gen["q_min_mvar"] = -0.33 * sn_mva
    gen["q_max_mvar"] = 0.33 * sn_mva
    return load, gen


def _substations(
    p_mw: FloatArray, q_mvar: FloatArray, id_block: int
) -> tuple[npt.NDArray[np.void], npt.NDArray[np.void]]:
    """HV/MV transformers sized and tapped for the peak exchange, and the 110 kV sources."""
    n_sub = p_mw.size
    s_mva = np.hypot(p_mw, q_mvar)
    sizes = np.array(_TRAFO_SIZES_MVA)
    sn_mva = sizes[np.minimum(np.searchsorted(sizes, s_mva / 0.85), sizes.size - 1)]
    vkr = _VKR_PERCENT / 100.0
    vx = math.sqrt((_UK_PERCENT / 100.0) ** 2 - vkr**2)
    drop_pu = (p_mw * vkr + q_mvar * vx) / sn_mva
    tap = -np.rint((_BUSBAR_TARGET_PU - 1.0 + drop_pu) / (_TAP_STEP_PERCENT / 100.0))

    transformer = empty_table("transformer", n_sub)
    transformer["id"] = 3 * id_block + np.arange(n_sub)
    transformer["hv_bus"] = id_block + np.arange(n_sub)
    transformer["lv_bus"] = id_block + n_sub + np.arange(n_sub)
    transformer["sn_mva"] = sn_mva
    transformer["u_hv_kv"] = _U_HV_KV
    transformer["u_lv_kv"] = _U_MV_KV
    transformer["uk_percent"] = _UK_PERCENT
    transformer["pk_kw"] = sn_mva * 1000.0 * vkr
    transformer["i0_percent"] = 0.05
    transformer["p0_kw"] = sn_mva * 1000.0 * 0.00045
    transformer["winding_hv"] = enum_code(WindingType.D)
    transformer["winding_lv"] = enum_code(WindingType.YN)
    transformer["clock"] = 11
    transformer["tap_side"] = enum_code(TapSide.HV)
    transformer["tap_pos"] = np.clip(tap, -_TAP_STEPS, _TAP_STEPS)
    transformer["tap_min"] = -_TAP_STEPS
    transformer["tap_max"] = _TAP_STEPS
    transformer["tap_nom"] = 0
    transformer["tap_step_percent"] = _TAP_STEP_PERCENT

    source = empty_table("source", n_sub)
    source["id"] = 8 * id_block + np.arange(n_sub)
    source["bus"] = id_block + np.arange(n_sub)
    source["u_ref_pu"] = 1.0
    source["sk_mva"] = _SK_MVA
    source["rx_ratio"] = 0.1
    return transformer, source


def _measurements(
    rng: np.random.Generator,
    breakers: npt.NDArray[np.void],
    load: npt.NDArray[np.void],
    id_block: int,
) -> npt.NDArray[np.void]:
    """An FTU at every head breaker (busbar side) and smart meters at about 30 % of the loads."""
    metered = np.flatnonzero(rng.random(load.size) < _P_METER)
    n_ftu = breakers.size
    meas = empty_table("measurement", n_ftu + metered.size)
    meas["id"] = 9 * id_block + np.arange(meas.size)
    meas["kind"] = np.concatenate(
        [
            np.full(n_ftu, enum_code(MeasurementKind.FTU)),
            np.full(metered.size, enum_code(MeasurementKind.METER)),
        ]
    )
    meas["bus"] = np.concatenate([breakers["from_bus"], load["bus"][metered]])
    meas["element"] = np.concatenate([breakers["id"], load["id"][metered]])
    meas["measures_voltage"] = True
    meas["measures_current"][:n_ftu] = True
    meas["measures_power"] = True
    meas["accuracy_class"] = np.concatenate([np.full(n_ftu, 0.5), np.full(metered.size, 1.0)])
    return meas
