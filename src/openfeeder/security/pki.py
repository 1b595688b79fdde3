"""The platform's certificate authority: identities as X.509 certificates.

One CA per installation (``openfeeder pki init DIR``) signs every certificate; brokers, the catalog
and every client trust that CA and nothing else. An identity is the certificate's subject common
name (CN: a device id or a service name, ``[A-Za-z0-9_.-]{1,64}``), and its role the subject's
organizational unit (OU: ``device`` or a service role such as ``historian``). Keys are ECDSA P-256,
which OpenSSL (Mosquitto), Python's ``ssl`` and every TLS 1.3 stack accept.

The CA directory::

    DIR/ca.crt               the CA certificate (give it to everyone)
    DIR/ca.key               the CA's private key (mode 0600; whoever holds it can mint identities)
    DIR/index.json           every identity issued: name, role, serial, expiry
    DIR/issued/NAME.crt      certificates issued with a key made here (``issue``)
    DIR/issued/NAME.key      ... and their keys (mode 0600)

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
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openfeeder.errors import SecurityError

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_CA_VALID_DAYS",
    "DEFAULT_CERT_VALID_DAYS",
    "INDEX_FILE",
    "NAME_PATTERN",
    "CertificateAuthority",
    "IssuedIdentity",
    "PkiError",
    "certificate_identity",
    "load_certificate",
    "make_csr",
    "new_private_key",
]

CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
INDEX_FILE: Final = "index.json"
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
        return cls(directory, cert, key)

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

    # -- the index -----------------------------------------------------------------------------

    def identities(self) -> dict[str, str]:
        """Every identity issued so far: name -> role."""
        with self._lock:
            return {name: entry["role"] for name, entry in self._read_index().items()}

    def _read_index(self) -> dict[str, dict[str, str]]:
        path = self.directory / INDEX_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise PkiError(f"{path}: unreadable index of identities: {err}", path=path) from err
        entries = document.get("identities") if isinstance(document, Mapping) else None
        if not isinstance(entries, dict):
            raise PkiError(f"{path}: 'identities' must be an object", path=path)
        return entries

    def _claim(self, name: str, role: str) -> None:
        held = self._read_index().get(name)
        if held is not None and held.get("role") != role:
            raise PkiError(
                f"{name}: already issued with role {held.get('role')!r}; a name keeps its role "
                f"(asked for {role!r})",
                name=name,
            )

    def _record(self, name: str, role: str, cert: x509.Certificate) -> None:
        entries = self._read_index()
        entries[name] = {
            "role": role,
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
        path = self.directory / INDEX_FILE
        body = json.dumps({"identities": dict(sorted(entries.items()))}, indent=1) + "\n"
        try:
            _write(path, body.encode("utf-8"))
        except OSError as err:
            raise PkiError(f"{path}: cannot write the index: {err.strerror}", path=path) from err


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
