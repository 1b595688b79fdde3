"""MQTT awareness of the relay: cut the byte stream into packets and say what each packet is.

The relay forwards the bytes it read, packet by packet, unchanged; this module only *looks* at them.
:class:`StreamFramer` cuts the stream at packet boundaries (the fixed header's remaining length).
When a stream cannot be framed (a remaining length longer than 4 bytes, i.e. not MQTT), the framer
switches to pass-through and hands back the raw bytes, so the relay never corrupts or withholds data:
the broker, not the emulator, decides what is a protocol error.

:class:`PacketInspector` (one per connection, both directions) learns the protocol level and client
id from CONNECT (decoded with the embedded broker's codec), reads each PUBLISH's topic, QoS and v5
Topic Alias (aliases are per direction, so an aliased PUBLISH with an empty topic is classified by
the topic the alias stands for), and classifies it with :func:`openfeeder.iot.topics.parse_topic`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from openfeeder.errors import MessagingError
from openfeeder.iot.broker.codec import Connect, decode
from openfeeder.iot.broker.codes import MQTT_5, PacketType
from openfeeder.iot.broker.properties import PropertyId, decode_properties, read_u16
from openfeeder.iot.topics import BrokerContext, MessageClass, parse_topic
from openfeeder.sim.netem.config import CONTROL_CLASS, OTHER_CLASS, Direction

__all__ = ["PacketInfo", "PacketInspector", "StreamFramer", "device_of_client"]

_LOG = logging.getLogger(__name__)

_CONTEXT_SUFFIXES: Final = tuple(f".{context.value}" for context in BrokerContext)

_SENT_BY_DEVICE: Final = frozenset(
    {
        MessageClass.MEASUREMENT,
        MessageClass.ALGORITHM,
        MessageClass.EVENT,
        MessageClass.COMMAND_ACK,
        MessageClass.STATUS,
    }
)
"""Classes whose topic names the device that sends them (on an uplink, the far end of the link)."""
_SENT_TO_DEVICE: Final = frozenset(
    {MessageClass.COMMAND, MessageClass.CONFIG, MessageClass.COMMITTED}
)
"""Classes whose topic names the device that receives them (on a downlink, the far end)."""

_TOPIC_CACHE_SIZE: Final = 4096


def device_of_client(client_id: str) -> str:
    """The device behind an MQTT client id: ``Messenger`` names its two connections
    ``<id>.grid_ops`` and ``<id>.monitoring``; both are the same device's link."""
    for suffix in _CONTEXT_SUFFIXES:
        if client_id.endswith(suffix) and len(client_id) > len(suffix):
            return client_id[: -len(suffix)]
    return client_id


class StreamFramer:
    """Cuts one direction of a TCP stream into whole MQTT packets (bytes, fixed header included)."""

    __slots__ = ("_buf", "passthrough")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.passthrough = False
        """True once the stream could not be framed: :meth:`feed` returns raw chunks from then on."""

    def feed(self, data: bytes) -> list[bytes]:
        """The packets completed by ``data`` (or, in pass-through, ``data`` itself)."""
        if self.passthrough:
            return [data] if data else []
        buf = self._buf
        buf += data
        packets: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            length = 0
            shift = 0
            index = pos + 1
            complete = False
            for _ in range(4):
                if index >= n:
                    break
                byte = buf[index]
                index += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    complete = True
                    break
            else:
                # four length bytes, all with the continuation bit: not MQTT
                self.passthrough = True
                rest = bytes(buf[pos:])
                buf.clear()
                packets.append(rest)
                return packets
            if not complete or index + length > n:
                break
            end = index + length
            packets.append(bytes(buf[pos:end]))
            pos = end
        del buf[:pos]
        return packets

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete packet held back."""
        return len(self._buf)


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What one packet is, as far as impairment rules care."""

    message_class: str
    """A :class:`MessageClass` value, ``"other"`` (PUBLISH outside the scheme) or ``"control"``."""
    device_id: str | None
    """The device at the far end of the link for this packet (the key of device rules)."""
    droppable: bool
    """True for a QoS 0 PUBLISH that does not establish a topic alias (drop mode may lose it)."""
    packet_type: int
    topic: str | None = None


class PacketInspector:
    """Classifies the packets of one connection (both directions); owned by the relay's loop."""

    __slots__ = ("_aliases", "_topic_cache", "client_id", "device_id", "peer", "protocol_level")

    def __init__(self, *, peer: str, topic_cache: dict[str, tuple[str, str | None]]) -> None:
        self.peer = peer
        self.client_id: str | None = None
        self.device_id: str | None = None
        self.protocol_level: int | None = None
        self._aliases: dict[Direction, dict[int, str]] = {
            Direction.UPLINK: {},
            Direction.DOWNLINK: {},
        }
        self._topic_cache = topic_cache

    def inspect(self, packet: bytes, direction: Direction) -> PacketInfo:
        """Classify one whole packet (as cut by :class:`StreamFramer`)."""
        first = packet[0]
        kind = first >> 4
        if kind == PacketType.PUBLISH:
            return self._publish(packet, direction)
        if kind == PacketType.CONNECT and direction is Direction.UPLINK:
            self._connect(packet)
        return PacketInfo(CONTROL_CLASS, self.device_id, droppable=False, packet_type=kind)

    def _connect(self, packet: bytes) -> None:
        start = _body_start(packet)
        try:
            connect = decode(packet[0], packet, start, len(packet), version=MQTT_5)
        except MessagingError as err:
            _LOG.warning(
                "netem: undecodable CONNECT from %s: %s",
                self.peer,
                err,
                extra={"peer": self.peer, "event": "bad_connect"},
            )
            return
        if isinstance(connect, Connect):
            self.protocol_level = connect.protocol_level
            self.client_id = connect.client_id
            self.device_id = device_of_client(connect.client_id) or None
            # a new CONNECT on a connection is a protocol error, but aliases never outlive one
            for table in self._aliases.values():
                table.clear()

    def _publish(self, packet: bytes, direction: Direction) -> PacketInfo:
        first = packet[0]
        qos = (first >> 1) & 3
        pos = _body_start(packet)
        end = len(packet)
        topic: str | None = None
        sets_alias = False
        try:
            length = read_u16(packet, pos, end)
            topic = packet[pos + 2 : pos + 2 + length].decode("utf-8")
            pos += 2 + length + (2 if qos else 0)
            if self.protocol_level == MQTT_5 and pos < end and packet[pos] != 0:
                props, _, _ = decode_properties(packet, pos, end, PacketType.PUBLISH)
                alias = props.get(PropertyId.TOPIC_ALIAS)
                if isinstance(alias, int):
                    table = self._aliases[direction]
                    if topic:
                        table[alias] = topic
                        sets_alias = True
                    else:
                        topic = table.get(alias)
        except (MessagingError, UnicodeDecodeError, IndexError):
            topic = topic or None
        message_class, topic_device = self._classify(topic)
        device = self.device_id
        if topic_device is not None and (
            (direction is Direction.UPLINK and message_class in _SENT_BY_DEVICE)
            or (direction is Direction.DOWNLINK and message_class in _SENT_TO_DEVICE)
        ):
            device = topic_device
        return PacketInfo(
            message_class,
            device,
            droppable=qos == 0 and not sets_alias,
            packet_type=PacketType.PUBLISH,
            topic=topic,
        )

    def _classify(self, topic: str | None) -> tuple[str, str | None]:
        if not topic:
            return OTHER_CLASS, None
        cached = self._topic_cache.get(topic)
        if cached is not None:
            return cached
        try:
            parsed = parse_topic(topic)
            result: tuple[str, str | None] = (parsed.message_class.value, parsed.device_id)
        except MessagingError:
            result = (OTHER_CLASS, None)
        if len(self._topic_cache) >= _TOPIC_CACHE_SIZE:
            self._topic_cache.clear()
        self._topic_cache[topic] = result
        return result


def _body_start(packet: bytes) -> int:
    """Index of the first byte after the fixed header (the framer has checked its length)."""
    index = 1
    while packet[index] & 0x80:
        index += 1
    return index + 1
