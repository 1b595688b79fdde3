"""``python -m bench.flisr --quick``: two random faults on turin through the whole platform."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.flisr import main, random_faults

from openfeeder.model.cases import resolve_case

pytestmark = pytest.mark.slow


def test_random_faults_are_seeded_bolted_and_on_energized_lines() -> None:
    model = resolve_case("turin")
    faults = random_faults(model, 6, seed=5)
    assert faults == random_faults(model, 6, seed=5)
    lengths_m = dict(
        zip(model.line["id"].tolist(), (model.line["length_km"] * 1e3).tolist(), strict=True)
    )
    for fault in faults:
        assert fault["kind"] in ("slg", "ll", "lll")
        assert 0 < fault["distance_m"] < lengths_m[fault["line"]]


def test_quick_run_restores_and_clears_every_fault(tmp_path: Path) -> None:
    out = tmp_path / "flisr.json"
    code = main(
        [
            "--quick",
            "--cases",
            "turin",
            "--brokers",
            "embedded",
            "--variants",
            "central",
            "--congestion",
            "",
            "--no-compute",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    (row,) = report["live"]
    assert (row["case"], row["broker"], row["variant"], row["congestion"]) == (
        "turin",
        "embedded",
        "central",
        None,
    )
    assert row["faults"] == row["restored"] == row["cleared"] == 2
    for record in row["records"]:
        assert record["status"] == "restored"
        assert record["section_right"]
        # the platform's share is what is left of end to end after protection and mechanisms
        parts = record["protection_ms"] + record["mechanism_ms"] + record["platform_ms"]
        assert parts == pytest.approx(record["end_to_end_ms"])
    assert report["compute"] == []
