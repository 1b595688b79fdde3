"""The historian's pipeline: MQTT callbacks -> bounded queue -> writer thread -> store.

:class:`Intake` runs on the broker links' reader threads (:mod:`.lean_link`): it decodes each
message with
:class:`~openfeeder.iot.schema.RejectCounter` (malformed JSON, unknown schema version, oversize,
invalid fields, a topic outside the scheme: rejected, counted by reason, one log line each), rejects
devices the :class:`~.directory.DeviceDirectory` does not know, counts sequence gaps, and puts the
compact row on the queue. The queue is bounded: when it is full ``put`` blocks the reader thread,
so that the historian stops reading from the broker instead of dropping what it accepted.

:class:`Writer` is one thread that takes up to ``batch_max_messages`` rows, or what arrived within
``batch_max_delay_ms`` of the first, commits them as one transaction
(:meth:`.store.SqlStore.commit_batch`), retries on storage errors, and hands the advanced marks to
the committed-mark publisher. Between batches it looks again at stale holes (once a second) and
runs retention (every 10 minutes).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from openfeeder.errors import StorageError
from openfeeder.iot.schema import Event, Measurement, RejectCounter
from openfeeder.iot.sequence import SequenceTracker
from openfeeder.iot.topics import MessageClass
from openfeeder.services.historian.directory import DeviceDirectory
from openfeeder.services.historian.marks import MarkBook
from openfeeder.services.historian.records import BatchResult, LayoutRegistry, LossRange, MessageRow
from openfeeder.services.historian.store import HOLE_RECHECK_NS, HistorianStore

__all__ = ["DATA_DROPPED", "Intake", "LastBatch", "QueueItem", "Writer"]

_LOG = logging.getLogger("openfeeder.services.historian")

DATA_DROPPED: Final = "data_dropped"
"""Event kind a meter publishes for readings it dropped for good; values ``first_seq``, ``last_seq``."""
UNKNOWN_DEVICE: Final = "unknown_device"
INVALID_LOSS: Final = "invalid_loss_range"
RETENTION_INTERVAL_S: Final = 600.0
RECHECK_DEVICES: Final = 1000
"""Devices whose stale holes one recheck transaction looks up, at most."""
_NS_PER_DAY: Final = 86_400 * 10**9
_PUT_TIMEOUT_S: Final = 1.0
REFRESH_WAIT_S: Final = 0.5
"""How long a message from an unknown device waits for the registry to be re-read."""
_RETRY_MAX_S: Final = 5.0

QueueItem = MessageRow | LossRange


class Intake:
    """Decodes and checks incoming messages on the links' reader threads; queues what is accepted."""

    def __init__(
        self,
        items: queue.Queue[QueueItem],
        *,
        directory: DeviceDirectory,
        require_registered: bool,
        refresh_interval_s: float,
        layouts: LayoutRegistry,
    ) -> None:
        self._queue = items
        self._directory = directory
        self._require_registered = require_registered
        self._refresh_interval_s = refresh_interval_s
        self._last_refresh = -refresh_interval_s
        self._layouts = layouts
        self.measurement_rejects = RejectCounter(logger=_LOG)
        self.event_rejects = RejectCounter(logger=_LOG)
        self.other_rejects: Counter[str] = Counter()  # unknown devices, bad loss ranges
        self._other_lock = threading.Lock()
        self.tracker = SequenceTracker()
        self.received = 0
        self.accepted = 0
        self.losses_announced = 0
        self.dropped_at_shutdown = 0
        self.closed = False
        self.direct_sink: Callable[[QueueItem], None] | None = None
        """Set at shutdown once the writer is gone: late items are committed by this instead."""

    # -- link callbacks ---------------------------------------------------------------------

    def on_measurement(self, topic: str, payload: bytes) -> None:
        self.received += 1
        message = self.measurement_rejects.safe_decode(
            MessageClass.MEASUREMENT, payload, topic=topic
        )
        if not isinstance(message, Measurement):
            return
        if not self._registered(message.device_id, topic):
            return
        self.tracker.observe(message.device_id, message.seq)
        self._put(self._layouts.row_of(message))
        self.accepted += 1

    def on_event(self, topic: str, payload: bytes) -> None:
        event = self.event_rejects.safe_decode(MessageClass.EVENT, payload, topic=topic)
        if not isinstance(event, Event) or event.kind != DATA_DROPPED:
            return  # other events are for other services
        loss = self._loss_of(event, topic)
        if loss is None or not self._registered(event.device_id, topic):
            return
        self._put(loss)
        self.losses_announced += 1

    # -- checks -----------------------------------------------------------------------------

    def _registered(self, device_id: str, topic: str) -> bool:
        if not self._require_registered or self._directory.known(device_id):
            return True
        now = time.monotonic()
        if now - self._last_refresh >= self._refresh_interval_s:
            self._last_refresh = now
            # Re-read the registry on another thread and wait for it only briefly: a catalog
            # that hangs must not stop the intake (the device re-sends if rejected meanwhile).
            done = threading.Event()
            threading.Thread(
                target=self._refresh, args=(done,), name="historian-devices", daemon=True
            ).start()
            if done.wait(REFRESH_WAIT_S) and self._directory.known(device_id):
                return True
        self._reject(UNKNOWN_DEVICE, topic, f"device {device_id!r} is not registered", "device_id")
        return False

    def _refresh(self, done: threading.Event) -> None:
        try:
            self._directory.refresh()
        except Exception:  # a directory's bug must not go unnoticed, nor stop later refreshes
            _LOG.exception("device directory refresh failed")
        finally:
            done.set()

    def _loss_of(self, event: Event, topic: str) -> LossRange | None:
        values = {reading.channel: reading.value for reading in event.values}
        first, last = values.get("first_seq"), values.get("last_seq")
        if (
            first is None
            or last is None
            or not first.is_integer()
            or not last.is_integer()
            or not 0 <= first <= last
        ):
            self._reject(
                INVALID_LOSS, topic, "needs integer values 0 <= first_seq <= last_seq", "values"
            )
            return None
        return LossRange(event.device_id, int(first), int(last), event.t_ns)

    def _reject(self, reason: str, topic: str, detail: str, field: str) -> None:
        with self._other_lock:
            self.other_rejects[reason] += 1
        _LOG.warning(
            "payload rejected reason=%s topic=%s field=%s: %s",
            reason,
            topic,
            field,
            detail,
            extra={"reason": reason, "topic": topic, "field": field},
        )

    def _put(self, item: QueueItem) -> None:
        sink = self.direct_sink
        if sink is not None:
            sink(item)
            return
        # Blocks while the writer is behind: backpressure, the broker holds the rest.
        while True:
            try:
                self._queue.put(item, timeout=_PUT_TIMEOUT_S)
                return
            except queue.Full:
                if self.closed:  # the writer is gone; the device re-sends from its mark
                    self.dropped_at_shutdown += 1
                    return

    def rejected(self) -> dict[str, int]:
        """Rejections by reason, measurements and events together."""
        counts: Counter[str] = Counter()
        for counter in (self.measurement_rejects, self.event_rejects):
            counts.update({str(reason): n for reason, n in counter.counts.items()})
        with self._other_lock:
            counts.update(self.other_rejects)
        return dict(sorted(counts.items()))


@dataclass(frozen=True, slots=True)
class LastBatch:
    size: int
    inserted: int
    latency_ms: float
    committed_ns: int


class Writer:
    """The writer thread: batches from the queue, one transaction each, marks to the publisher."""

    def __init__(
        self,
        items: queue.Queue[QueueItem],
        *,
        store: HistorianStore,
        book: MarkBook,
        layouts: LayoutRegistry,
        batch_max_messages: int,
        batch_max_delay_ms: int,
        retention_days: float,
        on_committed: Callable[[BatchResult], None],
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._queue = items
        self._store = store
        self.book = book
        self._layouts = layouts
        self._batch_max = batch_max_messages
        self._batch_delay_s = batch_max_delay_ms / 1000
        self._retention_days = retention_days
        self._on_committed = on_committed
        self._clock_ns = clock_ns
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="historian-writer", daemon=True)
        self._next_retention = time.monotonic()
        self._next_recheck = time.monotonic()
        self.batches = 0
        self.stored = 0
        self.duplicates = 0
        self.losses_recorded = 0
        self.storage_errors = 0
        self.retention_deleted = 0
        self.uncommitted_at_stop = 0
        self.last_batch: LastBatch | None = None
        self.failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout_s: float = 60.0) -> None:
        """Commit everything queued, then end the thread."""
        self._stopping.set()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                items = self._collect()
                if items:
                    self._commit(items)
                elif self._stopping.is_set():
                    return
                self._maybe_recheck()
                self._maybe_retention()
            except Exception:  # a bug must not silently stop the intake's only consumer
                _LOG.exception("historian writer error", extra={"event": "writer_error"})
                time.sleep(0.5)

    def _collect(self) -> list[QueueItem]:
        try:
            first = self._queue.get(timeout=0.05)
        except queue.Empty:
            return []
        items = [first]
        deadline = time.monotonic() + self._batch_delay_s
        get_nowait = self._queue.get_nowait
        while len(items) < self._batch_max:
            try:
                items.append(get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    break
                try:
                    items.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
        return items

    def _commit(self, items: list[QueueItem]) -> None:
        messages = [item for item in items if isinstance(item, MessageRow)]
        losses = [item for item in items if isinstance(item, LossRange)]
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = self._store.commit_batch(
                    messages,
                    losses,
                    layouts=self._layouts.get,
                    book=self.book,
                    now_ns=self._clock_ns(),
                )
                break
            except StorageError as err:
                attempt += 1
                self.storage_errors += 1
                self.failing = True
                _LOG.error(
                    "batch not committed (attempt %d, %d messages): %s",
                    attempt,
                    len(messages),
                    err,
                    extra={"event": "batch_failed", "attempt": attempt, "size": len(messages)},
                )
                if self._stopping.is_set() and attempt >= 3:
                    self.uncommitted_at_stop += len(items)
                    _LOG.error(
                        "stopping with %d messages not committed; their devices re-send them",
                        len(items),
                        extra={"event": "batch_abandoned", "size": len(items)},
                    )
                    return
                time.sleep(min(_RETRY_MAX_S, 0.2 * 2**attempt))
        self.failing = False
        self._account(result, time.perf_counter() - started)
        if result.advanced or result.resent:
            self._on_committed(result)

    def _account(self, result: BatchResult, elapsed_s: float) -> None:
        self.batches += 1
        self.stored += result.inserted
        self.duplicates += result.duplicates
        self.losses_recorded += result.losses
        self.last_batch = LastBatch(
            size=result.messages,
            inserted=result.inserted,
            latency_ms=round(elapsed_s * 1000, 3),
            committed_ns=self._clock_ns(),
        )

    def _maybe_recheck(self) -> None:
        """Look again, at most once a second, at holes no new message has made us look at."""
        now = time.monotonic()
        if now < self._next_recheck:
            return
        self._next_recheck = now + HOLE_RECHECK_NS / 1e9
        now_ns = self._clock_ns()
        devices = self.book.stale_holes(
            now_ns=now_ns, recheck_after_ns=HOLE_RECHECK_NS, limit=RECHECK_DEVICES
        )
        if not devices:
            return
        try:
            result = self._store.commit_batch(
                [], [], layouts=self._layouts.get, book=self.book, now_ns=now_ns, recheck=devices
            )
        except StorageError as err:
            _LOG.error("hole recheck failed: %s", err, extra={"event": "recheck_failed"})
            return
        if result.advanced:
            self._on_committed(result)

    def _maybe_retention(self) -> None:
        if self._retention_days <= 0 or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + RETENTION_INTERVAL_S
        cutoff_ns = self._clock_ns() - int(self._retention_days * _NS_PER_DAY)
        try:
            deleted = self._store.delete_older_than(cutoff_ns)
        except StorageError as err:
            _LOG.error("retention failed: %s", err, extra={"event": "retention_failed"})
            return
        self.retention_deleted += deleted
        if deleted:
            _LOG.info(
                "retention deleted %d messages older than t_ns=%d",
                deleted,
                cutoff_ns,
                extra={"event": "retention", "deleted": deleted, "cutoff_ns": cutoff_ns},
            )
