"""The distributed estimator's level messages: what a level sends is what its peer reads."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from openfeeder.analysis.estimation import (
    AreaEstimate,
    Equivalent,
    Level,
    MeasurementSet,
    estimate_area,
    partition_areas,
)
from openfeeder.analysis.estimation.hierarchical import area_measurements
from openfeeder.analysis.powerflow import run_power_flow
from openfeeder.errors import MessagingError
from openfeeder.iot import agent
from openfeeder.iot.estimation_messages import (
    LEVEL_ALGORITHMS,
    LEVEL_VERSION,
    PART_BUSES,
    FinalAssembly,
    FinalPart,
    final_parts,
    manifest_outputs,
    read_final_part,
    read_up,
    up_readings,
)
from openfeeder.iot.schema import AlgorithmOutput, Reading, decode, encode
from openfeeder.model.cases import resolve_case

TOPIC = "openfeeder/v1/algo/meter-7/se_lv"


def _lv_201() -> tuple[AreaEstimate, AreaEstimate]:
    """lv-201's first estimate (a meter with voltage and power at its LV bus) and mv-500's."""
    model = resolve_case("turin")
    flow = run_power_flow(model)
    load = model.load[model.load["bus"] == 7][0]
    row = int((flow.load["id"] == load["id"]).argmax())
    bus = int((flow.bus["id"] == 7).argmax())
    measured = MeasurementSet.from_records(
        [
            {
                "id": "meter-7:pq",
                "quantity": "pq",
                "element": int(load["id"]),
                "p_mw": float(flow.load["p_mw"][row]),
                "q_mvar": float(flow.load["q_mvar"][row]),
                "p_sigma_mw": 0.001,
                "q_sigma_mvar": 0.001,
            },
            {
                "id": "meter-7:u",
                "quantity": "u",
                "bus": 7,
                "u_kv": float(flow.bus["u_kv"][bus]),
                "u_sigma_kv": 0.002,
            },
        ]
    )
    parts = partition_areas(model)
    own = area_measurements(model, parts, measured)
    child = estimate_area(model, parts, "lv-201", own["lv-201"], uncertainty=False)
    assert child.equivalent is not None
    parent = estimate_area(
        model, parts, "mv-500", own["mv-500"], children={"lv-201": child.equivalent}
    )
    return child, parent


def _sent(readings: tuple[Reading, ...]) -> AlgorithmOutput:
    message = AlgorithmOutput(
        device_id="meter-7",
        seq=1,
        t_ns=1,
        algorithm="se_lv",
        algorithm_version=LEVEL_VERSION,
        outputs=readings,
    )
    received = decode(AlgorithmOutput.message_class, encode(message), topic=TOPIC)
    assert isinstance(received, AlgorithmOutput)
    return received


def test_equivalent_and_final_state_survive_the_codec() -> None:
    child, parent = _lv_201()
    sent = child.equivalent
    assert sent is not None
    assert sent.carries_voltage
    received = read_up("lv-201", 5, _sent(up_readings(3, 2, child)))
    assert received is not None
    for name in ("p_mw", "q_mvar", "p_sigma_mw", "q_sigma_mvar", "u_pu", "u_sigma_pu"):
        assert getattr(received, name) == pytest.approx(getattr(sent, name), rel=1e-9)
    for name in ("rho_pq", "rho_up", "rho_uq"):
        assert getattr(received, name) == pytest.approx(getattr(sent, name), abs=1e-12)
    assert read_final_part(_sent(up_readings(3, 2, child)), buses=2, children=0) is None

    area = parent.area
    (only,) = final_parts(3, 2, parent)
    part = read_final_part(_sent(only), buses=area.bus_ids.size, children=len(area.children))
    assert part is not None
    assert (part.cycle, part.topology_version, part.part, part.parts) == (3, 2, 0, 1)
    final = FinalAssembly().add(part)
    assert final is not None
    assert final.u_pu == pytest.approx(parent.u_pu.tolist())
    state = final.children[area.children.index("lv-201")]
    assert state.p_mw == pytest.approx(parent.children["lv-201"].p_mw)
    assert read_up("lv-201", 5, _sent(only)) is None


def _large_area(buses: int) -> AreaEstimate:
    """An MV area of ``buses`` buses with two children (its estimate's numbers made up: only
    their transport is under test)."""
    _, parent = _lv_201()
    area = dataclasses.replace(
        parent.area,
        bus_ids=np.arange(1000, 1000 + buses),
        children=("lv-201", "lv-202"),
    )
    child = parent.children["lv-201"]
    return dataclasses.replace(
        parent,
        area=area,
        u_pu=np.linspace(0.95, 1.05, buses),
        u_angle_deg=np.linspace(-3.0, 0.0, buses),
        u_sigma_pu=np.full(buses, 0.001),
        children={"lv-201": child, "lv-202": dataclasses.replace(child, p_mw=0.25)},
    )


def _part(readings: tuple[Reading, ...], *, buses: int) -> FinalPart:
    part = read_final_part(_sent(readings), buses=buses, children=2)
    assert part is not None
    return part


@pytest.mark.parametrize("buses", [PART_BUSES, PART_BUSES + 1, 3 * PART_BUSES + 37])
def test_a_large_area_sends_its_final_state_in_parts(buses: int) -> None:
    result = _large_area(buses)
    parts = final_parts(7, 4, result)
    assert len(parts) == -(-buses // PART_BUSES)
    assert all(len(readings) <= 1024 for readings in parts)
    read = [_part(p, buses=buses) for p in parts]
    assert [p.offset for p in read] == list(range(0, buses, PART_BUSES))
    assembly = FinalAssembly()
    finals = [assembly.add(p) for p in reversed(read)]  # in any order
    assert finals[:-1] == [None] * (len(read) - 1)
    final = finals[-1]
    assert final is not None
    assert final.u_pu == pytest.approx(result.u_pu.tolist(), rel=1e-12)
    assert final.u_angle_deg == pytest.approx(result.u_angle_deg.tolist(), rel=1e-12)
    assert [c.p_mw for c in final.children] == pytest.approx([result.children["lv-201"].p_mw, 0.25])


def test_parts_of_two_cycles_are_kept_apart() -> None:
    result = _large_area(450)
    old, new = ([_part(p, buses=450) for p in final_parts(cycle, 0, result)] for cycle in (1, 2))
    assembly = FinalAssembly()
    assert assembly.add(new[0]) is None
    assert assembly.add(old[0]) is None  # a late part of cycle 1
    assert assembly.add(new[1]) is None
    final = assembly.add(new[2])
    assert final is not None
    assert final.cycle == 2
    assert final.u_pu == pytest.approx(result.u_pu.tolist())


def test_a_part_that_does_not_fit_the_area_is_named() -> None:
    parts = final_parts(1, 0, _large_area(450))
    with pytest.raises(MessagingError, match=r"part 1 of 3 .* area of 300 buses"):
        read_final_part(_sent(parts[1]), buses=300, children=2)


def test_a_missing_channel_is_named() -> None:
    child, _ = _lv_201()
    readings = tuple(r for r in up_readings(1, 0, child) if r.channel != "r_up")
    with pytest.raises(MessagingError, match="r_up"):
        read_up("lv-201", 5, _sent(readings))


def test_an_area_without_voltage_sends_invalid_voltage_channels() -> None:
    child, _ = _lv_201()
    no_voltage = child.equivalent
    assert no_voltage is not None
    blind = AreaEstimate(
        area=child.area,
        u_pu=child.u_pu,
        u_angle_deg=child.u_angle_deg,
        u_sigma_pu=child.u_sigma_pu,
        equivalent=Equivalent(
            "lv-201", 5, no_voltage.p_mw, no_voltage.q_mvar, 0.01, 0.01, rho_pq=0.1
        ),
        children={},
        final=False,
        estimate=child.estimate,
    )
    received = read_up("lv-201", 5, _sent(up_readings(1, 0, blind)))
    assert received is not None
    assert not received.carries_voltage
    assert math.isnan(received.rho_up)
    assert received.rho_pq == pytest.approx(0.1)


@pytest.mark.parametrize("level", list(Level))
def test_level_manifests_declare_the_messages(level: Level) -> None:
    name = LEVEL_ALGORITHMS[level]
    manifest = json.loads(
        (Path(agent.__file__).parent / "algorithms" / name / "manifest.json").read_text()
    )
    assert manifest["version"] == LEVEL_VERSION
    assert manifest["outputs"] == manifest_outputs()
    module = __import__(f"openfeeder.iot.agent.algorithms.{name}.{name}", fromlist=["x"])
    entry = getattr(module, manifest["entry"].split(":")[1])
    assert entry.LEVEL is level
