"""A device's identity: made on the device, certified by the catalog's enrolment desk, reused.

The desk is the catalog's real :class:`Enrolments` over a CA made in the test, called directly
(the HTTP layer is covered by the catalog's enrolment tests and the secured-platform test).
"""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from openfeeder.iot.agent.identity import (
    CERT_FILE,
    KEY_FILE,
    EnrolmentRejectedError,
    enrol_device,
    load_identity,
)
from openfeeder.iot.catalog_client import (
    CatalogNotFoundError,
    EnrolmentInfo,
    EnrolmentRequest,
    EnrolmentStatus,
)
from openfeeder.security.pki import CertificateAuthority, PkiError, certificate_identity
from openfeeder.services.catalog.enrolment import Enrolments
from openfeeder.services.catalog.problems import ProblemError

SECRET = "enrol-me-please"


class DeskEnroller:
    """The catalog's enrolment desk without HTTP, counting the CSRs it receives."""

    def __init__(self, desk: Enrolments) -> None:
        self.desk = desk
        self.requests = 0
        self.forget_once = False

    def enrol(self, device_id: str, csr_pem: bytes, *, secret: str | None = None) -> EnrolmentInfo:
        self.requests += 1
        return self.desk.request(
            device_id, EnrolmentRequest(csr_pem=csr_pem.decode("ascii"), secret=secret)
        )

    def enrolment(self, device_id: str) -> EnrolmentInfo:
        if self.forget_once:  # as after a catalog restart: pending requests are gone
            self.forget_once = False
            raise CatalogNotFoundError("no enrolment", url="test", status=404)
        try:
            return self.desk.get(device_id)
        except ProblemError as err:
            raise CatalogNotFoundError(str(err), url="test", status=404) from err


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "pki")


def _desk(ca: CertificateAuthority) -> DeskEnroller:
    return DeskEnroller(Enrolments(ca, secret=SECRET))


def test_with_the_secret_the_device_is_certified_and_keeps_its_key_private(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    folder = tmp_path / "state" / "meter-1"
    enroller = _desk(ca)
    identity = enrol_device(enroller, "meter-1", folder, ca_file=ca.cert_file, secret=SECRET)
    assert identity is not None
    assert identity.files.cert_file == folder / CERT_FILE
    assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600
    name, role = certificate_identity(
        x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
    )
    assert (name, role) == ("meter-1", "device")
    assert ca.identities() == {"meter-1": "device"}
    # the files make a working TLS client context (certificate and key belong together)
    identity.files.client_context()

    # the next start reuses it: no request reaches the catalog
    again = enrol_device(enroller, "meter-1", folder, ca_file=ca.cert_file, secret=SECRET)
    assert again is not None
    assert again.serial == identity.serial
    assert enroller.requests == 1


def test_without_the_secret_the_device_waits_for_an_operator(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    enroller = _desk(ca)
    enroller.forget_once = True  # the first poll finds nothing: the device asks again
    folder = tmp_path / "meter-2"
    result: list[object] = []
    pending = threading.Event()
    worker = threading.Thread(
        target=lambda: result.append(
            enrol_device(
                enroller,
                "meter-2",
                folder,
                ca_file=ca.cert_file,
                secret="not-the-secret",
                poll_interval_s=0.02,
                on_pending=pending.set,
            )
        )
    )
    worker.start()
    assert pending.wait(5)
    deadline = time.monotonic() + 5
    while enroller.requests < 2:  # forgotten, then asked again
        if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
            pytest.fail("gave up waiting")
        time.sleep(0.01)
    assert not (folder / CERT_FILE).exists()
    assert enroller.desk.get("meter-2").status is EnrolmentStatus.PENDING
    enroller.desk.decide("meter-2", approve=True)
    worker.join(5)
    identity = result[0]
    assert identity is not None
    assert (folder / CERT_FILE).exists()


def test_a_rejected_device_gets_no_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    enroller = _desk(ca)
    folder = tmp_path / "meter-3"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            enrol_device(
                enroller, "meter-3", folder, ca_file=ca.cert_file, secret=None, poll_interval_s=0.02
            )
        except EnrolmentRejectedError as err:
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 5
    while enroller.requests == 0:
        if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
            pytest.fail("gave up waiting")
        time.sleep(0.01)
    enroller.desk.decide("meter-3", approve=False)
    worker.join(5)
    assert len(errors) == 1
    assert "meter-3: enrolment rejected (rejected by an operator)" in str(errors[0])
    assert not (folder / CERT_FILE).exists()


def test_stop_ends_the_wait(ca: CertificateAuthority, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    assert (
        enrol_device(
            _desk(ca), "meter-4", tmp_path / "m4", ca_file=ca.cert_file, secret=None, stop=stop
        )
        is None
    )


def test_a_stored_certificate_that_does_not_fit_is_replaced(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    folder = tmp_path / "meter-5"
    enroller = _desk(ca)
    first = enrol_device(enroller, "meter-5", folder, ca_file=ca.cert_file, secret=SECRET)
    assert first is not None
    key_pem = (folder / KEY_FILE).read_bytes()
    # another device's certificate in its folder
    other = ca.issue("meter-6", role="device", write=False)
    (folder / CERT_FILE).write_bytes(other.certificate_pem)
    assert load_identity(folder, "meter-5", ca_file=ca.cert_file) is None
    # a certificate of another CA
    foreign = CertificateAuthority.init(tmp_path / "foreign")
    assert load_identity(folder, "meter-5", ca_file=foreign.cert_file) is None
    # not a certificate at all: the device enrols again, with the key it has
    (folder / CERT_FILE).write_bytes(b"not a certificate")
    assert load_identity(folder, "meter-5", ca_file=ca.cert_file) is None
    renewed = enrol_device(enroller, "meter-5", folder, ca_file=ca.cert_file, secret=SECRET)
    assert renewed is not None
    assert renewed.serial != first.serial
    assert (folder / KEY_FILE).read_bytes() == key_pem  # the key never changed


def test_a_catalog_that_answers_with_another_ca_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    foreign = CertificateAuthority.init(tmp_path / "foreign")
    with pytest.raises(PkiError, match="another CA"):
        enrol_device(
            _desk(foreign), "meter-7", tmp_path / "m7", ca_file=ca.cert_file, secret=SECRET
        )
