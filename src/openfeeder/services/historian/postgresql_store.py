"""The historian's PostgreSQL backend: COPY into a staging table, one transaction per batch.

A batch is COPYed (text format) into a session-local temporary table, then moved with
``INSERT ... SELECT ... ON CONFLICT (device_id, seq) DO NOTHING``, whose ``RETURNING`` rows feed the
per-device counters in the same statement. Channel values are ``float8[]``; a per-channel query
picks ``channel_values[position + 1]`` through ``historian_layout_channels``. Writers of one schema
serialize on a transaction-scoped advisory lock keyed by the schema name (see :mod:`.store`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Final

from openfeeder.errors import StorageError
from openfeeder.services.database import connect_postgresql, redact_url
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

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresqlStore"]

_LOG = logging.getLogger("openfeeder.services.historian")

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS historian_schema (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS historian_layouts (
        layout_id bigint PRIMARY KEY,
        channels text[] NOT NULL,
        units text[] NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS historian_layout_channels (
        layout_id bigint NOT NULL,
        channel text NOT NULL,
        position integer NOT NULL,
        unit text NOT NULL,
        PRIMARY KEY (layout_id, channel)
    )""",
    """CREATE TABLE IF NOT EXISTS historian_messages (
        device_id text NOT NULL,
        seq bigint NOT NULL,
        t_ns bigint NOT NULL,
        layout_id bigint NOT NULL,
        channel_values float8[] NOT NULL,
        quality text,
        PRIMARY KEY (device_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS historian_messages_by_time ON historian_messages (device_id, t_ns)",
    """CREATE TABLE IF NOT EXISTS historian_device_layouts (
        device_id text NOT NULL,
        layout_id bigint NOT NULL,
        PRIMARY KEY (device_id, layout_id)
    )""",
    """CREATE TABLE IF NOT EXISTS historian_devices (
        device_id text PRIMARY KEY,
        message_count bigint NOT NULL,
        first_t_ns bigint,
        last_t_ns bigint
    )""",
    """CREATE TABLE IF NOT EXISTS historian_marks (
        device_id text PRIMARY KEY,
        high_water_seq bigint NOT NULL,
        updated_ns bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS historian_losses (
        device_id text NOT NULL,
        first_seq bigint NOT NULL,
        last_seq bigint NOT NULL,
        reported_t_ns bigint NOT NULL,
        PRIMARY KEY (device_id, first_seq, last_seq)
    )""",
)
_STAGE: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS historian_stage (device_id text, seq bigint, t_ns bigint,"
    " layout_id bigint, channel_values float8[], quality text) ON COMMIT DELETE ROWS"
)
_COLUMNS: Final = "device_id, seq, t_ns, layout_id, channel_values, quality"
_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.openfeeder.historian'))"
_MOVE_STAGE: Final = f"""
WITH inserted AS (
    INSERT INTO historian_messages ({_COLUMNS})
    SELECT {_COLUMNS} FROM historian_stage
    ON CONFLICT (device_id, seq) DO NOTHING
    RETURNING device_id, t_ns
), per_device AS (
    SELECT device_id, count(*) AS n, min(t_ns) AS first_t_ns, max(t_ns) AS last_t_ns
    FROM inserted GROUP BY device_id
), counted AS (
    INSERT INTO historian_devices AS d (device_id, message_count, first_t_ns, last_t_ns)
    SELECT device_id, n, first_t_ns, last_t_ns FROM per_device
    ON CONFLICT (device_id) DO UPDATE SET
        message_count = d.message_count + excluded.message_count,
        first_t_ns = least(d.first_t_ns, excluded.first_t_ns),
        last_t_ns = greatest(d.last_t_ns, excluded.last_t_ns)
)
SELECT coalesce(sum(n), 0)::bigint FROM per_device
"""
_HOLES: Final = (
    "WITH h AS (SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])"
    " AS h(device_id, after, before))"
)
_RUNS_IN_HOLES: Final = (
    _HOLES + " SELECT device_id, min(seq), max(seq) FROM ("
    " SELECT m.device_id, m.seq,"
    "  m.seq - row_number() OVER (PARTITION BY m.device_id ORDER BY m.seq) AS run"
    " FROM h JOIN historian_messages m"
    "  ON m.device_id = h.device_id AND m.seq > h.after AND m.seq < h.before"
    ") found GROUP BY device_id, run"
    " UNION ALL SELECT l.device_id, l.first_seq, l.last_seq FROM h JOIN historian_losses l"
    " ON l.device_id = h.device_id AND l.last_seq > h.after AND l.first_seq < h.before"
)
_CHANNEL_ROWS: Final = (
    "SELECT m.t_ns AS t_ns, m.channel_values[c.position + 1] AS v,"
    " substr(m.quality, c.position + 1, 1) AS q"
    " FROM historian_messages m JOIN historian_layout_channels c"
    "  ON c.layout_id = m.layout_id AND c.channel = %(channel)s"
    " WHERE m.device_id = %(device_id)s AND m.t_ns >= %(start_ns)s AND m.t_ns < %(end_ns)s"
)


def _copy_line(row: MessageRow) -> str:
    # COPY text format; device ids, layout ids and quality codes never need escaping, and
    # str() of a list of finite floats is "[1.0, 2.5]", which becomes the array "{1.0, 2.5}".
    quality = "\\N" if row.quality is None else row.quality
    values = str(row.values)[1:-1]
    return f"{row.device_id}\t{row.seq}\t{row.t_ns}\t{row.layout_id}\t{{{values}}}\t{quality}\n"


class _PostgresqlWrite:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._c = connection

    def insert_layouts(self, layouts: Sequence[Layout]) -> None:
        if not layouts:
            return
        with self._c.cursor() as cur:
            cur.executemany(
                "INSERT INTO historian_layouts VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(x.layout_id, list(x.channels), list(x.units)) for x in layouts],
            )
            cur.executemany(
                "INSERT INTO historian_layout_channels VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [
                    (x.layout_id, channel, position, unit)
                    for x in layouts
                    for position, (channel, unit) in enumerate(
                        zip(x.channels, x.units, strict=True)
                    )
                ],
            )

    def insert_messages(self, messages: Sequence[MessageRow]) -> int:
        with self._c.cursor() as cur:
            with cur.copy(f"COPY historian_stage ({_COLUMNS}) FROM STDIN") as copy:
                copy.write("".join([_copy_line(row) for row in messages]))
            row = cur.execute(_MOVE_STAGE).fetchone()
        return 0 if row is None else int(row[0])

    def insert_device_layouts(self, pairs: Sequence[tuple[str, int]]) -> None:
        if pairs:
            self._c.execute(
                "INSERT INTO historian_device_layouts"
                " SELECT * FROM unnest(%s::text[], %s::bigint[]) ON CONFLICT DO NOTHING",
                ([d for d, _ in pairs], [layout for _, layout in pairs]),
            )

    def insert_losses(self, losses: Sequence[LossRange]) -> None:
        if losses:
            self._c.execute(
                "INSERT INTO historian_losses SELECT * FROM"
                " unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[])"
                " ON CONFLICT DO NOTHING",
                (
                    [x.device_id for x in losses],
                    [x.first_seq for x in losses],
                    [x.last_seq for x in losses],
                    [x.t_ns for x in losses],
                ),
            )

    def read_marks(self, device_ids: Sequence[str]) -> dict[str, int]:
        rows = self._c.execute(
            "SELECT device_id, high_water_seq FROM historian_marks WHERE device_id = ANY(%s)",
            (list(device_ids),),
        ).fetchall()
        return {str(device_id): int(mark) for device_id, mark in rows}

    def accounted_runs(self, holes: Sequence[Hole]) -> list[tuple[str, int, int]]:
        rows = self._c.execute(
            _RUNS_IN_HOLES,
            ([h.device_id for h in holes], [h.after for h in holes], [h.before for h in holes]),
        ).fetchall()
        return run_groups(rows)

    def write_marks(self, marks: Mapping[str, int], *, now_ns: int) -> None:
        if marks:
            self._c.execute(
                "INSERT INTO historian_marks AS k SELECT d, m, %s"
                " FROM unnest(%s::text[], %s::bigint[]) AS u(d, m)"
                " ON CONFLICT (device_id) DO UPDATE SET"
                " high_water_seq = greatest(k.high_water_seq, excluded.high_water_seq),"
                " updated_ns = excluded.updated_ns",
                (now_ns, list(marks), list(marks.values())),
            )

    def delete_before(self, device_ids: Sequence[str], cutoff_ns: int) -> int:
        row = self._c.execute(
            """
            WITH gone AS (
                DELETE FROM historian_messages
                WHERE device_id = ANY(%s) AND t_ns < %s RETURNING device_id
            ), per_device AS (
                SELECT device_id, count(*) AS n FROM gone GROUP BY device_id
            ), fixed AS (
                UPDATE historian_devices d SET message_count = d.message_count - p.n
                FROM per_device p WHERE d.device_id = p.device_id
            )
            SELECT coalesce(sum(n), 0)::bigint FROM per_device
            """,
            (list(device_ids), cutoff_ns),
        ).fetchone()
        # The first/last times come from the index once the deletion is visible.
        self._c.execute(
            "UPDATE historian_devices d SET"
            " first_t_ns = (SELECT min(t_ns) FROM historian_messages m"
            "  WHERE m.device_id = d.device_id),"
            " last_t_ns = (SELECT max(t_ns) FROM historian_messages m"
            "  WHERE m.device_id = d.device_id)"
            " WHERE d.device_id = ANY(%s) AND d.first_t_ns < %s",
            (list(device_ids), cutoff_ns),
        )
        return 0 if row is None else int(row[0])


class PostgresqlStore(SqlStore):
    """Historian tables in a PostgreSQL database (the schema first in the URL's search_path)."""

    backend: ClassVar[str] = "postgresql"
    _param: ClassVar[str] = "%s"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._shown = redact_url(url)
        self._writer = connect_postgresql(url, autocommit=True)
        try:
            self._reader = connect_postgresql(url, autocommit=True)
        except StorageError:
            self._writer.close()
            raise
        self._write_lock = threading.Lock()
        try:
            self._setup()
        except Exception:
            self.close()
            raise

    def _setup(self) -> None:
        import psycopg

        try:
            with self._writer.transaction():
                self._writer.execute(_LOCK)
                for statement in _SCHEMA:
                    self._writer.execute(statement)
                rows = self._writer.execute("SELECT version FROM historian_schema").fetchall()
                if not rows:
                    self._writer.execute(
                        "INSERT INTO historian_schema VALUES (%s)", (SCHEMA_VERSION,)
                    )
            self._writer.execute(_STAGE)
        except psycopg.Error as err:
            raise StorageError(
                f"{self._shown}: cannot set up the historian tables: {err}", url=self._shown
            ) from err
        if rows and rows[0][0] != SCHEMA_VERSION:
            raise StorageError(
                f"{self._shown}: historian tables have layout version {rows[0][0]},"
                f" this build uses {SCHEMA_VERSION}",
                url=self._shown,
            )

    @property
    def backend_pids(self) -> tuple[int, int]:
        """Server process ids of the writer and the reader connection (for diagnostics)."""
        return self._writer.info.backend_pid, self._reader.info.backend_pid

    def _usable(self, connection: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        """``connection``, or a new one if the server closed it (restart, network): the writer
        keeps retrying a batch, and each retry must get a working connection."""
        if not connection.closed and not connection.broken:
            return connection
        connection.close()
        fresh = connect_postgresql(self.url, autocommit=True)
        _LOG.info("reconnected to PostgreSQL %s", self._shown, extra={"url": self._shown})
        return fresh

    @contextmanager
    def _write(self) -> Iterator[_PostgresqlWrite]:
        import psycopg

        with self._write_lock:
            if self._writer.closed or self._writer.broken:
                self._writer = self._usable(self._writer)
                try:
                    self._writer.execute(_STAGE)
                except psycopg.Error as err:
                    raise StorageError(f"{self._shown}: {err}", url=self._shown) from err
            try:
                with self._writer.transaction():
                    self._writer.execute(_LOCK)
                    yield _PostgresqlWrite(self._writer)
            except psycopg.Error as err:
                raise StorageError(f"{self._shown}: write failed: {err}", url=self._shown) from err

    def _load_rows(
        self,
    ) -> tuple[dict[str, int], list[tuple[str, int, int]], list[tuple[str, int, int]]]:
        import psycopg

        try:
            with self._write_lock, self._writer.transaction():
                self._writer.execute(_LOCK)
                marks = {str(d): int(m) for d, m in self._writer.execute(LOAD_MARKS_SQL).fetchall()}
                runs = run_groups(self._writer.execute(LOAD_RUNS_SQL).fetchall())
                losses = run_groups(self._writer.execute(LOAD_LOSSES_SQL).fetchall())
        except psycopg.Error as err:
            raise StorageError(f"{self._shown}: cannot read marks: {err}", url=self._shown) from err
        return marks, runs, losses

    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        import psycopg

        with self._read_lock:
            for attempt in (1, 2):  # a read is safe to repeat on a fresh connection
                try:
                    self._reader = self._usable(self._reader)
                    return self._reader.execute(sql, params).fetchall()
                except psycopg.Error as err:
                    if attempt == 1 and self._reader.broken:
                        continue
                    raise StorageError(
                        f"{self._shown}: query failed: {err}", url=self._shown
                    ) from err
        raise StorageError(f"{self._shown}: query failed", url=self._shown)  # not reached

    def raw(
        self, device_id: str, channel: str, *, start_ns: int, end_ns: int, limit: int
    ) -> list[RawPoint]:
        rows = self._query(
            _CHANNEL_ROWS + " ORDER BY m.t_ns LIMIT %(limit)s",
            {
                "device_id": device_id,
                "channel": channel,
                "start_ns": start_ns,
                "end_ns": end_ns,
                "limit": limit,
            },
        )
        return [RawPoint(int(t), float(v), quality_at(q or None, 0)) for t, v, q in rows]

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
        valid = "FILTER (WHERE x.q IS DISTINCT FROM 'i')"
        rows = self._query(
            f"SELECT (x.t_ns / %(bucket_ns)s) * %(bucket_ns)s AS b, avg(x.v) {valid},"
            f" min(x.v) {valid}, max(x.v) {valid}, count(x.v) {valid}"
            f" FROM ({_CHANNEL_ROWS}) x GROUP BY b ORDER BY b LIMIT %(limit)s",
            {
                "device_id": device_id,
                "channel": channel,
                "start_ns": start_ns,
                "end_ns": end_ns,
                "bucket_ns": bucket_ns,
                "limit": limit,
            },
        )
        return [
            Bucket(
                start_ns=int(start),
                avg=None if avg is None else float(avg),
                min=None if low is None else float(low),
                max=None if high is None else float(high),
                count=int(count),
            )
            for start, avg, low, high, count in rows
        ]

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        with self._read_lock:
            self._reader.close()
