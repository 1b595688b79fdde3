"""Twin scenarios: the shipped files load, bad ones are refused with the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfeeder.errors import ScenarioError
from openfeeder.sim.scenario import FaultEvent, builtin_scenarios, load_scenario, parse_scenario

MINIMAL = """
[scenario]
name = "t"
case = "turin"
duration_s = 60
"""


def test_every_shipped_scenario_loads_and_builds_its_grid() -> None:
    shipped = builtin_scenarios()
    assert {
        "turin-normal-day",
        "turin-fault-slg",
        "turin-fault-ll",
        "turin-fault-open",
        "turin-fault-open-ground",
        "turin-fault-arc",
        "turin-fault-compound",
        "synthetic-1000-day",
    } <= set(shipped)
    for name in shipped:
        scenario = load_scenario(name)
        model = scenario.build_model()
        assert model.bus.size > 0
    synthetic = load_scenario("synthetic-1000-day").build_model()
    assert synthetic.bus.size == 1000


def test_shipped_fault_scenarios_cover_the_five_fault_kinds_of_seed_000() -> None:
    kinds = set()
    for name in builtin_scenarios():
        kinds |= {e.kind for e in load_scenario(name).events if isinstance(e, FaultEvent)}
    assert {"slg", "ll", "open", "open_ground", "arc", "compound"} <= kinds


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_scenario_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, MINIMAL))
    assert scenario.scenario.steps == 60
    assert scenario.scenario.speed == "max"
    assert scenario.devices.placement == "default"


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("\n[devices]\nplacment = 'case'\n", "devices.placment"),
        (
            "\n[[events]]\nat_s = 10\ntype = 'fault'\nkind = 'slg'\nline = 999\ndistance_m = 1\n",
            "events[0].line",
        ),
        (
            "\n[[events]]\nat_s = 10\ntype = 'fault'\nkind = 'slg'\nline = 102\ndistance_m = 900\n",
            "events[0].distance_m",
        ),
        (
            "\n[[events]]\nat_s = 10\ntype = 'switch'\nswitch = 1\naction = 'open'\n",
            "events[0].switch",
        ),
        (
            "\n[[events]]\nat_s = 10\ntype = 'switch'\nswitch = 301\naction = 'toggle'\n",
            "events[0].action",
        ),
        (
            "\n[[events]]\nat_s = 100\ntype = 'switch'\nswitch = 301\naction = 'open'\n",
            "after the end",
        ),
        (
            "\n[[events]]\nat_s = 1\ntype = 'fault'\nkind = 'compound'\nline = 102\ndistance_m = 5\n",
            "evolve_to",
        ),
        ("\n[waveforms]\nsampling_rate_hz = 1000\n", "waveforms.sampling_rate_hz"),
        ("\n[network.class.meas]\nloss = 2.0\n", "network.class.meas.loss"),
    ],
)
def test_bad_scenarios_name_the_file_and_the_key(tmp_path: Path, extra: str, where: str) -> None:
    path = _write(tmp_path, MINIMAL + extra)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path).build_model()
    message = str(caught.value)
    assert str(path) in message
    assert where in message


def test_unknown_case_invalid_toml_and_missing_grid(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"scenario\.case"):
        load_scenario(_write(tmp_path, MINIMAL.replace("turin", "atlantis"))).build_model()
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(_write(tmp_path, "[scenario\n"))
    with pytest.raises(ScenarioError, match="exactly one of case"):
        parse_scenario({"scenario": {"name": "x", "duration_s": 1}})
    with pytest.raises(ScenarioError, match="no scenario file or shipped scenario 'nope'"):
        load_scenario("nope")
