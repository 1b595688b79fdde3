"""Store-and-forward: every measurement is on disk before it is published, until it is committed.

**Store** (:class:`MeasurementStore`). One SQLite file per meter, ``<state_dir>/<device>/buffer.db``,
in WAL mode. Each measurement message is appended (its encoded payload under its ``seq``) *before* it
is published, in one transaction that also keeps the persistent counter of the next ``seq``, so the
sequence continues across restarts of the agent (at boot the next seq is also raised to the
historian's committed mark + 1, see :mod:`openfeeder.iot.agent.runtime`).

Durability: ``synchronous=NORMAL``. A committed append survives a crash of the agent process (it is
in the OS page cache and the WAL). After an OS crash or power loss, appends since the last WAL sync
can be lost; the store syncs at least every ``checkpoint_interval_s`` (default 5 s) by running a WAL
checkpoint (WAL fsync, then database fsync), so the **power-loss window is about 5 s of readings**
(plus whatever a disk's volatile write cache hides). ``synchronous=FULL`` (one fsync per message)
closes it at roughly 6x the cost of an append here (~160 us instead of ~27 us on this machine's
disk; far more on slow flash).

Many buffers in one process (an :class:`~openfeeder.iot.agent.hosting.AgentHost`): a checkpoint
per buffer every 5 s is two fsyncs per buffer, ~400 a second for a thousand meters, which no disk
keeps up with. Hosted buffers are opened with ``checkpoint_interval_s=None`` (no timed checkpoint;
SQLite's own automatic checkpoint every ~1,000 WAL pages still bounds the WAL) and the host makes
all of them durable at once every 5 s with one ``syncfs`` of their file system
(:func:`sync_filesystem`), so the power-loss window stays about 5 s.

**Bound and drop policy.** At most ``max_messages`` (``[agent] buffer_max_messages``) unconfirmed
messages are kept. When an append finds the buffer full it drops the **oldest** unconfirmed
messages, in one chunk of ``drop_chunk`` (1 % of the bound by default, at least 1) so that a long
outage produces one announcement per chunk rather than one per message. Every dropped range is
counted, persisted until the committed mark passes it, and announced on the grid_ops broker as an
``Event`` of kind ``data_dropped`` (severity warning) whose values are ``first_seq`` and
``last_seq`` (unit ``1``): the historian uses it to move its committed mark over the hole. Ranges
not yet passed by the mark are announced again after a reconnect and with every resend.

**Forwarding** (:class:`Forwarder`). While the monitoring broker is connected, messages are
published from the buffer in ``seq`` order with at most ``max_in_flight`` (32) not yet acknowledged
by the broker (PUBACK). Confirmation is end to end: the historian's retained ``Committed`` message
(``high_water_seq``) deletes every buffered message up to it. Messages are sent again from
``mark + 1``:

- after every (re)connect to the monitoring broker (a broker acknowledges QoS 1 from memory and
  loses it if killed), and
- when messages were sent but the mark has not advanced for ``resend_after_s``; consecutive resends
  without progress back off (x2 each, up to 64 x ``resend_after_s``).

Resends need a mark: until some historian has confirmed anything for this meter (no ``Committed``
seen yet), nothing acknowledged by the broker is re-sent (a reconnect resumes after the last PUBACK),
so a platform without a historian does not replay its whole buffer at every reconnect.
Duplicates are harmless: the historian is idempotent on ``(device, seq)``.

**Guarantee.** Every measurement the agent produced reaches a historian that confirms it, in seq
order per (re)send pass, unless (a) the buffer overflowed first, in which case exactly the announced
ranges are missing, or (b) the machine lost power within the window above. Nothing is deleted
before the historian says it is durably stored.

Disk use: about 1.8 kB per message (23 readings), i.e. ~180 MB per meter at the default bound of
100,000 messages (28 hours at one message per second).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from openfeeder.errors import OpenFeederError, StorageError

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL_S",
    "DEFAULT_MAX_IN_FLIGHT",
    "DroppedRange",
    "Forwarder",
    "ForwarderStats",
    "MeasurementStore",
    "PublishTracker",
    "sync_filesystem",
]

_LOG = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_INTERVAL_S: Final = 5.0
DEFAULT_MAX_IN_FLIGHT: Final = 32
RESEND_BACKOFF_MAX: Final = 64
_RECENT_MAX: Final = 64
"""Latest appends kept in memory for the forwarder (more than its window of 32)."""
_BUSY_TIMEOUT_S: Final = 0.5
"""How long to wait for a buffer held by another agent (an error: one agent per buffer)."""
_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY,
    t_ns INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER
);
CREATE TABLE IF NOT EXISTS dropped (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
"""


def sync_filesystem(path: Path) -> None:
    """Make everything written to ``path``'s file system durable: one ``syncfs`` on Linux (a
    single journal commit for all the buffers in it), ``os.sync`` elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Messages ``first_seq .. last_seq`` (inclusive) were dropped unconfirmed."""

    first_seq: int
    last_seq: int

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


class MeasurementStore:
    """The on-disk buffer of one meter (see the module docstring); thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int,
        drop_chunk: int | None = None,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        checkpoint_interval_s: float | None = DEFAULT_CHECKPOINT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.path = path
        self.max_messages = max_messages
        self.drop_chunk = max(1, drop_chunk if drop_chunk is not None else max_messages // 100)
        self._checkpoint_interval_s = checkpoint_interval_s
        self._clock = clock
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
        except (OSError, sqlite3.Error) as err:
            raise StorageError(f"{path}: cannot open the buffer: {err}", url=str(path)) from err
        try:
            # one agent per buffer: an exclusive lock keeps a second agent with the same id (and
            # state folder) out, and lets WAL work without the shared-memory -shm file
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            low, high = self._db.execute("SELECT MIN(seq), MAX(seq) FROM message").fetchone()
        except sqlite3.Error as err:
            self._db.close()
            raise StorageError(f"{path}: cannot read the buffer: {err}", url=str(path)) from err
        stored_next = meta.get("next_seq") or 0
        self._next_seq: int = max(stored_next, (high + 1) if high is not None else 0)
        self._first_seq: int = low if low is not None else self._next_seq
        committed = meta.get("committed_seq")
        self._committed_seq: int | None = committed
        self.dropped_total: int = meta.get("dropped_total") or 0
        self._last_checkpoint = clock()
        self._closed = False
        # the latest appends, contiguous up to next_seq - 1: the forwarder publishes them without
        # reading them back from the file
        self._recent: deque[tuple[int, bytes]] = deque(maxlen=_RECENT_MAX)

    # -- counters (cheap, any thread) ----------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The seq the next appended message must carry."""
        return self._next_seq

    @property
    def first_seq(self) -> int:
        """The oldest buffered seq (== ``next_seq`` when the buffer is empty)."""
        return self._first_seq

    @property
    def count(self) -> int:
        """Buffered (unconfirmed) messages: seqs ``first_seq .. next_seq - 1``."""
        return self._next_seq - self._first_seq

    @property
    def committed_seq(self) -> int | None:
        """The historian's last committed mark seen (None before the first one)."""
        return self._committed_seq

    # -- writing -------------------------------------------------------------------------------

    def append(self, seq: int, t_ns: int, payload: bytes) -> DroppedRange | None:
        """Persist message ``seq`` (must be ``next_seq``); returns the range dropped to make room."""
        with self._lock:
            if seq != self._next_seq:
                raise ValueError(f"append of seq {seq}, expected {self._next_seq}")
            dropped: DroppedRange | None = None
            full = self.count >= self.max_messages
            try:
                if full:  # drop and insert in one transaction
                    self._db.execute("BEGIN")
                    dropped = self._drop_oldest_locked()
                # one statement (one call into SQLite): a transaction of its own when not full
                self._db.execute(
                    "INSERT INTO message (seq, t_ns, payload) VALUES (?, ?, ?)",
                    (seq, t_ns, payload),
                )
                if full:
                    self._db.execute("COMMIT")
            except sqlite3.Error as err:
                if full:
                    self._rollback()
                raise StorageError(
                    f"{self.path}: append failed: {err}", url=str(self.path)
                ) from err
            if dropped is not None:
                self._first_seq = dropped.last_seq + 1
                self.dropped_total += dropped.count
            self._next_seq = seq + 1
            self._recent.append((seq, payload))
            self._maybe_checkpoint()
            return dropped

    def _drop_oldest_locked(self) -> DroppedRange:
        first = self._first_seq
        last = min(first + self.drop_chunk, self._next_seq) - 1
        self._db.execute("DELETE FROM message WHERE seq <= ?", (last,))
        previous = self._db.execute(
            "SELECT first_seq FROM dropped WHERE last_seq = ?", (first - 1,)
        ).fetchone()
        if previous is not None:  # contiguous with the last drop: one range
            self._db.execute(
                "UPDATE dropped SET last_seq = ? WHERE first_seq = ?", (last, previous[0])
            )
        else:
            self._db.execute(
                "INSERT INTO dropped (first_seq, last_seq) VALUES (?, ?)", (first, last)
            )
        self._set_meta("dropped_total", self.dropped_total + last - first + 1)
        return DroppedRange(first, last)

    def confirm(self, high_water_seq: int) -> int:
        """The historian committed everything up to ``high_water_seq``: delete it; rows deleted.

        A mark beyond ``next_seq - 1`` (this buffer lost its state, or another instance used the
        id) also raises ``next_seq`` so that no seq is used twice.
        """
        with self._lock:
            if self._committed_seq is not None and high_water_seq <= self._committed_seq:
                return 0
            before = self.count
            new_first = max(self._first_seq, min(high_water_seq + 1, self._next_seq))
            new_next = max(self._next_seq, high_water_seq + 1)
            try:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM message WHERE seq <= ?", (high_water_seq,))
                self._db.execute("DELETE FROM dropped WHERE last_seq <= ?", (high_water_seq,))
                self._set_meta("committed_seq", high_water_seq)
                self._set_meta("next_seq", new_next)
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise StorageError(
                    f"{self.path}: confirm failed: {err}", url=str(self.path)
                ) from err
            self._committed_seq = high_water_seq
            if new_next > self._next_seq:
                _LOG.warning(
                    "committed mark %d is ahead of the local counter %d: continuing at %d",
                    high_water_seq,
                    self._next_seq,
                    new_next,
                    extra={"path": str(self.path)},
                )
                new_first = new_next
            if new_next != self._next_seq:
                self._recent.clear()  # no longer contiguous with next_seq
            self._next_seq = new_next
            self._first_seq = new_first
            return max(0, before - self.count)

    # -- reading -------------------------------------------------------------------------------

    def read(self, from_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` buffered messages with ``seq >= from_seq``, in seq order."""
        with self._lock:
            recent = self._recent
            start = max(from_seq, self._first_seq)
            if recent and recent[0][0] <= start:  # all of them are among the latest appends
                skip = start - recent[0][0]
                return [recent[k] for k in range(skip, min(len(recent), skip + limit))]
            rows = self._db.execute(
                "SELECT seq, payload FROM message WHERE seq >= ? ORDER BY seq LIMIT ?",
                (from_seq, limit),
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def dropped_ranges(self) -> list[DroppedRange]:
        """Dropped ranges the committed mark has not passed yet (to be announced)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT first_seq, last_seq FROM dropped ORDER BY first_seq"
            ).fetchall()
        return [DroppedRange(int(first), int(last)) for first, last in rows]

    # -- housekeeping --------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Sync the WAL and the database file now (ends the power-loss window)."""
        with self._lock:
            if not self._closed:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self._last_checkpoint = self._clock()

    def _maybe_checkpoint(self) -> None:
        interval_s = self._checkpoint_interval_s
        if interval_s is not None and self._clock() - self._last_checkpoint >= interval_s:
            self.checkpoint()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._set_meta("next_seq", self._next_seq)
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                _LOG.warning("buffer %s: final checkpoint failed", self.path, exc_info=True)
            finally:
                self._db.close()

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            _LOG.debug("rollback after a failed write failed too", exc_info=True)


# --- forwarding -----------------------------------------------------------------------------------


class PublishTracker(Protocol):
    """What a publish returns: paho's ``MQTTMessageInfo`` (PUBACK received or not)."""

    def is_published(self) -> bool: ...


Publish = Callable[[int, bytes], PublishTracker]
"""Publishes one buffered message (seq, payload) on the monitoring broker."""
Announce = Callable[[DroppedRange], None]
"""Announces a dropped range (``data_dropped`` event on the grid_ops broker)."""


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    next_to_send: int
    in_flight: int
    published: int
    resends: int
    committed_seq: int | None


class Forwarder:
    """Publishes a :class:`MeasurementStore` in seq order with a bounded window (module docstring).

    Driven by one thread (the agent's loop): :meth:`pump` after each append and on each wake-up,
    :meth:`on_connected` after a reconnect, :meth:`on_committed` with each mark received.
    """

    def __init__(
        self,
        store: MeasurementStore,
        *,
        publish: Publish,
        announce: Announce,
        resend_after_s: float,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._publish = publish
        self._announce = announce
        self._resend_after_s = resend_after_s
        self._resend_interval_s = resend_after_s
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._in_flight: deque[tuple[int, PublishTracker]] = deque()
        self._next_to_send = store.first_seq
        self._oldest_sent_at: float | None = None
        self.published = 0
        self.resends = 0

    @property
    def next_to_send(self) -> int:
        return self._next_to_send

    @property
    def in_flight(self) -> int:
        self._prune()
        return len(self._in_flight)

    def stats(self) -> ForwarderStats:
        return ForwarderStats(
            next_to_send=self._next_to_send,
            in_flight=len(self._in_flight),
            published=self.published,
            resends=self.resends,
            committed_seq=self._store.committed_seq,
        )

    def on_connected(self) -> None:
        """A (re)connect to the monitoring broker: send again from the mark, announce drops."""
        store = self._store
        if store.committed_seq is not None:
            restart = max(store.committed_seq + 1, store.first_seq)
        else:  # no historian has confirmed anything: resume after the broker's last PUBACK
            self._prune()
            restart = self._in_flight[0][0] if self._in_flight else self._next_to_send
            restart = max(restart, store.first_seq)
        self._in_flight.clear()
        self._next_to_send = restart
        self._oldest_sent_at = None
        self._announce_pending()

    def on_committed(self, high_water_seq: int) -> int:
        """Apply a committed mark: delete what it covers; rows deleted."""
        previous = self._store.committed_seq
        deleted = self._store.confirm(high_water_seq)
        if previous is not None and high_water_seq <= previous:
            return 0
        self._resend_interval_s = self._resend_after_s  # progress: back-off starts over
        self._next_to_send = max(self._next_to_send, self._store.first_seq)
        sent_unconfirmed = self._store.first_seq < self._next_to_send
        self._oldest_sent_at = self._clock() if sent_unconfirmed else None
        return deleted

    def on_dropped(self, dropped: DroppedRange) -> None:
        """The store dropped a range to make room: skip it and announce it."""
        if self._next_to_send <= dropped.last_seq:
            self._next_to_send = dropped.last_seq + 1
        self._announce(dropped)

    def pump(self, *, connected: bool, limit: int = 256) -> int:
        """Publish what the window allows (if connected); resend when the mark stalls."""
        if not connected:
            return 0
        self._maybe_resend()
        self._prune()
        room = min(self._max_in_flight - len(self._in_flight), limit)
        store = self._store
        if room <= 0 or self._next_to_send >= store.next_seq:
            return 0
        sent = 0
        for seq, payload in store.read(self._next_to_send, room):
            try:
                tracker = self._publish(seq, payload)
            except OpenFeederError as err:  # refused by the client: try again on the next pump
                _LOG.warning("cannot publish seq %d: %s", seq, err)
                break
            self._in_flight.append((seq, tracker))
            self._next_to_send = seq + 1
            sent += 1
        if sent:
            self.published += sent
            if self._oldest_sent_at is None:
                self._oldest_sent_at = self._clock()
        return sent

    @property
    def window_full(self) -> bool:
        return len(self._in_flight) >= self._max_in_flight

    def _prune(self) -> None:
        flight = self._in_flight
        while flight and flight[0][1].is_published():
            flight.popleft()

    def _maybe_resend(self) -> None:
        store = self._store
        mark = store.committed_seq
        if mark is None or self._oldest_sent_at is None or store.first_seq >= self._next_to_send:
            return
        now = self._clock()
        if now - self._oldest_sent_at < self._resend_interval_s:
            return
        self._prune()
        if self._in_flight:  # the broker has not acknowledged all yet: not stalled downstream
            return
        restart = max(mark + 1, store.first_seq)
        _LOG.info(
            "committed mark %d has not moved for %.0f s: resending from %d",
            mark,
            now - self._oldest_sent_at,
            restart,
            extra={"path": str(store.path), "from_seq": restart},
        )
        self.resends += 1
        self._next_to_send = restart
        self._oldest_sent_at = None
        self._resend_interval_s = min(
            self._resend_interval_s * 2, self._resend_after_s * RESEND_BACKOFF_MAX
        )
        self._announce_pending()

    def announce_pending(self) -> None:
        """Announce every dropped range the committed mark has not passed (e.g. after a reconnect)."""
        self._announce_pending()

    def _announce_pending(self) -> None:
        mark = self._store.committed_seq
        for dropped in self._store.dropped_ranges():
            if mark is None or dropped.last_seq > mark:
                self._announce(dropped)
