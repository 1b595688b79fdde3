"""The running historian: two broker links, the intake, the writer, the mark publisher, the store.

:class:`Historian` is what :func:`~.service.serve_historian` runs and what tests and benchmarks
start in-process (through :class:`~.service.HistorianThread`). Blocking methods (``start``,
``stop``, the queries) are meant for threads, not for an event loop.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from openfeeder.config import Settings
from openfeeder.errors import ConfigError, MessagingError, StorageError
from openfeeder.iot.mqtt import MessageHandler
from openfeeder.iot.protection import MessageProtection, protection_from_settings
from openfeeder.iot.schema import LinkState, Payload, Status, encode, publish_topic
from openfeeder.iot.topics import (
    ID_PATTERN,
    BrokerContext,
    MessageClass,
    Topic,
    event_filter,
    measurement_filter,
    shared,
    status_topic,
)
from openfeeder.security.tls import TlsFiles, own_identity, tls_files_from
from openfeeder.services.historian.committed import CommittedPublisher
from openfeeder.services.historian.directory import (
    CatalogDirectory,
    DeviceDirectory,
    OpenDirectory,
)
from openfeeder.services.historian.ingest import Intake, LastBatch, QueueItem, Writer
from openfeeder.services.historian.lean_link import LeanLink
from openfeeder.services.historian.records import LayoutRegistry, LossRange, MessageRow
from openfeeder.services.historian.store import SqlStore, open_store

__all__ = ["RECEIVE_MAXIMUM", "Counters", "HealthReport", "Historian"]

_LOG = logging.getLogger("openfeeder.services.historian")

RECEIVE_MAXIMUM: Final = 65535
"""MQTT v5 receive maximum of the measurement link: Mosquitto may keep this many messages in flight
to the historian (without it, 20 plus a 1000-message queue, which overflow in milliseconds)."""
GRID_OPS_RECEIVE_MAXIMUM: Final = 1000


@dataclass(frozen=True, slots=True)
class Counters:
    messages_received: int
    messages_accepted: int
    messages_stored: int
    duplicates_ignored: int
    rejected: dict[str, int]
    """By reason: the codec's reasons, ``unknown_device`` and ``invalid_loss_range``."""
    gaps: int
    """Jumps ahead in a device's seq seen on arrival (``missing`` seqs in total; late ones fill
    them again: ``reordered``). With several historians in a group each sees only a share."""
    missing: int
    reordered: int
    redelivered: int
    """Arrivals of a seq already seen by this historian (QoS 1 redelivery, re-sent buffers)."""
    losses_announced: int
    losses_recorded: int
    batches: int
    storage_errors: int
    marks_published: int
    retention_deleted: int


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: str
    """``ok``; ``degraded`` while a broker link is down or the last write failed."""
    instance: str
    backend: str
    mqtt_connected: dict[str, bool]
    queue_depth: int
    queue_capacity: int
    devices: int
    """Devices with committed marks in this historian's memory."""
    counters: Counters
    last_batch: LastBatch | None = field(default=None)


class Historian:
    """One historian instance (``instance`` names its MQTT sessions: keep it stable)."""

    def __init__(
        self,
        settings: Settings,
        *,
        instance: str = "1",
        directory: DeviceDirectory | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.service_id = f"historian-{instance}"
        if ID_PATTERN.fullmatch(self.service_id) is None:
            raise ConfigError(f"historian instance {instance!r} must match [A-Za-z0-9_.-]{{1,54}}")
        self.settings = settings
        self.instance = instance
        self._clock_ns = clock_ns
        config = settings.historian
        self.tls = _service_tls(settings, self.service_id)
        if directory is None:
            self._owned_directory: CatalogDirectory | None = None
            if config.require_registered_devices:
                security = settings.security
                verify = (
                    TlsFiles(security.ca_file, min_version=security.tls_min_version)
                    if security.ca_file is not None
                    else None
                )
                self._owned_directory = CatalogDirectory(
                    settings.catalog.url,
                    timeout_s=settings.catalog.request_timeout_s,
                    verify=verify.client_context() if verify is not None else None,
                )
            directory = self._owned_directory or OpenDirectory()
        else:
            self._owned_directory = None
        self.directory = directory
        self._queue: queue.Queue[QueueItem] = queue.Queue(maxsize=config.queue_max_messages)
        self.layouts = LayoutRegistry()
        self.intake = Intake(
            self._queue,
            directory=directory,
            require_registered=config.require_registered_devices,
            refresh_interval_s=config.device_refresh_interval_s,
            layouts=self.layouts,
        )
        self._intake_link: LeanLink | None = None
        self._grid_ops: LeanLink | None = None
        self._store: SqlStore | None = None
        self._writer: Writer | None = None
        self._publisher: CommittedPublisher | None = None
        self._direct_lock = threading.Lock()
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, rebuild the marks, start the threads and connect (in the background)."""
        config = self.settings.historian
        store = open_store(self.settings.historian_storage_url())
        try:
            book = store.load_marks()
        except StorageError:
            store.close()
            raise
        self._store = store
        # Payload protection: events (protection traffic) are opened before the intake sees them;
        # measurements only when the policy seals monitoring traffic (TLS only by default, so the
        # hot path stays as it is); committed marks are not in the policy and go out unsealed.
        protection = protection_from_settings(
            self.settings.payload_protection, sender_id=self.service_id
        )
        on_measurement: MessageHandler = self.intake.on_measurement
        on_event: MessageHandler = self.intake.on_event
        if protection is not None:
            on_event = protection.guard(on_event)
            if protection.protector.protects(str(MessageClass.MEASUREMENT)):
                on_measurement = protection.guard(on_measurement)
        # Lean links rather than paho: see lean_link for the measured reason.
        monitoring = LeanLink(
            self.settings.brokers.monitoring,
            client_id=f"{self.service_id}.monitoring",
            topic_filter=shared(measurement_filter(), config.shared_group),
            handler=on_measurement,
            session_expiry_s=config.session_expiry_s,
            receive_maximum=RECEIVE_MAXIMUM,
            will=self._death(),
            on_connect=lambda: self._on_connected(BrokerContext.MONITORING),
            tls=self._tls_context(),
        )
        grid_ops = LeanLink(
            self.settings.brokers.grid_ops,
            client_id=f"{self.service_id}.grid_ops",
            topic_filter=event_filter(),  # data_dropped announcements (not shared: all of us)
            handler=on_event,
            session_expiry_s=config.session_expiry_s,
            receive_maximum=GRID_OPS_RECEIVE_MAXIMUM,
            will=self._death(),
            on_connect=lambda: self._on_connected(BrokerContext.GRID_OPS),
            tls=self._tls_context(),
        )
        self._intake_link, self._grid_ops = monitoring, grid_ops
        if protection is not None:
            protection.attach(lambda event: self._publish_security_event(protection, event))
        publisher = CommittedPublisher(
            grid_ops, interval_ms=config.committed_interval_ms, clock_ns=self._clock_ns
        )
        publisher.seed(book.marks())  # published on connect: a crash may have left them unsent
        writer = Writer(
            self._queue,
            store=store,
            book=book,
            layouts=self.layouts,
            batch_max_messages=config.batch_max_messages,
            batch_max_delay_ms=config.batch_max_delay_ms,
            retention_days=config.retention_days,
            on_committed=publisher.on_batch,
            clock_ns=self._clock_ns,
        )
        self._publisher, self._writer = publisher, writer
        if config.require_registered_devices:
            self.directory.refresh()
        writer.start()
        publisher.start()
        grid_ops.start()
        monitoring.start()
        self._started = True
        _LOG.info(
            "historian %s started backend=%s devices=%d",
            self.instance,
            store.backend,
            len(book),
            extra={"event": "started", "backend": store.backend, "devices": len(book)},
        )

    def _publish_security_event(self, protection: MessageProtection, event: Payload) -> None:
        """A rejected payload's security event, sealed, on grid_ops (``event/<service id>``)."""
        link = self._grid_ops
        if link is None:
            return
        topic = publish_topic(event)
        try:
            link.publish(topic, protection.seal(topic, encode(event)))
        except MessagingError as err:
            _LOG.warning("security event not published: %s", err)

    def _tls_context(self) -> ssl.SSLContext | None:
        """Mutual TLS with the service certificate of ``[security]`` (None: not configured)."""
        return self.tls.client_context() if self.tls is not None else None

    def _death(self) -> tuple[Topic, bytes]:
        death = Status(device_id=self.service_id, seq=1, t_ns=0, state=LinkState.OFFLINE)
        return status_topic(self.service_id), encode(death)

    def _status(self, state: LinkState) -> bytes:
        status = Status(
            device_id=self.service_id,
            seq=0 if state is LinkState.ONLINE else 1,
            t_ns=self._clock_ns(),
            state=state,
            reason="" if state is LinkState.ONLINE else "stopped",
        )
        return encode(status)

    def _on_connected(self, context: BrokerContext) -> None:
        """On every (re)connect of a link: a birth; on grid_ops, every mark again."""
        link = self._intake_link if context is BrokerContext.MONITORING else self._grid_ops
        if link is None:
            return
        link.publish(status_topic(self.service_id), self._status(LinkState.ONLINE), retain=True)
        if context is BrokerContext.GRID_OPS and self._publisher is not None:
            self._publisher.republish_all()

    def wait_ready(self, timeout_s: float) -> bool:
        """Both links connected and subscribed within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        return all(
            link is not None and link.wait_subscribed(max(0.0, deadline - time.monotonic()))
            for link in (self._intake_link, self._grid_ops)
        )

    def stop(self) -> None:
        """Stop consuming, commit what was accepted, publish the marks, disconnect cleanly."""
        if not self._started:
            self._close_directory()
            return
        self._started = False
        monitoring, grid_ops = self._intake_link, self._grid_ops
        if monitoring is not None:
            self._say_goodbye(monitoring)
            monitoring.stop()  # unacknowledged messages stay in our broker session
        if self._writer is not None:
            self._writer.stop()
        self.intake.direct_sink = self._commit_directly  # late loss events, until grid_ops stops
        self._commit_leftovers()
        if self._publisher is not None:
            self._publisher.stop()
        if grid_ops is not None:
            self._say_goodbye(grid_ops)
            grid_ops.stop()
        self.intake.closed = True
        self._commit_leftovers()
        if self._store is not None:
            self._store.close()
        self._close_directory()
        _LOG.info("historian %s stopped", self.instance, extra={"event": "stopped"})

    def _say_goodbye(self, link: LeanLink) -> None:
        if not link.connected:
            return
        try:
            acked = link.publish(
                status_topic(self.service_id), self._status(LinkState.OFFLINE), retain=True
            ).wait(2.0)
        except MessagingError:
            acked = False
        if not acked:
            _LOG.warning("offline status not acknowledged by %s", link.client_id)

    def _commit_directly(self, item: QueueItem) -> None:
        self._commit_items([item])

    def _commit_leftovers(self) -> None:
        items: list[QueueItem] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if items:
            self._commit_items(items)

    def _commit_items(self, items: list[QueueItem]) -> None:
        store, writer = self._store, self._writer
        if store is None or writer is None:
            return
        with self._direct_lock:
            try:
                result = store.commit_batch(
                    [item for item in items if isinstance(item, MessageRow)],
                    [item for item in items if isinstance(item, LossRange)],
                    layouts=self.layouts.get,
                    book=writer.book,
                    now_ns=self._clock_ns(),
                )
            except StorageError as err:
                _LOG.error("late items not committed: %s", err, extra={"event": "late_failed"})
                return
        if self._publisher is not None and result.advanced:
            self._publisher.update(result.advanced)

    def _close_directory(self) -> None:
        if self._owned_directory is not None:
            self._owned_directory.close()

    # -- state -------------------------------------------------------------------------------

    @property
    def store(self) -> SqlStore:
        """The store (for queries); only while started."""
        if self._store is None:
            raise StorageError("the historian is not started", url="")
        return self._store

    @property
    def mqtt_connected(self) -> dict[str, bool]:
        """Whether each broker link is up (the monitoring one: connected and subscribed)."""
        intake, grid_ops = self._intake_link, self._grid_ops
        return {
            BrokerContext.MONITORING.value: intake is not None and intake.connected,
            BrokerContext.GRID_OPS.value: grid_ops is not None and grid_ops.connected,
        }

    def marks(self) -> dict[str, int]:
        """Committed marks in memory by device (-1: nothing contiguous from seq 0 yet)."""
        return {} if self._writer is None else self._writer.book.marks()

    def counters(self) -> Counters:
        intake, writer, publisher = self.intake, self._writer, self._publisher
        tracker = intake.tracker
        return Counters(
            messages_received=intake.received,
            messages_accepted=intake.accepted,
            messages_stored=0 if writer is None else writer.stored,
            duplicates_ignored=0 if writer is None else writer.duplicates,
            rejected=intake.rejected(),
            gaps=tracker.gaps_total,
            missing=tracker.missing_total,
            reordered=tracker.reordered_total,
            redelivered=tracker.duplicates_total,
            losses_announced=intake.losses_announced,
            losses_recorded=0 if writer is None else writer.losses_recorded,
            batches=0 if writer is None else writer.batches,
            storage_errors=0 if writer is None else writer.storage_errors,
            marks_published=0 if publisher is None else publisher.published,
            retention_deleted=0 if writer is None else writer.retention_deleted,
        )

    def health(self) -> HealthReport:
        connected = self.mqtt_connected
        writer = self._writer
        healthy = (
            self._started
            and all(connected.values())
            and writer is not None
            and writer.alive
            and not writer.failing
        )
        return HealthReport(
            status="ok" if healthy else "degraded",
            instance=self.instance,
            backend=self._store.backend if self._store is not None else "none",
            mqtt_connected=connected,
            queue_depth=self._queue.qsize(),
            queue_capacity=self._queue.maxsize,
            devices=0 if writer is None else len(writer.book),
            counters=self.counters(),
            last_batch=None if writer is None else writer.last_batch,
        )


def _service_tls(settings: Settings, service_id: str) -> TlsFiles | None:
    """The historian's certificate from ``[security]`` (None: none configured). It must be issued
    to the name the instance uses on MQTT (client ids, status topic), or the broker's ACL refuses
    the connection: say so at once rather than retrying forever."""
    tls = tls_files_from(settings.security)
    if tls is None or tls.cert_file is None:
        return None
    name = own_identity(tls, default=service_id)
    if name != service_id:
        raise ConfigError(
            f"security.cert_file {tls.cert_file}: issued to {name!r}, but this historian is "
            f"{service_id!r} on MQTT (client ids, status topic); issue its certificate as "
            f"{service_id} (openfeeder pki issue {service_id} --role historian)"
        )
    return tls
