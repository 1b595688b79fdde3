"""Smoke tests of every console command, in-process through ``main`` and once as a real process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openfeeder.cli import main
from openfeeder.model.case_file import case_to_dict, load_case
from openfeeder.model.cases import load_builtin


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_script_runs_as_a_process() -> None:
    exe = shutil.which("openfeeder") or str(Path(sys.executable).parent / "openfeeder")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("openfeeder, version")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "pf")
    assert code == 2
    assert "Missing argument" in err


def test_cases_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "cases", "--json")
    assert code == 0
    names = {row["name"]: row for row in json.loads(out)}
    assert names["turin"]["bus"] == 54
    assert "cigre-mv" in names


def test_pf_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pf", "turin", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["converged"] is True
    bus = doc["buses"][0]
    assert set(bus) >= {"id", "u_pu", "u_angle_deg", "energized"}
    branch = doc["branches"][0]
    assert set(branch) >= {
        "id", "i_ka", "loading_percent", "p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar",
    }  # fmt: skip
    assert len(doc["buses"]) == 54
    assert 0.95 < doc["summary"]["u_min_pu"] < 1.0


def test_pf_asym_json_has_three_phases(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pf", "turin", "--asym", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["symmetric"] is False
    assert len(doc["buses"][0]["u_pu"]) == 3


def test_pf_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pf", "turin")
    assert code == 0
    assert "converged" in out
    assert "lowest voltage" in out


def test_pf_failure_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = case_to_dict(load_builtin("turin"))
    for row in doc["components"]["load"]:
        row["p_mw"] *= 400
    path = tmp_path / "overloaded.json"
    path.write_text(json.dumps(doc))
    code, out, err = run(capsys, "pf", str(path), "--json")
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: power flow did not converge")
    assert json.loads(out)["converged"] is False


def test_validate_good_and_bad(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = case_to_dict(load_builtin("turin"))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "case", "validate", str(good))
    assert code == 0
    assert "valid (54 buses" in out

    doc["components"]["line"][0]["length_km"] = -1
    doc["components"]["line"][1]["to_bus"] = 12345
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, _, err = run(capsys, "case", "validate", str(bad))
    assert code == 1
    assert "line 101: field 'to_bus': refers to unknown bus 12345" in err
    assert "line 100: field 'length_km': must be > 0, got -1" in err


def test_missing_case_file_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "topology", str(tmp_path / "nope.json"))
    assert code == 1
    assert "no such file" in err


def test_unknown_builtin_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "pf", "atlantis")
    assert code == 1
    assert "no built-in case 'atlantis'" in err


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "case", "schema")
    assert code == 0
    assert json.loads(out)["properties"]["format"]["const"] == "openfeeder-case"


def test_synth_then_topology(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "synth.json"
    code, out, _ = run(
        capsys, "case", "synth", "--buses", "500", "--feeders", "6", "--ties", "3",
        "--seed", "4", "-o", str(path),
    )  # fmt: skip
    assert code == 0
    assert "500 buses" in out
    assert load_case(path).bus.size == 500
    code, out, _ = run(capsys, "topology", str(path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["feeders"]) == 6
    assert len(doc["ties"]) == 3
    assert doc["radial"] is True


def test_synth_impossible_parameters_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "case", "synth", "--buses", "20", "--feeders", "30", "-o", str(tmp_path / "x")
    )
    assert code == 2
    assert "buses" in err


def test_topology_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "topology", "turin")
    assert code == 0
    assert "radial" in out
    assert "feeders" in out


def test_export_import_pandapower(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("pandapower")
    net = tmp_path / "net.json"
    code, _, _ = run(capsys, "case", "export", "pandapower", "turin", "-o", str(net))
    assert code == 0
    back = tmp_path / "back.json"
    code, _, _ = run(capsys, "case", "import", "pandapower", str(net), "-o", str(back))
    assert code == 0
    assert load_case(back).bus.size == 54


def test_export_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "cigre.json"
    code, _, _ = run(capsys, "case", "export", "json", "cigre-mv", "-o", str(path))
    assert code == 0
    assert load_case(path).name == "cigre-mv"


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """The self-healing demo, secured (the default): every party on mutual TLS 1.3 with the ACL,
    devices enrolled for their certificates; the fault is located and healed."""
    code, out, _ = run(capsys, "demo", "--normal", "2", "--speed", "2", "--json")
    assert code == 0
    assert "OpenFeeder demo: turin (secured" in out
    assert "embedded broker mqtts://127.0.0.1:" in out
    assert "catalog https://127.0.0.1:" in out
    assert "FLISR coordinator (central) at https://127.0.0.1:" in out
    assert "fault located: section [14, 16], line 103" in out
    summary = json.loads(out.strip().splitlines()[-1])
    incident = summary["incident"]
    assert incident["status"] == "restored"
    assert sorted(incident["locked_switches"]) == [306, 307]
    # every customer of feeder 300 lost supply; all are back (the faulted section feeds none)
    assert summary["interrupted_customers"] == 695
    assert summary["restored_customers"] == 695
    assert summary["isolated_customers"] == 0
    assert summary["platform_ms"] > 0
    assert summary["end_to_end_ms"] > summary["mechanism_ms"] + summary["protection_ms"]
    assert summary["historian_messages"] > 0
    assert "IEC 61850-5 TT" in out


def test_demo_rejects_a_malformed_fault(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--fault", "103-100")
    assert code == 1
    assert "--fault '103-100': expected LINE_ID@DISTANCE_M" in err


def test_demo_metering_platform(capsys: pytest.CaptureFixture[str]) -> None:
    """The whole platform in one process: meters boot, stream, get an algorithm, are stored;
    ``--insecure`` runs it in plain text and the header says so."""
    code, out, _ = run(capsys, "demo", "--meters", "3", "--seconds", "4", "--insecure")
    assert code == 0
    assert "OpenFeeder demo: turin (INSECURE" in out
    assert "embedded broker mqtt://127.0.0.1:" in out
    assert "metering platform: 3 meters" in out
    assert "assigned it to 1 meters" in out
    rows = [line for line in out.splitlines() if line.startswith("│ meter-")]
    assert len(rows) == 3
    for row in rows:
        cells = [cell.strip() for cell in row.strip("│").split("│")]
        produced, stored, committed = int(cells[2]), int(cells[3]), int(cells[4])
        assert produced >= 4  # 0.5 s reporting interval for 4 s
        assert produced - 3 <= stored <= produced
        assert committed >= produced - 4
    assert "energy 1.0.0" in rows[0]
    assert " 0 rejected, 0 sequence gaps" in out
