"""``openfeeder pki``: a CA, identities, and a Mosquitto configuration that Mosquitto accepts."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from openfeeder.cli import main
from openfeeder.security.pki import load_certificate


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _pki(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    ca = tmp_path / "ca"
    assert run(capsys, "pki", "init", str(ca))[0] == 0
    for name, role, hosts in (
        ("broker", "broker", ["--host", "127.0.0.1"]),
        ("meter-1", "device", []),
        ("catalog", "catalog", []),
        ("historian", "historian", []),
    ):
        code, out, err = run(capsys, "pki", "issue", name, "--role", role, "--ca", str(ca), *hosts)
        assert code == 0, err
        assert f"{name} ({role})" in out
    return ca


def test_init_issue_and_acl_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = _pki(capsys, tmp_path)
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (ca / "issued" / "meter-1.key").stat().st_mode & 0o777 == 0o600
    cert = load_certificate(ca / "issued" / "meter-1.crt")
    assert cert.subject.rfc4514_string() == "OU=device,CN=meter-1"

    code, _, err = run(capsys, "pki", "init", str(ca))
    assert code == 1
    assert "a CA exists already" in err
    code, _, err = run(capsys, "pki", "issue", "meter-1", "--role", "historian", "--ca", str(ca))
    assert code == 1
    assert "keeps its role" in err

    out_dir = tmp_path / "mosquitto"
    args = ["--ca", str(ca), "--broker", "broker", "--out", str(out_dir), "--acl-file"]
    assert run(capsys, "pki", "mosquitto-config", *args)[0] == 0
    acl = (out_dir / "acl").read_text()
    assert "user meter-1\ntopic write openfeeder/v1/meas/meter-1\n" in acl
    assert "topic read openfeeder/v1/cmd/meter-1" in acl
    assert "user historian" in acl
    assert "user broker" not in acl  # a broker is no MQTT client
    conf = (out_dir / "mosquitto.conf").read_text()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.3",
        f"crlfile {(ca / 'crl.pem').resolve()}",
    ):
        assert line in conf


def test_revoke_and_crl(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = _pki(capsys, tmp_path)
    first = load_certificate(ca / "issued" / "meter-1.crt").serial_number
    assert run(capsys, "pki", "issue", "meter-1", "--role", "device", "--ca", str(ca))[0] == 0
    second = load_certificate(ca / "issued" / "meter-1.crt").serial_number
    audit = tmp_path / "audit.log"
    args = ["--ca", str(ca), "--audit-log", str(audit), "--actor", "alice"]

    code, out, err = run(
        capsys, "pki", "revoke", "meter-1", *args, "--keep-latest", "--reason", "superseded"
    )
    assert code == 0, err
    assert f"meter-1: revoked {first:x}" in out
    code, out, _ = run(capsys, "pki", "revoke", "meter-1", *args, "--keep-latest")
    assert "nothing new" in out
    code, out, _ = run(capsys, "pki", "revoke", "meter-1", *args, "--serial", format(second, "x"))
    assert f"revoked {second:x}" in out
    code, out, _ = run(capsys, "pki", "crl", "--ca", str(ca))
    assert code == 0
    assert f"{first:x}  meter-1  superseded" in out
    assert f"{second:x}  meter-1  unspecified" in out
    assert "2 revoked" in out

    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["action"], e["target"], e["actor"]) for e in entries] == [
        ("certificate_revoked", "meter-1", "alice"),
        ("certificate_revoked", "meter-1", "alice"),
    ]
    assert run(capsys, "audit", "verify", str(audit))[0] == 0

    code, _, err = run(capsys, "pki", "revoke", "meter-9", "--ca", str(ca))
    assert code == 1
    assert "meter-9: no certificate was issued to this name" in err
    code, _, err = run(capsys, "pki", "revoke", "meter-1", "--ca", str(ca), "--serial", "zz")
    assert code == 2
    assert "not a hexadecimal serial" in err
    code, _, err = run(capsys, "pki", "revoke", "meter-1", "--ca", str(ca), "--serial", "abc")
    assert code == 1
    assert "serial abc was not issued to this name" in err


@pytest.mark.integration
def test_generated_dynamic_security_config_runs_in_mosquitto(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    ca = _pki(capsys, tmp_path)
    out_dir = tmp_path / "mosquitto"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--ca", str(ca), "--broker", "broker", "--out", str(out_dir), "--port", str(port)]
    code, _, err = run(capsys, "pki", "mosquitto-config", *args, "--host", "127.0.0.1")
    assert code == 0, err
    dynsec = json.loads((out_dir / "dynamic-security.json").read_text())
    assert {c["username"] for c in dynsec["clients"]} == {"meter-1", "catalog", "historian"}
    process = subprocess.Popen(
        [binary, "-c", str(out_dir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                    pytest.fail("mosquitto did not listen")
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
