"""Sealed payloads: round trips per algorithm, and the attacks that must fail (without a broker)."""

from __future__ import annotations

import random
import secrets

import pytest

from openfeeder.errors import SecurityError
from openfeeder.security.keys import KeyRing, KeyState
from openfeeder.security.payload import (
    MAGIC,
    Algorithm,
    PayloadProtector,
    PayloadRejectedError,
    ProtectionPolicy,
    RejectKind,
    ReplayWindow,
    SymmetricKey,
    TrafficClass,
    parse_header,
)

DEVICE = "fsw-7"
CMD_TOPIC = f"openfeeder/v1/cmd/{DEVICE}"
EVENT_TOPIC = f"openfeeder/v1/event/{DEVICE}"
CONFIG_TOPIC = f"openfeeder/v1/config/{DEVICE}"
PLAIN = b'{"schema_version":1,"device_id":"fsw-7","seq":0,"t_ns":1,"command_id":"c1"}'


def _ring() -> KeyRing:
    return KeyRing.of(
        SymmetricKey("control/fsw-7@1", Algorithm.AES_256_GCM, secrets.token_bytes(32), "fsw-7"),
        SymmetricKey("protection/fsw-7@1", Algorithm.SM4_GCM, secrets.token_bytes(16), "fsw-7"),
        SymmetricKey("control/fsw-8@1", Algorithm.AES_256_GCM, secrets.token_bytes(32), "fsw-8"),
    )


@pytest.fixture
def pair() -> tuple[PayloadProtector, PayloadProtector]:
    ring = _ring()
    return PayloadProtector(ring, sender_id="flisr"), PayloadProtector(ring, sender_id=DEVICE)


def _open(receiver: PayloadProtector, data: bytes, topic: str = CMD_TOPIC, **kw: object) -> bytes:
    message_class = topic.split("/")[2]
    device = topic.split("/")[3]
    opened = receiver.open(data, topic=topic, message_class=message_class, device_id=device, **kw)  # type: ignore[arg-type]
    return opened.plaintext


def _reason(receiver: PayloadProtector, data: bytes, topic: str = CMD_TOPIC) -> RejectKind:
    with pytest.raises(PayloadRejectedError) as caught:
        _open(receiver, data, topic)
    return caught.value.reason


def test_control_is_aes_and_protection_is_sm4(
    pair: tuple[PayloadProtector, PayloadProtector],
) -> None:
    sender, receiver = pair
    command = sender.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    event = sender.seal(PLAIN, topic=EVENT_TOPIC, message_class="event", device_id=DEVICE)
    assert command.startswith(MAGIC)
    assert PLAIN not in command
    assert PLAIN not in event
    assert parse_header(command).algorithm is Algorithm.AES_256_GCM
    assert parse_header(command).key_id == "control/fsw-7@1"
    assert parse_header(event).algorithm is Algorithm.SM4_GCM
    assert parse_header(event).traffic is TrafficClass.PROTECTION
    assert _open(receiver, command) == PLAIN
    assert _open(receiver, event, EVENT_TOPIC) == PLAIN
    assert receiver.opened == 2


def test_monitoring_and_status_stay_plain(
    pair: tuple[PayloadProtector, PayloadProtector],
) -> None:
    sender, receiver = pair
    topic = f"openfeeder/v1/meas/{DEVICE}"
    assert sender.seal(PLAIN, topic=topic, message_class="meas", device_id=DEVICE) == PLAIN
    assert _open(receiver, PLAIN, topic) == PLAIN
    status = f"openfeeder/v1/status/{DEVICE}"
    assert sender.seal(PLAIN, topic=status, message_class="status", device_id=DEVICE) == PLAIN
    with pytest.raises(SecurityError, match="'status' cannot be protected"):
        ProtectionPolicy(traffic={"status": TrafficClass.CONTROL})


def test_replayed_message_is_rejected_and_counted(
    pair: tuple[PayloadProtector, PayloadProtector],
) -> None:
    sender, receiver = pair
    sealed = sender.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    assert _open(receiver, sealed) == PLAIN
    assert _reason(receiver, sealed) is RejectKind.DUPLICATE
    assert receiver.rejected[RejectKind.DUPLICATE] == 1
    assert receiver.rejected_total == 1


def test_reorder_within_window_passes_and_beyond_is_stale() -> None:
    ring = _ring()
    sender = PayloadProtector(ring, sender_id="flisr")
    receiver = PayloadProtector(ring, sender_id=DEVICE, replay_window=8)
    sealed = [
        sender.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
        for _ in range(12)
    ]
    assert _open(receiver, sealed[9]) == PLAIN
    assert _open(receiver, sealed[5]) == PLAIN  # 4 behind: inside the window of 8
    assert _open(receiver, sealed[2]) == PLAIN  # 7 behind: the last slot of the window
    assert _reason(receiver, sealed[1]) is RejectKind.STALE  # 8 behind: beyond it
    assert _reason(receiver, sealed[5]) is RejectKind.DUPLICATE
    assert _open(receiver, sealed[11]) == PLAIN
    assert receiver.rejected == {RejectKind.STALE: 1, RejectKind.DUPLICATE: 1}


@pytest.mark.parametrize("topic", [CMD_TOPIC, EVENT_TOPIC])
def test_every_flipped_bit_is_rejected(
    pair: tuple[PayloadProtector, PayloadProtector], topic: str
) -> None:
    sender, receiver = pair
    message_class = topic.split("/")[2]
    sealed = sender.seal(PLAIN, topic=topic, message_class=message_class, device_id=DEVICE)
    reasons = set()
    for index in range(len(sealed)):
        for bit in (0, 5):
            forged = bytearray(sealed)
            forged[index] ^= 1 << bit
            reasons.add(_reason(receiver, bytes(forged), topic))
    # bits in the header fail parsing, policy or key look-up; everything else authentication
    assert RejectKind.AUTHENTICATION in reasons
    assert reasons <= {
        RejectKind.AUTHENTICATION,
        RejectKind.MALFORMED,
        RejectKind.POLICY,
        RejectKind.UNKNOWN_KEY,
        RejectKind.PLAINTEXT,
    }
    assert receiver.opened == 0
    assert receiver.rejected_total == 2 * len(sealed)
    assert _open(receiver, sealed, topic) == PLAIN  # the forgeries did not move the window


def test_message_moved_to_another_topic_fails(
    pair: tuple[PayloadProtector, PayloadProtector],
) -> None:
    sender, receiver = pair
    sealed = sender.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    assert _reason(receiver, sealed, CONFIG_TOPIC) is RejectKind.AUTHENTICATION


class _OneKey:
    """A resolver that seals everything with one key, as a device misusing its own key would."""

    def __init__(self, key: SymmetricKey) -> None:
        self.key = key

    def sealing_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey:  # noqa: ARG002
        return self.key

    def opening_key(self, key_id: str) -> SymmetricKey:  # noqa: ARG002
        return self.key


def test_key_of_another_device_is_refused() -> None:
    ring = _ring()
    forged_sender = PayloadProtector(
        _OneKey(ring.opening_key("control/fsw-8@1")), sender_id="fsw-8"
    )
    sealed = forged_sender.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    receiver = PayloadProtector(ring, sender_id="flisr")
    assert _reason(receiver, sealed) is RejectKind.KEY_SCOPE


def test_group_key_cannot_speak_for_a_device_with_keys_of_its_own() -> None:
    """A device holds the group keys (for broadcasts and services' events). Sealing a command
    for another device under the group key is refused by a receiver that knows that device has
    its own key, and counted; a device without keys of its own and a broadcast still open."""
    group = SymmetricKey("control@1", Algorithm.AES_256_GCM, secrets.token_bytes(32))
    receiver_ring = _ring().with_key(group)
    forger = PayloadProtector(_OneKey(group), sender_id="fsw-8")
    receiver = PayloadProtector(receiver_ring, sender_id=DEVICE)

    forged = forger.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    with pytest.raises(PayloadRejectedError) as caught:
        _open(receiver, forged)
    assert caught.value.reason is RejectKind.KEY_SCOPE
    assert "group key 'control@1'" in str(caught.value)
    assert "'control/fsw-7@1'" in str(caught.value)
    assert caught.value.sender_id == "fsw-8"
    assert receiver.rejected[RejectKind.KEY_SCOPE] == 1

    # fsw-9 has no control key of its own: its topics still open with the group key
    keyless = "openfeeder/v1/cmd/fsw-9"
    sealed = forger.seal(PLAIN, topic=keyless, message_class="cmd", device_id="fsw-9")
    assert _open(receiver, sealed, keyless) == PLAIN
    # a broadcast names no device
    topology = "openfeeder/v1/topology"
    sealed = forger.seal(PLAIN, topic=topology, message_class="topology", device_id="")
    opened = receiver.open(sealed, topic=topology, message_class="topology", device_id="")
    assert opened.plaintext == PLAIN
    # the device's own key still opens its topic, and the refusal moved no window
    legit = PayloadProtector(receiver_ring, sender_id="fsw-8")
    sealed = legit.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    assert parse_header(sealed).key_id == "control/fsw-7@1"
    assert _open(receiver, sealed) == PLAIN
    assert receiver.rejected_total == 1


def test_plaintext_and_downgrade_are_refused(
    pair: tuple[PayloadProtector, PayloadProtector],
) -> None:
    _, receiver = pair
    assert _reason(receiver, PLAIN) is RejectKind.PLAINTEXT
    weak = ProtectionPolicy(
        algorithms={
            TrafficClass.CONTROL: Algorithm.SM4_GCM,
            TrafficClass.PROTECTION: Algorithm.SM4_GCM,
        }
    )
    ring = KeyRing.of(
        SymmetricKey("control/fsw-7@1", Algorithm.SM4_GCM, secrets.token_bytes(16), DEVICE)
    )
    downgraded = PayloadProtector(ring, sender_id="x", policy=weak).seal(
        PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE
    )
    assert _reason(receiver, downgraded) is RejectKind.POLICY


def test_unknown_key_and_garbage() -> None:
    ring = _ring()
    other = PayloadProtector(
        KeyRing.of(SymmetricKey("control@9", Algorithm.AES_256_GCM, secrets.token_bytes(32))),
        sender_id="x",
    )
    sealed = other.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    receiver = PayloadProtector(ring, sender_id=DEVICE)
    assert _reason(receiver, sealed) is RejectKind.UNKNOWN_KEY
    assert _reason(receiver, MAGIC + b"\x01") is RejectKind.MALFORMED
    assert _reason(receiver, sealed[:40]) is RejectKind.MALFORMED


def test_retained_redelivery_passes_but_a_retained_replay_of_an_older_one_does_not(
    pair: tuple[PayloadProtector, PayloadProtector],
) -> None:
    sender, receiver = pair
    first = sender.seal(PLAIN, topic=CONFIG_TOPIC, message_class="config", device_id=DEVICE)
    second = sender.seal(PLAIN, topic=CONFIG_TOPIC, message_class="config", device_id=DEVICE)
    assert _open(receiver, first, CONFIG_TOPIC, retained=True) == PLAIN
    assert _open(receiver, second, CONFIG_TOPIC, retained=True) == PLAIN
    assert _open(receiver, second, CONFIG_TOPIC, retained=True) == PLAIN  # broker redelivery
    assert receiver.retained_redelivered == 1
    with pytest.raises(PayloadRejectedError) as caught:
        _open(receiver, first, CONFIG_TOPIC, retained=True)
    assert caught.value.reason is RejectKind.DUPLICATE


def test_sender_restart_continues_above_the_old_session() -> None:
    ring = _ring()
    now_ms = [1_700_000_000_000]
    receiver = PayloadProtector(ring, sender_id=DEVICE)
    first = PayloadProtector(ring, sender_id="flisr", clock_ms=lambda: now_ms[0])
    for _ in range(3):
        _open(receiver, first.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE))
    now_ms[0] += 1
    restarted = PayloadProtector(ring, sender_id="flisr", clock_ms=lambda: now_ms[0])
    sealed = restarted.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    assert _open(receiver, sealed) == PLAIN


def test_nonces_never_repeat_under_a_key(pair: tuple[PayloadProtector, PayloadProtector]) -> None:
    sender, _ = pair
    nonces = {
        parse_header(
            sender.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
        ).nonce
        for _ in range(2000)
    }
    assert len(nonces) == 2000


def test_overlap_key_opens_but_does_not_seal() -> None:
    old = SymmetricKey("control@1", Algorithm.AES_256_GCM, secrets.token_bytes(32))
    new = SymmetricKey("control@2", Algorithm.AES_256_GCM, secrets.token_bytes(32))
    before = PayloadProtector(KeyRing.of(old), sender_id="a")
    in_flight = before.seal(PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    rotated = KeyRing([(old, KeyState.OVERLAP), (new, KeyState.ACTIVE)])
    receiver = PayloadProtector(rotated, sender_id="b")
    assert _open(receiver, in_flight) == PLAIN
    fresh = PayloadProtector(rotated, sender_id="c").seal(
        PLAIN, topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE
    )
    assert parse_header(fresh).key_id == "control@2"
    archived = KeyRing([(old, KeyState.ARCHIVED), (new, KeyState.ACTIVE)])
    assert _reason(PayloadProtector(archived, sender_id="d"), in_flight) is RejectKind.UNKNOWN_KEY


def test_replay_window_matches_a_reference() -> None:
    """Random arrival orders: the bitmap window says what an explicit set of seen numbers says."""
    rng = random.Random(7)
    for _ in range(50):
        window = ReplayWindow(16)
        seen: set[int] = set()
        highest = -1
        for seq in [rng.randrange(0, 80) for _ in range(120)]:
            if seq > highest:
                expected = None
            elif highest - seq >= 16:
                expected = RejectKind.STALE
            elif seq in seen:
                expected = RejectKind.DUPLICATE
            else:
                expected = None
            assert window.check(seq) is expected
            if expected is None:
                window.accept(seq)
                seen.add(seq)
                highest = max(highest, seq)


def test_bad_keys_are_refused() -> None:
    with pytest.raises(SecurityError, match="needs 16 bytes"):
        SymmetricKey("k", Algorithm.SM4_GCM, b"x" * 32)
    key = SymmetricKey("k", Algorithm.AES_256_GCM, b"s" * 32)
    assert "sss" not in repr(key)
