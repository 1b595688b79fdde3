"""Ed25519 signed documents: keys, the compact envelope, and signed algorithm-package metadata.

**Envelope.** A signed document is compact text ``<payload>.<signature>``: ``payload`` is the
base64url (no padding) of canonical JSON (sorted keys, no spaces) and ``signature`` the base64url
Ed25519 signature over the payload's *ASCII text*, as in JWS compact serialisation. The payload
carries ``typ`` (what the document is: ``openfeeder.package`` or ``openfeeder.token``, so that a
token can never pass for a package signature or the reverse) and ``kid``, the signing key's id (the
first 16 hex digits of the SHA-256 of its raw public key). :func:`sign_document` makes one,
:func:`verify_document` checks it against a set of trusted keys.

**Package metadata** (:class:`PackageMetadata`): name, version, SHA-256 and size of the package
archive, when it was signed and when the signature expires (UTC ns). :func:`verify_package` refuses,
with a :class:`SignatureError` whose ``reason`` says why (:class:`SignatureFault`): no signature, a
malformed one, a key nobody trusts, a signature that does not verify, metadata that names another
package or other bytes, and an expired signature.

**Versions** (:func:`version_key`): rollback protection compares versions. A version is split into
numbers and words (``1.10.0-rc2`` -> 1, 10, 0, pre-release ``rc``, 2); numbers compare as numbers,
a pre-release is older than its release (``1.0.0-rc1 < 1.0.0``), build metadata after ``+`` is
ignored.

**Keys** are PEM files: the private key PKCS#8 (written with mode 0600), the public key
SubjectPublicKeyInfo; in device settings a public key travels as text, ``ed25519:<base64url raw>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from openfeeder.errors import SecurityError

__all__ = [
    "NS_PER_DAY",
    "PACKAGE_TYPE",
    "KeyRing",
    "PackageMetadata",
    "SignatureError",
    "SignatureFault",
    "decode_public_key",
    "encode_public_key",
    "generate_key_file",
    "key_id",
    "load_private_key",
    "load_public_key",
    "private_key_from_pem",
    "private_key_to_pem",
    "public_key_to_pem",
    "sign_document",
    "sign_package",
    "verify_document",
    "verify_package",
    "version_key",
]

PACKAGE_TYPE: Final = "openfeeder.package"
NS_PER_DAY: Final = 86_400 * 1_000_000_000
_PUBLIC_PREFIX: Final = "ed25519:"
_MAX_DOCUMENT_CHARS: Final = 16_384


class SignatureFault(StrEnum):
    """Why a signed document was refused (``SignatureError.reason``)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    MISMATCH = "mismatch"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


class SignatureError(SecurityError):
    """A signed document (package metadata, token) was refused; ``reason`` says why."""

    def __init__(self, message: str, *, reason: SignatureFault, key_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key_id = key_id


# --- keys ------------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_public_key(public_key: Ed25519PublicKey) -> str:
    """``ed25519:<base64url of the 32 raw bytes>`` (how keys travel in device settings)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _PUBLIC_PREFIX + _b64encode(raw)


def decode_public_key(text: str, *, where: str = "public key") -> Ed25519PublicKey:
    """The key :func:`encode_public_key` wrote; SecurityError naming ``where`` if it is not one."""
    if not text.startswith(_PUBLIC_PREFIX):
        raise SecurityError(f"{where}: not an 'ed25519:...' public key")
    try:
        raw = _b64decode(text.removeprefix(_PUBLIC_PREFIX))
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as err:
        raise SecurityError(f"{where}: not a 32-byte Ed25519 public key") from err


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_from_pem(data: bytes, *, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SecurityError(f"{where}: not a PEM private key without password: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SecurityError(f"{where}: not an Ed25519 private key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file; SecurityError naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SecurityError(f"{path}: cannot read the key: {err.strerror or err}") from err
    return private_key_from_pem(data, where=str(path))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (or the public half of a private key file)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SecurityError(f"{path}: cannot read the key: {err.strerror or err}") from err
    if b"PRIVATE KEY" in data:
        return private_key_from_pem(data, where=str(path)).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise SecurityError(f"{path}: not a PEM public key: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise SecurityError(f"{path}: not an Ed25519 public key")
    return key


def generate_key_file(path: Path) -> Ed25519PrivateKey:
    """A new key written to ``path`` (mode 0600, never overwrites) and its public key to
    ``<path>.pub``."""
    key = Ed25519PrivateKey.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_to_pem(key))
        path.with_name(path.name + ".pub").write_bytes(public_key_to_pem(key.public_key()))
    except FileExistsError as err:
        raise SecurityError(f"{path}: exists; refusing to overwrite a key") from err
    except OSError as err:
        raise SecurityError(f"{path}: cannot write the key: {err.strerror or err}") from err
    return key


class KeyRing:
    """Trusted public keys by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id(key): key for key in keys}

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, where: str = "publisher key") -> KeyRing:
        return cls(decode_public_key(text, where=f"{where} {i}") for i, text in enumerate(texts))

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> KeyRing:
        return cls(load_public_key(path) for path in paths)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def texts(self) -> tuple[str, ...]:
        """Every key as ``ed25519:...`` text, ordered by key id."""
        return tuple(encode_public_key(self._keys[kid]) for kid in self.ids)


# --- the envelope ----------------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if re.fullmatch(r"[A-Za-z0-9_-]*", text) is None:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"not base64url: {err}") from err


def sign_document(claims: Mapping[str, Any], key: Ed25519PrivateKey, *, typ: str) -> str:
    """``claims`` (JSON-serialisable) with ``typ`` and ``kid`` added, signed: compact text."""
    body = {**claims, "typ": typ, "kid": key_id(key.public_key())}
    payload = _b64encode(
        json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    )
    signature = key.sign(payload.encode("ascii"))
    return f"{payload}.{_b64encode(signature)}"


def verify_document(text: str | None, keys: KeyRing, *, typ: str) -> dict[str, Any]:
    """The claims of a compact document signed by one of ``keys`` with type ``typ``.

    Raises :class:`SignatureError`: UNSIGNED (None or empty), MALFORMED, WRONG_TYPE, UNKNOWN_KEY,
    BAD_SIGNATURE. Time-based checks are the caller's (they differ between packages and tokens).
    """
    if not text:
        raise SignatureError("no signature", reason=SignatureFault.UNSIGNED)
    if len(text) > _MAX_DOCUMENT_CHARS or text.count(".") != 1:
        raise SignatureError(
            "not a compact signed document '<payload>.<signature>'",
            reason=SignatureFault.MALFORMED,
        )
    payload, signature_text = text.split(".")
    try:
        claims = json.loads(_b64decode(payload))
        signature = _b64decode(signature_text)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SignatureError(
            f"undecodable signed document: {err}", reason=SignatureFault.MALFORMED
        ) from err
    if not isinstance(claims, dict):
        raise SignatureError("the payload is not a JSON object", reason=SignatureFault.MALFORMED)
    if claims.get("typ") != typ:
        raise SignatureError(
            f"a document of type {claims.get('typ')!r}, not {typ!r}",
            reason=SignatureFault.WRONG_TYPE,
        )
    kid = claims.get("kid")
    public_key = keys.get(kid) if isinstance(kid, str) else None
    if public_key is None:
        raise SignatureError(
            f"signed by key {kid!r}, which is not trusted (trusted: "
            f"{', '.join(keys.ids) or 'none'})",
            reason=SignatureFault.UNKNOWN_KEY,
            key_id=kid if isinstance(kid, str) else None,
        )
    try:
        public_key.verify(signature, payload.encode("ascii"))
    except InvalidSignature as err:
        raise SignatureError(
            f"the signature of key {kid} does not verify (the document was altered)",
            reason=SignatureFault.BAD_SIGNATURE,
            key_id=kid,
        ) from err
    return claims


# --- package metadata ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageMetadata:
    """What a package signature vouches for."""

    name: str
    version: str
    sha256: str
    size_bytes: int
    signed_ns: int
    expires_ns: int
    key_id: str = ""

    def claims(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "signed_ns": self.signed_ns,
            "expires_ns": self.expires_ns,
        }

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> PackageMetadata:
        try:
            metadata = cls(
                name=_text(claims, "name"),
                version=_text(claims, "version"),
                sha256=_text(claims, "sha256"),
                size_bytes=_integer(claims, "size_bytes"),
                signed_ns=_integer(claims, "signed_ns"),
                expires_ns=_integer(claims, "expires_ns"),
                key_id=_text(claims, "kid"),
            )
        except (KeyError, TypeError) as err:
            raise SignatureError(
                f"package metadata: {err.args[0]}", reason=SignatureFault.MALFORMED
            ) from err
        return metadata


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str):
        raise TypeError(f"field '{name}' must be text")
    return value


def _integer(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"field '{name}' must be an integer")
    return value


def sign_package(
    key: Ed25519PrivateKey,
    *,
    name: str,
    version: str,
    sha256: str,
    size_bytes: int,
    signed_ns: int,
    validity_ns: int,
) -> str:
    """The signed metadata of one package, valid for ``validity_ns`` from ``signed_ns``."""
    if validity_ns <= 0:
        raise ValueError(f"validity must be positive, not {validity_ns} ns")
    metadata = PackageMetadata(
        name=name,
        version=version,
        sha256=sha256,
        size_bytes=size_bytes,
        signed_ns=signed_ns,
        expires_ns=signed_ns + validity_ns,
    )
    return sign_document(metadata.claims(), key, typ=PACKAGE_TYPE)


def verify_package(
    signature: str | None,
    keys: KeyRing,
    *,
    name: str,
    version: str,
    sha256: str | None,
    now_ns: int,
    skew_ns: int = 0,
) -> PackageMetadata:
    """The metadata of a package signature that holds for this package now.

    ``sha256`` None checks everything but the content (before the bytes are fetched); the caller
    then compares the bytes' digest with the returned ``sha256``.
    """
    claims = verify_document(signature, keys, typ=PACKAGE_TYPE)
    metadata = PackageMetadata.from_claims(claims)
    if (metadata.name, metadata.version) != (name, version):
        raise SignatureError(
            f"the signature is for {metadata.name} {metadata.version}, not {name} {version}",
            reason=SignatureFault.MISMATCH,
            key_id=metadata.key_id,
        )
    if sha256 is not None and metadata.sha256 != sha256:
        raise SignatureError(
            f"the signature vouches for SHA-256 {metadata.sha256}, the package is {sha256}",
            reason=SignatureFault.MISMATCH,
            key_id=metadata.key_id,
        )
    if now_ns > metadata.expires_ns + skew_ns:
        raise SignatureError(
            f"the signature expired {(now_ns - metadata.expires_ns) / NS_PER_DAY:.1f} days ago",
            reason=SignatureFault.EXPIRED,
            key_id=metadata.key_id,
        )
    if metadata.signed_ns > now_ns + skew_ns:
        raise SignatureError(
            "the signature is dated in the future (check the clocks)",
            reason=SignatureFault.NOT_YET_VALID,
            key_id=metadata.key_id,
        )
    return metadata


# --- versions --------------------------------------------------------------------------------------

_RELEASE: Final = (1,)
"""Ranks a release above any of its pre-releases."""


def version_key(version: str) -> tuple[Any, ...]:
    """A sort key: ``version_key(a) < version_key(b)`` when ``a`` is older (module docstring)."""
    core, _, pre = version.split("+", 1)[0].partition("-")
    return (_parts(core), (0, _parts(pre)) if pre else _RELEASE)


def _parts(text: str) -> tuple[tuple[int, int | str], ...]:
    parts: list[tuple[int, int | str]] = [
        (1, int(token)) if token.isdigit() else (0, token.lower())
        for token in re.findall(r"\d+|[A-Za-z]+", text)
    ]
    while parts and parts[-1] == (1, 0):  # 1.0 == 1.0.0
        parts.pop()
    return tuple(parts)
