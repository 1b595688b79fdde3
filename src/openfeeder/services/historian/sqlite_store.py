"""The historian's SQLite backend (the embedded default): WAL, ``synchronous=FULL``.

Channel values are stored as a JSON array (``json_extract`` picks one channel in SQL); writes take
the database's write lock with ``BEGIN IMMEDIATE``; readers use their own connection, which WAL lets
read while the writer writes (for ``sqlite:///:memory:`` both share one connection and one lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Final

from openfeeder.errors import StorageError
from openfeeder.iot.schema import Quality
from openfeeder.services.database import connect_sqlite, sqlite_path
from openfeeder.services.historian.marks import Hole
from openfeeder.services.historian.records import (
    Bucket,
    Layout,
    LossRange,
    MessageRow,
    RawPoint,
    quality_at,
)
from openfeeder.services.historian.store import (
    LOAD_LOSSES_SQL,
    LOAD_MARKS_SQL,
    LOAD_RUNS_SQL,
    SCHEMA_VERSION,
    SqlStore,
    run_groups,
)

__all__ = ["SqliteStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS historian_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS historian_layouts (
    layout_id INTEGER PRIMARY KEY,
    channels TEXT NOT NULL,
    units TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS historian_layout_channels (
    layout_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    position INTEGER NOT NULL,
    unit TEXT NOT NULL,
    PRIMARY KEY (layout_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS historian_messages (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t_ns INTEGER NOT NULL,
    layout_id INTEGER NOT NULL,
    channel_values TEXT NOT NULL,
    quality TEXT,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS historian_messages_by_time ON historian_messages (device_id, t_ns);
CREATE TABLE IF NOT EXISTS historian_device_layouts (
    device_id TEXT NOT NULL,
    layout_id INTEGER NOT NULL,
    PRIMARY KEY (device_id, layout_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS historian_devices (
    device_id TEXT PRIMARY KEY,
    message_count INTEGER NOT NULL,
    first_t_ns INTEGER,
    last_t_ns INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS historian_marks (
    device_id TEXT PRIMARY KEY,
    high_water_seq INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS historian_losses (
    device_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    reported_t_ns INTEGER NOT NULL,
    PRIMARY KEY (device_id, first_seq, last_seq)
) WITHOUT ROWID;
"""

_STAGE: Final = """
CREATE TEMP TABLE IF NOT EXISTS historian_stage (
    device_id TEXT, seq INTEGER, t_ns INTEGER, layout_id INTEGER, channel_values TEXT, quality TEXT
)
"""
_COLUMNS: Final = "device_id, seq, t_ns, layout_id, channel_values, quality"
_NEW_ROW_STATS: Final = (
    "SELECT s.device_id, count(*), min(s.t_ns), max(s.t_ns) FROM temp.historian_stage s"
    " WHERE NOT EXISTS (SELECT 1 FROM historian_messages m"
    "  WHERE m.device_id = s.device_id AND m.seq = s.seq)"
    " GROUP BY s.device_id"
)
_UPSERT_DEVICE: Final = (
    "INSERT INTO historian_devices (device_id, message_count, first_t_ns, last_t_ns)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET"
    " message_count = message_count + excluded.message_count,"
    " first_t_ns = coalesce(min(first_t_ns, excluded.first_t_ns), excluded.first_t_ns),"
    " last_t_ns = coalesce(max(last_t_ns, excluded.last_t_ns), excluded.last_t_ns)"
)
_HOLES: Final = (
    "WITH h AS (SELECT json_extract(value, '$[0]') AS device_id,"
    " json_extract(value, '$[1]') AS after, json_extract(value, '$[2]') AS before"
    " FROM json_each(?))"
)
_RUNS_IN_HOLES: Final = (
    _HOLES + " SELECT device_id, min(seq), max(seq) FROM ("
    " SELECT m.device_id, m.seq,"
    "  m.seq - row_number() OVER (PARTITION BY m.device_id ORDER BY m.seq) AS run"
    " FROM h JOIN historian_messages m"
    "  ON m.device_id = h.device_id AND m.seq > h.after AND m.seq < h.before"
    ") found GROUP BY device_id, run"
)
_LOSSES_IN_HOLES: Final = (
    _HOLES + " SELECT l.device_id, l.first_seq, l.last_seq FROM h JOIN historian_losses l"
    " ON l.device_id = h.device_id AND l.last_seq > h.after AND l.first_seq < h.before"
)
_CHANNEL_ROWS: Final = (
    "SELECT m.t_ns AS t_ns,"
    " json_extract(m.channel_values, '$[' || c.position || ']') AS v,"
    " substr(m.quality, c.position + 1, 1) AS q"
    " FROM historian_messages m JOIN historian_layout_channels c"
    "  ON c.layout_id = m.layout_id AND c.channel = :channel"
    " WHERE m.device_id = :device_id AND m.t_ns >= :start_ns AND m.t_ns < :end_ns"
)


class _SqliteWrite:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._c = connection

    def insert_layouts(self, layouts: Sequence[Layout]) -> None:
        self._c.executemany(
            "INSERT INTO historian_layouts VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(x.layout_id, json.dumps(x.channels), json.dumps(x.units)) for x in layouts],
        )
        self._c.executemany(
            "INSERT INTO historian_layout_channels VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                (x.layout_id, channel, position, unit)
                for x in layouts
                for position, (channel, unit) in enumerate(zip(x.channels, x.units, strict=True))
            ],
        )

    def insert_messages(self, messages: Sequence[MessageRow]) -> int:
        c = self._c
        c.executemany(
            f"INSERT INTO temp.historian_stage ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            # str() of a list of finite floats is a JSON array
            [(r.device_id, r.seq, r.t_ns, r.layout_id, str(r.values), r.quality) for r in messages],
        )
        stats = c.execute(_NEW_ROW_STATS).fetchall()
        c.execute(
            f"INSERT INTO historian_messages ({_COLUMNS}) SELECT {_COLUMNS}"
            " FROM temp.historian_stage WHERE true ON CONFLICT DO NOTHING"
        )
        c.execute("DELETE FROM temp.historian_stage")
        c.executemany(_UPSERT_DEVICE, stats)
        return sum(int(row[1]) for row in stats)

    def insert_device_layouts(self, pairs: Sequence[tuple[str, int]]) -> None:
        self._c.executemany(
            "INSERT INTO historian_device_layouts VALUES (?, ?) ON CONFLICT DO NOTHING", pairs
        )

    def insert_losses(self, losses: Sequence[LossRange]) -> None:
        self._c.executemany(
            "INSERT INTO historian_losses VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(x.device_id, x.first_seq, x.last_seq, x.t_ns) for x in losses],
        )

    def read_marks(self, device_ids: Sequence[str]) -> dict[str, int]:
        rows = self._c.execute(
            "SELECT device_id, high_water_seq FROM historian_marks"
            " WHERE device_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(device_ids)),),
        )
        return {str(device_id): int(mark) for device_id, mark in rows}

    def accounted_runs(self, holes: Sequence[Hole]) -> list[tuple[str, int, int]]:
        document = json.dumps([[h.device_id, h.after, h.before] for h in holes])
        runs = run_groups(self._c.execute(_RUNS_IN_HOLES, (document,)))
        return runs + run_groups(self._c.execute(_LOSSES_IN_HOLES, (document,)))

    def write_marks(self, marks: Mapping[str, int], *, now_ns: int) -> None:
        self._c.executemany(
            "INSERT INTO historian_marks VALUES (?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET"
            " high_water_seq = max(high_water_seq, excluded.high_water_seq),"
            " updated_ns = excluded.updated_ns",
            [(device_id, mark, now_ns) for device_id, mark in marks.items()],
        )

    def delete_before(self, device_ids: Sequence[str], cutoff_ns: int) -> int:
        deleted = 0
        for device_id in device_ids:
            cursor = self._c.execute(
                "DELETE FROM historian_messages WHERE device_id = ? AND t_ns < ?",
                (device_id, cutoff_ns),
            )
            if cursor.rowcount > 0:
                deleted += cursor.rowcount
                self._c.execute(
                    "UPDATE historian_devices SET message_count = message_count - ?,"
                    " first_t_ns = (SELECT min(t_ns) FROM historian_messages WHERE device_id = ?),"
                    " last_t_ns = (SELECT max(t_ns) FROM historian_messages WHERE device_id = ?)"
                    " WHERE device_id = ?",
                    (cursor.rowcount, device_id, device_id, device_id),
                )
        return deleted


class SqliteStore(SqlStore):
    """Historian tables in a SQLite file (or in memory)."""

    backend: ClassVar[str] = "sqlite"
    _param: ClassVar[str] = "?"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._writer = connect_sqlite(url)
        try:
            self._writer.executescript(_SCHEMA)
            self._writer.execute(_STAGE)
            self._check_schema()
            if sqlite_path(url) is None:  # one in-memory database: share the connection
                self._reader = self._writer
                self._write_lock = self._read_lock
            else:
                self._reader = connect_sqlite(url)
                self._reader.execute("PRAGMA query_only = ON")
                self._write_lock = threading.Lock()
        except sqlite3.Error as err:
            self._writer.close()
            raise StorageError(
                f"{url}: cannot set up the historian tables: {err}", url=url
            ) from err

    def _check_schema(self) -> None:
        rows = self._writer.execute("SELECT version FROM historian_schema").fetchall()
        if not rows:
            self._writer.execute("INSERT INTO historian_schema VALUES (?)", (SCHEMA_VERSION,))
        elif rows[0][0] != SCHEMA_VERSION:
            raise StorageError(
                f"{self.url}: historian tables have layout version {rows[0][0]},"
                f" this build uses {SCHEMA_VERSION}",
                url=self.url,
            )

    @contextmanager
    def _write(self) -> Iterator[_SqliteWrite]:
        with self._write_lock:
            c = self._writer
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise StorageError(
                    f"{self.url}: cannot begin a write: {err}", url=self.url
                ) from err
            try:
                yield _SqliteWrite(c)
                c.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise StorageError(f"{self.url}: write failed: {err}", url=self.url) from err
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._writer.in_transaction:
            self._writer.execute("ROLLBACK")

    def _load_rows(
        self,
    ) -> tuple[dict[str, int], list[tuple[str, int, int]], list[tuple[str, int, int]]]:
        c = self._writer
        with self._write_lock:
            marks = {str(d): int(m) for d, m in c.execute(LOAD_MARKS_SQL)}
            runs = run_groups(c.execute(LOAD_RUNS_SQL))
            losses = run_groups(c.execute(LOAD_LOSSES_SQL))
        return marks, runs, losses

    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise StorageError(f"{self.url}: query failed: {err}", url=self.url) from err

    def raw(
        self, device_id: str, channel: str, *, start_ns: int, end_ns: int, limit: int
    ) -> list[RawPoint]:
        rows = self._query(
            _CHANNEL_ROWS + " ORDER BY m.t_ns LIMIT :limit",
            {
                "device_id": device_id,
                "channel": channel,
                "start_ns": start_ns,
                "end_ns": end_ns,
                "limit": limit,
            },
        )
        return [
            RawPoint(int(t_ns), float(value), Quality.GOOD if not q else quality_at(q, 0))
            for t_ns, value, q in rows
        ]

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
        valid = "FILTER (WHERE x.q IS NOT 'i')"
        rows = self._query(
            f"SELECT (x.t_ns / :bucket_ns) * :bucket_ns AS b, avg(x.v) {valid},"
            f" min(x.v) {valid}, max(x.v) {valid}, count(x.v) {valid}"
            f" FROM ({_CHANNEL_ROWS}) x GROUP BY b ORDER BY b LIMIT :limit",
            {
                "device_id": device_id,
                "channel": channel,
                "start_ns": start_ns,
                "end_ns": end_ns,
                "bucket_ns": bucket_ns,
                "limit": limit,
            },
        )
        return [_bucket(row) for row in rows]

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        if self._reader is not self._writer:
            with self._read_lock:
                self._reader.close()


def _bucket(row: tuple[Any, ...]) -> Bucket:
    start, avg, low, high, count = row
    return Bucket(
        start_ns=int(start),
        avg=None if avg is None else float(avg),
        min=None if low is None else float(low),
        max=None if high is None else float(high),
        count=int(count),
    )
