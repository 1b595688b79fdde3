"""The historian's storage: one row per message, committed marks in the same transaction.

Tables (prefix ``historian_``, so that the catalog can share the database):

=========================  ==============================================================
historian_messages         (device_id, seq) primary key, t_ns, layout_id, channel_values
                           (PostgreSQL ``float8[]``, SQLite a JSON array), quality (one
                           character per channel, NULL when all are good); index
                           (device_id, t_ns) for time ranges and retention
historian_layouts          layout_id -> channels, units (in message order)
historian_layout_channels  (layout_id, channel) -> position, unit: what a per-channel query
                           joins to pick ``channel_values[position]``
historian_device_layouts   (device_id, layout_id): the layouts a device has used
historian_devices          device_id -> message_count, first_t_ns, last_t_ns (kept per batch)
historian_marks            device_id -> high_water_seq (-1: seq 0 not yet accounted for)
historian_losses           (device_id, first_seq, last_seq) a device announced as dropped
historian_schema           the layout version of these tables
=========================  ==============================================================

One batch is one transaction, taken under a database-wide writer lock (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL a transaction-scoped advisory lock) so that several historians sharing a database see
each other's rows when they compute marks: rows are inserted idempotently on (device_id, seq), the
losses recorded, the marks computed (:mod:`.marks`) from this batch, the marks persisted by other
historians and the rows they stored in this one's holes, then written with the device counters.
A batch is *committed* when COMMIT returns: SQLite runs with ``synchronous=FULL`` (WAL), so it
survives a crash of the process or the machine; PostgreSQL's durability is the server's
(``fsync=on`` and ``synchronous_commit=on``, its defaults, make COMMIT durable; with either off, a
server crash can lose recently committed batches whose marks were already published).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Final, Protocol

from openfeeder.errors import StorageError
from openfeeder.services.historian.marks import NO_MARK, Hole, MarkBook, SeqRuns
from openfeeder.services.historian.records import (
    BatchResult,
    Bucket,
    ChannelInfo,
    DeviceSummary,
    Layout,
    LossRange,
    MessageRow,
    RawPoint,
)

__all__ = ["SCHEMA_VERSION", "HistorianStore", "SqlStore", "open_store"]

SCHEMA_VERSION: Final = 1
MAX_T_NS: Final = 2**63 - 1
HOLE_RECHECK_NS: Final = 1_000_000_000
"""A hole already looked up in the database is looked up again at most this often."""
RETENTION_DEVICES_PER_TRANSACTION: Final = 200


class HistorianStore(Protocol):
    """What the writer, the REST API and the tests use; :func:`open_store` makes one."""

    @property
    def backend(self) -> str: ...

    def load_marks(self) -> MarkBook: ...

    def commit_batch(
        self,
        messages: Sequence[MessageRow],
        losses: Sequence[LossRange],
        *,
        layouts: Callable[[int], Layout],
        book: MarkBook,
        now_ns: int,
        recheck: Iterable[str] = (),
    ) -> BatchResult: ...

    def delete_older_than(self, cutoff_ns: int) -> int: ...

    def devices(self) -> list[DeviceSummary]: ...

    def device(self, device_id: str) -> DeviceSummary | None: ...

    def channels(self, device_id: str) -> list[ChannelInfo]: ...

    def raw(
        self, device_id: str, channel: str, *, start_ns: int, end_ns: int, limit: int
    ) -> list[RawPoint]: ...

    def buckets(
        self,
        device_id: str,
        channel: str,
        *,
        start_ns: int,
        end_ns: int,
        bucket_ns: int,
        limit: int,
    ) -> list[Bucket]: ...

    def stored_seqs(self, device_id: str) -> list[int]: ...

    def losses(self, device_id: str) -> list[LossRange]: ...

    def message_count(self) -> int: ...

    def close(self) -> None: ...


def open_store(url: str) -> SqlStore:
    """Open (creating the tables) the historian's store at a ``sqlite:///`` or ``postgresql://`` URL."""
    if url.startswith("postgresql"):
        from openfeeder.services.historian.postgresql_store import PostgresqlStore

        return PostgresqlStore(url)
    if url.startswith("sqlite:///"):
        from openfeeder.services.historian.sqlite_store import SqliteStore

        return SqliteStore(url)
    raise StorageError(f"{url}: not a sqlite:/// or postgresql:// URL", url=url)


def _unique(messages: Sequence[MessageRow]) -> list[MessageRow]:
    """The batch without repeats of one (device_id, seq): the first one wins."""
    seen: set[tuple[str, int]] = set()
    unique: list[MessageRow] = []
    for row in messages:
        key = (row.device_id, row.seq)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


class WriteTransaction(Protocol):
    """The backend's statements inside one locked write transaction."""

    def insert_layouts(self, layouts: Sequence[Layout]) -> None: ...

    def insert_messages(self, messages: Sequence[MessageRow]) -> int: ...

    def insert_device_layouts(self, pairs: Sequence[tuple[str, int]]) -> None: ...

    def insert_losses(self, losses: Sequence[LossRange]) -> None: ...

    def read_marks(self, device_ids: Sequence[str]) -> dict[str, int]: ...

    def accounted_runs(self, holes: Sequence[Hole]) -> list[tuple[str, int, int]]: ...

    def write_marks(self, marks: Mapping[str, int], *, now_ns: int) -> None: ...

    def delete_before(self, device_ids: Sequence[str], cutoff_ns: int) -> int:
        """Delete the devices' messages older than ``cutoff_ns``, fix their counters."""
        ...


class SqlStore(ABC):
    """The batch algorithm shared by both backends; subclasses provide the SQL."""

    backend: ClassVar[str]

    def __init__(self, url: str) -> None:
        self.url = url
        self._read_lock = threading.Lock()
        self._stored_layouts: set[int] = set()
        self._device_layouts: set[tuple[str, int]] = set()

    # -- writer side (one thread at a time) --------------------------------------------------

    @abstractmethod
    def _write(self) -> AbstractContextManager[WriteTransaction]:
        """A locked write transaction: commits on exit, rolls back on an exception."""

    @abstractmethod
    def _load_rows(
        self,
    ) -> tuple[dict[str, int], list[tuple[str, int, int]], list[tuple[str, int, int]]]:
        """Persisted marks, runs of stored seqs above them, loss ranges reaching above them."""

    def load_marks(self) -> MarkBook:
        """Rebuild every device's mark and runs from the database (at start).

        Marks a restart or another historian left behind are brought up to date (persisted).
        """
        marks, runs, losses = self._load_rows()
        states: dict[str, SeqRuns] = {}
        for device_id, mark in marks.items():
            states[device_id] = SeqRuns(mark)
        for device_id, first, last in (*runs, *losses):
            states.setdefault(device_id, SeqRuns()).add(first, last)
        book = MarkBook(states)
        behind = {d: s.mark for d, s in states.items() if s.mark > marks.get(d, NO_MARK)}
        if behind:
            with self._write() as tx:
                tx.write_marks(behind, now_ns=0)
        return book

    def commit_batch(
        self,
        messages: Sequence[MessageRow],
        losses: Sequence[LossRange],
        *,
        layouts: Callable[[int], Layout],
        book: MarkBook,
        now_ns: int,
        recheck: Iterable[str] = (),
    ) -> BatchResult:
        """Store one batch and advance the marks, in one transaction; idempotent on (device, seq).

        ``recheck`` adds devices without messages in the batch whose holes are looked up again
        (:meth:`MarkBook.stale_holes`). ``book`` changes only if the transaction commits; on an
        error (a ``StorageError`` from the backend) nothing of the batch is stored and the batch
        can be retried as it is.
        """
        rows = _unique(messages)
        devices = sorted(
            {row.device_id for row in rows} | {loss.device_id for loss in losses} | set(recheck)
        )
        new_layouts = sorted({row.layout_id for row in rows} - self._stored_layouts)
        new_pairs = sorted({(row.device_id, row.layout_id) for row in rows} - self._device_layouts)
        changes = book.stage(devices)
        resent = {row.device_id for row in rows if row.seq <= book.mark(row.device_id)}
        with self._write() as tx:
            tx.insert_layouts([layouts(layout_id) for layout_id in new_layouts])
            inserted = tx.insert_messages(rows) if rows else 0
            tx.insert_device_layouts(new_pairs)
            tx.insert_losses(losses)
            changes.raise_marks(tx.read_marks(devices))
            for row in rows:
                changes.add(row.device_id, row.seq, row.seq)
            for loss in losses:
                changes.add(loss.device_id, loss.first_seq, loss.last_seq)
            holes = changes.holes_to_check(now_ns=now_ns, recheck_after_ns=HOLE_RECHECK_NS)
            if holes:
                for device_id, first, last in tx.accounted_runs(holes):
                    changes.add(device_id, first, last)
            advanced = changes.advanced()
            tx.write_marks(advanced, now_ns=now_ns)
        changes.apply()
        self._stored_layouts.update(new_layouts)
        self._device_layouts.update(new_pairs)
        return BatchResult(
            messages=len(rows),
            inserted=inserted,
            duplicates=len(rows) - inserted,
            losses=len(losses),
            advanced=advanced,
            resent={device_id: book.mark(device_id) for device_id in resent - advanced.keys()},
        )

    def delete_older_than(self, cutoff_ns: int) -> int:
        """Retention: delete messages with ``t_ns < cutoff_ns`` (marks and losses stay)."""
        deleted = 0
        device_ids = [summary.device_id for summary in self.devices()]
        for start in range(0, len(device_ids), RETENTION_DEVICES_PER_TRANSACTION):
            chunk = device_ids[start : start + RETENTION_DEVICES_PER_TRANSACTION]
            deleted += self._delete_chunk(chunk, cutoff_ns)
        return deleted

    def _delete_chunk(self, device_ids: Sequence[str], cutoff_ns: int) -> int:
        with self._write() as tx:
            return tx.delete_before(device_ids, cutoff_ns)

    # -- readers (REST API, tests, benchmarks; any thread) -----------------------------------

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run a read-only query on the reader connection (serialized by ``_read_lock``)."""

    _DEVICES_SQL: ClassVar[str] = (
        "SELECT k.device_id, coalesce(d.message_count, 0), d.first_t_ns, d.last_t_ns,"
        " k.high_water_seq FROM historian_marks k"
        " LEFT JOIN historian_devices d ON d.device_id = k.device_id"
    )

    def devices(self) -> list[DeviceSummary]:
        """Every device with stored messages or announced losses, by id."""
        rows = self._query(self._DEVICES_SQL + " ORDER BY k.device_id", ())
        return [_summary(row) for row in rows]

    def device(self, device_id: str) -> DeviceSummary | None:
        rows = self._query(self._DEVICES_SQL + f" WHERE k.device_id = {self._param}", (device_id,))
        return _summary(rows[0]) if rows else None

    def channels(self, device_id: str) -> list[ChannelInfo]:
        """The channels (with units) a device's stored messages carry, by name."""
        p = self._param
        rows = self._query(
            "SELECT DISTINCT c.channel, c.unit FROM historian_device_layouts dl"
            " JOIN historian_layout_channels c ON c.layout_id = dl.layout_id"
            f" WHERE dl.device_id = {p} ORDER BY c.channel, c.unit",
            (device_id,),
        )
        return [ChannelInfo(str(channel), str(unit)) for channel, unit in rows]

    def stored_seqs(self, device_id: str) -> list[int]:
        """Every stored seq of a device, ascending (for checks: each appears once)."""
        rows = self._query(
            f"SELECT seq FROM historian_messages WHERE device_id = {self._param} ORDER BY seq",
            (device_id,),
        )
        return [int(seq) for (seq,) in rows]

    def losses(self, device_id: str) -> list[LossRange]:
        p = self._param
        rows = self._query(
            "SELECT device_id, first_seq, last_seq, reported_t_ns FROM historian_losses"
            f" WHERE device_id = {p} ORDER BY first_seq",
            (device_id,),
        )
        return [LossRange(str(d), int(a), int(b), int(t)) for d, a, b, t in rows]

    def message_count(self) -> int:
        """Messages stored, all devices (from the per-device counters: no table scan)."""
        rows = self._query("SELECT coalesce(sum(message_count), 0) FROM historian_devices", ())
        return int(rows[0][0])

    _param: ClassVar[str]
    """The driver's placeholder: ``?`` (sqlite3) or ``%s`` (psycopg)."""

    @abstractmethod
    def raw(
        self, device_id: str, channel: str, *, start_ns: int, end_ns: int, limit: int
    ) -> list[RawPoint]:
        """One channel's values with ``start_ns <= t_ns < end_ns``, by time, at most ``limit``."""

    @abstractmethod
    def buckets(
        self,
        device_id: str,
        channel: str,
        *,
        start_ns: int,
        end_ns: int,
        bucket_ns: int,
        limit: int,
    ) -> list[Bucket]:
        """Per-bucket aggregates of one channel (buckets aligned on multiples of ``bucket_ns``)."""

    @abstractmethod
    def close(self) -> None: ...


def _summary(row: tuple[Any, ...]) -> DeviceSummary:
    device_id, count, first, last, mark = row
    return DeviceSummary(
        device_id=str(device_id),
        message_count=int(count),
        first_t_ns=None if first is None else int(first),
        last_t_ns=None if last is None else int(last),
        high_water_seq=None if mark is None or mark < 0 else int(mark),
    )


def run_groups(rows: Iterable[tuple[Any, ...]]) -> list[tuple[str, int, int]]:
    """``(device_id, first, last)`` rows from the database as typed tuples."""
    return [(str(device_id), int(first), int(last)) for device_id, first, last in rows]


LOAD_MARKS_SQL: Final = "SELECT device_id, high_water_seq FROM historian_marks"
LOAD_RUNS_SQL: Final = (
    # gaps and islands: within one device, seq - row_number() is constant along a run
    "SELECT device_id, min(seq), max(seq) FROM ("
    " SELECT m.device_id, m.seq,"
    "  m.seq - row_number() OVER (PARTITION BY m.device_id ORDER BY m.seq) AS run"
    " FROM historian_messages m JOIN historian_marks k"
    "  ON k.device_id = m.device_id AND m.seq > k.high_water_seq"
    ") above GROUP BY device_id, run"
)
LOAD_LOSSES_SQL: Final = (
    "SELECT l.device_id, l.first_seq, l.last_seq FROM historian_losses l"
    " JOIN historian_marks k ON k.device_id = l.device_id AND l.last_seq > k.high_water_seq"
)
