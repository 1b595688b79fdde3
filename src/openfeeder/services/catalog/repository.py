"""The algorithm repository and the service registry: two small parts of the catalog's state.

Algorithm packages are immutable per (name, version): uploading the same bytes again is accepted and
changes nothing (but a signature sent with it replaces the stored one: a renewal), other bytes under
an existing version are refused (409), so a SHA-256 handed to a device never goes stale. The bytes
stay in the database; their metadata is kept in memory.

Signatures (:class:`PackageSigning`, ``docs/security-packages.md``): every package carries the
Ed25519-signed metadata of its publisher (name, version, SHA-256, size, expiry) that devices check
before they load it. An upload may bring its signature (``X-Package-Signature``, made by
``openfeeder algorithm sign``); the catalog accepts it only when it verifies against a trusted
publisher key and matches the bytes. An upload without one is signed with the catalog's own
publisher key (``[access] sign_uploads``, on by default: the uploader's token authorised it) or
refused. At start the catalog publishes the built-in algorithms signed with its key, signs stored
packages that have no signature yet, and renews its own signatures past half their validity.

Services register their endpoints with a ``PUT`` that doubles as their heartbeat (it refreshes
``last_seen_ns``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfeeder.config import AccessSettings
from openfeeder.errors import SecurityError
from openfeeder.iot.agent.packages import (
    PackageError,
    build_package,
    builtin_algorithms,
    read_manifest,
)
from openfeeder.iot.catalog_client import (
    SIGNATURE_HEADER,
    AlgorithmInfo,
    ServiceInfo,
    ServiceSpec,
)
from openfeeder.security.signing import (
    NS_PER_DAY,
    KeyRing,
    PackageMetadata,
    SignatureError,
    key_id,
    load_private_key,
    load_public_key,
    private_key_from_pem,
    private_key_to_pem,
    sign_package,
    verify_package,
)
from openfeeder.services.catalog.locks import KeyedLocks
from openfeeder.services.catalog.problems import conflict, invalid, not_found
from openfeeder.services.catalog.records import AlgorithmMeta, ServiceRecord
from openfeeder.services.catalog.rendering import algorithm_url
from openfeeder.services.catalog.store import (
    CatalogStore,
    DeleteAlgorithm,
    DeleteService,
    PutAlgorithm,
    PutMeta,
    PutService,
    SignAlgorithm,
)
from openfeeder.services.catalog.writer import StoreWriter

__all__ = ["SIGNATURE_HEADER", "AlgorithmRepository", "PackageSigning", "ServiceRegistry"]

_LOG = logging.getLogger(__name__)
_HASH_IN_THREAD_BYTES = 1 << 20
_KEY_META: Final = "package_signing_key"


@dataclass(frozen=True, slots=True)
class PackageSigning:
    """The catalog's publisher key, the publishers it trusts, and how it signs."""

    key: Ed25519PrivateKey
    trusted: KeyRing
    """Its own public key and ``[access] publisher_keys``: handed to devices in their settings."""
    validity_ns: int
    sign_uploads: bool
    skew_ns: int = 0

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())

    @classmethod
    def load(
        cls, access: AccessSettings, meta: Mapping[str, object]
    ) -> tuple[PackageSigning, list[PutMeta]]:
        """From ``[access]`` and the stored meta values; the writes that keep a new key.

        The key is ``[access] publisher_key_file`` when set, else the one kept in the catalog's
        database, else a new one (to be stored with the returned write).
        """
        writes: list[PutMeta] = []
        if access.publisher_key_file is not None:
            key = load_private_key(access.publisher_key_file)
        elif isinstance(meta.get(_KEY_META), str):
            key = private_key_from_pem(
                str(meta[_KEY_META]).encode("ascii"), where="catalog database: signing key"
            )
        else:
            key = Ed25519PrivateKey.generate()
            writes.append(PutMeta(_KEY_META, private_key_to_pem(key).decode("ascii")))
        trusted = KeyRing(
            [key.public_key(), *(load_public_key(path) for path in access.publisher_keys)]
        )
        signing = cls(
            key=key,
            trusted=trusted,
            validity_ns=int(access.package_validity_days * NS_PER_DAY),
            sign_uploads=access.sign_uploads,
            skew_ns=int(access.clock_skew_s * 1e9),
        )
        return signing, writes


class AlgorithmRepository:
    """Packages by (name, version): metadata in memory, bytes in the store."""

    def __init__(
        self,
        packages: Mapping[tuple[str, str], AlgorithmMeta],
        *,
        store: CatalogStore,
        writer: StoreWriter,
        clock_ns: Callable[[], int],
        signing: PackageSigning | None = None,
    ) -> None:
        self._packages = dict(packages)
        self._store = store
        self._writer = writer
        self._clock_ns = clock_ns
        self._locks = KeyedLocks()
        self.signing = signing
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
            signature=meta.signature,
        )

    def infos(self) -> list[AlgorithmInfo]:
        return [self.info(self._packages[key]) for key in sorted(self._packages)]

    def get(self, name: str, version: str) -> AlgorithmMeta:
        meta = self._packages.get((name, version))
        if meta is None:
            raise not_found("algorithm package", f"{name} {version}", field="version")
        return meta

    async def put(
        self, name: str, version: str, data: bytes, *, signature: str | None = None
    ) -> tuple[AlgorithmInfo, bool]:
        """Store a package; (info, created). 409 if the version exists with other content, 422
        if ``signature`` does not hold for it (or it has none and the catalog does not sign)."""
        if len(data) > _HASH_IN_THREAD_BYTES:
            digest = await asyncio.to_thread(_sha256, data)
        else:
            digest = _sha256(data)
        async with self._locks.hold(f"{name}\x00{version}"):
            existing = self._packages.get((name, version))
            if existing is not None and existing.sha256 != digest:
                raise conflict(
                    f"algorithm {name} {version} already exists with SHA-256 {existing.sha256} "
                    f"(this upload has {digest}); a package never changes: upload a new version",
                    field="version",
                )
            if existing is not None:
                if signature is not None and signature != existing.signature:
                    self._check_signature(signature, existing)
                    renewed = replace(existing, signature=signature)
                    await self._writer.write([SignAlgorithm(name, version, signature)])
                    self._packages[(name, version)] = renewed
                    return self.info(renewed), False
                return self.info(existing), False
            meta = AlgorithmMeta(
                name=name,
                version=version,
                sha256=digest,
                size_bytes=len(data),
                uploaded_ns=self._clock_ns(),
            )
            if signature is not None:
                self._check_signature(signature, meta)
            elif self.signing is not None and self.signing.sign_uploads:
                signature = self._sign(meta)
            elif self.signing is not None:
                raise invalid(
                    SIGNATURE_HEADER,
                    f"algorithm {name} {version} has no signature and this catalog signs no "
                    f"uploads: sign it (openfeeder algorithm sign) and send {SIGNATURE_HEADER}",
                )
            meta = replace(meta, signature=signature)
            await self._writer.write([PutAlgorithm(meta, data)])
            self._packages[(name, version)] = meta
            return self.info(meta), True

    def _check_signature(self, signature: str, meta: AlgorithmMeta) -> PackageMetadata:
        if self.signing is None:
            raise invalid(SIGNATURE_HEADER, "this catalog does not check package signatures")
        try:
            signed = verify_package(
                signature,
                self.signing.trusted,
                name=meta.name,
                version=meta.version,
                sha256=meta.sha256,
                now_ns=self._clock_ns(),
                skew_ns=self.signing.skew_ns,
            )
        except SignatureError as err:
            raise invalid(
                SIGNATURE_HEADER, f"algorithm {meta.name} {meta.version}: signature refused: {err}"
            ) from err
        if signed.size_bytes != meta.size_bytes:
            raise invalid(
                SIGNATURE_HEADER,
                f"the signature is for {signed.size_bytes} bytes, the package has "
                f"{meta.size_bytes}",
            )
        return signed

    def _sign(self, meta: AlgorithmMeta) -> str:
        if self.signing is None:
            raise invalid(SIGNATURE_HEADER, "this catalog has no signing key")
        return sign_package(
            self.signing.key,
            name=meta.name,
            version=meta.version,
            sha256=meta.sha256,
            size_bytes=meta.size_bytes,
            signed_ns=self._clock_ns(),
            validity_ns=self.signing.validity_ns,
        )

    def _needs_signature(self, meta: AlgorithmMeta) -> bool:
        """Unsigned (and the catalog signs uploads), or signed by the catalog's own key and past
        half its validity, or by a key no longer trusted."""
        signing = self.signing
        if signing is None:
            return False
        if meta.signature is None:
            return signing.sign_uploads
        try:
            signed = verify_package(
                meta.signature,
                signing.trusted,
                name=meta.name,
                version=meta.version,
                sha256=meta.sha256,
                now_ns=self._clock_ns(),
            )
        except SignatureError:
            return signing.sign_uploads
        if signed.key_id != signing.key_id:
            return False  # another publisher's: theirs to renew
        return signed.expires_ns - self._clock_ns() < signing.validity_ns // 2

    async def sign_stored(self) -> int:
        """Sign what :meth:`_needs_signature` says; how many were (re)signed."""
        ops = []
        for key, meta in list(self._packages.items()):
            if self._needs_signature(meta):
                signed = replace(meta, signature=self._sign(meta))
                ops.append(SignAlgorithm(meta.name, meta.version, signed.signature or ""))
                self._packages[key] = signed
        if ops:
            await self._writer.write(ops)
        return len(ops)

    async def publish_builtins(self) -> list[AlgorithmInfo]:
        """Store the built-in algorithms (signed by the catalog) that the repository lacks."""
        published = []
        for name, folder in builtin_algorithms().items():
            try:
                manifest = read_manifest(folder)
                data = await asyncio.to_thread(build_package, folder)
            except PackageError as err:
                _LOG.warning("built-in algorithm %s not published: %s", name, err)
                continue
            if (manifest.name, manifest.version) in self._packages:
                existing = self._packages[(manifest.name, manifest.version)]
                if existing.sha256 != _sha256(data):
                    _LOG.warning(
                        "built-in algorithm %s %s differs from the stored package of that "
                        "version; the stored one stays (give the built-in a new version)",
                        manifest.name,
                        manifest.version,
                    )
                continue
            try:
                info, _ = await self.put(manifest.name, manifest.version, data)
            except (SecurityError, ValueError) as err:
                _LOG.warning("built-in algorithm %s not published: %s", name, err)
                continue
            published.append(info)
        return published

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
