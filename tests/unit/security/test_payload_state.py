"""What sealers and receivers keep between messages (ciphers, parsed header prefixes, replay
windows, the policy) must never change what is accepted."""

from __future__ import annotations

import dataclasses
import random
import secrets
import threading

import pytest

from openfeeder.errors import SecurityError
from openfeeder.security.keys import KeyRing, KeyState
from openfeeder.security.payload import (
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

DEVICE = "fsw-3"
CMD_TOPIC = f"openfeeder/v1/cmd/{DEVICE}"
EVENT_TOPIC = f"openfeeder/v1/event/{DEVICE}"
PLAIN = b'{"schema_version":1,"device_id":"fsw-3","seq":4,"t_ns":1,"command_id":"c4"}'


def _ring() -> KeyRing:
    return KeyRing.of(
        SymmetricKey("control/fsw-3@1", Algorithm.AES_256_GCM, secrets.token_bytes(32), DEVICE),
        SymmetricKey("protection/fsw-3@1", Algorithm.SM4_GCM, secrets.token_bytes(16), DEVICE),
    )


def _seal(sender: PayloadProtector, topic: str = CMD_TOPIC) -> bytes:
    return sender.seal(PLAIN, topic=topic, message_class=topic.split("/")[2], device_id=DEVICE)


def _open(receiver: PayloadProtector, data: bytes, topic: str = CMD_TOPIC) -> bytes:
    message_class = topic.split("/")[2]
    return receiver.open(data, topic=topic, message_class=message_class, device_id=DEVICE).plaintext


def test_a_jump_far_beyond_the_window_starts_a_fresh_bitmap() -> None:
    """A sender back after ten seconds is 10,000 << 22 numbers ahead: the window must follow it
    without shifting its bitmap that far (a 5 GB integer), and still judge old numbers."""
    window = ReplayWindow(64)
    for seq in (100, 98, 97):
        window.accept(seq)
    restart = 100 + (10_000 << 22)
    window.accept(restart)
    assert window.highest == restart
    assert window.check(restart) is RejectKind.DUPLICATE
    assert window.check(100) is RejectKind.STALE
    assert window.check(restart - 1) is None
    window.accept(restart - 63)
    assert window.check(restart - 63) is RejectKind.DUPLICATE
    assert window.check(restart - 64) is RejectKind.STALE
    window.accept(restart + 64)  # exactly one window ahead: nothing of the old bitmap survives
    assert window.check(restart) is RejectKind.STALE
    assert window.check(restart + 1) is None
    assert window.check(restart + 64) is RejectKind.DUPLICATE


def test_replay_window_with_large_jumps_matches_a_reference() -> None:
    rng = random.Random(11)
    for size in (1, 5, 64, 200):
        window = ReplayWindow(size)
        seen: set[int] = set()
        highest = -1
        seq = 0
        for _ in range(400):
            step = rng.choice((-3, -1, 0, 1, 2, size - 1, size, size + 1, 1 << 40))
            seq = max(0, seq + step) if step != -3 else max(0, highest - rng.randrange(size + 3))
            if seq > highest:
                expected = None
            elif highest - seq >= size:
                expected = RejectKind.STALE
            elif seq in seen:
                expected = RejectKind.DUPLICATE
            else:
                expected = None
            assert window.check(seq) is expected, (size, seq, highest)
            if expected is None:
                window.accept(seq)
                seen.add(seq)
                highest = max(highest, seq)


def test_the_policy_is_a_snapshot() -> None:
    algorithms = {TrafficClass.CONTROL: Algorithm.AES_256_GCM}
    traffic = {"cmd": TrafficClass.CONTROL}
    policy = ProtectionPolicy(algorithms=algorithms, traffic=traffic)
    sender = PayloadProtector(_ring(), sender_id="ops", policy=policy)
    algorithms[TrafficClass.CONTROL] = Algorithm.NONE
    traffic["event"] = TrafficClass.CONTROL
    assert policy.algorithm_for("cmd") is Algorithm.AES_256_GCM
    assert policy.algorithm_for("event") is Algorithm.NONE
    assert sender.protects("cmd")
    assert _seal(sender) != PLAIN
    assert _seal(sender, EVENT_TOPIC) == PLAIN


class _Refreshing:
    """Hands out an equal but new key object on every call, as a resolver's cache refresh does."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def sealing_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey:
        return dataclasses.replace(self.ring.sealing_key(traffic, device_id))

    def opening_key(self, key_id: str) -> SymmetricKey:
        return dataclasses.replace(self.ring.opening_key(key_id))


@pytest.mark.parametrize("topic", [CMD_TOPIC, EVENT_TOPIC])
def test_refreshed_key_objects_keep_the_salt_and_open(topic: str) -> None:
    ring = _ring()
    sender = PayloadProtector(_Refreshing(ring), sender_id="ops")
    receiver = PayloadProtector(_Refreshing(ring), sender_id=DEVICE)
    sealed = [_seal(sender, topic) for _ in range(5)]
    assert len({parse_header(data).nonce[:4] for data in sealed}) == 1
    assert len({parse_header(data).nonce for data in sealed}) == 5
    assert all(_open(receiver, data, topic) == PLAIN for data in sealed)


class _OneKey:
    """A resolver that hands out one key for every class."""

    def __init__(self, key: SymmetricKey) -> None:
        self.key = key

    def sealing_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey:  # noqa: ARG002
        return self.key

    def opening_key(self, key_id: str) -> SymmetricKey:  # noqa: ARG002
        return self.key


def test_one_key_for_two_traffic_classes_gets_two_salts() -> None:
    """Each class counts its own sequence numbers, so sharing a salt could repeat a nonce."""
    key = SymmetricKey("control@1", Algorithm.AES_256_GCM, secrets.token_bytes(32))
    both_aes = ProtectionPolicy(
        algorithms={
            TrafficClass.CONTROL: Algorithm.AES_256_GCM,
            TrafficClass.PROTECTION: Algorithm.AES_256_GCM,
        }
    )
    sender = PayloadProtector(_OneKey(key), sender_id="ops", policy=both_aes)
    command = parse_header(_seal(sender))
    event = parse_header(_seal(sender, EVENT_TOPIC))
    assert command.key_id == event.key_id == "control@1"
    assert (command.traffic, event.traffic) == (TrafficClass.CONTROL, TrafficClass.PROTECTION)
    assert command.nonce[:4] != event.nonce[:4]


def test_truncations_after_the_header_is_cached_are_malformed_or_fail() -> None:
    ring = _ring()
    sender = PayloadProtector(ring, sender_id="ops")
    receiver = PayloadProtector(ring, sender_id=DEVICE)
    assert _open(receiver, _seal(sender)) == PLAIN  # the receiver now knows the prefix
    victim = _seal(sender)
    for length in range(len(victim)):
        with pytest.raises(PayloadRejectedError) as caught:
            _open(receiver, victim[:length])
        assert caught.value.reason in {
            RejectKind.PLAINTEXT,
            RejectKind.MALFORMED,
            RejectKind.AUTHENTICATION,
        }
    assert _open(receiver, victim) == PLAIN  # none of them moved the window


def test_receiver_threads_accept_each_message_once() -> None:
    ring = _ring()
    sender = PayloadProtector(ring, sender_id="ops")
    receiver = PayloadProtector(ring, sender_id=DEVICE, replay_window=256)
    sealed = [_seal(sender, topic) for topic in (CMD_TOPIC, EVENT_TOPIC) * 100]
    accepted: list[int] = []
    refused: list[RejectKind] = []
    start = threading.Barrier(4)

    def receive() -> None:
        start.wait()
        for data, topic in zip(sealed, (CMD_TOPIC, EVENT_TOPIC) * 100, strict=True):
            try:
                _open(receiver, data, topic)
            except PayloadRejectedError as err:
                refused.append(err.reason)
            else:
                accepted.append(1)

    threads = [threading.Thread(target=receive) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == receiver.opened == len(sealed)
    assert set(refused) == {RejectKind.DUPLICATE}
    assert receiver.rejected == {RejectKind.DUPLICATE: 3 * len(sealed)}


def test_one_window_per_sender_across_its_keys_and_prefix_cache_clears() -> None:
    """Each key gives a sender's envelopes another header prefix, and receivers forget prefixes
    when too many are seen: neither may give a sender a second, empty replay window."""
    old = SymmetricKey("control@1", Algorithm.AES_256_GCM, secrets.token_bytes(32))
    new = SymmetricKey("control@2", Algorithm.AES_256_GCM, secrets.token_bytes(32))
    before = PayloadProtector(KeyRing.of(old), sender_id="ops", clock_ms=lambda: 1_000)
    after = PayloadProtector(
        KeyRing([(old, KeyState.OVERLAP), (new, KeyState.ACTIVE)]),
        sender_id="ops",
        clock_ms=lambda: 2_000,  # the same sender later, after the rotation
    )
    first, second = _seal(before), _seal(after)
    assert parse_header(first).key_id != parse_header(second).key_id
    receiver = PayloadProtector(
        KeyRing([(old, KeyState.OVERLAP), (new, KeyState.ACTIVE)]), sender_id=DEVICE
    )
    assert _open(receiver, second) == PLAIN
    # the first prefix is new to the receiver, its sender's window is not: too old now
    with pytest.raises(PayloadRejectedError) as caught:
        _open(receiver, first)
    assert caught.value.reason is RejectKind.STALE
    # made-up senders fill the prefix cache until it is emptied; the window stays
    for number in range(1100):
        forged = bytearray(_seal(after))
        sender_at = 6 + forged[5]
        forged[sender_at + 1 : sender_at + 4] = f"{number:03x}"[-3:].encode()
        with pytest.raises(PayloadRejectedError) as caught:
            _open(receiver, bytes(forged))
        assert caught.value.reason is RejectKind.AUTHENTICATION
    with pytest.raises(PayloadRejectedError) as caught:
        _open(receiver, second)
    assert caught.value.reason is RejectKind.DUPLICATE
    assert _open(receiver, _seal(after)) == PLAIN


def test_routes_seal_and_open_as_the_named_calls_do() -> None:
    ring = _ring()
    sender = PayloadProtector(ring, sender_id="ops")
    receiver = PayloadProtector(ring, sender_id=DEVICE)
    route = sender.route(topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    sealed = sender.seal_routed(PLAIN, route)
    into = receiver.route(topic=CMD_TOPIC, message_class="cmd", device_id=DEVICE)
    plaintext, sender_id, seq = receiver.open_routed(sealed, into)
    assert (plaintext, sender_id, seq) == (PLAIN, "ops", parse_header(sealed).seq)
    assert _open(receiver, _seal(sender)) == PLAIN  # the named call, same window
    with pytest.raises(PayloadRejectedError) as caught:
        receiver.open_routed(sealed, into)
    assert caught.value.reason is RejectKind.DUPLICATE
    # the route carries the topic into the associated data: another topic's route fails
    elsewhere = receiver.route(topic=f"{CMD_TOPIC}x", message_class="cmd", device_id=DEVICE)
    with pytest.raises(PayloadRejectedError) as caught:
        receiver.open_routed(sender.seal_routed(PLAIN, route), elsewhere)
    assert caught.value.reason is RejectKind.AUTHENTICATION
    meas = sender.route(
        topic=f"openfeeder/v1/meas/{DEVICE}", message_class="meas", device_id=DEVICE
    )
    assert sender.seal_routed(PLAIN, meas) is PLAIN
    assert receiver.open_routed(PLAIN, meas) == (PLAIN, None, None)
    assert receiver.rejected == {RejectKind.DUPLICATE: 1, RejectKind.AUTHENTICATION: 1}


def test_ring_opens_with_next_active_and_overlap_keys_only() -> None:
    keys = {
        state: SymmetricKey(f"control@{n}", Algorithm.AES_256_GCM, secrets.token_bytes(32))
        for n, state in enumerate(KeyState)
    }
    ring = KeyRing((key, state) for state, key in keys.items())
    for state, key in keys.items():
        if state in (KeyState.NEXT, KeyState.ACTIVE, KeyState.OVERLAP):
            assert ring.opening_key(key.key_id) is key
        else:
            with pytest.raises(SecurityError, match=f"is {state}"):
                ring.opening_key(key.key_id)
    with pytest.raises(SecurityError, match="no key"):
        ring.opening_key("control@99")
    # a later entry for the same id decides
    demoted = KeyRing(
        [(keys[KeyState.ACTIVE], KeyState.ACTIVE), (keys[KeyState.ACTIVE], KeyState.ARCHIVED)]
    )
    with pytest.raises(SecurityError, match="archived"):
        demoted.opening_key(keys[KeyState.ACTIVE].key_id)
