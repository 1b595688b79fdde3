"""The catalog's enrolment desk keeps what it holds across a restart, and holds a bounded amount.

The desk is the catalog's real :class:`Enrolments` over a CA made in the test, called directly
(the HTTP layer: ``test_catalog_enrolment.py``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from openfeeder.iot.catalog_client import EnrolmentRequest, EnrolmentStatus
from openfeeder.security.pki import CertificateAuthority, PkiError, make_csr
from openfeeder.services.catalog.enrolment import ENROLMENTS_FILE, Enrolments
from openfeeder.services.catalog.problems import ProblemError

SECRET = "enrol-me-please"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "pki")


def _ask(desk: Enrolments, device_id: str, *, secret: str | None = None) -> EnrolmentStatus:
    csr, _ = make_csr(device_id, role="device")
    request = EnrolmentRequest(csr_pem=csr.decode("ascii"), secret=secret)
    return desk.request(device_id, request).status


def test_a_restart_keeps_the_queue_and_the_answers_not_fetched(ca: CertificateAuthority) -> None:
    desk = Enrolments(ca, secret=SECRET)
    assert _ask(desk, "meter-1") is EnrolmentStatus.PENDING
    assert _ask(desk, "meter-2") is EnrolmentStatus.PENDING
    assert _ask(desk, "meter-3", secret=SECRET) is EnrolmentStatus.ISSUED
    desk.decide("meter-2", approve=False)
    desk.close()

    again = Enrolments(ca, secret=SECRET)  # the catalog restarted
    statuses = {info.device_id: info.status for info in again.all()}
    assert statuses == {
        "meter-1": EnrolmentStatus.PENDING,
        "meter-2": EnrolmentStatus.REJECTED,
        "meter-3": EnrolmentStatus.ISSUED,
    }
    issued = again.decide("meter-1", approve=True)  # the operator's queue survived
    assert issued.status is EnrolmentStatus.ISSUED
    assert issued.certificate_pem is not None
    fetched = again.get("meter-3")  # a device polling after the restart gets its answer
    assert fetched.certificate_pem is not None
    assert fetched.ca_pem == ca.certificate_pem.decode("ascii")
    again.close()
    assert Enrolments(ca, secret=SECRET).get("meter-1").status is EnrolmentStatus.ISSUED


def test_pending_requests_are_bounded(ca: CertificateAuthority) -> None:
    desk = Enrolments(ca, secret=SECRET, max_pending=2)
    _ask(desk, "meter-1")
    _ask(desk, "meter-2")
    with pytest.raises(ProblemError) as full:
        _ask(desk, "meter-3")
    assert full.value.status == 503
    assert "2 enrolments wait for an operator already (the limit is 2)" in full.value.detail
    assert full.value.field == "device_id"
    assert _ask(desk, "meter-2") is EnrolmentStatus.PENDING  # asking again takes no more room
    assert _ask(desk, "meter-3", secret=SECRET) is EnrolmentStatus.ISSUED  # the secret still works
    desk.decide("meter-1", approve=False)
    assert _ask(desk, "meter-4") is EnrolmentStatus.PENDING
    assert {info.device_id for info in desk.all()} == {"meter-1", "meter-2", "meter-3", "meter-4"}


def test_the_oldest_decided_enrolments_make_room(ca: CertificateAuthority) -> None:
    clock = iter(range(1, 100))
    desk = Enrolments(ca, secret=SECRET, max_held=3, clock_ns=lambda: next(clock))
    _ask(desk, "meter-1", secret=SECRET)  # decided, oldest
    _ask(desk, "meter-2")  # pending, kept however old
    _ask(desk, "meter-3", secret=SECRET)
    _ask(desk, "meter-4", secret=SECRET)
    assert [info.device_id for info in desk.all()] == ["meter-2", "meter-3", "meter-4"]
    desk.close()
    assert [info.device_id for info in Enrolments(ca, secret=SECRET).all()] == [
        "meter-2",
        "meter-3",
        "meter-4",
    ]


def test_an_unreadable_enrolment_file_is_named(ca: CertificateAuthority) -> None:
    desk = Enrolments(ca, secret=SECRET)
    _ask(desk, "meter-1")
    desk.close()
    path = ca.directory / ENROLMENTS_FILE
    with sqlite3.connect(path) as db:
        db.execute("UPDATE enrolments SET status = 'lost'")
    with pytest.raises(PkiError, match=f"{path}: unreadable enrolments"):
        Enrolments(ca, secret=SECRET)
