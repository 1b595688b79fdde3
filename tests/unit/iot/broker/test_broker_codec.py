"""MQTT packet codec: round trips for both protocol levels, framing, and malformed input."""

from __future__ import annotations

import pytest

from openfeeder.iot.broker.codec import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Framer,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
    decode,
    decode_packet,
    encode,
)
from openfeeder.iot.broker.codes import PacketType, ProtocolError, ReasonCode
from openfeeder.iot.broker.properties import PropertyId, encode_varint

P = PropertyId

BOTH = [4, 5]
ROUND_TRIP_BOTH: list[Packet] = [
    Connack(session_present=True, reason_code=0),
    Publish("a/b", b"payload", qos=0),
    Publish("a/b/c", b"x" * 300, qos=1, retain=True, dup=True, packet_id=7),
    Publish("\u00e9t\u00e9/\u2603", b"", qos=2, packet_id=65535),
    PubAck(PacketType.PUBACK, 1),
    PubAck(PacketType.PUBREC, 2),
    PubAck(PacketType.PUBREL, 3),
    PubAck(PacketType.PUBCOMP, 65535),
    Subscribe(10, [SubscriptionRequest("a/+", 1), SubscriptionRequest("$share/g/b/#", 2)]),
    Suback(10, [1, 2, 0x80]),
    Unsubscribe(11, ["a/+", "b/#"]),
    PingReq(),
    PingResp(),
    Disconnect(),
]
ROUND_TRIP_V5: list[Packet] = [
    Connect(
        "dev-1",
        5,
        clean_start=False,
        keepalive_s=30,
        will=Will(
            "status/dev-1",
            b"dead",
            1,
            True,
            {P.WILL_DELAY_INTERVAL: 5, P.CONTENT_TYPE: "text/plain"},
        ),
        username="user",
        password=b"secret",
        properties={
            P.SESSION_EXPIRY_INTERVAL: 3600,
            P.RECEIVE_MAXIMUM: 10,
            P.MAXIMUM_PACKET_SIZE: 100_000,
            P.USER_PROPERTY: (("a", "1"), ("a", "2")),
        },
    ),
    Connect("", 5, password=b"no user name is fine in v5"),
    Connack(
        False,
        0,
        {
            P.RECEIVE_MAXIMUM: 100,
            P.ASSIGNED_CLIENT_IDENTIFIER: "x",
            P.SHARED_SUBSCRIPTION_AVAILABLE: 1,
        },
    ),
    Connack(False, ReasonCode.BAD_USER_NAME_OR_PASSWORD),
    Publish(
        "t",
        b"p",
        qos=1,
        packet_id=5,
        properties=b"\x03\x00\x04json",
        message_expiry_s=60,
    ),
    PubAck(PacketType.PUBACK, 9, ReasonCode.NO_MATCHING_SUBSCRIBERS),
    PubAck(PacketType.PUBREL, 9, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, {P.REASON_STRING: "no"}),
    Subscribe(
        12,
        [SubscriptionRequest("a/#", 2, no_local=True, retain_as_published=True, retain_handling=2)],
        {P.USER_PROPERTY: (("k", "v"),)},
    ),
    Unsuback(13, [0, ReasonCode.NO_SUBSCRIPTION_EXISTED]),
    Disconnect(ReasonCode.DISCONNECT_WITH_WILL, {P.SESSION_EXPIRY_INTERVAL: 0}),
    Disconnect(ReasonCode.SESSION_TAKEN_OVER),
    Auth(ReasonCode.CONTINUE_AUTHENTICATION, {P.AUTHENTICATION_METHOD: "SCRAM"}),
]
ROUND_TRIP_V311: list[Packet] = [
    Connect("dev-2", 4, clean_start=True, keepalive_s=0),
    Connect(
        "dev-3", 4, clean_start=False, will=Will("w", b"bye", 2, False), username="u", password=b"p"
    ),
    Unsuback(14),
]


@pytest.mark.parametrize("version", BOTH)
@pytest.mark.parametrize("packet", ROUND_TRIP_BOTH, ids=lambda p: type(p).__name__)
def test_round_trip_both_versions(packet: Packet, version: int) -> None:
    assert decode_packet(encode(packet, version=version), version=version) == packet


@pytest.mark.parametrize("packet", ROUND_TRIP_V5, ids=lambda p: type(p).__name__)
def test_round_trip_v5(packet: Packet) -> None:
    assert decode_packet(encode(packet, version=5), version=5) == packet


@pytest.mark.parametrize("packet", ROUND_TRIP_V311, ids=lambda p: type(p).__name__)
def test_round_trip_v311(packet: Packet) -> None:
    assert decode_packet(encode(packet, version=4), version=4) == packet


def test_v311_drops_v5_only_fields() -> None:
    packet = PubAck(PacketType.PUBACK, 3, ReasonCode.NO_MATCHING_SUBSCRIBERS)
    assert encode(packet, version=4) == b"\x40\x02\x00\x03"
    assert encode(Disconnect(ReasonCode.SERVER_SHUTTING_DOWN), version=4) == b"\xe0\x00"


def test_publish_properties_pass_through_with_expiry_split_out() -> None:
    user = b"\x26\x00\x01k\x00\x01v"
    expiry = b"\x02\x00\x00\x00\x3c"
    body = b"\x00\x01t" + encode_varint(len(user + expiry)) + user + expiry + b"data"
    packet = decode_packet(bytes((0x30, len(body))) + body, version=5)
    assert isinstance(packet, Publish)
    assert packet.properties == user
    assert packet.message_expiry_s == 60
    assert packet.payload == b"data"


def test_remaining_length_boundaries() -> None:
    for size in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152):
        packet = Publish("t", b"x" * size)
        assert decode_packet(encode(packet, version=4), version=4) == packet


def test_framer_reassembles_byte_by_byte() -> None:
    packets = [
        Publish("a", b"1" * 200, qos=1, packet_id=1),
        PingReq(),
        Publish("b", b"2", qos=0),
    ]
    stream = b"".join(encode(p, version=5) for p in packets)
    framer = Framer(1024)
    frames = []
    for index in range(len(stream)):
        got, error = framer.feed(stream[index : index + 1])
        assert error is None
        frames.extend(got)
    assert [
        decode(first, buf, start, end, version=5) for first, buf, start, end in frames
    ] == packets
    assert framer.pending_bytes == 0


def test_framer_returns_complete_packets_before_an_oversize_one() -> None:
    framer = Framer(100)
    small = encode(PingReq())
    big_header = bytes((0x30,)) + encode_varint(1000)
    frames, error = framer.feed(small + big_header)
    assert len(frames) == 1
    assert error is not None
    assert error.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_framer_rejects_five_byte_remaining_length() -> None:
    frames, error = Framer(1 << 30).feed(b"\x30\xff\xff\xff\xff\x01")
    assert frames == []
    assert error is not None
    assert error.reason_code == ReasonCode.MALFORMED_PACKET


def _body(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


MALFORMED: list[tuple[str, bytes, int, ReasonCode]] = [
    ("publish qos 3", _body(0x36, b"\x00\x01t\x00\x01"), 5, ReasonCode.MALFORMED_PACKET),
    ("dup at qos 0", _body(0x38, b"\x00\x01t\x00"), 5, ReasonCode.MALFORMED_PACKET),
    ("topic not utf-8", _body(0x30, b"\x00\x02\xff\xfe\x00"), 5, ReasonCode.TOPIC_NAME_INVALID),
    ("wildcard topic", _body(0x30, b"\x00\x03a/#\x00"), 5, ReasonCode.TOPIC_NAME_INVALID),
    ("plus topic", _body(0x30, b"\x00\x03a/+"), 4, ReasonCode.TOPIC_NAME_INVALID),
    ("nul in topic", _body(0x30, b"\x00\x03a\x00b"), 4, ReasonCode.TOPIC_NAME_INVALID),
    ("empty topic", _body(0x30, b"\x00\x00\x00"), 5, ReasonCode.TOPIC_NAME_INVALID),
    ("packet id 0", _body(0x32, b"\x00\x01t\x00\x00"), 4, ReasonCode.MALFORMED_PACKET),
    ("topic past end", _body(0x30, b"\x00\x09ab"), 4, ReasonCode.MALFORMED_PACKET),
    (
        "topic alias",
        _body(0x30, b"\x00\x01t\x03\x23\x00\x01"),
        5,
        ReasonCode.TOPIC_ALIAS_INVALID,
    ),
    ("unknown property", _body(0x30, b"\x00\x01t\x02\x7f\x00"), 5, ReasonCode.MALFORMED_PACKET),
    (
        "duplicate property",
        _body(0x30, b"\x00\x01t\x04\x01\x00\x01\x01"),
        5,
        ReasonCode.PROTOCOL_ERROR,
    ),
    (
        "property not allowed",
        _body(0x30, b"\x00\x01t\x03\x21\x00\x05"),
        5,
        ReasonCode.PROTOCOL_ERROR,
    ),
    ("subscribe bad flags", _body(0x80, b"\x00\x01\x00\x01a\x00"), 4, ReasonCode.MALFORMED_PACKET),
    ("subscribe empty", _body(0x82, b"\x00\x01"), 4, ReasonCode.PROTOCOL_ERROR),
    ("subscribe qos 3", _body(0x82, b"\x00\x01\x00\x01a\x03"), 4, ReasonCode.MALFORMED_PACKET),
    ("v311 reserved bits", _body(0x82, b"\x00\x01\x00\x01a\x04"), 4, ReasonCode.MALFORMED_PACKET),
    ("v5 reserved bits", _body(0x82, b"\x00\x01\x00\x00\x01a\x40"), 5, ReasonCode.MALFORMED_PACKET),
    (
        "retain handling 3",
        _body(0x82, b"\x00\x01\x00\x00\x01a\x30"),
        5,
        ReasonCode.MALFORMED_PACKET,
    ),
    ("pingreq body", _body(0xC0, b"\x00"), 4, ReasonCode.MALFORMED_PACKET),
    ("reserved type 0", _body(0x00, b""), 4, ReasonCode.MALFORMED_PACKET),
    ("ack trailing", _body(0x40, b"\x00\x01\x00"), 4, ReasonCode.MALFORMED_PACKET),
    (
        "connect bad protocol",
        _body(0x10, b"\x00\x04MQTX\x05\x02\x00\x3c\x00\x00\x00"),
        5,
        ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ),
    (
        "connect level 3",
        _body(0x10, b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00"),
        4,
        ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ),
    (
        "connect reserved flag",
        _body(0x10, b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x00"),
        4,
        ReasonCode.MALFORMED_PACKET,
    ),
    (
        "connect will qos without will",
        _body(0x10, b"\x00\x04MQTT\x04\x0a\x00\x3c\x00\x00"),
        4,
        ReasonCode.MALFORMED_PACKET,
    ),
    (
        "connect v311 password without user",
        _body(0x10, b"\x00\x04MQTT\x04\x42\x00\x3c\x00\x00\x00\x01p"),
        4,
        ReasonCode.MALFORMED_PACKET,
    ),
    (
        "connect receive maximum 0",
        _body(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x00"),
        5,
        ReasonCode.PROTOCOL_ERROR,
    ),
    (
        "client id with NUL",
        _body(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x01\x00"),
        4,
        ReasonCode.MALFORMED_PACKET,
    ),
]


@pytest.mark.parametrize(
    ("data", "version", "reason"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_packets_raise_with_reason_code(
    data: bytes, version: int, reason: ReasonCode
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_packet(data, version=version)
    assert caught.value.reason_code == reason
    assert caught.value.reason == reason.name.lower()
