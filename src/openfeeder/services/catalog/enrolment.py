"""Device enrolment: a device sends a certificate signing request and gets its X.509 identity.

A device makes its own key (it never leaves the device) and POSTs a CSR whose CN is its device id:

- with the installation's **enrolment secret** (``[security] enrolment_secret_file``, compared in
  constant time) the CA (``[security] pki_dir``) signs it at once: ``201`` with the certificate and
  the CA certificate to trust (and, with payload protection, the device's key-encryption key sealed
  to the CSR's key: :mod:`~openfeeder.services.catalog.payload_keys`);
- without it (or with a wrong one) the request is **pending** (``202``) until an operator approves
  it (``POST /v1/enrolments/{id}/approve``, ``openfeeder catalog enrolments approve ID``) or rejects
  it; the device polls ``GET /v1/enrolments/{id}``.

A CSR whose CN is not the device id in the path, whose signature is wrong, or whose key is not
ECDSA P-256 is refused (422, field ``csr_pem``). What the CA issued is in its index
(``pki_dir/index.json``).

The desk keeps every enrolment it holds (pending requests, and the answers devices have not
fetched yet) in ``pki_dir/enrolments.sqlite`` as well as in memory, so a catalog restart loses
neither an operator's queue nor a certificate issued while the device was away. Requests are
unauthenticated, so the desk holds at most ``max_pending`` pending ones (503 beyond that, naming
the limit) and at most ``max_held`` in all (the oldest decided ones are forgotten first).

A device that enrols again (a renewal, a new key after a compromise) gets a new certificate and
its earlier ones are **revoked** as superseded; a device deleted from the catalog has all of its
certificates revoked. Either way the CA's CRL (``pki_dir/crl.pem``) is signed again, the
revocation is audited, and the brokers are told to read the CRL again (``on_revoked``: SIGHUP
to ``[security] mosquitto_pid_file``, or the embedded broker in the demo's process).

====== ================================ ==============================================
method path                             what
====== ================================ ==============================================
POST   /v1/enrolments/{id}              CSR (+ secret) -> 201 issued / 202 pending
GET    /v1/enrolments                   every enrolment held (pending ones first)
GET    /v1/enrolments/{id}              one enrolment (a pending device polls it)
POST   /v1/enrolments/{id}/approve      issue the certificate of a pending request
POST   /v1/enrolments/{id}/reject       refuse a pending request
====== ================================ ==============================================
"""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path as FilePath
from typing import Annotated, Final

from fastapi import APIRouter, Path, Request, Response

from openfeeder.errors import OpenFeederError
from openfeeder.iot.access import DEVICE_ROLE
from openfeeder.iot.catalog_client import EnrolmentInfo, EnrolmentRequest, EnrolmentStatus
from openfeeder.iot.topics import ID_PATTERN
from openfeeder.security.pki import CertificateAuthority, PkiError, RevocationReason
from openfeeder.security.policy import AccessRequest
from openfeeder.services.access import AccessControl, AuditSink, Caller, Reader
from openfeeder.services.catalog.payload_keys import DeviceKeys
from openfeeder.services.catalog.problems import ProblemError, ProblemKind, not_found

__all__ = [
    "DEFAULT_MAX_HELD",
    "DEFAULT_MAX_PENDING",
    "ENROLMENTS_FILE",
    "Enrolments",
    "enrolment_router",
]

_LOG = logging.getLogger(__name__)
ENROLMENTS_FILE: Final = "enrolments.sqlite"
DEFAULT_MAX_PENDING: Final = 1000
DEFAULT_MAX_HELD: Final = 20_000
DeviceIdPath = Annotated[
    str, Path(pattern=f"^{ID_PATTERN.pattern}$", description="device id ([A-Za-z0-9_.-]{1,64})")
]


@dataclass(frozen=True, slots=True)
class _Enrolment:
    device_id: str
    status: EnrolmentStatus
    requested_ns: int
    csr_pem: bytes
    certificate_pem: str | None = None
    detail: str = ""
    kek: dict[str, str] | None = None


class Enrolments:
    """The catalog's enrolment desk over a CA (see the module docstring). Thread-safe."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        secret: str | None,
        keys: DeviceKeys | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        audit: AuditSink | None = None,
        on_revoked: Callable[[], object] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_held: int = DEFAULT_MAX_HELD,
    ) -> None:
        """``keys``: the payload key desk; with it an issued certificate comes with the device's
        key-encryption key, sealed to the CSR's key (:mod:`~openfeeder.services.catalog.payload_keys`).
        ``audit`` records revocations; ``on_revoked`` tells the brokers the CRL changed."""
        self._ca = ca
        self._keys = keys
        self._audit = audit
        self._on_revoked = on_revoked
        self._secret = secret.encode("utf-8") if secret else None
        self._clock_ns = clock_ns
        self._max_pending = max_pending
        self._max_held = max_held
        self._lock = threading.Lock()
        self._file = _EnrolmentFile(ca.directory / ENROLMENTS_FILE)
        self._held: dict[str, _Enrolment] = self._file.load()

    def close(self) -> None:
        """Close the enrolment file (what it holds is written already)."""
        with self._lock:
            self._file.close()

    def _hold(self, enrolment: _Enrolment) -> None:
        """Keep ``enrolment`` (in memory and in the file), making room if the desk is full."""
        self._file.put(enrolment)  # first: a failed write leaves memory as the file is
        self._held[enrolment.device_id] = enrolment
        excess = len(self._held) - self._max_held
        if excess > 0:
            decided = sorted(
                (e for e in self._held.values() if e.status is not EnrolmentStatus.PENDING),
                key=lambda e: e.requested_ns,
            )
            for old in decided[:excess]:
                del self._held[old.device_id]
                self._file.delete(old.device_id)

    def _info(self, enrolment: _Enrolment) -> EnrolmentInfo:
        issued = enrolment.status is EnrolmentStatus.ISSUED
        return EnrolmentInfo(
            device_id=enrolment.device_id,
            status=enrolment.status,
            requested_ns=enrolment.requested_ns,
            certificate_pem=enrolment.certificate_pem,
            ca_pem=self._ca.certificate_pem.decode("ascii") if issued else None,
            detail=enrolment.detail,
            kek=enrolment.kek if issued else None,
        )

    def _secret_ok(self, secret: str | None) -> bool:
        if self._secret is None or secret is None:
            return False
        return hmac.compare_digest(self._secret, secret.encode("utf-8"))

    def _sign(self, enrolment: _Enrolment) -> _Enrolment:
        try:
            issued = self._ca.sign_csr(
                enrolment.csr_pem, name=enrolment.device_id, role=DEVICE_ROLE
            )
        except PkiError as err:
            raise ProblemError(ProblemKind.INVALID, 422, str(err), field="csr_pem") from err
        _LOG.info(
            "device certificate issued device_id=%s serial=%x",
            enrolment.device_id,
            issued.serial,
            extra={"event": "enrolment_issued", "device_id": enrolment.device_id},
        )
        # the certificates this one replaces stop working (a renewal, or a new key after a leak)
        self._revoked(
            enrolment.device_id,
            self._ca.revoke(
                enrolment.device_id, keep_latest=True, reason=RevocationReason.SUPERSEDED
            ),
            RevocationReason.SUPERSEDED,
            actor="catalog",
        )
        kek = None
        if self._keys is not None:
            kek = self._keys.sealed_kek(enrolment.device_id, enrolment.csr_pem)
        return replace(
            enrolment,
            status=EnrolmentStatus.ISSUED,
            certificate_pem=issued.certificate_pem.decode("ascii"),
            detail="",
            kek=kek,
        )

    def revoke(self, device_id: str, *, reason: RevocationReason, actor: str) -> list[int]:
        """Revoke every certificate of ``device_id`` (a device deleted); the serials revoked
        now (none for a device the CA never certified)."""
        if device_id not in self._ca.identities():
            return []
        serials = self._ca.revoke(device_id, reason=reason)
        self._revoked(device_id, serials, reason, actor=actor)
        return serials

    def _revoked(
        self, device_id: str, serials: list[int], reason: RevocationReason, *, actor: str
    ) -> None:
        """Log, audit and announce a revocation (nothing when nothing was revoked)."""
        if not serials:
            return
        shown = [format(serial, "x") for serial in serials]
        _LOG.warning(
            "device certificates revoked device_id=%s serials=%s reason=%s",
            device_id,
            ",".join(shown),
            reason,
            extra={"event": "certificate_revoked", "device_id": device_id, "reason": str(reason)},
        )
        if self._audit is not None:
            try:
                self._audit.append(
                    "security",
                    actor,
                    "certificate_revoked",
                    device_id,
                    {"serials": shown, "reason": str(reason)},
                )
            except OpenFeederError:  # the revocation stands; losing the entry is logged loudly
                _LOG.exception("cannot audit the revocation of %s", device_id)
        if self._on_revoked is not None:
            try:
                self._on_revoked()
            except (OpenFeederError, OSError):  # the CRL is written; a broker reads it later
                _LOG.exception("brokers not told about the revocation of %s", device_id)

    def request(self, device_id: str, request: EnrolmentRequest) -> EnrolmentInfo:
        """A device's CSR: issued at once with the secret, otherwise pending (checked first)."""
        csr = request.csr_pem.encode("ascii", errors="replace")
        enrolment = _Enrolment(device_id, EnrolmentStatus.PENDING, self._clock_ns(), csr)
        with self._lock:
            if self._secret_ok(request.secret):
                enrolment = self._sign(enrolment)
            else:
                self._check_csr(enrolment)
                self._check_room(device_id)
                _LOG.info(
                    "enrolment waits for approval device_id=%s",
                    device_id,
                    extra={"event": "enrolment_pending", "device_id": device_id},
                )
            self._hold(enrolment)
            return self._info(enrolment)

    def _check_room(self, device_id: str) -> None:
        """503 when ``max_pending`` requests wait already (a device asking again takes none)."""
        held = self._held.get(device_id)
        if held is not None and held.status is EnrolmentStatus.PENDING:
            return
        waiting = sum(e.status is EnrolmentStatus.PENDING for e in self._held.values())
        if waiting >= self._max_pending:
            raise ProblemError(
                ProblemKind.UNAVAILABLE,
                503,
                f"{waiting} enrolments wait for an operator already (the limit is "
                f"{self._max_pending}): approve or reject some, then ask again",
                field="device_id",
            )

    def _check_csr(self, enrolment: _Enrolment) -> None:
        """Refuse a malformed CSR now rather than at approval (nothing is issued here)."""
        probe = CertificateAuthority.check_csr
        try:
            probe(enrolment.csr_pem, name=enrolment.device_id)
        except PkiError as err:
            raise ProblemError(ProblemKind.INVALID, 422, str(err), field="csr_pem") from err

    def get(self, device_id: str) -> EnrolmentInfo:
        with self._lock:
            enrolment = self._held.get(device_id)
            if enrolment is None:
                raise not_found("enrolment", device_id, field="device_id")
            return self._info(enrolment)

    def all(self) -> list[EnrolmentInfo]:
        with self._lock:
            held = sorted(
                self._held.values(),
                key=lambda e: (e.status is not EnrolmentStatus.PENDING, e.device_id),
            )
            return [self._info(enrolment) for enrolment in held]

    def decide(self, device_id: str, *, approve: bool) -> EnrolmentInfo:
        """An operator's decision on a pending enrolment (409 if it is not pending)."""
        with self._lock:
            enrolment = self._held.get(device_id)
            if enrolment is None:
                raise not_found("enrolment", device_id, field="device_id")
            if enrolment.status is not EnrolmentStatus.PENDING:
                raise ProblemError(
                    ProblemKind.CONFLICT,
                    409,
                    f"enrolment of {device_id} is {enrolment.status}, not pending",
                    field="device_id",
                )
            if approve:
                enrolment = self._sign(enrolment)
            else:
                enrolment = replace(
                    enrolment, status=EnrolmentStatus.REJECTED, detail="rejected by an operator"
                )
            self._hold(enrolment)
            return self._info(enrolment)


class _EnrolmentFile:
    """The enrolments held, one row each, in an SQLite file (written on every change, under the
    desk's lock)."""

    def __init__(self, path: FilePath) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS enrolments (
                    device_id TEXT PRIMARY KEY, status TEXT NOT NULL,
                    requested_ns INTEGER NOT NULL, csr_pem BLOB NOT NULL,
                    certificate_pem TEXT, detail TEXT NOT NULL, kek TEXT)"""
            )
        except sqlite3.Error as err:
            raise PkiError(f"{path}: cannot open the enrolments: {err}", path=path) from err

    def load(self) -> dict[str, _Enrolment]:
        out: dict[str, _Enrolment] = {}
        try:
            rows = self._db.execute(
                "SELECT device_id, status, requested_ns, csr_pem, certificate_pem, detail, kek "
                "FROM enrolments"
            ).fetchall()
            for device_id, status, requested_ns, csr, certificate, detail, kek in rows:
                out[device_id] = _Enrolment(
                    device_id=device_id,
                    status=EnrolmentStatus(status),
                    requested_ns=int(requested_ns),
                    csr_pem=bytes(csr),
                    certificate_pem=certificate,
                    detail=detail,
                    kek=json.loads(kek) if kek is not None else None,
                )
        except (sqlite3.Error, ValueError, TypeError) as err:
            raise PkiError(f"{self.path}: unreadable enrolments: {err}", path=self.path) from err
        return out

    def put(self, enrolment: _Enrolment) -> None:
        self._write(
            "INSERT OR REPLACE INTO enrolments VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                enrolment.device_id,
                str(enrolment.status),
                enrolment.requested_ns,
                enrolment.csr_pem,
                enrolment.certificate_pem,
                enrolment.detail,
                json.dumps(enrolment.kek) if enrolment.kek is not None else None,
            ),
        )

    def delete(self, device_id: str) -> None:
        self._write("DELETE FROM enrolments WHERE device_id = ?", (device_id,))

    def _write(self, statement: str, values: tuple[object, ...]) -> None:
        try:
            self._db.execute(statement, values)
        except sqlite3.Error as err:
            raise ProblemError(
                ProblemKind.UNAVAILABLE, 503, f"{self.path}: enrolment not stored: {err}"
            ) from err

    def close(self) -> None:
        self._db.close()


def enrolment_router(enrolments: Enrolments, access: AccessControl) -> APIRouter:
    """The REST endpoints of :class:`Enrolments` (included by the catalog's app). Approving and
    rejecting are operator actions (operation ``catalog.enrolment.decide`` of ``[access]``). The
    endpoints are plain functions: FastAPI runs them on its worker threads, so signing, the CRL
    and the enrolment file never hold up the catalog's event loop."""
    router = APIRouter(prefix="/v1/enrolments", tags=["enrolment"])

    @router.post(
        "/{device_id}",
        status_code=201,
        responses={
            202: {"model": EnrolmentInfo, "description": "pending an operator's approval"},
            503: {"description": "too many enrolments wait for an operator"},
        },
    )
    def enrol(
        device_id: DeviceIdPath, request: EnrolmentRequest, response: Response
    ) -> EnrolmentInfo:
        """A device's CSR (+ secret): 201 with the certificate, or 202 pending approval."""
        info = enrolments.request(device_id, request)
        response.status_code = 201 if info.status is EnrolmentStatus.ISSUED else 202
        return info

    @router.get("")
    def list_enrolments(_reader: Reader) -> list[EnrolmentInfo]:
        return enrolments.all()

    @router.get("/{device_id}")
    def get_enrolment(device_id: DeviceIdPath) -> EnrolmentInfo:
        return enrolments.get(device_id)

    def decide(device_id: str, request: Request, caller: Caller, *, approve: bool) -> EnrolmentInfo:
        wanted = AccessRequest(
            operation="catalog.enrolment.decide",
            target=f"enrolment {device_id}",
        )
        access.authorize(caller, wanted, request)
        return enrolments.decide(device_id, approve=approve)

    @router.post("/{device_id}/approve")
    def approve(device_id: DeviceIdPath, request: Request, caller: Caller) -> EnrolmentInfo:
        return decide(device_id, request, caller, approve=True)

    @router.post("/{device_id}/reject")
    def reject(device_id: DeviceIdPath, request: Request, caller: Caller) -> EnrolmentInfo:
        return decide(device_id, request, caller, approve=False)

    return router
