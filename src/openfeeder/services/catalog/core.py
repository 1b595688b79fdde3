"""The device catalog's state and operations, independent of HTTP (the REST layer calls these).

State lives in memory, loaded from the store at start; every change is written to the store first
(:class:`~openfeeder.services.catalog.writer.StoreWriter`, group commit) and applied in memory once
it is durable, so whatever a client was told survives a crash.

Configuration versions
    ``config_version`` comes from one counter shared by all devices and persisted with every
    change, so a device's version only grows, across restarts and even across deletion and
    re-registration. A device's settings get a new version exactly when their content changes:
    each record keeps the SHA-256 of its rendered settings (without the version); an update, an
    algorithm assignment, a topology change or a new catalog configuration (broker URLs, defaults,
    the catalog's URL, the case) that changes the content bumps the version. At start the catalog
    renders every device's settings again and bumps those that differ from what was stored.

Pushes
    A changed configuration of a known device is published at once as a retained ``ConfigChange``
    on its config topic; a device that missed it sees a different ETag at its next poll. A device
    that registers itself by booting gets its settings in the answer and nothing is published.

Liveness
    :mod:`~openfeeder.services.catalog.liveness`: every boot and poll refreshes the device's
    last-seen time; a device silent past ``disconnect_timeout_s`` is marked disconnected and that
    is announced on MQTT, and so is its return.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from openfeeder import __version__
from openfeeder.config import Settings
from openfeeder.errors import CaseError, ConfigError
from openfeeder.iot.catalog_client import (
    AlgorithmAssignment,
    DeviceInfo,
    DeviceList,
    DevicePatch,
    DeviceSpec,
    DeviceStatus,
    TopologyInfo,
    TopologyUpdate,
)
from openfeeder.iot.device_settings import BootRequest, DeviceSettings, GridPart, Location
from openfeeder.iot.schema import ConfigChange, TopologyChange
from openfeeder.iot.topics import config_topic
from openfeeder.model.cases import resolve_case
from openfeeder.services.catalog.grid_view import CaseGrid, GridView, LocationError
from openfeeder.services.catalog.liveness import LivenessMonitor
from openfeeder.services.catalog.locks import KeyedLocks, SharedExclusiveLock
from openfeeder.services.catalog.problems import ProblemError, ProblemKind, invalid, not_found
from openfeeder.services.catalog.publishing import Publisher
from openfeeder.services.catalog.records import (
    Assignment,
    DeviceRecord,
    Liveness,
    freeze_json,
)
from openfeeder.services.catalog.rendering import (
    RenderContext,
    render_settings,
    settings_fingerprint,
)
from openfeeder.services.catalog.repository import (
    AlgorithmRepository,
    PackageSigning,
    ServiceRegistry,
)
from openfeeder.services.catalog.store import (
    CatalogStore,
    DeleteDevice,
    PutDevice,
    PutMeta,
    WriteOp,
)
from openfeeder.services.catalog.topology_state import TopologyState
from openfeeder.services.catalog.writer import StoreWriter

__all__ = ["Catalog"]

_LOG = logging.getLogger(__name__)
_COUNTER_KEY: Final = "config_counter"
_IDENTITY_KEY: Final = "catalog_id"
_TOPOLOGY_KEY: Final = "topology"

_Prepared = tuple[DeviceRecord, DeviceSettings, bool]
"""A record ready to store, its rendered settings, and whether its version was bumped."""


class Catalog:
    """Registry, self-configuration, liveness, topology, discovery and algorithm repository."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: CatalogStore,
        publisher: Publisher,
        service_id: str = "catalog",
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._store = store
        self._publisher = publisher
        self._service_id = service_id
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._writer = StoreWriter(store)
        self._context = RenderContext.from_settings(settings, catalog_url=settings.catalog.url)
        self._devices: dict[str, DeviceRecord] = {}
        self._rendered: dict[str, bytes] = {}
        self._live = LivenessMonitor(
            timeout_s=settings.catalog.disconnect_timeout_s,
            writer=self._writer,
            publisher=publisher,
            clock_ns=clock_ns,
            monotonic=monotonic,
        )
        self._config_seq: Counter[str] = Counter()
        self._topology_seq = 0
        self._config_counter = 0
        self._case: CaseGrid | None = None
        self._view: GridView | None = None
        self._topology = TopologyState()
        self._registry = SharedExclusiveLock()
        self._keys = KeyedLocks()
        self.algorithms = AlgorithmRepository(
            {}, store=store, writer=self._writer, clock_ns=clock_ns
        )
        self.services = ServiceRegistry({}, writer=self._writer, clock_ns=clock_ns)
        self._started_s = monotonic()

    @property
    def case_grid(self) -> CaseGrid | None:
        """The configured case (None before start or without ``[catalog] case``)."""
        return self._case

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, public_url: str) -> None:
        """Load the state and the case, render every device again, start the writer."""
        self._context = RenderContext.from_settings(self._settings, catalog_url=public_url)
        case_name = self._settings.catalog.case
        if case_name:
            self._case = await asyncio.to_thread(_load_case, case_name)
        stored = await asyncio.to_thread(self._store.load)
        self._writer.start()
        signing, key_writes = PackageSigning.load(self._settings.access, stored.meta)
        if key_writes:
            await self._writer.write(key_writes)
        self.algorithms = AlgorithmRepository(
            stored.algorithms,
            store=self._store,
            writer=self._writer,
            clock_ns=self._clock_ns,
            signing=signing,
        )
        self.algorithms.catalog_url = self._context.catalog_url
        identity = stored.meta.get(_IDENTITY_KEY)
        if not isinstance(identity, str) or not identity:
            identity = uuid.uuid4().hex  # a new installation (database)
            await self._writer.write([PutMeta(_IDENTITY_KEY, identity)])
        self._context = dataclasses.replace(
            self._context, package_keys=signing.trusted.texts(), catalog_id=identity
        )
        await self.algorithms.sign_stored()
        await self.algorithms.publish_builtins()
        self.services = ServiceRegistry(
            stored.services, writer=self._writer, clock_ns=self._clock_ns
        )
        counter = stored.meta.get(_COUNTER_KEY, 0)
        versions = (record.config_version for record, _ in stored.devices.values())
        self._config_counter = max([counter if isinstance(counter, int) else 0, *versions])
        if self._case is not None:
            self._topology = TopologyState.from_json(
                stored.meta.get(_TOPOLOGY_KEY), switch_ids=self._case.switch_ids
            )
            closed = self._topology.closed(self._case.normally_closed)
            self._view = await asyncio.to_thread(
                self._case.view, closed, version=self._topology.version
            )
        self._started_s = self._monotonic()
        self._devices = {device_id: record for device_id, (record, _) in stored.devices.items()}
        self._live.load({device_id: live for device_id, (_, live) in stored.devices.items()})
        await self._reconcile()
        if self._topology.version > 0:
            self._publish_topology()
        _LOG.info(
            "catalog started devices=%d storage=%s url=%s",
            len(self._devices),
            self._store.backend,
            self._context.catalog_url,
            extra={"devices": len(self._devices), "storage": self._store.backend},
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Watch liveness and write last-seen times until ``stop`` is set."""
        await self._live.run(stop)

    async def close(self) -> None:
        """Write the pending last-seen times and stop the writer."""
        self._live.flush()
        await asyncio.to_thread(self._writer.stop)

    async def _reconcile(self) -> None:
        """Render every device again; bump and push those whose settings changed while stopped."""
        prepared: list[_Prepared] = []
        for record in list(self._devices.values()):
            kept = tuple(
                a for a in record.algorithms if (a.name, a.version) in self.algorithms.packages
            )
            if kept != record.algorithms:
                _LOG.warning(
                    "device %s: dropped assignments of missing packages",
                    record.device_id,
                    extra={"device_id": record.device_id},
                )
            candidate = dataclasses.replace(
                record, algorithms=kept, grid=self._grid_part(record.location, record.grid)
            )
            prepared.append(self._prepare(candidate, old=record))
        changed = [item for item in prepared if item[2]]
        if changed:
            _LOG.info(
                "catalog configuration changed: %d devices get new settings",
                len(changed),
                extra={"devices": len(changed)},
            )
        await self._store_devices(changed)
        for record, settings, _ in prepared:
            self._rendered[record.device_id] = _json_bytes(settings)
        self._push(changed)

    # -- queries -------------------------------------------------------------------------------

    @property
    def storage_backend(self) -> str:
        return self._store.backend

    def device(self, device_id: str) -> DeviceInfo:
        if device_id not in self._devices:
            raise not_found("device", device_id, field="device_id")
        return self._info(device_id)

    def devices(
        self,
        *,
        device_type: str | None = None,
        status: DeviceStatus | None = None,
        offset: int = 0,
        limit: int = 1000,
    ) -> DeviceList:
        """Devices by id, filtered by type and status, ``limit`` of them from ``offset``."""
        matching = sorted(
            device_id
            for device_id, record in self._devices.items()
            if (device_type is None or record.device_type == device_type)
            and (status is None or self._live.get(device_id).status is status)
        )
        page = matching[offset : offset + limit]
        return DeviceList(
            total=len(matching), offset=offset, devices=tuple(self._info(d) for d in page)
        )

    def device_assignments(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Every device id with the (name, version) of the packages assigned to it (for the
        broker ACL, :mod:`~openfeeder.services.catalog.access_sync`)."""
        return {
            device_id: tuple((a.name, a.version) for a in record.algorithms)
            for device_id, record in self._devices.items()
        }

    def health(self) -> dict[str, Any]:
        counts = self._live.counts()
        mqtt = self._publisher.connected()
        return {
            "status": "ok" if all(mqtt.values()) else "degraded",
            "version": __version__,
            "devices": {str(status): counts.get(status, 0) for status in DeviceStatus},
            "storage": self._store.backend,
            "mqtt": mqtt,
            "case": self._case.name if self._case is not None else None,
            "topology_version": self._topology.version,
            "services": len(self.services),
            "algorithms": len(self.algorithms.packages),
            "uptime_s": round(self._monotonic() - self._started_s, 3),
        }

    def _info(self, device_id: str) -> DeviceInfo:
        record = self._devices[device_id]
        liveness = self._live.get(device_id)
        return DeviceInfo(
            device_id=record.device_id,
            device_type=record.device_type,
            firmware=record.firmware,
            capabilities=record.capabilities,
            location=record.location,
            sampling_rate_hz=record.sampling_rate_hz,
            reporting_interval_s=record.reporting_interval_s,
            algorithms=tuple(
                AlgorithmAssignment(name=a.name, version=a.version, parameters=dict(a.parameters))
                for a in record.algorithms
            ),
            config_version=record.config_version,
            status=liveness.status,
            last_seen_ns=liveness.last_seen_ns,
            registered_ns=record.registered_ns,
            grid=record.grid,
        )

    # -- self-configuration and auto-update ----------------------------------------------------

    async def boot(self, request: BootRequest) -> tuple[int, bytes]:
        """Register or refresh a booting device; (config_version, settings JSON).

        A new device is registered as it describes itself. For a known one the registry wins:
        the boot updates firmware and capabilities, and the location only when none was
        provisioned; type, location, rates and algorithms set by an operator stay as they are.
        """
        device_id = request.device_id
        now_ns = self._clock_ns()
        async with self._registry.shared(), self._keys.hold(device_id):
            old = self._devices.get(device_id)
            location = request.location if old is None or old.location is None else old.location
            if location is request.location:
                self._check_location(location)
            if old is None:
                record = DeviceRecord(
                    device_id=device_id,
                    device_type=request.device_type,
                    firmware=request.firmware,
                    capabilities=request.capabilities,
                    location=location,
                    sampling_rate_hz=None,
                    reporting_interval_s=None,
                    algorithms=(),
                    config_version=0,
                    grid=self._grid_part(location, None),
                    settings_sha256="",
                    registered_ns=now_ns,
                )
            else:
                record = dataclasses.replace(
                    old,
                    firmware=request.firmware,
                    capabilities=request.capabilities,
                    location=location,
                    grid=self._grid_part(location, old.grid),
                )
            stored = record != old
            if stored:  # one write: the record with its new liveness
                prepared = self._prepare(record, old=old)
                live = Liveness(DeviceStatus.CONNECTED, now_ns)
                await self._store_devices([prepared], liveness={device_id: live})
                self._rendered[device_id] = _json_bytes(prepared[1])
                if old is not None:
                    self._push([prepared])
            self._live.seen(device_id, now_ns, persisted=stored)
            return self._devices[device_id].config_version, self._rendered[device_id]

    def poll(self, device_id: str) -> tuple[int, bytes]:
        """A device asks for its settings: refresh its liveness; (config_version, settings JSON)."""
        record = self._devices.get(device_id)
        if record is None:
            raise not_found("device", device_id, field="device_id")
        self._live.seen(device_id, self._clock_ns())
        return record.config_version, self._rendered[device_id]

    # -- provisioning --------------------------------------------------------------------------

    async def put_device(self, device_id: str, spec: DeviceSpec) -> tuple[DeviceInfo, bool]:
        """Provision a device (replacing what was provisioned); (info, created)."""
        async with self._registry.shared(), self._keys.hold(device_id):
            self._check_location(spec.location)
            algorithms = self._assignments(spec.algorithms)
            old = self._devices.get(device_id)
            record = DeviceRecord(
                device_id=device_id,
                device_type=spec.device_type,
                firmware=old.firmware if old is not None else "",
                capabilities=old.capabilities if old is not None else (),
                location=spec.location,
                sampling_rate_hz=spec.sampling_rate_hz,
                reporting_interval_s=spec.reporting_interval_s,
                algorithms=algorithms,
                config_version=old.config_version if old is not None else 0,
                grid=self._grid_part(spec.location, old.grid if old is not None else None),
                settings_sha256=old.settings_sha256 if old is not None else "",
                registered_ns=old.registered_ns if old is not None else self._clock_ns(),
            )
            await self._save(record, old=old)
            return self._info(device_id), old is None

    async def patch_device(self, device_id: str, patch: DevicePatch) -> DeviceInfo:
        """Change some provisioned fields of a device (those present in ``patch``)."""
        async with self._registry.shared(), self._keys.hold(device_id):
            old = self._devices.get(device_id)
            if old is None:
                raise not_found("device", device_id, field="device_id")
            fields = patch.model_fields_set
            changes: dict[str, Any] = {}
            if "device_type" in fields:
                changes["device_type"] = patch.device_type
            if "location" in fields:
                self._check_location(patch.location)
                changes["location"] = patch.location
            if "algorithms" in fields and patch.algorithms is not None:
                changes["algorithms"] = self._assignments(patch.algorithms)
            for name in ("sampling_rate_hz", "reporting_interval_s"):
                if name in fields:
                    changes[name] = getattr(patch, name)
            record = dataclasses.replace(old, **changes)
            record = dataclasses.replace(record, grid=self._grid_part(record.location, old.grid))
            await self._save(record, old=old)
            return self._info(device_id)

    async def delete_device(self, device_id: str) -> None:
        """Forget a device and clear its retained configuration on MQTT."""
        async with self._registry.shared(), self._keys.hold(device_id):
            if device_id not in self._devices:
                raise not_found("device", device_id, field="device_id")
            await self._writer.write([DeleteDevice(device_id)])
            del self._devices[device_id]
            self._rendered.pop(device_id, None)
            self._live.forget(device_id)
        self._publisher.clear_retained(config_topic(device_id))

    async def delete_algorithm(self, name: str, version: str) -> None:
        """Delete a package no device is assigned to (409 otherwise)."""
        async with self._registry.exclusive():
            users = sorted(
                device_id
                for device_id, record in self._devices.items()
                if any(a.name == name and a.version == version for a in record.algorithms)
            )
            await self.algorithms.delete(name, version, users=users)

    async def _save(self, record: DeviceRecord, *, old: DeviceRecord | None) -> None:
        if record == old:
            return
        prepared = self._prepare(record, old=old)
        await self._store_devices([prepared])
        self._rendered[record.device_id] = _json_bytes(prepared[1])
        self._push([prepared])

    def _assignments(self, algorithms: Sequence[AlgorithmAssignment]) -> tuple[Assignment, ...]:
        packages = self.algorithms.packages
        for index, algorithm in enumerate(algorithms):
            if (algorithm.name, algorithm.version) in packages:
                continue
            versions = sorted(v for n, v in packages if n == algorithm.name)
            if versions:
                raise invalid(
                    f"algorithms[{index}].version",
                    f"no package {algorithm.name} {algorithm.version} in the algorithm repository "
                    f"(it has versions {', '.join(versions)})",
                )
            raise invalid(
                f"algorithms[{index}].name",
                f"no package named {algorithm.name} in the algorithm repository",
            )
        return tuple(
            Assignment(name=a.name, version=a.version, parameters=freeze_json(a.parameters))
            for a in algorithms
        )

    def _check_location(self, location: Location | None) -> None:
        if location is None or self._case is None:
            return
        try:
            self._case.check_location(location)
        except LocationError as err:
            raise invalid(err.field, str(err)) from err

    def _grid_part(self, location: Location | None, previous: GridPart | None) -> GridPart | None:
        if self._view is None:
            return None
        return self._view.part(location, previous=previous)

    # -- versions, storing, pushing ------------------------------------------------------------

    def _prepare(self, record: DeviceRecord, *, old: DeviceRecord | None) -> _Prepared:
        """Render ``record``; a new config version if its settings differ from ``old``'s."""
        settings = render_settings(
            record, context=self._context, algorithms=self.algorithms.packages
        )
        fingerprint = settings_fingerprint(settings)
        if old is not None and fingerprint == old.settings_sha256:
            kept = dataclasses.replace(
                record, config_version=old.config_version, settings_sha256=fingerprint
            )
            return kept, settings.model_copy(update={"config_version": old.config_version}), False
        self._config_counter += 1
        version = self._config_counter
        bumped = dataclasses.replace(record, config_version=version, settings_sha256=fingerprint)
        return bumped, settings.model_copy(update={"config_version": version}), True

    async def _store_devices(
        self,
        prepared: Sequence[_Prepared],
        *,
        extra: Iterable[WriteOp] = (),
        liveness: Mapping[str, Liveness] | None = None,
    ) -> None:
        """Write the records (and ``extra``) in one transaction, then apply them in memory.

        The stored liveness is the one in memory unless ``liveness`` gives it (memory is left to
        :meth:`LivenessMonitor.seen`, which compares with the previous state).
        """
        given = liveness or {}
        ops: list[WriteOp] = list(extra)
        for record, _, _ in prepared:
            device_id = record.device_id
            live = given.get(device_id) or self._live.get(device_id)
            ops.append(PutDevice(record, live))
        if any(bumped for _, _, bumped in prepared):
            ops.append(PutMeta(_COUNTER_KEY, self._config_counter))
        await self._writer.write(ops)
        for record, _, _ in prepared:
            self._devices[record.device_id] = record
            self._live.register(record.device_id)

    def _push(self, prepared: Iterable[_Prepared]) -> None:
        """Publish the retained configuration of each bumped record."""
        now_ns = self._clock_ns()
        for record, settings, bumped in prepared:
            if not bumped:
                continue
            device_id = record.device_id
            seq = self._config_seq[device_id]
            self._config_seq[device_id] += 1
            self._publisher.publish(
                ConfigChange(
                    device_id=device_id,
                    seq=seq,
                    t_ns=now_ns,
                    config_version=record.config_version,
                    settings=settings.model_dump(mode="json"),
                )
            )

    # -- topology ------------------------------------------------------------------------------

    def topology(self) -> TopologyInfo:
        case = self._case
        if case is None:
            return TopologyInfo(
                case=None, topology_version=0, switch_states={}, reason="", updated_ns=None
            )
        return TopologyInfo(
            case=case.name,
            topology_version=self._topology.version,
            switch_states=self._topology.positions(case.normally_closed),
            reason=self._topology.reason,
            updated_ns=self._topology.updated_ns,
        )

    async def set_topology(self, update: TopologyUpdate) -> TopologyInfo:
        """Set switch positions: a new topology version, pushed to the devices it changes."""
        case = self._case
        if case is None:
            raise ProblemError(
                ProblemKind.CONFLICT,
                409,
                "no grid model is configured ([catalog] case is empty)",
                field="switch_states",
            )
        for switch_id in update.switch_states:
            if switch_id not in case.switch_ids:
                raise invalid(
                    f"switch_states.{switch_id}", f"case '{case.name}' has no switch {switch_id}"
                )
        async with self._registry.exclusive():
            current = self._topology
            proposed = current.updated(
                update.switch_states, reason=update.reason, now_ns=self._clock_ns()
            )
            closed = proposed.closed(case.normally_closed)
            if closed == current.closed(case.normally_closed):
                return self.topology()
            view = await asyncio.to_thread(case.view, closed, version=proposed.version)
            prepared = []
            for record in self._devices.values():
                if record.location is None:
                    continue
                grid = view.part(record.location, previous=record.grid)
                if grid != record.grid:
                    prepared.append(
                        self._prepare(dataclasses.replace(record, grid=grid), old=record)
                    )
            await self._store_devices(prepared, extra=[PutMeta(_TOPOLOGY_KEY, proposed.to_json())])
            self._topology = proposed
            self._view = view
            for record, settings, _ in prepared:
                self._rendered[record.device_id] = _json_bytes(settings)
            _LOG.info(
                "topology version %d: %d devices get new settings",
                proposed.version,
                len(prepared),
                extra={"topology_version": proposed.version, "devices": len(prepared)},
            )
        self._publish_topology()
        self._push(prepared)
        return self.topology()

    def _publish_topology(self) -> None:
        case = self._case
        if case is None:
            return
        seq = self._topology_seq
        self._topology_seq += 1
        self._publisher.publish(
            TopologyChange(
                device_id=self._service_id,
                seq=seq,
                t_ns=self._clock_ns(),
                topology_version=self._topology.version,
                switch_states=self._topology.positions(case.normally_closed),
                reason=self._topology.reason,
            )
        )


def _load_case(name: str) -> CaseGrid:
    try:
        return CaseGrid.build(resolve_case(name), case=name)
    except CaseError as err:
        raise ConfigError(f"catalog.case: {err}") from err


def _json_bytes(settings: DeviceSettings) -> bytes:
    return settings.model_dump_json().encode("utf-8")
