"""``python -m bench.estimation_cycle``: a quick run through the embedded broker writes a report
with complete cycles and the level steps' compute times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.estimation_cycle import main

pytestmark = pytest.mark.slow


def test_quick_run_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "estimation_cycle.json"
    assert main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    cycles = report["live"]["cycles"]
    assert len(cycles) == 2
    assert all(c["areas_reported"] == 14 and c["estimated_buses"] == 54 for c in cycles)
    assert all(c["end_to_end_ms"] > 0 and c["mv_final_ms"] is not None for c in cycles)
    assert sorted(set(report["live"]["areas"].values())) == ["lv", "mv"]
    assert len(report["compute"]["mv_step_ms"]) == 2
