"""Delivering a device's key-encryption key (KEK) to the device, and only to it.

The payload keys a device needs reach it as a bundle wrapped under its KEK
(:meth:`openfeeder.security.keys.KeyStore.issue`). The KEK itself travels once, in the catalog's
answer to the device's enrolment, sealed to the public key of the device's certificate signing
request: ECDH on P-256 between a fresh ephemeral key and the CSR's key, HKDF-SHA256 over the shared
secret (salt: the ephemeral public key; info names the device), and AES-256-GCM over the KEK with
the device id as associated data. Only the holder of the device's private key (which never leaves
the device) can open it, so the answer may be read by anyone who polls the enrolment, and a
catalog that delivers the envelope to another device's key gives that device nothing.

The KEK is the store's (``kek/<device id>``), not derived from the TLS key: payload keys keep
their own lifetime and algorithm, a rotation is re-issued without touching the PKI, and a renewed
certificate keeps the same KEK.

Document (JSON)::

    {"format": "openfeeder-kek", "device_id": "...", "alg": "ecdh-p256-hkdf-sha256-a256gcm",
     "epk": "<base64 SEC1 uncompressed point>", "nonce": "<base64 12 bytes>",
     "sealed": "<base64 ciphertext and tag>"}
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from openfeeder.errors import SecurityError

__all__ = ["KEK_BYTES", "KekDeliveryError", "open_kek", "seal_kek"]

KEK_BYTES: Final = 32
FORMAT: Final = "openfeeder-kek"
ALGORITHM: Final = "ecdh-p256-hkdf-sha256-a256gcm"
_POINT: Final = serialization.PublicFormat.UncompressedPoint
_X962: Final = serialization.Encoding.X962


class KekDeliveryError(SecurityError):
    """A KEK envelope cannot be made or opened (names the device and what is wrong)."""

    def __init__(self, message: str, *, device_id: str) -> None:
        super().__init__(message)
        self.device_id = device_id


def _wrapping_key(shared: bytes, epk: bytes, device_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=epk,
        info=f"openfeeder kek delivery v1|{device_id}".encode(),
    ).derive(shared)


def seal_kek(
    kek: bytes, *, public_key: ec.EllipticCurvePublicKey, device_id: str
) -> dict[str, str]:
    """``kek`` sealed to ``public_key`` (the device's CSR key) for ``device_id``."""
    if len(kek) != KEK_BYTES:
        raise KekDeliveryError(
            f"{device_id}: a KEK has {KEK_BYTES} bytes, not {len(kek)}", device_id=device_id
        )
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise KekDeliveryError(
            f"{device_id}: the device key is {public_key.curve.name}, not P-256",
            device_id=device_id,
        )
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    epk = ephemeral.public_key().public_bytes(_X962, _POINT)
    wrapping = _wrapping_key(ephemeral.exchange(ec.ECDH(), public_key), epk, device_id)
    nonce = os.urandom(12)
    sealed = AESGCM(wrapping).encrypt(nonce, kek, device_id.encode("utf-8"))
    return {
        "format": FORMAT,
        "device_id": device_id,
        "alg": ALGORITHM,
        "epk": base64.b64encode(epk).decode("ascii"),
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "sealed": base64.b64encode(sealed).decode("ascii"),
    }


def open_kek(
    document: Mapping[str, str], *, private_key: ec.EllipticCurvePrivateKey, device_id: str
) -> bytes:
    """The KEK inside ``document``, opened with the device's private key."""
    if document.get("format") != FORMAT or document.get("alg") != ALGORITHM:
        raise KekDeliveryError(
            f"{device_id}: not a KEK envelope (format {document.get('format')!r}, "
            f"alg {document.get('alg')!r})",
            device_id=device_id,
        )
    if document.get("device_id") != device_id:
        raise KekDeliveryError(
            f"{device_id}: the KEK envelope is for {document.get('device_id')!r}",
            device_id=device_id,
        )
    try:
        epk = base64.b64decode(document["epk"], validate=True)
        nonce = base64.b64decode(document["nonce"], validate=True)
        sealed = base64.b64decode(document["sealed"], validate=True)
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), epk)
        wrapping = _wrapping_key(private_key.exchange(ec.ECDH(), peer), epk, device_id)
        kek = AESGCM(wrapping).decrypt(nonce, sealed, device_id.encode("utf-8"))
    except (KeyError, ValueError, TypeError) as err:
        raise KekDeliveryError(
            f"{device_id}: malformed KEK envelope: {err}", device_id=device_id
        ) from err
    except InvalidTag as err:
        raise KekDeliveryError(
            f"{device_id}: the KEK envelope does not open with this device's key",
            device_id=device_id,
        ) from err
    if len(kek) != KEK_BYTES:
        raise KekDeliveryError(
            f"{device_id}: the delivered KEK is not 32 bytes", device_id=device_id
        )
    return kek
