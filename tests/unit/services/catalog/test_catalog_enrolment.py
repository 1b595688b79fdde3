"""Devices get their X.509 identity from the catalog, and the broker ACL follows the registry.

A real catalog (HTTPS, its own certificate) and a real embedded broker (mutual TLS 1.3, access
table from the catalog through ``on_access_table``), both on loopback with a CA made in the test.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from openfeeder.config import (
    AccessSettings,
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    LoggingSettings,
    SecuritySettings,
    Settings,
    StorageSettings,
)
from openfeeder.iot.access import build_access_table
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.catalog_client import (
    CatalogClient,
    CatalogError,
    CatalogRequestError,
    EnrolmentStatus,
)
from openfeeder.iot.device_settings import BootRequest
from openfeeder.security.audit import verify_audit_log
from openfeeder.security.pki import CertificateAuthority, RevocationList, RevocationReason, make_csr
from openfeeder.security.signing import generate_key_file
from openfeeder.security.tls import TlsFiles, issued_files
from openfeeder.security.tokens import issue_token
from openfeeder.services.catalog.service import CatalogThread

TIMEOUT_S = 10.0
SERVICES = {"catalog": "catalog", "ops": "operator"}


@dataclass
class Platform:
    ca: CertificateAuthority
    broker: BrokerThread
    catalog_url: str
    directory: Path

    def client(self) -> CatalogClient:
        verify = TlsFiles(self.ca.cert_file).client_context()
        return CatalogClient(self.catalog_url, timeout_s=TIMEOUT_S, verify=verify)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with _running(tmp_path) as running:
        yield running


@contextmanager
def _running(tmp_path: Path, access: AccessSettings | None = None) -> Iterator[Platform]:
    ca = CertificateAuthority.init(tmp_path / "pki")
    ca.issue("broker", role="broker", hosts=["127.0.0.1"])
    ca.issue("catalog", role="catalog", hosts=["127.0.0.1"])
    ca.issue("ops", role="operator")
    secret = tmp_path / "enrolment.secret"
    secret.write_text("s3cret-enrolment\n")
    table = build_access_table(devices={}, services=SERVICES)
    broker = BrokerThread(
        port=0,
        ssl_context=issued_files(ca, "broker").server_context(),
        access=table,
        revocations=RevocationList.of(ca.crl_file, ca.cert_file),
    )
    broker.start()
    mine = issued_files(ca, "catalog")
    url = BrokerSettings(url=f"mqtts://127.0.0.1:{broker.port}", connect_timeout_s=5)
    settings = Settings(
        brokers=BrokersSettings(grid_ops=url, monitoring=url),
        storage=StorageSettings(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        logging=LoggingSettings(level="WARNING"),
        catalog=CatalogSettings(listen_port=0, url="https://127.0.0.1:8700", case=""),
        security=SecuritySettings(
            ca_file=ca.cert_file,
            cert_file=mine.cert_file,
            key_file=mine.key_file,
            pki_dir=ca.directory,
            enrolment_secret_file=secret,
            services=SERVICES,
        ),
        access=access or AccessSettings(),
    )
    catalog = CatalogThread(
        settings, on_access_table=broker.set_access, on_revoked=broker.drop_revoked
    )
    try:
        catalog_url = catalog.start()
        yield Platform(ca, broker, catalog_url, tmp_path)
    finally:
        catalog.stop()
        broker.stop()


def _device_files(platform: Platform, device_id: str, certificate_pem: str, key: bytes) -> TlsFiles:
    cert_file = platform.directory / f"{device_id}.crt"
    key_file = platform.directory / f"{device_id}.key"
    cert_file.write_text(certificate_pem)
    key_file.write_bytes(key)
    return TlsFiles(platform.ca.cert_file, cert_file, key_file)


def _connect(
    port: int, device_id: str, files: TlsFiles
) -> tuple[mqtt.Client, Any, queue.Queue[Any]]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{device_id}.grid_ops", protocol=mqtt.MQTTv5
    )
    client.tls_set_context(files.client_context())
    client.reconnect_delay_set(min_delay=60, max_delay=120)
    connack: queue.Queue[Any] = queue.Queue()
    pubacks: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, rc, _p: connack.put(rc)
    client.on_publish = lambda _c, _u, _m, rc, _p: pubacks.put(rc)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, connack.get(timeout=TIMEOUT_S), pubacks


def _connects_until(port: int, device_id: str, files: TlsFiles, *, allowed: bool) -> None:
    """Reconnect until the broker's answer is what the ACL should now say (it follows the
    registry within the catalog's sync interval)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        client, code, pubacks = _connect(port, device_id, files)
        try:
            if not code.is_failure and allowed:
                client.publish(f"openfeeder/v1/meas/{device_id}", b"1", qos=1)
                assert not pubacks.get(timeout=TIMEOUT_S).is_failure
                return
            if code.is_failure and not allowed:
                assert code.value == 0x87
                return
        finally:
            client.disconnect()
            client.loop_stop()
        if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
            pytest.fail(f"{device_id}: broker ACL never became {allowed}")
        time.sleep(0.1)


def test_enrolment_with_the_secret_issues_a_certificate_the_broker_accepts(
    platform: Platform,
) -> None:
    csr, key = make_csr("meter-x", role="device")
    with platform.client() as client:
        info = client.enrol("meter-x", csr, secret="s3cret-enrolment")
        assert info.status is EnrolmentStatus.ISSUED
        assert info.certificate_pem is not None
        assert info.ca_pem == platform.ca.certificate_pem.decode()
        files = _device_files(platform, "meter-x", info.certificate_pem, key)
        client.boot(BootRequest(device_id="meter-x", device_type="meter", firmware="1"))
        _connects_until(platform.broker.port, "meter-x", files, allowed=True)

        client.delete_device("meter-x")
        _connects_until(platform.broker.port, "meter-x", files, allowed=False)


def test_replaced_and_deleted_devices_certificates_are_revoked(tmp_path: Path) -> None:
    """A device that enrols again with a new key (after a leak) makes its old certificate
    useless at once, also for a session open with it; deleting the device revokes the rest, so
    adding it back does not bring its certificates back."""
    audit_log = tmp_path / "audit.log"
    with (
        _running(tmp_path, AccessSettings(audit_log=audit_log)) as platform,
        platform.client() as client,
    ):
        port = platform.broker.port
        csr, old_key = make_csr("meter-r", role="device")
        first = client.enrol("meter-r", csr, secret="s3cret-enrolment")
        assert first.certificate_pem is not None
        leaked = _device_files(platform, "meter-r", first.certificate_pem, old_key)
        client.boot(BootRequest(device_id="meter-r", device_type="meter", firmware="1"))
        _connects_until(port, "meter-r", leaked, allowed=True)
        live, code, _ = _connect(port, "meter-r", leaked)
        dropped: queue.Queue[Any] = queue.Queue()
        live.on_disconnect = lambda _c, _u, _f, rc, _p: dropped.put(rc)
        assert not code.is_failure

        csr, new_key = make_csr("meter-r", role="device")
        second = client.enrol("meter-r", csr, secret="s3cret-enrolment")
        assert second.certificate_pem is not None
        renewed = _device_files(platform, "meter-r-new", second.certificate_pem, new_key)
        try:
            assert dropped.get(timeout=TIMEOUT_S).value == 0x87
        finally:
            live.loop_stop()
        refused, code, _ = _connect(port, "meter-r", leaked)
        refused.loop_stop()
        assert code.value == 0x87
        _connects_until(port, "meter-r", renewed, allowed=True)

        client.delete_device("meter-r")
        client.boot(BootRequest(device_id="meter-r", device_type="meter", firmware="1"))
        refused, code, _ = _connect(port, "meter-r", renewed)
        refused.loop_stop()
        assert code.value == 0x87  # back in the registry and the ACL, but not with that certificate

    reasons = [(r.name, r.reason) for r in platform.ca.revoked()]
    assert reasons == [
        ("meter-r", RevocationReason.SUPERSEDED),
        ("meter-r", RevocationReason.CESSATION_OF_OPERATION),
    ]
    entries = [json.loads(line) for line in audit_log.read_text(encoding="utf-8").splitlines()]
    revoked = [
        (e["actor"], e["details"]["reason"])
        for e in entries
        if e["action"] == "certificate_revoked"
    ]
    assert revoked == [("catalog", "superseded"), ("anonymous", "cessation_of_operation")]
    assert verify_audit_log(audit_log).ok


def test_enrolment_without_the_secret_waits_for_an_operator(platform: Platform) -> None:
    csr, _ = make_csr("meter-y", role="device")
    with platform.client() as client:
        pending = client.enrol("meter-y", csr, secret="wrong")
        assert pending.status is EnrolmentStatus.PENDING
        assert pending.certificate_pem is None
        assert [e.device_id for e in client.enrolments()] == ["meter-y"]
        approved = client.decide_enrolment("meter-y", approve=True)
        assert approved.status is EnrolmentStatus.ISSUED
        assert client.enrolment("meter-y").certificate_pem == approved.certificate_pem
        with pytest.raises(CatalogRequestError) as refused:
            client.decide_enrolment("meter-y", approve=False)  # no longer pending
        assert refused.value.status == 409


def test_a_csr_for_another_name_is_refused(platform: Platform) -> None:
    csr, _ = make_csr("meter-b", role="device")
    with platform.client() as client, pytest.raises(CatalogRequestError) as refused:
        client.enrol("meter-a", csr, secret="s3cret-enrolment")
    assert refused.value.status == 422
    assert refused.value.field == "csr_pem"
    assert "meter-b" in str(refused.value)


def test_https_client_that_does_not_trust_the_platform_ca_is_refused(
    platform: Platform, tmp_path: Path
) -> None:
    other = CertificateAuthority.init(tmp_path / "other")
    verify = TlsFiles(other.cert_file).client_context()
    with (
        CatalogClient(platform.catalog_url, timeout_s=TIMEOUT_S, verify=verify) as client,
        pytest.raises(CatalogError),
    ):
        client.enrolments()


def test_enrolment_decisions_need_an_operator_token(tmp_path: Path) -> None:
    """Approving and rejecting are ``catalog.enrolment.decide``; a device's own CSR is not."""
    issuer = generate_key_file(tmp_path / "issuer.key")
    audit_log = tmp_path / "audit.log"
    access = AccessSettings(token_keys=(tmp_path / "issuer.key.pub",), audit_log=audit_log)

    def token(*roles: str) -> str:
        hour_ns = 3600 * 1_000_000_000
        return issue_token(
            issuer, subject="ann", roles=roles, now_ns=time.time_ns(), lifetime_ns=hour_ns
        )

    with _running(tmp_path, access) as running:
        with running.client() as device:  # no token: devices prove themselves otherwise
            csr, _ = make_csr("meter-z", role="device")
            assert device.enrol("meter-z", csr).status is EnrolmentStatus.PENDING
            with pytest.raises(CatalogRequestError) as missing:
                device.decide_enrolment("meter-z", approve=True)
            assert missing.value.status == 401
        verify = TlsFiles(running.ca.cert_file).client_context()
        with CatalogClient(
            running.catalog_url, timeout_s=TIMEOUT_S, verify=verify, token=token("viewer")
        ) as viewer:
            with pytest.raises(CatalogRequestError) as refused:
                viewer.decide_enrolment("meter-z", approve=True)
            assert refused.value.status == 403
            assert "catalog.enrolment.decide" in str(refused.value)
            assert viewer.enrolment("meter-z").status is EnrolmentStatus.PENDING
        with CatalogClient(
            running.catalog_url, timeout_s=TIMEOUT_S, verify=verify, token=token("admin")
        ) as admin:
            assert admin.decide_enrolment("meter-z", approve=True).status is (
                EnrolmentStatus.ISSUED
            )
    entries = [json.loads(line) for line in audit_log.read_text(encoding="utf-8").splitlines()]
    denied = [e["details"]["status"] for e in entries if e["action"] == "denied"]
    assert denied == [401, 403]
    assert [e["target"] for e in entries if e["action"] == "catalog.enrolment.decide"] == [
        "enrolment meter-z"
    ]
    assert verify_audit_log(audit_log).ok
