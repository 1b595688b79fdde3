"""A lean MQTT v5 client for the historian's two broker links: one subscription, QoS 1 publishing.

Why not :class:`~openfeeder.iot.mqtt.MqttLink` (paho): paho spends ~50 us of Python per received
QoS 1 message on this machine (a ``select`` and several ``recv`` calls per packet, a properties
object per message, a socket-pair wake-up and a ``send`` per PUBACK), half a core at 10,000
messages/s before any decoding or storing; and publishing a committed mark for each of thousands
of devices walks paho's whole in-flight table for every PUBACK. This client reads the socket in
large chunks, cuts them into packets with the project's MQTT codec (:mod:`openfeeder.iot.broker.codec`,
the embedded broker's), calls the handler for each PUBLISH and sends the PUBACKs of a chunk in one
write: ~3 us per message. :meth:`LeanLink.publish_many` sends many messages in one write.

What it does: one connection, MQTT 5, ``clean_start`` false with a session expiry (the broker keeps
the subscription and queues while the historian is away), a Receive Maximum (how many unacknowledged
messages the broker may have in flight to us), a Maximum Packet Size (larger messages are not sent to
us; smaller ones above the payload limit still arrive and are rejected as oversize), keep-alive pings,
a last will, TLS (``mqtts://``; with ``tls`` the service's own certificate: mutual TLS),
reconnection with back-off (1 s doubling to 8 s) and re-subscription on every connect.
It subscribes at QoS 1, so the broker never sends it QoS 2. A PUBACK goes out after the handler
returned, so a handler that blocks (the historian's full queue) stops the intake without
acknowledging anything it did not take. Publishing is QoS 1 within the broker's Receive Maximum
(the rest waits in order); publishes not acknowledged when a connection drops are not sent again:
the caller publishes its latest state again from ``on_connect``. A clean :meth:`LeanLink.stop`
sends DISCONNECT with reason 0: no will, the session stays.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from openfeeder.config import BrokerSettings
from openfeeder.errors import MessagingError, OpenFeederError
from openfeeder.iot.broker.codec import (
    Connect,
    Framer,
    Publish,
    Subscribe,
    SubscriptionRequest,
    Will,
    decode,
    decode_publish,
    encode,
)
from openfeeder.iot.broker.codes import PacketType
from openfeeder.iot.broker.packets import Connack, Disconnect, PubAck, Suback
from openfeeder.iot.broker.properties import PropertyId
from openfeeder.iot.mqtt import MessageHandler
from openfeeder.iot.topics import Topic, TopicFilter

__all__ = ["LeanLink", "OutgoingMessage", "PublishAck"]

_LOG = logging.getLogger("openfeeder.services.historian")

READ_CHUNK_BYTES: Final = 256 * 1024
RECEIVE_BUFFER_BYTES: Final = 16 * 1024 * 1024
"""Requested socket receive buffer (the kernel caps it at ``net.core.rmem_max``)."""
DEFAULT_MAX_PACKET_BYTES: Final = 1024 * 1024
PUBLISH_CHUNK: Final = 500
"""At most this many messages per write; the rest follow as acknowledgements come back."""
_POLL_S: Final = 0.5
_WRITE_TIMEOUT_S: Final = 10.0
_PUBLISH: Final = PacketType.PUBLISH
_PUBACK_HEADER: Final = bytes((PacketType.PUBACK << 4, 2))
_PINGREQ: Final = bytes((PacketType.PINGREQ << 4, 0))

OutgoingMessage = tuple[Topic | str, bytes, bool]
"""Topic, payload and retain flag of a QoS 1 message to publish."""


def _open_socket(host: str, port: int, *, timeout_s: float) -> socket.socket:
    """A TCP connection with a large receive buffer (set before connecting, so that the window
    scales): while the reader is busy the broker can keep writing to us instead of queueing, and
    Mosquitto's queue for one client is small (1000 messages by default)."""
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.settimeout(timeout_s)
            sock.connect(address)
        except OSError as err:
            sock.close()
            error = err
            continue
        return sock
    raise error or OSError(f"cannot resolve {host}")


class _ConnectionLostError(Exception):
    """The connection must be dropped and made again (logged, not raised to callers)."""


class PublishAck:
    """Completion of QoS 1 publishing: :meth:`wait` for the broker's PUBACK."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done = threading.Event()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def set(self) -> None:
        self._done.set()


class LeanLink:
    """One broker connection with one subscription, read on its own thread."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        topic_filter: TopicFilter,
        handler: MessageHandler,
        session_expiry_s: int,
        receive_maximum: int = 65535,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
        will: tuple[Topic, bytes] | None = None,
        on_connect: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: the context of an ``mqtts://`` broker (platform CA, the service's certificate:
        :meth:`openfeeder.security.tls.TlsFiles.client_context`); None: the system's CAs with the
        broker settings' ``ca_file``."""
        self._settings = settings
        self._tls = tls
        self.client_id = client_id
        self._filter = topic_filter
        self._handler = handler
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._max_packet_bytes = max_packet_bytes
        self._will = will
        self._on_connect = on_connect
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # guards the socket's writes and the publishing state
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)
        self._next_id = 1
        self._unacked: dict[int, PublishAck | None] = {}
        self._waiting: collections.deque[tuple[OutgoingMessage, PublishAck | None]] = (
            collections.deque()
        )
        self._send_quota = 65535  # the broker's Receive Maximum, from its CONNACK
        self._last_sent = 0.0
        self.connects = 0
        self.disconnects = 0
        self.handler_errors = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Connected and subscribed."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Disconnect cleanly (no will; the broker keeps the session) and end the thread."""
        self._stopping.set()
        with contextlib.suppress(OSError, _ConnectionLostError):  # gone: the session stays
            self._write(encode(Disconnect()))
        self._thread.join(timeout_s)

    # -- publishing (any thread) -------------------------------------------------------------

    def publish(self, topic: Topic | str, payload: bytes, *, retain: bool = False) -> PublishAck:
        """Publish one message at QoS 1; ``MessagingError`` when not connected."""
        return self.publish_many([(topic, payload, retain)])

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> PublishAck:
        """Publish at QoS 1 in order, in as few writes as the broker's window allows.

        The returned ack completes when the last message is acknowledged.
        """
        ack = PublishAck()
        if not messages:
            ack.set()
            return ack
        with self._lock:
            if self._sock is None:
                raise MessagingError(
                    f"not connected to {self._settings.url}",
                    topic=str(messages[-1][0]),
                    reason="publish_failed",
                )
            last = len(messages) - 1
            for index, message in enumerate(messages):
                self._waiting.append((message, ack if index == last else None))
            try:
                self._send_waiting_locked()
            except (OSError, _ConnectionLostError) as err:  # the reader thread reconnects
                raise MessagingError(
                    f"publishing to {self._settings.url} failed: {err}",
                    topic=str(messages[-1][0]),
                    reason="publish_failed",
                ) from err
        return ack

    def _send_waiting_locked(self) -> None:
        chunks: list[bytes] = []
        while (
            self._waiting and len(self._unacked) < self._send_quota and len(chunks) < PUBLISH_CHUNK
        ):
            (topic, payload, retain), ack = self._waiting.popleft()
            packet_id = self._new_id_locked()
            self._unacked[packet_id] = ack
            chunks.append(
                encode(Publish(str(topic), payload, qos=1, retain=retain, packet_id=packet_id))
            )
        if chunks:
            self._write_locked(b"".join(chunks))

    def _new_id_locked(self) -> int:
        packet_id = self._next_id
        while packet_id in self._unacked:
            packet_id = packet_id % 65535 + 1
        self._next_id = packet_id % 65535 + 1
        return packet_id

    # -- the connection thread ---------------------------------------------------------------

    def _run(self) -> None:
        delay_s = 1.0
        while not self._stopping.is_set():
            try:
                self._connect()
                self._serve()
                delay_s = 1.0
            except (OSError, _ConnectionLostError, OpenFeederError) as err:
                if not self._stopping.is_set():
                    _LOG.warning(
                        "mqtt connection lost url=%s client_id=%s: %s",
                        self._settings.url,
                        self.client_id,
                        err,
                        extra={"url": self._settings.url, "client_id": self.client_id},
                    )
            except Exception:  # a bug here must not end the link for good: log, reconnect
                _LOG.exception("mqtt link failed url=%s", self._settings.url)
            finally:
                self._close()
            if self._stopping.wait(delay_s):
                break
            delay_s = min(8.0, delay_s * 2)

    def _connect(self) -> None:
        settings = self._settings
        sock = _open_socket(settings.host, settings.port, timeout_s=settings.connect_timeout_s)
        if settings.tls:
            context = self._tls or ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None
            )
            try:
                sock = context.wrap_socket(sock, server_hostname=settings.host)
            except (ssl.SSLError, OSError):
                sock.close()
                raise
        will = None
        if self._will is not None:
            topic, payload = self._will
            will = Will(str(topic), payload, qos=1, retain=True)
        password = settings.password()
        with self._lock:
            self._sock = sock
            self._write_locked(
                encode(
                    Connect(
                        client_id=self.client_id,
                        clean_start=False,
                        keepalive_s=settings.keepalive_s,
                        will=will,
                        username=settings.username,
                        password=None if password is None else password.encode("utf-8"),
                        properties={
                            PropertyId.SESSION_EXPIRY_INTERVAL: self._session_expiry_s,
                            PropertyId.RECEIVE_MAXIMUM: self._receive_maximum,
                            PropertyId.MAXIMUM_PACKET_SIZE: self._max_packet_bytes,
                        },
                    )
                )
            )

    def _serve(self) -> None:
        sock = self._sock
        if sock is None:
            raise _ConnectionLostError("no socket")
        sock.settimeout(_WRITE_TIMEOUT_S)  # reads wait in select() below
        pending = sock.pending if isinstance(sock, ssl.SSLSocket) else None
        framer = Framer(self._max_packet_bytes + 8)
        keepalive_s = self._settings.keepalive_s
        last_received = time.monotonic()
        handler = self._handler
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - last_received > 1.5 * keepalive_s:
                raise _ConnectionLostError(
                    f"nothing from the broker for {now - last_received:.0f} s"
                )
            if now - self._last_sent >= keepalive_s / 2:
                self._write(_PINGREQ)
            if not (pending and pending()):  # TLS may hold decrypted bytes select() cannot see
                readable, _, _ = select.select([sock], [], [], _POLL_S)
                if not readable:
                    continue
            data = sock.recv(READ_CHUNK_BYTES)
            if not data:
                raise _ConnectionLostError("closed by the broker")
            last_received = time.monotonic()
            frames, error = framer.feed(data)
            acks: list[bytes] = []
            for first, buf, start, end in frames:
                if first >> 4 != _PUBLISH:
                    self._control(first, buf, start, end)
                    continue
                message = decode_publish(first, buf, start, end, True)
                try:
                    handler(message.topic, message.payload)
                except Exception:  # a handler's bug must not take the connection down
                    self.handler_errors += 1
                    _LOG.exception("mqtt message handler failed topic=%s", message.topic)
                if message.qos:
                    acks.append(_PUBACK_HEADER + message.packet_id.to_bytes(2, "big"))
            if acks:
                self._write(b"".join(acks))
            if error is not None:
                raise error

    def _control(self, first: int, buf: bytes, start: int, end: int) -> None:
        packet = decode(first, buf, start, end, version=5)
        if isinstance(packet, PubAck):
            if packet.packet_type == PacketType.PUBACK:
                with self._lock:
                    ack = self._unacked.pop(packet.packet_id, None)
                    self._send_waiting_locked()
                if ack is not None:
                    ack.set()
        elif isinstance(packet, Connack):
            if packet.reason_code >= 0x80:
                raise _ConnectionLostError(
                    f"connection refused, reason code 0x{packet.reason_code:02x}"
                )
            quota = packet.properties.get(PropertyId.RECEIVE_MAXIMUM, 65535)
            self.connects += 1
            request = SubscriptionRequest(str(self._filter), qos=1)
            with self._lock:
                self._send_quota = quota if isinstance(quota, int) else 65535
                subscribe = Subscribe(packet_id=self._new_id_locked(), requests=[request])
                self._write_locked(encode(subscribe))
        elif isinstance(packet, Suback):
            if any(code >= 0x80 for code in packet.reason_codes):
                raise _ConnectionLostError(
                    f"subscription {self._filter} refused: reason codes {packet.reason_codes}"
                )
            self._subscribed.set()
            _LOG.info(
                "mqtt connected url=%s client_id=%s",
                self._settings.url,
                self.client_id,
                extra={"url": self._settings.url, "client_id": self.client_id},
            )
            if self._on_connect is not None:
                self._on_connect()
        elif isinstance(packet, Disconnect):
            raise _ConnectionLostError(
                f"disconnected by the broker, reason code 0x{packet.reason_code:02x}"
            )
        # PINGRESP and anything else: nothing to do

    def _write(self, data: bytes) -> None:
        with self._lock:
            self._write_locked(data)

    def _write_locked(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise _ConnectionLostError("not connected")
        sock.sendall(data)
        self._last_sent = time.monotonic()

    def _close(self) -> None:
        was_connected = self._subscribed.is_set()
        self._subscribed.clear()
        with self._lock:
            sock, self._sock = self._sock, None
            self._unacked.clear()  # never acknowledged: the caller publishes again on connect
            self._waiting.clear()
        if sock is not None:
            sock.close()
        if was_connected:
            self.disconnects += 1
