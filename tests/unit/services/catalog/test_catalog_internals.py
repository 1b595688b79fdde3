"""The catalog's building blocks: deadline queue, locks, the group-commit writer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from openfeeder.errors import StorageError
from openfeeder.services.catalog.liveness import DeadlineQueue
from openfeeder.services.catalog.locks import KeyedLocks, SharedExclusiveLock
from openfeeder.services.catalog.records import AlgorithmMeta
from openfeeder.services.catalog.store import PutAlgorithm, PutMeta, open_store
from openfeeder.services.catalog.writer import StoreWriter


def test_deadline_queue_expires_in_order_of_last_contact() -> None:
    queue = DeadlineQueue(timeout_s=10.0)
    queue.seen("a", 0.0)
    queue.seen("b", 1.0)
    queue.seen("c", 2.0)
    queue.seen("a", 3.0)  # a polled again: now the latest
    assert queue.next_deadline() == 11.0
    assert queue.expired(10.9) == []
    assert queue.expired(12.0) == ["b", "c"]
    assert "a" in queue
    queue.forget("a")
    assert queue.expired(100.0) == []
    assert queue.next_deadline() is None


def test_exclusive_waits_for_shared_holders_and_goes_before_new_ones() -> None:
    async def scenario() -> list[str]:
        lock = SharedExclusiveLock()
        order: list[str] = []
        first_in = asyncio.Event()
        release_first = asyncio.Event()

        async def reader(name: str, hold: asyncio.Event | None = None) -> None:
            async with lock.shared():
                order.append(f"{name} in")
                if hold is not None:
                    first_in.set()
                    await hold.wait()
                order.append(f"{name} out")

        async def writer() -> None:
            async with lock.exclusive():
                order.append("writer")

        first = asyncio.create_task(reader("r1", release_first))
        await first_in.wait()
        exclusive = asyncio.create_task(writer())
        await asyncio.sleep(0)
        late = asyncio.create_task(reader("r2"))  # arrives while the writer waits
        await asyncio.sleep(0)
        release_first.set()
        await asyncio.gather(first, exclusive, late)
        return order

    assert asyncio.run(scenario()) == ["r1 in", "r1 out", "writer", "r2 in", "r2 out"]


def test_keyed_locks_serialise_one_key_and_are_dropped_after_use() -> None:
    async def scenario() -> tuple[list[str], int]:
        locks = KeyedLocks()
        order: list[str] = []

        async def work(key: str, name: str) -> None:
            async with locks.hold(key):
                order.append(f"{name} start")
                await asyncio.sleep(0.01)
                order.append(f"{name} end")

        await asyncio.gather(work("k", "a"), work("k", "b"))
        return order, len(locks)

    order, left = asyncio.run(scenario())
    assert order == ["a start", "a end", "b start", "b end"]
    assert left == 0


def test_concurrent_writes_share_commits_and_a_bad_one_fails_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    store = open_store(url)
    package = AlgorithmMeta("pkg", "1", "00" * 32, 1, 1)
    store.apply([PutAlgorithm(package, b"x")])

    async def scenario() -> tuple[list[BaseException | None], int]:
        writer = StoreWriter(store)
        writer.start()
        try:
            writes = [writer.write([PutMeta(f"key{i}", i)]) for i in range(200)]
            writes.insert(100, writer.write([PutAlgorithm(package, b"y")]))  # duplicate key
            results = await asyncio.gather(*writes, return_exceptions=True)
        finally:
            await asyncio.to_thread(writer.stop)
        return list(results), writer.commits

    try:
        results, commits = asyncio.run(scenario())
        failed = [r for r in results if r is not None]
        assert len(failed) == 1
        assert isinstance(failed[0], StorageError)
        meta = store.load().meta
        assert all(meta[f"key{i}"] == i for i in range(200))
        # group commit: far fewer transactions than requests
        assert commits < 50
    finally:
        store.close()


def test_write_later_is_stored_when_the_writer_stops(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'later.db'}")

    async def scenario() -> None:
        writer = StoreWriter(store)
        writer.start()
        for i in range(50):
            writer.write_later([PutMeta("counter", i)])
        await asyncio.to_thread(writer.stop)

    try:
        asyncio.run(scenario())
        assert store.load().meta["counter"] == 49
    finally:
        store.close()


def test_writing_before_start_is_a_programming_error(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'early.db'}")
    try:
        with pytest.raises(RuntimeError, match="before start"):
            asyncio.run(StoreWriter(store).write([PutMeta("k", 1)]))
    finally:
        store.close()
