"""Opening databases from storage URLs: SQLite pragmas, clear errors, PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfeeder.errors import StorageError
from openfeeder.services.database import connect_postgresql, connect_sqlite, redact_url, sqlite_path


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///data/of.db") == Path("data/of.db")
    assert sqlite_path("sqlite:////var/lib/of.db") == Path("/var/lib/of.db")
    assert sqlite_path("sqlite:///:memory:") is None
    with pytest.raises(StorageError, match="not a sqlite"):
        sqlite_path("postgresql://x@h/db")


def test_sqlite_is_wal_with_full_sync_and_creates_its_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/dir/of.db"
    connection = connect_sqlite(url)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert (tmp_path / "sub" / "dir" / "of.db").exists()
    finally:
        connection.close()


def test_sqlite_error_names_the_url(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    url = f"sqlite:///{blocker}/of.db"
    with pytest.raises(StorageError, match="cannot open the SQLite database") as caught:
        connect_sqlite(url)
    assert caught.value.url == url


def test_redact_url_masks_the_password() -> None:
    assert redact_url("postgresql://of:secret@db:5432/of") == "postgresql://of:***@db:5432/of"
    assert redact_url("postgresql://of@db/of") == "postgresql://of@db/of"


def test_postgresql_unreachable_is_a_storage_error_without_the_password() -> None:
    url = "postgresql://of:secret@127.0.0.1:1/of"  # port 1: nothing listens
    with pytest.raises(StorageError) as caught:
        connect_postgresql(url)
    assert "secret" not in str(caught.value)
    assert caught.value.url == "postgresql://of:***@127.0.0.1:1/of"


@pytest.mark.integration
def test_postgresql_connects(postgres_url: str) -> None:
    with connect_postgresql(postgres_url) as connection:
        schema = connection.execute("SELECT current_schema()").fetchone()
    assert schema is not None
    assert schema[0].startswith("t_")
