"""The network emulator: an MQTT-aware TCP relay between devices and a broker that impairs traffic.

Devices connect to the emulator instead of the broker (``emulator.url``); for every accepted
connection the emulator opens one to the real broker and relays both directions. Each direction
is a pipe: a reader that frames the stream into MQTT packets (``frames``), classifies each packet,
asks the rules for its impairment and the connection's :class:`~openfeeder.sim.netem.link.LinkState`
for its release time, and a sender that writes each packet, byte for byte as it came, when its time
has come. Because the platform's own clients and brokers are on both ends, the impairments act on
the real messages, with the real protocols reacting (QoS 1 acknowledgements wait, keepalives stretch,
a reconnect happens when a device's link is cut).

Like :class:`~openfeeder.iot.broker.BrokerThread`, :class:`NetworkEmulator` runs its own event loop
on its own thread, so synchronous tests, the twin and the demo can use it alike. Rules may be
changed from any thread while traffic flows (a scenario event raises the congestion mid-run): the
rule table is replaced as a whole under a lock and the loop picks up the new table at its next
packet.

Closing: when either side closes (or resets) its connection, the packets already on their way in
that direction are still delivered at their release times (so a DISCONNECT reaches the broker and
no last will fires for a clean close), then both sides are closed. ``stop()`` closes everything at
once. A direction whose queue holds more than ``max_queued_bytes`` stops reading, so a slow
emulated link pushes back on the sender through TCP as a real one does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Final
from urllib.parse import urlsplit

from openfeeder.errors import ConfigError
from openfeeder.sim.netem.config import (
    Direction,
    EffectiveImpairment,
    Impairment,
    NetworkConfig,
    RuleKey,
    resolve,
)
from openfeeder.sim.netem.connection import RelayedConnection, peer_name
from openfeeder.sim.netem.link import DEFAULT_CONGESTION_MODEL, CongestionModel
from openfeeder.sim.netem.stats import NetemCounters, NetemStats

__all__ = ["NetworkEmulator"]

_LOG = logging.getLogger(__name__)

_CACHE_LIMIT: Final = 16384


class NetworkEmulator:
    """An emulated network in front of the MQTT broker at ``upstream_host:upstream_port``.

    ``seed`` makes every random draw reproducible (each connection and direction draws from its own
    generator seeded with the seed and the connection's number); ``config`` gives the initial rules
    (and the seed when ``seed`` is None). ``congestion_model`` maps congestion levels to queueing
    delay and loss (default: calibrated to seed 003, see ``link.CongestionModel``).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
        config: NetworkConfig | None = None,
        congestion_model: CongestionModel = DEFAULT_CONGESTION_MODEL,
        connect_timeout_s: float = 10.0,
        max_queued_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self.seed = seed if seed is not None else (config.seed if config and config.seed else 0)
        self.congestion_model = congestion_model
        self.connect_timeout_s = connect_timeout_s
        self.max_queued_bytes = max_queued_bytes
        self._rules_lock = threading.Lock()
        self._rule_state: tuple[int, Mapping[RuleKey, Impairment]] = (
            0,
            MappingProxyType(dict(config.rules) if config else {}),
        )
        self._cache_version = -1
        self._cache: dict[tuple[str, str | None, Direction], EffectiveImpairment] = {}
        self.topic_cache: dict[str, tuple[str, str | None]] = {}
        """Topic -> (class, device) classification, shared by the connections (loop only)."""
        self.counters = NetemCounters()
        self._connection_numbers = itertools.count(1)
        self._connections: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._port = 0

    @classmethod
    def for_broker(cls, url: str, **options: object) -> NetworkEmulator:
        """An emulator in front of the broker at ``mqtt://host:port`` (other options as the
        constructor's)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ConfigError(f"{url!r}: the upstream must be an mqtt://host:port URL (no TLS)")
        return cls(parts.hostname, parts.port or 1883, **options)  # type: ignore[arg-type]

    # --- lifecycle (any thread) ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port devices connect to (known once started)."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the emulator; ConfigError before :meth:`start`."""
        if not self._port:
            raise ConfigError("the network emulator is not started: it has no URL yet")
        return f"mqtt://{self.listen_host}:{self._port}"

    def start(self, *, timeout_s: float = 10.0) -> str:
        """Listen and relay on a thread of its own; returns :attr:`url` once listening."""
        if self._thread is not None:
            return self.url
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="openfeeder-netem", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"network emulator did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join(timeout_s)
            self._thread = None
            error = self._error
            raise ConfigError(
                f"network emulator cannot listen on {self.listen_host}:{self._listen_port}: {error}"
            ) from error
        return self.url

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Close every relayed connection (both sides) and the listener; join the thread."""
        thread = self._thread
        if thread is None:
            return
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
        thread.join(timeout_s)
        self._thread = None
        self._loop = None

    def __enter__(self) -> NetworkEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- rules (any thread) --------------------------------------------------------------------

    def set_impairment(
        self,
        impairment: Impairment,
        *,
        message_class: str | None = None,
        device_id: str | None = None,
        direction: Direction | None = None,
    ) -> None:
        """Replace the rule for this class / device / direction (None: any)."""
        key = RuleKey(message_class, device_id, direction)
        self._change({key: impairment}, merge=False)

    def update_impairment(
        self,
        impairment: Impairment,
        *,
        message_class: str | None = None,
        device_id: str | None = None,
        direction: Direction | None = None,
    ) -> None:
        """Overlay the fields ``impairment`` sets onto the rule at this key (a scenario event)."""
        key = RuleKey(message_class, device_id, direction)
        self._change({key: impairment}, merge=True)

    def remove_impairment(
        self,
        *,
        message_class: str | None = None,
        device_id: str | None = None,
        direction: Direction | None = None,
    ) -> None:
        """Remove the rule at this key (no error if there is none)."""
        key = RuleKey(message_class, device_id, direction)
        with self._rules_lock:
            version, rules = self._rule_state
            if key in rules:
                table = dict(rules)
                del table[key]
                self._rule_state = (version + 1, MappingProxyType(table))
        _LOG.info("netem rule removed", extra={"event": "rule_removed", "rule": _key_dict(key)})

    def apply(self, config: NetworkConfig) -> None:
        """Replace every rule with ``config``'s (the seed stays)."""
        with self._rules_lock:
            version, _ = self._rule_state
            self._rule_state = (version + 1, MappingProxyType(dict(config.rules)))
        _LOG.info(
            "netem rules replaced (%d rules)",
            len(config.rules),
            extra={"event": "rules_applied", "rules": len(config.rules)},
        )

    def clear(self) -> None:
        """Remove every rule: the network becomes transparent."""
        self.apply(NetworkConfig(rules={}))

    def rules(self) -> Mapping[RuleKey, Impairment]:
        """The current rules (a read-only snapshot)."""
        return self._rule_state[1]

    def effective_impairment(
        self, message_class: str, *, device_id: str | None, direction: Direction
    ) -> EffectiveImpairment:
        """What a packet of this class on this device's link in this direction gets now."""
        return resolve(
            self._rule_state[1],
            message_class=message_class,
            device_id=device_id,
            direction=direction,
        )

    def _change(self, changes: Mapping[RuleKey, Impairment], *, merge: bool) -> None:
        with self._rules_lock:
            version, rules = self._rule_state
            table = dict(rules)
            for key, rule in changes.items():
                table[key] = table[key].overlay(rule) if merge and key in table else rule
            self._rule_state = (version + 1, MappingProxyType(table))
        for key, rule in changes.items():
            _LOG.info(
                "netem rule %s: %s %s",
                "updated" if merge else "set",
                _key_dict(key),
                rule.to_dict(),
                extra={"event": "rule_set", "rule": _key_dict(key), "impairment": rule.to_dict()},
            )

    # --- statistics (any thread) ---------------------------------------------------------------

    def stats(self) -> NetemStats:
        """Counters per class and direction since the start (or the last :meth:`reset_stats`)."""
        return self.counters.snapshot()

    def reset_stats(self) -> None:
        """Zero the packet counters (e.g. between the phases of a measurement)."""
        self.counters.reset()

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._handle, self.listen_host, self._listen_port, reuse_address=True
            )
        except OSError as err:
            self._error = err
            self._ready.set()
            return
        self._port = int(server.sockets[0].getsockname()[1])
        _LOG.info(
            "netem listening on %s:%d, relaying to %s:%d",
            self.listen_host,
            self._port,
            self.upstream_host,
            self.upstream_port,
            extra={
                "event": "started",
                "port": self._port,
                "upstream": f"{self.upstream_host}:{self.upstream_port}",
            },
        )
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            while self._connections:  # a handler accepted just now registers itself late
                tasks = list(self._connections)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._connections.difference_update(tasks)
            await server.wait_closed()
            _LOG.info("netem stopped", extra={"event": "stopped", "port": self._port})

    def impairment_for(
        self, message_class: str, device_id: str | None, direction: Direction
    ) -> EffectiveImpairment:
        """The cached effective impairment (event loop only; rebuilt when the rules change)."""
        version, rules = self._rule_state
        if version != self._cache_version or len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
            self._cache_version = version
        key = (message_class, device_id, direction)
        found = self._cache.get(key)
        if found is None:
            found = resolve(
                rules, message_class=message_class, device_id=device_id, direction=direction
            )
            self._cache[key] = found
        return found

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        """One device connection (the ``start_server`` callback, a task of its own)."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        number = next(self._connection_numbers)
        peer = peer_name(client_writer)
        try:
            await self._relay(number, peer, client_reader, client_writer)
        except asyncio.CancelledError:
            # stop() cancels the connection tasks; both sides are closed in _relay. The callback
            # task must end normally: asyncio's start_server logs a cancelled one as an error.
            _LOG.debug("netem connection %d cancelled by stop", number, extra={"peer": peer})
        finally:
            # no await here: a stop() arriving while a finished connection closes must not turn
            # into a cancelled callback task; the loop completes the close on its next turn
            client_writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _relay(
        self,
        number: int,
        peer: str,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        opener = asyncio.ensure_future(
            asyncio.open_connection(self.upstream_host, self.upstream_port)
        )
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.shield(opener), self.connect_timeout_s
            )
        except asyncio.CancelledError:
            _abandon(opener)  # stop() during the connect: close the socket if it got one
            raise
        except (OSError, TimeoutError) as err:
            _abandon(opener)
            _LOG.warning(
                "netem: broker %s:%d unreachable for %s: %s",
                self.upstream_host,
                self.upstream_port,
                peer,
                err,
                extra={"event": "upstream_unreachable", "peer": peer},
            )
            return
        connection = RelayedConnection(
            self,
            number,
            peer,
            (client_reader, client_writer),
            (upstream_reader, upstream_writer),
        )
        self.counters.connection_opened()
        try:
            await connection.run()
        finally:
            self.counters.connection_closed()


def _abandon(opener: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    """Give up an upstream connect: cancel it, or close what it opened once it is done."""
    opener.cancel()

    def close_opened(
        done: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    ) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result()[1].close()

    opener.add_done_callback(close_opened)


def _key_dict(key: RuleKey) -> dict[str, str | None]:
    return {
        "message_class": key.message_class,
        "device_id": key.device_id,
        "direction": key.direction.value if key.direction else None,
    }
