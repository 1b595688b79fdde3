"""Opening the services' databases from a storage URL: SQLite (embedded default) or PostgreSQL.

``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``;
``postgresql://user@host:5432/dbname`` (psycopg 3, an optional extra imported only here, when such
a URL is configured). SQLite connections run in WAL mode with ``synchronous=FULL``: a transaction
that returned from COMMIT survives a crash of the process or of the machine.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from openfeeder.errors import DependencyError, StorageError

if TYPE_CHECKING:
    import psycopg

__all__ = ["connect_postgresql", "connect_sqlite", "redact_url", "sqlite_path"]

SQLITE_BUSY_TIMEOUT_MS = 10_000


def redact_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for ``sqlite:///:memory:``."""
    if not url.startswith("sqlite:///"):
        raise StorageError(f"{url}: not a sqlite:/// URL", url=url)
    rest = url.removeprefix("sqlite:///")
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def connect_sqlite(url: str) -> sqlite3.Connection:
    """Open (creating the file and its folder) a SQLite database in WAL mode, synchronous=FULL.

    The connection may be used from another thread than the one that opened it, but from one
    thread at a time (each service gives its database to one writer thread or guards it).
    """
    path = sqlite_path(url)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            ":memory:" if path is None else str(path),
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
            isolation_level=None,  # explicit BEGIN/COMMIT
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
    except (sqlite3.Error, OSError) as err:
        raise StorageError(f"{url}: cannot open the SQLite database: {err}", url=url) from err
    return connection


def connect_postgresql(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Connect to PostgreSQL with psycopg 3 (the ``postgresql`` extra)."""
    try:
        import psycopg
    except ImportError as err:
        raise DependencyError(
            "a postgresql:// storage URL needs psycopg: pip install 'openfeeder[postgresql]'"
        ) from err
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.Error as err:
        shown = redact_url(url)
        raise StorageError(f"{shown}: cannot connect to PostgreSQL: {err}", url=shown) from err
