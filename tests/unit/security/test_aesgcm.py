"""The compiled AES-GCM (``security/_aesgcm.c``, over the system libcrypto) against
``cryptography``'s: the published test vectors, random keys, nonces, lengths and associated data
both ways, one key object sealing and opening many messages (after a refused one too), threads
sharing it, and every kind of tampering refused."""

from __future__ import annotations

import os
import random
import threading
from typing import TYPE_CHECKING

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import aead

from openfeeder.security import payload
from openfeeder.security.keys import KeyRing
from openfeeder.security.payload import (
    AES_BACKEND,
    AeadCipher,
    Algorithm,
    PayloadProtector,
    SymmetricKey,
)

if TYPE_CHECKING:
    from openfeeder.security._aesgcm import AESGCM


def _compiled() -> type[AESGCM]:
    try:
        from openfeeder.security import _aesgcm
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "the compiled AES-GCM was not built (CI has libcrypto's headers: it must be)"
            )
        pytest.skip("the compiled AES-GCM is not built here (no C compiler or OpenSSL headers)")
    return _aesgcm.AESGCM


# McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 13, 14 and 16
# (AES-256, 96-bit IVs): key, IV, plaintext, associated data, ciphertext, tag
VECTORS = [
    ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    (
        "00" * 32,
        "00" * 12,
        "00" * 16,
        "",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
]


@pytest.mark.parametrize("vector", VECTORS)
def test_gcm_specification_vectors(vector: tuple[str, str, str, str, str, str]) -> None:
    key, iv, plaintext, aad, ciphertext, tag = vector
    cipher = _compiled()(bytes.fromhex(key))
    sealed = cipher.encrypt(bytes.fromhex(iv), bytes.fromhex(plaintext), bytes.fromhex(aad))
    assert sealed.hex() == ciphertext + tag
    assert cipher.decrypt(bytes.fromhex(iv), sealed, bytes.fromhex(aad)) == bytes.fromhex(plaintext)


def test_same_as_cryptography_on_random_inputs() -> None:
    """Each key object seals and opens several messages: the key set once serves every nonce."""
    aesgcm = _compiled()
    rng = random.Random(2026)
    lengths = [0, 1, 15, 16, 17, 31, 32, 33, 200, 1000, 4099, 70_000]
    for case in range(300):
        key = rng.randbytes((16, 24, 32)[case % 3])
        cipher, reference = aesgcm(key), aead.AESGCM(key)
        for _ in range(3):
            nonce = rng.randbytes(12)
            plaintext = rng.randbytes(lengths[case % len(lengths)] + rng.randrange(3))
            aad = rng.randbytes(rng.choice([0, 1, 16, 17, 60, rng.randrange(300)]))
            sealed = cipher.encrypt(nonce, plaintext, aad)
            assert sealed == reference.encrypt(nonce, plaintext, aad), (case, len(plaintext))
            assert cipher.decrypt(nonce, sealed, aad) == plaintext
            assert reference.decrypt(nonce, sealed, aad) == plaintext


def test_any_change_is_refused_and_the_key_keeps_working() -> None:
    cipher = _compiled()(bytes(range(32)))
    nonce, plaintext, aad = bytes(12), b"open breaker 17" * 5, b"openfeeder/v1/cmd/fsw-1"
    sealed = cipher.encrypt(nonce, plaintext, aad)
    for bit in range(len(sealed) * 8):
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << bit % 8
        with pytest.raises(InvalidTag):
            cipher.decrypt(nonce, bytes(flipped), aad)
        # a refused message leaves the context ready for the next genuine one
        assert cipher.decrypt(nonce, sealed, aad) == plaintext, bit
    for wrong in (
        (nonce, sealed, aad + b"x"),
        (bytes(11) + b"\x01", sealed, aad),
        (nonce, sealed[:-1], aad),
        (nonce, sealed[:15], aad),
        (nonce, b"", aad),
    ):
        with pytest.raises(InvalidTag):
            cipher.decrypt(*wrong)
    with pytest.raises(InvalidTag):
        _compiled()(bytes(range(1, 33))).decrypt(nonce, sealed, aad)
    assert cipher.encrypt(nonce, plaintext, aad) == sealed


def test_bad_arguments_are_named() -> None:
    aesgcm = _compiled()
    with pytest.raises(ValueError, match="16, 24 or 32 bytes, not 31"):
        aesgcm(bytes(31))
    cipher = aesgcm(bytes(32))
    with pytest.raises(ValueError, match="nonce is 12 bytes, not 16"):
        cipher.encrypt(bytes(16), b"x", b"")
    with pytest.raises(ValueError, match="nonce is 12 bytes, not 8"):
        cipher.decrypt(bytes(8), bytes(32), b"")
    with pytest.raises(TypeError):
        cipher.encrypt(bytes(12), "text", b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="2 given"):
        cipher.decrypt(bytes(12), b"x")  # type: ignore[call-arg]
    unkeyed = aesgcm.__new__(aesgcm)
    with pytest.raises(ValueError, match="no key"):
        unkeyed.encrypt(bytes(12), b"x", b"")


def test_threads_sharing_one_key_object() -> None:
    """Every call holds the GIL throughout, so threads using one object do not mix contexts."""
    key = os.urandom(32)
    cipher, reference = _compiled()(key), aead.AESGCM(key)
    failures: list[str] = []

    def work(number: int) -> None:
        rng = random.Random(number)
        for message in range(1500):
            nonce, plaintext = rng.randbytes(12), rng.randbytes(rng.randrange(1, 600))
            aad = f"thread {number} message {message}".encode()
            sealed = cipher.encrypt(nonce, plaintext, aad)
            if reference.decrypt(nonce, sealed, aad) != plaintext:
                failures.append(f"{number}/{message} sealed wrong")
            if cipher.decrypt(nonce, reference.encrypt(nonce, plaintext, aad), aad) != plaintext:
                failures.append(f"{number}/{message} opened wrong")

    threads = [threading.Thread(target=work, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_payload_sealing_interoperates_with_the_cryptography_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A protector on the compiled backend and one on ``cryptography``'s open what the other
    sealed, and a forged tag is refused by both."""
    _compiled()
    assert AES_BACKEND == "compiled"
    key = SymmetricKey("control/fsw-1@1", Algorithm.AES_256_GCM, os.urandom(32), "fsw-1")
    compiled = AeadCipher(key).encrypt
    assert type(compiled.__self__).__module__ == "openfeeder.security._aesgcm"  # type: ignore[attr-defined]
    topic, device = "openfeeder/v1/cmd/fsw-1", "fsw-1"

    def seal(protector: PayloadProtector, data: bytes) -> bytes:
        return protector.seal(data, topic=topic, message_class="cmd", device_id=device)

    def opened(protector: PayloadProtector, data: bytes) -> bytes:
        return protector.open(data, topic=topic, message_class="cmd", device_id=device).plaintext

    compiled_ops = PayloadProtector(KeyRing.of(key), sender_id="ops")
    compiled_device = PayloadProtector(KeyRing.of(key), sender_id=device)
    # each protector makes its cipher on first use: these two make theirs on the compiled backend
    assert opened(compiled_device, seal(compiled_ops, b"first")) == b"first"
    opener = compiled_device._openers[key.key_id].decrypt
    assert type(opener.__self__).__module__ == "openfeeder.security._aesgcm"  # type: ignore[attr-defined]
    monkeypatch.setattr(payload, "_AESGCM", None)
    assert isinstance(AeadCipher(key).encrypt.__self__, aead.AESGCM)  # type: ignore[attr-defined]
    reference_ops = PayloadProtector(KeyRing.of(key), sender_id="ops2")
    reference_device = PayloadProtector(KeyRing.of(key), sender_id=device)
    assert opened(reference_device, seal(compiled_ops, b"open")) == b"open"
    assert opened(compiled_device, seal(reference_ops, b"close")) == b"close"
    for receiver, sender in ((compiled_device, reference_ops), (reference_device, compiled_ops)):
        sealed = seal(sender, b"trip")
        forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
        with pytest.raises(payload.PayloadRejectedError, match="does not authenticate"):
            opened(receiver, forged)
        assert opened(receiver, sealed) == b"trip"


def test_the_environment_can_ask_for_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFEEDER_AES_BACKEND", "cryptography")
    assert payload._compiled_aes() is None
    monkeypatch.delenv("OPENFEEDER_AES_BACKEND")
    assert (payload._compiled_aes() is not None) == (AES_BACKEND == "compiled")
