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
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openfeeder.errors import SecurityError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_REPLAY_WINDOW",
    "DEFAULT_TRAFFIC",
    "MAGIC",
    "AeadCipher",
    "Algorithm",
    "KeyResolver",
    "OpenedMessage",
    "PayloadProtector",
    "PayloadRejectedError",
    "ProtectionPolicy",
    "RejectKind",
    "ReplayWindow",
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
    """Which algorithm protects each traffic class, and which class each message class is."""

    algorithms: Mapping[TrafficClass, Algorithm] = field(default_factory=lambda: DEFAULT_ALGORITHMS)
    traffic: Mapping[str, TrafficClass] = field(default_factory=lambda: DEFAULT_TRAFFIC)

    def __post_init__(self) -> None:
        for message_class in self.traffic:
            if message_class in UNPROTECTED_CLASSES:
                raise SecurityError(
                    f"message class {message_class!r} cannot be protected (its last will is "
                    "fixed at connection time)"
                )

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


def parse_header(data: bytes) -> SealedHeader:
    """Parse the envelope header; SecurityError naming the first bad field."""
    if len(data) < 8 or data[:2] != MAGIC:
        raise SecurityError("not a sealed envelope (no 'OF' marker)")
    version, algorithm_code, traffic_code, key_length = data[2], data[3], data[4], data[5]
    if version != ENVELOPE_VERSION:
        raise SecurityError(f"envelope version {version} is not supported")
    algorithm = _ALGORITHM_BY_CODE.get(algorithm_code)
    if algorithm is None:
        raise SecurityError(f"unknown algorithm code {algorithm_code}")
    traffic = _TRAFFIC_BY_CODE.get(traffic_code)
    if traffic is None:
        raise SecurityError(f"unknown traffic class code {traffic_code}")
    offset = 6
    key_id_bytes = data[offset : offset + key_length]
    offset += key_length
    if len(key_id_bytes) != key_length or offset >= len(data):
        raise SecurityError("envelope ends inside the key id")
    sender_length = data[offset]
    offset += 1
    sender_bytes = data[offset : offset + sender_length]
    offset += sender_length
    if len(sender_bytes) != sender_length or sender_length == 0:
        raise SecurityError("envelope ends inside the sender id")
    if len(data) < offset + 8 + NONCE_BYTES + TAG_BYTES:
        raise SecurityError("envelope too short for sequence number, nonce and tag")
    (seq,) = struct.unpack_from(">Q", data, offset)
    offset += 8
    nonce = data[offset : offset + NONCE_BYTES]
    offset += NONCE_BYTES
    try:
        key_id = key_id_bytes.decode("utf-8")
        sender_id = sender_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SecurityError("key id or sender id is not UTF-8") from err
    return SealedHeader(
        algorithm=algorithm,
        traffic=traffic,
        key_id=key_id,
        sender_id=sender_id,
        seq=seq,
        nonce=nonce,
        header_bytes=data[:offset],
        body_offset=offset,
    )


def _aad(header: bytes, topic: str, device_id: str) -> bytes:
    return b"".join((header, topic.encode("utf-8"), b"\x00", device_id.encode("utf-8")))


class AeadCipher:
    """One key's AEAD, with the AES object built once (SM4 has no AEAD class in cryptography)."""

    def __init__(self, key: SymmetricKey) -> None:
        self.key = key
        self._aes = AESGCM(key.material) if key.algorithm is Algorithm.AES_256_GCM else None

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if self._aes is not None:
            return self._aes.encrypt(nonce, plaintext, aad)
        encryptor = Cipher(algorithms.SM4(self.key.material), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        body = encryptor.update(plaintext) + encryptor.finalize()
        return body + encryptor.tag

    def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Plaintext, or ``InvalidTag``."""
        if self._aes is not None:
            return self._aes.decrypt(nonce, sealed, aad)
        body, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        decryptor = Cipher(algorithms.SM4(self.key.material), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor.update(body) + decryptor.finalize()


class ReplayWindow:
    """Highest accepted sequence number plus a bitmap of the ``size`` numbers below it."""

    __slots__ = ("_bitmap", "_highest", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"replay window must hold at least 1 number, not {size}")
        self.size = size
        self._highest = -1
        self._bitmap = 0  # bit i set: highest - i was accepted

    def check(self, seq: int) -> RejectKind | None:
        """None if ``seq`` may be accepted, else DUPLICATE or STALE (the window is not changed)."""
        if seq > self._highest:
            return None
        offset = self._highest - seq
        if offset >= self.size:
            return RejectKind.STALE
        if self._bitmap >> offset & 1:
            return RejectKind.DUPLICATE
        return None

    def accept(self, seq: int) -> None:
        """Record ``seq`` (after :meth:`check` passed and the message authenticated)."""
        if seq > self._highest:
            shift = seq - self._highest
            self._bitmap = ((self._bitmap << shift) | 1) & ((1 << self.size) - 1)
            self._highest = seq
        else:
            self._bitmap |= 1 << (self._highest - seq)

    @property
    def highest(self) -> int:
        return self._highest


@dataclass(frozen=True, slots=True)
class OpenedMessage:
    """A message that passed: its plaintext and who sealed it (None when it was not sealed)."""

    plaintext: bytes
    sender_id: str | None
    seq: int | None


class PayloadProtector:
    """Seals outgoing payloads and opens incoming ones for one sender (device or service).

    ``sender_id`` names this end in every envelope it seals (receivers keep one replay window per
    sender and traffic class). Thread-safe: links call :meth:`open` from their network threads.
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
        self.policy = policy if policy is not None else ProtectionPolicy()
        self._keys = keys
        self._sender_bytes = sender
        self._window_size = replay_window
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._epochs: dict[TrafficClass, int] = {}
        self._counters: dict[TrafficClass, int] = {}
        self._salts: dict[str, bytes] = {}
        self._ciphers: dict[str, AeadCipher] = {}
        self._windows: dict[tuple[str, TrafficClass], ReplayWindow] = {}
        self._retained: dict[str, tuple[bytes, bytes]] = {}
        self.rejected: Counter[RejectKind] = Counter()
        self.sealed = 0
        self.opened = 0
        self.retained_redelivered = 0

    def protects(self, message_class: str) -> bool:
        """Whether messages of this class are sealed under the policy."""
        return self.policy.algorithm_for(message_class) is not Algorithm.NONE

    # -- sealing -------------------------------------------------------------------------------

    def seal(self, data: bytes, *, topic: str, message_class: str, device_id: str) -> bytes:
        """The sealed envelope for ``data`` (or ``data`` itself when the class is not protected)."""
        algorithm = self.policy.algorithm_for(message_class)
        if algorithm is Algorithm.NONE:
            return data
        traffic = self.policy.traffic[message_class]
        key = self._keys.sealing_key(traffic, device_id)
        if key.algorithm is not algorithm:
            raise SecurityError(
                f"{topic}: key {key.key_id!r} is {key.algorithm}, the policy for "
                f"{traffic} traffic says {algorithm}"
            )
        with self._lock:
            seq = self._next_seq(traffic)
            cipher = self._cipher(key)
            salt = self._salts.get(key.key_id)
            if salt is None:
                salt = self._salts[key.key_id] = os.urandom(4)
            self.sealed += 1
        nonce = salt + struct.pack(">Q", seq)
        key_id = key.key_id.encode("utf-8")
        header = b"".join(
            (
                MAGIC,
                bytes(
                    (
                        ENVELOPE_VERSION,
                        _ALGORITHM_CODES[algorithm],
                        _TRAFFIC_CODES[traffic],
                        len(key_id),
                    )
                ),
                key_id,
                bytes((len(self._sender_bytes),)),
                self._sender_bytes,
                struct.pack(">Q", seq),
                nonce,
            )
        )
        return header + cipher.encrypt(nonce, data, _aad(header, topic, device_id))

    def _next_seq(self, traffic: TrafficClass) -> int:
        epoch = self._epochs.get(traffic)
        counter = self._counters.get(traffic, 0)
        if epoch is None or counter >= _COUNTER_LIMIT:
            now_ms = self._clock_ms()
            epoch = now_ms if epoch is None else max(now_ms, epoch + 1)
            self._epochs[traffic] = epoch
            counter = 0
        self._counters[traffic] = counter + 1
        return epoch << _COUNTER_BITS | counter

    def _cipher(self, key: SymmetricKey) -> AeadCipher:
        cipher = self._ciphers.get(key.key_id)
        if cipher is None or cipher.key.material != key.material:
            cipher = self._ciphers[key.key_id] = AeadCipher(key)
        return cipher

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
        try:
            return self._open(
                data,
                topic=topic,
                message_class=message_class,
                device_id=device_id,
                retained=retained,
            )
        except PayloadRejectedError as err:
            with self._lock:
                self.rejected[err.reason] += 1
            raise

    def _open(
        self, data: bytes, *, topic: str, message_class: str, device_id: str, retained: bool
    ) -> OpenedMessage:
        expected = self.policy.algorithm_for(message_class)
        if not data.startswith(MAGIC):
            if expected is Algorithm.NONE:
                return OpenedMessage(data, None, None)
            raise PayloadRejectedError(
                f"{topic}: {message_class} messages must be sealed with {expected}, this one is not",
                topic=topic,
                reason=RejectKind.PLAINTEXT,
            )
        try:
            header = parse_header(data)
        except SecurityError as err:
            raise PayloadRejectedError(
                f"{topic}: malformed envelope: {err}", topic=topic, reason=RejectKind.MALFORMED
            ) from err
        sender = header.sender_id
        traffic = self.policy.traffic_of(message_class)
        if expected is not Algorithm.NONE and (
            header.algorithm is not expected or header.traffic is not traffic
        ):
            raise PayloadRejectedError(
                f"{topic}: sealed as {header.traffic}/{header.algorithm}, {message_class} "
                f"messages must be {traffic}/{expected}",
                topic=topic,
                reason=RejectKind.POLICY,
                sender_id=sender,
            )
        if retained:
            with self._lock:
                previous = self._retained.get(topic)
            if previous is not None and previous[0] == data:
                with self._lock:
                    self.retained_redelivered += 1
                return OpenedMessage(previous[1], sender, header.seq)
        try:
            key = self._keys.opening_key(header.key_id)
        except SecurityError as err:
            raise PayloadRejectedError(
                f"{topic}: key {header.key_id!r} cannot open messages: {err}",
                topic=topic,
                reason=RejectKind.UNKNOWN_KEY,
                sender_id=sender,
            ) from err
        if key.algorithm is not header.algorithm:
            raise PayloadRejectedError(
                f"{topic}: key {key.key_id!r} is {key.algorithm}, the envelope says "
                f"{header.algorithm}",
                topic=topic,
                reason=RejectKind.POLICY,
                sender_id=sender,
            )
        if key.scope is not None and key.scope != device_id:
            raise PayloadRejectedError(
                f"{topic}: key {key.key_id!r} belongs to device {key.scope!r}, not {device_id!r}",
                topic=topic,
                reason=RejectKind.KEY_SCOPE,
                sender_id=sender,
            )
        window_key = (sender, header.traffic)
        with self._lock:
            window = self._windows.get(window_key)
            verdict = window.check(header.seq) if window is not None else None
            cipher = self._cipher(key)
        if verdict is not None:
            raise PayloadRejectedError(
                f"{topic}: sequence number {header.seq} from {sender!r} is a {verdict} "
                f"(highest accepted {window.highest if window else -1}, window {self._window_size})",
                topic=topic,
                reason=verdict,
                sender_id=sender,
            )
        try:
            plaintext = cipher.decrypt(
                header.nonce,
                data[header.body_offset :],
                _aad(header.header_bytes, topic, device_id),
            )
        except InvalidTag as err:
            raise PayloadRejectedError(
                f"{topic}: message from {sender!r} (seq {header.seq}) does not authenticate: "
                "altered, moved to another topic, or sealed under another key",
                topic=topic,
                reason=RejectKind.AUTHENTICATION,
                sender_id=sender,
            ) from err
        with self._lock:
            window = self._windows.get(window_key)
            if window is None:
                window = self._windows[window_key] = ReplayWindow(self._window_size)
            verdict = window.check(header.seq)  # again: another thread may have accepted it
            if verdict is None:
                window.accept(header.seq)
                self.opened += 1
                if retained:
                    self._retained[topic] = (data, plaintext)
        if verdict is not None:
            raise PayloadRejectedError(
                f"{topic}: sequence number {header.seq} from {sender!r} is a {verdict}",
                topic=topic,
                reason=verdict,
                sender_id=sender,
            )
        return OpenedMessage(plaintext, sender, header.seq)

    @property
    def rejected_total(self) -> int:
        with self._lock:
            return sum(self.rejected.values())
