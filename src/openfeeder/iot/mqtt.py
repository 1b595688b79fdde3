"""MQTT connections: one paho-mqtt (v5) client per broker context, with the scheme's QoS and retain.

:class:`MqttLink` is one connection to one broker: it connects in the background, reconnects with
back-off, re-subscribes after every reconnect, asks again (0.5 s doubling to 8 s) for a subscription
the broker refused (an ACL that follows the registry may grant it a moment later: a plug-in's
inputs are subscribed as soon as it starts), sets the last will, and dispatches each incoming
message to the handler of the first subscription whose filter matches. Handlers run on paho's network
thread and must be quick (hand the message to a queue and return); one that raises is logged and the
link keeps going.

:class:`Messenger` holds the two links of a device or service (``grid_ops`` and ``monitoring``,
:mod:`openfeeder.iot.topics`) and publishes each payload on the broker, QoS and retain flag its
message class prescribes; a status (birth) goes to both brokers, and each link's last will announces
the death of that connection. When both contexts name the same broker there are still two
connections, as in production, so the two traffic classes never share a TCP queue.

Network threads: by default each link runs paho's own network thread (``loop_start``). Links
built with a :class:`NetworkLoop` share that loop's one thread instead: it waits on all their
sockets at once (``epoll``, no limit of 1,024 descriptors), reads, writes, keeps them alive and
reconnects them with the same back-off, through paho's external-loop API (``loop_read``,
``loop_write``, ``loop_misc``). Each link keeps its own client id, session, last will and
subscriptions; only the thread is shared. The loop also runs timed calls
(:meth:`NetworkLoop.call_later`), which is how :class:`~openfeeder.iot.agent.hosting.AgentHost`
runs thousands of meter agents on it.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from openfeeder.config import BrokerSettings, BrokersSettings
from openfeeder.errors import MessagingError
from openfeeder.iot.schema import Payload, encode, publish_topic
from openfeeder.iot.topics import MESSAGE_SPECS, BrokerContext, QoS, Topic, TopicFilter

if TYPE_CHECKING:
    from openfeeder.iot.protection import MessageProtection

__all__ = ["MessageHandler", "Messenger", "MqttLink", "NetworkLoop", "PublishHandle", "TimerHandle"]

_LOG = logging.getLogger(__name__)
_IDS = itertools.count()
_MISC_EVERY_S: Final = 1.0
"""How often a :class:`NetworkLoop` runs paho's keep-alive checks on its links."""
_RECONNECT_MIN_S: Final = 1.0
_FIRST_REFUSAL_RETRY_S: Final = 0.25
_NOT_AUTHORIZED: Final = 0x87
_SUBSCRIBE_RETRY_MIN_S: Final = 0.5
_SUBSCRIBE_RETRY_MAX_S: Final = 8.0
_RECONNECT_MAX_S: Final = 8.0
_CLOSE_WAIT_S: Final = 2.0

MessageHandler = Callable[[str, bytes], None]
"""Called with the topic and the payload of each message a subscription receives."""

PublishCallback = Callable[[int], None]
"""Called on paho's thread with the message id once the broker acknowledged it (PUBACK)."""


@dataclass(frozen=True, slots=True)
class PublishHandle:
    """What :meth:`MqttLink.publish` queued: the MQTT message id and paho's delivery tracker."""

    mid: int
    info: paho.MQTTMessageInfo

    def wait(self, timeout_s: float) -> bool:
        """Block until the broker acknowledged the message; False on timeout."""
        try:
            self.info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        return self.info.is_published()


@dataclass(frozen=True, slots=True)
class _Subscription:
    topic_filter: TopicFilter
    qos: QoS
    handler: MessageHandler


class MqttLink:
    """One client connection to one broker, kept up in the background: by paho's own network
    thread, or by a shared :class:`NetworkLoop` (``network``)."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        will: tuple[Topic, bytes] | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        max_inflight: int = 100,
        on_published: PublishCallback | None = None,
        on_connection_change: Callable[[bool], None] | None = None,
        network: NetworkLoop | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: the context for an ``mqtts://`` broker (CA, client certificate and key, TLS
        version: :meth:`openfeeder.security.tls.TlsFiles.client_context`); None: the system's
        defaults with the broker settings' ``ca_file``. Ignored for ``mqtt://``."""
        self._settings = settings
        self._network = network
        # state kept by the network loop (its thread only)
        self._in_io = False
        self._connecting = False
        self._registered: socket.socket | None = None
        self._events = 0
        self._reconnect_timer: TimerHandle | None = None
        self._reconnect_delay_s = _RECONNECT_MIN_S
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._subscriptions: list[_Subscription] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopped = False
        self._on_published = on_published
        self._on_connection_change = on_connection_change
        # SUBACKs by message id (a small lock of its own: never held while calling paho)
        self._suback_lock = threading.Lock()
        self._sent_subscribes: dict[int, list[str]] = {}
        self._answered = threading.Event()  # every SUBSCRIBE sent on this connection answered
        self._early_subacks: dict[int, list[ReasonCode]] = {}
        self._subscribe_retry_s: dict[str, float] = {}
        self.refused_subscriptions = 0
        self.handler_errors = 0
        self.connects = 0
        self.disconnects = 0
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=True,
        )
        client.max_inflight_messages_set(max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password())
        if settings.tls:
            context = tls or ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None
            )
            client.tls_set_context(context)
        if will is not None:
            topic, payload = will
            client.will_set(str(topic), payload, qos=int(QoS.AT_LEAST_ONCE), retain=True)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        self._client = client

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; returns at once (see :meth:`wait_connected`)."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        try:
            self._client.connect_async(
                self._settings.host,
                self._settings.port,
                keepalive=self._settings.keepalive_s,
                clean_start=self._clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as err:
            raise MessagingError(
                f"{self._settings.url}: cannot connect: {err}",
                topic="",
                reason="connect_failed",
            ) from err
        if self._network is not None:
            self._network.add(self)
        else:
            self._client.loop_start()

    def wait_connected(self, timeout_s: float | None = None) -> bool:
        return self._connected.wait(timeout_s if timeout_s is not None else self._timeout())

    def wait_subscribed(self, timeout_s: float | None = None) -> bool:
        """Connected, and the broker answered every SUBSCRIBE sent since (``wait_connected``
        returns before the SUBACKs: a message published at once may find no subscription)."""
        timeout = timeout_s if timeout_s is not None else self._timeout()
        deadline = time.monotonic() + timeout
        return self.wait_connected(timeout) and self._answered.wait(
            max(0.0, deadline - time.monotonic())
        )

    def _timeout(self) -> float:
        return self._settings.connect_timeout_s

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, *, publish_will: bool = False) -> None:
        """Disconnect cleanly (no last will unless ``publish_will``) and stop the network thread."""
        self._stopped = True
        if publish_will:  # MQTT v5 reason 0x04: "disconnect with will message"
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        else:
            self._client.disconnect()
        if self._network is not None:
            self._network.remove(self)
        elif self._client.loop_stop() == paho.MQTT_ERR_SUCCESS:
            # paho keeps loop_start's wake-up socket pair open until the client is collected,
            # which for a client in a reference cycle leaves them to the socket finalizers
            # (unclosed-socket warnings); its thread has ended, so close them now
            self._client._reset_sockets(sockpair_only=True)
        self._connected.clear()

    # -- subscribe / publish -----------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: TopicFilter | str,
        handler: MessageHandler,
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
    ) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        flt = topic_filter if isinstance(topic_filter, TopicFilter) else TopicFilter(topic_filter)
        with self._lock:
            self._subscriptions.append(_Subscription(flt, qos, handler))
        if self.connected:
            _, mid = self._client.subscribe(str(flt), qos=int(qos))
            self._track_subscribe(mid, [str(flt)])

    def unsubscribe(self, topic_filter: TopicFilter | str) -> None:
        value = str(topic_filter)
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s.topic_filter.value != value]
        if self.connected:
            self._client.unsubscribe(value)

    def publish(
        self,
        topic: Topic | str,
        payload: bytes,
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
        retain: bool = False,
    ) -> PublishHandle:
        """Queue a message; paho sends it now or after reconnecting (QoS 1 is kept until acked)."""
        info = self._client.publish(str(topic), payload, qos=int(qos), retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MessagingError(
                f"{topic}: publish refused by the client: {paho.error_string(info.rc)}",
                topic=str(topic),
                reason="publish_failed",
            )
        if self._network is not None:
            # paho asks for a write only when its own "registered" flag is clear; it can stay set
            # with nothing queued, so a hosted link asks the loop itself (idempotent)
            self._network._register_write(self)
        return PublishHandle(info.mid, info)

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            _LOG.warning(
                "mqtt connect refused url=%s client_id=%s reason=%s",
                self._settings.url,
                self.client_id,
                reason_code,
                extra={"url": self._settings.url, "client_id": self.client_id},
            )
            if self.connects == 0 and reason_code.value == _NOT_AUTHORIZED:
                # a device that just registered: the broker's ACL follows the registry a moment
                # later, so the first retry comes sooner (on a shared loop; then the usual back-off)
                self._reconnect_delay_s = _FIRST_REFUSAL_RETRY_S
            return
        _no_delay(client)
        with self._lock:
            subscriptions = list(self._subscriptions)
        if subscriptions:
            self._answered.clear()
            _, mid = client.subscribe([(str(s.topic_filter), int(s.qos)) for s in subscriptions])
            self._track_subscribe(mid, [str(s.topic_filter) for s in subscriptions])
        else:
            self._answered.set()
        self.connects += 1
        self._reconnect_delay_s = _RECONNECT_MIN_S
        self._connected.set()
        _LOG.info(
            "mqtt connected url=%s client_id=%s",
            self._settings.url,
            self.client_id,
            extra={"url": self._settings.url, "client_id": self.client_id},
        )
        if self._on_connection_change is not None:
            self._on_connection_change(True)

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not was_connected:
            return
        self.disconnects += 1
        if not self._stopped:
            _LOG.warning(
                "mqtt connection lost url=%s client_id=%s reason=%s",
                self._settings.url,
                self.client_id,
                reason_code,
                extra={"url": self._settings.url, "client_id": self.client_id},
            )
        if self._on_connection_change is not None:
            self._on_connection_change(False)

    def _handle_message(
        self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage
    ) -> None:
        topic = message.topic
        with self._lock:
            subscriptions = self._subscriptions
        for subscription in subscriptions:
            if subscription.topic_filter.matches(topic):
                try:
                    subscription.handler(topic, bytes(message.payload))
                except Exception:  # a handler's bug must not take the connection down
                    self.handler_errors += 1
                    _LOG.exception(
                        "mqtt message handler failed topic=%s", topic, extra={"topic": topic}
                    )
                return

    def _track_subscribe(self, mid: int | None, filters: list[str]) -> None:
        """Remember what SUBSCRIBE ``mid`` asked for (its SUBACK may already be in); None: not
        sent (not connected: the next connect subscribes everything)."""
        if mid is None:
            return
        with self._suback_lock:
            early = self._early_subacks.pop(mid, None)
            if early is None:
                self._sent_subscribes[mid] = filters
                self._answered.clear()
                return
            if not self._sent_subscribes:
                self._answered.set()
        self._check_suback(filters, early)

    def _handle_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        with self._suback_lock:
            filters = self._sent_subscribes.pop(mid, None)
            if filters is None:  # before _track_subscribe ran
                self._early_subacks[mid] = list(reason_codes)
                return
            if not self._sent_subscribes:
                self._answered.set()
        self._check_suback(filters, reason_codes)

    def _check_suback(self, filters: list[str], codes: list[ReasonCode]) -> None:
        """A refused filter is asked for again later, while it is still wanted."""
        for flt, code in zip(filters, codes, strict=False):
            if not code.is_failure:
                self._subscribe_retry_s.pop(flt, None)
                continue
            self.refused_subscriptions += 1
            delay = self._subscribe_retry_s.get(flt)
            (_LOG.warning if delay is None else _LOG.debug)(
                "mqtt subscription refused url=%s client_id=%s filter=%s reason=%s; asking again",
                self._settings.url,
                self.client_id,
                flt,
                code,
                extra={"url": self._settings.url, "client_id": self.client_id, "topic": flt},
            )
            delay = _SUBSCRIBE_RETRY_MIN_S if delay is None else delay
            self._subscribe_retry_s[flt] = min(delay * 2, _SUBSCRIBE_RETRY_MAX_S)
            if self._network is not None:
                self._network.call_later(delay, functools.partial(self._subscribe_again, flt))
            else:
                timer = threading.Timer(delay, self._subscribe_again, args=(flt,))
                timer.daemon = True
                timer.start()

    def _subscribe_again(self, flt: str) -> None:
        with self._lock:
            wanted = next((s for s in self._subscriptions if s.topic_filter.value == flt), None)
        if wanted is None or self._stopped or not self.connected:
            return  # unsubscribed, stopped, or the next connect subscribes it anyway
        _, mid = self._client.subscribe(flt, qos=int(wanted.qos))
        self._track_subscribe(mid, [flt])

    def _handle_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        _reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._on_published is not None:
            self._on_published(mid)


@dataclass(order=True)
class TimerHandle:
    """A call scheduled with :meth:`NetworkLoop.call_later`; :meth:`cancel` takes it back."""

    due: float
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class NetworkLoop:
    """One thread serving the network side of many :class:`MqttLink`\\ s, and timed calls.

    ``start`` before the first link starts, ``stop`` after the last one stopped. Reconnects (a
    blocking TCP and TLS connect in paho) run on ``connect_workers`` helper threads so that one
    slow broker never holds up the others; everything else happens on the loop's thread, including
    the links' callbacks (message handlers, PUBACKs) and the calls given to :meth:`call_soon` and
    :meth:`call_later`, which must therefore be quick.
    """

    def __init__(self, *, name: str = "mqtt-loop", connect_workers: int = 4) -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._calls: deque[Callable[[], None]] = deque()
        self._timers: list[TimerHandle] = []
        self._order = itertools.count()
        self._woken = False
        self._links: set[MqttLink] = set()
        self._want_write: set[MqttLink] = set()
        self._closing: dict[MqttLink, tuple[float, threading.Event]] = {}
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._connector = ThreadPoolExecutor(
            max_workers=connect_workers, thread_name_prefix=f"{name}-connect"
        )
        self.errors = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close what is still open and end the thread."""
        if not self._thread.is_alive():
            self._close_resources()
            return
        self._stopping = True
        self._wake()
        if not self.in_loop_thread():
            self._thread.join(timeout_s)

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def links(self) -> int:
        """Links served now."""
        return len(self._links)

    # -- calls -------------------------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread soon (from any thread)."""
        with self._lock:
            self._calls.append(callback)
        self._wake()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the loop's thread after ``delay_s`` wall seconds (any thread)."""
        handle = TimerHandle(time.monotonic() + max(0.0, delay_s), next(self._order), callback)
        if self.in_loop_thread():
            heapq.heappush(self._timers, handle)
        else:
            self.call_soon(lambda: heapq.heappush(self._timers, handle))
        return handle

    def _wake(self) -> None:
        if self.in_loop_thread():
            return
        with self._lock:
            if self._woken:
                return
            self._woken = True
        try:
            self._wake_w.send(b"\\0")
        except (BlockingIOError, OSError):  # full: it is awake anyway; closed: it has ended
            return

    # -- links (MqttLink calls these) --------------------------------------------------------

    def add(self, link: MqttLink) -> None:
        """Serve ``link`` from now on: connect it (the client has had ``connect_async``)."""
        client = link._client
        client.on_socket_register_write = lambda _c, _u, _s: self._register_write(link)
        client.on_socket_close = lambda _c, _u, sock: self._socket_closed(link, sock)

        def added() -> None:
            self._links.add(link)
            self._connect(link)

        self.call_soon(added)

    def remove(self, link: MqttLink, timeout_s: float = _CLOSE_WAIT_S) -> None:
        """Stop serving ``link`` once what it queued (its DISCONNECT) is written or after
        ``timeout_s``; its socket is closed. Blocks until then unless called on the loop."""
        done = threading.Event()
        deadline = time.monotonic() + timeout_s
        if not self._thread.is_alive():
            self._forget(link)
            return
        if self.in_loop_thread():
            self._flush_link(link)
            self._closing[link] = (time.monotonic(), done)  # close now
            self._finish_closing()
            return
        self.call_soon(lambda: self._closing.__setitem__(link, (deadline, done)))
        if not done.wait(timeout_s + 1.0) and self._thread.is_alive():
            _LOG.warning("mqtt link %s did not close in time", link.client_id)

    def _register_write(self, link: MqttLink) -> None:
        if self.in_loop_thread() and link._in_io:
            return  # _io sets the interest when the operation is done
        with self._lock:
            self._want_write.add(link)
        self._wake()

    def _socket_closed(self, link: MqttLink, sock: object) -> None:
        """paho closes ``sock`` right after this: forget it first (its number may be reused)."""
        if link._registered is not None and link._registered is sock:
            self._unregister(link)

    def _modify(self, link: MqttLink, events: int) -> None:
        sock = link._registered
        if sock is None or link._events == events:
            return
        try:
            self._selector.modify(sock, events, link)
            link._events = events
        except (KeyError, ValueError, OSError):
            self._unregister(link)

    def _unregister(self, link: MqttLink) -> None:
        sock, link._registered = link._registered, None
        if sock is not None:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError, OSError):
                _LOG.debug("socket of %s was not registered", link.client_id)

    def _register(self, link: MqttLink) -> None:
        sock = link._client.socket()
        if not isinstance(sock, socket.socket) or sock is link._registered:
            return  # (an SSL socket is a socket.socket too)
        self._unregister(link)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link._client.want_write() else 0)
        self._selector.register(sock, events, link)
        link._registered = sock
        link._events = events

    # -- connecting --------------------------------------------------------------------------

    def _connect(self, link: MqttLink) -> None:
        """Loop thread: (re)connect ``link`` on a helper thread."""
        link._reconnect_timer = None
        if link._stopped or link._connecting or link not in self._links:
            return
        link._connecting = True
        try:
            self._connector.submit(self._connect_blocking, link)
        except RuntimeError:  # the loop is stopping
            link._connecting = False

    def _connect_blocking(self, link: MqttLink) -> None:
        try:
            rc = link._client.reconnect()
            ok = rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        except (OSError, ValueError) as err:
            ok = False
            _LOG.debug("mqtt connect to %s failed: %s", link._settings.url, err)
        self.call_soon(lambda: self._connected(link, ok=ok))

    def _connected(self, link: MqttLink, *, ok: bool) -> None:
        link._connecting = False
        if ok and link._client.socket() is not None:
            self._register(link)
            self._flush_link(link)
            return
        self._retry(link)

    def _retry(self, link: MqttLink) -> None:
        if link._stopped or link._reconnect_timer is not None or link not in self._links:
            return
        delay = link._reconnect_delay_s
        link._reconnect_delay_s = min(max(delay * 2, _RECONNECT_MIN_S), _RECONNECT_MAX_S)
        link._reconnect_timer = self.call_later(delay, lambda: self._connect(link))

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_misc = time.monotonic() + _MISC_EVERY_S
        while True:
            try:
                self._run_calls()
                if self._stopping:
                    break
                self._flush_writes()
                self._finish_closing()
                now = time.monotonic()
                timeout = min(_MISC_EVERY_S, max(0.0, next_misc - now))
                if self._timers:
                    timeout = min(timeout, max(0.0, self._timers[0].due - now))
                if self._calls or self._want_write:
                    timeout = 0.0
                for key, mask in self._selector.select(timeout):
                    if key.data is None:
                        self._drain_wake()
                    else:
                        self._serve(key.data, mask)
                self._run_timers()
                if time.monotonic() >= next_misc:
                    next_misc = time.monotonic() + _MISC_EVERY_S
                    for link in list(self._links):
                        if not link._connecting and link._client.socket() is not None:
                            self._io(link, link._client.loop_misc)
                            self._flush_link(link)
            except Exception:  # the loop must go on for the other links; logged with traceback
                self.errors += 1
                _LOG.exception("mqtt network loop %s: iteration failed", self.name)
        self._close_resources()

    def _drain_wake(self) -> None:
        # drain first, then clear the flag: cleared first, a wake-up arriving in between would set
        # the flag and have its byte drained here, leaving the flag set with nothing to wake the
        # loop, and every later wake-up skipped until a timer ran (messages waited up to a second)
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            self._woken = False

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, deque()
        for call in calls:
            try:
                call()
            except Exception:  # one caller's bug must not stop the loop
                self.errors += 1
                _LOG.exception("mqtt network loop %s: call failed", self.name)

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0].due <= now:
            handle = heapq.heappop(timers)
            if handle.cancelled:
                continue
            try:
                handle.callback()
            except Exception:  # one caller's bug must not stop the loop
                self.errors += 1
                _LOG.exception("mqtt network loop %s: timed call failed", self.name)

    def _flush_writes(self) -> None:
        with self._lock:
            links, self._want_write = self._want_write, set()
        for link in links:
            self._flush_link(link)

    def _flush_link(self, link: MqttLink) -> None:
        client = link._client
        if link._connecting or client.socket() is None or not client.want_write():
            return
        self._io(link, client.loop_write)

    def _serve(self, link: MqttLink, mask: int) -> None:
        client = link._client
        if link._connecting:
            return
        if mask & selectors.EVENT_READ:
            self._io(link, client.loop_read)
            # TLS: one record may hold several packets; what paho left decrypted in the SSL
            # buffer never makes the socket readable again, so read it now
            sock = client.socket()
            while isinstance(sock, ssl.SSLSocket) and sock.pending() and not link._connecting:
                self._io(link, client.loop_read)
                sock = client.socket()
        if mask & selectors.EVENT_WRITE and client.socket() is not None:
            self._io(link, client.loop_write)

    def _io(self, link: MqttLink, operation: Callable[[], MQTTErrorCode]) -> None:
        link._in_io = True
        try:
            operation()
        finally:
            link._in_io = False
        client = link._client
        if client.socket() is None:  # lost (or closed after a DISCONNECT)
            self._unregister(link)
            if not link._stopped:
                self._retry(link)
            return
        if link._registered is None:
            self._register(link)
        # level-triggered: paho reports "wants to write" only on the edge, and a partial write
        # must leave the socket watched for writability
        write = selectors.EVENT_WRITE if client.want_write() else 0
        self._modify(link, selectors.EVENT_READ | write)

    def _finish_closing(self) -> None:
        if not self._closing:
            return
        now = time.monotonic()
        for link, (deadline, done) in list(self._closing.items()):
            client = link._client
            if link._connecting and now < deadline:
                continue
            if client.socket() is not None and client.want_write() and now < deadline:
                continue  # its DISCONNECT is still being written
            del self._closing[link]
            self._forget(link)
            done.set()

    def _forget(self, link: MqttLink) -> None:
        self._links.discard(link)
        if link._reconnect_timer is not None:
            link._reconnect_timer.cancel()
            link._reconnect_timer = None
        sock = link._client.socket()
        self._unregister(link)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        link._connected.clear()

    def _close_resources(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in list(self._links):
            self._forget(link)
        for _deadline, done in self._closing.values():
            done.set()
        self._closing.clear()
        self._connector.shutdown(wait=True, cancel_futures=True)
        for link in list(self._links):  # a connect that finished during the shutdown
            self._forget(link)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class Messenger:
    """The two broker connections of one device or service, publishing by the topic scheme."""

    def __init__(
        self,
        settings: BrokersSettings,
        *,
        client_id: str,
        will: Payload | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        max_inflight: int = 100,
        on_published: dict[BrokerContext, PublishCallback] | None = None,
        network: NetworkLoop | None = None,
        tls: ssl.SSLContext | None = None,
        protection: MessageProtection | None = None,
    ) -> None:
        """``network``: the shared loop both connections run on (None: paho's own threads);
        ``tls``: the TLS context of both connections to ``mqtts://`` brokers (see MqttLink)."""
        will_message = (publish_topic(will), encode(will)) if will is not None else None
        callbacks = on_published or {}
        self.links: dict[BrokerContext, MqttLink] = {
            context: MqttLink(
                getattr(settings, context.value),
                client_id=f"{client_id}.{context.value}",
                will=will_message,
                clean_start=clean_start,
                session_expiry_s=session_expiry_s,
                max_inflight=max_inflight,
                on_published=callbacks.get(context),
                network=network,
                tls=tls,
            )
            for context in BrokerContext
        }
        # payload protection (openfeeder.iot.protection): seals on publish, opens on receipt and
        # publishes a security event for each rejected message; None costs nothing
        self._protection = protection
        if protection is not None:
            protection.attach(self.publish)

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return all(link.wait_connected(timeout_s) for link in self.links.values())

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Both links connected and their subscriptions answered (:meth:`MqttLink.wait_subscribed`)."""
        return all(link.wait_subscribed(timeout_s) for link in self.links.values())

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()

    def link(self, context: BrokerContext) -> MqttLink:
        return self.links[context]

    def publish(self, payload: Payload) -> list[PublishHandle]:
        """Encode ``payload`` and publish it where its message class goes (one or both brokers)."""
        spec = MESSAGE_SPECS[payload.message_class]
        data = encode(payload)
        topic = publish_topic(payload)
        if self._protection is not None:
            data = self._protection.seal(topic, data)
        return [
            self.links[context].publish(topic, data, qos=spec.qos, retain=spec.retain)
            for context in spec.contexts
        ]

    def subscribe(
        self, topic_filter: TopicFilter, handler: MessageHandler, *, context: BrokerContext
    ) -> None:
        if self._protection is not None:
            handler = self._protection.guard(handler)
        self.links[context].subscribe(topic_filter, handler)


def _no_delay(client: paho.Client) -> None:
    """Send small MQTT packets at once: without TCP_NODELAY, Nagle's algorithm holds a PUBACK or
    an acknowledgement behind the peer's delayed ACK (about 40 ms per hop)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
