"""MQTT numbers: packet types, reason codes, and the protocol error that carries one.

Reason codes are the MQTT v5 ones (section 2.4 of the specification); for MQTT 3.1.1 clients the
broker maps the few it needs onto the 3.1.1 CONNACK return codes (:func:`connack_v311_code`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from openfeeder.errors import MessagingError

__all__ = [
    "MQTT_5",
    "MQTT_311",
    "PacketType",
    "ProtocolError",
    "ReasonCode",
    "connack_v311_code",
    "malformed",
    "protocol_error",
]

MQTT_311: Final = 4
"""Protocol level of MQTT 3.1.1 in the CONNECT packet."""
MQTT_5: Final = 5
"""Protocol level of MQTT 5.0 in the CONNECT packet."""


class PacketType(IntEnum):
    """The control packet type: the high nibble of the first byte."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class ReasonCode(IntEnum):
    """MQTT v5 reason codes (0x00 is Success, Normal disconnection and Granted QoS 0 alike)."""

    SUCCESS = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


_V311_CONNACK: Final = {
    ReasonCode.SUCCESS: 0,
    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION: 1,
    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID: 2,
    ReasonCode.SERVER_UNAVAILABLE: 3,
    ReasonCode.SERVER_BUSY: 3,
    ReasonCode.BAD_USER_NAME_OR_PASSWORD: 4,
    ReasonCode.NOT_AUTHORIZED: 5,
}


def connack_v311_code(reason: ReasonCode) -> int:
    """The MQTT 3.1.1 CONNACK return code closest to a v5 reason code (3, unavailable, otherwise)."""
    return _V311_CONNACK.get(reason, 3)


class ProtocolError(MessagingError):
    """A packet breaks the MQTT protocol; the connection that sent it is closed.

    ``reason_code`` is what an MQTT v5 peer is told in the DISCONNECT (or CONNACK) packet;
    ``reason`` (from :class:`~openfeeder.errors.MessagingError`) is its lower-case name and
    ``topic`` the topic concerned, or ``""``.
    """

    def __init__(self, message: str, reason_code: ReasonCode, *, topic: str = "") -> None:
        super().__init__(message, topic=topic, reason=reason_code.name.lower())
        self.reason_code = reason_code


def malformed(message: str, *, topic: str = "") -> ProtocolError:
    """A Malformed Packet error (0x81)."""
    return ProtocolError(message, ReasonCode.MALFORMED_PACKET, topic=topic)


def protocol_error(message: str, *, topic: str = "") -> ProtocolError:
    """A Protocol Error (0x82)."""
    return ProtocolError(message, ReasonCode.PROTOCOL_ERROR, topic=topic)
