"""Sessions: what the broker keeps per client id, and the delivery path towards one client.

A :class:`Session` holds the client's subscriptions, its QoS 1/2 messages in flight (sent, not yet
acknowledged) and its queue of messages waiting to be sent. It lives as long as the connection
(session expiry 0) or, for a persistent session, until its expiry interval has passed with no
connection. Messages go out through an :class:`Outlet` (the connection) when one is attached.

Delivery rules, in :meth:`Session.deliver`:

- at most ``min(receive maximum, 65535)`` QoS 1/2 messages are in flight to a client (its v5
  Receive Maximum, or :attr:`BrokerLimits.inflight_v311` for MQTT 3.1.1);
- beyond that, or while the socket's write buffer is full, or while the client is offline,
  messages wait in the session queue, bounded by :attr:`BrokerLimits.max_queued_messages` and
  :attr:`BrokerLimits.max_queued_bytes`; when a bound is hit the *oldest* queued message is dropped
  and counted (``dropped_queue_full``);
- messages in flight are not counted in those bounds (the Receive Maximum bounds them), so the
  most a session holds is ``receive maximum + max_queued_messages`` messages;
- QoS 0 messages for an offline client are dropped and counted (``dropped_offline_qos0``);
- a message whose Message Expiry Interval has passed is dropped (``dropped_expired``), and one
  larger than the client's Maximum Packet Size is dropped (``dropped_too_large``), as MQTT 5 says.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

from openfeeder.errors import ConfigError
from openfeeder.iot.broker.properties import encode_str

__all__ = [
    "NEVER_EXPIRES",
    "BrokerLimits",
    "Counters",
    "Message",
    "Outlet",
    "Session",
    "SharedGroup",
    "Subscription",
]

NEVER_EXPIRES: Final = 0xFFFFFFFF
"""Session Expiry Interval meaning "never" (also used for MQTT 3.1.1 clean session 0)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerLimits:
    """Bounds and timeouts of the embedded broker (all explicit; see the module docs)."""

    max_packet_bytes: int = 1024 * 1024
    """Largest packet accepted from a client (fixed header included; announced in CONNACK).
    A larger one closes the connection with reason 0x95 Packet too large."""
    max_queued_messages: int = 100_000
    """Messages waiting per session (offline, or beyond the in-flight window); oldest dropped."""
    max_queued_bytes: int = 128 * 1024 * 1024
    """Topic + payload bytes waiting per session; oldest dropped beyond it."""
    receive_maximum: int = 1024
    """QoS 2 messages a client may have unreleased at the broker (announced in CONNACK)."""
    inflight_v311: int = 1000
    """QoS 1/2 messages in flight to an MQTT 3.1.1 client (v5 clients say their own)."""
    write_buffer_bytes: int = 1024 * 1024
    """Socket write buffer per connection above which delivery goes to the session queue."""
    connect_timeout_s: float = 10.0
    """Time a new connection has to send CONNECT."""
    close_timeout_s: float = 5.0
    """Time a closing connection has to flush its last packet before it is aborted."""

    def __post_init__(self) -> None:
        for name in (
            "max_packet_bytes",
            "max_queued_messages",
            "max_queued_bytes",
            "write_buffer_bytes",
            "connect_timeout_s",
            "close_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"broker limit {name} must be positive")
        for name in ("receive_maximum", "inflight_v311"):
            if not 1 <= getattr(self, name) <= 0xFFFF:
                raise ConfigError(f"broker limit {name} must be in 1..65535")
        if self.max_packet_bytes > 268_435_460:
            raise ConfigError("broker limit max_packet_bytes exceeds the MQTT maximum")


@dataclass(slots=True)
class Counters:
    """The broker's running counters (read through ``Broker.stats()``)."""

    connections_total: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    dropped_queue_full: int = 0
    dropped_offline_qos0: int = 0
    dropped_too_large: int = 0
    dropped_expired: int = 0
    protocol_errors: int = 0
    wills_published: int = 0
    denied_connects: int = 0
    denied_publishes: int = 0
    denied_subscribes: int = 0


class Message:
    """One application message as routed: shared by every queue it is in (never copied)."""

    __slots__ = (
        "expires_at",
        "origin",
        "payload",
        "properties",
        "qos",
        "retain",
        "size",
        "topic",
        "topic_field",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        *,
        properties: bytes = b"",
        expires_at: float | None = None,
        origin: Session | None = None,
    ) -> None:
        self.topic = topic
        self.topic_field = encode_str(topic)
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        """Raw MQTT v5 property block contents (no length), without Message Expiry Interval."""
        self.expires_at = expires_at
        """Event-loop time at which the message expires, or None."""
        self.origin = origin
        """Session that published it (for No Local), None for wills and retained replays."""
        self.size = len(self.topic_field) + len(payload) + len(properties)


class Subscription:
    """One topic filter of one session, with its options (mutated in place on re-subscribe)."""

    __slots__ = (
        "group",
        "levels",
        "no_local",
        "qos",
        "retain_as_published",
        "retain_handling",
        "session",
        "text",
    )

    def __init__(
        self,
        session: Session,
        text: str,
        levels: tuple[str, ...],
        group: str | None,
        qos: int,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
    ) -> None:
        self.session = session
        self.text = text
        """The filter as subscribed, ``$share/{group}/`` included."""
        self.levels = levels
        """Levels of the filter without the share prefix."""
        self.group = group
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling


class SharedGroup:
    """The members of one ``$share/{group}/{filter}``; messages go round-robin to online ones."""

    __slots__ = ("members", "name", "next_index")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[Subscription] = []
        self.next_index = 0

    def pick(self) -> Subscription | None:
        """The next online member (round-robin), else the first persistent offline one."""
        members = self.members
        count = len(members)
        start = self.next_index
        for step in range(count):
            index = (start + step) % count
            member = members[index]
            outlet = member.session.outlet
            if outlet is not None and not outlet.closing:
                self.next_index = index + 1
                return member
        return members[0] if count else None


class Outlet(Protocol):
    """The connection side of a session: where its packets are written."""

    @property
    def paused(self) -> bool:
        """True while the socket's write buffer is full (or the connection is closing)."""

    @property
    def closing(self) -> bool:
        """True once the connection is being closed."""

    @property
    def send_quota(self) -> int:
        """QoS 1/2 messages the client accepts in flight (its Receive Maximum)."""

    def send_publish(
        self, message: Message, qos: int, retain: bool, dup: bool, packet_id: int
    ) -> bool:
        """Write a PUBLISH; False if it was not sent (expired, or too large for the client)."""

    def send_pubrel(self, packet_id: int) -> None:
        """Write a PUBREL."""


Outgoing = tuple[Message, int, bool, bool]
"""An in-flight message: message, QoS, retain flag sent, released (PUBREC received, QoS 2)."""


class Session:
    """State kept for one client id; see the module docs for the delivery rules."""

    __slots__ = (
        "client_id",
        "counters",
        "expiry_s",
        "expiry_timer",
        "incoming_qos2",
        "inflight",
        "limits",
        "next_packet_id",
        "outlet",
        "queue",
        "queued_bytes",
        "subscriptions",
    )

    def __init__(self, client_id: str, limits: BrokerLimits, counters: Counters) -> None:
        self.client_id = client_id
        self.limits = limits
        self.counters = counters
        self.outlet: Outlet | None = None
        self.expiry_s = 0
        """Session Expiry Interval: 0 ends with the connection, NEVER_EXPIRES never."""
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self.inflight: dict[int, Outgoing] = {}
        self.queue: deque[tuple[Message, int, bool]] = deque()
        self.queued_bytes = 0
        self.incoming_qos2: set[int] = set()
        """Packet ids of QoS 2 messages received and routed, not yet released by PUBREL."""
        self.next_packet_id = 1

    def _packet_id(self) -> int:
        inflight = self.inflight
        packet_id = self.next_packet_id
        while packet_id in inflight:
            packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
        self.next_packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
        return packet_id

    def deliver(self, message: Message, qos: int, retain: bool) -> None:
        """Send ``message`` to this client now, or queue it (see the module docs)."""
        outlet = self.outlet
        if outlet is None or outlet.paused or self.queue:
            if outlet is None and not qos:
                self.counters.dropped_offline_qos0 += 1
                return
            self._enqueue(message, qos, retain)
            return
        if not qos:
            outlet.send_publish(message, 0, retain, False, 0)
            return
        if len(self.inflight) >= outlet.send_quota:
            self._enqueue(message, qos, retain)
            return
        packet_id = self._packet_id()
        self.inflight[packet_id] = (message, qos, retain, False)
        if not outlet.send_publish(message, qos, retain, False, packet_id):
            del self.inflight[packet_id]

    def _enqueue(self, message: Message, qos: int, retain: bool) -> None:
        queue = self.queue
        limits = self.limits
        queue.append((message, qos, retain))
        self.queued_bytes += message.size
        while len(queue) > limits.max_queued_messages or (
            self.queued_bytes > limits.max_queued_bytes and len(queue) > 1
        ):
            dropped = queue.popleft()[0]
            self.queued_bytes -= dropped.size
            self.counters.dropped_queue_full += 1

    def pump(self) -> None:
        """Send queued messages while the client's window and the socket allow."""
        outlet = self.outlet
        queue = self.queue
        if outlet is None or not queue:
            return
        inflight = self.inflight
        quota = outlet.send_quota
        while queue and not outlet.paused:
            message, qos, retain = queue[0]
            if qos and len(inflight) >= quota:
                return
            queue.popleft()
            self.queued_bytes -= message.size
            if not qos:
                outlet.send_publish(message, 0, retain, False, 0)
                continue
            packet_id = self._packet_id()
            inflight[packet_id] = (message, qos, retain, False)
            if not outlet.send_publish(message, qos, retain, False, packet_id):
                del inflight[packet_id]

    def resume(self) -> None:
        """After a reconnect: resend in-flight messages (DUP) and PUBRELs, then the queue."""
        outlet = self.outlet
        if outlet is None:
            return
        failed = []
        for packet_id, (message, qos, retain, released) in self.inflight.items():
            if released:
                outlet.send_pubrel(packet_id)
            elif not outlet.send_publish(message, qos, retain, True, packet_id):
                failed.append(packet_id)
        for packet_id in failed:
            del self.inflight[packet_id]
        self.pump()

    def acknowledge(self, packet_id: int, qos: int) -> bool:
        """PUBACK (``qos`` 1) or PUBCOMP (``qos`` 2) for ``packet_id``; False if unknown."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry[1] != qos or (qos == 2 and not entry[3]):
            return False
        del self.inflight[packet_id]
        if self.queue:
            self.pump()
        return True

    def received(self, packet_id: int, failed: bool) -> bool:
        """PUBREC for ``packet_id``: mark it released (or finished, if ``failed``); False if unknown."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry[1] != 2:
            return False
        if failed:
            del self.inflight[packet_id]
            self.pump()
        else:
            self.inflight[packet_id] = (entry[0], 2, entry[2], True)
        return True

    def clear(self) -> None:
        """Forget in-flight and queued messages (the session ends)."""
        self.inflight.clear()
        self.queue.clear()
        self.queued_bytes = 0
        self.incoming_qos2.clear()
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
            self.expiry_timer = None
