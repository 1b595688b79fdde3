"""``openfeeder keys ...`` and ``openfeeder audit ...`` end to end, through ``main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openfeeder.cli import main
from openfeeder.security.keys import KeyStore, load_master_key, open_issued_bundle


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def keys_args(tmp_path: Path) -> list[str]:
    return [
        "keys",
        "--dir",
        str(tmp_path / "store"),
        "--master-key",
        str(tmp_path / "master.key"),
        "--audit-log",
        str(tmp_path / "audit.log"),
        "--audit-key",
        str(tmp_path / "audit.key"),
        "--actor",
        "alice",
    ]


def test_key_lifecycle_through_the_cli_is_audited_and_verifiable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys_args: list[str]
) -> None:
    assert run(capsys, "audit", "keygen", str(tmp_path / "audit.key"))[0] == 0
    code, out, _ = run(capsys, *keys_args, "init", "--new-master-key", str(tmp_path / "master.key"))
    assert code == 0, out
    assert "key store created" in out
    assert run(capsys, *keys_args, "create", "control/fsw-1", "--algorithm", "aes-256-gcm")[0] == 0
    assert run(capsys, *keys_args, "create", "protection", "--algorithm", "sm4-gcm")[0] == 0
    code, out, _ = run(capsys, *keys_args, "rotate", "control/fsw-1", "--overlap-s", "0")
    assert code == 0
    assert out.startswith("control/fsw-1@2: active")
    code, out, _ = run(capsys, *keys_args, "list", "--json")
    states = {row["key_id"]: row["state"] for row in json.loads(out)}
    assert states == {
        "control/fsw-1@1": "archived",
        "control/fsw-1@2": "active",
        "control/fsw-1@3": "next",
        "protection@1": "active",
        "protection@2": "next",
    }
    backup = tmp_path / "keys.backup"
    assert run(capsys, *keys_args, "backup", str(backup))[1].startswith(f"{backup}: 5 keys")
    code, _, err = run(capsys, *keys_args, "destroy", "control/fsw-1@1")
    assert code == 2
    assert "--yes" in err
    assert run(capsys, *keys_args, "destroy", "control/fsw-1@1", "--yes")[0] == 0
    code, out, _ = run(capsys, *keys_args, "recover", str(backup))
    assert "restored 0 keys" in out  # the destroyed key stays destroyed

    bundle, kek = tmp_path / "fsw-1.keys.json", tmp_path / "fsw-1.kek"
    code, out, _ = run(
        capsys, *keys_args, "issue", "fsw-1", "-o", str(bundle), "--kek-out", str(kek)
    )
    assert code == 0
    ring = open_issued_bundle(json.loads(bundle.read_text()), kek=load_master_key(kek))
    assert ring.key_ids() == ["control/fsw-1@2", "control/fsw-1@3", "protection@1", "protection@2"]
    code, out, _ = run(capsys, *keys_args, "export", "protection@1", "--wrapping-key", str(kek))
    assert json.loads(out)["wrap"] == "aes-kwp"

    log = str(tmp_path / "audit.log")
    code, out, _ = run(
        capsys, "audit", "verify", log, "--public-key", str(tmp_path / "audit.key.pub")
    )
    assert code == 0, out
    assert "intact" in out
    assert "0 after the last checkpoint" in out
    code, out, _ = run(capsys, "audit", "show", log, "--kind", "key", "--json")
    actions = [json.loads(line)["action"] for line in out.splitlines()]
    assert actions[:4] == ["init", "create", "create", "rotate"]
    assert "destroy" in actions
    assert all(json.loads(line)["actor"] == "alice" for line in out.splitlines())


def test_audit_verify_names_the_edited_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys_args: list[str]
) -> None:
    assert run(capsys, "audit", "keygen", str(tmp_path / "audit.key"))[0] == 0
    assert run(capsys, *keys_args, "init", "--new-master-key", str(tmp_path / "master.key"))[0] == 0
    assert run(capsys, *keys_args, "create", "control", "--algorithm", "aes-256-gcm")[0] == 0
    log = tmp_path / "audit.log"
    lines = log.read_text().splitlines()
    record = json.loads(lines[0])
    record["actor"] = "mallory"
    lines[0] = json.dumps(record)
    log.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "audit", "verify", str(log))
    assert code == 1
    assert "line 1: entry 1 was modified" in err
    assert "1 problems" in out
    code, out, _ = run(capsys, "audit", "verify", str(log), "--json")
    assert code == 1
    assert json.loads(out)["problems"][0]["seq"] == 1


def test_keys_without_a_store_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "keys", "list")
    assert code == 2
    assert "key_dir" in err
    code, _, err = run(capsys, "keys", "--dir", str(tmp_path), "list")
    assert code == 1
    assert "OPENFEEDER_MASTER_KEY" in err or "no key store" in err


def test_checkpoint_command_signs_the_head(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    master = tmp_path / "m.key"
    assert run(capsys, "audit", "keygen", str(tmp_path / "a.key"))[0] == 0
    assert (
        run(
            capsys,
            "keys",
            "--dir",
            str(tmp_path / "s"),
            "--master-key",
            str(master),
            "--audit-log",
            str(tmp_path / "a.log"),
            "init",
            "--new-master-key",
            str(master),
        )[0]
        == 0
    )
    KeyStore(tmp_path / "s", master_key=load_master_key(master))
    code, out, _ = run(
        capsys,
        "audit",
        "checkpoint",
        str(tmp_path / "a.log"),
        "--signing-key",
        str(tmp_path / "a.key"),
    )
    assert code == 0
    assert "checkpoint 2 signed" in out
    code, out, _ = run(capsys, "audit", "show", str(tmp_path / "a.log"))
    assert code == 0
    assert "checkpoint" in out
