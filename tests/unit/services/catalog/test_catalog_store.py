"""The catalog's store on SQLite and PostgreSQL: round trips, atomic writes, schema, prefixes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest

from openfeeder.errors import StorageError
from openfeeder.iot.catalog_client import DeviceStatus
from openfeeder.iot.device_settings import GridPart, Location
from openfeeder.services.catalog.records import (
    AlgorithmMeta,
    Assignment,
    DeviceRecord,
    Liveness,
    ServiceRecord,
)
from openfeeder.services.catalog.store import (
    STORE_SCHEMA_VERSION,
    DeleteAlgorithm,
    DeleteDevice,
    DeleteService,
    PutAlgorithm,
    PutDevice,
    PutMeta,
    PutService,
    TouchDevices,
    open_store,
)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _device(device_id: str, *, version: int = 7) -> DeviceRecord:
    return DeviceRecord(
        device_id=device_id,
        device_type="meter",
        firmware="fw-1.2",
        capabilities=("rms", "phasor"),
        location=Location(case="turin", bus_id=7),
        sampling_rate_hz=3200.0,
        reporting_interval_s=None,
        algorithms=(
            Assignment(name="fault-detect", version="1.0", parameters=MappingProxyType({"k": 2})),
        ),
        config_version=version,
        grid=GridPart(case="turin", topology_version=3, feeder_id=300, bus_ids=(5, 7)),
        settings_sha256="ab" * 32,
        registered_ns=1_700_000_000_000_000_000,
    )


def test_everything_written_is_read_back_after_reopening(store_url: str) -> None:
    device = _device("m1")
    live = Liveness(DeviceStatus.CONNECTED, 1_700_000_000_500_000_000)
    service = ServiceRecord(
        name="historian",
        kind="historian",
        instance_id="h-1",
        endpoints=MappingProxyType({"http": "http://127.0.0.1:8701"}),
        last_seen_ns=5,
        registered_ns=4,
    )
    package = AlgorithmMeta("fault-detect", "1.0", "cd" * 32, 3, 9)
    store = open_store(store_url)
    try:
        store.apply(
            [
                PutDevice(device, live),
                PutService(service),
                PutAlgorithm(package, b"\x00\x01\x02"),
                PutMeta("config_counter", 7),
            ]
        )
    finally:
        store.close()

    reopened = open_store(store_url)
    try:
        state = reopened.load()
        assert state.devices == {"m1": (device, live)}
        assert state.services == {"historian": service}
        assert state.algorithms == {("fault-detect", "1.0"): package}
        assert state.meta["config_counter"] == 7
        assert state.meta["schema_version"] == STORE_SCHEMA_VERSION
        assert reopened.algorithm_data("fault-detect", "1.0") == b"\x00\x01\x02"
        assert reopened.algorithm_data("fault-detect", "2.0") is None
    finally:
        reopened.close()


def test_liveness_updates_and_deletions(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.apply([PutDevice(_device("a"), Liveness(DeviceStatus.NEVER, None))])
        store.apply([PutDevice(_device("b"), Liveness(DeviceStatus.NEVER, None))])
        later = Liveness(DeviceStatus.DISCONNECTED, 42)
        # a touch of a device that does not exist (deleted meanwhile) is skipped
        store.apply([TouchDevices((("a", later), ("ghost", later)))])
        store.apply([DeleteDevice("b")])
        state = store.load()
        assert set(state.devices) == {"a"}
        assert state.devices["a"][1] == later
        store.apply(
            [
                PutAlgorithm(AlgorithmMeta("x", "1", "ef" * 32, 1, 1), b"x"),
                PutService(
                    ServiceRecord(
                        "s", "k", "i", MappingProxyType({}), last_seen_ns=1, registered_ns=1
                    )
                ),
            ]
        )
        store.apply([DeleteAlgorithm("x", "1"), DeleteService("s")])
        state = store.load()
        assert state.algorithms == {}
        assert state.services == {}
    finally:
        store.close()


def test_a_failing_write_stores_nothing_of_its_transaction(store_url: str) -> None:
    package = AlgorithmMeta("pkg", "1.0", "12" * 32, 1, 1)
    store = open_store(store_url)
    try:
        store.apply([PutAlgorithm(package, b"a")])
        with pytest.raises(StorageError, match="write failed"):
            store.apply(
                [
                    PutDevice(_device("m2"), Liveness(DeviceStatus.NEVER, None)),
                    PutMeta("config_counter", 99),
                    PutAlgorithm(package, b"b"),  # (name, version) exists: the whole batch fails
                ]
            )
        state = store.load()
        assert state.devices == {}
        assert "config_counter" not in state.meta
        assert store.algorithm_data("pkg", "1.0") == b"a"
    finally:
        store.close()


def test_table_prefixes_keep_two_catalogs_apart(store_url: str) -> None:
    first = open_store(store_url, table_prefix="cat_a_")
    second = open_store(store_url, table_prefix="cat_b_")
    try:
        first.apply([PutDevice(_device("only-in-a"), Liveness(DeviceStatus.NEVER, None))])
        assert set(first.load().devices) == {"only-in-a"}
        assert second.load().devices == {}
    finally:
        first.close()
        second.close()


def test_a_database_from_a_newer_release_is_refused(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.apply([PutMeta("schema_version", STORE_SCHEMA_VERSION + 1)])
    finally:
        store.close()
    with pytest.raises(StorageError, match=f"schema version {STORE_SCHEMA_VERSION + 1}"):
        open_store(store_url)


def test_bad_urls_and_prefixes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="table prefix"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}", table_prefix="Robert'); DROP TABLE x;--")
    with pytest.raises(StorageError, match="not a sqlite"):
        open_store("mysql://db/catalog")


def test_sqlite_store_does_not_import_psycopg(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from openfeeder.services.catalog.store import open_store\n"
        f"open_store('sqlite:///{tmp_path / 'p.db'}').close()\n"
        "import openfeeder.services.catalog, openfeeder.cli.catalog_cmd\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
