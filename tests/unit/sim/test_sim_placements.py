"""Device placements: from the case's measurement table, by default rules, and their checks."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from openfeeder.model.cases import load_builtin
from openfeeder.model.components import NO_ID, BranchEnd, MeasurementKind
from openfeeder.model.grid import GridModel
from openfeeder.sim.placements import (
    DEFAULT_ACCURACY_CLASS,
    DevicePlacement,
    PlacementError,
    check_placements,
    default_placements,
    placements_from_case,
)


@pytest.fixture
def turin() -> GridModel:
    return load_builtin("turin")


def test_placements_from_case_follow_the_measurement_table(turin: GridModel) -> None:
    placements = placements_from_case(turin)
    table = turin.measurement
    assert len(placements) == table.size == 14
    assert Counter(p.kind for p in placements) == {
        MeasurementKind.METER: 12,
        MeasurementKind.FTU: 2,
    }
    by_id = {p.device_id: p for p in placements}
    assert by_id["ftu-600"].element_id == 300
    assert by_id["ftu-600"].bus_id == 2
    assert by_id["ftu-600"].accuracy_class == 0.5
    assert by_id["meter-601"].element_id == 400
    assert by_id["meter-601"].bus_id == 7
    assert by_id["meter-601"].accuracy_class == 1.0
    assert [p.measurement_id for p in placements] == table["id"].tolist()
    assert [p.element_id for p in placements] == table["element"].tolist()


def test_case_row_without_current_or_power_is_voltage_only(turin: GridModel) -> None:
    measurement = turin.measurement.copy()
    measurement["measures_current"][1] = False
    measurement["measures_power"][1] = False
    placements = placements_from_case(turin.replace(measurement=measurement))
    assert placements[1].element_id == NO_ID
    assert not placements[1].measures_current
    assert placements[2].measures_current


def test_default_placements_on_turin(turin: GridModel) -> None:
    placements = default_placements(turin)
    kinds = Counter(p.kind for p in placements)
    assert kinds == {MeasurementKind.METER: 12, MeasurementKind.FTU: 26, MeasurementKind.PMU: 2}
    meters = [p for p in placements if p.kind is MeasurementKind.METER]
    assert [p.element_id for p in meters] == turin.load["id"].tolist()
    assert [p.bus_id for p in meters] == turin.load["bus"].tolist()
    ftus = [p for p in placements if p.kind is MeasurementKind.FTU]
    assert [p.element_id for p in ftus] == turin.switch["id"].tolist()
    assert [p.bus_id for p in ftus] == turin.switch["from_bus"].tolist()
    assert all(p.element_end is BranchEnd.FROM for p in ftus)
    pmus = {p.device_id: p for p in placements if p.kind is MeasurementKind.PMU}
    # Each source feeds its substation transformer (HV side at the source bus).
    assert (pmus["pmu-500"].bus_id, pmus["pmu-500"].element_id) == (1, 200)
    assert (pmus["pmu-501"].bus_id, pmus["pmu-501"].element_id) == (28, 207)
    for p in placements:
        assert p.accuracy_class == DEFAULT_ACCURACY_CLASS[p.kind]
    check_placements(turin, placements)


def test_default_placements_rules_and_overrides(turin: GridModel) -> None:
    switch = turin.switch.copy()
    switch["fault_indicator"][:4] = False
    switch["remote_controllable"][:2] = False
    load = turin.load.copy()
    load["in_service"][0] = False
    model = turin.replace(switch=switch, load=load)
    placements = default_placements(model, pmus=False, accuracy_class={MeasurementKind.METER: 2.0})
    kinds = Counter(p.kind for p in placements)
    assert kinds == {MeasurementKind.METER: 11, MeasurementKind.FTU: 24}
    assert "meter-400" not in {p.device_id for p in placements}
    assert {"ftu-300", "ftu-301"}.isdisjoint(p.device_id for p in placements)
    assert all(p.accuracy_class == 2.0 for p in placements if p.kind is MeasurementKind.METER)
    assert default_placements(model, meters=False, ftus=False, pmus=False) == []


def test_pmu_measures_the_to_end_when_the_branch_ends_at_the_source(turin: GridModel) -> None:
    transformer = turin.transformer.copy()
    transformer["in_service"][0] = False  # 200 out: bus 1 touches nothing else
    line = turin.line.copy()
    line["from_bus"][0], line["to_bus"][0] = 2, 1  # a line arriving at source bus 1
    model = turin.replace(transformer=transformer, line=line)
    pmu = next(p for p in default_placements(model, meters=False, ftus=False))
    assert (pmu.bus_id, pmu.element_id, pmu.element_end) == (1, 100, BranchEnd.TO)


def test_placement_defaults_and_coercion() -> None:
    p = DevicePlacement("pmu-1", "pmu", 3, 100, "to")  # type: ignore[arg-type]
    assert p.kind is MeasurementKind.PMU
    assert p.element_end is BranchEnd.TO
    assert p.accuracy_class == DEFAULT_ACCURACY_CLASS[MeasurementKind.PMU]
    assert DevicePlacement("v-1", MeasurementKind.FTU, 3).element_id == NO_ID


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device_id": "meter 1"}, "device_id"),
        ({"device_id": "x" * 65}, "device_id"),
        ({"device_id": ""}, "device_id"),
        ({"kind": "rtu"}, "kind"),
        ({"element_end": "middle"}, "element_end"),
        ({"accuracy_class": -0.5}, "accuracy_class"),
        ({"accuracy_class": math.inf}, "accuracy_class"),
    ],
)
def test_bad_placement_fields_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"device_id": "meter-9", "kind": "meter", "bus_id": 7, **kwargs}
    with pytest.raises(PlacementError) as caught:
        DevicePlacement(**args)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert f"'{field}'" in str(caught.value)


@pytest.mark.parametrize(
    ("placement", "field", "text"),
    [
        (
            DevicePlacement("meter-x", MeasurementKind.METER, 999, 400),
            "bus_id",
            "no bus with id 999",
        ),
        (DevicePlacement("meter-x", MeasurementKind.METER, 7, 4242), "element_id", "id 4242"),
        (
            DevicePlacement("meter-x", MeasurementKind.METER, 11, 400),
            "bus_id",
            "load 400 is at bus 7",
        ),
        (
            DevicePlacement("ftu-x", MeasurementKind.FTU, 2, 300, BranchEnd.TO),
            "element_end",
            "the to end of branch 300 is at bus 3",
        ),
    ],
)
def test_bad_references_name_the_device_and_field(
    turin: GridModel, placement: DevicePlacement, field: str, text: str
) -> None:
    good = default_placements(turin)
    with pytest.raises(PlacementError) as caught:
        check_placements(turin, [*good[:3], placement, *good[3:]])
    assert caught.value.device_id == placement.device_id
    assert caught.value.field == field
    assert text in str(caught.value)
    assert placement.device_id in str(caught.value)


def test_duplicate_device_ids_are_refused(turin: GridModel) -> None:
    placements = default_placements(turin)
    with pytest.raises(PlacementError, match="used twice") as caught:
        check_placements(turin, [*placements, placements[5]])
    assert caught.value.device_id == placements[5].device_id


def test_bad_case_row_fails_when_placed(turin: GridModel) -> None:
    measurement = turin.measurement.copy()
    measurement["bus"][3] = 11  # meter 603 measures load 402 at bus 15
    with pytest.raises(PlacementError) as caught:
        placements_from_case(turin.replace(measurement=measurement))
    assert caught.value.device_id == "meter-603"
    assert caught.value.field == "bus_id"


def test_checks_count_the_other_problems(turin: GridModel) -> None:
    wrong = [DevicePlacement(f"m-{k}", MeasurementKind.METER, 10_000 + k) for k in range(5)]
    with pytest.raises(PlacementError, match="and 4 more devices") as caught:
        check_placements(turin, wrong)
    assert caught.value.device_id == "m-0"
