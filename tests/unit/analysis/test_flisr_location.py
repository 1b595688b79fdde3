"""FLOC: the faulted zone is always right; distances on turin within seed 003's +-50 m; bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from openfeeder.analysis.faults import fault_state
from openfeeder.analysis.flisr.location import (
    FAULT_TYPES,
    FaultLocation,
    FaultLocationError,
    PhasorRecord,
    locate_fault,
)
from openfeeder.errors import AnalysisError
from openfeeder.model.cases import load_builtin
from openfeeder.model.grid import GridModel
from openfeeder.model.synth import generate_feeders
from openfeeder.model.topology import analyze_topology
from openfeeder.sim.fault_records import fault_records
from openfeeder.sim.faults import FaultSpec, FaultTimeline, ProtectionSettings, fault_timeline
from openfeeder.sim.measurements import MeasurementModel
from openfeeder.sim.placements import default_placements

T_NS = 1_700_000_000 * 1_000_000_000
PROTECTION = ProtectionSettings()
SHUNT = ("slg", "ll", "lll", "llg", "arc")
TURIN_LINES = tuple(range(100, 113))
FRACTIONS = (0.23, 0.71)


@dataclass(frozen=True)
class Scenario:
    """One simulated fault and what the twin's protection, indicators and devices saw."""

    kind: str
    line_id: int
    distance_m: float
    r_f_ohm: float
    timeline: FaultTimeline
    records: tuple[PhasorRecord, ...]

    @property
    def indicators(self) -> dict[int, bool | None]:
        return {k: v.latched for k, v in self.timeline.fault_indicators.items()}

    def locate(self, model: GridModel, **changes: object) -> FaultLocation:
        options: dict[str, object] = {
            "tripped_breaker": self.timeline.tripped_breaker,
            "indicators": self.indicators,
            "records": self.records,
        }
        options.update(changes)
        return locate_fault(model, **options)  # type: ignore[arg-type]


def _simulate(
    model: GridModel, kind: str, line_id: int, distance_m: float, *, r_f_ohm: float, seed: int
) -> Scenario:
    fault = FaultSpec(
        kind=kind, line_id=line_id, distance_m=distance_m, start_ns=T_NS, r_f_ohm=r_f_ohm
    )
    timeline = fault_timeline(model, fault, PROTECTION)
    result = next(r for r in timeline.fault_results if r is not None)
    records = fault_records(
        model, result, default_placements(model), seed=seed, t_ns=T_NS, lv_meters=True
    )
    return Scenario(kind, line_id, distance_m, r_f_ohm, timeline, tuple(records))


def _in_zone(model: GridModel, location: FaultLocation, line_id: int) -> bool:
    row = int(np.flatnonzero(model.line["id"] == line_id)[0])
    ends = {int(model.line["from_bus"][row]), int(model.line["to_bus"][row])}
    return ends <= set(location.section_bus_ids)


@pytest.fixture(scope="module")
def turin() -> GridModel:
    return load_builtin("turin")


@pytest.fixture(scope="module")
def turin_faults(turin: GridModel) -> dict[tuple[str, float], list[Scenario]]:
    """Every shunt kind (arcs included), bolted, at two places on every line; slg, ll and lll
    through 1 ohm in the middle of every line.

    Each fault's records carry their own noise (seeded), as the twin's devices would.
    """
    out: dict[tuple[str, float], list[Scenario]] = {}
    seed = 0
    for kind, r_f in [*((k, 0.0) for k in SHUNT), ("slg", 1.0), ("ll", 1.0), ("lll", 1.0)]:
        for line_id in TURIN_LINES:
            for fraction in FRACTIONS if r_f == 0.0 else (0.5,):
                seed += 1
                out.setdefault((kind, r_f), []).append(
                    _simulate(turin, kind, line_id, 220.0 * fraction, r_f_ohm=r_f, seed=seed)
                )
    return out


def _errors(scenarios: list[Scenario], model: GridModel) -> tuple[np.ndarray, np.ndarray]:
    errors, sigmas = [], []
    for scenario in scenarios:
        location = scenario.locate(model)
        assert location.line_id == scenario.line_id
        assert location.distance_m is not None
        assert location.sigma_m is not None
        errors.append(abs(location.distance_m - scenario.distance_m))
        sigmas.append(location.sigma_m)
    return np.array(errors), np.array(sigmas)


# -- records ---------------------------------------------------------------------------------------


def test_phasor_record_round_trips_through_json() -> None:
    record = PhasorRecord(
        device_id="ftu-300",
        bus_id=2,
        u_pre_v=[12_700 + 1j, -6_350 - 11_000j, -6_350 + 11_000j],
        u_fault_v=np.array([100 + 5j, -6_000 - 11_000j, -6_000 + 11_000j]),
        branch_id=300,
        i_pre_a=[30 - 5j, -20 - 25j, -10 + 30j],
        i_fault_a=[7_000 - 3_000j, -20 - 25j, -10 + 30j],
        accuracy_class=0.5,
    )
    back = PhasorRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back.device_id == "ftu-300"
    assert (back.bus_id, back.branch_id, back.accuracy_class) == (2, 300, 0.5)
    for name in ("u_pre_v", "u_fault_v", "i_pre_a", "i_fault_a"):
        np.testing.assert_array_equal(getattr(back, name), getattr(record, name))
    voltage_only = PhasorRecord("meter-1", 7, [1, 2, 3], [1, 2, 3], accuracy_class=1.0)
    assert PhasorRecord.from_dict(voltage_only.to_dict()).i_fault_a is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"u_fault_v": [1.0, 2.0]}, "records.u_fault_v"),
        ({"u_pre_v": [1.0, np.nan, 2.0]}, "records.u_pre_v"),
        ({"branch_id": 300}, "records.i_fault_a"),
        ({"i_fault_a": [1, 2, 3]}, "records.branch_id"),
        ({"accuracy_class": -1.0}, "records.accuracy_class"),
    ],
)
def test_phasor_record_rejects_malformed_fields(fields: dict[str, object], field: str) -> None:
    values: dict[str, object] = {
        "device_id": "ftu-1",
        "bus_id": 2,
        "u_pre_v": [1, 2, 3],
        "u_fault_v": [1, 2, 3],
        **fields,
    }
    with pytest.raises(FaultLocationError) as caught:
        PhasorRecord(**values)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.device_id == "ftu-1"
    with pytest.raises(FaultLocationError, match="u_pre_v"):
        PhasorRecord.from_dict({"device_id": "x", "bus_id": 1, "u_pre_v": "nope", "u_fault_v": []})


def test_fault_records_carry_the_twins_noise(turin: GridModel) -> None:
    result = fault_state(turin, line_id=103, distance_m=80.0, kind="slg")
    placements = default_placements(turin)
    records = fault_records(turin, result, placements, seed=4, t_ns=T_NS)
    by_id = {r.device_id: r for r in records}
    # FTUs and the PMU record (with their currents); LV meters only when asked for
    assert {f"ftu-{s}" for s in range(300, 326)} <= set(by_id)
    assert "pmu-500" in by_id
    assert not any(d.startswith("meter-") for d in by_id)
    with_meters = fault_records(turin, result, placements, seed=4, t_ns=T_NS, lv_meters=True)
    assert sum(r.device_id.startswith("meter-") for r in with_meters) == 12
    head = by_id["ftu-300"]
    assert head.branch_id == 300
    assert head.i_fault_a is not None
    assert head.i_pre_a is not None
    row = result.state.branch_rows([300])[0]
    true_fault = result.state.i_from_a[row]
    true_pre = result.prefault.i_from_a[row]
    # noisy, but within a few accuracy classes (0.5 %) of the truth
    relative = np.abs(np.abs(head.i_fault_a) / np.abs(true_fault) - 1.0)
    assert 0.0 < relative.max() < 0.02
    assert np.abs(np.abs(head.i_pre_a) / np.abs(true_pre) - 1.0).max() < 0.02
    # the same seed gives the same records; a measurement model can be passed instead
    again = fault_records(turin, result, placements, seed=4, t_ns=T_NS)
    np.testing.assert_array_equal(again[0].u_fault_v, records[0].u_fault_v)
    lossy = MeasurementModel(placements, seed=4, dropout_probability=0.5)
    survivors = fault_records(turin, result, placements, measurement_model=lossy, t_ns=T_NS)
    assert 0 < len(survivors) < len(records)
    with pytest.raises(ValueError, match="exactly one"):
        fault_records(turin, result, placements, t_ns=T_NS)


# -- the zone --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SHUNT)
def test_turin_zone_and_type_are_always_right(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]], kind: str
) -> None:
    for scenario in turin_faults[(kind, 0.0)]:
        location = scenario.locate(turin)
        assert _in_zone(turin, location, scenario.line_id), (kind, scenario.line_id)
        # each turin line is its own section between two remote switches
        assert len(location.section_bus_ids) == 2
        assert not location.widened
        assert location.feeder == (300 if scenario.line_id in (*range(100, 106), 112) else 313)
        assert location.section_basis == "indicators"
        assert location.fault_type_classified
        assert location.fault_type == ("slg" if kind == "arc" else kind)
        assert location.phases == {"slg": "a", "arc": "a", "ll": "bc", "llg": "bc"}.get(kind, "abc")


def test_a_missing_indicator_widens_the_zone_and_says_so(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]]
) -> None:
    scenario = next(s for s in turin_faults[("slg", 0.0)] if s.line_id == 103)
    offline = {**scenario.indicators, 306: None}
    records = tuple(r for r in scenario.records if r.device_id != "ftu-306")
    location = scenario.locate(turin, indicators=offline, records=records)
    assert location.widened
    assert location.unknown_indicators == (306,)
    assert location.section_bus_ids == (13, 14, 15, 16)
    assert location.bounding_switch_ids == (305, 307)
    assert any("306" in note for note in location.notes)
    assert location.line_id == 103  # the distance still finds the line
    # a switch left out of the mapping counts as unknown too
    missing = {k: v for k, v in scenario.indicators.items() if k != 307}
    location = scenario.locate(turin, indicators=missing)
    assert location.unknown_indicators == (307,)
    assert set(location.section_bus_ids) == {14, 16, 17, 19}
    # nothing known below the breaker: the whole feeder, and still the right line
    location = scenario.locate(turin, indicators={})
    assert location.widened
    assert _in_zone(turin, location, 103)
    assert location.bounding_switch_ids == (300, 325)
    assert location.line_id == 103


def test_without_records_the_zone_stands_and_the_distance_says_why(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]]
) -> None:
    scenario = turin_faults[("ll", 0.0)][7]
    location = scenario.locate(turin, records=())
    assert _in_zone(turin, location, scenario.line_id)
    assert location.method == "none"
    assert location.distance_m is None
    assert location.reason is not None
    assert "no fault record" in location.reason
    assert location.fault_type == "unknown"
    data = json.loads(json.dumps(location.as_dict()))
    assert data["section_bus_ids"] == list(location.section_bus_ids)
    # records taken outside the fault (no change of current) give no distance either
    still = tuple(
        PhasorRecord(r.device_id, r.bus_id, r.u_pre_v, r.u_pre_v, r.branch_id, r.i_pre_a, r.i_pre_a)
        for r in scenario.records
        if r.branch_id is not None
    )
    location = scenario.locate(turin, records=still)
    assert _in_zone(turin, location, scenario.line_id)
    assert (location.method, location.distance_m) == ("none", None)
    assert location.reason is not None
    assert "no fault current" in location.reason


def test_a_breaker_already_open_in_the_model_is_taken_as_closed(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]]
) -> None:
    scenario = turin_faults[("slg", 0.0)][4]
    before = scenario.locate(turin)
    after = scenario.locate(turin.with_switch_states({300: False}))
    assert after.section_bus_ids == before.section_bus_ids
    assert after.distance_m == before.distance_m
    # a given type is kept (an arc shows as a ground fault) and the phases still come from records
    arc = scenario.locate(turin, fault_type="arc")
    assert (arc.fault_type, arc.fault_type_classified, arc.phases) == ("arc", False, "a")
    assert arc.fault_resistance_ohm is not None


@pytest.mark.parametrize("kind", ["open", "open_ground"])
def test_turin_open_conductor_found_by_the_unbalance_boundary(turin: GridModel, kind: str) -> None:
    for line_id in range(100, 112):  # 112 feeds only the tie's bus: no device below its break
        scenario = _simulate(turin, kind, line_id, 150.0, r_f_ohm=20.0, seed=line_id)
        assert scenario.timeline.tripped_breaker is None
        location = scenario.locate(turin)
        assert _in_zone(turin, location, line_id)
        assert location.section_basis == "voltage_unbalance"
        assert (location.fault_type, location.phases) == ("open", "a")
        assert location.line_id == line_id
        assert location.method == "none"
        assert location.distance_m is None
        assert location.reason is not None
        assert "open conductor" in location.reason
    invisible = _simulate(turin, kind, 112, 150.0, r_f_ohm=20.0, seed=1)
    with pytest.raises(FaultLocationError, match="nothing to locate"):
        invisible.locate(turin)


# -- distances on turin ----------------------------------------------------------------------------


def test_turin_bolted_distance_within_seed_003s_bound(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]]
) -> None:
    """Default measurement noise (FTUs class 0.5), bolted faults: median <= 20 m, max <= 50 m
    (seed 003: +-50 m on a Raspberry Pi, +-10 m on a laptop). Measured: median 0.2 m, max 19 m
    (phase-to-phase faults are the hardest: their loop voltage is a difference of two half-voltage
    phases)."""
    scenarios = [s for k in ("slg", "ll", "lll", "llg") for s in turin_faults[(k, 0.0)]]
    errors, sigmas = _errors(scenarios, turin)
    assert len(errors) == 4 * len(TURIN_LINES) * len(FRACTIONS)
    assert np.median(errors) <= 20.0
    assert errors.max() <= 50.0
    # the stated uncertainty is honest: about 95 % within 2 sigma
    assert np.mean(errors <= 2.0 * sigmas) >= 0.9


@pytest.mark.parametrize(
    ("kind", "r_f_ohm"), [("arc", 0.0), ("slg", 1.0), ("ll", 1.0), ("lll", 1.0)]
)
def test_turin_resistive_distance_documented_bound(
    turin: GridModel,
    turin_faults: dict[tuple[str, float], list[Scenario]],
    kind: str,
    r_f_ohm: float,
) -> None:
    """Resistive faults (Takagi): the phase error of the instruments turns the fault's resistive
    voltage into apparent reactance, about 50 m per ohm for one class-0.5 record on this cable,
    less with several FTUs on the path. Bound (docs/flisr-location.md): median <= 20 m, max <= 60 m
    at 1 ohm and for arcs; the fault resistance comes out too."""
    errors, sigmas = _errors(turin_faults[(kind, r_f_ohm)], turin)
    assert np.median(errors) <= 20.0
    assert errors.max() <= 60.0
    assert np.mean(errors <= 2.5 * sigmas) >= 0.85
    scenario = turin_faults[(kind, r_f_ohm)][0]
    location = scenario.locate(turin)
    assert location.fault_resistance_ohm is not None
    if r_f_ohm > 0.0:
        assert location.fault_resistance_ohm == pytest.approx(r_f_ohm, rel=0.25)
    else:  # the arc's resistance: its fundamental voltage over its current
        assert 0.05 < location.fault_resistance_ohm < 1.0


def test_turin_head_record_alone_still_locates(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]]
) -> None:
    """Only the breaker's FTU records (indicators still report): up to 1.5 km from the head."""
    scenarios = turin_faults[("slg", 0.0)] + turin_faults[("lll", 0.0)]
    errors = []
    for scenario in scenarios:
        head = tuple(r for r in scenario.records if r.device_id in ("ftu-300", "ftu-313"))
        location = scenario.locate(turin, records=head)
        assert len(location.records_used) == 1
        assert location.records_used[0] in ("ftu-300", "ftu-313")
        assert location.method == "impedance"
        assert location.distance_m is not None
        errors.append(abs(location.distance_m - scenario.distance_m))
    assert np.median(errors) <= 20.0
    assert max(errors) <= 50.0


# -- a synthetic 1,000-bus grid --------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> GridModel:
    return generate_feeders(buses=1000, feeders=8, ties=3, seed=7)


def _synthetic_lines(model: GridModel, count: int) -> Iterator[tuple[int, float]]:
    """Lines spread over the feeders (not the ties), with a place on each."""
    topology = analyze_topology(model)
    rng = np.random.default_rng(11)
    rows = topology.bus_rows(model.line["to_bus"])
    fed = np.flatnonzero(topology.feeder_of_bus[rows] >= 0)
    for row in rng.choice(fed, size=count, replace=False).tolist():
        length_m = float(model.line["length_km"][row]) * 1e3
        yield int(model.line["id"][row]), length_m * float(rng.uniform(0.05, 0.95))


@pytest.mark.parametrize("kind", [*SHUNT, "open"])
def test_synthetic_zone_is_always_right(synthetic: GridModel, kind: str) -> None:
    """Sections of a synthetic grid hold many lines and laterals; the zone is still right, and the
    best line's distance is a few tens of metres off at most when it is the right line."""
    errors = []
    for k, (line_id, distance_m) in enumerate(_synthetic_lines(synthetic, 10)):
        scenario = _simulate(synthetic, kind, line_id, distance_m, r_f_ohm=0.0, seed=k)
        location = scenario.locate(synthetic)
        assert _in_zone(synthetic, location, line_id), (kind, line_id, distance_m)
        assert not location.widened
        if kind == "open":
            # loads on MV are wye-grounded: a broken phase trips on ground overcurrent, and the
            # falling phase current tells it from a short circuit
            assert location.section_basis == "voltage_unbalance"
            assert location.fault_type == "open"
            continue
        assert location.fault_type == ("slg" if kind == "arc" else kind)
        assert location.method == "impedance+voltage"
        if location.line_id == line_id and location.distance_m is not None:
            errors.append(abs(location.distance_m - distance_m))
    if kind != "open":
        assert len(errors) >= 8  # the rest: a neighbouring line at a shared junction
        assert np.median(errors) <= 20.0


# -- bad input -------------------------------------------------------------------------------------


def test_unknown_ids_and_values_are_named(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]]
) -> None:
    scenario = turin_faults[("slg", 0.0)][0]
    with pytest.raises(FaultLocationError, match="999") as caught:
        scenario.locate(turin, tripped_breaker=999)
    assert (caught.value.field, caught.value.element_id) == ("tripped_breaker", 999)
    with pytest.raises(FaultLocationError, match="switch 998") as caught:
        scenario.locate(turin, indicators={**scenario.indicators, 998: True})
    assert (caught.value.field, caught.value.element_id) == ("indicators", 998)
    with pytest.raises(FaultLocationError, match="switch 301") as caught:
        scenario.locate(turin, indicators={301: "yes"})
    with pytest.raises(FaultLocationError, match="fault_type"):
        scenario.locate(turin, fault_type="bolted")
    assert set(FAULT_TYPES) >= set(SHUNT)
    # a breaker that heads no feeder
    with pytest.raises(FaultLocationError, match="head"):
        scenario.locate(turin, tripped_breaker=301)
    # indicators on two branches (feeder A's 301 and feeder B's 314) cannot both be right
    with pytest.raises(FaultLocationError, match="off feeder"):
        scenario.locate(turin, indicators={301: True, 314: True})


def test_records_on_unknown_elements_are_named(
    turin: GridModel, turin_faults: dict[tuple[str, float], list[Scenario]]
) -> None:
    scenario = turin_faults[("slg", 0.0)][0]
    good = scenario.records[0]
    cases = [
        (PhasorRecord("ghost", 4242, good.u_pre_v, good.u_fault_v), "records.bus_id", 4242),
        (
            PhasorRecord("ftu-x", 2, good.u_pre_v, good.u_fault_v, 777, [1, 2, 3], [1, 2, 3]),
            "records.branch_id",
            777,
        ),
        (  # switch 305 does not end at bus 2
            PhasorRecord("ftu-y", 2, good.u_pre_v, good.u_fault_v, 305, [1, 2, 3], [1, 2, 3]),
            "records.branch_id",
            305,
        ),
    ]
    for record, field, element in cases:
        with pytest.raises(FaultLocationError) as caught:
            scenario.locate(turin, records=(*scenario.records, record))
        assert (caught.value.field, caught.value.element_id) == (field, element)
        assert caught.value.device_id == record.device_id
    with pytest.raises(FaultLocationError, match="two records"):
        scenario.locate(turin, records=(good, good))


def test_nothing_to_locate_is_an_error(turin: GridModel) -> None:
    with pytest.raises(AnalysisError, match="nothing to locate"):
        locate_fault(turin, tripped_breaker=None, indicators={}, records=())


def test_latched_indicators_on_two_laterals_are_an_error(synthetic: GridModel) -> None:
    topology = analyze_topology(synthetic)
    head = int(topology.feeder_ids[0])
    rows = np.flatnonzero(
        np.isin(topology.parent_branch, synthetic.switch["id"])
        & (topology.feeder_of_bus == head)
        & (topology.parent_branch != head)
    )
    # two switches of the feeder, neither below the other
    start, size = topology.order_index[rows], topology.subtree_size[rows]
    below = (start[:, None] >= start[None, :]) & (start[:, None] < (start + size)[None, :])
    apart = np.argwhere(~below & ~below.T)
    first, second = (int(topology.parent_branch[rows[k]]) for k in apart[0])
    with pytest.raises(FaultLocationError, match="different branches") as caught:
        locate_fault(synthetic, tripped_breaker=head, indicators={first: True, second: True})
    assert caught.value.element_id in (first, second)
