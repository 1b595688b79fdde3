"""Malformed and hostile input over raw sockets: only the offending connection is closed."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest
from broker_testkit import PeerPool, RawPeer, running_broker, unique, wait_until

from openfeeder.iot.broker import BrokerLimits, BrokerThread
from openfeeder.iot.broker.codec import (
    Connack,
    Connect,
    Disconnect,
    PubAck,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsubscribe,
    Will,
    encode,
)
from openfeeder.iot.broker.codes import PacketType, ReasonCode
from openfeeder.iot.broker.properties import PropertyId, encode_varint

MAX_PACKET = 4096


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with running_broker(BrokerLimits(max_packet_bytes=MAX_PACKET, connect_timeout_s=0.5)) as b:
        yield b


@pytest.fixture
def peers(broker: BrokerThread) -> Iterator[PeerPool]:
    pool = PeerPool(broker.port)
    yield pool
    pool.close()


def _publish_raw(topic: bytes, rest: bytes = b"\x00") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + rest
    return b"\x30" + encode_varint(len(body)) + body


BAD_AFTER_CONNECT = [
    ("garbage", b"\x00\x01\x02\x03", ReasonCode.MALFORMED_PACKET),
    ("oversize", b"\x30" + encode_varint(MAX_PACKET * 10) + b"abc", ReasonCode.PACKET_TOO_LARGE),
    ("five-byte length", b"\x30\xff\xff\xff\xff\x7f", ReasonCode.MALFORMED_PACKET),
    ("invalid utf-8 topic", _publish_raw(b"a/\xc3\x28"), ReasonCode.TOPIC_NAME_INVALID),
    ("wildcard topic", _publish_raw(b"a/#"), ReasonCode.TOPIC_NAME_INVALID),
    ("plus topic", _publish_raw(b"a/+/b"), ReasonCode.TOPIC_NAME_INVALID),
    ("topic alias", _publish_raw(b"a", b"\x03\x23\x00\x01"), ReasonCode.TOPIC_ALIAS_INVALID),
    (
        "second connect",
        b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00",
        ReasonCode.PROTOCOL_ERROR,
    ),
    ("connack from client", b"\x20\x03\x00\x00\x00", ReasonCode.PROTOCOL_ERROR),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [case[1:] for case in BAD_AFTER_CONNECT],
    ids=[case[0] for case in BAD_AFTER_CONNECT],
)
def test_bad_packet_closes_only_that_connection(
    broker: BrokerThread,
    peers: PeerPool,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    reason: ReasonCode,
) -> None:
    caplog.set_level(logging.WARNING, logger="openfeeder.iot.broker")
    root = unique()
    survivor = peers.connected()
    survivor.subscribe(f"{root}/#")
    raw = RawPeer(broker.port)
    try:
        raw.send(Connect(unique("bad"), 5))
        assert isinstance(raw.read(), Connack)
        raw.send(data)
        assert raw.read_until_closed() == [Disconnect(reason)]
    finally:
        raw.close()
    peers.connected().publish(f"{root}/alive", b"yes")
    assert survivor.expect()[0].payload == b"yes"
    assert broker.stats()["protocol_errors"] == 1
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "mqtt_protocol_error"]
    assert len(warnings) == 1
    assert warnings[0].reason_code == reason  # type: ignore[attr-defined]


def test_v311_client_is_closed_without_disconnect_packet(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        raw.send(Connect(unique("old"), 4), version=4)
        assert isinstance(raw.read(version=4), Connack)
        raw.send(_publish_raw(b"a/#", b""))
        assert raw.read_until_closed(version=4) == []
    finally:
        raw.close()
    assert broker.stats()["protocol_errors"] == 1


def test_garbage_instead_of_connect_is_closed_silently(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.read_until_closed() == []
    finally:
        raw.close()


def test_unsupported_protocol_level_gets_connack_1(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        raw.send(b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00")
        assert raw.read_until_closed(version=4) == [Connack(False, 1)]
    finally:
        raw.close()


def test_malformed_v5_connect_gets_connack_with_reason(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        # Receive Maximum 0 is a protocol error
        raw.send(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x00")
        assert raw.read_until_closed() == [Connack(False, ReasonCode.PROTOCOL_ERROR)]
    finally:
        raw.close()


def test_protocol_error_publishes_the_will(broker: BrokerThread, peers: PeerPool) -> None:
    topic = f"{unique()}/status"
    watcher = peers.connected()
    watcher.subscribe(topic)
    raw = RawPeer(broker.port)
    try:
        raw.send(Connect(unique("w"), 5, will=Will(topic, b"dead", 1)))
        assert isinstance(raw.read(), Connack)
        raw.send(b"\x00\x00")
        assert raw.read_until_closed() == [Disconnect(ReasonCode.MALFORMED_PACKET)]
    finally:
        raw.close()
    assert watcher.expect()[0].payload == b"dead"


def test_invalid_subscription_filters_get_failure_codes(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        raw.send(Connect(unique("s"), 5))
        assert isinstance(raw.read(), Connack)
        filters = ["a/#/b", "a/b#", "+a", "ok/+", "$share/g", "$share/g+/x", "x\u00e9/#"]
        raw.send(Subscribe(3, [SubscriptionRequest(f, 1) for f in filters]))
        suback = raw.read()
        assert suback == Suback(3, [0x8F, 0x8F, 0x8F, 1, 0x8F, 0x8F, 1])
        assert broker.stats()["subscriptions"] == 2
    finally:
        raw.close()


def test_silent_connection_is_closed_after_the_connect_timeout(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        assert raw.read_until_closed() == []
    finally:
        raw.close()
    wait_until(lambda: broker.stats()["connections_current"] == 0, "the connection to go")


def test_packets_split_into_single_bytes_are_reassembled(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        for byte in encode(Connect(unique("slow"), 5)):
            raw.send(bytes((byte,)))
        connack = raw.read()
        assert isinstance(connack, Connack)
        assert connack.reason_code == 0
    finally:
        raw.close()


def test_many_bad_clients_do_not_disturb_a_good_one(broker: BrokerThread, peers: PeerPool) -> None:
    root = unique()
    good = peers.connected()
    good.subscribe(f"{root}/#")
    for index in range(20):
        version = 5 if index % 2 else 4
        raw = RawPeer(broker.port)
        try:
            raw.send(Connect(unique("bad"), version), version=version)
            raw.send(_publish_raw(b"x/+"))
            raw.read_until_closed(version=version)
        finally:
            raw.close()
    peers.connected().publish(f"{root}/after", b"still here")
    assert good.expect()[0].payload == b"still here"
    assert broker.stats()["protocol_errors"] == 20


def test_mutated_packets_never_cause_an_internal_error(
    broker: BrokerThread, peers: PeerPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="openfeeder.iot.broker")
    rng = random.Random(2024)
    root = unique()
    seeds = [
        encode(Publish(f"{root}/a", b"xx", 1, packet_id=3, message_expiry_s=5)),
        encode(Subscribe(1, [SubscriptionRequest(f"{root}/#", 2, True, True, 1)])),
        encode(Unsubscribe(2, [f"{root}/a", "b"])),
        encode(PubAck(PacketType.PUBREL, 4)),
        encode(Disconnect(4, {PropertyId.SESSION_EXPIRY_INTERVAL: 1})),
    ]
    good = peers.connected()
    good.subscribe(f"{root}/alive")
    for index in range(60):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(data))
            data[position] = rng.randrange(256)
        raw = RawPeer(broker.port)
        try:
            raw.send(Connect(unique(f"fuzz{index}"), 5, will=Will(f"{root}/will", b"w")))
            raw.send(bytes(data))
        finally:
            raw.close()
    wait_until(lambda: broker.stats()["connections_current"] == 1, "the fuzzed connections to go")
    peers.connected().publish(f"{root}/alive", b"yes")
    assert good.expect()[0].payload == b"yes"
    assert not [r for r in caplog.records if getattr(r, "event", "") == "mqtt_internal_error"]
