"""End-to-end payload protection: sealed envelopes that a broker forwards but cannot read or alter.

TLS protects each hop; a broker in the middle still sees every payload in clear. For traffic that
the broker must not be trusted with, the publisher seals the payload and only holders of the key
open it. Per traffic class (seed 000: **control** AES-256-GCM, **protection** SM4-GCM, **monitoring**
TLS only; all configurable) a :class:`ProtectionPolicy` says which algorithm applies.

Envelope (all integers big-endian)::

    "OF" | version (1) | algorithm (1) | traffic class (1) | key id length (1) | key id
         | sender id length (1) | sender id | seq (8) | nonce (12) | ciphertext | tag (16)

A JSON payload starts with ``{``, so a sealed one is told apart by its first two bytes. The
associated data is the whole header (so key id, sender, sequence number and nonce cannot be
changed) followed by the topic and the topic's device id: a sealed message moved to another topic
or device fails authentication.

**Nonces.** The nonce is a 4-byte random salt, drawn per sender and key, followed by the 8-byte
sequence number. The sequence number strictly increases per sender and traffic class: its high 42
bits are the sender's session start in milliseconds since the epoch, its low 22 bits count
messages (when they run out the session moves on to the next millisecond value). So a sender never
repeats a nonce under a key while its clock does not go back across restarts, and two senders
sharing a key repeat one only if they draw the same salt *and* reach the same sequence number in
the same millisecond of session start (probability below ``2**-32`` per pair). Keys are rotated
well before ``2**32`` messages (:mod:`openfeeder.security.keys`).

**Replay.** The receiver keeps, per sender and traffic class, the highest sequence number accepted
and a bitmap of the ``window`` numbers below it (as IPsec does): a number seen before is a
DUPLICATE, one below the window STALE. The window is updated only after the tag verified, so forged
messages cannot move it. A retained message that the broker delivers again on re-subscription
(byte-identical to the last one accepted on that topic) is passed on, not treated as a replay.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openfeeder.errors import SecurityError

if TYPE_CHECKING:
    from openfeeder.security import _aesgcm
    from openfeeder.security._sm4gcm import SM4GCM

__all__ = [
    "AES_BACKEND",
    "DEFAULT_ALGORITHMS",
    "DEFAULT_REPLAY_WINDOW",
    "DEFAULT_TRAFFIC",
    "MAGIC",
    "SM4_BACKEND",
    "SM4_COMPILED_MAX_BYTES",
    "AeadCipher",
    "Algorithm",
    "KeyResolver",
    "OpenedMessage",
    "PayloadProtector",
    "PayloadRejectedError",
    "ProtectionPolicy",
    "RejectKind",
    "ReplayWindow",
    "Route",
    "SealedHeader",
    "SymmetricKey",
    "TrafficClass",
    "parse_header",
]

MAGIC: Final = b"OF"
ENVELOPE_VERSION: Final = 1
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
DEFAULT_REPLAY_WINDOW: Final = 64
_COUNTER_BITS: Final = 22
_COUNTER_LIMIT: Final = 1 << _COUNTER_BITS


class Algorithm(StrEnum):
    """Payload ciphers; NONE means the traffic class relies on TLS alone."""

    NONE = "none"
    AES_256_GCM = "aes-256-gcm"
    SM4_GCM = "sm4-gcm"

    @property
    def key_bytes(self) -> int:
        return _KEY_BYTES[self]


_KEY_BYTES: Final = {Algorithm.NONE: 0, Algorithm.AES_256_GCM: 32, Algorithm.SM4_GCM: 16}
_ALGORITHM_CODES: Final = {Algorithm.AES_256_GCM: 1, Algorithm.SM4_GCM: 2}
_ALGORITHM_BY_CODE: Final = {code: algorithm for algorithm, code in _ALGORITHM_CODES.items()}


class TrafficClass(StrEnum):
    """Seed 000's three service classes, each with its own protection."""

    CONTROL = "control"
    PROTECTION = "protection"
    MONITORING = "monitoring"


_TRAFFIC_CODES: Final = {
    TrafficClass.CONTROL: 1,
    TrafficClass.PROTECTION: 2,
    TrafficClass.MONITORING: 3,
}
_TRAFFIC_BY_CODE: Final = {code: traffic for traffic, code in _TRAFFIC_CODES.items()}

#: Message class (the topic level, ``openfeeder.iot.topics.MessageClass``) -> traffic class.
#: ``status`` is absent on purpose: a last will is fixed when a link connects, so it cannot carry
#: a fresh sequence number; liveness carries no grid data and travels under TLS only.
#: ``committed`` is absent because the historian publishes it through its own lean MQTT link,
#: which does not seal; add it (as control) once the historian seals its marks.
DEFAULT_TRAFFIC: Final[Mapping[str, TrafficClass]] = MappingProxyType(
    {
        "cmd": TrafficClass.CONTROL,
        "ack": TrafficClass.CONTROL,
        "config": TrafficClass.CONTROL,
        "topology": TrafficClass.CONTROL,
        "event": TrafficClass.PROTECTION,
        "meas": TrafficClass.MONITORING,
        "algo": TrafficClass.MONITORING,
    }
)
#: Seed 000: control AES-256-GCM, protection SM4, monitoring TLS 1.3 only.
DEFAULT_ALGORITHMS: Final[Mapping[TrafficClass, Algorithm]] = MappingProxyType(
    {
        TrafficClass.CONTROL: Algorithm.AES_256_GCM,
        TrafficClass.PROTECTION: Algorithm.SM4_GCM,
        TrafficClass.MONITORING: Algorithm.NONE,
    }
)
UNPROTECTED_CLASSES: Final = frozenset({"status"})


class RejectKind(StrEnum):
    """Why a received message was refused (``PayloadRejectedError.reason``)."""

    PLAINTEXT = "plaintext"  # the class must be sealed and the message is not
    MALFORMED = "malformed"  # the envelope cannot be parsed
    POLICY = "policy"  # algorithm or traffic class differs from what this class requires
    UNKNOWN_KEY = "unknown_key"  # key id unknown, destroyed, or not usable for opening
    KEY_SCOPE = "key_scope"  # the key belongs to another device
    AUTHENTICATION = "authentication"  # the tag does not verify: altered, moved, or wrong key
    DUPLICATE = "duplicate"  # this sequence number was accepted before (a replay)
    STALE = "stale"  # older than the replay window (a replay or a reorder beyond the window)


class PayloadRejectedError(SecurityError):
    """A protected message failed; carries topic, sender (when known), reason and detail."""

    def __init__(
        self, message: str, *, topic: str, reason: RejectKind, sender_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason = reason
        self.sender_id = sender_id


@dataclass(frozen=True, slots=True, repr=False)
class SymmetricKey:
    """One payload key. ``scope`` is the device id the key belongs to (None: a group key)."""

    key_id: str
    algorithm: Algorithm
    material: bytes
    scope: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm is Algorithm.NONE:
            raise SecurityError(f"key {self.key_id!r}: algorithm 'none' has no key")
        if len(self.material) != self.algorithm.key_bytes:
            raise SecurityError(
                f"key {self.key_id!r}: {self.algorithm} needs {self.algorithm.key_bytes} bytes, "
                f"not {len(self.material)}"
            )
        if not 0 < len(self.key_id.encode("utf-8")) <= 255:
            raise SecurityError(f"key id {self.key_id!r} must be 1 to 255 bytes")

    def __repr__(self) -> str:  # never print key material
        return f"SymmetricKey(key_id={self.key_id!r}, algorithm={self.algorithm}, scope={self.scope!r})"


class KeyResolver(Protocol):
    """Where a protector finds keys: the key store (services) or an issued key ring (devices)."""

    def sealing_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey:
        """The active key for sealing ``traffic`` about ``device_id``; SecurityError if none."""
        ...

    def opening_key(self, key_id: str) -> SymmetricKey:
        """The key named in an envelope, if it may still open traffic; SecurityError if not."""
        ...


@dataclass(frozen=True, slots=True)
class ProtectionPolicy:
    """Which algorithm protects each traffic class, and which class each message class is.

    The mappings are copied when the policy is made, so changing the dictionaries passed in
    afterwards changes nothing.
    """

    algorithms: Mapping[TrafficClass, Algorithm] = field(default_factory=lambda: DEFAULT_ALGORITHMS)
    traffic: Mapping[str, TrafficClass] = field(default_factory=lambda: DEFAULT_TRAFFIC)

    def __post_init__(self) -> None:
        for message_class in self.traffic:
            if message_class in UNPROTECTED_CLASSES:
                raise SecurityError(
                    f"message class {message_class!r} cannot be protected (its last will is "
                    "fixed at connection time)"
                )
        object.__setattr__(self, "algorithms", MappingProxyType(dict(self.algorithms)))
        object.__setattr__(self, "traffic", MappingProxyType(dict(self.traffic)))

    def traffic_of(self, message_class: str) -> TrafficClass | None:
        return self.traffic.get(message_class)

    def algorithm_for(self, message_class: str) -> Algorithm:
        traffic = self.traffic.get(message_class)
        if traffic is None:
            return Algorithm.NONE
        return self.algorithms.get(traffic, Algorithm.NONE)


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The parsed header of a sealed envelope; ``header_bytes`` is what the AAD starts with."""

    algorithm: Algorithm
    traffic: TrafficClass
    key_id: str
    sender_id: str
    seq: int
    nonce: bytes
    header_bytes: bytes
    body_offset: int


_SEQ: Final = struct.Struct(">Q")
#: What follows the ids in a header: seq, then the nonce (salt and seq again).
_SEQ_NONCE: Final = struct.Struct(">Q4sQ")
_SALT_BYTES: Final = 4
_MIN_AFTER_PREFIX: Final = _SEQ_NONCE.size + TAG_BYTES


class _Prefix:
    """The part of a header before the sequence number: the same for every message of one sender,
    key and class, so receivers parse it once (keyed by its bytes) and reuse the result.

    It also remembers, once a message with it authenticated, the replay window of its sender and
    class (the protector's, shared by every prefix of that sender and class) and the opener of
    its key (checked against the key the resolver hands out for each message)."""

    __slots__ = ("algorithm", "key_id", "opener", "sender_id", "traffic", "window", "window_key")

    def __init__(
        self, algorithm: Algorithm, traffic: TrafficClass, key_id: str, sender_id: str, code: int
    ) -> None:
        self.algorithm = algorithm
        self.traffic = traffic
        self.key_id = key_id
        self.sender_id = sender_id
        self.window_key = (code, sender_id)  # one replay window per sender and traffic class
        self.window: ReplayWindow | None = None
        self.opener: AeadCipher | None = None


def _prefix_end(data: bytes) -> int:
    """Where the sequence number starts; SecurityError if the envelope ends before it."""
    if len(data) < 8 or data[:2] != MAGIC:
        raise SecurityError("not a sealed envelope (no 'OF' marker)")
    sender_at = 6 + data[5]
    if sender_at >= len(data):
        raise SecurityError("envelope ends inside the key id")
    end = sender_at + 1 + data[sender_at]
    if end > len(data) or data[sender_at] == 0:
        raise SecurityError("envelope ends inside the sender id")
    if len(data) < end + _MIN_AFTER_PREFIX:
        raise SecurityError("envelope too short for sequence number, nonce and tag")
    return end


def _parse_prefix(prefix: bytes) -> _Prefix:
    """Check and decode the bytes before the sequence number (whose length is known to fit)."""
    version, algorithm_code, traffic_code, key_length = prefix[2], prefix[3], prefix[4], prefix[5]
    if version != ENVELOPE_VERSION:
        raise SecurityError(f"envelope version {version} is not supported")
    algorithm = _ALGORITHM_BY_CODE.get(algorithm_code)
    if algorithm is None:
        raise SecurityError(f"unknown algorithm code {algorithm_code}")
    traffic = _TRAFFIC_BY_CODE.get(traffic_code)
    if traffic is None:
        raise SecurityError(f"unknown traffic class code {traffic_code}")
    try:
        key_id = prefix[6 : 6 + key_length].decode("utf-8")
        sender_id = prefix[7 + key_length :].decode("utf-8")
    except UnicodeDecodeError as err:
        raise SecurityError("key id or sender id is not UTF-8") from err
    return _Prefix(algorithm, traffic, key_id, sender_id, traffic_code)


def parse_header(data: bytes) -> SealedHeader:
    """Parse the envelope header; SecurityError naming the first bad field."""
    end = _prefix_end(data)
    prefix = _parse_prefix(data[:end])
    seq, _, _ = _SEQ_NONCE.unpack_from(data, end)
    body_offset = end + _SEQ_NONCE.size
    return SealedHeader(
        algorithm=prefix.algorithm,
        traffic=prefix.traffic,
        key_id=prefix.key_id,
        sender_id=prefix.sender_id,
        seq=seq,
        nonce=data[end + 8 : body_offset],
        header_bytes=data[:body_offset],
        body_offset=body_offset,
    )


def _aad(header: bytes, topic: str, device_id: str) -> bytes:
    return b"".join((header, topic.encode("utf-8"), b"\x00", device_id.encode("utf-8")))


Aead = Callable[[bytes, bytes, bytes], bytes]


def _compiled_aes() -> type[_aesgcm.AESGCM] | None:
    """The compiled AES-GCM (``_aesgcm.c``, over the system libcrypto that ``ssl`` uses), unless
    it was not built or the environment asks for ``cryptography``
    (``OPENFEEDER_AES_BACKEND=cryptography``)."""
    if os.environ.get("OPENFEEDER_AES_BACKEND", "").strip().lower() == "cryptography":
        return None
    try:
        from openfeeder.security import _aesgcm
    except ImportError:
        return None
    return _aesgcm.AESGCM


_AESGCM: Final = _compiled_aes()
AES_BACKEND: Final = "compiled" if _AESGCM is not None else "cryptography"
"""Which AES-GCM seals and opens: ``compiled`` (the package's C module over the libcrypto of the
``ssl`` module, the key set once per key) or ``cryptography`` (its own OpenSSL, the key set per
message). Both are AES-GCM with 96-bit nonces and 128-bit tags and interoperate (tested)."""


def _compiled_sm4() -> type[SM4GCM] | None:
    """The compiled SM4-GCM (``_sm4gcm.c``), unless it was not built or the environment asks for
    ``cryptography`` (``OPENFEEDER_SM4_BACKEND=cryptography``)."""
    if os.environ.get("OPENFEEDER_SM4_BACKEND", "").strip().lower() == "cryptography":
        return None
    try:
        from openfeeder.security._sm4gcm import SM4GCM
    except ImportError:
        return None
    return SM4GCM


_SM4GCM: Final = _compiled_sm4()
SM4_BACKEND: Final = "compiled" if _SM4GCM is not None else "cryptography"
"""Which SM4-GCM seals and opens: ``compiled`` (the package's C module: one key schedule and one
GHASH table per key) or ``cryptography`` (an OpenSSL context per message)."""


#: Above this many bytes of plaintext SM4-GCM goes through OpenSSL even with the compiled module:
#: the module's table-driven SM4 costs about 13 ns a byte against OpenSSL's 7, which outweighs
#: the context OpenSSL builds per message (about 10 us) from about 1.6 kB on.
SM4_COMPILED_MAX_BYTES: Final = 1536


def _sm4_gcm(material: bytes, *, compiled: bool = True) -> tuple[Aead, Aead]:
    """Encrypt and decrypt for one SM4 key: the compiled module's (``compiled`` and built) for
    messages up to :data:`SM4_COMPILED_MAX_BYTES`, else ``cryptography``'s. Both are SM4-GCM
    (NIST SP 800-38D, 96-bit nonces, 128-bit tags) and interoperate (tested)."""
    openssl_encrypt, openssl_decrypt = _sm4_gcm_openssl(material)
    if not compiled or _SM4GCM is None:
        return openssl_encrypt, openssl_decrypt
    cipher = _SM4GCM(material)
    small_encrypt, small_decrypt = cipher.encrypt, cipher.decrypt

    def encrypt(nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(plaintext) > SM4_COMPILED_MAX_BYTES:
            return openssl_encrypt(nonce, plaintext, aad)
        return small_encrypt(nonce, plaintext, aad)

    def decrypt(nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) > SM4_COMPILED_MAX_BYTES + TAG_BYTES:
            return openssl_decrypt(nonce, sealed, aad)
        plaintext = small_decrypt(nonce, sealed, aad)
        if plaintext is None:
            raise InvalidTag
        return plaintext

    return encrypt, decrypt


def _sm4_gcm_openssl(material: bytes) -> tuple[Aead, Aead]:
    """SM4-GCM through ``cryptography``: it has no SM4 AEAD object, so each message needs its own
    GCM context (the nonce is fixed when the context is made, and GCM contexts cannot be re-keyed
    or re-used); the key object is made once, so only the mode and the context are per message.
    """
    sm4 = algorithms.SM4(material)

    def encrypt(nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        encryptor = Cipher(sm4, modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        body = encryptor.update(plaintext)
        encryptor.finalize()  # GCM is a stream mode: nothing is held back
        return body + encryptor.tag

    def decrypt(nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < TAG_BYTES:
            raise InvalidTag
        decryptor = Cipher(sm4, modes.GCM(nonce, sealed[-TAG_BYTES:])).decryptor()
        decryptor.authenticate_additional_data(aad)
        plaintext = decryptor.update(sealed[:-TAG_BYTES])
        decryptor.finalize()  # raises InvalidTag
        return plaintext

    return encrypt, decrypt


class AeadCipher:
    """One key's AEAD: ``encrypt(nonce, plaintext, aad)`` and ``decrypt(nonce, sealed, aad)``
    (the latter raises ``InvalidTag``). The cipher objects are made once per key; for AES the two
    are the bound methods of one AES-GCM object (:data:`AES_BACKEND`'s), so a call goes straight
    to OpenSSL."""

    __slots__ = ("decrypt", "encrypt", "key")

    def __init__(self, key: SymmetricKey) -> None:
        self.key = key
        self.encrypt: Aead
        self.decrypt: Aead
        if key.algorithm is Algorithm.AES_256_GCM:
            aes = AESGCM(key.material) if _AESGCM is None else _AESGCM(key.material)
            self.encrypt, self.decrypt = aes.encrypt, aes.decrypt
        else:
            self.encrypt, self.decrypt = _sm4_gcm(key.material)


class ReplayWindow:
    """Highest accepted sequence number plus a bitmap of the ``size`` numbers below it.

    Both operations are O(1) in the distance between numbers: a jump of more than ``size`` (a
    sender's new session starts millions of numbers higher) starts a fresh bitmap instead of
    shifting the old one that far.
    """

    __slots__ = ("_bitmap", "_highest", "_mask", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"replay window must hold at least 1 number, not {size}")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest = -1
        self._bitmap = 0  # bit i set: highest - i was accepted

    def check(self, seq: int) -> RejectKind | None:
        """None if ``seq`` may be accepted, else DUPLICATE or STALE (the window is not changed)."""
        offset = self._highest - seq
        if offset < 0:
            return None
        if offset >= self.size:
            return RejectKind.STALE
        if self._bitmap >> offset & 1:
            return RejectKind.DUPLICATE
        return None

    def accept(self, seq: int) -> None:
        """Record ``seq`` (after :meth:`check` passed and the message authenticated)."""
        shift = seq - self._highest
        if shift > 0:
            self._bitmap = (self._bitmap << shift | 1) & self._mask if shift < self.size else 1
            self._highest = seq
        else:
            self._bitmap |= 1 << -shift

    @property
    def highest(self) -> int:
        return self._highest


class OpenedMessage(NamedTuple):
    """A message that passed: its plaintext and who sealed it (None when it was not sealed)."""

    plaintext: bytes
    sender_id: str | None
    seq: int | None


class _Sealer:
    """What sealing under one key for one traffic class needs, built once: the AEAD, the header
    up to the sequence number, and the nonce salt."""

    __slots__ = ("encrypt", "key", "prefix", "salt")

    def __init__(self, key: SymmetricKey, traffic: TrafficClass, sender: bytes) -> None:
        key_id = key.key_id.encode("utf-8")
        self.key = key
        self.encrypt = AeadCipher(key).encrypt
        self.prefix = b"".join(
            (
                MAGIC,
                bytes(
                    (
                        ENVELOPE_VERSION,
                        _ALGORITHM_CODES[key.algorithm],
                        _TRAFFIC_CODES[traffic],
                        len(key_id),
                    )
                ),
                key_id,
                bytes((len(sender),)),
                sender,
            )
        )
        self.salt = os.urandom(_SALT_BYTES)


class _Stream:
    """One sealed traffic class of this sender: its algorithm, sequence numbers and sealers."""

    __slots__ = ("algorithm", "counter", "epoch", "sealers", "traffic")

    def __init__(self, traffic: TrafficClass, algorithm: Algorithm) -> None:
        self.traffic = traffic
        self.algorithm = algorithm
        self.epoch = -1  # session start in ms; -1: no message sealed yet
        self.counter = _COUNTER_LIMIT  # forces a new session on the first message
        self.sealers: dict[str, _Sealer] = {}


def _refused(
    route: Route, prefix: _Prefix | None, reason: RejectKind, detail: str
) -> PayloadRejectedError:
    """The rejection of a message on ``route``'s topic (``prefix``: its parsed header, if any)."""
    return PayloadRejectedError(
        f"{route.topic}: {detail}",
        topic=route.topic,
        reason=reason,
        sender_id=prefix.sender_id if prefix is not None else None,
    )


class Route:
    """What sealing and opening on one topic needs from the topic, worked out once
    (:meth:`PayloadProtector.route`): its message class, device and retained flag, the stream of
    its class when the class is sealed, and the end of the associated data (``topic``, a zero
    byte, the device id, UTF-8)."""

    __slots__ = ("aad_tail", "device_id", "message_class", "retained", "stream", "topic")

    def __init__(
        self, stream: _Stream | None, topic: str, message_class: str, device_id: str, retained: bool
    ) -> None:
        self.stream = stream
        self.topic = topic
        self.message_class = message_class
        self.device_id = device_id
        self.retained = retained
        self.aad_tail = b"".join((topic.encode("utf-8"), b"\x00", device_id.encode("utf-8")))


#: Distinct header prefixes a receiver remembers (one per sender, key and class in use); the
#: cache is emptied when full, so envelopes with made-up ids cannot grow it.
_PREFIX_CACHE_SIZE: Final = 1024


class PayloadProtector:
    """Seals outgoing payloads and opens incoming ones for one sender (device or service).

    ``sender_id`` names this end in every envelope it seals (receivers keep one replay window per
    sender and traffic class). Thread-safe: links call :meth:`open` from their network threads.
    The policy is read once, when the protector is made.
    """

    def __init__(
        self,
        keys: KeyResolver,
        *,
        sender_id: str,
        policy: ProtectionPolicy | None = None,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        sender = sender_id.encode("utf-8")
        if not 0 < len(sender) <= 255:
            raise SecurityError(f"sender id {sender_id!r} must be 1 to 255 bytes")
        if replay_window < 1:
            raise SecurityError(f"replay window must be at least 1, not {replay_window}")
        self.sender_id = sender_id
        self._policy = policy if policy is not None else ProtectionPolicy()
        self._keys = keys
        self._sender_bytes = sender
        self._window_size = replay_window
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        streams = {
            traffic: _Stream(traffic, algorithm)
            for traffic, algorithm in self._policy.algorithms.items()
            if algorithm is not Algorithm.NONE
        }
        # message class -> its traffic class's stream, for the sealed classes only
        self._streams: dict[str, _Stream] = {
            message_class: streams[traffic]
            for message_class, traffic in self._policy.traffic.items()
            if traffic in streams
        }
        self._prefixes: dict[bytes, _Prefix] = {}
        self._openers: dict[str, AeadCipher] = {}
        self._windows: dict[tuple[int, str], ReplayWindow] = {}
        self._retained: dict[str, tuple[bytes, bytes]] = {}
        self.rejected: Counter[RejectKind] = Counter()
        self.sealed = 0
        self.opened = 0
        self.retained_redelivered = 0

    @property
    def policy(self) -> ProtectionPolicy:
        return self._policy

    def protects(self, message_class: str) -> bool:
        """Whether messages of this class are sealed under the policy."""
        return message_class in self._streams

    def route(
        self, *, topic: str, message_class: str, device_id: str, retained: bool = False
    ) -> Route:
        """The :class:`Route` of ``topic`` for :meth:`seal_routed` and :meth:`open_routed` (a
        caller that sees the same topics again keeps them: the per-message work is then what
        the message itself needs)."""
        return Route(self._streams.get(message_class), topic, message_class, device_id, retained)

    # -- sealing -------------------------------------------------------------------------------

    def seal(self, data: bytes, *, topic: str, message_class: str, device_id: str) -> bytes:
        """The sealed envelope for ``data`` (or ``data`` itself when the class is not protected)."""
        return self.seal_routed(
            data, self.route(topic=topic, message_class=message_class, device_id=device_id)
        )

    def seal_routed(self, data: bytes, route: Route) -> bytes:
        """:meth:`seal` on a topic's :class:`Route` (made by this protector)."""
        stream = route.stream
        if stream is None:
            return data
        key = self._keys.sealing_key(stream.traffic, route.device_id)
        with self._lock:
            sealer = stream.sealers.get(key.key_id)
            if sealer is None or sealer.key is not key:
                sealer = self._sealer(stream, key, topic=route.topic, previous=sealer)
            counter = stream.counter
            if counter >= _COUNTER_LIMIT:
                now_ms = self._clock_ms()
                stream.epoch = now_ms if stream.epoch < 0 else max(now_ms, stream.epoch + 1)
                counter = 0
            stream.counter = counter + 1
            seq = stream.epoch << _COUNTER_BITS | counter
            self.sealed += 1
        tail = _SEQ_NONCE.pack(seq, sealer.salt, seq)
        header = sealer.prefix + tail
        return header + sealer.encrypt(tail[8:], data, header + route.aad_tail)

    def _sealer(
        self, stream: _Stream, key: SymmetricKey, *, topic: str, previous: _Sealer | None
    ) -> _Sealer:
        """The sealer for ``key`` (called under the lock when the resolver hands out a key object
        not seen before: first use, a rotation, or a cache refresh of the same key)."""
        if key.algorithm is not stream.algorithm:
            raise SecurityError(
                f"{topic}: key {key.key_id!r} is {key.algorithm}, the policy for "
                f"{stream.traffic} traffic says {stream.algorithm}"
            )
        if previous is not None and previous.key == key:
            previous.key = key  # the same key, refreshed: keep the cipher and the salt
            return previous
        sealer = stream.sealers[key.key_id] = _Sealer(key, stream.traffic, self._sender_bytes)
        return sealer

    # -- opening -------------------------------------------------------------------------------

    def open(
        self,
        data: bytes,
        *,
        topic: str,
        message_class: str,
        device_id: str,
        retained: bool = False,
    ) -> OpenedMessage:
        """Check and decrypt a received message; :class:`PayloadRejectedError` (counted) if it fails.

        ``device_id`` is the topic's device (the sender's id for topics without one); ``retained``
        marks a class whose messages the broker retains (a byte-identical redelivery passes).
        """
        route = self.route(
            topic=topic, message_class=message_class, device_id=device_id, retained=retained
        )
        return OpenedMessage(*self.open_routed(data, route))

    def open_routed(self, data: bytes, route: Route) -> tuple[bytes, str | None, int | None]:
        """:meth:`open` on a topic's :class:`Route` (made by this protector): the plaintext, the
        sender and the sequence number (None and None for a class that is not sealed)."""
        try:
            stream = route.stream
            if not data.startswith(MAGIC):
                if stream is None:
                    return data, None, None
                raise _refused(
                    route,
                    None,
                    RejectKind.PLAINTEXT,
                    f"{route.message_class} messages must be sealed with {stream.algorithm}, "
                    "this one is not",
                )
            size = len(data)
            prefix = None
            if size > 7:  # a prefix seen before: only the length behind it is left to check
                sender_at = 6 + data[5]
                if sender_at < size:
                    end = sender_at + 1 + data[sender_at]
                    prefix = self._prefixes.get(data[:end])
                    if prefix is not None and size < end + _MIN_AFTER_PREFIX:
                        prefix = None
            if prefix is None:
                prefix, end = self._parsed_prefix(data, route.topic)
            if stream is not None and (
                prefix.algorithm is not stream.algorithm or prefix.traffic is not stream.traffic
            ):
                raise _refused(
                    route,
                    prefix,
                    RejectKind.POLICY,
                    f"sealed as {prefix.traffic}/{prefix.algorithm}, {route.message_class} "
                    f"messages must be {stream.traffic}/{stream.algorithm}",
                )
            (seq,) = _SEQ.unpack_from(data, end)
            if route.retained:
                previous = self._retained.get(route.topic)
                if previous is not None and previous[0] == data:
                    with self._lock:
                        self.retained_redelivered += 1
                    return previous[1], prefix.sender_id, seq
            try:
                key = self._keys.opening_key(prefix.key_id)
            except SecurityError as err:
                raise _refused(
                    route,
                    prefix,
                    RejectKind.UNKNOWN_KEY,
                    f"key {prefix.key_id!r} cannot open messages: {err}",
                ) from err
            scope = key.scope
            if key.algorithm is not prefix.algorithm or (
                scope != route.device_id
                if scope is not None
                else self._own_key(prefix.traffic, route.device_id) is not None
            ):
                raise self._misused(key, prefix, route)
            body_at = end + _SEQ_NONCE.size
            # check, decrypt and accept under one lock: two threads cannot both accept one number
            with self._lock:
                window = prefix.window
                if window is None:  # this prefix's first message: its sender may have a window
                    window = prefix.window = self._windows.get(prefix.window_key)
                if window is not None:
                    verdict = window.check(seq)
                    if verdict is not None:
                        raise self._replayed(route, prefix, seq, verdict, window)
                opener = prefix.opener
                if opener is None or opener.key is not key:
                    opener = prefix.opener = self._opener(key)
                try:
                    plaintext = opener.decrypt(
                        data[end + 8 : body_at], data[body_at:], data[:body_at] + route.aad_tail
                    )
                except InvalidTag as err:
                    raise _refused(
                        route,
                        prefix,
                        RejectKind.AUTHENTICATION,
                        f"message from {prefix.sender_id!r} (seq {seq}) does not authenticate: "
                        "altered, moved to another topic, or sealed under another key",
                    ) from err
                if window is None:  # only authenticated senders get a window
                    window = ReplayWindow(self._window_size)
                    prefix.window = self._windows[prefix.window_key] = window
                window.accept(seq)
                self.opened += 1
                if route.retained:
                    self._retained[route.topic] = (data, plaintext)
            return plaintext, prefix.sender_id, seq
        except PayloadRejectedError as err:
            with self._lock:
                self.rejected[err.reason] += 1
            raise

    def _own_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey | None:
        """The key of ``device_id``'s own that its ``traffic`` is sealed with, if it has one.

        A topic of a device with keys of its own opens only with those: a group key, which
        every device holds, would otherwise let any of them seal a command for another one (on
        a broker not trusted with content). A topic of a sender without keys of its own (a
        service, a device enrolled before protection was on, a broadcast) still opens with the
        group key. Asked for group-key messages only, so a device key costs nothing here."""
        if not device_id:
            return None
        try:
            key = self._keys.sealing_key(traffic, device_id)
        except SecurityError:
            return None
        return key if key.scope == device_id else None

    def _misused(self, key: SymmetricKey, prefix: _Prefix, route: Route) -> PayloadRejectedError:
        """Why ``key`` may not open ``prefix``'s message on ``route``'s topic."""
        if key.algorithm is not prefix.algorithm:
            return _refused(
                route,
                prefix,
                RejectKind.POLICY,
                f"key {key.key_id!r} is {key.algorithm}, the envelope says {prefix.algorithm}",
            )
        own = self._own_key(prefix.traffic, route.device_id) if key.scope is None else None
        if own is not None:
            return _refused(
                route,
                prefix,
                RejectKind.KEY_SCOPE,
                f"group key {key.key_id!r} cannot open traffic of device {route.device_id!r}, "
                f"which has its own {prefix.traffic} key {own.key_id!r}",
            )
        return _refused(
            route,
            prefix,
            RejectKind.KEY_SCOPE,
            f"key {key.key_id!r} belongs to device {key.scope!r}, not {route.device_id!r}",
        )

    def _opener(self, key: SymmetricKey) -> AeadCipher:
        """The cipher of ``key`` (one per key object, shared by the senders using it)."""
        opener = self._openers.get(key.key_id)
        if opener is None or opener.key is not key:
            opener = self._openers[key.key_id] = AeadCipher(key)
        return opener

    def _replayed(
        self, route: Route, prefix: _Prefix, seq: int, verdict: RejectKind, window: ReplayWindow
    ) -> PayloadRejectedError:
        return _refused(
            route,
            prefix,
            verdict,
            f"sequence number {seq} from {prefix.sender_id!r} is a {verdict} "
            f"(highest accepted {window.highest}, window {self._window_size})",
        )

    def _parsed_prefix(self, data: bytes, topic: str) -> tuple[_Prefix, int]:
        """The header prefix of ``data`` (parsed, or cached by its bytes) and where it ends;
        :class:`PayloadRejectedError` (MALFORMED) naming the first bad field."""
        try:
            end = _prefix_end(data)
            raw = data[:end]
            prefix = self._prefixes.get(raw)
            if prefix is None:
                prefix = _parse_prefix(raw)
                if len(self._prefixes) >= _PREFIX_CACHE_SIZE:
                    self._prefixes.clear()
                self._prefixes[raw] = prefix
        except SecurityError as err:
            raise PayloadRejectedError(
                f"{topic}: malformed envelope: {err}", topic=topic, reason=RejectKind.MALFORMED
            ) from err
        return prefix, end

    @property
    def rejected_total(self) -> int:
        with self._lock:
            return sum(self.rejected.values())
