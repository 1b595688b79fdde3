"""MQTT 3.1.1 and 5.0 wire format: :func:`encode`, :func:`decode` and the :class:`Framer`.

The packet dataclasses live in ``packets`` and are re-exported here.

The :class:`Framer` cuts a byte stream into packets (first byte + body span) and enforces the
maximum packet size as soon as a fixed header is read, before the body arrives. :func:`decode`
turns one packet into a dataclass; every violation raises
:class:`~openfeeder.iot.broker.codes.ProtocolError` with the v5 reason code to report (0x81 for a
malformed packet, 0x82 for a protocol error, 0x90 for an invalid topic name, ...).

PUBLISH properties are kept as raw bytes (:attr:`Publish.properties`) so that the broker passes them
through without re-encoding; the Message Expiry Interval is taken out into
:attr:`Publish.message_expiry_s` because the broker must lower it while a message waits. A Topic
Alias is refused (the broker announces Topic Alias Maximum 0) and a Subscription Identifier from a
client is a protocol error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from openfeeder.iot.broker.codes import (
    MQTT_5,
    MQTT_311,
    PacketType,
    ProtocolError,
    ReasonCode,
    malformed,
    protocol_error,
)
from openfeeder.iot.broker.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
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
)
from openfeeder.iot.broker.properties import (
    WILL,
    Properties,
    PropertyId,
    decode_properties,
    encode_binary,
    encode_properties,
    encode_str,
    encode_varint,
    read_binary,
    read_str,
    read_u16,
)

__all__ = [
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Frame",
    "Framer",
    "Packet",
    "PingReq",
    "PingResp",
    "PubAck",
    "Publish",
    "Suback",
    "Subscribe",
    "SubscriptionRequest",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "check_topic_name",
    "decode",
    "decode_packet",
    "decode_publish",
    "encode",
]

Frame = tuple[int, bytes, int, int]
"""One packet cut from the stream: first byte, buffer, body start and body end in the buffer."""

_FLAGS_0010: Final = frozenset({PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE})


# --- framing -----------------------------------------------------------------------------------


class Framer:
    """Cuts a TCP byte stream into MQTT packets.

    :meth:`feed` returns the complete packets in the data so far, and the protocol error that
    stopped framing, if any: a remaining length longer than 4 bytes (malformed) or a packet larger
    than ``max_packet_bytes`` (the whole packet, fixed header included; reported as soon as its
    header is read). Complete packets before the error are returned too.
    """

    __slots__ = ("_buf", "_need", "max_packet_bytes")

    def __init__(self, max_packet_bytes: int) -> None:
        self.max_packet_bytes = max_packet_bytes
        self._buf = bytearray()
        self._need = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete packet held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[Frame], ProtocolError | None]:
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return [], None
            data = bytes(self._buf)
            self._buf.clear()
        frames: list[Frame] = []
        pos = 0
        n = len(data)
        limit = self.max_packet_bytes
        need = 0
        while pos < n:
            if n - pos < 2:
                need = 2
                break
            byte = data[pos + 1]
            if byte < 0x80:
                length = byte
                start = pos + 2
            else:
                length = byte & 0x7F
                index = pos + 2
                shift = 7
                while True:
                    if index >= n:
                        break
                    byte = data[index]
                    index += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        return frames, malformed("remaining length longer than 4 bytes")
                if byte >= 0x80:
                    need = index - pos + 1
                    break
                start = index
            end = start + length
            if end - pos > limit:
                return frames, ProtocolError(
                    f"packet of {end - pos} bytes exceeds the maximum of {limit}",
                    ReasonCode.PACKET_TOO_LARGE,
                )
            if end > n:
                need = end - pos
                break
            frames.append((data[pos], data, start, end))
            pos = end
        if pos < n:
            self._buf += memoryview(data)[pos:]
            self._need = need
        return frames, None


# --- encoding ----------------------------------------------------------------------------------


def _fixed(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def check_topic_name(topic: str) -> None:
    """A PUBLISH topic name: non-empty, no NUL, no ``+``/``#`` wildcard (0x90 otherwise)."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ProtocolError(
            "topic name is empty or contains a wildcard or NUL",
            ReasonCode.TOPIC_NAME_INVALID,
            topic=topic,
        )


def encode(packet: Packet, *, version: int = MQTT_5) -> bytes:
    """The bytes of ``packet`` for a peer speaking protocol level ``version`` (4 or 5)."""
    return _ENCODERS[type(packet)](packet, version == MQTT_5)


def _props(props: Properties, v5: bool) -> bytes:
    return encode_properties(props) if v5 else b""


def _encode_ack(packet: PubAck, v5: bool) -> bytes:
    first = (packet.packet_type << 4) | (2 if packet.packet_type == PacketType.PUBREL else 0)
    body = packet.packet_id.to_bytes(2, "big")
    if v5 and (packet.reason_code or packet.properties):
        body += bytes((packet.reason_code,))
        if packet.properties:
            body += encode_properties(packet.properties)
    return _fixed(first, body)


def _encode_connack(packet: Connack, v5: bool) -> bytes:
    body = bytes((int(packet.session_present), packet.reason_code))
    return _fixed(PacketType.CONNACK << 4, body + _props(packet.properties, v5))


def _encode_subscribe(packet: Subscribe, v5: bool) -> bytes:
    body = packet.packet_id.to_bytes(2, "big") + _props(packet.properties, v5)
    for req in packet.requests:
        options = req.qos
        if v5:
            options |= (req.no_local << 2) | (req.retain_as_published << 3)
            options |= req.retain_handling << 4
        body += encode_str(req.topic_filter) + bytes((options,))
    return _fixed((PacketType.SUBSCRIBE << 4) | 2, body)


def _encode_suback(packet: Suback, v5: bool) -> bytes:
    body = packet.packet_id.to_bytes(2, "big") + _props(packet.properties, v5)
    return _fixed(PacketType.SUBACK << 4, body + bytes(packet.reason_codes))


def _encode_unsuback(packet: Unsuback, v5: bool) -> bytes:
    body = packet.packet_id.to_bytes(2, "big")
    if v5:
        body += encode_properties(packet.properties) + bytes(packet.reason_codes)
    return _fixed(PacketType.UNSUBACK << 4, body)


def _encode_unsubscribe(packet: Unsubscribe, v5: bool) -> bytes:
    body = packet.packet_id.to_bytes(2, "big") + _props(packet.properties, v5)
    body += b"".join(encode_str(item) for item in packet.topic_filters)
    return _fixed((PacketType.UNSUBSCRIBE << 4) | 2, body)


def _encode_ping(packet: PingReq | PingResp, v5: bool) -> bytes:
    del v5
    kind = PacketType.PINGREQ if isinstance(packet, PingReq) else PacketType.PINGRESP
    return bytes((kind << 4, 0))


def _encode_disconnect(packet: Disconnect | Auth, v5: bool) -> bytes:
    kind = PacketType.DISCONNECT if isinstance(packet, Disconnect) else PacketType.AUTH
    body = b""
    if v5 and (packet.reason_code or packet.properties):
        body = bytes((packet.reason_code,))
        if packet.properties:
            body += encode_properties(packet.properties)
    return _fixed(kind << 4, body)


def _encode_publish(packet: Publish, v5: bool) -> bytes:
    first = 0x30 | (packet.dup << 3) | (packet.qos << 1) | int(packet.retain)
    body = encode_str(packet.topic)
    if packet.qos:
        body += packet.packet_id.to_bytes(2, "big")
    if v5:
        props = packet.properties
        if packet.message_expiry_s is not None:
            props = b"\x02" + packet.message_expiry_s.to_bytes(4, "big") + props
        body += encode_varint(len(props)) + props
    return _fixed(first, body + packet.payload)


def _encode_connect(packet: Connect, v5: bool) -> bytes:
    del v5  # the packet says its own protocol level
    v5 = packet.protocol_level == MQTT_5
    flags = int(packet.clean_start) << 1
    will = packet.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (int(will.retain) << 5)
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        flags |= 0x40
    body = encode_str("MQTT") + bytes((packet.protocol_level, flags))
    body += packet.keepalive_s.to_bytes(2, "big")
    if v5:
        body += encode_properties(packet.properties)
    body += encode_str(packet.client_id)
    if will is not None:
        if v5:
            body += encode_properties(will.properties)
        body += encode_str(will.topic) + encode_binary(will.payload)
    if packet.username is not None:
        body += encode_str(packet.username)
    if packet.password is not None:
        body += encode_binary(packet.password)
    return _fixed(PacketType.CONNECT << 4, body)


# --- decoding ----------------------------------------------------------------------------------


def decode_packet(data: bytes, *, version: int = MQTT_5) -> Packet:
    """Decode exactly one whole packet (fixed header included), e.g. in tests."""
    frames, error = Framer(len(data) + 5).feed(data)
    if error is not None:
        raise error
    if len(frames) != 1 or frames[0][3] != len(data):
        raise malformed("data is not exactly one packet")
    first, buf, start, end = frames[0]
    return decode(first, buf, start, end, version=version)


def decode(first: int, buf: bytes, start: int, end: int, *, version: int) -> Packet:
    """Decode the packet whose first byte is ``first`` and body is ``buf[start:end]``."""
    kind = first >> 4
    v5 = version == MQTT_5
    if kind == PacketType.PUBLISH:
        return decode_publish(first, buf, start, end, v5)
    if kind == 0:
        raise malformed("reserved packet type 0")
    expected_flags = 2 if kind in _FLAGS_0010 else 0
    if first & 0x0F != expected_flags:
        raise malformed(f"invalid fixed-header flags for packet type {kind}")
    return _DECODERS[kind](PacketType(kind), buf, start, end, v5)


def _decode_connect_entry(kind: PacketType, buf: bytes, start: int, end: int, v5: bool) -> Packet:
    del kind, v5  # CONNECT says its own protocol level
    return _decode_connect(buf, start, end)


def _decode_ping(kind: PacketType, buf: bytes, start: int, end: int, v5: bool) -> Packet:
    del buf, v5
    if end != start:
        raise malformed("PINGREQ/PINGRESP with a body")
    return PingReq() if kind == PacketType.PINGREQ else PingResp()


def _decode_disconnect(kind: PacketType, buf: bytes, start: int, end: int, v5: bool) -> Packet:
    reason = 0
    props: Properties = {}
    if v5 and end > start:
        reason = buf[start]
        if end > start + 1:
            props, pos, _ = decode_properties(buf, start + 1, end, kind)
            _expect_end(pos, end)
    elif end != start:
        raise malformed("DISCONNECT with a body")
    if kind == PacketType.DISCONNECT:
        return Disconnect(reason, props)
    if not v5:
        raise malformed("AUTH is an MQTT 5 packet")
    return Auth(reason, props)


def _decode_connack(kind: PacketType, buf: bytes, start: int, end: int, v5: bool) -> Packet:
    if end - start < 2 or buf[start] > 1:
        raise malformed("invalid CONNACK")
    props: Properties = {}
    pos = start + 2
    if v5:
        props, pos, _ = decode_properties(buf, pos, end, kind)
    _expect_end(pos, end)
    return Connack(bool(buf[start]), buf[start + 1], props)


def _expect_end(pos: int, end: int) -> None:
    if pos != end:
        raise malformed("packet has trailing bytes")


def decode_publish(first: int, buf: bytes, start: int, end: int, v5: bool) -> Publish:
    """Decode a PUBLISH body; the topic is checked with :func:`check_topic_name`."""
    qos = (first >> 1) & 3
    dup = bool(first & 8)
    if qos == 3:
        raise malformed("PUBLISH with QoS 3")
    if dup and not qos:
        raise malformed("PUBLISH with DUP set at QoS 0")
    length = read_u16(buf, start, end)
    pos = start + 2 + length
    if pos > end:
        raise malformed("PUBLISH ends inside the topic name")
    try:
        topic = buf[start + 2 : pos].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError("topic name is not valid UTF-8", ReasonCode.TOPIC_NAME_INVALID) from err
    check_topic_name(topic)
    packet_id = 0
    if qos:
        packet_id = read_u16(buf, pos, end)
        if not packet_id:
            raise malformed("PUBLISH with packet identifier 0", topic=topic)
        pos += 2
    raw = b""
    expiry: int | None = None
    if v5:
        if pos < end and buf[pos] == 0:
            pos += 1
        else:
            raw, expiry, pos = _publish_properties(buf, pos, end, topic)
    return Publish(topic, buf[pos:end], qos, bool(first & 1), dup, packet_id, raw, expiry)


def _publish_properties(
    buf: bytes, pos: int, end: int, topic: str
) -> tuple[bytes, int | None, int]:
    props, stop, spans = decode_properties(buf, pos, end, PacketType.PUBLISH)
    if PropertyId.TOPIC_ALIAS in props:
        raise ProtocolError(
            "topic aliases are not accepted (Topic Alias Maximum is 0)",
            ReasonCode.TOPIC_ALIAS_INVALID,
            topic=topic,
        )
    if PropertyId.SUBSCRIPTION_IDENTIFIER in props:
        raise protocol_error("a client must not send a Subscription Identifier", topic=topic)
    response = props.get(PropertyId.RESPONSE_TOPIC)
    if isinstance(response, str):
        check_topic_name(response)
    expiry = props.get(PropertyId.MESSAGE_EXPIRY_INTERVAL)
    if isinstance(expiry, int):
        raw = b"".join(
            buf[a:b] for ident, a, b in spans if ident != PropertyId.MESSAGE_EXPIRY_INTERVAL
        )
        return raw, expiry, stop
    start = spans[0][1] if spans else stop
    return buf[start:stop], None, stop


def _decode_connect(buf: bytes, pos: int, end: int) -> Connect:
    name, pos = read_str(buf, pos, end)
    if pos >= end:
        raise malformed("CONNECT ends after the protocol name")
    level = buf[pos]
    if name != "MQTT" or level not in (MQTT_311, MQTT_5):
        raise ProtocolError(
            f"unsupported protocol {name!r} level {level}", ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
        )
    if pos + 4 > end:
        raise malformed("CONNECT ends inside its header")
    flags = buf[pos + 1]
    keepalive = (buf[pos + 2] << 8) | buf[pos + 3]
    pos += 4
    if flags & 1:
        raise malformed("CONNECT reserved flag is set")
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 0x20)
    if not will_flag and (will_qos or will_retain):
        raise malformed("will QoS or retain set without a will")
    if will_qos == 3:
        raise malformed("will QoS 3")
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if level == MQTT_311 and has_password and not has_username:
        raise malformed("password without user name (MQTT 3.1.1)")
    v5 = level == MQTT_5
    props: Properties = {}
    if v5:
        props, pos, _ = decode_properties(buf, pos, end, PacketType.CONNECT)
    client_id, pos = read_str(buf, pos, end)
    will: Will | None = None
    if will_flag:
        will_props: Properties = {}
        if v5:
            will_props, pos, _ = decode_properties(buf, pos, end, WILL)
        topic, pos = read_str(buf, pos, end)
        check_topic_name(topic)
        payload, pos = read_binary(buf, pos, end)
        will = Will(topic, payload, will_qos, will_retain, will_props)
    username: str | None = None
    password: bytes | None = None
    if has_username:
        username, pos = read_str(buf, pos, end)
    if has_password:
        password, pos = read_binary(buf, pos, end)
    _expect_end(pos, end)
    return Connect(client_id, level, bool(flags & 0x02), keepalive, will, username, password, props)


def _decode_ack(kind: PacketType, buf: bytes, pos: int, end: int, v5: bool) -> PubAck:
    packet_id = read_u16(buf, pos, end)
    pos += 2
    reason = 0
    props: Properties = {}
    if v5 and pos < end:
        reason = buf[pos]
        pos += 1
        if pos < end:
            props, pos, _ = decode_properties(buf, pos, end, kind)
    _expect_end(pos, end)
    return PubAck(kind, packet_id, reason, props)


def _decode_subscribe(kind: PacketType, buf: bytes, pos: int, end: int, v5: bool) -> Subscribe:
    packet_id = read_u16(buf, pos, end)
    if not packet_id:
        raise malformed("SUBSCRIBE with packet identifier 0")
    pos += 2
    props: Properties = {}
    if v5:
        props, pos, _ = decode_properties(buf, pos, end, kind)
    requests: list[SubscriptionRequest] = []
    while pos < end:
        topic_filter, pos = read_str(buf, pos, end)
        if pos >= end:
            raise malformed("SUBSCRIBE ends before the subscription options")
        options = buf[pos]
        pos += 1
        qos = options & 3
        retain_handling = (options >> 4) & 3
        if qos == 3 or retain_handling == 3 or options & (0xC0 if v5 else 0xFC):
            raise malformed(f"invalid subscription options 0x{options:02x}")
        requests.append(
            SubscriptionRequest(
                topic_filter, qos, bool(options & 4), bool(options & 8), retain_handling
            )
        )
    if not requests:
        raise protocol_error("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, requests, props)


def _decode_unsubscribe(kind: PacketType, buf: bytes, pos: int, end: int, v5: bool) -> Unsubscribe:
    packet_id = read_u16(buf, pos, end)
    if not packet_id:
        raise malformed("UNSUBSCRIBE with packet identifier 0")
    pos += 2
    props: Properties = {}
    if v5:
        props, pos, _ = decode_properties(buf, pos, end, kind)
    filters: list[str] = []
    while pos < end:
        topic_filter, pos = read_str(buf, pos, end)
        filters.append(topic_filter)
    if not filters:
        raise protocol_error("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(packet_id, filters, props)


def _decode_sub_ack(kind: PacketType, buf: bytes, pos: int, end: int, v5: bool) -> Packet:
    packet_id = read_u16(buf, pos, end)
    pos += 2
    props: Properties = {}
    if v5:
        props, pos, _ = decode_properties(buf, pos, end, kind)
    codes = list(buf[pos:end])
    if kind == PacketType.SUBACK:
        return Suback(packet_id, codes, props)
    if not v5 and codes:
        raise malformed("UNSUBACK with a payload (MQTT 3.1.1)")
    return Unsuback(packet_id, codes, props)


_ENCODERS: Final[dict[type, Callable[[Any, bool], bytes]]] = {
    Publish: _encode_publish,
    PubAck: _encode_ack,
    Connect: _encode_connect,
    Connack: _encode_connack,
    Subscribe: _encode_subscribe,
    Suback: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    Unsuback: _encode_unsuback,
    PingReq: _encode_ping,
    PingResp: _encode_ping,
    Disconnect: _encode_disconnect,
    Auth: _encode_disconnect,
}
_DECODERS: Final[dict[int, Callable[[PacketType, bytes, int, int, bool], Packet]]] = {
    PacketType.CONNECT: _decode_connect_entry,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBACK: _decode_ack,
    PacketType.PUBREC: _decode_ack,
    PacketType.PUBREL: _decode_ack,
    PacketType.PUBCOMP: _decode_ack,
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_sub_ack,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_sub_ack,
    PacketType.PINGREQ: _decode_ping,
    PacketType.PINGRESP: _decode_ping,
    PacketType.DISCONNECT: _decode_disconnect,
    PacketType.AUTH: _decode_disconnect,
}
