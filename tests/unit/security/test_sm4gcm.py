"""The compiled SM4-GCM (``security/_sm4gcm.c``) against OpenSSL's (through ``cryptography``):
the published test vector, random keys, nonces, lengths and associated data both ways, and every
kind of tampering refused."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from openfeeder.security import payload
from openfeeder.security.payload import (
    SM4_BACKEND,
    SM4_COMPILED_MAX_BYTES,
    TAG_BYTES,
    _sm4_gcm,
)

if TYPE_CHECKING:
    from openfeeder.security._sm4gcm import SM4GCM


def _compiled() -> type[SM4GCM]:
    try:
        from openfeeder.security import _sm4gcm
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the compiled SM4-GCM was not built (CI has a C compiler: it must be)")
        pytest.skip("the compiled SM4-GCM is not built here (no C compiler at install)")
    return _sm4gcm.SM4GCM


def _openssl(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    body = encryptor.update(plaintext) + encryptor.finalize()
    return body + encryptor.tag


def test_rfc_8998_vector() -> None:
    """RFC 8998 (SM cipher suites for TLS 1.3), appendix A.1: SM4-GCM."""
    cipher = _compiled()(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    nonce = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    plaintext = bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    )
    sealed = cipher.encrypt(nonce, plaintext, aad)
    assert sealed[:-TAG_BYTES].hex().upper() == (
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    )
    assert sealed[-TAG_BYTES:].hex().upper() == "83DE3541E4C2B58177E065A9BF7B62EC"
    assert cipher.decrypt(nonce, sealed, aad) == plaintext


def test_same_as_openssl_on_random_inputs() -> None:
    sm4gcm = _compiled()
    rng = random.Random(2026)
    lengths = [0, 1, 15, 16, 17, 31, 32, 33, 200, 1000, 4099]
    for case in range(400):
        key, nonce = rng.randbytes(16), rng.randbytes(12)
        plaintext = rng.randbytes(lengths[case % len(lengths)] + rng.randrange(3))
        aad = rng.randbytes(rng.choice([0, 1, 16, 17, 60, rng.randrange(300)]))
        cipher = sm4gcm(key)
        sealed = cipher.encrypt(nonce, plaintext, aad)
        assert sealed == _openssl(key, nonce, plaintext, aad), (case, len(plaintext), len(aad))
        assert cipher.decrypt(nonce, sealed, aad) == plaintext


def test_any_change_is_refused() -> None:
    cipher = _compiled()(bytes(range(16)))
    nonce, plaintext, aad = bytes(12), b"open breaker 17" * 5, b"openfeeder/v1/cmd/fsw-1"
    sealed = cipher.encrypt(nonce, plaintext, aad)
    for bit in range(len(sealed) * 8):
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << bit % 8
        assert cipher.decrypt(nonce, bytes(flipped), aad) is None, bit
    assert cipher.decrypt(nonce, sealed, aad + b"x") is None
    assert cipher.decrypt(bytes(11) + b"\x01", sealed, aad) is None
    assert cipher.decrypt(nonce, sealed[:-1], aad) is None
    assert cipher.decrypt(nonce, b"", aad) is None
    other = _compiled()(bytes(range(1, 17)))
    assert other.decrypt(nonce, sealed, aad) is None


def test_bad_arguments_are_named() -> None:
    sm4gcm = _compiled()
    with pytest.raises(ValueError, match="16 bytes, not 32"):
        sm4gcm(bytes(32))
    cipher = sm4gcm(bytes(16))
    with pytest.raises(ValueError, match="nonce is 12 bytes, not 16"):
        cipher.encrypt(bytes(16), b"x", b"")
    with pytest.raises(TypeError):
        cipher.encrypt(bytes(12), "text", b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"3 given|takes"):
        cipher.decrypt(bytes(12), b"x")  # type: ignore[call-arg]


def test_payload_sealing_interoperates_with_the_openssl_backend() -> None:
    """What one backend seals the other opens, and a forged tag is InvalidTag in both."""
    _compiled()
    assert SM4_BACKEND == "compiled"
    key = os.urandom(16)
    fast, reference = _sm4_gcm(key), _sm4_gcm(key, compiled=False)
    nonce, aad = os.urandom(12), b"header|openfeeder/v1/event/fsw-1\x00fsw-1"
    for size in (0, 1, 200, SM4_COMPILED_MAX_BYTES, SM4_COMPILED_MAX_BYTES + 1, 6000):
        plaintext = os.urandom(size)
        assert reference[1](nonce, fast[0](nonce, plaintext, aad), aad) == plaintext
        assert fast[1](nonce, reference[0](nonce, plaintext, aad), aad) == plaintext
    for size in (4, SM4_COMPILED_MAX_BYTES + 100):  # both paths of the compiled backend
        sealed = fast[0](nonce, bytes(size), aad)
        forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
        for _, decrypt in (fast, reference):
            with pytest.raises(InvalidTag):
                decrypt(nonce, forged, aad)


def test_the_environment_can_ask_for_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFEEDER_SM4_BACKEND", "cryptography")
    assert payload._compiled_sm4() is None
    monkeypatch.delenv("OPENFEEDER_SM4_BACKEND")
    assert (payload._compiled_sm4() is not None) == (SM4_BACKEND == "compiled")
