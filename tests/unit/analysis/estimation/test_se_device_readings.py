"""Meter agents' readings as estimator measurements: units, ends, signs, sigmas, what is left out."""

from __future__ import annotations

import math

import pytest

from openfeeder.analysis.estimation.device_readings import DeviceSite, measurements_from_readings
from openfeeder.model.cases import resolve_case

U_PHASE_V = 22_000 / math.sqrt(3)


def test_meter_ftu_and_what_is_left_out() -> None:
    model = resolve_case("turin")
    sites = [
        DeviceSite("meter-400", bus_id=7, element_id=400, accuracy_class=1.0),
        DeviceSite("ftu-300", bus_id=2, element_id=300, accuracy_class=0.5),
        DeviceSite("ftu-301", bus_id=5, element_id=301, accuracy_class=0.5),  # the 'to' end
        DeviceSite("pmu-500", bus_id=1, element_id=500, accuracy_class=0.1),  # on a source
        DeviceSite("silent", bus_id=9, element_id=None, accuracy_class=1.0),
    ]
    readings = {
        "meter-400": {"u_a": 231.0, "u_b": 229.0, "u_c": 230.0, "p": 150e3, "q": 50e3},
        "ftu-300": {"u_a": U_PHASE_V, "u_b": U_PHASE_V, "u_c": U_PHASE_V, "p": 2e6, "q": 6e5},
        "ftu-301": {"u_a": U_PHASE_V, "p": -1.5e6, "q": -4e5},
        "pmu-500": {"u_a": 127e3, "u_b": 127e3, "u_c": 127e3, "p": 4e6, "q": 1e6},
    }
    found = {r["id"]: r for r in measurements_from_readings(model, sites, readings).records()}
    assert sorted(found) == [
        "ftu-300:pq",
        "ftu-300:u",
        "ftu-301:pq",
        "ftu-301:u",
        "meter-400:pq",
        "meter-400:u",
        "pmu-500:u",
    ]
    assert found["meter-400:u"]["u_kv"] == pytest.approx(230.0 * math.sqrt(3) / 1e3)
    # class 1: ratio sigma 0.5 % per phase (1 % at two sigmas), averaged over three phases
    assert found["meter-400:u"]["u_sigma_kv"] == pytest.approx(
        0.005 * 230.0 * math.sqrt(3) / 1e3 / math.sqrt(3)
    )
    assert found["meter-400:pq"]["p_mw"] == pytest.approx(0.15)
    assert found["meter-400:pq"]["element"] == 400
    assert found["ftu-300:pq"]["end"] == "from"
    assert found["ftu-301:pq"]["end"] == "to"
    assert found["ftu-301:pq"]["p_mw"] == pytest.approx(-1.5)
    assert found["ftu-300:u"]["u_kv"] == pytest.approx(22.0)


def test_generator_power_is_its_injection() -> None:
    from openfeeder.model.synth import generate_feeders

    model = generate_feeders(buses=200, feeders=2, ties=1, seed=4)
    assert model.generator.size
    gen = model.generator[0]
    site = DeviceSite("pv", bus_id=int(gen["bus"]), element_id=int(gen["id"]), accuracy_class=1.0)
    records = measurements_from_readings(
        model,
        [site],
        {"pv": {"p": -80e3, "q": 0.0}},  # flowing out of the bus into the PV: < 0
    ).records()
    assert records[0]["p_mw"] == pytest.approx(0.08)
