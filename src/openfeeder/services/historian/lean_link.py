"""A lean MQTT v5 subscriber for the historian's measurement intake (one shared subscription).

Why not :class:`~openfeeder.iot.mqtt.MqttLink` (paho) here: paho spends ~50 us of Python per
received QoS 1 message on this machine (one ``select`` and several ``recv`` calls per packet, a
properties object per message, a socket-pair wake-up and a ``send`` per PUBACK), which alone is half
a core at 10,000 messages/s, before any decoding or storing. This link reads the socket in large
chunks, cuts them into packets with the project's MQTT codec (:mod:`openfeeder.iot.broker.codec`,
the embedded broker's), calls the handler for each PUBLISH and sends the PUBACKs of one chunk in
one write: ~3 us per message. Everything else (grid_ops: events, committed marks) stays on paho.

What it does: one connection, MQTT 5, ``clean_start`` false with a session expiry (the broker keeps
the subscription and queues while the historian is away), a Receive Maximum (how many unacknowledged
messages the broker may have in flight to us), a Maximum Packet Size (larger messages are not sent
to us; smaller ones above the payload limit still arrive and are rejected as oversize), keep-alive
pings, a last will, reconnection with back-off (1 s doubling to 8 s) and re-subscription, QoS 1
publishing (the historian's status) and a clean DISCONNECT (reason 0: the will is not sent, the
session stays). It subscribes at QoS 1, so the broker never sends QoS 2 to it. A PUBACK goes out
after the handler returned, so a handler that blocks (the historian's full queue) stops the intake
without acknowledging anything it did not take.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
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

__all__ = ["BulkSubscriber", "PublishAck"]

_LOG = logging.getLogger("openfeeder.services.historian")

READ_CHUNK_BYTES: Final = 256 * 1024
DEFAULT_MAX_PACKET_BYTES: Final = 1024 * 1024
_POLL_S: Final = 0.5
_PUBLISH: Final = PacketType.PUBLISH
_PUBACK_HEADER: Final = bytes((PacketType.PUBACK << 4, 2))


class _ConnectionLostError(Exception):
    """The connection must be dropped and made again (logged, not raised to callers)."""


class PublishAck:
    """Completion of one QoS 1 publish: :meth:`wait` for the broker's PUBACK."""

    def __init__(self) -> None:
        self._done = threading.Event()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def set(self) -> None:
        self._done.set()


class BulkSubscriber:
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
    ) -> None:
        self._settings = settings
        self.client_id = client_id
        self._filter = topic_filter
        self._handler = handler
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._max_packet_bytes = max_packet_bytes
        self._will = will
        self._on_connect = on_connect
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)
        self._next_id = 1
        self._acks: dict[int, PublishAck] = {}
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
        if self._sock is not None:
            with contextlib.suppress(OSError, _ConnectionLostError):  # gone: the session stays
                self._send(encode(Disconnect()))
        self._thread.join(timeout_s)

    # -- publishing (any thread) -------------------------------------------------------------

    def publish(self, topic: Topic, payload: bytes, *, retain: bool = False) -> PublishAck:
        """Publish at QoS 1 now; ``MessagingError`` when not connected."""
        ack = PublishAck()
        with self._send_lock:
            packet_id = self._next_id
            self._next_id = packet_id % 65535 + 1
            self._acks[packet_id] = ack
        data = encode(Publish(str(topic), payload, qos=1, retain=retain, packet_id=packet_id))
        try:
            self._send(data)
        except (OSError, _ConnectionLostError) as err:
            raise MessagingError(
                f"{topic}: not connected to {self._settings.url}",
                topic=str(topic),
                reason="publish_failed",
            ) from err
        return ack

    # -- the connection thread ---------------------------------------------------------------

    def _run(self) -> None:
        delay_s = 1.0
        while not self._stopping.is_set():
            try:
                self._connect()
                delay_s = 1.0
                self._serve()
            except (OSError, _ConnectionLostError, OpenFeederError) as err:
                if not self._stopping.is_set():
                    _LOG.warning(
                        "mqtt connection lost url=%s client_id=%s: %s",
                        self._settings.url,
                        self.client_id,
                        err,
                        extra={"url": self._settings.url, "client_id": self.client_id},
                    )
            except Exception:  # a bug here must not end the intake for good: log, reconnect
                _LOG.exception("mqtt connection failed url=%s", self._settings.url)
            finally:
                self._close()
            if self._stopping.wait(delay_s):
                break
            delay_s = min(8.0, delay_s * 2)

    def _connect(self) -> None:
        settings = self._settings
        sock = socket.create_connection(
            (settings.host, settings.port), timeout=settings.connect_timeout_s
        )
        if settings.tls:
            context = ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None
            )
            sock = context.wrap_socket(sock, server_hostname=settings.host)
        self._sock = sock
        will = None
        if self._will is not None:
            topic, payload = self._will
            will = Will(str(topic), payload, qos=1, retain=True)
        password = settings.password()
        self._send(
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
        sock.settimeout(_POLL_S)
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
                self._send(bytes((PacketType.PINGREQ << 4, 0)))
            try:
                data = sock.recv(READ_CHUNK_BYTES)
            except TimeoutError:
                continue
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
                self._send(b"".join(acks))
            if error is not None:
                raise error

    def _control(self, first: int, buf: bytes, start: int, end: int) -> None:
        packet = decode(first, buf, start, end, version=5)
        if isinstance(packet, Connack):
            if packet.reason_code >= 0x80:
                raise _ConnectionLostError(
                    f"connection refused, reason code 0x{packet.reason_code:02x}"
                )
            self.connects += 1
            self._send(
                encode(
                    Subscribe(
                        packet_id=self._take_id(),
                        requests=[SubscriptionRequest(str(self._filter), qos=1)],
                    )
                )
            )
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
        elif isinstance(packet, PubAck) and packet.packet_type == PacketType.PUBACK:
            with self._send_lock:
                ack = self._acks.pop(packet.packet_id, None)
            if ack is not None:
                ack.set()
        elif isinstance(packet, Disconnect):
            raise _ConnectionLostError(
                f"disconnected by the broker, reason code 0x{packet.reason_code:02x}"
            )
        # PINGRESP and anything else: nothing to do

    def _take_id(self) -> int:
        with self._send_lock:
            packet_id = self._next_id
            self._next_id = packet_id % 65535 + 1
        return packet_id

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            sock = self._sock
            if sock is None:
                raise _ConnectionLostError("not connected")
            sock.sendall(data)
            self._last_sent = time.monotonic()

    def _close(self) -> None:
        was_connected = self._subscribed.is_set()
        self._subscribed.clear()
        with self._send_lock:
            sock, self._sock = self._sock, None
            self._acks.clear()
        if sock is not None:
            sock.close()
        if was_connected:
            self.disconnects += 1
