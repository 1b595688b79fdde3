"""Running the estimation service: :func:`serve_estimation` for a process, :class:`EstimationThread`
in a thread (the demo, tests).

The service learns the grid from the device catalog (the case it serves) and runs on the real-time
clock as a process of its own; tests and the demo hand it the twin's clock. With a service
certificate in ``[security]`` it connects with mutual TLS and serves HTTPS, as the FLISR
coordinator does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from openfeeder.config import Settings
from openfeeder.iot.protection import protection_from_settings
from openfeeder.model.grid import GridModel
from openfeeder.security.tls import own_identity
from openfeeder.services.access import AccessControl
from openfeeder.services.estimation.api import create_app
from openfeeder.services.estimation.coordinator import SERVICE_ID, EstimationCoordinator
from openfeeder.services.platform_clients import catalog_client, model_from_catalog, own_tls
from openfeeder.services.runtime import HttpServer, ServiceThread
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


class EstimationThread(ServiceThread[EstimationCoordinator]):
    """The service served from a background thread; a context manager."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: GridModel | None = None,
        clock: Clock | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        async def serve(stop: asyncio.Event, ready: Callable[[Any, str], None]) -> None:
            await serve_estimation(settings, stop, model=model, clock=clock, ready=ready)

        super().__init__(serve, name="the estimation service", startup_timeout_s=startup_timeout_s)

    @property
    def coordinator(self) -> EstimationCoordinator | None:
        return self._handle
