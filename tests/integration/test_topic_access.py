"""Attacks that must fail, on the embedded broker and on a real Mosquitto with the generated config.

Each broker runs mutual TLS 1.3 with a throwaway CA made in the test and the access table the
topic scheme derives (:mod:`openfeeder.iot.access`): the embedded broker with its auth hook, a
private ``mosquitto -c <generated.conf>`` on a free port with the dynamic-security plug-in (the
machine's shared Mosquitto on 1883 is never touched). A refusal is observed, never assumed: the
SUBACK or PUBACK reason code says it, and a legitimate subscriber with full rights receives the
attacker's own later message (a marker) but never the forged one before it.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from openfeeder.iot.access import build_access_table
from openfeeder.iot.broker import BrokerThread
from openfeeder.security.acl import AccessTable
from openfeeder.security.mosquitto import (
    DYNSEC_TOPIC,
    MosquittoFiles,
    dynamic_security_config,
    dynsec_commands,
    find_dynsec_plugin,
    mosquitto_config,
)
from openfeeder.security.pki import CertificateAuthority, RevocationList
from openfeeder.security.tls import TlsFiles, issued_files

TIMEOUT_S = 10.0
NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers" (Mosquitto says so)
V311_SUBSCRIBE_FAILURE = 0x80
DEVICES = ("meter-a", "meter-b")
OPERATOR = "ops"
ADMIN = "catalog"


@dataclass
class SecuredBroker:
    """A broker under test: its port, the PKI, and how to change its access table."""

    kind: str
    port: int
    ca: CertificateAuthority
    table: AccessTable
    set_access: Callable[[AccessTable], None]
    revoke: Callable[..., list[int]]
    """Revoke a name's certificates and have the broker read the CRL again (its SIGHUP)."""

    def files(self, name: str) -> TlsFiles:
        return issued_files(self.ca, name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _make_pki(directory: Path) -> tuple[CertificateAuthority, AccessTable]:
    ca = CertificateAuthority.init(directory / "pki")
    ca.issue("broker", role="broker", hosts=["127.0.0.1", "localhost"])
    for device in (*DEVICES, "meter-c"):
        ca.issue(device, role="device")
    ca.issue(OPERATOR, role="operator")
    ca.issue(ADMIN, role="catalog")
    table = build_access_table(
        devices=dict.fromkeys(DEVICES, ()),
        services={OPERATOR: "operator", ADMIN: "catalog"},
    )
    return ca, table


class Client:
    """A paho client over mutual TLS that records every acknowledgement and message."""

    def __init__(
        self,
        broker: SecuredBroker,
        name: str,
        *,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        suffix: str = "t",
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{name}.{suffix}", protocol=protocol
        )
        self.client.tls_set_context(broker.files(name).client_context())
        self.client.reconnect_delay_set(min_delay=60, max_delay=120)
        self.connack: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.pubacks: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc)
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.subacks.put(list(codes))
        self.client.on_publish = lambda _c, _u, _m, rc, _p: self.pubacks.put(rc)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.put(rc)
        self.port = broker.port

    def connect(self) -> Any:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        return self.connack.get(timeout=TIMEOUT_S)

    def subscribe(self, topic_filter: str) -> int:
        self.client.subscribe(topic_filter, qos=1)
        (code,) = self.subacks.get(timeout=TIMEOUT_S)
        return int(code.value) if hasattr(code, "value") else int(code)

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 for MQTT 3.1.1, which has none)."""
        self.client.publish(topic, payload, qos=1)
        code = self.pubacks.get(timeout=TIMEOUT_S)
        return int(code.value) if hasattr(code, "value") else int(code)

    def received_until(self, marker: bytes) -> list[tuple[str, bytes]]:
        """Every message up to and including the one whose payload is ``marker``."""
        got: list[tuple[str, bytes]] = []
        while True:
            msg = self.messages.get(timeout=TIMEOUT_S)
            got.append((msg.topic, bytes(msg.payload)))
            if msg.payload == marker:
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(broker: SecuredBroker, name: str, **options: Any) -> Client:
        client = Client(broker, name, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _embedded(directory: Path) -> Iterator[SecuredBroker]:
    ca, table = _make_pki(directory)
    server = issued_files(ca, "broker").server_context()
    revocations = RevocationList.of(ca.crl_file, ca.cert_file)
    thread = BrokerThread(port=0, ssl_context=server, access=table, revocations=revocations)
    thread.start()

    def revoke(name: str, **options: Any) -> list[int]:
        revoked = ca.revoke(name, **options)
        thread.drop_revoked()  # what `openfeeder broker` does on SIGHUP
        return revoked

    try:
        yield SecuredBroker("embedded", thread.port, ca, table, thread.set_access, revoke)
    finally:
        thread.stop()


def _wait_listening(port: int, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            assert process.poll() is None, f"mosquitto exited: {log}"
            if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                pytest.fail(f"mosquitto did not listen: {log}")
            time.sleep(0.05)


def _mosquitto(directory: Path) -> Iterator[SecuredBroker]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    plugin = find_dynsec_plugin()
    if not Path(binary).exists() or plugin is None:
        message = "the mosquitto binary and its dynamic-security plug-in are needed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    ca, table = _make_pki(directory)
    broker = issued_files(ca, "broker")
    assert broker.cert_file is not None
    assert broker.key_file is not None
    dynsec = directory / "dynamic-security.json"
    dynsec.write_text(json.dumps(dynamic_security_config(table, admins=[ADMIN])))
    port = _free_port()
    config = directory / "mosquitto.conf"
    files = MosquittoFiles(
        ca.cert_file,
        broker.cert_file,
        broker.key_file,
        dynsec_file=dynsec,
        dynsec_plugin=plugin,
        crl_file=ca.crl_file,
    )
    config.write_text(
        mosquitto_config(
            files,
            port=port,
            host="127.0.0.1",
            log_file=directory / "mosquitto.log",
            run_as_user=pwd.getpwuid(os.geteuid()).pw_name,
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port, process, directory / "mosquitto.log")
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    state = {"table": table}

    def set_access(new: AccessTable) -> None:
        """What the catalog does: send the plug-in the commands, wait for every answer."""
        commands = dynsec_commands(state["table"], new, admins=[ADMIN])
        admin = Client(secured, ADMIN, suffix="dynsec")
        assert admin.connect().value == 0
        try:
            assert admin.subscribe(f"{DYNSEC_TOPIC}/response") == 1
            admin.client.publish(DYNSEC_TOPIC, json.dumps({"commands": commands}), qos=1)
            answer = json.loads(admin.messages.get(timeout=TIMEOUT_S).payload)
            errors = [r for r in answer["responses"] if "error" in r]
            assert not errors, errors
        finally:
            admin.close()
        state["table"] = new

    log_file = directory / "mosquitto.log"

    def revoke(name: str, **options: Any) -> list[int]:
        """What ``openfeeder pki revoke --mosquitto-pid`` does; returns once Mosquitto logged
        that it read its configuration (and the CRL) again."""
        revoked = ca.revoke(name, **options)
        reloads = log_file.read_text(errors="replace").count("Reloading config")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT_S
        while log_file.read_text(errors="replace").count("Reloading config") == reloads:
            if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                pytest.fail("mosquitto did not reload after SIGHUP")
            time.sleep(0.05)
        return revoked

    secured = SecuredBroker("mosquitto", port, ca, table, set_access, revoke)
    try:
        yield secured
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture(
    params=["embedded", pytest.param("mosquitto", marks=pytest.mark.integration)],
)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecuredBroker]:
    factory = _embedded if request.param == "embedded" else _mosquitto
    yield from factory(tmp_path)


# --- identities at the topic level ----------------------------------------------------------


def test_device_cannot_publish_as_another_device(
    broker: SecuredBroker, clients: Callable[..., Client]
) -> None:
    ops = clients(broker, OPERATOR)
    assert ops.connect().value == 0
    assert ops.subscribe("openfeeder/v1/#") == 1
    attacker = clients(broker, "meter-a")
    assert attacker.connect().value == 0

    assert attacker.publish("openfeeder/v1/meas/meter-b", b"forged") == NOT_AUTHORIZED
    assert attacker.publish("openfeeder/v1/status/meter-b", b"forged") == NOT_AUTHORIZED
    assert attacker.publish("openfeeder/v1/cmd/meter-b", b"forged") == NOT_AUTHORIZED
    assert attacker.publish("openfeeder/v1/meas/meter-a", b"marker") in ACCEPTED

    assert ops.received_until(b"marker") == [("openfeeder/v1/meas/meter-a", b"marker")]


def test_mqtt311_forged_publish_is_dropped_silently(
    broker: SecuredBroker, clients: Callable[..., Client]
) -> None:
    """MQTT 3.1.1 cannot say no to a PUBLISH: it is acknowledged and dropped, never delivered."""
    ops = clients(broker, OPERATOR)
    assert ops.connect().value == 0
    assert ops.subscribe("openfeeder/v1/#") == 1
    attacker = clients(broker, "meter-a", protocol=mqtt.MQTTv311)
    assert attacker.connect() == 0

    attacker.publish("openfeeder/v1/meas/meter-b", b"forged")
    attacker.publish("openfeeder/v1/meas/meter-a", b"marker")

    assert ops.received_until(b"marker") == [("openfeeder/v1/meas/meter-a", b"marker")]


@pytest.mark.parametrize(
    ("protocol", "refusal"), [(mqtt.MQTTv5, NOT_AUTHORIZED), (mqtt.MQTTv311, 0x80)]
)
def test_device_cannot_subscribe_to_another_devices_commands(
    broker: SecuredBroker,
    clients: Callable[..., Client],
    protocol: mqtt.MQTTProtocolVersion,
    refusal: int,
) -> None:
    ops = clients(broker, OPERATOR)
    assert ops.connect().value == 0
    attacker = clients(broker, "meter-a", protocol=protocol)
    attacker.connect()

    assert attacker.subscribe("openfeeder/v1/cmd/meter-b") == refusal
    assert attacker.subscribe("openfeeder/v1/cmd/+") == refusal
    assert attacker.subscribe("openfeeder/v1/#") == refusal
    assert attacker.subscribe("openfeeder/v1/cmd/meter-a") == 1
    assert ops.publish("openfeeder/v1/cmd/meter-b", b"for b") in ACCEPTED
    assert ops.publish("openfeeder/v1/cmd/meter-a", b"marker") in ACCEPTED

    assert attacker.received_until(b"marker") == [("openfeeder/v1/cmd/meter-a", b"marker")]


def test_device_gets_its_own_and_granted_topics(
    broker: SecuredBroker, clients: Callable[..., Client]
) -> None:
    device = clients(broker, "meter-b")
    assert device.connect().value == 0
    for own in ("cmd", "config", "committed"):
        assert device.subscribe(f"openfeeder/v1/{own}/meter-b") == 1
    assert device.subscribe("openfeeder/v1/topology") == 1
    assert device.subscribe("openfeeder/v1/meas/meter-a") == NOT_AUTHORIZED
    for own in ("meas", "event", "ack", "status"):
        assert device.publish(f"openfeeder/v1/{own}/meter-b", b"x") in ACCEPTED
    assert device.publish("openfeeder/v1/algo/meter-b/energy", b"x") in ACCEPTED
    assert device.publish("openfeeder/v1/topology", b"x") == NOT_AUTHORIZED


def test_access_changes_while_running(
    broker: SecuredBroker, clients: Callable[..., Client]
) -> None:
    """A device added gets its rights; one removed loses them (the catalog's reload)."""
    newcomer = clients(broker, "meter-c", suffix="before")
    code = newcomer.connect()
    if broker.kind == "embedded":  # unknown identities are refused at CONNECT
        assert code.value == NOT_AUTHORIZED
    else:  # Mosquitto lets the certificate in, with no rights
        assert newcomer.publish("openfeeder/v1/meas/meter-c", b"x") == NOT_AUTHORIZED
    extra = {"meter-a": ("openfeeder/v1/algo/+/energy",), "meter-c": ()}
    broker.set_access(
        build_access_table(
            devices=extra,
            services={OPERATOR: "operator", ADMIN: "catalog"},
            version=2,
        )
    )
    added = clients(broker, "meter-c", suffix="after")
    assert added.connect().value == 0
    assert added.publish("openfeeder/v1/meas/meter-c", b"x") in ACCEPTED
    granted = clients(broker, "meter-a", suffix="after")
    assert granted.connect().value == 0
    assert granted.subscribe("openfeeder/v1/algo/+/energy") == 1
    assert granted.subscribe("openfeeder/v1/algo/+/+") == NOT_AUTHORIZED
    removed = clients(broker, "meter-b", suffix="after")
    code = removed.connect()
    if broker.kind == "embedded":
        assert code.value == NOT_AUTHORIZED
    else:  # Mosquitto lets the certificate in, with no rights left
        assert code.value == 0
        assert removed.publish("openfeeder/v1/meas/meter-b", b"x") == NOT_AUTHORIZED


# --- identities at the TLS level ------------------------------------------------------------

_CONNECT_311 = bytes.fromhex("100f00044d5154540402003c0003") + b"ops"


def _mqtt_over_tls(port: int, context: ssl.SSLContext) -> bytes:
    """Handshake, send a CONNECT and read the answer: a CONNACK, or b"" / an error if refused."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(_CONNECT_311)
        return tls.recv(4)


def _refused(port: int, context: ssl.SSLContext) -> bool:
    try:
        answer = _mqtt_over_tls(port, context)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return answer == b""


def test_connection_without_a_client_certificate_is_refused(broker: SecuredBroker) -> None:
    files = broker.files(OPERATOR)
    assert _mqtt_over_tls(broker.port, files.client_context())[:1] == b"\x20"  # control
    anonymous = TlsFiles(files.ca_file)
    assert _refused(broker.port, anonymous.client_context())


def test_certificate_from_another_ca_is_refused(broker: SecuredBroker, tmp_path: Path) -> None:
    rogue = CertificateAuthority.init(tmp_path / "rogue")
    rogue.issue(OPERATOR, role="operator")  # same name, wrong issuer
    forged = issued_files(rogue, OPERATOR)
    context = TlsFiles(broker.ca.cert_file, forged.cert_file, forged.key_file).client_context()
    assert _refused(broker.port, context)


def test_tls_12_client_is_refused_when_13_is_required(broker: SecuredBroker) -> None:
    files = broker.files(OPERATOR)
    context = files.client_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _refused(broker.port, context)


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s) for ``client_id``."""
    name = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(name).to_bytes(2, "big") + name
    return bytes((0x10, len(body))) + body


def _outcome(port: int, context: ssl.SSLContext, client_id: str) -> str:
    """``accepted`` (CONNACK 0), ``not authorized`` (CONNACK 5) or ``refused in TLS``."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(_connect_packet(client_id))
            answer = tls.recv(4)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return "refused in TLS"
    if answer == b"":
        return "refused in TLS"
    assert answer[:2] == b"\x20\x02", answer
    return {0: "accepted", 5: "not authorized"}.get(answer[3], f"CONNACK {answer[3]}")


def test_revoked_certificate_is_refused(
    broker: SecuredBroker, clients: Callable[..., Client], tmp_path: Path
) -> None:
    """A device's certificate leaked: the device gets a new one, the old one is revoked. The
    old one no longer connects (Mosquitto fails its handshake, the embedded broker its CONNECT),
    the new one and other devices do."""
    issued = broker.files("meter-a")
    assert issued.cert_file is not None
    assert issued.key_file is not None
    kept = tmp_path / "leaked"
    kept.mkdir()
    leaked = TlsFiles(
        broker.ca.cert_file,
        Path(shutil.copy(issued.cert_file, kept)),
        Path(shutil.copy(issued.key_file, kept)),
    ).client_context()
    assert _outcome(broker.port, leaked, "meter-a.x") == "accepted"
    live = clients(broker, "meter-a", suffix="live")
    assert live.connect().value == 0

    broker.ca.issue("meter-a", role="device")  # the replacement
    revoked = broker.revoke("meter-a", keep_latest=True)

    assert len(revoked) == 1
    refusal = "refused in TLS" if broker.kind == "mosquitto" else "not authorized"
    assert _outcome(broker.port, leaked, "meter-a.x") == refusal
    assert _outcome(broker.port, broker.files("meter-a").client_context(), "meter-a.y") == (
        "accepted"
    )
    assert _outcome(broker.port, broker.files("meter-b").client_context(), "meter-b.x") == (
        "accepted"
    )
    if broker.kind == "embedded":  # its SIGHUP also ends sessions of revoked certificates
        assert live.disconnects.get(timeout=TIMEOUT_S).value == NOT_AUTHORIZED
    # Mosquitto checks the CRL in the handshake only: a session open before stays open


def test_every_certificate_of_a_removed_device_is_refused(broker: SecuredBroker) -> None:
    broker.ca.issue("meter-b", role="device")
    latest = broker.files("meter-b").client_context()
    assert _outcome(broker.port, latest, "meter-b.x") == "accepted"

    assert len(broker.revoke("meter-b")) == 2  # the fixture's certificate and this one

    assert _outcome(broker.port, latest, "meter-b.x") != "accepted"
    assert _outcome(broker.port, broker.files("meter-a").client_context(), "meter-a.x") == (
        "accepted"
    )
