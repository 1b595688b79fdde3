"""Running the coordinator: :func:`serve_flisr` for a process, :class:`FlisrThread` in a thread.

The coordinator learns the grid from the device catalog (the case it serves, unless
``[flisr]``'s caller passes a model) and runs on the real-time clock when it is a process of its
own; the demo and the tests hand it the twin's clock so every timestamp is on the shared clock.

With a service certificate in ``[security]`` (``cert_file`` / ``key_file``, CN the coordinator's
identity, role ``flisr``) it connects to ``mqtts://`` brokers with mutual TLS, checks the catalog's
HTTPS against ``ca_file`` and serves its own REST API over HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Self

from openfeeder.config import Settings
from openfeeder.iot.protection import protection_from_settings
from openfeeder.model.grid import GridModel
from openfeeder.security.tls import own_identity
from openfeeder.services.access import AccessControl
from openfeeder.services.flisr.api import create_app
from openfeeder.services.flisr.coordinator import FlisrCoordinator
from openfeeder.services.flisr.incident import Incident, Step
from openfeeder.services.platform_clients import catalog_client, model_from_catalog, own_tls
from openfeeder.services.runtime import HttpServer
from openfeeder.sim.clock import Clock, RealClock

__all__ = ["FlisrThread", "serve_flisr"]


async def serve_flisr(
    settings: Settings,
    stop: asyncio.Event,
    *,
    model: GridModel | None = None,
    clock: Clock | None = None,
    on_step: Callable[[Incident, Step], None] | None = None,
    ready: Callable[[FlisrCoordinator, str], None] | None = None,
) -> None:
    """Run the coordinator and its REST API until ``stop`` is set."""
    mine = own_tls(settings)
    catalog = catalog_client(settings)
    try:
        grid = (
            model
            if model is not None
            else await asyncio.to_thread(model_from_catalog, catalog, service="FLISR")
        )
        identity = own_identity(mine, default="flisr")
        client_id = f"{identity}-{uuid.uuid4().hex[:8]}"
        # commands and topology sealed as control traffic, events and acks opened
        protection = await asyncio.to_thread(
            protection_from_settings,
            settings.payload_protection,
            sender_id=client_id,
            event_device_id=identity,
        )
        coordinator = FlisrCoordinator(
            settings,
            model=grid,
            clock=clock or RealClock(),
            catalog=catalog,
            on_step=on_step,
            client_id=client_id,
            tls=mine.client_context() if mine is not None else None,
            protection=protection,
        )
        await asyncio.to_thread(coordinator.start)
        try:
            server = HttpServer(
                create_app(
                    coordinator,
                    access=AccessControl.from_settings(settings.access, service="flisr"),
                ),
                host=settings.flisr.listen_host,
                port=settings.flisr.listen_port,
                tls=mine,
            )

            async def announce() -> None:
                while not server.started and not stop.is_set():
                    await asyncio.sleep(0.01)
                if ready is not None and not stop.is_set():
                    ready(coordinator, server.url)

            async with asyncio.TaskGroup() as group:
                group.create_task(server.serve(stop))
                group.create_task(announce())
        finally:
            await asyncio.to_thread(coordinator.stop)
    finally:
        catalog.close()


class FlisrThread:
    """The coordinator served from a background thread (the demo, tests); a context manager."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: GridModel | None = None,
        clock: Clock | None = None,
        on_step: Callable[[Incident, Step], None] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._model = model
        self._clock = clock
        self._on_step = on_step
        self._timeout_s = startup_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.coordinator: FlisrCoordinator | None = None
        self.url: str | None = None

    def start(self) -> FlisrCoordinator:
        self._thread = threading.Thread(target=self._run, name="flisr-service", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout_s):
            self.stop()
            raise TimeoutError(f"the FLISR coordinator did not start within {self._timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self.coordinator is not None
        return self.coordinator

    def stop(self, timeout_s: float = 30.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(coordinator: FlisrCoordinator, url: str) -> None:
                self.coordinator, self.url = coordinator, url
                self._ready.set()

            await serve_flisr(
                self._settings,
                self._stop,
                model=self._model,
                clock=self._clock,
                on_step=self._on_step,
                ready=ready,
            )

        try:
            asyncio.run(main())
        except BaseException as err:  # handed to start()
            self._error = err
            self._ready.set()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
