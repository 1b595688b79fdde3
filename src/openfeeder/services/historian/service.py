"""Running the historian: as a service (:func:`serve_historian`) or on a thread (:class:`HistorianThread`).

``openfeeder historian serve`` calls :func:`serve_historian` under
:func:`~openfeeder.services.runtime.run_service`: SIGINT/SIGTERM set ``stop``, the REST server shuts
down, then the historian stops consuming, commits its last batch, publishes its marks and
disconnects. :class:`HistorianThread` runs the same in a background thread for tests, the demo and
benchmarks::

    with HistorianThread(settings, instance="bench-1") as running:
        running.url                          # the REST API (port 0 in settings picks a free one)
        running.historian.counters()         # messages_stored, duplicates_ignored, rejected, ...
        running.historian.store.message_count()
        running.historian.store.stored_seqs("meter-1")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from openfeeder.config import Settings
from openfeeder.errors import OpenFeederError
from openfeeder.services.historian.api import create_app
from openfeeder.services.historian.core import Historian
from openfeeder.services.historian.directory import DeviceDirectory
from openfeeder.services.runtime import HttpServer

__all__ = ["HistorianReady", "HistorianThread", "serve_historian"]

_LOG = logging.getLogger("openfeeder.services.historian")


@dataclass(frozen=True, slots=True)
class HistorianReady:
    """Handed to ``ready`` once the REST API listens."""

    url: str
    historian: Historian


async def serve_historian(
    settings: Settings,
    stop: asyncio.Event,
    *,
    instance: str = "1",
    ready: Callable[[HistorianReady], None] | None = None,
    directory: DeviceDirectory | None = None,
) -> None:
    """Run one historian until ``stop`` is set, then stop it cleanly.

    ``directory`` replaces the device catalog as the source of registered devices.
    """
    historian = Historian(settings, instance=instance, directory=directory)
    await asyncio.to_thread(historian.start)
    try:
        config = settings.historian
        # HTTPS with the service certificate when [security] names one
        server = HttpServer(
            create_app(historian),
            host=config.listen_host,
            port=config.listen_port,
            tls=historian.tls,
        )
        _LOG.info(
            "historian API on %s",
            server.url,
            extra={"event": "listening", "url": server.url},
        )
        if ready is not None:
            ready(HistorianReady(url=server.url, historian=historian))
        await server.serve(stop)
    finally:
        await asyncio.to_thread(historian.stop)


class HistorianThread:
    """A historian with its REST API on a background thread (its own event loop)."""

    def __init__(
        self,
        settings: Settings,
        *,
        instance: str = "1",
        directory: DeviceDirectory | None = None,
    ) -> None:
        self._settings = settings
        self._instance = instance
        self._directory = directory
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._running: HistorianReady | None = None
        self._error: BaseException | None = None

    def start(self, *, timeout_s: float = 15.0, wait_mqtt: bool = True) -> Self:
        """Start and wait until the API listens and (``wait_mqtt``) both brokers subscribed us."""
        self._thread = threading.Thread(
            target=self._main, name=f"historian-{self._instance}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise OpenFeederError(f"historian {self._instance} did not start in {timeout_s} s")
        if self._error is not None:
            self._thread.join()
            error, self._error = self._error, None
            raise error
        if wait_mqtt and not self.historian.wait_ready(timeout_s):
            self.stop()
            raise OpenFeederError(f"historian {self._instance} did not connect to the brokers")
        return self

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve_historian(
                self._settings,
                self._stop,
                instance=self._instance,
                ready=self._on_ready,
                directory=self._directory,
            )

        try:
            asyncio.run(body())
        except BaseException as err:  # reported to the thread that called start()
            self._error = err
        finally:
            self._ready.set()

    def _on_ready(self, running: HistorianReady) -> None:
        self._running = running
        self._ready.set()

    @property
    def url(self) -> str:
        return self._checked().url

    @property
    def historian(self) -> Historian:
        return self._checked().historian

    def _checked(self) -> HistorianReady:
        if self._running is None:
            raise OpenFeederError("the historian thread is not running")
        return self._running

    def stop(self, *, timeout_s: float = 60.0) -> None:
        """Stop cleanly (commit, publish marks, disconnect) and join the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
