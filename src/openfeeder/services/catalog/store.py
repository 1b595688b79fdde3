"""Persistent state of the device catalog in SQLite (the default) or PostgreSQL.

The backend follows the storage URL (``[catalog] storage_url``, else ``[storage] url``):
``sqlite:///file.db`` opens the file in WAL mode with ``synchronous=FULL`` (a committed write
survives a crash of the process or the machine); ``postgresql://...`` uses psycopg 3, which is
imported only then. Tables carry a prefix (``catalog_`` by default) so that the catalog can share a
database with the historian:

==================  =====================================================================
table               content
==================  =====================================================================
``<p>meta``         key -> JSON value: ``schema_version``, ``config_counter`` (the last
                    config version handed out), ``topology`` (version, switch states, reason)
``<p>devices``      one row per device: provisioning, reported firmware and capabilities,
                    config version, grid part, settings fingerprint, status, last seen
``<p>services``     registered services: kind, instance id, endpoints (JSON), last seen
``<p>algorithms``   algorithm packages: name, version, SHA-256, size, upload time, the bytes,
                    the publisher's signature (schema version 2)
==================  =====================================================================

The schema is created on first start and versioned (``schema_version`` in meta); a database made by
a newer release is refused rather than misread, one of version 1 gets the signature column. Every :meth:`CatalogStore.apply` is one transaction:
all of its operations are stored, or none.

A store is used from one thread at a time (it serialises its callers with a lock): the catalog gives
it to a single writer thread that groups the writes of concurrent requests into one commit.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import JsonValue, ValidationError

from openfeeder.errors import StorageError
from openfeeder.iot.catalog_client import DeviceStatus
from openfeeder.iot.device_settings import GridPart, Location
from openfeeder.services.catalog.records import (
    AlgorithmMeta,
    Assignment,
    DeviceRecord,
    Liveness,
    ServiceRecord,
    freeze_json,
)
from openfeeder.services.database import connect_postgresql, connect_sqlite, redact_url

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "STORE_SCHEMA_VERSION",
    "CatalogStore",
    "DeleteAlgorithm",
    "DeleteDevice",
    "DeleteService",
    "PutAlgorithm",
    "PutDevice",
    "PutMeta",
    "PutService",
    "SignAlgorithm",
    "StoredState",
    "TouchDevices",
    "WriteOp",
    "open_store",
]

STORE_SCHEMA_VERSION: Final = 2
DEFAULT_TABLE_PREFIX: Final = "catalog_"
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,30}")
_DEVICE_COLUMNS: Final = (
    "device_id",
    "device_type",
    "firmware",
    "capabilities",
    "location",
    "sampling_rate_hz",
    "reporting_interval_s",
    "algorithms",
    "config_version",
    "grid",
    "settings_sha256",
    "status",
    "last_seen_ns",
    "registered_ns",
)


# --- write operations -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutDevice:
    """Insert or replace a device (record and liveness)."""

    record: DeviceRecord
    liveness: Liveness


@dataclass(frozen=True, slots=True)
class TouchDevices:
    """Update the liveness of devices that exist (absent ones are skipped)."""

    rows: tuple[tuple[str, Liveness], ...]


@dataclass(frozen=True, slots=True)
class DeleteDevice:
    device_id: str


@dataclass(frozen=True, slots=True)
class PutService:
    record: ServiceRecord


@dataclass(frozen=True, slots=True)
class DeleteService:
    name: str


@dataclass(frozen=True, slots=True)
class PutAlgorithm:
    meta: AlgorithmMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class SignAlgorithm:
    """Replace the signature of a stored package (a renewed or a first signature)."""

    name: str
    version: str
    signature: str


@dataclass(frozen=True, slots=True)
class DeleteAlgorithm:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class PutMeta:
    key: str
    value: JsonValue


WriteOp = (
    PutDevice
    | TouchDevices
    | DeleteDevice
    | PutService
    | DeleteService
    | PutAlgorithm
    | SignAlgorithm
    | DeleteAlgorithm
    | PutMeta
)


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything but the package bytes, as read at start."""

    devices: dict[str, tuple[DeviceRecord, Liveness]]
    services: dict[str, ServiceRecord]
    algorithms: dict[tuple[str, str], AlgorithmMeta]
    meta: dict[str, JsonValue]


# --- backends ---------------------------------------------------------------------------------


class _Backend(Protocol):
    name: Literal["sqlite", "postgresql"]
    blob_type: str
    shown_url: str
    """The URL with its password masked."""

    def run(self, statements: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Execute (statement, rows) pairs in one transaction."""

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class _SqliteBackend:
    name: Literal["sqlite", "postgresql"] = "sqlite"
    blob_type = "BLOB"

    def __init__(self, url: str) -> None:
        self._url = url
        self.shown_url = url
        self._connection = connect_sqlite(url)

    def run(self, statements: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> None:
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    if len(rows) == 1:
                        connection.execute(sql, rows[0])
                    else:
                        connection.executemany(sql, rows)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise StorageError(f"{self._url}: write failed: {err}", url=self._url) from err

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connection.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise StorageError(f"{self._url}: read failed: {err}", url=self._url) from err

    def close(self) -> None:
        self._connection.close()


class _PostgresBackend:
    name: Literal["sqlite", "postgresql"] = "postgresql"
    blob_type = "BYTEA"

    def __init__(self, url: str) -> None:
        self._url = url
        self.shown_url = self._shown = redact_url(url)
        self._connection: psycopg.Connection[Any] = connect_postgresql(url, autocommit=True)

    def _live(self) -> psycopg.Connection[Any]:
        if self._connection.closed or self._connection.broken:
            self._connection = connect_postgresql(self._url, autocommit=True)
        return self._connection

    def run(self, statements: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> None:
        import psycopg

        connection = self._live()
        try:
            with connection.transaction(), connection.cursor() as cursor:
                for sql, rows in statements:
                    if len(rows) == 1:
                        cursor.execute(sql.replace("?", "%s"), rows[0])
                    else:
                        cursor.executemany(sql.replace("?", "%s"), rows)
        except psycopg.Error as err:
            raise StorageError(f"{self._shown}: write failed: {err}", url=self._shown) from err

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            return self._live().execute(sql.replace("?", "%s"), params).fetchall()
        except psycopg.Error as err:
            raise StorageError(f"{self._shown}: read failed: {err}", url=self._shown) from err

    def close(self) -> None:
        self._connection.close()


# --- the store --------------------------------------------------------------------------------


def open_store(url: str, *, table_prefix: str = DEFAULT_TABLE_PREFIX) -> CatalogStore:
    """Open the catalog's database at ``url``, creating (or checking) its schema."""
    if _PREFIX.fullmatch(table_prefix) is None:
        raise StorageError(
            f"table prefix {table_prefix!r} must match [a-z_][a-z0-9_]{{0,30}}", url=url
        )
    scheme = urlsplit(url).scheme
    backend: _Backend
    if scheme == "sqlite":
        backend = _SqliteBackend(url)
    elif scheme == "postgresql":
        backend = _PostgresBackend(url)
    else:
        raise StorageError(f"{redact_url(url)}: not a sqlite:/// or postgresql:// URL", url=url)
    try:
        store = CatalogStore(backend, table_prefix=table_prefix)
    except BaseException:
        backend.close()
        raise
    return store


class CatalogStore:
    """Reads and transactional writes of the catalog's tables (see the module docstring)."""

    def __init__(self, backend: _Backend, *, table_prefix: str) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        p = table_prefix
        self.table_prefix = p
        self._meta = f"{p}meta"
        self._devices = f"{p}devices"
        self._services = f"{p}services"
        self._algorithms = f"{p}algorithms"
        placeholders = ", ".join("?" for _ in _DEVICE_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _DEVICE_COLUMNS[1:])
        self._put_device_sql = (
            f"INSERT INTO {self._devices} ({', '.join(_DEVICE_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (device_id) DO UPDATE SET {updates}"
        )
        self._create_schema()

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return self._backend.name

    def close(self) -> None:
        with self._lock:
            self._backend.close()

    # -- schema --------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        blob = self._backend.blob_type
        ddl = [
            f"CREATE TABLE IF NOT EXISTS {self._meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS {self._devices} (
                device_id TEXT PRIMARY KEY,
                device_type TEXT NOT NULL,
                firmware TEXT NOT NULL,
                capabilities TEXT NOT NULL,
                location TEXT,
                sampling_rate_hz DOUBLE PRECISION,
                reporting_interval_s DOUBLE PRECISION,
                algorithms TEXT NOT NULL,
                config_version BIGINT NOT NULL,
                grid TEXT,
                settings_sha256 TEXT NOT NULL,
                status TEXT NOT NULL,
                last_seen_ns BIGINT,
                registered_ns BIGINT NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {self._services} (
                name TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                instance_id TEXT NOT NULL,
                endpoints TEXT NOT NULL,
                last_seen_ns BIGINT NOT NULL,
                registered_ns BIGINT NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {self._algorithms} (
                name TEXT NOT NULL,
                version TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                uploaded_ns BIGINT NOT NULL,
                data {blob} NOT NULL,
                signature TEXT,
                PRIMARY KEY (name, version))""",
        ]
        with self._lock:
            self._backend.run([(sql, [()]) for sql in ddl])
            rows = self._backend.query(
                f"SELECT value FROM {self._meta} WHERE key = ?", ("schema_version",)
            )
            if not rows:
                self._backend.run(
                    [
                        (
                            f"INSERT INTO {self._meta} (key, value) VALUES (?, ?)",
                            [("schema_version", json.dumps(STORE_SCHEMA_VERSION))],
                        )
                    ]
                )
                return
        found = json.loads(rows[0][0])
        if found == 1:  # version 2 added the packages' signatures
            with self._lock:
                self._backend.run(
                    [
                        (f"ALTER TABLE {self._algorithms} ADD COLUMN signature TEXT", [()]),
                        (
                            f"UPDATE {self._meta} SET value = ? WHERE key = ?",
                            [(json.dumps(STORE_SCHEMA_VERSION), "schema_version")],
                        ),
                    ]
                )
            found = STORE_SCHEMA_VERSION
        if found != STORE_SCHEMA_VERSION:
            raise StorageError(
                f"catalog tables '{self.table_prefix}*' have schema version {found}; this release "
                f"reads version {STORE_SCHEMA_VERSION}",
                url=self._backend.shown_url,
            )

    # -- reads ---------------------------------------------------------------------------------

    def load(self) -> StoredState:
        """Devices, services, package metadata and meta values."""
        with self._lock:
            device_rows = self._backend.query(
                f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM {self._devices}"
            )
            service_rows = self._backend.query(
                f"SELECT name, kind, instance_id, endpoints, last_seen_ns, registered_ns "
                f"FROM {self._services}"
            )
            algorithm_rows = self._backend.query(
                f"SELECT name, version, sha256, size_bytes, uploaded_ns, signature "
                f"FROM {self._algorithms}"
            )
            meta_rows = self._backend.query(f"SELECT key, value FROM {self._meta}")
        devices = dict(_device_from_row(row, url=self._backend.shown_url) for row in device_rows)
        services = {
            str(row[0]): ServiceRecord(
                name=str(row[0]),
                kind=str(row[1]),
                instance_id=str(row[2]),
                endpoints=freeze_json(json.loads(row[3])),  # type: ignore[arg-type]
                last_seen_ns=int(row[4]),
                registered_ns=int(row[5]),
            )
            for row in service_rows
        }
        algorithms = {
            (str(row[0]), str(row[1])): AlgorithmMeta(
                name=str(row[0]),
                version=str(row[1]),
                sha256=str(row[2]),
                size_bytes=int(row[3]),
                uploaded_ns=int(row[4]),
                signature=str(row[5]) if row[5] is not None else None,
            )
            for row in algorithm_rows
        }
        meta = {str(key): json.loads(value) for key, value in meta_rows}
        return StoredState(devices=devices, services=services, algorithms=algorithms, meta=meta)

    def algorithm_data(self, name: str, version: str) -> bytes | None:
        """The bytes of a package, or None if there is no such package."""
        with self._lock:
            rows = self._backend.query(
                f"SELECT data FROM {self._algorithms} WHERE name = ? AND version = ?",
                (name, version),
            )
        return bytes(rows[0][0]) if rows else None

    # -- writes --------------------------------------------------------------------------------

    def apply(self, ops: Iterable[WriteOp]) -> None:
        """Store ``ops`` in one transaction (StorageError, and nothing stored, if one fails)."""
        statements: list[tuple[str, list[tuple[Any, ...]]]] = []
        for sql, row in self._statements(ops):
            if statements and statements[-1][0] == sql:
                statements[-1][1].append(row)
            else:
                statements.append((sql, [row]))
        if not statements:
            return
        with self._lock:
            self._backend.run(statements)

    def _statements(self, ops: Iterable[WriteOp]) -> Iterator[tuple[str, tuple[Any, ...]]]:
        handlers = self._handlers
        for op in ops:
            yield from handlers[type(op)](op)

    @property
    def _handlers(self) -> dict[type, Callable[[Any], Iterator[tuple[str, tuple[Any, ...]]]]]:
        return {
            PutDevice: self._put_device,
            TouchDevices: self._touch_devices,
            DeleteDevice: self._delete_device,
            PutService: self._put_service,
            DeleteService: self._delete_service,
            PutAlgorithm: self._put_algorithm,
            SignAlgorithm: self._sign_algorithm,
            DeleteAlgorithm: self._delete_algorithm,
            PutMeta: self._put_meta,
        }

    def _put_device(self, op: PutDevice) -> Iterator[tuple[str, tuple[Any, ...]]]:
        yield self._put_device_sql, _device_row(op.record, op.liveness)

    def _touch_devices(self, op: TouchDevices) -> Iterator[tuple[str, tuple[Any, ...]]]:
        sql = f"UPDATE {self._devices} SET status = ?, last_seen_ns = ? WHERE device_id = ?"
        for device_id, liveness in op.rows:
            yield sql, (str(liveness.status), liveness.last_seen_ns, device_id)

    def _delete_device(self, op: DeleteDevice) -> Iterator[tuple[str, tuple[Any, ...]]]:
        yield f"DELETE FROM {self._devices} WHERE device_id = ?", (op.device_id,)

    def _put_service(self, op: PutService) -> Iterator[tuple[str, tuple[Any, ...]]]:
        r = op.record
        yield (
            f"INSERT INTO {self._services} "
            "(name, kind, instance_id, endpoints, last_seen_ns, registered_ns) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, "
            "instance_id = excluded.instance_id, endpoints = excluded.endpoints, "
            "last_seen_ns = excluded.last_seen_ns, registered_ns = excluded.registered_ns",
            (
                r.name,
                r.kind,
                r.instance_id,
                json.dumps(dict(r.endpoints), sort_keys=True),
                r.last_seen_ns,
                r.registered_ns,
            ),
        )

    def _delete_service(self, op: DeleteService) -> Iterator[tuple[str, tuple[Any, ...]]]:
        yield f"DELETE FROM {self._services} WHERE name = ?", (op.name,)

    def _put_algorithm(self, op: PutAlgorithm) -> Iterator[tuple[str, tuple[Any, ...]]]:
        m = op.meta
        yield (
            f"INSERT INTO {self._algorithms} "
            "(name, version, sha256, size_bytes, uploaded_ns, data, signature) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (m.name, m.version, m.sha256, m.size_bytes, m.uploaded_ns, op.data, m.signature),
        )

    def _sign_algorithm(self, op: SignAlgorithm) -> Iterator[tuple[str, tuple[Any, ...]]]:
        yield (
            f"UPDATE {self._algorithms} SET signature = ? WHERE name = ? AND version = ?",
            (op.signature, op.name, op.version),
        )

    def _delete_algorithm(self, op: DeleteAlgorithm) -> Iterator[tuple[str, tuple[Any, ...]]]:
        yield (
            f"DELETE FROM {self._algorithms} WHERE name = ? AND version = ?",
            (op.name, op.version),
        )

    def _put_meta(self, op: PutMeta) -> Iterator[tuple[str, tuple[Any, ...]]]:
        yield (
            f"INSERT INTO {self._meta} (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (op.key, json.dumps(op.value, sort_keys=True)),
        )


def _device_row(record: DeviceRecord, liveness: Liveness) -> tuple[Any, ...]:
    return (
        record.device_id,
        record.device_type,
        record.firmware,
        json.dumps(list(record.capabilities)),
        record.location.model_dump_json() if record.location is not None else None,
        record.sampling_rate_hz,
        record.reporting_interval_s,
        json.dumps([a.to_json() for a in record.algorithms]),
        record.config_version,
        record.grid.model_dump_json() if record.grid is not None else None,
        record.settings_sha256,
        str(liveness.status),
        liveness.last_seen_ns,
        record.registered_ns,
    )


def _device_from_row(
    row: tuple[Any, ...], *, url: str
) -> tuple[str, tuple[DeviceRecord, Liveness]]:
    device_id = str(row[0])
    try:
        record = DeviceRecord(
            device_id=device_id,
            device_type=str(row[1]),
            firmware=str(row[2]),
            capabilities=tuple(json.loads(row[3])),
            location=Location.model_validate_json(row[4]) if row[4] is not None else None,
            sampling_rate_hz=float(row[5]) if row[5] is not None else None,
            reporting_interval_s=float(row[6]) if row[6] is not None else None,
            algorithms=tuple(
                Assignment(
                    name=str(item["name"]),
                    version=str(item["version"]),
                    parameters=freeze_json(item.get("parameters", {})),
                )
                for item in json.loads(row[7])
            ),
            config_version=int(row[8]),
            grid=GridPart.model_validate_json(row[9]) if row[9] is not None else None,
            settings_sha256=str(row[10]),
            registered_ns=int(row[13]),
        )
        liveness = Liveness(
            status=DeviceStatus(row[11]),
            last_seen_ns=int(row[12]) if row[12] is not None else None,
        )
    except (ValueError, KeyError, TypeError, ValidationError) as err:
        raise StorageError(
            f"{url}: catalog device {device_id!r}: stored row is unreadable: {err}", url=url
        ) from err
    return device_id, (record, liveness)
