"""``openfeeder se`` and ``openfeeder twin measurements``: files in, estimates out, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from openfeeder.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def turin_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("se") / "turin.json"
    assert main(["twin", "measurements", "turin-normal-day", "-o", str(path), "--at", "68400"]) == 0
    return path


def test_twin_writes_a_measurement_file_with_the_true_state(turin_file: Path) -> None:
    document = json.loads(turin_file.read_text())
    assert document["format"] == "openfeeder-measurements"
    assert document["version"] == 1
    assert document["case"] == "turin"
    ids = [m["id"] for m in document["measurements"]]
    assert any(i.startswith("meter-") and i.endswith(":pq") for i in ids)
    assert any(i.endswith(":u_phasor") for i in ids)
    assert any(i.endswith(":i_phasor") for i in ids)
    assert len(document["truth"]["buses"]) == 54


def test_se_json_estimates_within_the_noise(
    capsys: pytest.CaptureFixture[str], turin_file: Path
) -> None:
    code, out, err = run(capsys, "se", "turin", "--measurements", str(turin_file), "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["summary"]["estimated_buses"] == 54
    assert document["summary"]["chi_square"]["passed"] is True
    assert document["summary"]["bad_data_removed"] == []
    truth = document["against_truth"]
    assert truth["u_within_3_sigma"] >= 0.95
    assert truth["angle_within_3_sigma"] >= 0.95
    assert truth["u_max_error_pu"] < 2e-3
    bus = document["buses"][0]
    assert set(bus) == {
        "id",
        "energized",
        "observable",
        "u_pu",
        "u_kv",
        "u_angle_deg",
        "u_sigma_pu",
        "u_angle_sigma_deg",
    }
    assert {"loads", "branches", "sources", "measurements", "observability"} <= set(document)


def test_se_text_report(capsys: pytest.CaptureFixture[str], turin_file: Path) -> None:
    code, out, _ = run(capsys, "se", "turin", "-m", str(turin_file))
    assert code == 0
    assert "State estimation turin" in out
    assert "chi-square test" in out
    assert "against the true state" in out
    assert "lowest voltages" in out


def test_se_finds_a_gross_error_written_into_the_file(
    capsys: pytest.CaptureFixture[str], turin_file: Path, tmp_path: Path
) -> None:
    document: dict[str, Any] = json.loads(turin_file.read_text())
    record = next(m for m in document["measurements"] if m["id"] == "ftu-313:u")
    record["u_kv"] += 30 * record["u_sigma_kv"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    code, out, err = run(capsys, "se", "turin", "-m", str(path), "--json")
    assert code == 0, err
    removed = json.loads(out)["summary"]["bad_data_removed"]
    assert [r["id"] for r in removed] == ["ftu-313:u"]


def _write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "m.json"
    path.write_text(content)
    return path


def test_malformed_json_names_the_file_and_position(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _write(tmp_path, '{"format": "openfeeder-measurements", "version": 1,')
    code, _, err = run(capsys, "se", "turin", "-m", str(path))
    assert code == 1
    assert str(path) in err
    assert "not valid JSON (line 1" in err


def test_unknown_element_names_measurement_element_and_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    document = {
        "format": "openfeeder-measurements",
        "version": 1,
        "measurements": [
            {"id": "v", "quantity": "u", "bus": 1, "u_kv": 22.0, "u_sigma_kv": 0.05},
            {"id": "x", "quantity": "pq", "element": 77777, "p_mw": 1.0, "q_mvar": 0.1,
             "accuracy_class": 1},
        ],
    }  # fmt: skip
    path = _write(tmp_path, json.dumps(document))
    code, _, err = run(capsys, "se", "turin", "-m", str(path))
    assert code == 1
    assert f"{path}: measurement 1 (id 'x'): element 77777: field 'element'" in err
    assert err.count("\n") == 1  # one clear line


def test_missing_file_and_bad_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "se", "turin", "-m", str(tmp_path / "none.json"))
    assert code == 1
    assert "cannot read" in err
    path = _write(
        tmp_path, '{"format": "openfeeder-measurements", "version": 9, "measurements": []}'
    )
    code, _, err = run(capsys, "se", "turin", "-m", str(path))
    assert code == 1
    assert "field 'version'" in err


def test_twin_measurements_outside_the_scenario(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "twin", "measurements", "turin-normal-day", "-o", str(tmp_path / "m.json"),
        "--at", "999999",
    )  # fmt: skip
    assert code == 1
    assert "outside the scenario" in err


def test_seed_changes_the_noise(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path, seed in ((first, "1"), (second, "2")):
        code, out, _ = run(
            capsys, "twin", "measurements", "turin-normal-day", "-o", str(path), "--seed", seed
        )
        assert code == 0
        assert "with the true state" in out
    a = json.loads(first.read_text())["measurements"]
    b = json.loads(second.read_text())["measurements"]
    values_a = {m["id"]: m for m in a}
    common = [m for m in b if m["id"] in values_a]
    assert len(common) > 0.9 * len(a)  # the same devices (a rare reading may be lost)
    assert all(m != values_a[m["id"]] for m in common if m["id"].endswith(":u"))
