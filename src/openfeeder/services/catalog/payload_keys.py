"""The catalog's key desk: payload keys for every enrolled device, and their delivery.

With ``[payload_protection] enabled`` and a key store (``key_dir``, master key from
``master_key_file`` or ``OPENFEEDER_MASTER_KEY``), the catalog hands devices the keys of the sealed
traffic classes (``docs/security-payload.md``, *Key distribution*):

1. at start it makes sure each sealed class has an active **group key** (``control``,
   ``protection``; ``monitoring`` only when it is sealed), with the algorithm the policy names;
   services and broadcast topics (``topology``) seal with those;
2. when a device's certificate is issued (enrolment), it creates the device's **own keys**
   (``control/<id>``, ``protection/<id>``) if they do not exist, and seals the device's
   key-encryption key (``kek/<id>``) to the public key of the device's CSR
   (:mod:`openfeeder.security.key_delivery`): the KEK travels in the enrolment answer and opens only
   with the device's private key;
3. ``GET /v1/devices/{id}/keys`` answers the device's bundle (:meth:`KeyStore.issue`): its own keys,
   the group keys, and the keys of the other devices whose sealed traffic its algorithms read (an
   edge fault locator reading ``event/+`` gets every device's protection key: it may read that
   traffic by the ACL, so it may open it), each version that may still be used wrapped under its
   KEK. The bundle opens only
   with that KEK, so the endpoint needs no operator token; a device fetches it at every start and
   again when a message names a key it does not hold (after a rotation).

An active key whose algorithm differs from the policy (a class switched from SM4 to AES after the
keys were made) is refused at start with the key's name: rotate it under the new algorithm first.
"""

from __future__ import annotations

import asyncio
import logging
import zipfile
from collections.abc import Iterable
from typing import Annotated, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Path

from openfeeder.config import PayloadProtectionSettings
from openfeeder.errors import ConfigError, OpenFeederError, SecurityError
from openfeeder.iot.topics import ID_PATTERN, TOPIC_PREFIX
from openfeeder.security.audit import AuditLog
from openfeeder.security.key_delivery import seal_kek
from openfeeder.security.keys import KeyStore, KeyStoreError, key_name, load_master_key
from openfeeder.security.payload import DEFAULT_TRAFFIC, Algorithm, TrafficClass
from openfeeder.services.catalog.access_sync import package_input_filters
from openfeeder.services.catalog.core import Catalog
from openfeeder.services.catalog.problems import ProblemError, ProblemKind, not_found

__all__ = ["DeviceKeys", "device_keys_router"]

_LOG = logging.getLogger(__name__)
DeviceIdPath = Annotated[
    str, Path(pattern=f"^{ID_PATTERN.pattern}$", description="device id ([A-Za-z0-9_.-]{1,64})")
]


class DeviceKeys:
    """Group keys, per-device keys and KEK delivery over one key store (module docstring)."""

    def __init__(self, store: KeyStore, *, algorithms: dict[TrafficClass, Algorithm]) -> None:
        self.store = store
        self._sealed = {t: a for t, a in algorithms.items() if a is not Algorithm.NONE}

    @classmethod
    def from_settings(cls, settings: PayloadProtectionSettings) -> DeviceKeys | None:
        """The desk over ``key_dir`` (None when protection is off or the catalog holds no store)."""
        if not settings.enabled or settings.key_dir is None:
            return None
        audit = AuditLog(settings.audit_log) if settings.audit_log is not None else None
        try:
            master = load_master_key(settings.master_key_file)
            store = KeyStore(settings.key_dir, master_key=master, audit=audit, actor="catalog")
        except SecurityError as err:
            raise ConfigError(f"payload_protection.key_dir: {err}") from err
        algorithms = {
            TrafficClass.CONTROL: Algorithm(settings.control),
            TrafficClass.PROTECTION: Algorithm(settings.protection),
            TrafficClass.MONITORING: Algorithm(settings.monitoring),
        }
        desk = cls(store, algorithms=algorithms)
        desk.ensure_group_keys()
        return desk

    def _ensure(self, name: str, algorithm: Algorithm) -> None:
        try:
            key = self.store.active(name)
        except KeyStoreError:
            if self.store.list_keys(name=name):
                # a name with only archived or destroyed versions: a new version, same policy
                self.store.rotate(name, overlap_s=0)
            else:
                self.store.create(name, algorithm)
            _LOG.info("payload key %s made (%s)", name, algorithm, extra={"key": name})
            return
        if key.algorithm is not algorithm:
            raise ConfigError(
                f"payload_protection: key {key.key_id!r} is {key.algorithm}, the policy says "
                f"{algorithm}: rotate it under the new algorithm ('openfeeder keys rotate')"
            )

    def ensure_group_keys(self) -> None:
        """An active group key for every sealed traffic class."""
        for traffic, algorithm in self._sealed.items():
            self._ensure(key_name(traffic), algorithm)

    def ensure_device(self, device_id: str) -> None:
        """The device's own key for every sealed traffic class."""
        for traffic, algorithm in self._sealed.items():
            self._ensure(key_name(traffic, device_id), algorithm)

    def sealed_kek(self, device_id: str, csr_pem: bytes) -> dict[str, str]:
        """The device's KEK sealed to its CSR's public key (its own keys made first)."""
        try:
            public_key = x509.load_pem_x509_csr(csr_pem).public_key()
        except ValueError as err:
            raise ProblemError(
                ProblemKind.INVALID, 422, f"{device_id}: unreadable CSR: {err}", field="csr_pem"
            ) from err
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ProblemError(
                ProblemKind.INVALID, 422, f"{device_id}: the CSR key is not EC", field="csr_pem"
            )
        self.ensure_device(device_id)
        return seal_kek(
            self.store.device_kek(device_id), public_key=public_key, device_id=device_id
        )

    def bundle(self, device_id: str, *, reads: Iterable[str] = ()) -> dict[str, Any]:
        """The usable keys of an enrolled device, wrapped under its KEK (404 for a device that
        was never given a KEK: nothing is made for ids nobody enrolled).

        ``reads``: the topic filters its algorithms subscribe to; for each one on a sealed class
        the bundle also holds the keys of the devices it matches (``event/+``: every device's
        protection key), so that the algorithm can open what the ACL lets it read.
        """
        if not self.store.list_keys(name=key_name("kek", device_id)):
            raise not_found(
                "enrolled device with a key-encryption key", device_id, field="device_id"
            )
        self.ensure_device(device_id)
        return self.store.issue(device_id, readable=self._readable(reads))

    def _readable(self, reads: Iterable[str]) -> set[str]:
        """Names of other devices' keys that the filters ``reads`` reach on sealed classes."""
        every: set[str] = set()  # traffic classes of which every device's key is wanted
        names: set[str] = set()
        for flt in reads:
            levels = flt.split("/")
            if len(levels) < 4 or "/".join(levels[:2]) != TOPIC_PREFIX:
                continue
            traffic = DEFAULT_TRAFFIC.get(levels[2])
            if traffic is None or traffic not in self._sealed:
                continue
            if levels[3] in ("+", "#"):
                every.add(str(traffic))
            else:
                names.add(key_name(traffic, levels[3]))
        if every:
            names |= {
                info.name
                for info in self.store.list_keys()
                if info.scope is not None and info.name.split("/", 1)[0] in every
            }
        return names


def device_keys_router(keys: DeviceKeys, catalog: Catalog) -> APIRouter:
    """``GET /v1/devices/{id}/keys``: the device's key bundle (opens only with its KEK), with
    the keys its algorithms' topic inputs need."""
    router = APIRouter(prefix="/v1/devices", tags=["devices"])
    inputs: dict[tuple[str, str], tuple[str, ...]] = {}  # package -> its input filters

    async def reads_of(device_id: str) -> list[str]:
        filters: list[str] = []
        for package in catalog.device_assignments().get(device_id, ()):
            if package not in inputs:
                try:
                    _, data = await catalog.algorithms.data(*package)
                    inputs[package] = package_input_filters(data)
                except (OpenFeederError, KeyError, ValueError, zipfile.BadZipFile) as err:
                    _LOG.warning("algorithm %s %s: inputs unreadable (%s)", *package, err)
                    inputs[package] = ()
            filters += inputs[package]
        return filters

    @router.get("/{device_id}/keys")
    async def device_keys(device_id: DeviceIdPath) -> dict[str, Any]:
        reads = await reads_of(device_id)
        try:
            return await asyncio.to_thread(keys.bundle, device_id, reads=reads)
        except KeyStoreError as err:
            raise ProblemError(ProblemKind.INTERNAL, 500, str(err), field="device_id") from err

    return router
