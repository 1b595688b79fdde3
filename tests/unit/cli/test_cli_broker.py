"""``openfeeder broker`` secured as a process of its own: mutual TLS, and the ACL file the catalog
writes, re-read on SIGHUP (what the catalog's ``acl_backend = "acl_file"`` sends it)."""

from __future__ import annotations

import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from conftest import free_port
from openfeeder.cli import cli, main
from openfeeder.iot.access import build_access_table
from openfeeder.security.acl import AccessError, AccessTable
from openfeeder.security.mosquitto import reload_mosquitto
from openfeeder.security.pki import CertificateAuthority
from openfeeder.security.tls import issued_files

TIMEOUT_S = 10.0


def _connect(port: int, ca: CertificateAuthority, name: str) -> tuple[mqtt.Client, Any, Any]:
    """Connect as ``name`` (its issued certificate); (client, CONNACK reason, PUBACK queue)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{name}.grid_ops", protocol=mqtt.MQTTv5
    )
    client.tls_set_context(issued_files(ca, name).client_context())
    client.reconnect_delay_set(min_delay=60, max_delay=120)
    connack: queue.Queue[Any] = queue.Queue()
    pubacks: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, rc, _p: connack.put(rc)
    client.on_publish = lambda _c, _u, _m, rc, _p: pubacks.put(rc)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, connack.get(timeout=TIMEOUT_S), pubacks


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _tls_args(ca: CertificateAuthority) -> list[str]:
    """``--cert``, ``--key`` and ``--ca`` of a broker issued ``broker`` by ``ca``."""
    broker = issued_files(ca, "broker")
    return [
        "--cert",
        str(broker.cert_file),
        "--key",
        str(broker.key_file),
        "--ca",
        str(ca.cert_file),
    ]


def test_the_broker_process_takes_the_catalogs_acl_file_on_sighup(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "pki")
    ca.issue("broker", role="broker", hosts=["127.0.0.1"])
    ca.issue("meter-9", role="device")
    acl_file, pid_file = tmp_path / "broker.acl", tmp_path / "broker.pid"
    port = free_port()
    exe = shutil.which("openfeeder") or str(Path(sys.executable).parent / "openfeeder")
    # the ACL file does not exist yet: nobody may connect
    process = subprocess.Popen(
        [
            exe,
            "broker",
            "--port",
            str(port),
            *_tls_args(ca),
            "--acl-file",
            str(acl_file),
            "--crl",
            str(ca.crl_file),
            "--pid-file",
            str(pid_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not pid_file.exists():
            assert process.poll() is None, process.communicate()
            if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                pytest.fail("the broker did not start")
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
            pass
        client, code, _ = _connect(port, ca, "meter-9")
        _close(client)
        assert code.value == 0x87  # not authorized: not in the (missing) ACL

        # the catalog writes the device's grants and signals the broker
        table = build_access_table(devices={"meter-9": ()}, services={}, version=2)
        acl_file.write_text(table.mosquitto_acl(), encoding="utf-8")
        assert reload_mosquitto(pid_file) == process.pid
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            client, code, pubacks = _connect(port, ca, "meter-9")
            if not code.is_failure:
                break
            _close(client)
            if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                pytest.fail("the reloaded ACL never let meter-9 in")
            time.sleep(0.05)
        try:
            client.publish("openfeeder/v1/meas/meter-9", b"1", qos=1)
            assert not pubacks.get(timeout=TIMEOUT_S).is_failure
            client.publish("openfeeder/v1/meas/meter-8", b"1", qos=1)  # another device's topic
            assert pubacks.get(timeout=TIMEOUT_S).value == 0x87

            # its certificate is revoked: the SIGHUP ends its session and it cannot come back
            ended: queue.Queue[Any] = queue.Queue()
            client.on_disconnect = lambda _c, _u, _f, rc, _p: ended.put(rc)
            revoke = ["pki", "revoke", "meter-9", "--ca", str(ca.directory)]
            assert main([*revoke, "--mosquitto-pid", str(pid_file)]) == 0
            assert ended.get(timeout=TIMEOUT_S).value == 0x87
        finally:
            _close(client)
        client, code, _ = _connect(port, ca, "meter-9")
        _close(client)
        assert code.value == 0x87
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err
    assert (
        f"listening on mqtts://127.0.0.1:{port} (mutual TLS 1.3+, ACL {acl_file}, "
        f"CRL {ca.crl_file})" in out
    )
    assert "denied: 2 connects, 1 publishes" in out
    assert "certificate revoked" in err
    assert not pid_file.exists()


def test_the_broker_refuses_half_a_tls_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["broker", "--cert", str(tmp_path / "x.crt")])
    assert result.exit_code == 2
    assert "TLS needs all three of --cert, --key and --ca" in result.output
    result = CliRunner().invoke(cli, ["broker", "--acl-file", str(tmp_path / "acl")])
    assert result.exit_code == 2
    assert "--acl-file needs --cert/--key/--ca" in result.output
    result = CliRunner().invoke(cli, ["broker", "--crl", str(tmp_path / "crl.pem")])
    assert result.exit_code == 2
    assert "--crl needs --cert/--key/--ca" in result.output


def test_the_broker_refuses_a_crl_it_cannot_trust(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "pki")
    ca.issue("broker", role="broker", hosts=["127.0.0.1"])
    rogue = CertificateAuthority.init(tmp_path / "rogue")
    result = CliRunner().invoke(cli, ["broker", *_tls_args(ca), "--crl", str(rogue.crl_file)])
    assert result.exit_code == 1
    assert f"{rogue.crl_file}: the CRL's signature is not the CA's" in result.output


def test_an_acl_file_reads_back_and_a_bad_line_is_named() -> None:
    table = build_access_table(
        devices={"m-1": ("openfeeder/v1/algo/+/energy",)},
        services={"catalog": "catalog", "historian-1": "historian"},
        version=7,
    )
    again = AccessTable.from_mosquitto_acl(table.mosquitto_acl(header="test"))
    assert again.version == 7
    assert again.entries == table.entries
    with pytest.raises(AccessError, match=r"acl:3: expected 'user NAME'"):
        AccessTable.from_mosquitto_acl("user m-1\ntopic read a/b\npattern read x\n", source="acl")
    with pytest.raises(AccessError, match=r"acl:1: 'topic' before any 'user'"):
        AccessTable.from_mosquitto_acl("topic read a/b\n", source="acl")
    with pytest.raises(AccessError, match=r"acl:2: m-1: .*a wildcard must fill a whole level"):
        AccessTable.from_mosquitto_acl("user m-1\ntopic read a/b+\n", source="acl")
