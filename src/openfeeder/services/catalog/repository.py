"""The algorithm repository and the service registry: two small parts of the catalog's state.

Algorithm packages are immutable per (name, version): uploading the same bytes again is accepted and
changes nothing, other bytes under an existing version are refused (409), so a SHA-256 handed to a
device never goes stale. The bytes stay in the database; their metadata is kept in memory.

Services register their endpoints with a ``PUT`` that doubles as their heartbeat (it refreshes
``last_seen_ns``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

from openfeeder.iot.catalog_client import AlgorithmInfo, ServiceInfo, ServiceSpec
from openfeeder.services.catalog.locks import KeyedLocks
from openfeeder.services.catalog.problems import conflict, not_found
from openfeeder.services.catalog.records import AlgorithmMeta, ServiceRecord
from openfeeder.services.catalog.rendering import algorithm_url
from openfeeder.services.catalog.store import (
    CatalogStore,
    DeleteAlgorithm,
    DeleteService,
    PutAlgorithm,
    PutService,
)
from openfeeder.services.catalog.writer import StoreWriter

__all__ = ["AlgorithmRepository", "ServiceRegistry"]

_HASH_IN_THREAD_BYTES = 1 << 20


class AlgorithmRepository:
    """Packages by (name, version): metadata in memory, bytes in the store."""

    def __init__(
        self,
        packages: Mapping[tuple[str, str], AlgorithmMeta],
        *,
        store: CatalogStore,
        writer: StoreWriter,
        clock_ns: Callable[[], int],
    ) -> None:
        self._packages = dict(packages)
        self._store = store
        self._writer = writer
        self._clock_ns = clock_ns
        self._locks = KeyedLocks()
        self.catalog_url = ""

    @property
    def packages(self) -> Mapping[tuple[str, str], AlgorithmMeta]:
        """Read-only view of the metadata (what rendering settings needs)."""
        return MappingProxyType(self._packages)

    def info(self, meta: AlgorithmMeta) -> AlgorithmInfo:
        return AlgorithmInfo(
            name=meta.name,
            version=meta.version,
            sha256=meta.sha256,
            size_bytes=meta.size_bytes,
            uploaded_ns=meta.uploaded_ns,
            url=algorithm_url(self.catalog_url, meta.name, meta.version),
        )

    def infos(self) -> list[AlgorithmInfo]:
        return [self.info(self._packages[key]) for key in sorted(self._packages)]

    def get(self, name: str, version: str) -> AlgorithmMeta:
        meta = self._packages.get((name, version))
        if meta is None:
            raise not_found("algorithm package", f"{name} {version}", field="version")
        return meta

    async def put(self, name: str, version: str, data: bytes) -> tuple[AlgorithmInfo, bool]:
        """Store a package; (info, created). 409 if the version exists with other content."""
        if len(data) > _HASH_IN_THREAD_BYTES:
            digest = await asyncio.to_thread(_sha256, data)
        else:
            digest = _sha256(data)
        async with self._locks.hold(f"{name}\x00{version}"):
            existing = self._packages.get((name, version))
            if existing is not None:
                if existing.sha256 == digest:
                    return self.info(existing), False
                raise conflict(
                    f"algorithm {name} {version} already exists with SHA-256 {existing.sha256} "
                    f"(this upload has {digest}); a package never changes: upload a new version",
                    field="version",
                )
            meta = AlgorithmMeta(
                name=name,
                version=version,
                sha256=digest,
                size_bytes=len(data),
                uploaded_ns=self._clock_ns(),
            )
            await self._writer.write([PutAlgorithm(meta, data)])
            self._packages[(name, version)] = meta
            return self.info(meta), True

    async def data(self, name: str, version: str) -> tuple[AlgorithmMeta, bytes]:
        meta = self.get(name, version)
        data = await asyncio.to_thread(self._store.algorithm_data, name, version)
        if data is None:
            raise not_found("algorithm package", f"{name} {version}", field="version")
        return meta, data

    async def delete(self, name: str, version: str, *, users: list[str]) -> None:
        """Delete a package that no device uses (``users``: the devices assigned to it)."""
        async with self._locks.hold(f"{name}\x00{version}"):
            self.get(name, version)
            if users:
                shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
                raise conflict(
                    f"algorithm {name} {version} is assigned to {len(users)} device(s) "
                    f"({shown}); assign another version to them first",
                    field="version",
                )
            await self._writer.write([DeleteAlgorithm(name, version)])
            del self._packages[(name, version)]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ServiceRegistry:
    """Registered services by name."""

    def __init__(
        self,
        services: Mapping[str, ServiceRecord],
        *,
        writer: StoreWriter,
        clock_ns: Callable[[], int],
    ) -> None:
        self._services = dict(services)
        self._writer = writer
        self._clock_ns = clock_ns
        self._locks = KeyedLocks()

    def __len__(self) -> int:
        return len(self._services)

    @staticmethod
    def info(record: ServiceRecord) -> ServiceInfo:
        return ServiceInfo(
            name=record.name,
            kind=record.kind,
            instance_id=record.instance_id,
            endpoints=dict(record.endpoints),
            last_seen_ns=record.last_seen_ns,
            registered_ns=record.registered_ns,
        )

    def infos(self) -> list[ServiceInfo]:
        return [self.info(self._services[name]) for name in sorted(self._services)]

    def get(self, name: str) -> ServiceInfo:
        record = self._services.get(name)
        if record is None:
            raise not_found("service", name, field="name")
        return self.info(record)

    async def put(self, name: str, spec: ServiceSpec) -> tuple[ServiceInfo, bool]:
        """Register or refresh a service; (info, created)."""
        async with self._locks.hold(name):
            now_ns = self._clock_ns()
            old = self._services.get(name)
            record = ServiceRecord(
                name=name,
                kind=spec.kind,
                instance_id=spec.instance_id,
                endpoints=MappingProxyType(dict(spec.endpoints)),
                last_seen_ns=now_ns,
                registered_ns=old.registered_ns if old is not None else now_ns,
            )
            await self._writer.write([PutService(record)])
            self._services[name] = record
            return self.info(record), old is None

    async def delete(self, name: str) -> None:
        async with self._locks.hold(name):
            if name not in self._services:
                raise not_found("service", name, field="name")
            await self._writer.write([DeleteService(name)])
            del self._services[name]
