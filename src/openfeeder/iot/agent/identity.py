"""A device's X.509 identity: made on the device, certified by the catalog, kept in its state folder.

When the installation runs secured (``[security] ca_file`` names the platform CA) and no
certificate is configured for the device (``cert_file`` / ``key_file``), the agent gets its own:

1. it makes an ECDSA P-256 key (``<state_dir>/<device>/device.key``, mode 0600; the key never
   leaves the device) and a certificate signing request whose CN is its device id;
2. it sends the CSR to the catalog (``POST /v1/enrolments/{id}``, over HTTPS checked against the
   CA) with the enrolment secret if it has one (``[security] enrolment_secret_file`` or
   ``openfeeder agent --enrolment-secret-file``): the catalog signs at once. Without the secret the
   request waits for an operator (``openfeeder catalog enrolments approve ID``); the device asks
   again every ``poll_interval_s`` until its certificate is issued, and gives up when an operator
   rejects it (:class:`EnrolmentRejectedError`);
3. it keeps the certificate (``device.crt``) next to the key and checks that the CA the catalog
   names is the one it was given (a catalog that answers with another CA is refused);
4. with payload protection whose keys come from the catalog (``want_kek``), the answer also brings
   the device's key-encryption key sealed to its key: it is opened and kept in ``device.kek``
   (mode 0600; :mod:`openfeeder.iot.agent.payload_keys`).

At the next start a certificate that is still valid for more than ``renew_before_s`` (at most a
third of its lifetime), belongs to
the key, names the device and was signed by the CA is used as it is, without asking the catalog;
otherwise the device enrols again with the key it has (so a pending approval survives a restart).
The files then give the TLS client context of its broker connections (mutual TLS, ``mqtts://``)
and, through :func:`catalog_verify`, the check of the catalog's HTTPS certificate.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from openfeeder.config import SecuritySettings, Settings
from openfeeder.errors import ConfigError, SecurityError
from openfeeder.iot.access import DEVICE_ROLE
from openfeeder.iot.agent.payload_keys import KEK_FILE, read_kek, write_private
from openfeeder.iot.catalog_client import (
    CatalogClient,
    CatalogError,
    CatalogNotFoundError,
    CatalogRequestError,
    EnrolmentInfo,
    EnrolmentStatus,
)
from openfeeder.security.key_delivery import KekDeliveryError, open_kek
from openfeeder.security.pki import PkiError, certificate_identity, make_csr, new_private_key
from openfeeder.security.tls import TlsFiles, TlsVersionName

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "DeviceIdentity",
    "Enroller",
    "EnrolmentRejectedError",
    "catalog_client",
    "catalog_verify",
    "enrol_device",
    "enrolment_secret",
    "load_identity",
    "needs_enrolment",
]

_LOG = logging.getLogger(__name__)

KEY_FILE: Final = "device.key"
CERT_FILE: Final = "device.crt"
DEFAULT_POLL_INTERVAL_S: Final = 2.0
DEFAULT_RENEW_BEFORE_S: Final = 7 * 86_400.0
"""A stored certificate that expires sooner than this is renewed at start."""
_RETRY_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


class EnrolmentRejectedError(SecurityError):
    """The catalog will not certify this device (an operator rejected it, or the CSR was refused)."""

    def __init__(self, message: str, *, device_id: str) -> None:
        super().__init__(message)
        self.device_id = device_id


@runtime_checkable
class Enroller(Protocol):
    """The catalog's enrolment desk as a device uses it
    (:class:`openfeeder.iot.catalog_client.CatalogClient`)."""

    def enrol(
        self, device_id: str, csr_pem: bytes, *, secret: str | None = None
    ) -> EnrolmentInfo: ...

    def enrolment(self, device_id: str) -> EnrolmentInfo: ...


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device's certificate and key on disk, and the CA both ends trust."""

    device_id: str
    files: TlsFiles
    not_after: dt.datetime
    serial: int
    kek: bytes | None = None
    """The payload key-encryption key delivered with the certificate (None: none asked for)."""


def needs_enrolment(security: SecuritySettings) -> bool:
    """Whether a device enrols: the installation is secured (a CA) and no certificate is given."""
    return security.ca_file is not None and security.cert_file is None


def catalog_verify(security: SecuritySettings) -> TlsFiles | None:
    """How a device or service checks the catalog's HTTPS: the platform CA (None: not secured)."""
    if security.ca_file is None:
        return None
    return TlsFiles(security.ca_file, min_version=security.tls_min_version)


def catalog_client(settings: Settings) -> CatalogClient:
    """A client of ``[catalog] url`` that checks an HTTPS catalog against the platform CA."""
    verify = catalog_verify(settings.security)
    return CatalogClient(
        settings.catalog.url,
        timeout_s=settings.catalog.request_timeout_s,
        verify=verify.client_context() if verify is not None else None,
    )


def enrolment_secret(path: Path | None) -> str | None:
    """The enrolment secret (first line of ``path``); None without a file."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as err:
        raise ConfigError(f"security.enrolment_secret_file: cannot read {path}") from err


def load_identity(
    folder: Path,
    device_id: str,
    *,
    ca_file: Path,
    min_version: TlsVersionName = "1.3",
    renew_before_s: float = DEFAULT_RENEW_BEFORE_S,
    want_kek: bool = False,
) -> DeviceIdentity | None:
    """The identity stored in ``folder`` if it is usable (see the module docstring), else None.

    ``want_kek``: payload protection with keys from the catalog; an identity without the
    key-encryption key that came with it (enrolled before protection was on) is not usable."""
    key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
    if not key_path.exists() or not cert_path.exists():
        return None
    kek = read_kek(folder / KEK_FILE) if want_kek else None
    if want_kek and kek is None:
        _LOG.info(
            "%s: no payload key-encryption key stored; enrolling again",
            folder,
            extra={"device_id": device_id},
        )
        return None
    try:
        key = _read_key(key_path)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except (OSError, ValueError) as err:
        _LOG.warning("%s: stored identity unusable, enrolling again: %s", folder, err)
        return None
    problem = _problem(cert, key, ca, device_id, renew_before_s=renew_before_s)
    if problem is not None:
        _LOG.info("%s: %s; enrolling again", cert_path, problem, extra={"device_id": device_id})
        return None
    return DeviceIdentity(
        device_id=device_id,
        files=TlsFiles(ca_file, cert_path, key_path, min_version),
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        kek=kek,
    )


def enrol_device(
    enroller: Enroller,
    device_id: str,
    folder: Path,
    *,
    ca_file: Path,
    secret: str | None,
    min_version: TlsVersionName = "1.3",
    stop: threading.Event | None = None,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    renew_before_s: float = DEFAULT_RENEW_BEFORE_S,
    on_pending: Callable[[], None] | None = None,
    want_kek: bool = False,
) -> DeviceIdentity | None:
    """The device's identity: the stored one if usable, else a certificate from the catalog.

    Blocks until the catalog issued it (retrying while the catalog is unreachable, polling while an
    operator has not decided); None when ``stop`` is set first. :class:`EnrolmentRejectedError`
    when an operator rejects the request or the catalog refuses the CSR. ``want_kek``: the
    device's payload keys come from the catalog, so the answer must bring its key-encryption key
    (:class:`~openfeeder.security.key_delivery.KekDeliveryError` if it does not).
    """
    stop = stop or threading.Event()
    stored = load_identity(
        folder,
        device_id,
        ca_file=ca_file,
        min_version=min_version,
        renew_before_s=renew_before_s,
        want_kek=want_kek,
    )
    if stored is not None:
        return stored
    key = _device_key(folder / KEY_FILE)
    csr_pem, _ = make_csr(device_id, role=DEVICE_ROLE, key=key)
    submitted = False
    attempt = 0
    while not stop.is_set():
        try:
            if submitted:
                info = enroller.enrolment(device_id)
            else:
                info = enroller.enrol(device_id, csr_pem, secret=secret)
                submitted = True
                if info.status is EnrolmentStatus.PENDING:
                    _LOG.warning(
                        "%s: enrolment waits for an operator's approval "
                        "(openfeeder catalog enrolments approve %s)",
                        device_id,
                        device_id,
                        extra={"device_id": device_id, "event": "enrolment_pending"},
                    )
                    if on_pending is not None:
                        on_pending()
        except CatalogNotFoundError:  # the catalog restarted and forgot the pending request
            submitted = False
            continue
        except CatalogRequestError as err:  # 4xx: the CSR itself is refused; asking again won't do
            raise EnrolmentRejectedError(
                f"{device_id}: the catalog refused the enrolment: {err}", device_id=device_id
            ) from err
        except CatalogError as err:  # unreachable or 5xx: later
            delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
            attempt += 1
            _LOG.warning(
                "%s: enrolment failed (attempt %d, next in %.1f s): %s",
                device_id,
                attempt,
                delay,
                err,
                extra={"device_id": device_id},
            )
            stop.wait(delay)
            continue
        attempt = 0
        if info.status is EnrolmentStatus.ISSUED:
            return _store(
                info,
                folder,
                device_id,
                ca_file=ca_file,
                min_version=min_version,
                want_kek=want_kek,
            )
        if info.status is EnrolmentStatus.REJECTED:
            raise EnrolmentRejectedError(
                f"{device_id}: enrolment rejected ({info.detail or 'no reason given'})",
                device_id=device_id,
            )
        stop.wait(poll_interval_s)
    return None


def _store(
    info: EnrolmentInfo,
    folder: Path,
    device_id: str,
    *,
    ca_file: Path,
    min_version: TlsVersionName,
    want_kek: bool = False,
) -> DeviceIdentity:
    """Check what the catalog issued against the key and the trusted CA, then write it."""
    if info.certificate_pem is None:
        raise EnrolmentRejectedError(
            f"{device_id}: the catalog says issued but sent no certificate", device_id=device_id
        )
    try:
        cert = x509.load_pem_x509_certificate(info.certificate_pem.encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except (OSError, ValueError) as err:
        raise PkiError(f"{device_id}: unusable certificate or CA ({err})", name=device_id) from err
    if info.ca_pem is not None:
        named = x509.load_pem_x509_certificate(info.ca_pem.encode("ascii"))
        der = serialization.Encoding.DER
        if named.public_bytes(der) != ca.public_bytes(der):
            raise PkiError(
                f"{device_id}: the catalog certifies with another CA than {ca_file}",
                name=device_id,
            )
    key = _read_key(folder / KEY_FILE)
    problem = _problem(cert, key, ca, device_id, renew_before_s=0.0)
    if problem is not None:
        raise PkiError(
            f"{device_id}: the issued certificate is unusable: {problem}", name=device_id
        )
    kek = None
    if want_kek:
        if info.kek is None:
            raise KekDeliveryError(
                f"{device_id}: payload protection takes its keys from the catalog, but the "
                "catalog sent no key-encryption key (it needs [payload_protection] enabled with "
                "key_dir)",
                device_id=device_id,
            )
        kek = open_kek(info.kek, private_key=key, device_id=device_id)
        write_private(folder / KEK_FILE, base64.b64encode(kek) + b"\n")
    cert_path = folder / CERT_FILE
    _write(cert_path, info.certificate_pem.encode("ascii"), mode=0o644)
    _LOG.info(
        "%s: certificate issued, serial %x, valid until %s",
        device_id,
        cert.serial_number,
        cert.not_valid_after_utc.isoformat(),
        extra={"device_id": device_id, "event": "enrolled"},
    )
    return DeviceIdentity(
        device_id=device_id,
        files=TlsFiles(ca_file, cert_path, folder / KEY_FILE, min_version),
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        kek=kek,
    )


def _problem(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    device_id: str,
    *,
    renew_before_s: float,
) -> str | None:
    """Why ``cert`` cannot serve as the device's identity (None: it can)."""
    try:
        name, role = certificate_identity(cert)
    except PkiError as err:
        return str(err)
    if name != device_id or role != DEVICE_ROLE:
        return f"the certificate is for {name!r} ({role}), not device {device_id!r}"
    if cert.public_key() != key.public_key():
        return "the certificate does not belong to the stored key"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the certificate was not issued by the platform CA"
    left_s = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
    lifetime_s = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    if left_s <= min(renew_before_s, lifetime_s / 3):
        return "the certificate expires soon" if left_s > 0 else "the certificate has expired"
    return None


def _device_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device's key: the one it has, or a new one written with mode 0600."""
    if path.exists():
        try:
            return _read_key(path)
        except (OSError, ValueError) as err:
            raise PkiError(f"{path}: unreadable device key ({err})", path=path) from err
    key = new_private_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, mode=0o600)
    return key


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: the device key must be an EC key")
    return key


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Atomically (temporary file, then rename), created with ``mode``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError as err:
        raise PkiError(f"{path}: cannot write: {err.strerror}", path=path) from err
