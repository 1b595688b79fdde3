"""One client connection: an asyncio protocol that frames, decodes and answers MQTT packets.

Writes are batched: packets are appended to a list and written with one ``transport.write`` at the
end of the event-loop iteration (or as soon as 64 KiB are pending), so a burst of deliveries costs
one system call. While the transport's write buffer is above
:attr:`~openfeeder.iot.broker.session.BrokerLimits.write_buffer_bytes` the connection is
``paused`` and deliveries wait in the session queue until ``resume_writing``.

Any protocol violation closes this connection only: it is counted, logged once as a structured
warning (``extra={"event": "mqtt_protocol_error", ...}``), told to an MQTT v5 client with a
DISCONNECT (or CONNACK) reason code, and the will is published.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from openfeeder.errors import SecurityError
from openfeeder.iot.broker.codec import (
    Connack,
    Connect,
    Disconnect,
    Framer,
    PubAck,
    Subscribe,
    Unsubscribe,
    decode,
    decode_publish,
    encode,
)
from openfeeder.iot.broker.codes import (
    MQTT_5,
    MQTT_311,
    PacketType,
    ProtocolError,
    ReasonCode,
    connack_v311_code,
    protocol_error,
)
from openfeeder.iot.broker.properties import (
    PropertyId,
    encode_property_body,
    encode_varint,
    read_str,
)
from openfeeder.iot.broker.session import Message, Session
from openfeeder.security.acl import ClientGrants, client_id_allowed
from openfeeder.security.tls import peer_identity

if TYPE_CHECKING:
    from openfeeder.iot.broker.server import Broker

__all__ = ["Connection"]

logger = logging.getLogger("openfeeder.iot.broker")

_FLUSH_BYTES: Final = 64 * 1024
_PINGRESP: Final = bytes((PacketType.PINGRESP << 4, 0))
_V311_BAD_VERSION: Final = bytes((PacketType.CONNACK << 4, 2, 0, 1))
P = PropertyId


def _ack(kind: int, packet_id: int) -> bytes:
    return bytes((kind, 2, packet_id >> 8, packet_id & 0xFF))


class Connection(asyncio.Protocol):
    """The broker side of one TCP connection (also the session's :class:`Outlet`)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.limits = broker.limits
        self.counters = broker.counters
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.framer = Framer(self.limits.max_packet_bytes)
        self.peer = ""
        self.client_id = ""
        self.version = 0
        self.v5 = False
        self.connected = False
        self.session: Session | None = None
        self.grants: ClientGrants | None = None
        """The identity's grants when the broker checks access (None: everything allowed)."""
        self.will: Message | None = None
        self.will_delay_s = 0
        self.will_expiry_s: int | None = None
        self.session_expiry_at_connect = 0
        self.keepalive_s = 0
        self.last_rx = 0.0
        self.max_out_packet = 0
        self._quota = self.limits.inflight_v311
        self._paused = False
        self._closing = False
        self._bytes_seen = False
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.lost = asyncio.Event()

    # --- Outlet -------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def send_quota(self) -> int:
        return self._quota

    def send_publish(
        self, message: Message, qos: int, retain: bool, dup: bool, packet_id: int
    ) -> bool:
        payload = message.payload
        topic_field = message.topic_field
        length = len(topic_field) + len(payload)
        if qos:
            length += 2
        props = b""
        if self.v5:
            props = message.properties
            if message.expires_at is not None:
                left_s = int(message.expires_at - self.loop.time() + 0.999)
                if left_s <= 0:
                    self.counters.dropped_expired += 1
                    return False
                props = b"\x02" + left_s.to_bytes(4, "big") + props
            props = encode_varint(len(props)) + props if props else b"\x00"
            length += len(props)
        first = 0x30 | (dup << 3) | (qos << 1) | retain
        if length < 0x80:
            head = bytes((first, length))
        elif length < 0x4000:
            head = bytes((first, (length & 0x7F) | 0x80, length >> 7))
        else:
            head = bytes((first,)) + encode_varint(length)
        size = len(head) + length
        if self.max_out_packet and size > self.max_out_packet:
            self.counters.dropped_too_large += 1
            return False
        if self._closing:
            return True
        out = self._out
        out.append(head + topic_field)
        if qos:
            out.append(packet_id.to_bytes(2, "big"))
        if props:
            out.append(props)
        out.append(payload)
        self.counters.messages_sent += 1
        self._out_bytes += size
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)
        elif self._out_bytes >= _FLUSH_BYTES:
            self._flush()
        return True

    def send_pubrel(self, packet_id: int) -> None:
        self.write(_ack(0x62, packet_id))

    # --- writing ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out or self.transport is None:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        self.counters.bytes_sent += len(data)
        self.transport.write(data)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            transport.close()
            return
        self.transport = transport
        limit = self.limits.write_buffer_bytes
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.counters.connections_total += 1
        self.broker.connections.add(self)
        self.last_rx = self.loop.time()
        self._timer = self.loop.call_later(self.limits.connect_timeout_s, self._connect_timeout)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        if self._closing:
            return
        self._paused = False
        if self.session is not None:
            self.session.pump()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.counters.bytes_received += len(data)
        self.last_rx = self.loop.time()
        if not self._bytes_seen:
            self._bytes_seen = True
            if data[:1] != b"\x10":  # not CONNECT: no need to wait for the rest of it
                self.fail(protocol_error("the first packet must be CONNECT"))
                return
        frames, error = self.framer.feed(data)
        try:
            for first, buf, start, end in frames:
                # the hot paths: PUBLISH, and a PUBACK without reason code
                if first >> 4 == 3 and self.connected:
                    self._on_publish(first, buf, start, end)
                elif first == 0x40 and end - start == 2 and self.session is not None:
                    self.session.acknowledge((buf[start] << 8) | buf[start + 1], 1)
                else:
                    self._on_packet(first, buf, start, end)
                if self._closing:
                    return
            if error is not None:
                raise error
        except ProtocolError as err:
            self.fail(err)
        except Exception:
            logger.exception(
                "internal error while handling a packet; closing the connection",
                extra={
                    "event": "mqtt_internal_error",
                    "client_id": self.client_id,
                    "peer": self.peer,
                },
            )
            self.fail(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._closing:
            logger.debug(
                "connection lost: %s",
                exc,
                extra={
                    "event": "mqtt_connection_lost",
                    "client_id": self.client_id,
                    "peer": self.peer,
                },
            )
        self._closing = True
        self._paused = True
        self._out.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.broker.connections.discard(self)
        self.broker.connection_closed(self)
        self.transport = None
        self.lost.set()

    # --- closing ------------------------------------------------------------------------------

    def close(self, reason: ReasonCode | None = None, *, abort: bool = False) -> None:
        """Close the connection, after a DISCONNECT with ``reason`` to an MQTT v5 client."""
        if self._closing or self.transport is None:
            return
        if reason is not None and self.v5 and self.connected:
            self._out.append(encode(Disconnect(reason)))
        self._flush()
        self._closing = True
        self._paused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if abort:
            self.transport.abort()
            return
        self.transport.close()
        self._timer = self.loop.call_later(self.limits.close_timeout_s, self.abort)

    def abort(self) -> None:
        """Drop the connection at once; nothing more is sent."""
        self._closing = True
        self._paused = True
        self._out.clear()
        if self.transport is not None:
            self.transport.abort()

    def fail(self, err: ProtocolError | None) -> None:
        """Close after a protocol violation (``None``: an internal error), logging it once."""
        if self._closing:
            return
        self.counters.protocol_errors += 1
        reason = ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR if err is None else err.reason_code
        if err is not None:
            logger.warning(
                "closing connection after a protocol error: %s",
                err,
                extra={
                    "event": "mqtt_protocol_error",
                    "client_id": self.client_id,
                    "peer": self.peer,
                    "reason_code": int(reason),
                    "reason": reason.name.lower(),
                    "topic": err.topic,
                },
            )
        self.close(reason)

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self.connected:
            self.close(abort=True)

    def _check_keepalive(self) -> None:
        self._timer = None
        if self._closing:
            return
        limit_s = 1.5 * self.keepalive_s
        idle_s = self.loop.time() - self.last_rx
        if idle_s >= limit_s:
            self.close(ReasonCode.KEEP_ALIVE_TIMEOUT)
            return
        self._timer = self.loop.call_later(limit_s - idle_s, self._check_keepalive)

    # --- packets ------------------------------------------------------------------------------

    def _on_publish(self, first: int, buf: bytes, start: int, end: int) -> None:
        packet = decode_publish(first, buf, start, end, self.v5)
        session = self.session
        if session is None:
            return
        self.counters.messages_received += 1
        qos = packet.qos
        grants = self.grants
        if grants is not None and not grants.may_publish(packet.topic):
            self._deny_publish(grants, packet.topic, qos, packet.packet_id)
            return
        if qos == 2:
            packet_id = packet.packet_id
            if packet_id in session.incoming_qos2:
                self.write(_ack(0x50, packet_id))
                return
            if len(session.incoming_qos2) >= self.limits.receive_maximum:
                raise ProtocolError(
                    "more unreleased QoS 2 messages than Receive Maximum",
                    ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                )
            session.incoming_qos2.add(packet_id)
        expiry = packet.message_expiry_s
        message = Message(
            packet.topic,
            packet.payload,
            qos,
            packet.retain,
            properties=packet.properties,
            expires_at=None if expiry is None else self.loop.time() + expiry,
            origin=session,
        )
        self.broker.route(message)
        if qos == 1:
            self.write(_ack(0x40, packet.packet_id))
        elif qos == 2:
            self.write(_ack(0x50, packet.packet_id))

    def _deny_publish(self, grants: ClientGrants, topic: str, qos: int, packet_id: int) -> None:
        """Drop a PUBLISH the identity may not make: MQTT v5 is told (0x87 in PUBACK/PUBREC),
        3.1.1 has no way to say it and gets the usual acknowledgement (as from Mosquitto)."""
        counters = self.counters
        counters.denied_publishes += 1
        if counters.denied_publishes & (counters.denied_publishes - 1) == 0:  # 1, 2, 4, 8, ...
            logger.warning(
                "publish refused",
                extra={
                    "event": "mqtt_publish_denied",
                    "client_id": self.client_id,
                    "identity": grants.identity,
                    "topic": topic,
                    "denied_publishes": counters.denied_publishes,
                },
            )
        if qos == 0:
            return
        kind = PacketType.PUBACK if qos == 1 else PacketType.PUBREC
        if self.v5:
            self.write(encode(PubAck(kind, packet_id, ReasonCode.NOT_AUTHORIZED)))
        elif qos == 1:
            self.write(_ack(0x40, packet_id))
        else:
            session = self.session
            if session is not None:
                session.incoming_qos2.add(packet_id)  # the PUBREL that follows gets its PUBCOMP
            self.write(_ack(0x50, packet_id))

    def _identity(self, username: str | None) -> str | None:
        """The certificate CN over TLS; else the user name, if a password check vouched for it."""
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:
            peer = peer_identity(ssl_object.getpeercert())
            return None if peer is None else peer.name
        if self.broker.password_check is not None:
            return username
        return None

    def certificate_serial(self) -> int | None:
        """The serial of the client's certificate (None without TLS or a certificate)."""
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        peercert = ssl_object.getpeercert() if ssl_object is not None else None
        serial = peercert.get("serialNumber") if peercert else None
        return int(serial, 16) if isinstance(serial, str) else None

    def _revoked(self, client_id: str) -> bool:
        """Whether the client's certificate is revoked, or the CRL cannot say (then refused
        too: a CRL that cannot be read must not let a revoked certificate in)."""
        revocations = self.broker.revocations
        if revocations is None:
            return False
        serial = self.certificate_serial()
        if serial is None:
            return False
        try:
            revoked = revocations.is_revoked(serial)
        except SecurityError as err:
            reason = f"CRL unusable: {err}"
        else:
            if not revoked:
                return False
            reason = "certificate revoked"
        self._denied(client_id, reason, serial=format(serial, "x"))
        return True

    def _denied(self, client_id: str, reason: str, **details: object) -> None:
        """Count and log a refused CONNECT (``details``: the identity or the serial)."""
        self.counters.denied_connects += 1
        logger.warning(
            "connect refused: %s",
            reason,
            extra={
                "event": "mqtt_connect_denied",
                "client_id": client_id,
                "peer": self.peer,
                **details,
            },
        )

    def _authorize(self, client_id: str, assigned: bool, username: str | None) -> bool:
        """Look up the connecting identity's grants; False (and counted) when it is refused."""
        access = self.broker.access
        if access is None:
            return True
        identity = self._identity(username)
        grants = access.client(identity) if identity is not None else None
        reason = ""
        if grants is None:
            reason = "unknown identity" if identity is not None else "no identity"
        elif not assigned and not client_id_allowed(grants.identity, client_id):
            reason = "client id is not the identity's"
        if reason:
            self._denied(client_id, reason, identity=identity)
            return False
        self.grants = grants
        return True

    def _on_packet(self, first: int, buf: bytes, start: int, end: int) -> None:
        kind = first >> 4
        if not self.connected:
            if kind != PacketType.CONNECT:
                raise protocol_error("the first packet must be CONNECT")
            self._on_connect(first, buf, start, end)
            return
        packet = decode(first, buf, start, end, version=self.version)
        session = self.session
        if session is None:
            return
        if isinstance(packet, PubAck):
            self._on_ack(session, packet)
        elif kind == PacketType.PINGREQ:
            self.write(_PINGRESP)
        elif isinstance(packet, Subscribe):
            self.broker.subscribe(self, session, packet)
        elif isinstance(packet, Unsubscribe):
            self.broker.unsubscribe(self, session, packet)
        elif isinstance(packet, Disconnect):
            self._on_disconnect(session, packet)
        elif kind == PacketType.CONNECT:
            raise protocol_error("second CONNECT on one connection")
        else:
            raise protocol_error(f"a client must not send packet type {kind}")

    def _on_ack(self, session: Session, packet: PubAck) -> None:
        kind = packet.packet_type
        packet_id = packet.packet_id
        if kind == PacketType.PUBACK:
            session.acknowledge(packet_id, 1)
        elif kind == PacketType.PUBCOMP:
            session.acknowledge(packet_id, 2)
        elif kind == PacketType.PUBREC:
            failed = self.v5 and packet.reason_code >= 0x80
            if session.received(packet_id, failed):
                if not failed:
                    self.write(_ack(0x62, packet_id))
            elif self.v5:
                self.write(
                    encode(
                        PubAck(PacketType.PUBREL, packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)
                    )
                )
            else:
                self.write(_ack(0x62, packet_id))
        elif packet_id in session.incoming_qos2:
            session.incoming_qos2.discard(packet_id)
            self.write(_ack(0x70, packet_id))
        elif self.v5:
            self.write(
                encode(
                    PubAck(PacketType.PUBCOMP, packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)
                )
            )
        else:
            self.write(_ack(0x70, packet_id))

    def _on_disconnect(self, session: Session, packet: Disconnect) -> None:
        expiry = packet.properties.get(P.SESSION_EXPIRY_INTERVAL)
        if isinstance(expiry, int):
            if self.session_expiry_at_connect == 0 and expiry != 0:
                raise protocol_error("session expiry set at DISCONNECT after 0 at CONNECT")
            session.expiry_s = expiry
        if packet.reason_code == ReasonCode.SUCCESS:
            self.will = None  # any other reason (0x04 "with will message", errors) keeps it
        self.close()

    def _on_connect(self, first: int, buf: bytes, start: int, end: int) -> None:
        try:
            packet = decode(first, buf, start, end, version=MQTT_5)
        except ProtocolError as err:
            if err.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
                self.write(_V311_BAD_VERSION)
            elif _peek_level(buf, start, end) == MQTT_5:
                self.write(encode(Connack(False, err.reason_code)))
            raise
        if not isinstance(packet, Connect):
            raise protocol_error("the first packet must be CONNECT")
        self.version = packet.protocol_level
        self.v5 = self.version == MQTT_5
        props = packet.properties
        client_id = packet.client_id
        assigned = False
        if not client_id:
            if not self.v5 and not packet.clean_start:
                self._refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
                return
            client_id = self.broker.assign_client_id()
            assigned = True
        self.client_id = client_id
        if P.AUTHENTICATION_METHOD in props:
            self._refuse(ReasonCode.BAD_AUTHENTICATION_METHOD)
            return
        check = self.broker.password_check
        if check is not None and not check(client_id, packet.username, packet.password):
            self._refuse(ReasonCode.BAD_USER_NAME_OR_PASSWORD)
            return
        if self._revoked(client_id) or not self._authorize(client_id, assigned, packet.username):
            self._refuse(ReasonCode.NOT_AUTHORIZED)
            return
        grants = self.grants
        will_topic = packet.will.topic if packet.will is not None else None
        if grants is not None and will_topic is not None and not grants.may_publish(will_topic):
            self.counters.denied_connects += 1
            self._refuse(ReasonCode.NOT_AUTHORIZED)
            return
        if self.v5:
            expiry = props.get(P.SESSION_EXPIRY_INTERVAL, 0)
            quota = props.get(P.RECEIVE_MAXIMUM, 0xFFFF)
            max_packet = props.get(P.MAXIMUM_PACKET_SIZE, 0)
            self._quota = quota if isinstance(quota, int) else 0xFFFF
            self.max_out_packet = max_packet if isinstance(max_packet, int) else 0
        else:
            expiry = 0 if packet.clean_start else 0xFFFFFFFF
        expiry_s = expiry if isinstance(expiry, int) else 0
        self.session_expiry_at_connect = expiry_s
        if packet.will is not None:
            will = packet.will
            will_props = dict(will.properties)
            delay = will_props.pop(P.WILL_DELAY_INTERVAL, 0)
            self.will_delay_s = delay if isinstance(delay, int) else 0
            will_expiry = will_props.pop(P.MESSAGE_EXPIRY_INTERVAL, None)
            self.will = Message(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                properties=encode_property_body(will_props) if will_props else b"",
            )
            self.will_expiry_s = will_expiry if isinstance(will_expiry, int) else None
        self.connected = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.keepalive_s = packet.keepalive_s
        if self.keepalive_s:
            self._timer = self.loop.call_later(1.5 * self.keepalive_s, self._check_keepalive)
        session, present = self.broker.attach(self, client_id, packet.clean_start, expiry_s)
        self.session = session
        connack_props = self.broker.connack_properties() if self.v5 else {}
        if assigned and self.v5:
            connack_props[P.ASSIGNED_CLIENT_IDENTIFIER] = client_id
        self.write(encode(Connack(present, 0, connack_props), version=self.version))
        logger.debug(
            "client connected",
            extra={
                "event": "mqtt_connect",
                "client_id": client_id,
                "peer": self.peer,
                "protocol_level": self.version,
                "session_present": present,
                "clean_start": packet.clean_start,
            },
        )
        session.resume()

    def _refuse(self, reason: ReasonCode) -> None:
        code = int(reason) if self.v5 else connack_v311_code(reason)
        self.write(encode(Connack(False, code), version=self.version or MQTT_311))
        logger.info(
            "connection refused",
            extra={
                "event": "mqtt_connect_refused",
                "client_id": self.client_id,
                "peer": self.peer,
                "reason": reason.name.lower(),
            },
        )
        self.close()


def _peek_level(buf: bytes, start: int, end: int) -> int:
    """The protocol level of a CONNECT that failed to decode (0 if unreadable)."""
    try:
        _, pos = read_str(buf, start, end)
    except ProtocolError:
        return 0
    return buf[pos] if pos < end else 0
