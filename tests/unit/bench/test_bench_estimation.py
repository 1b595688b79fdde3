"""``python -m bench.estimation``: every engine solves the same problem (a small size, in-process
for the jobs, and one run of the whole runner with its subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.estimation import main, run_job, run_paired

pytestmark = pytest.mark.slow


def test_every_engine_estimates_the_same_grid_within_the_noise() -> None:
    rows = {engine: run_job(engine, 300, 1) for engine in ("openfeeder", "pgm", "pandapower")}
    for row in rows.values():
        assert row["buses"] == 300
        assert row["u_max_error_pu"] < 3e-3  # class 0.5 / 1 voltages: the noise allows this much
    # openfeeder hands power-grid-model exactly the sensors of the raw run: the same estimate
    assert rows["openfeeder"]["u_max_error_pu"] == rows["pgm"]["u_max_error_pu"]


def test_runner_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "estimation.json"
    code = main(
        ["--sizes", "200", "--engines", "openfeeder,pgm", "--repeat", "1", "--out", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert [row["engine"] for row in report["rows"]] == ["openfeeder", "pgm"]
    assert all("cold_seconds" in row and "warm_seconds" in row for row in report["rows"])
    ours = report["rows"][0]
    # openfeeder also reports a never-seen model and warm calls with every table materialized
    assert ours["first_seconds"] > 0.0
    assert ours["warm_as_dict_seconds"] > 0.0


def test_paired_run_times_both_engines_call_by_call() -> None:
    row = run_paired(200, 3)
    assert row["buses"] == 200
    for mode in ("cold", "warm"):
        ratios = row[mode]["ratios"]
        assert len(ratios) == 3
        assert all(r > 0.0 for r in ratios)
        low, high = row[mode]["ratio_quartiles"]
        assert low <= row[mode]["ratio_median"] <= high
        assert sorted(ratios)[1] == row[mode]["ratio_median"]  # three pairs: the middle one


def test_runner_reports_the_pairs_per_size(tmp_path: Path) -> None:
    out = tmp_path / "estimation.json"
    args = ["--sizes", "150,200", "--engines", "pgm", "--repeat", "1", "--paired", "2"]
    assert main([*args, "--out", str(out)]) == 0
    paired = json.loads(out.read_text())["paired"]
    assert [row["buses"] for row in paired] == [150, 200]
    assert all(len(row["cold"]["ratios"]) == len(row["warm"]["ratios"]) == 2 for row in paired)
