"""The twin in study mode: deterministic runs, faults with protection and COMTRADE, events."""

from __future__ import annotations

from pathlib import Path

import comtrade
import numpy as np
import pytest

from openfeeder.sim.scenario import load_scenario, parse_scenario
from openfeeder.sim.twin import Twin


def _short(seed: int, *, events: list[dict[str, object]] | None = None) -> Twin:
    return Twin(
        parse_scenario(
            {
                "scenario": {
                    "name": "t",
                    "case": "turin",
                    "start": "2026-01-14T17:00:00+01:00",
                    "duration_s": 120,
                    "step_s": 10,
                    "seed": seed,
                },
                "devices": {"dropout_probability": 0.05},
                "events": events or [],
            }
        )
    )


def _readings(twin: Twin, tmp_path: Path) -> dict[str, np.ndarray]:
    twin.run_study(output_dir=tmp_path, write_measurements=True)
    with np.load(tmp_path / "measurements.npz") as data:
        return {name: data[name] for name in data.files}


def test_same_seed_same_measurements_different_seed_different_noise(tmp_path: Path) -> None:
    first = _readings(_short(7), tmp_path / "a")
    again = _readings(_short(7), tmp_path / "b")
    other = _readings(_short(8), tmp_path / "c")
    assert first["u_v"].shape == (12, 40, 3)
    for name in ("u_v", "i_a", "t_ns", "valid"):
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(np.nan_to_num(first["u_v"]), np.nan_to_num(other["u_v"]))
    # the true state does not depend on the noise seed only through the profiles' individuality:
    # same seed, same truth
    np.testing.assert_array_equal(first["u_true_v"], again["u_true_v"])
    # dropouts happen at about the configured rate
    assert 0.01 < 1.0 - first["valid"].mean() < 0.12


def test_the_load_follows_the_profile_over_a_day() -> None:
    run = Twin(load_scenario("turin-normal-day")).run_study()
    load = run.summary["load_p_mw"]
    hours = (run.summary["t_ns"] - run.summary["t_ns"][0]) / 3.6e12
    night = load[(hours >= 2) & (hours < 5)].mean()
    evening = load[(hours >= 19) & (hours < 22)].mean()
    assert evening > 1.3 * night
    assert run.summary["u_min_pu"].min() > 0.9
    assert [e.kind for e in run.timeline].count("switch_operated") == 4


def test_a_permanent_ground_fault_trips_recloses_locks_out_and_writes_comtrade(
    tmp_path: Path,
) -> None:
    twin = Twin(load_scenario("turin-fault-slg"))
    run = twin.run_study(output_dir=tmp_path)
    (record,) = run.faults
    assert record.timeline.tripped_breaker == 300
    assert record.timeline.locked_out
    actions = [
        (e.detail["switch"], e.detail["action"]) for e in run.timeline if e.kind == "protection"
    ]
    assert actions == [(300, "open"), (300, "close"), (300, "open")]
    assert not twin.world.switch_closed(300)
    latched = {s for s, flag in record.timeline.fault_indicators.items() if flag.latched}
    assert {300, 301, 302, 303, 304} == latched  # the path from the breaker to the fault
    # after the lockout the faulted feeder is dead, the other one still supplied
    state = twin.world.phasors()
    dead = np.abs(state.u_v[state.bus_rows([12])]).max()
    alive = np.abs(state.u_v[state.bus_rows([40])]).min()
    assert dead == 0.0
    assert alive > 1000.0
    cfg, dat = record.comtrade
    rec = comtrade.Comtrade()
    rec.load(str(cfg), str(dat))
    assert rec.frequency == 50.0
    assert rec.cfg.sample_rates[0][0] == 4000
    assert rec.analog_count == 6 * len({300, 301, 302, 303, 304})
    # the breaker's phase-a current rises well above its load current during the fault
    current = np.abs(np.asarray(rec.analog[3]))
    assert current.max() > 5 * np.percentile(current[:300], 95)  # 0.1 s pre-fault


@pytest.mark.parametrize(
    ("name", "trips"),
    [
        ("turin-fault-ll", True),
        ("turin-fault-arc", True),
        ("turin-fault-compound", True),
        ("turin-fault-open", False),
        ("turin-fault-open-ground", False),
    ],
)
def test_every_shipped_fault_scenario_runs(name: str, trips: bool, tmp_path: Path) -> None:
    twin = Twin(load_scenario(name))
    run = twin.run_study(output_dir=tmp_path)
    (record,) = run.faults
    assert (record.timeline.tripped_breaker is not None) is trips
    assert all(path.exists() for path in record.comtrade)
    if not trips:  # the unisolated fault holds the grid in its unbalanced state
        state = twin.world.phasors()
        u = np.abs(state.u_v)
        energized = u.max(axis=1) > 0
        spread = (u.max(axis=1) - u.min(axis=1))[energized] / u.max(axis=1)[energized]
        assert spread.max() > 0.05


def test_a_device_outage_silences_that_device_only(tmp_path: Path) -> None:
    twin = _short(
        3, events=[{"at_s": 30, "type": "device_outage", "device": "meter-405", "duration_s": 40}]
    )
    data = _readings(twin, tmp_path)
    column = list(data["device_id"]).index("meter-405")
    t = (data["t_true_ns"] - data["t_true_ns"][0]) / 1e9
    out = (t >= 30) & (t < 70)
    assert not data["valid"][out, column].any()
    assert data["valid"][~out, column].sum() > 0
