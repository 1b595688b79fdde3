"""The meter agent: self-configuration, the measurement loop, store-and-forward, plug-ins, health.

``MeterAgent(settings, device_id=..., source=..., catalog=..., clock=...)``; :meth:`MeterAgent.start`
returns at once, :meth:`MeterAgent.stop` shuts down cleanly. Two threads of its own (plus paho's
network thread per broker connection, one per algorithm, and the optional command and pacer threads
below):

- **control**: boots against the catalog (``POST /v1/devices/boot``; retried with back-off 0.5 s ..
  30 s while the catalog is unreachable; with settings cached from an earlier run in
  ``<state_dir>/<device>/settings.json`` the agent starts on those meanwhile), then polls every
  ``poll_interval_s`` with its ``config_version`` as ETag (which also keeps it marked connected) and
  applies new settings from a poll or from a ``ConfigChange`` pushed on its retained config topic:
  rates, broker endpoints, subscriptions, and the algorithm set (hot swap, see
  :mod:`openfeeder.iot.agent.algorithm_host`);
- **loop**: every ``reporting_interval_s`` of *domain* time (tick ``k`` at ``t0 + k * interval`` in
  ``clock.now_ns()``, so no drift accumulates; ticks missed by more than one interval are skipped
  and counted), acquire -> compute -> append to the on-disk buffer -> publish from the buffer ->
  hand the readings to the algorithms -> ``on_tick``. It also applies committed marks,
  re-publishes the birth after each reconnect, and runs the algorithms' deadline watchdog. It never
  waits for the control thread, so a swap or a slow catalog never delays a measurement.

Identity (a secured installation, ``[security] ca_file``): before it boots, the control thread
makes sure the device has its X.509 certificate: the one in ``<state_dir>/<device>/device.crt`` if
still valid, otherwise it enrols with the catalog (CSR + the enrolment secret, or waiting for an
operator's approval; state ``enrolling``; :mod:`openfeeder.iot.agent.identity`). Its broker
connections then use mutual TLS with that certificate. A device given ``cert_file`` / ``key_file``
uses those instead. With payload protection (``[payload_protection] enabled``) its links seal and
open payloads: with keys from the catalog (no ``key_bundle``) the enrolment also brings its
key-encryption key and the agent fetches its key bundle at boot, every ``KEY_REFRESH_S`` and when a
message names a key it lacks (:mod:`openfeeder.iot.agent.payload_keys`).

Domain time: the agent reads and paces time through a :class:`~openfeeder.sim.clock.Clock`
(:class:`~openfeeder.sim.clock.RealClock` by default, as in the field). Stamps, tick times and
command deadlines are domain time; the loop waits the remaining domain time divided by
``clock.speed`` in wall time, so in a twin accelerated 10x a meter reports 10x as often. A stepped
clock (speed infinite) has no wall-time rate: a **pacer** thread sleeps on the clock until the next
tick's time and wakes the loop, so the meter reports exactly when the twin advances time to it (a
twin that wants every interval reported advances one interval at a time and waits for
:attr:`MeterAgent.last_tick_ns`). Network timeouts, polls and plug-in deadlines stay in wall time:
they are about the machine, not the grid.

Commands: a device with a :class:`CommandHandler` (a switch, a regulator of the twin) gets the
commands addressed to it, once per ``command_id`` and only before their ``deadline_ns`` (domain
time; late ones are answered REJECTED "expired"), on a **command** thread of its own, one at a time
in arrival order: handling may take the operating time of a mechanism and must never hold up the
network thread. The handler answers through a :class:`CommandContext` (acks and events on grid_ops).
Without a handler every command is answered REJECTED (a meter has nothing to operate).

Seq: the next measurement seq is persisted in the buffer; at boot the agent waits up to
``retained_wait_s`` for the historian's retained ``Committed`` mark and continues at
``max(stored next seq, mark + 1)``.

Hosted agents: an agent given an :class:`~openfeeder.iot.agent.hosting.AgentHost` has no loop
thread and no network threads of its own. The host runs its loop iterations (the same work, in the
same order, one iteration of an agent at a time) and its two broker connections on one shared
thread, so that thousands of agents fit in a process: each keeps its own client ids, sessions,
last wills, buffer, settings, plug-ins and command thread. A hosted agent's first tick is put on
the host's tick grid (a multiple of ``tick_grid_s`` in domain time) so that agents due together
are measured together (:class:`~openfeeder.iot.agent.source.SourceBatch`).

Health: a retained ``Status`` birth (ONLINE, firmware, capabilities) on both brokers after every
connect, the last will ``Status(OFFLINE)`` per connection, a ``Status(OFFLINE, reason="shutdown")``
on a clean stop, and :meth:`MeterAgent.stats`. The MQTT side (connections, subscriptions, what is
published where) is :mod:`openfeeder.iot.agent.links`; the buffer :mod:`openfeeder.iot.agent.store`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from pydantic import ValidationError

from openfeeder import __version__
from openfeeder.config import Settings
from openfeeder.errors import ConfigError, SecurityError
from openfeeder.iot.agent.algorithm_host import AlgorithmHost
from openfeeder.iot.agent.identity import (
    Enroller,
    enrol_device,
    enrolment_secret,
    needs_enrolment,
)
from openfeeder.iot.agent.links import AgentLinks
from openfeeder.iot.agent.metering import (
    MeteringLimits,
    compute,
    encode_measurement,
    to_readings,
)
from openfeeder.iot.agent.payload_keys import (
    BUNDLE_FILE,
    CatalogKeys,
    KeySource,
    catalog_delivers_keys,
)
from openfeeder.iot.agent.plugins import DEFAULT_CALL_DEADLINE_S, PluginStats
from openfeeder.iot.agent.source import DataSource
from openfeeder.iot.agent.store import (
    DEFAULT_CHECKPOINT_INTERVAL_S,
    DroppedRange,
    Forwarder,
    MeasurementStore,
)
from openfeeder.iot.agent.trust import package_trust
from openfeeder.iot.device_settings import (
    AlgorithmRef,
    BootRequest,
    DeviceSettings,
    Location,
)
from openfeeder.iot.protection import MessageProtection, protection_from_settings
from openfeeder.iot.schema import (
    AckStatus,
    Command,
    Quality,
    Reading,
    Severity,
    Unit,
)
from openfeeder.iot.topics import (
    BrokerContext,
    command_filter,
    committed_filter,
    config_filter,
    topology_filter,
)
from openfeeder.security.tls import TlsFiles, tls_files_from
from openfeeder.sim.clock import NS_PER_S, Clock, RealClock

if TYPE_CHECKING:
    from openfeeder.iot.agent.hosting import AgentHost

__all__ = [
    "DEFAULT_CAPABILITIES",
    "AgentState",
    "AgentStats",
    "CommandContext",
    "CommandHandler",
    "MeterAgent",
    "SettingsSource",
    "TickHook",
]

_LOG = logging.getLogger(__name__)

DEFAULT_CAPABILITIES: Final = ("waveforms", "algorithms", "store_and_forward")
FIRMWARE: Final = f"openfeeder-agent {__version__}"
_BOOT_BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
_MAX_WAIT_S: Final = 0.5
"""Longest sleep of the loop: bounds how late a reconnect or a mark is noticed."""
KEY_REFRESH_S: Final = 600.0
"""How often a device whose payload keys come from the catalog fetches its bundle again (its
own sealing follows a rotation within the overlap; a key it cannot open fetches at once)."""
COMMAND_QUEUE_MAX: Final = 64
"""Commands waiting for the command thread; more are answered REJECTED (busy), not queued
without bound behind a handler that is slow or stuck."""

TickHook = Callable[[int], None]
"""Called on the loop thread after each tick with its domain time (ns); must be quick."""


class SettingsSource(Protocol):
    """The device catalog as a meter uses it (:class:`openfeeder.iot.catalog_client.CatalogClient`)."""

    def boot(self, request: BootRequest) -> DeviceSettings: ...

    def poll(self, device_id: str, config_version: int) -> DeviceSettings | None: ...

    def download_algorithm(self, ref: AlgorithmRef, *, partial: Path | None = None) -> bytes: ...


class AgentState(StrEnum):
    NEW = "new"
    ENROLLING = "enrolling"  # waiting for its certificate (an operator's approval)
    BOOTING = "booting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # could not start (the log says why), e.g. its buffer is held by another


@dataclass(frozen=True, slots=True)
class AgentStats:
    """A snapshot of a meter agent's health counters."""

    device_id: str
    state: AgentState
    config_version: int | None
    next_seq: int
    """The seq the next measurement will carry."""
    produced: int
    """Measurements produced (and buffered) since start."""
    buffered: int
    """Messages in the on-disk buffer (not yet confirmed by the historian)."""
    in_flight: int
    """Published, not yet acknowledged by the broker."""
    published: int
    committed_seq: int | None
    resends: int
    dropped: int
    """Messages dropped from a full buffer (all time, persisted)."""
    skipped_ticks: int
    source_errors: int
    rejected: int
    """Incoming messages refused by the codec."""
    connected: Mapping[str, bool]
    plugins: tuple[PluginStats, ...]


class CommandContext:
    """What a :class:`CommandHandler` may do while it handles one command (from any thread).

    Acks and events go out on the grid_ops broker through the agent's own connection, numbered with
    the agent's other acks and events. ``clock`` is the agent's domain clock and ``stop`` is set when
    the agent stops, so a handler that waits for a mechanism waits with
    ``context.clock.sleep(duration_s, context.stop)`` and gives up when that returns False.
    """

    __slots__ = ("_links", "clock", "command", "device_id", "stop")

    def __init__(
        self, command: Command, *, links: AgentLinks, clock: Clock, stop: threading.Event
    ) -> None:
        self.command = command
        self.device_id = links.device_id
        self.clock = clock
        self.stop = stop
        self._links = links

    def ack(self, status: AckStatus, detail: str = "") -> None:
        """Acknowledge the command: ACCEPTED (started), then DONE or FAILED; or REJECTED."""
        _LOG.info(
            "%s: command %s %s%s",
            self.device_id,
            self.command.command_id,
            status,
            f": {detail}" if detail else "",
            extra={
                "device_id": self.device_id,
                "command_id": self.command.command_id,
                "ack_status": str(status),
            },
        )
        self._links.publish_ack(self.command.command_id, status, detail)

    def event(
        self, kind: str, severity: Severity, message: str, values: Sequence[Reading] = ()
    ) -> None:
        """Publish an ``Event`` about this device (e.g. a switch's new position)."""
        self._links.emit_event(kind, severity, message, values)


class CommandHandler(Protocol):
    """What a device does with the commands addressed to it (a switch operates its mechanism)."""

    def handle_command(self, command: Command, context: CommandContext) -> None:
        """Act on ``command`` and answer through ``context``.

        Runs on the agent's command thread, one command at a time, so it may block for the
        operating time of a mechanism (in domain time, see :class:`CommandContext`). The answer is
        the handler's: ACCEPTED then DONE or FAILED, a REJECTED, or none at all (a mechanism that is
        stuck answers nothing). An exception is logged and answered FAILED.
        """
        ...


@dataclass(frozen=True, slots=True)
class _Pending:
    settings: DeviceSettings
    origin: str


class MeterAgent:
    """A smart meter of seed 003 in software (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        device_id: str,
        source: DataSource,
        catalog: SettingsSource,
        location: Location | None = None,
        device_type: str = "meter",
        capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
        limits: MeteringLimits | None = None,
        retained_wait_s: float = 1.0,
        call_deadline_s: float = DEFAULT_CALL_DEADLINE_S,
        clock: Clock | None = None,
        command_handler: CommandHandler | None = None,
        on_tick: TickHook | None = None,
        host: AgentHost | None = None,
    ) -> None:
        """``clock``: domain time (default: the wall clock); ``command_handler``: who acts on
        commands (None: every command is rejected); ``on_tick``: called after each tick;
        ``host``: the shared thread that runs this agent's loop and connections (None: threads of
        its own)."""
        self.device_id = device_id
        self._agent_host = host
        self._settings = settings
        self._source = source
        self._catalog = catalog
        self._boot_request = BootRequest(
            device_id=device_id,
            device_type=device_type,
            firmware=FIRMWARE,
            capabilities=tuple(capabilities),
            location=location,
        )
        self._limits = limits
        self._retained_wait_s = retained_wait_s
        self._clock: Clock = clock if clock is not None else RealClock()
        self._command_handler = command_handler
        self._on_tick = on_tick
        self._last_tick_ns: int | None = None
        self._dir = settings.agent.state_dir / device_id
        self._state = AgentState.NEW
        self._current: DeviceSettings | None = None
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._wake = threading.Event()
        self._control_queue: queue.Queue[_Pending | None] = queue.Queue()  # None: wake up
        self._boot_pending = False
        self._control_thread = threading.Thread(
            target=self._control_main, name=f"agent-{device_id}", daemon=True
        )
        self._loop_thread = (
            threading.Thread(target=self._loop_main, name=f"agent-loop-{device_id}", daemon=True)
            if host is None
            else None
        )
        self._commands: queue.Queue[Command | None] = queue.Queue(COMMAND_QUEUE_MAX)
        self._command_thread = (
            threading.Thread(target=self._command_main, name=f"agent-cmd-{device_id}", daemon=True)
            if command_handler is not None
            else None
        )
        # the pacer wakes the loop when a stepped clock (no wall-time rate) reaches the next tick
        self._next_tick_ns = 0
        self._scheduled = threading.Event()
        self._pacer_thread = (
            threading.Thread(target=self._pacer_main, name=f"agent-pace-{device_id}", daemon=True)
            if math.isinf(self._clock.speed)
            else None
        )
        self._links = AgentLinks(
            settings.brokers,
            device_id=device_id,
            firmware=FIRMWARE,
            capabilities=self._boot_request.capabilities,
            clock_ns=self._clock.now_ns,
            on_committed=self._on_committed,
            on_config=lambda new: self._control_queue.put(_Pending(new, "push")),
            route=self._route,
            on_monitoring_ack=self._on_monitoring_ack,
            on_command=self._enqueue_command if command_handler is not None else None,
            network=host.network if host is not None else None,
        )
        self._store: MeasurementStore | None = None
        self._forwarder: Forwarder | None = None
        self._mark_lock = threading.Lock()
        self._pending_mark: int | None = None
        self._mark_seen = threading.Event()
        self._awaiting_acks = False
        self._host = AlgorithmHost(
            device_id=device_id,
            root=self._dir,
            download=catalog.download_algorithm,
            on_outputs=lambda runner, readings, t_ns: self._links.publish_outputs(
                runner.name, runner.version, readings, t_ns
            ),
            emit_event=self._links.emit_event,
            deadline_s=call_deadline_s,
            trust=package_trust(settings.access),
            on_attention=lambda: self._control_queue.put(None),
        )
        self.tls_files: TlsFiles | None = None
        """The certificate, key and CA of the broker connections (None: not secured)."""
        self.payload_keys: CatalogKeys | None = None
        """The payload keys the catalog delivers (None: protection off, or keys from files)."""
        self._keys_fetched = 0.0
        self.produced = 0
        self.skipped_ticks = 0
        self.source_errors = 0

    # -- public API ----------------------------------------------------------------------------

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def source(self) -> DataSource:
        """Where the agent's measurements come from."""
        return self._source

    @property
    def clock(self) -> Clock:
        """The domain clock the agent stamps and paces by."""
        return self._clock

    @property
    def last_tick_ns(self) -> int | None:
        """Domain time of the latest completed tick (measurement buffered and handed to the
        publisher, ``on_tick`` run; None before the first): a twin stepping its clock waits for
        its meters to reach a step before taking the next."""
        return self._last_tick_ns

    @property
    def device_settings(self) -> DeviceSettings | None:
        """The settings in force (None before the first boot)."""
        return self._current

    def start(self) -> None:
        """Boot and run in the background; returns at once (see :meth:`wait_running`)."""
        if self._state is not AgentState.NEW:
            raise RuntimeError(f"agent {self.device_id} was already started")
        self._state = AgentState.BOOTING
        if self._command_thread is not None:
            self._command_thread.start()
        self._control_thread.start()

    def wait_running(self, timeout_s: float) -> bool:
        """True once configured and measuring (False after ``timeout_s``)."""
        return self._running.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop measuring, stop the algorithms, publish the shutdown status, disconnect."""
        if self._state in (AgentState.NEW, AgentState.STOPPED):
            self._state = AgentState.STOPPED
            return
        failed = self._state is AgentState.FAILED
        self._state = AgentState.STOPPING
        self._stopping.set()
        self._wake.set()
        self._scheduled.set()
        self._control_queue.put(None)
        self._wake_command_thread()
        self._control_thread.join(timeout_s)
        if self._agent_host is not None:
            self._agent_host.detach(self)
        for thread in (self._loop_thread, self._pacer_thread, self._command_thread):
            if thread is not None and thread.is_alive():
                thread.join(timeout_s)
        self._host.stop_all()
        self._links.close()
        if self._store is not None:
            self._store.close()
        self._state = AgentState.FAILED if failed else AgentState.STOPPED
        _LOG.info("agent %s stopped", self.device_id, extra={"device_id": self.device_id})

    def stats(self) -> AgentStats:
        store, forwarder = self._store, self._forwarder
        current = self._current
        return AgentStats(
            device_id=self.device_id,
            state=self._state,
            config_version=current.config_version if current is not None else None,
            next_seq=store.next_seq if store is not None else 0,
            produced=self.produced,
            buffered=store.count if store is not None else 0,
            in_flight=forwarder.stats().in_flight if forwarder is not None else 0,
            published=forwarder.published if forwarder is not None else 0,
            committed_seq=store.committed_seq if store is not None else None,
            resends=forwarder.resends if forwarder is not None else 0,
            dropped=store.dropped_total if store is not None else 0,
            skipped_ticks=self.skipped_ticks,
            source_errors=self.source_errors,
            rejected=self._links.rejected,
            connected=self._links.connection_states,
            plugins=self._host.stats(),
        )

    def emit_event(
        self, kind: str, severity: Severity, message: str, values: Sequence[Reading] = ()
    ) -> None:
        """Publish an ``Event`` about this meter on the grid_ops broker (any thread)."""
        self._links.emit_event(kind, severity, message, values)

    # -- control thread ------------------------------------------------------------------------

    def _control_main(self) -> None:
        try:
            if not self._establish_identity():
                return
            settings = self._boot()
            if settings is None or self._stopping.is_set():
                return
            self._activate(settings)
            self._control_loop()
        except SecurityError as err:  # no identity (rejected, unusable files): it cannot run
            _LOG.error(
                "agent %s cannot start: %s",
                self.device_id,
                err,
                extra={"device_id": self.device_id},
            )
            self._state = AgentState.FAILED
        except Exception:  # the agent must report, not vanish silently
            _LOG.exception("agent %s failed", self.device_id, extra={"device_id": self.device_id})
            if not self._running.is_set():
                self._state = AgentState.FAILED

    def _establish_identity(self) -> bool:
        """Secured: the certificate of the broker connections, stored or enrolled now (see the
        module docstring); False when stopped while waiting for it."""
        security = self._settings.security
        keys_from_catalog = catalog_delivers_keys(self._settings.payload_protection)
        kek: bytes | None = None
        if security.ca_file is None or not needs_enrolment(security):
            if keys_from_catalog:
                raise ConfigError(
                    f"{self.device_id}: [payload_protection] is enabled without key_bundle and "
                    "kek_file, so the keys come from the catalog with an enrolled certificate: "
                    "set [security] ca_file without cert_file, or give the issued bundle files"
                )
            files = tls_files_from(security)
        else:
            if not isinstance(self._catalog, Enroller):
                raise ConfigError(
                    f"{self.device_id}: [security] ca_file is set without cert_file, so the "
                    "device enrols, but its catalog client has no enrolment calls"
                )

            def pending() -> None:
                self._state = AgentState.ENROLLING

            identity = enrol_device(
                self._catalog,
                self.device_id,
                self._dir,
                ca_file=security.ca_file,
                secret=enrolment_secret(security.enrolment_secret_file),
                min_version=security.tls_min_version,
                stop=self._stopping,
                on_pending=pending,
                want_kek=keys_from_catalog,
            )
            if identity is None:
                return False
            files = identity.files
            kek = identity.kek
            if self._state is AgentState.ENROLLING:
                self._state = AgentState.BOOTING
        if files is not None:
            self._links.tls = files.client_context()
        self.tls_files = files
        self._links.protection = self._payload_protection(kek)
        return True

    def _payload_protection(self, kek: bytes | None) -> MessageProtection | None:
        """The device's payload protection: keys from the catalog (opened with ``kek``), from
        the issued bundle files, or None when protection is off."""
        settings = self._settings.payload_protection
        if kek is not None:
            catalog = self._catalog
            if not isinstance(catalog, KeySource):
                raise ConfigError(
                    f"{self.device_id}: payload keys come from the catalog, but its catalog "
                    "client cannot fetch them"
                )
            self.payload_keys = CatalogKeys(
                self.device_id,
                kek=kek,
                fetch=lambda: catalog.device_keys(self.device_id),
                cache=self._dir / BUNDLE_FILE,
            )
        return protection_from_settings(settings, sender_id=self.device_id, keys=self.payload_keys)

    def _refresh_payload_keys(self, *, force: bool = False) -> None:
        """Fetch the key bundle (at boot: ``force``; then every ``KEY_REFRESH_S``, or at each
        poll while the device holds no key)."""
        keys = self.payload_keys
        if keys is None:
            return
        now = time.monotonic()
        due = now - self._keys_fetched >= KEY_REFRESH_S or not keys.key_ids
        if force or due:
            self._keys_fetched = now
            keys.refresh()

    def _boot(self) -> DeviceSettings | None:
        """Settings from the catalog, retried with back-off; cached ones meanwhile if any."""
        cached = self._read_cache()
        for attempt in itertools.count():
            try:
                settings = self._catalog.boot(self._boot_request)
            except Exception as err:  # unreachable, refused, bad answer: try again later
                delay = _BOOT_BACKOFF_S[min(attempt, len(_BOOT_BACKOFF_S) - 1)]
                _LOG.warning(
                    "boot of %s failed (attempt %d, next in %.1f s): %s",
                    self.device_id,
                    attempt + 1,
                    delay,
                    err,
                    extra={"device_id": self.device_id},
                )
                if cached is not None:
                    _LOG.warning(
                        "%s runs on cached settings version %d until the catalog answers",
                        self.device_id,
                        cached.config_version,
                    )
                    self._boot_pending = True
                    return cached
                if self._stopping.wait(delay):
                    return None
                continue
            self._boot_pending = False
            self._refresh_payload_keys(force=True)
            _LOG.info(
                "%s booted: config version %d",
                self.device_id,
                settings.config_version,
                extra={"device_id": self.device_id, "config_version": settings.config_version},
            )
            return settings
        return None  # pragma: no cover - itertools.count never ends

    def _activate(self, settings: DeviceSettings) -> None:
        self._store = MeasurementStore(
            self._dir / "buffer.db",
            max_messages=self._settings.agent.buffer_max_messages,
            # hosted: the host syncs all its agents' buffers at once (store module docstring)
            checkpoint_interval_s=None
            if self._agent_host is not None
            else DEFAULT_CHECKPOINT_INTERVAL_S,
        )
        self._forwarder = Forwarder(
            self._store,
            publish=lambda _seq, payload: self._links.publish_measurement(payload),
            announce=self._announce_drop,
            resend_after_s=self._settings.agent.resend_after_s,
        )
        self._current = settings
        self._write_cache(settings)
        self._links.subscribe(self._filters(settings))
        self._links.connect(settings)
        # the retained committed mark decides the first seq: wait for it a moment (after the
        # SUBACK: running means commands sent from now on reach this agent)
        timeout_s = self._settings.brokers.grid_ops.connect_timeout_s
        if self._links.wait_subscribed(BrokerContext.GRID_OPS, timeout_s):
            self._mark_seen.wait(self._retained_wait_s)
        self._apply_pending_mark()
        if self._stopping.is_set():  # stopped while connecting: stop() cleans up what exists
            return
        if self._agent_host is not None:
            self._agent_host.attach(self, self._dir.parent)
        elif self._loop_thread is not None:
            self._loop_thread.start()
        if self._pacer_thread is not None:
            self._pacer_thread.start()
        self._state = AgentState.RUNNING
        self._running.set()
        self._host.apply(settings.algorithms, settings.grid, package_keys=settings.package_keys)
        self._links.subscribe(self._filters(settings))

    def _control_loop(self) -> None:
        next_poll = time.monotonic()
        attempt = 0
        while not self._stopping.is_set():
            current = self._current
            if current is None:  # _activate sets it before this loop starts
                return
            self._host.review()  # health checks, rollbacks, interrupted downloads
            if time.monotonic() >= next_poll:
                ok = self._poll(current)
                attempt = 0 if ok else attempt + 1
                delay = current.poll_interval_s
                if not ok:
                    delay = min(delay, _BOOT_BACKOFF_S[min(attempt, len(_BOOT_BACKOFF_S) - 1)])
                next_poll = time.monotonic() + delay
            try:
                pending = self._control_queue.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                continue
            if self._stopping.is_set():
                return
            if pending is None:
                continue
            try:
                self._apply(pending)
            except Exception:  # a configuration that cannot be applied must not end the polling
                _LOG.exception(
                    "%s: config version %d not applied",
                    self.device_id,
                    pending.settings.config_version,
                )

    def _poll(self, current: DeviceSettings) -> bool:
        try:
            if self._boot_pending:
                settings: DeviceSettings | None = self._catalog.boot(self._boot_request)
                self._boot_pending = False
            else:
                settings = self._catalog.poll(self.device_id, current.config_version)
        except Exception as err:  # the catalog's trouble: retry, keep running on what we have
            if getattr(err, "status", None) == 404:  # the catalog forgot us: boot again
                self._boot_pending = True
            _LOG.warning("poll of %s failed: %s", self.device_id, err)
            return False
        if settings is not None and settings.config_version != current.config_version:
            self._control_queue.put(_Pending(settings, "poll"))
        self._refresh_payload_keys()
        return True

    def _apply(self, pending: _Pending) -> None:
        new = pending.settings
        current = self._current
        if current is not None:
            if new.config_version == current.config_version:
                return
            if pending.origin == "push" and new.catalog_id != current.catalog_id:
                # another catalog installation's (a retained message an earlier one left on the
                # broker): its version numbers mean nothing here; the next poll asks ours
                _LOG.warning(
                    "%s ignores a pushed configuration of another catalog (%s, not %s)",
                    self.device_id,
                    new.catalog_id or "unnamed",
                    current.catalog_id or "unnamed",
                    extra={"device_id": self.device_id},
                )
                return
            if pending.origin == "push" and new.config_version < current.config_version:
                return  # a stale retained configuration
        _LOG.info(
            "%s applies config version %d (%s)",
            self.device_id,
            new.config_version,
            pending.origin,
            extra={"device_id": self.device_id, "config_version": new.config_version},
        )
        if current is not None and new.algorithms != current.algorithms:
            self._refresh_payload_keys(force=True)  # new inputs may need other devices' keys
        self._current = new  # rates take effect at the loop's next tick
        self._write_cache(new)
        self._links.connect(new)  # moves to other brokers only if the endpoints changed
        self._host.apply(new.algorithms, new.grid, package_keys=new.package_keys)
        self._links.subscribe(self._filters(new))

    def _filters(self, settings: DeviceSettings) -> list[str]:
        """The device's own filters (the catalog's, or the scheme's) and its algorithms' inputs."""
        own = list(settings.subscribe) or [
            str(f)
            for f in (
                config_filter(self.device_id),
                command_filter(self.device_id),
                committed_filter(self.device_id),
                topology_filter(),
            )
        ]
        return [*own, *sorted(self._host.input_topics())]

    # -- from the network threads -------------------------------------------------------------

    def _on_committed(self, high_water_seq: int) -> None:
        with self._mark_lock:
            if self._pending_mark is None or high_water_seq > self._pending_mark:
                self._pending_mark = high_water_seq
        self._mark_seen.set()
        self._wake_loop()

    def _route(self, topic: str, payload: bytes) -> None:
        self._host.route(topic, payload)

    def _on_monitoring_ack(self) -> None:
        if self._awaiting_acks:
            self._wake_loop()

    def _announce_drop(self, dropped: DroppedRange) -> None:
        _LOG.warning(
            "%s: buffer full, measurements %d..%d dropped",
            self.device_id,
            dropped.first_seq,
            dropped.last_seq,
            extra={"device_id": self.device_id, "first_seq": dropped.first_seq},
        )
        self._links.emit_event(
            "data_dropped",
            Severity.WARNING,
            f"store-and-forward buffer full ({self._settings.agent.buffer_max_messages} "
            f"messages): measurements {dropped.first_seq}..{dropped.last_seq} "
            f"({dropped.count}) dropped unconfirmed",
            (
                Reading(
                    channel="first_seq",
                    value=dropped.first_seq,
                    unit=Unit.ONE,
                    quality=Quality.GOOD,
                ),
                Reading(
                    channel="last_seq", value=dropped.last_seq, unit=Unit.ONE, quality=Quality.GOOD
                ),
            ),
        )

    # -- loop thread ---------------------------------------------------------------------------

    def _wake_loop(self) -> None:
        """Run a loop iteration soon (from any thread)."""
        if self._agent_host is not None:
            self._agent_host.wake(self)
        else:
            self._wake.set()

    def _loop_main(self) -> None:
        self._loop_begin(self._clock.now_ns())
        while not self._stopping.is_set():
            wait_s = self._loop_once(self._clock.now_ns())
            if self._wake.wait(wait_s):
                self._wake.clear()

    def _loop_begin(self, first_tick_ns: int) -> None:
        """Before the first iteration: when the first tick is due (domain time)."""
        self._schedule(first_tick_ns)

    def _tick_due(self, now_ns: int) -> bool:
        """Whether an iteration at ``now_ns`` takes a measurement."""
        return now_ns >= self._next_tick_ns and not self._stopping.is_set()

    def _loop_once(self, now_ns: int, *, max_wait_s: float = _MAX_WAIT_S) -> float:
        """One iteration of the loop at domain time ``now_ns``; wall seconds until the next one
        is needed (at most ``max_wait_s``; earlier when woken)."""
        try:
            self._apply_pending_mark()
            self._check_connections()
            if now_ns >= self._next_tick_ns:
                try:
                    t_ns = self._tick(now_ns)
                    self._run_tick_hook(t_ns)
                    self._last_tick_ns = t_ns  # the tick's work is done
                finally:  # a failing tick must not be retried at once, forever
                    self._schedule(self._next_tick(self._next_tick_ns))
            self._deliver()
            self._host.watchdog()
        except Exception:  # the loop must go on; the error is logged with its traceback
            _LOG.exception("agent %s loop iteration failed", self.device_id)
        return self._wait_s(self._next_tick_ns, max_wait_s)

    @property
    def _has_algorithms(self) -> bool:
        return bool(self._host.runners)

    def _wait_s(self, next_tick_ns: int, max_wait_s: float = _MAX_WAIT_S) -> float:
        """Wall-clock seconds to sleep: the domain time left to the tick at the clock's speed."""
        speed = self._clock.speed
        if math.isinf(speed):  # stepped: the pacer wakes the loop when the clock gets there
            return max_wait_s
        remaining_s = (next_tick_ns - self._clock.now_ns()) / NS_PER_S / speed
        return min(max(0.0, remaining_s), max_wait_s)

    def _schedule(self, next_tick_ns: int) -> None:
        self._next_tick_ns = next_tick_ns
        self._scheduled.set()

    def _pacer_main(self) -> None:
        """Stepped clock only: sleep on the clock until the scheduled tick, then wake the loop."""
        while not self._stopping.is_set():
            self._scheduled.wait()
            self._scheduled.clear()
            if self._clock.sleep_until(self._next_tick_ns, self._stopping):
                self._wake_loop()

    def _next_tick(self, previous_ns: int) -> int:
        current = self._current
        interval_s = current.reporting_interval_s if current is not None else 1.0
        interval_ns = max(1, round(interval_s * NS_PER_S))
        following = previous_ns + interval_ns
        now_ns = self._clock.now_ns()
        if following <= now_ns:  # late by more than an interval: skip, never burst to catch up
            missed = (now_ns - following) // interval_ns + 1
            self.skipped_ticks += missed
            following += missed * interval_ns
        return following

    def _run_tick_hook(self, t_ns: int) -> None:
        hook = self._on_tick
        if hook is None:
            return
        try:
            hook(t_ns)
        except Exception:  # the device's own checks must not stop its measurements
            _LOG.exception(
                "%s: tick hook failed at %d",
                self.device_id,
                t_ns,
                extra={"device_id": self.device_id},
            )

    def _tick(self, t_ns: int) -> int:
        """One measurement at domain time ``t_ns`` (now); returns it."""
        current, store, forwarder = self._current, self._store, self._forwarder
        if current is None or store is None or forwarder is None:
            return t_ns
        try:
            acquisition = self._source.acquire(t_ns=t_ns, sampling_rate_hz=current.sampling_rate_hz)
            values = compute(acquisition, self._limits)
        except Exception:  # a broken source must not stop the meter: count, log, skip
            self.source_errors += 1
            _LOG.exception("%s: acquisition failed", self.device_id)
            return t_ns
        seq = store.next_seq
        payload = encode_measurement(self.device_id, seq, values, self._limits)
        dropped = store.append(seq, values.t_ns, payload)
        self.produced += 1
        if dropped is not None:
            forwarder.on_dropped(dropped)
        if self._host.runners:  # readings as objects only for the channels algorithms consume
            channels = self._host.input_channels()
            readings = to_readings(values, self._limits, channels=channels)
            self._host.dispatch(readings, values.t_ns)
        return t_ns

    def _deliver(self) -> None:
        forwarder = self._forwarder
        if forwarder is None:
            return
        connected = self._links.connected(BrokerContext.MONITORING)
        while forwarder.pump(connected=connected):
            if self._stopping.is_set():
                return
        self._awaiting_acks = forwarder.window_full
        if self._awaiting_acks:
            forwarder.pump(connected=connected)  # an ack may have come in between

    def _apply_pending_mark(self) -> None:
        with self._mark_lock:
            mark, self._pending_mark = self._pending_mark, None
        if mark is not None and self._forwarder is not None:
            self._forwarder.on_committed(mark)

    def _check_connections(self) -> None:
        """After a (re)connect (whose birth was just published): resend, announce drops again."""
        for context in self._links.new_connections():
            if self._forwarder is None:
                continue
            if context is BrokerContext.MONITORING:
                self._forwarder.on_connected()
            else:
                self._forwarder.announce_pending()

    # -- command thread ------------------------------------------------------------------------

    def _enqueue_command(self, command: Command) -> None:
        """From the network thread: queue for the command thread, never wait."""
        try:
            self._commands.put_nowait(command)
        except queue.Full:
            _LOG.warning(
                "%s: command %s refused, %d commands already waiting",
                self.device_id,
                command.command_id,
                COMMAND_QUEUE_MAX,
                extra={"device_id": self.device_id, "command_id": command.command_id},
            )
            self._links.publish_ack(
                command.command_id,
                AckStatus.REJECTED,
                f"device {self.device_id} busy: {COMMAND_QUEUE_MAX} commands waiting",
            )

    def _wake_command_thread(self) -> None:
        if self._command_thread is None:
            return
        # a full queue: it is busy, and sees the stop event after the command it handles
        with contextlib.suppress(queue.Full):
            self._commands.put_nowait(None)

    def _command_main(self) -> None:
        handler = self._command_handler
        if handler is None:
            return
        while not self._stopping.is_set():
            command = self._commands.get()
            if command is None or self._stopping.is_set():
                return
            context = CommandContext(
                command, links=self._links, clock=self._clock, stop=self._stopping
            )
            deadline_ns = command.deadline_ns
            if deadline_ns is not None and deadline_ns < self._clock.now_ns():  # waited too long
                context.ack(AckStatus.REJECTED, "expired")
                continue
            try:
                handler.handle_command(command, context)
            except Exception as err:  # the handler's bug: answer it, keep taking commands
                _LOG.exception(
                    "%s: command %s (%s %d) failed",
                    self.device_id,
                    command.command_id,
                    command.action,
                    command.target_id,
                    extra={"device_id": self.device_id, "command_id": command.command_id},
                )
                context.ack(AckStatus.FAILED, f"{type(err).__name__}: {err}")

    # -- settings cache ------------------------------------------------------------------------

    def _read_cache(self) -> DeviceSettings | None:
        path = self._dir / "settings.json"
        try:
            return DeviceSettings.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as err:
            _LOG.warning("%s: ignoring unreadable cached settings: %s", path, err)
            return None

    def _write_cache(self, settings: DeviceSettings) -> None:
        path = self._dir / "settings.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(settings.model_dump_json(), encoding="utf-8")
            temporary.replace(path)
        except OSError as err:
            _LOG.warning("%s: cannot cache settings: %s", path, err)
