"""TLS contexts for brokers, services and devices, and the identity of a TLS peer.

Both ends trust only the platform's CA (:mod:`openfeeder.security.pki`); TLS 1.3 is the minimum
unless an installation lowers it (``[security] tls_min_version``). A broker or MQTT server context
requires a client certificate: a client without one, or with one from another CA, fails the
handshake before a single MQTT byte is read. The peer's identity is its certificate's CN (device
id or service name) and its role the OU.

:class:`TlsFiles` names the three files one party needs (CA, own certificate, own key); it is what
settings (``[security]``), the CLI and the demo hand around, and it builds the contexts.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from openfeeder.config import SecuritySettings
from openfeeder.security.pki import (
    ISSUED_DIR,
    CertificateAuthority,
    PkiError,
    certificate_identity,
    load_certificate,
)

__all__ = [
    "DEFAULT_MIN_VERSION",
    "TLS_VERSIONS",
    "PeerIdentity",
    "TlsFiles",
    "TlsVersionName",
    "client_context",
    "issued_files",
    "own_identity",
    "peer_identity",
    "server_context",
    "tls_files_from",
]

TlsVersionName = Literal["1.2", "1.3"]
TLS_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_MIN_VERSION: Final[TlsVersionName] = "1.3"


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is at the other end of a TLS connection: certificate CN and OU (None if absent)."""

    name: str
    role: str | None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The CA certificate every party trusts, and this party's certificate and key (optional for
    a client that only checks the server, e.g. an operator's HTTPS client)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    min_version: TlsVersionName = DEFAULT_MIN_VERSION

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        if self.cert_file is None or self.key_file is None:
            raise PkiError(f"a TLS server needs a certificate and a key (CA {self.ca_file})")
        return server_context(
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            require_client_cert=require_client_cert,
            min_version=self.min_version,
        )

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        return client_context(
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            min_version=self.min_version,
            check_hostname=check_hostname,
        )


def issued_files(
    ca: CertificateAuthority, name: str, *, min_version: TlsVersionName = DEFAULT_MIN_VERSION
) -> TlsFiles:
    """The files of an identity the CA issued with :meth:`CertificateAuthority.issue`."""
    folder = ca.directory / ISSUED_DIR
    files = TlsFiles(ca.cert_file, folder / f"{name}.crt", folder / f"{name}.key", min_version)
    for path in (files.cert_file, files.key_file):
        if path is not None and not path.exists():
            raise PkiError(f"{path}: {name} was not issued here", path=path, name=name)
    return files


def tls_files_from(security: SecuritySettings) -> TlsFiles | None:
    """The ``[security]`` files of this party (None when no CA is configured)."""
    if security.ca_file is None:
        return None
    return TlsFiles(
        security.ca_file, security.cert_file, security.key_file, security.tls_min_version
    )


def own_identity(files: TlsFiles | None, *, default: str) -> str:
    """The CN of this party's certificate, or ``default`` without one."""
    if files is None or files.cert_file is None:
        return default
    return certificate_identity(load_certificate(files.cert_file))[0]


def _version(name: str) -> ssl.TLSVersion:
    try:
        return TLS_VERSIONS[name]
    except KeyError:
        raise PkiError(f"TLS version {name!r} is not one of {sorted(TLS_VERSIONS)}") from None


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except FileNotFoundError as err:
        raise PkiError(f"{err.filename}: no such file", path=Path(str(err.filename))) from err
    except (ssl.SSLError, OSError) as err:
        raise PkiError(
            f"{cert_file} / {key_file}: not a matching PEM certificate and key ({err})",
            path=cert_file,
        ) from err


def _load_ca(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except FileNotFoundError as err:
        raise PkiError(f"{ca_file}: no such CA file", path=ca_file) from err
    except (ssl.SSLError, OSError) as err:
        raise PkiError(f"{ca_file}: not a PEM CA certificate ({err})", path=ca_file) from err


def server_context(
    *,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    require_client_cert: bool = True,
    min_version: str = DEFAULT_MIN_VERSION,
) -> ssl.SSLContext:
    """A server's context: its certificate, clients verified against ``ca_file`` only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(min_version)
    _load_chain(context, cert_file, key_file)
    _load_ca(context, ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    *,
    ca_file: Path,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    min_version: str = DEFAULT_MIN_VERSION,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client's context: the server verified against ``ca_file`` only (not the system store);
    with ``cert_file`` and ``key_file`` it presents its own certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _version(min_version)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, ca_file)
    if (cert_file is None) != (key_file is None):
        raise PkiError(f"a client certificate needs both cert_file and key_file ({cert_file})")
    if cert_file is not None and key_file is not None:
        _load_chain(context, cert_file, key_file)
    return context


def peer_identity(peercert: dict[str, Any] | None) -> PeerIdentity | None:
    """The identity in a verified peer certificate (``SSLObject.getpeercert()``), None if none."""
    if not peercert:
        return None
    name: str | None = None
    role: str | None = None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and name is None:
                name = str(value)
            elif key == "organizationalUnitName" and role is None:
                role = str(value)
    return None if name is None else PeerIdentity(name, role)
