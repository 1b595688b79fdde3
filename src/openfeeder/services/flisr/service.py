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
import uuid
from collections.abc import Callable
from typing import Any

from openfeeder.config import Settings
from openfeeder.iot.protection import protection_from_settings
from openfeeder.model.grid import GridModel
from openfeeder.security.tls import own_identity
from openfeeder.services.access import AccessControl
from openfeeder.services.flisr.api import create_app
from openfeeder.services.flisr.coordinator import FlisrCoordinator
from openfeeder.services.flisr.incident import Incident, Step
from openfeeder.services.platform_clients import catalog_client, model_from_catalog, own_tls
from openfeeder.services.runtime import HttpServer, ServiceThread
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


class FlisrThread(ServiceThread[FlisrCoordinator]):
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
        async def serve(stop: asyncio.Event, ready: Callable[[Any, str], None]) -> None:
            await serve_flisr(
                settings, stop, model=model, clock=clock, on_step=on_step, ready=ready
            )

        super().__init__(serve, name="the FLISR coordinator", startup_timeout_s=startup_timeout_s)

    @property
    def coordinator(self) -> FlisrCoordinator | None:
        return self._handle
