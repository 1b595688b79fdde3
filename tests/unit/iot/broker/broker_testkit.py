"""Helpers for the broker tests: a paho client wrapper that waits for events, and a raw socket peer.

Every wait has a generous timeout and fails the test when it runs out; nothing sleeps to
synchronise. (Not a conftest: ``tests/conftest.py`` is imported by name elsewhere.)
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from openfeeder.iot.broker import BrokerLimits, BrokerThread
from openfeeder.iot.broker.codec import Framer, Packet, decode, encode

TIMEOUT_S = 10.0
V5 = mqtt.MQTTv5
V311 = mqtt.MQTTv311


def unique(prefix: str = "t") -> str:
    """A topic root or client id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def running_broker(limits: BrokerLimits | None = None) -> Iterator[BrokerThread]:
    broker = BrokerThread(port=0, limits=limits or BrokerLimits())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Peer:
    """A paho client (MQTT v5 or 3.1.1) whose calls wait for the broker's answer."""

    def __init__(self, port: int, client_id: str, protocol: int = V5, **client_args: Any) -> None:
        self.port = port
        self.client_id = client_id
        self.protocol = protocol
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **client_args
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[Any, Any, Any]] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.unsubacks: queue.Queue[list[Any]] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda _c, _u, flags, rc, props: self.connack.put(
            (flags, rc, props)
        )
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(list(codes))
        self.client.on_unsubscribe = lambda _c, _u, _mid, codes, _p: self.unsubacks.put(list(codes))
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.put(rc)
        # never reconnect on its own: tests decide when a client comes back
        self.client.reconnect_delay_set(min_delay=60, max_delay=120)
        self.started = False

    def connect(
        self,
        *,
        keepalive_s: int = 60,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        max_packet_bytes: int | None = None,
    ) -> tuple[Any, Any, Any]:
        """Connect and wait for CONNACK -> (flags, reason code, properties)."""
        kwargs: dict[str, Any] = {"keepalive": keepalive_s}
        if self.protocol == V5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry_s is not None:
                props.SessionExpiryInterval = session_expiry_s
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            if max_packet_bytes is not None:
                props.MaximumPacketSize = max_packet_bytes
            kwargs["clean_start"] = clean_start
            kwargs["properties"] = props
        self.client.connect("127.0.0.1", self.port, **kwargs)
        if not self.started:
            self.client.loop_start()
            self.started = True
        return self.connack.get(timeout=TIMEOUT_S)

    def subscribe(self, topic_filter: str, qos: int = 1, **options: Any) -> list[Any]:
        """Subscribe and wait for SUBACK -> reason codes."""
        if self.protocol == V5:
            self.client.subscribe(topic_filter, options=SubscribeOptions(qos=qos, **options))
        else:
            self.client.subscribe(topic_filter, qos=qos)
        return self.subacks.get(timeout=TIMEOUT_S)

    def unsubscribe(self, topic_filter: str) -> list[Any]:
        self.client.unsubscribe(topic_filter)
        return self.unsubacks.get(timeout=TIMEOUT_S)

    def publish(
        self, topic: str, payload: bytes | str = b"", qos: int = 1, *, retain: bool = False
    ) -> None:
        """Publish and wait until the broker acknowledged it (sent, for QoS 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()

    def expect(self, count: int = 1) -> list[mqtt.MQTTMessage]:
        """The next ``count`` messages (fails if they do not arrive in time)."""
        return [self.messages.get(timeout=TIMEOUT_S) for _ in range(count)]

    def expect_until(self, topic: str) -> list[mqtt.MQTTMessage]:
        """Every message up to and including the first on ``topic`` (a marker)."""
        got: list[mqtt.MQTTMessage] = []
        while True:
            msg = self.messages.get(timeout=TIMEOUT_S)
            got.append(msg)
            if msg.topic == topic:
                return got

    def disconnect(self) -> None:
        """Clean DISCONNECT (reason 0), then stop the network thread."""
        self.client.disconnect()
        self.stop()

    def stop(self) -> None:
        if self.started:
            self.client.loop_stop()
            self.started = False

    def drop(self) -> None:
        """Close the socket without DISCONNECT (a network failure, as seen by the broker)."""
        self.stop()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.close()

    def freeze(self) -> None:
        """Stop the network thread but keep the socket open: no more PINGREQs or acks."""
        self.stop()


class PeerPool:
    """Makes peers and, at the end of a test, disconnects those still connected."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.peers: list[Peer] = []

    def __call__(self, client_id: str | None = None, protocol: int = V5, **args: Any) -> Peer:
        peer = Peer(self.port, client_id or unique("c"), protocol, **args)
        self.peers.append(peer)
        return peer

    def connected(
        self, client_id: str | None = None, protocol: int = V5, **connect_args: Any
    ) -> Peer:
        peer = self(client_id, protocol)
        _, rc, _ = peer.connect(**connect_args)
        assert not rc.is_failure, rc
        return peer

    def close(self) -> None:
        for peer in self.peers:
            if peer.started:
                peer.client.disconnect()
                peer.stop()
            sock = peer.client.socket()
            if isinstance(sock, socket.socket):
                sock.close()


class RawPeer:
    """A bare TCP socket speaking hand-made MQTT, to send what no client library would."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.framer = Framer(16 * 1024 * 1024)
        self.frames: list[tuple[int, bytes, int, int]] = []
        self.closed = threading.Event()

    def send(self, data: bytes | Packet, version: int = 5) -> None:
        raw = data if isinstance(data, bytes | bytearray) else encode(data, version=version)
        self.sock.sendall(raw)

    def read(self, version: int = 5) -> Packet | None:
        """The next packet from the broker, or None when the broker closed the connection."""
        while not self.frames:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed.set()
                return None
            frames, error = self.framer.feed(data)
            assert error is None
            self.frames.extend(frames)
        first, buf, start, end = self.frames.pop(0)
        return decode(first, buf, start, end, version=version)

    def read_until_closed(self, version: int = 5) -> list[Packet]:
        """Every packet the broker sends until it closes the connection."""
        packets: list[Packet] = []
        while (packet := self.read(version)) is not None:
            packets.append(packet)
        return packets

    def close(self) -> None:
        self.sock.close()
