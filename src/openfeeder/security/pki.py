"""The platform's certificate authority: identities as X.509 certificates.

One CA per installation (``openfeeder pki init DIR``) signs every certificate; brokers, the catalog
and every client trust that CA and nothing else. An identity is the certificate's subject common
name (CN: a device id or a service name, ``[A-Za-z0-9_.-]{1,64}``), and its role the subject's
organizational unit (OU: ``device`` or a service role such as ``historian``). Keys are ECDSA P-256,
which OpenSSL (Mosquitto), Python's ``ssl`` and every TLS 1.3 stack accept.

The CA directory::

    DIR/ca.crt               the CA certificate (give it to everyone)
    DIR/ca.key               the CA's private key (mode 0600; whoever holds it can mint identities)
    DIR/index.json           every identity issued: name, role, serials, expiry; revocations
    DIR/crl.pem              the certificate revocation list, signed by the CA (brokers read it)
    DIR/issued/NAME.crt      certificates issued with a key made here (``issue``)
    DIR/issued/NAME.key      ... and their keys (mode 0600)

A certificate that must no longer connect (a device stolen or removed, a key that leaked, a
certificate replaced by a newer one) is revoked (:meth:`CertificateAuthority.revoke`,
``openfeeder pki revoke``): its serial goes into the index and into ``crl.pem``, which Mosquitto
(``crlfile``) and the embedded broker (``--crl``) check on every new connection. The CRL's next
update is the CA's own expiry: it is a file handed to the brokers, replaced on every revocation,
not fetched from a distribution point, so it must not go stale and lock every client out.

A device normally makes its own key and sends a certificate signing request (CSR) to the catalog
(:meth:`CertificateAuthority.sign_csr`): its private key never leaves it. A name keeps its role:
issuing ``meter-7`` as a service after it was a device is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openfeeder.errors import SecurityError

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CRL_FILE",
    "DEFAULT_CA_VALID_DAYS",
    "DEFAULT_CERT_VALID_DAYS",
    "INDEX_FILE",
    "NAME_PATTERN",
    "CertificateAuthority",
    "IssuedIdentity",
    "PkiError",
    "RevocationList",
    "RevocationReason",
    "Revoked",
    "certificate_identity",
    "load_certificate",
    "make_csr",
    "new_private_key",
]

CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
INDEX_FILE: Final = "index.json"
CRL_FILE: Final = "crl.pem"
ISSUED_DIR: Final = "issued"
DEFAULT_CA_VALID_DAYS: Final = 3650
DEFAULT_CERT_VALID_DAYS: Final = 825
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""Identity names: device ids and service names (the topic scheme's id pattern)."""
ROLE_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CLOCK_SKEW: Final = dt.timedelta(minutes=5)
"""Certificates are valid from a few minutes before they are made (clocks differ)."""


class PkiError(SecurityError):
    """A CA, certificate, key or CSR is unusable; ``path`` or ``name`` says which."""

    def __init__(self, message: str, *, path: Path | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.name = name


@dataclass(frozen=True, slots=True)
class IssuedIdentity:
    """A certificate issued by the CA (PEM), with its key when the CA made the key."""

    name: str
    role: str
    serial: int
    not_after: dt.datetime
    certificate_pem: bytes
    key_pem: bytes | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class RevocationReason(StrEnum):
    """Why a certificate was revoked (the CRL entry's reason code, RFC 5280)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key_compromise"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation_of_operation"
    AFFILIATION_CHANGED = "affiliation_changed"


_X509_REASONS: Final = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
}


@dataclass(frozen=True, slots=True)
class Revoked:
    """One revoked certificate: whose, why and when."""

    serial: int
    name: str
    reason: RevocationReason
    revoked_at: dt.datetime


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_name(name: str) -> None:
    if NAME_PATTERN.fullmatch(name) is None:
        raise PkiError(f"identity name {name!r} must match [A-Za-z0-9_.-]{{1,64}}", name=name)


def _check_role(role: str, *, name: str) -> None:
    if ROLE_PATTERN.fullmatch(role) is None:
        raise PkiError(f"{name}: role {role!r} must match [a-z][a-z0-9_]{{0,31}}", name=name)


def make_csr(
    name: str, *, role: str, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[bytes, bytes]:
    """A certificate signing request for ``name`` in ``role``: (CSR PEM, private key PEM).

    What a device does at enrolment: the key stays with it, the CSR goes to the catalog.
    """
    _check_name(name)
    _check_role(role, name=name)
    private = key or new_private_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(private, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(private)


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate from ``path``; :class:`PkiError` naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PkiError(f"{path}: cannot read the certificate: {err.strerror}", path=path) from err
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise PkiError(f"{path}: not a PEM certificate: {err}", path=path) from err


def certificate_identity(cert: x509.Certificate) -> tuple[str, str | None]:
    """(name, role) of a certificate: its subject CN and OU (None when it has no OU)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise PkiError("the certificate's subject has no common name (CN)")
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(units[0].value) if units else None
    return str(names[0].value), role


class CertificateAuthority:
    """The CA in a directory: issues certificates and keeps the index of identities.

    Open an existing one with :meth:`open`, make one with :meth:`init`. Methods are safe to call
    from several threads (the index is written under a lock, atomically).
    """

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = directory
        self.certificate = cert
        self._key = key
        self._lock = threading.Lock()

    # -- creating and opening ------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        common_name: str = "OpenFeeder CA",
        valid_days: int = DEFAULT_CA_VALID_DAYS,
        force: bool = False,
    ) -> CertificateAuthority:
        """Create a CA in ``directory`` (made if missing); refuses to replace one unless ``force``."""
        if valid_days < 1:
            raise PkiError(f"{directory}: valid_days must be at least 1, not {valid_days}")
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if not force and (cert_path.exists() or key_path.exists()):
            raise PkiError(
                f"{directory}: a CA exists already ({CA_CERT_FILE}); replacing it would orphan "
                "every certificate it issued (force to do it anyway)",
                path=directory,
            )
        key = new_private_key()
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _write(key_path, _key_pem(key), private=True)
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            index = directory / INDEX_FILE
            if force or not index.exists():
                _write(index, b'{"identities": {}}\n')
        except OSError as err:
            raise PkiError(
                f"{directory}: cannot write the CA: {err.strerror}", path=directory
            ) from err
        ca = cls(directory, cert, key)
        ca.write_crl()
        return ca

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        """The CA in ``directory`` (made by :meth:`init`)."""
        cert = load_certificate(directory / CA_CERT_FILE)
        key_path = directory / CA_KEY_FILE
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as err:
            raise PkiError(
                f"{key_path}: cannot read the CA key: {err.strerror}", path=key_path
            ) from err
        except ValueError as err:
            raise PkiError(f"{key_path}: not a PEM private key: {err}", path=key_path) from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path}: the CA key must be an EC key", path=key_path)
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise PkiError(f"{key_path}: the key does not belong to {CA_CERT_FILE}", path=key_path)
        return cls(directory, cert, key)

    @property
    def cert_file(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def crl_file(self) -> Path:
        """``DIR/crl.pem`` (made by :meth:`init`, :meth:`write_crl` and :meth:`revoke`)."""
        return self.directory / CRL_FILE

    # -- issuing -------------------------------------------------------------------------------

    def issue(
        self,
        name: str,
        *,
        role: str,
        hosts: Iterable[str] = (),
        valid_days: int = DEFAULT_CERT_VALID_DAYS,
        write: bool = True,
    ) -> IssuedIdentity:
        """Make a key and a certificate for ``name`` in ``role``.

        ``hosts`` (DNS names or IP addresses) make it a server certificate too (a broker, the
        catalog's HTTPS). With ``write`` the pair is saved as ``issued/NAME.crt`` / ``.key``.
        """
        key = new_private_key()
        cert = self._build(
            name, role=role, public=key.public_key(), hosts=hosts, valid_days=valid_days
        )
        key_pem = _key_pem(key)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_file = key_file = None
        if write:
            folder = self.directory / ISSUED_DIR
            cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
            try:
                folder.mkdir(exist_ok=True)
                _write(key_file, key_pem, private=True)
                _write(cert_file, cert_pem)
            except OSError as err:
                raise PkiError(
                    f"{folder}: cannot write {name}'s certificate: {err.strerror}", name=name
                ) from err
        return IssuedIdentity(
            name=name,
            role=role,
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            certificate_pem=cert_pem,
            key_pem=key_pem,
            cert_file=cert_file,
            key_file=key_file,
        )

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        name: str,
        role: str,
        valid_days: int = DEFAULT_CERT_VALID_DAYS,
    ) -> IssuedIdentity:
        """Certify the key of a CSR as ``name`` in ``role`` (the CSR must say that name).

        The CSR's signature proves its sender holds the key; the subject it asks for is checked
        against what the caller (the catalog, after the enrolment secret or an operator's approval)
        decided, never taken on trust.
        """
        public = self.check_csr(csr_pem, name=name)
        cert = self._build(name, role=role, public=public, hosts=(), valid_days=valid_days)
        return IssuedIdentity(
            name=name,
            role=role,
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    @staticmethod
    def check_csr(csr_pem: bytes, *, name: str) -> ec.EllipticCurvePublicKey:
        """The key of a well-formed CSR for ``name``: PEM, signed by its key, ECDSA P-256, CN
        equal to ``name``; :class:`PkiError` saying which check failed otherwise."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise PkiError(
                f"{name}: the CSR is not a PEM certificate request: {err}", name=name
            ) from err
        try:
            valid = csr.is_signature_valid
        except InvalidSignature:
            valid = False
        if not valid:
            raise PkiError(f"{name}: the CSR's signature is invalid", name=name)
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise PkiError(f"{name}: the CSR's key must be ECDSA P-256", name=name)
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        asked = str(cns[0].value) if cns else None
        if asked != name:
            raise PkiError(
                f"{name}: the CSR asks for CN={asked!r}, not the enrolled name {name!r}", name=name
            )
        return public

    def _build(
        self,
        name: str,
        *,
        role: str,
        public: ec.EllipticCurvePublicKey,
        hosts: Iterable[str],
        valid_days: int,
    ) -> x509.Certificate:
        _check_name(name)
        _check_role(role, name=name)
        if valid_days < 1:
            raise PkiError(f"{name}: valid_days must be at least 1, not {valid_days}", name=name)
        with self._lock:
            self._claim(name, role)
            now = dt.datetime.now(dt.UTC)
            not_after = min(
                now + dt.timedelta(days=valid_days), self.certificate.not_valid_after_utc
            )
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
            if sans:
                usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = (
                x509.CertificateBuilder()
                .subject_name(
                    x509.Name(
                        [
                            x509.NameAttribute(NameOID.COMMON_NAME, name),
                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                        ]
                    )
                )
                .issuer_name(self.certificate.subject)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - _CLOCK_SKEW)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                    critical=False,
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            cert = builder.sign(self._key, hashes.SHA256())
            self._record(name, role, cert)
        return cert

    # -- revocation ----------------------------------------------------------------------------

    def revoke(
        self,
        name: str,
        *,
        serial: int | None = None,
        reason: RevocationReason = RevocationReason.UNSPECIFIED,
        keep_latest: bool = False,
    ) -> list[int]:
        """Revoke ``name``'s certificates and rewrite the CRL; the serials revoked now.

        Without ``serial``: every certificate issued to ``name`` that has not expired, or with
        ``keep_latest`` all but the newest (the ones a renewal or a re-enrolment replaced). A
        serial revoked before is not revoked again. :class:`PkiError` for a name never issued or
        a serial that is not ``name``'s.
        """
        with self._lock:
            document = self._read_document()
            entries = _identities(document, self.directory / INDEX_FILE)
            entry = entries.get(name)
            if entry is None:
                raise PkiError(f"{name}: no certificate was issued to this name", name=name)
            issued = _serials(entry)
            now = dt.datetime.now(dt.UTC)
            if serial is not None:
                if serial not in issued:
                    raise PkiError(
                        f"{name}: serial {serial:x} was not issued to this name (its serials: "
                        f"{', '.join(format(s, 'x') for s in issued) or 'none'})",
                        name=name,
                    )
                chosen = [serial]
            else:
                chosen = [s for s, not_after in issued.items() if not_after > now]
                if keep_latest and entry.get("serial") is not None:
                    chosen = [s for s in chosen if s != int(str(entry["serial"]), 16)]
            revoked = _revoked_entries(document)
            fresh = [s for s in chosen if format(s, "x") not in revoked]
            for number in fresh:
                revoked[format(number, "x")] = {
                    "name": name,
                    "reason": reason.value,
                    "revoked_at": now.isoformat(),
                }
            if fresh:
                document["revoked"] = dict(sorted(revoked.items()))
                self._write_document(document)
            self._write_crl_locked(document)
        return fresh

    def revoked(self) -> list[Revoked]:
        """Every certificate revoked so far, oldest revocation first."""
        with self._lock:
            document = self._read_document()
        out = [
            Revoked(
                serial=int(number, 16),
                name=str(entry.get("name", "")),
                reason=RevocationReason(entry.get("reason", "unspecified")),
                revoked_at=dt.datetime.fromisoformat(str(entry["revoked_at"])),
            )
            for number, entry in _revoked_entries(document).items()
        ]
        return sorted(out, key=lambda r: (r.revoked_at, r.serial))

    def write_crl(self) -> Path:
        """Sign and write ``crl.pem`` from the index (the brokers' copy of the revocations)."""
        with self._lock:
            self._write_crl_locked(self._read_document())
        return self.crl_file

    def _write_crl_locked(self, document: dict[str, Any]) -> None:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(max(self.certificate.not_valid_after_utc, now + dt.timedelta(days=1)))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for number, entry in _revoked_entries(document).items():
            reason = RevocationReason(entry.get("reason", "unspecified"))
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(number, 16))
                .revocation_date(dt.datetime.fromisoformat(str(entry["revoked_at"])))
                .add_extension(x509.CRLReason(_X509_REASONS[reason]), critical=False)
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        try:
            _write(self.crl_file, crl.public_bytes(serialization.Encoding.PEM))
        except OSError as err:
            raise PkiError(
                f"{self.crl_file}: cannot write the CRL: {err.strerror}", path=self.crl_file
            ) from err

    # -- the index -----------------------------------------------------------------------------

    def identities(self) -> dict[str, str]:
        """Every identity issued so far: name -> role."""
        with self._lock:
            return {name: entry["role"] for name, entry in self._read_index().items()}

    def _read_index(self) -> dict[str, dict[str, Any]]:
        return _identities(self._read_document(), self.directory / INDEX_FILE)

    def _read_document(self) -> dict[str, Any]:
        path = self.directory / INDEX_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"identities": {}}
        except (OSError, ValueError) as err:
            raise PkiError(f"{path}: unreadable index of identities: {err}", path=path) from err
        if not isinstance(document, dict):
            raise PkiError(f"{path}: the index must be an object", path=path)
        return document

    def _write_document(self, document: dict[str, Any]) -> None:
        path = self.directory / INDEX_FILE
        try:
            _write(path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
        except OSError as err:
            raise PkiError(f"{path}: cannot write the index: {err.strerror}", path=path) from err

    def _claim(self, name: str, role: str) -> None:
        held = self._read_index().get(name)
        if held is not None and held.get("role") != role:
            raise PkiError(
                f"{name}: already issued with role {held.get('role')!r}; a name keeps its role "
                f"(asked for {role!r})",
                name=name,
            )

    def _record(self, name: str, role: str, cert: x509.Certificate) -> None:
        document = self._read_document()
        entries = _identities(document, self.directory / INDEX_FILE)
        serial = format(cert.serial_number, "x")
        not_after = cert.not_valid_after_utc.isoformat()
        # every certificate of the name stays listed (so it can be revoked), expired ones dropped
        now = dt.datetime.now(dt.UTC)
        earlier = [
            {"serial": format(s, "x"), "not_after": until.isoformat()}
            for s, until in _serials(entries.get(name, {})).items()
            if until > now and s != cert.serial_number
        ]
        entries[name] = {
            "role": role,
            "serial": serial,
            "not_after": not_after,
            "serials": [*earlier, {"serial": serial, "not_after": not_after}],
        }
        document["identities"] = dict(sorted(entries.items()))
        self._write_document(document)


def _identities(document: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    entries = document.get("identities")
    if not isinstance(entries, dict):
        raise PkiError(f"{path}: 'identities' must be an object", path=path)
    return entries


def _serials(entry: Mapping[str, Any]) -> dict[int, dt.datetime]:
    """Every serial issued to an index entry, with its expiry (an index written before serials
    were listed has the newest one only)."""
    listed = entry.get("serials")
    if not isinstance(listed, list):
        listed = [entry] if "serial" in entry else []
    return {
        int(str(item["serial"]), 16): dt.datetime.fromisoformat(str(item["not_after"]))
        for item in listed
    }


def _revoked_entries(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    revoked = document.get("revoked", {})
    return dict(revoked) if isinstance(revoked, dict) else {}


class RevocationList:
    """The revoked serials of ``crl_file``, checked against the CA that must have signed it and
    read again when the file changes (a broker asks on every new connection).

    A CRL that is missing, unreadable, not signed by the CA or from another issuer makes
    :meth:`is_revoked` raise :class:`PkiError` naming the file: a broker then refuses the
    connection rather than let a revoked certificate in.
    """

    def __init__(self, crl_file: Path, ca_certificate: x509.Certificate) -> None:
        self.crl_file = crl_file
        self._ca = ca_certificate
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()

    @classmethod
    def of(cls, crl_file: Path, ca_file: Path) -> RevocationList:
        """The CRL at ``crl_file`` of the CA certificate at ``ca_file`` (both checked now)."""
        out = cls(crl_file, load_certificate(ca_file))
        out.serials()
        return out

    def serials(self) -> frozenset[int]:
        """The revoked serials (the file read again if it changed since the last call)."""
        try:
            info = self.crl_file.stat()
        except OSError as err:
            raise PkiError(
                f"{self.crl_file}: cannot read the CRL: {err.strerror}", path=self.crl_file
            ) from err
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        with self._lock:
            if stamp != self._stamp:
                self._serials = self._load()
                self._stamp = stamp
            return self._serials

    def is_revoked(self, serial: int) -> bool:
        return serial in self.serials()

    def _load(self) -> frozenset[int]:
        path = self.crl_file
        try:
            crl = x509.load_pem_x509_crl(path.read_bytes())
        except OSError as err:
            raise PkiError(f"{path}: cannot read the CRL: {err.strerror}", path=path) from err
        except ValueError as err:
            raise PkiError(f"{path}: not a PEM CRL: {err}", path=path) from err
        if crl.issuer != self._ca.subject:
            raise PkiError(f"{path}: the CRL was issued by {crl.issuer.rfc4514_string()}, "
                           f"not the CA {self._ca.subject.rfc4514_string()}", path=path)  # fmt: skip
        if not crl.is_signature_valid(self._ca.public_key()):  # type: ignore[arg-type]
            raise PkiError(f"{path}: the CRL's signature is not the CA's", path=path)
        return frozenset(entry.serial_number for entry in crl)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically (temporary file, then rename); a private file is made mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    descriptor = os.open(temporary, flags, 0o600 if private else 0o644)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
