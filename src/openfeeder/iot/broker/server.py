"""The embedded MQTT broker: :class:`Broker` (asyncio), :class:`BrokerThread`, :func:`serve`,
:func:`run_broker`.

Routing: a published message is matched against the subscription trie (cached per topic); each
session gets one copy at the highest QoS of its matching subscriptions, and each shared group
(``$share/{group}/{filter}``) one copy for one member, round-robin over its connected members (an
offline member of a persistent session is used only when no member is connected).

Wills are published when a connection ends without a DISCONNECT 0x00: socket closed, keepalive
expired (1.5 x keepalive without a packet), protocol error, DISCONNECT 0x04, or takeover by a new
connection with the same client id, after the Will Delay Interval (shortened to the session
expiry; cancelled if the client reconnects to the same session first). Connections closed by
:meth:`Broker.stop` do **not** publish their wills: the broker is going away, nobody would receive
them, and a restart must not announce every device dead.

Sessions live in memory only: a broker restart forgets them, like retained messages.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import ssl
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Final, Protocol

from openfeeder.errors import ConfigError, SecurityError
from openfeeder.iot.broker.codec import Suback, Subscribe, Unsuback, Unsubscribe, encode
from openfeeder.iot.broker.codes import ProtocolError, ReasonCode, protocol_error
from openfeeder.iot.broker.connection import Connection
from openfeeder.iot.broker.properties import Properties, PropertyId
from openfeeder.iot.broker.session import (
    NEVER_EXPIRES,
    BrokerLimits,
    Counters,
    Message,
    Session,
    Subscription,
)
from openfeeder.iot.broker.topic_tree import RetainedStore, SubscriptionIndex, parse_filter
from openfeeder.security.acl import AccessTable
from openfeeder.security.pki import RevocationList

__all__ = [
    "DEFAULT_LIMITS",
    "Broker",
    "BrokerBindError",
    "BrokerThread",
    "PasswordCheck",
    "run_broker",
    "serve",
]

logger = logging.getLogger("openfeeder.iot.broker")

DEFAULT_LIMITS: Final = BrokerLimits()
P = PropertyId


class BrokerBindError(ConfigError):
    """The broker cannot listen on ``host:port`` (in use, not an address of this host, ...)."""

    def __init__(self, message: str, *, host: str, port: int, errno_code: int | None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.errno_code = errno_code


class PasswordCheck(Protocol):
    """Decides whether a CONNECT's credentials are accepted (without it, all are)."""

    def __call__(self, client_id: str, username: str | None, password: bytes | None) -> bool: ...


class Broker:
    """An MQTT 3.1.1 / 5.0 broker on one TCP listener, run by the current event loop.

    ``port=0`` picks a free port; :attr:`port` is the bound one after :meth:`start`.

    ``ssl_context`` (:func:`openfeeder.security.tls.server_context`) makes it an MQTT-over-TLS
    listener; a context that requires client certificates refuses clients without one (or with one
    from another CA) in the handshake. ``access`` (:class:`~openfeeder.security.acl.AccessTable`)
    turns on authorization: each client's identity is its certificate's CN (or, without TLS, the
    user name a ``password_check`` accepted); an identity not in the table, a client id not its
    own, or a will topic it may not publish is refused at CONNECT (0x87); a PUBLISH it may not make
    is dropped and counted (MQTT v5 QoS 1/2: answered 0x87), a SUBSCRIBE it may not make answered
    0x87 (3.1.1: 0x80). :meth:`set_access` replaces the table while running. Without ``access`` the
    hot path costs one attribute test per packet. ``revocations`` (the CA's CRL,
    :class:`~openfeeder.security.pki.RevocationList`) refuses a client whose certificate was
    revoked at CONNECT; the file is read again when it changes, and :meth:`drop_revoked`
    disconnects clients already connected with such a certificate.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        limits: BrokerLimits = DEFAULT_LIMITS,
        password_check: PasswordCheck | None = None,
        ssl_context: ssl.SSLContext | None = None,
        access: AccessTable | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self.limits = limits
        self.password_check = password_check
        self.ssl_context = ssl_context
        self.access = access
        self.revocations = revocations
        self.counters = Counters()
        self.connections: set[Connection] = set()
        self.sessions: dict[str, Session] = {}
        self.index = SubscriptionIndex()
        self.retained = RetainedStore()
        self._clients: dict[str, Connection] = {}
        self._pending_wills: dict[str, tuple[asyncio.TimerHandle, Message, int | None]] = {}
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The listening port (the bound one once started, also when created with 0)."""
        return self._port

    async def start(self) -> None:
        """Listen; raises :class:`BrokerBindError` if the address cannot be bound."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = False
        try:
            self._server = await loop.create_server(
                lambda: Connection(self),
                self._host,
                self._port,
                reuse_address=True,
                backlog=512,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.limits.connect_timeout_s if self.ssl_context else None,
            )
        except OSError as err:
            what = "address already in use" if err.errno == errno.EADDRINUSE else err.strerror
            raise BrokerBindError(
                f"cannot listen on {self._host}:{self._port}: {what}",
                host=self._host,
                port=self._port,
                errno_code=err.errno,
            ) from err
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info(
            "mqtt broker listening on %s:%d",
            self._host,
            self._port,
            extra={"event": "broker_listening", "host": self._host, "port": self._port},
        )

    async def stop(self) -> None:
        """Stop listening and drop every connection at once; wills are not published."""
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.abort()
        if connections:
            waits = [asyncio.ensure_future(c.lost.wait()) for c in connections]
            _, pending = await asyncio.wait(waits, timeout=self.limits.close_timeout_s)
            for waiter in pending:
                waiter.cancel()
        await server.wait_closed()
        for handle, _, _ in self._pending_wills.values():
            handle.cancel()
        self._pending_wills.clear()
        for session in self.sessions.values():
            session.clear()
        self._server = None
        logger.info(
            "mqtt broker stopped",
            extra={
                "event": "broker_stopped",
                "host": self._host,
                "port": self._port,
                **self.stats(),
            },
        )

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def stats(self) -> dict[str, int]:
        """Counters and current sizes (a snapshot; call from the broker's event loop)."""
        c = self.counters
        dropped = (
            c.dropped_queue_full + c.dropped_offline_qos0 + c.dropped_too_large + c.dropped_expired
        )
        return {
            "connections_current": len(self.connections),
            "connections_total": c.connections_total,
            "clients_connected": len(self._clients),
            "messages_received": c.messages_received,
            "messages_sent": c.messages_sent,
            "bytes_received": c.bytes_received,
            "bytes_sent": c.bytes_sent,
            "messages_dropped": dropped,
            "dropped_queue_full": c.dropped_queue_full,
            "dropped_offline_qos0": c.dropped_offline_qos0,
            "dropped_too_large": c.dropped_too_large,
            "dropped_expired": c.dropped_expired,
            "retained_messages": self.retained.count,
            "subscriptions": self.index.count,
            "sessions": len(self.sessions),
            "queued_messages": sum(len(s.queue) for s in self.sessions.values()),
            "inflight_messages": sum(len(s.inflight) for s in self.sessions.values()),
            "protocol_errors": c.protocol_errors,
            "wills_published": c.wills_published,
            "wills_pending": len(self._pending_wills),
            "denied_connects": c.denied_connects,
            "denied_publishes": c.denied_publishes,
            "denied_subscribes": c.denied_subscribes,
        }

    def set_access(self, access: AccessTable | None) -> None:
        """Use ``access`` from now on (call on the broker's loop): connected identities the new
        table no longer knows are disconnected (0x87), and subscriptions it no longer allows are
        dropped. ``None`` turns authorization off for new connections."""
        self.access = access
        if access is None:
            return
        for connection in list(self.connections):
            old = connection.grants
            if old is None or connection.closing:
                continue
            grants = access.client(old.identity)
            if grants is None:
                connection.close(ReasonCode.NOT_AUTHORIZED)
                continue
            connection.grants = grants
            session = connection.session
            if session is None:
                continue
            for text, sub in list(session.subscriptions.items()):
                if not grants.may_subscribe(text):
                    del session.subscriptions[text]
                    self.index.remove(sub)
        logger.info(
            "access table replaced",
            extra={"event": "broker_access_reloaded", "identities": len(access)},
        )

    def drop_revoked(self) -> int:
        """Disconnect (0x87) every client whose certificate the CRL now lists (call on the
        broker's loop); how many. An unusable CRL disconnects nobody and is logged."""
        revocations = self.revocations
        if revocations is None:
            return 0
        try:
            revoked = revocations.serials()
        except SecurityError as err:
            logger.error("CRL not applied: %s", err, extra={"event": "broker_crl_unusable"})
            return 0
        dropped = 0
        for connection in list(self.connections):
            serial = connection.certificate_serial()
            if serial is not None and serial in revoked and not connection.closing:
                connection.close(ReasonCode.NOT_AUTHORIZED)
                dropped += 1
        logger.info(
            "revocations applied",
            extra={"event": "broker_crl_reloaded", "revoked": len(revoked), "dropped": dropped},
        )
        return dropped

    # --- used by connections ------------------------------------------------------------------

    def assign_client_id(self) -> str:
        return f"openfeeder-{uuid.uuid4().hex}"

    def connack_properties(self) -> Properties:
        """What the broker tells every MQTT v5 client in CONNACK (Maximum QoS absent: 2)."""
        return {
            P.RECEIVE_MAXIMUM: self.limits.receive_maximum,
            P.MAXIMUM_PACKET_SIZE: self.limits.max_packet_bytes,
            P.TOPIC_ALIAS_MAXIMUM: 0,
            P.RETAIN_AVAILABLE: 1,
            P.WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
            P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 0,
            P.SHARED_SUBSCRIPTION_AVAILABLE: 1,
        }

    def route(self, message: Message) -> None:
        """Deliver a published message to every matching subscription (and keep it if retained)."""
        if message.retain:
            self.retained.set(message)
        subs, groups = self.index.match(message.topic)
        if len(subs) == 1:
            sub = subs[0]
            if not (sub.no_local and sub.session is message.origin):
                qos = sub.qos if sub.qos < message.qos else message.qos
                sub.session.deliver(message, qos, message.retain and sub.retain_as_published)
        elif subs:
            self._deliver_merged(message, subs)
        for group in groups:
            member = group.pick()
            if member is not None:
                qos = member.qos if member.qos < message.qos else message.qos
                member.session.deliver(message, qos, message.retain and member.retain_as_published)

    @staticmethod
    def _deliver_merged(message: Message, subs: tuple[Subscription, ...]) -> None:
        """One copy per session: highest QoS of its matching subscriptions, retain if any keeps it."""
        merged: dict[Session, tuple[int, bool]] = {}
        origin = message.origin
        for sub in subs:
            session = sub.session
            if sub.no_local and session is origin:
                continue
            qos = sub.qos if sub.qos < message.qos else message.qos
            retain = message.retain and sub.retain_as_published
            previous = merged.get(session)
            if previous is not None:
                qos = max(qos, previous[0])
                retain = retain or previous[1]
            merged[session] = (qos, retain)
        for session, (qos, retain) in merged.items():
            session.deliver(message, qos, retain)

    def subscribe(self, connection: Connection, session: Session, packet: Subscribe) -> None:
        v5 = connection.v5
        if P.SUBSCRIPTION_IDENTIFIER in packet.properties:
            raise ProtocolError(
                "subscription identifiers are not supported",
                ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            )
        codes: list[int] = []
        replay: list[Subscription] = []
        grants = connection.grants
        for request in packet.requests:
            text = request.topic_filter
            parsed = parse_filter(text)
            if parsed is None:
                codes.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else 0x80)
                continue
            if grants is not None and not grants.may_subscribe(text):
                self.counters.denied_subscribes += 1
                codes.append(ReasonCode.NOT_AUTHORIZED if v5 else 0x80)
                logger.info(
                    "subscribe refused",
                    extra={
                        "event": "mqtt_subscribe_denied",
                        "client_id": connection.client_id,
                        "identity": grants.identity,
                        "topic": text,
                    },
                )
                continue
            group, levels = parsed
            if group is not None and request.no_local:
                raise protocol_error("No Local on a shared subscription", topic=text)
            sub = session.subscriptions.get(text)
            existed = sub is not None
            if sub is None:
                sub = Subscription(session, text, levels, group, request.qos)
                session.subscriptions[text] = sub
                self.index.add(sub)
            sub.qos = request.qos
            sub.no_local = request.no_local
            sub.retain_as_published = request.retain_as_published
            sub.retain_handling = request.retain_handling
            codes.append(request.qos)
            handling = request.retain_handling
            if group is None and (handling == 0 or (handling == 1 and not existed)):
                replay.append(sub)
        connection.write(encode(Suback(packet.packet_id, codes), version=connection.version))
        if not replay or self._loop is None:
            return
        now = self._loop.time()
        for sub in replay:
            for message in self.retained.match(sub.levels):
                if message.expires_at is not None and message.expires_at <= now:
                    self.retained.set(Message(message.topic, b"", 0, True))  # expired: forget it
                    continue
                session.deliver(message, min(message.qos, sub.qos), True)

    def unsubscribe(self, connection: Connection, session: Session, packet: Unsubscribe) -> None:
        codes: list[int] = []
        for text in packet.topic_filters:
            sub = session.subscriptions.pop(text, None)
            if sub is None:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
            else:
                self.index.remove(sub)
                codes.append(ReasonCode.SUCCESS)
        reply = Unsuback(packet.packet_id, codes if connection.v5 else [])
        connection.write(encode(reply, version=connection.version))

    def attach(
        self, connection: Connection, client_id: str, clean_start: bool, expiry_s: int
    ) -> tuple[Session, bool]:
        """Give ``connection`` its session (taking over from a connection with the same id)."""
        session = self.sessions.get(client_id)
        old = self._clients.get(client_id)
        if old is not None and old is not connection:
            old.close(ReasonCode.SESSION_TAKEN_OVER)
            self._detach(old)
            session = self.sessions.get(client_id)
        continues = session is not None and not clean_start
        pending = self._pending_wills.pop(client_id, None)
        if pending is not None:
            pending[0].cancel()
            if not continues:
                self._publish_will(pending[1], pending[2])
        if session is not None and clean_start:
            self._end_session(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, self.limits, self.counters)
            self.sessions[client_id] = session
        elif session.expiry_timer is not None:
            session.expiry_timer.cancel()
            session.expiry_timer = None
        session.expiry_s = expiry_s
        session.outlet = connection
        self._clients[client_id] = connection
        return session, present

    def connection_closed(self, connection: Connection) -> None:
        if connection.session is not None:
            self._detach(connection)

    def _detach(self, connection: Connection) -> None:
        session = connection.session
        connection.session = None
        if session is None:
            return
        client_id = session.client_id
        if self._clients.get(client_id) is connection:
            del self._clients[client_id]
        if session.outlet is connection:
            session.outlet = None
        will = connection.will
        connection.will = None
        if self._stopping:
            return
        logger.debug(
            "client disconnected",
            extra={
                "event": "mqtt_disconnect",
                "client_id": client_id,
                "peer": connection.peer,
                "will": will is not None,
            },
        )
        if will is not None:
            delay_s = min(connection.will_delay_s, session.expiry_s)
            if delay_s <= 0 or self._loop is None:
                self._publish_will(will, connection.will_expiry_s)
            else:
                handle = self._loop.call_later(delay_s, self._fire_will, client_id)
                self._pending_wills[client_id] = (handle, will, connection.will_expiry_s)
        if session.expiry_s == 0:
            self._end_session(session)
        elif session.expiry_s != NEVER_EXPIRES and self._loop is not None:
            session.expiry_timer = self._loop.call_later(session.expiry_s, self._expire, session)

    def _end_session(self, session: Session) -> None:
        for sub in session.subscriptions.values():
            self.index.remove(sub)
        session.subscriptions.clear()
        session.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        pending = self._pending_wills.pop(session.client_id, None)
        if pending is not None:
            pending[0].cancel()
            self._publish_will(pending[1], pending[2])

    def _expire(self, session: Session) -> None:
        session.expiry_timer = None
        if session.outlet is None and self.sessions.get(session.client_id) is session:
            self._end_session(session)

    def _fire_will(self, client_id: str) -> None:
        pending = self._pending_wills.pop(client_id, None)
        if pending is not None:
            self._publish_will(pending[1], pending[2])

    def _publish_will(self, will: Message, expiry_s: int | None) -> None:
        if expiry_s is not None and self._loop is not None:
            will.expires_at = self._loop.time() + expiry_s
        self.counters.wills_published += 1
        self.route(will)


class BrokerThread:
    """A :class:`Broker` running in a background thread with its own event loop.

    ``start()`` returns once the broker listens (or raises what ``Broker.start`` raised);
    ``stop()`` stops it and joins the thread. Also a context manager.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        limits: BrokerLimits = DEFAULT_LIMITS,
        password_check: PasswordCheck | None = None,
        ssl_context: ssl.SSLContext | None = None,
        access: AccessTable | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self._broker = Broker(
            host=host,
            port=port,
            limits=limits,
            password_check=password_check,
            ssl_context=ssl_context,
            access=access,
            revocations=revocations,
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def broker(self) -> Broker:
        """The broker (touch it only from its own thread, except ``host`` and ``port``)."""
        return self._broker

    @property
    def host(self) -> str:
        return self._broker.host

    @property
    def port(self) -> int:
        return self._broker.port

    def start(self, *, timeout_s: float = 10.0) -> BrokerThread:
        if self._thread is not None:
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="openfeeder-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"broker did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join(timeout_s)
            self._thread = None
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self._broker.start()
        except BaseException as err:
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._broker.stop()

    def stats(self, *, timeout_s: float = 5.0) -> dict[str, int]:
        """The broker's :meth:`Broker.stats`, read on its own loop."""
        loop = self._loop
        if loop is None or self._thread is None:
            return self._broker.stats()

        async def read() -> dict[str, int]:
            return self._broker.stats()

        return asyncio.run_coroutine_threadsafe(read(), loop).result(timeout_s)

    def set_access(self, access: AccessTable | None, *, timeout_s: float = 5.0) -> None:
        """:meth:`Broker.set_access` on the broker's own loop (from any thread)."""
        loop = self._loop
        if loop is None or self._thread is None:
            self._broker.access = access
            return

        async def apply() -> None:
            self._broker.set_access(access)

        asyncio.run_coroutine_threadsafe(apply(), loop).result(timeout_s)

    def drop_revoked(self, *, timeout_s: float = 5.0) -> int:
        """:meth:`Broker.drop_revoked` on the broker's own loop (from any thread)."""
        loop = self._loop
        if loop is None or self._thread is None:
            return 0

        async def apply() -> int:
            return self._broker.drop_revoked()

        return asyncio.run_coroutine_threadsafe(apply(), loop).result(timeout_s)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        thread = self._thread
        if thread is None:
            return
        loop = self._loop
        event = self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
        thread.join(timeout_s)
        self._thread = None
        self._loop = None

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def serve(
    host: str,
    port: int,
    stop_event: asyncio.Event,
    *,
    limits: BrokerLimits = DEFAULT_LIMITS,
    password_check: PasswordCheck | None = None,
    ssl_context: ssl.SSLContext | None = None,
    access: AccessTable | None = None,
    revocations: RevocationList | None = None,
    on_listening: Callable[[Broker], None] | None = None,
) -> dict[str, int]:
    """Run a broker until ``stop_event`` is set; returns its final :meth:`Broker.stats`."""
    broker = Broker(
        host=host,
        port=port,
        limits=limits,
        password_check=password_check,
        ssl_context=ssl_context,
        access=access,
        revocations=revocations,
    )
    await broker.start()
    try:
        if on_listening is not None:
            on_listening(broker)
        await stop_event.wait()
    finally:
        await broker.stop()
    return broker.stats()


def run_broker(
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    limits: BrokerLimits = DEFAULT_LIMITS,
    password_check: PasswordCheck | None = None,
    ssl_context: ssl.SSLContext | None = None,
    access: AccessTable | None = None,
    revocations: RevocationList | None = None,
    on_listening: Callable[[Broker], None] | None = None,
) -> dict[str, int]:
    """Run a broker in the foreground until SIGINT or SIGTERM; returns its final stats."""

    async def main() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, stop_event.set)
        try:
            return await serve(
                host,
                port,
                stop_event,
                limits=limits,
                password_check=password_check,
                ssl_context=ssl_context,
                access=access,
                revocations=revocations,
                on_listening=on_listening,
            )
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    return asyncio.run(main())
