"""Running the estimation service: :func:`serve_estimation` for a process, :class:`EstimationThread`
in a thread (the demo, tests).

The service learns the grid from the device catalog (the case it serves) and runs on the real-time
clock as a process of its own; tests and the demo hand it the twin's clock. With a service
certificate in ``[security]`` it connects with mutual TLS and serves HTTPS, as the FLISR
coordinator does.
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
from openfeeder.services.estimation.api import create_app
from openfeeder.services.estimation.coordinator import SERVICE_ID, EstimationCoordinator
from openfeeder.services.platform_clients import catalog_client, model_from_catalog, own_tls
from openfeeder.services.runtime import HttpServer
from openfeeder.sim.clock import Clock, RealClock

__all__ = ["EstimationThread", "serve_estimation"]


async def serve_estimation(
    settings: Settings,
    stop: asyncio.Event,
    *,
    model: GridModel | None = None,
    clock: Clock | None = None,
    ready: Callable[[EstimationCoordinator, str], None] | None = None,
) -> None:
    """Run the estimation service and its REST API until ``stop`` is set."""
    mine = own_tls(settings)
    catalog = catalog_client(settings)
    try:
        grid = (
            model
            if model is not None
            else await asyncio.to_thread(model_from_catalog, catalog, service="estimation")
        )
        client_id = f"{own_identity(mine, default=SERVICE_ID)}-{uuid.uuid4().hex[:8]}"
        # payload protection: topology (control) and events (protection) opened, results sealed
        # as their class says (algo: monitoring, TLS only by default)
        protection = protection_from_settings(
            settings.payload_protection,
            sender_id=client_id,
            event_device_id=own_identity(mine, default=SERVICE_ID),
        )
        coordinator = EstimationCoordinator(
            settings,
            model=grid,
            clock=clock or RealClock(),
            catalog=catalog,
            client_id=client_id,
            tls=mine.client_context() if mine is not None else None,
            protection=protection,
        )
        await asyncio.to_thread(coordinator.start)
        try:
            server = HttpServer(
                create_app(
                    coordinator,
                    access=AccessControl.from_settings(settings.access, service=SERVICE_ID),
                ),
                host=settings.estimation.listen_host,
                port=settings.estimation.listen_port,
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


class EstimationThread:
    """The service served from a background thread; a context manager."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: GridModel | None = None,
        clock: Clock | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._model = model
        self._clock = clock
        self._timeout_s = startup_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.coordinator: EstimationCoordinator | None = None
        self.url: str | None = None

    def start(self) -> EstimationCoordinator:
        self._thread = threading.Thread(target=self._run, name="estimation-service", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout_s):
            self.stop()
            raise TimeoutError(f"the estimation service did not start within {self._timeout_s} s")
        if self._error is not None:
            raise self._error
        if self.coordinator is None:
            raise RuntimeError("the estimation service reported ready without a coordinator")
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

            def ready(coordinator: EstimationCoordinator, url: str) -> None:
                self.coordinator, self.url = coordinator, url
                self._ready.set()

            await serve_estimation(
                self._settings, self._stop, model=self._model, clock=self._clock, ready=ready
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
