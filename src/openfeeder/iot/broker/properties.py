"""MQTT v5 properties: identifiers, wire types, where each may appear, and their codec.

A decoded property block is a :data:`Properties` dict from identifier to value; the two properties
that may repeat hold tuples: User Property a tuple of ``(name, value)`` pairs, Subscription
Identifier a tuple of ints. Primitive readers (``read_u16``, ``read_str``, ...) are shared with the packet codec.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from openfeeder.iot.broker.codes import PacketType, malformed, protocol_error

__all__ = [
    "ALLOWED",
    "WILL",
    "Properties",
    "PropertyId",
    "PropertyValue",
    "decode_properties",
    "encode_binary",
    "encode_properties",
    "encode_property_body",
    "encode_str",
    "encode_varint",
    "read_binary",
    "read_str",
    "read_u16",
    "read_varint",
]

WILL: Final = 0
"""Pseudo packet type for the will properties inside CONNECT (in :data:`ALLOWED`)."""


class PropertyId(IntEnum):
    """MQTT v5 property identifiers."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


PropertyValue = int | str | bytes | tuple[tuple[str, str], ...] | tuple[int, ...]
Properties = dict[int, PropertyValue]

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
P = PropertyId
_TYPES: Final[dict[int, int]] = {
    P.PAYLOAD_FORMAT_INDICATOR: _BYTE,
    P.MESSAGE_EXPIRY_INTERVAL: _U32,
    P.CONTENT_TYPE: _STR,
    P.RESPONSE_TOPIC: _STR,
    P.CORRELATION_DATA: _BIN,
    P.SUBSCRIPTION_IDENTIFIER: _VARINT,
    P.SESSION_EXPIRY_INTERVAL: _U32,
    P.ASSIGNED_CLIENT_IDENTIFIER: _STR,
    P.SERVER_KEEP_ALIVE: _U16,
    P.AUTHENTICATION_METHOD: _STR,
    P.AUTHENTICATION_DATA: _BIN,
    P.REQUEST_PROBLEM_INFORMATION: _BYTE,
    P.WILL_DELAY_INTERVAL: _U32,
    P.REQUEST_RESPONSE_INFORMATION: _BYTE,
    P.RESPONSE_INFORMATION: _STR,
    P.SERVER_REFERENCE: _STR,
    P.REASON_STRING: _STR,
    P.RECEIVE_MAXIMUM: _U16,
    P.TOPIC_ALIAS_MAXIMUM: _U16,
    P.TOPIC_ALIAS: _U16,
    P.MAXIMUM_QOS: _BYTE,
    P.RETAIN_AVAILABLE: _BYTE,
    P.USER_PROPERTY: _PAIR,
    P.MAXIMUM_PACKET_SIZE: _U32,
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE,
    P.SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}

T = PacketType
_MESSAGE: Final = frozenset(
    {
        P.PAYLOAD_FORMAT_INDICATOR,
        P.MESSAGE_EXPIRY_INTERVAL,
        P.CONTENT_TYPE,
        P.RESPONSE_TOPIC,
        P.CORRELATION_DATA,
        P.USER_PROPERTY,
    }
)
_ACK: Final = frozenset({P.REASON_STRING, P.USER_PROPERTY})
ALLOWED: Final[dict[int, frozenset[int]]] = {
    T.CONNECT: frozenset(
        {
            P.SESSION_EXPIRY_INTERVAL,
            P.AUTHENTICATION_METHOD,
            P.AUTHENTICATION_DATA,
            P.REQUEST_PROBLEM_INFORMATION,
            P.REQUEST_RESPONSE_INFORMATION,
            P.RECEIVE_MAXIMUM,
            P.TOPIC_ALIAS_MAXIMUM,
            P.USER_PROPERTY,
            P.MAXIMUM_PACKET_SIZE,
        }
    ),
    WILL: _MESSAGE | {P.WILL_DELAY_INTERVAL},
    T.CONNACK: frozenset(
        {
            P.SESSION_EXPIRY_INTERVAL,
            P.ASSIGNED_CLIENT_IDENTIFIER,
            P.SERVER_KEEP_ALIVE,
            P.AUTHENTICATION_METHOD,
            P.AUTHENTICATION_DATA,
            P.RESPONSE_INFORMATION,
            P.SERVER_REFERENCE,
            P.REASON_STRING,
            P.RECEIVE_MAXIMUM,
            P.TOPIC_ALIAS_MAXIMUM,
            P.MAXIMUM_QOS,
            P.RETAIN_AVAILABLE,
            P.USER_PROPERTY,
            P.MAXIMUM_PACKET_SIZE,
            P.WILDCARD_SUBSCRIPTION_AVAILABLE,
            P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            P.SHARED_SUBSCRIPTION_AVAILABLE,
        }
    ),
    T.PUBLISH: _MESSAGE | {P.TOPIC_ALIAS, P.SUBSCRIPTION_IDENTIFIER},
    T.PUBACK: _ACK,
    T.PUBREC: _ACK,
    T.PUBREL: _ACK,
    T.PUBCOMP: _ACK,
    T.SUBSCRIBE: frozenset({P.SUBSCRIPTION_IDENTIFIER, P.USER_PROPERTY}),
    T.SUBACK: _ACK,
    T.UNSUBSCRIBE: frozenset({P.USER_PROPERTY}),
    T.UNSUBACK: _ACK,
    T.DISCONNECT: frozenset(
        {P.SESSION_EXPIRY_INTERVAL, P.SERVER_REFERENCE, P.REASON_STRING, P.USER_PROPERTY}
    ),
    T.AUTH: frozenset(
        {P.AUTHENTICATION_METHOD, P.AUTHENTICATION_DATA, P.REASON_STRING, P.USER_PROPERTY}
    ),
}
_BOOLEAN: Final = frozenset(
    {
        P.PAYLOAD_FORMAT_INDICATOR,
        P.REQUEST_PROBLEM_INFORMATION,
        P.REQUEST_RESPONSE_INFORMATION,
        P.MAXIMUM_QOS,
        P.RETAIN_AVAILABLE,
        P.WILDCARD_SUBSCRIPTION_AVAILABLE,
        P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        P.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
_NONZERO: Final = frozenset({P.RECEIVE_MAXIMUM, P.MAXIMUM_PACKET_SIZE, P.SUBSCRIPTION_IDENTIFIER})


# --- primitives --------------------------------------------------------------------------------


def read_u16(buf: bytes, pos: int, end: int) -> int:
    """A big-endian two-byte integer at ``pos``; malformed if it runs past ``end``."""
    if pos + 2 > end:
        raise malformed("packet ends inside a two-byte integer")
    return (buf[pos] << 8) | buf[pos + 1]


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A variable byte integer at ``pos`` -> (value, position after it)."""
    value = 0
    shift = 0
    for _ in range(4):
        if pos >= end:
            raise malformed("packet ends inside a variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise malformed("variable byte integer longer than 4 bytes")


def read_binary(buf: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """Two-byte length then that many bytes -> (bytes, position after them)."""
    length = read_u16(buf, pos, end)
    pos += 2
    if pos + length > end:
        raise malformed("packet ends inside a length-prefixed field")
    return bytes(buf[pos : pos + length]), pos + length


def read_str(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    """A UTF-8 string (two-byte length prefix); malformed if invalid UTF-8 or containing NUL."""
    raw, pos = read_binary(buf, pos, end)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise malformed("string is not valid UTF-8") from err
    if "\x00" in text:
        raise malformed("string contains U+0000")
    return text, pos


def encode_varint(value: int) -> bytes:
    """The variable byte integer encoding (1-4 bytes) of ``0 <= value < 2**28``."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_str(text: str) -> bytes:
    """A UTF-8 string with its two-byte length prefix."""
    return encode_binary(text.encode("utf-8"))


def encode_binary(data: bytes) -> bytes:
    """Binary data with its two-byte length prefix."""
    if len(data) > 0xFFFF:
        raise ValueError("length-prefixed MQTT field longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


# --- property blocks ---------------------------------------------------------------------------


def decode_properties(
    buf: bytes, pos: int, end: int, packet_type: int
) -> tuple[Properties, int, list[tuple[int, int, int]]]:
    """The property block (length, then properties) at ``pos``.

    Returns the properties, the position after the block and, for pass-through, the span
    ``(identifier, start, end)`` of every property in ``buf``. Unknown identifiers are malformed;
    a known one not allowed in ``packet_type`` (or a value out of range, or a repeated single-valued
    one) is a protocol error.
    """
    length, pos = read_varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise malformed("property length runs past the end of the packet")
    props: Properties = {}
    spans: list[tuple[int, int, int]] = []
    user: list[tuple[str, str]] = []
    sub_ids: list[int] = []
    allowed = ALLOWED[packet_type]
    while pos < stop:
        start = pos
        ident, pos = read_varint(buf, pos, stop)
        kind = _TYPES.get(ident)
        if kind is None:
            raise malformed(f"unknown property identifier 0x{ident:02x}")
        if ident not in allowed:
            raise protocol_error(f"property 0x{ident:02x} is not allowed in this packet")
        value: int | str | bytes
        if kind == _PAIR:
            name, pos = read_str(buf, pos, stop)
            text, pos = read_str(buf, pos, stop)
            user.append((name, text))
            spans.append((ident, start, pos))
            continue
        if kind == _BYTE:
            if pos >= stop:
                raise malformed("packet ends inside a property")
            value = buf[pos]
            pos += 1
        elif kind == _U16:
            value = read_u16(buf, pos, stop)
            pos += 2
        elif kind == _U32:
            if pos + 4 > stop:
                raise malformed("packet ends inside a property")
            value = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        elif kind == _VARINT:
            value, pos = read_varint(buf, pos, stop)
        elif kind == _STR:
            value, pos = read_str(buf, pos, stop)
        else:
            value, pos = read_binary(buf, pos, stop)
        if ident in _BOOLEAN and value not in (0, 1):
            raise protocol_error(f"property 0x{ident:02x} must be 0 or 1")
        if ident in _NONZERO and value == 0:
            raise protocol_error(f"property 0x{ident:02x} must not be 0")
        if ident == P.SUBSCRIPTION_IDENTIFIER and isinstance(value, int):
            sub_ids.append(value)
        elif ident in props:
            raise protocol_error(f"property 0x{ident:02x} appears more than once")
        else:
            props[ident] = value
        spans.append((ident, start, pos))
    if user:
        props[P.USER_PROPERTY] = tuple(user)
    if sub_ids:
        props[P.SUBSCRIPTION_IDENTIFIER] = tuple(sub_ids)
    return props, stop, spans


def encode_property_body(props: Properties) -> bytes:
    """The properties of ``props`` without the leading length."""
    parts: list[bytes] = []
    for ident, value in props.items():
        kind = _TYPES[ident]
        head = encode_varint(ident)
        if isinstance(value, tuple):
            for item in value:
                if isinstance(item, tuple):
                    parts.append(head + encode_str(item[0]) + encode_str(item[1]))
                else:
                    parts.append(head + encode_varint(item))
        elif isinstance(value, str):
            parts.append(head + encode_str(value))
        elif isinstance(value, bytes):
            parts.append(head + encode_binary(value))
        elif kind == _BYTE:
            parts.append(head + bytes((value,)))
        elif kind == _U16:
            parts.append(head + value.to_bytes(2, "big"))
        elif kind == _U32:
            parts.append(head + value.to_bytes(4, "big"))
        else:
            parts.append(head + encode_varint(value))
    return b"".join(parts)


def encode_properties(props: Properties | None) -> bytes:
    """The property block: variable-length size, then the properties."""
    if not props:
        return b"\x00"
    body = encode_property_body(props)
    return encode_varint(len(body)) + body
