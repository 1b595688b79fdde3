"""``openfeeder twin``: list scenarios, run one, refuse bad ones with the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openfeeder.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_twin_scenarios_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "twin", "scenarios")
    assert code == 0
    assert "turin-fault-compound" in out
    assert "synthetic-1000-day" in out


def test_twin_run_json_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "twin", "run", "turin-fault-ll", "-o", str(tmp_path), "--json")
    assert code == 0
    document = json.loads(out)
    assert document["devices"] == 40
    assert document["steps"] == 60
    (fault,) = document["faults"]
    assert fault["tripped_breaker"] == 313
    assert fault["locked_out"] is True
    kinds = [entry["kind"] for entry in document["timeline"]]
    assert kinds[0] == "fault"
    assert "lockout" in kinds
    assert (tmp_path / "fault00.cfg").exists()
    timeline = json.loads((tmp_path / "timeline.json").read_text(encoding="utf-8"))
    assert [e["kind"] for e in timeline] == kinds


def test_twin_run_refuses_bad_scenarios(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[scenario]\nname = "x"\ncase = "turin"\nduration_s = -1\n', encoding="utf-8")
    code, _, err = run(capsys, "twin", "run", str(path))
    assert code == 1
    assert str(path) in err
    assert "scenario.duration_s" in err
    code, _, err = run(capsys, "twin", "run", "turin-fault-slg", "--live")
    assert code == 1
    assert "a live run needs 'realtime' or a factor" in err
