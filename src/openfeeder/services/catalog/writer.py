"""Group commit: one thread writes to the store, and concurrent writes share one transaction.

A commit in SQLite with ``synchronous=FULL`` costs an fsync (milliseconds), far more than the rows
it writes, so committing each request alone would cap a boot storm at a few hundred devices per
second. Requests queue their operations here; the writer thread takes everything queued (up to
``max_batch_ops``), applies it in one transaction and then wakes every request of the batch. While
one commit runs the next batch fills up, so the batch size adapts to the load.

If a batch fails it is split in halves and each retried (recursively), so a bad request fails
only itself, at the cost of a few more transactions.
:meth:`StoreWriter.write` returns once the operations are durable; :meth:`StoreWriter.write_later`
does not wait (used for last-seen times, whose loss in a crash costs only precision).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from openfeeder.errors import StorageError
from openfeeder.services.catalog.store import CatalogStore, WriteOp

__all__ = ["StoreWriter"]

_LOG = logging.getLogger(__name__)
DEFAULT_MAX_BATCH_OPS: Final = 4000


@dataclass(frozen=True, slots=True)
class _Request:
    ops: Sequence[WriteOp]
    future: asyncio.Future[None] | None


class StoreWriter:
    """The store's single writer thread with group commit (see the module docstring)."""

    def __init__(self, store: CatalogStore, *, max_batch_ops: int = DEFAULT_MAX_BATCH_OPS) -> None:
        self._store = store
        self._max_batch_ops = max_batch_ops
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()  # None: stop
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.failures = 0

    def start(self) -> None:
        """Start the thread; the futures of :meth:`write` resolve on the running event loop."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="catalog-writer", daemon=True)
        self._thread.start()

    async def write(self, ops: Sequence[WriteOp]) -> None:
        """Store ``ops`` in one transaction with other pending writes; StorageError if it failed."""
        if not ops:
            return
        if self._thread is None or self._loop is None:
            raise RuntimeError("StoreWriter.write before start()")
        future: asyncio.Future[None] = self._loop.create_future()
        future.add_done_callback(_consume)  # a caller cancelled meanwhile must not leave it unread
        self._queue.put(_Request(ops, future))
        await asyncio.shield(future)

    def write_later(self, ops: Sequence[WriteOp]) -> None:
        """Queue ``ops`` without waiting; a failure is logged."""
        if ops:
            self._queue.put(_Request(ops, None))

    def stop(self) -> None:
        """Write what is queued, then end the thread (blocking: call it via ``asyncio.to_thread``)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            size = len(item.ops)
            while size < self._max_batch_ops:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
                size += len(more.ops)
            self._commit(batch)

    def _commit(self, batch: list[_Request]) -> None:
        """Apply ``batch`` in one transaction; if it fails, bisect to fail only the bad requests."""
        try:
            self._store.apply(op for request in batch for op in request.ops)
        except StorageError as err:
            if len(batch) == 1:
                self._settle(batch[0], err)
                return
            middle = len(batch) // 2
            self._commit(batch[:middle])
            self._commit(batch[middle:])
            return
        self.commits += 1
        for request in batch:
            self._settle(request, None)

    def _settle(self, request: _Request, error: StorageError | None) -> None:
        if error is not None:
            self.failures += 1
            if request.future is None:
                _LOG.error("catalog write failed: %s", error, extra={"error": str(error)})
        future, loop = request.future, self._loop
        if future is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(_resolve, future, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            return


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _resolve(future: asyncio.Future[None], error: StorageError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
