"""A device's payload keys when the catalog delivers them: its bundle, opened with its KEK.

With ``[payload_protection] enabled`` and neither ``key_bundle`` nor ``key_dir`` set, a device gets
its keys from the catalog (``docs/security-payload.md``, *Key distribution*):

- its key-encryption key (KEK) arrives once, in the enrolment answer, sealed to the key of its
  certificate signing request (:mod:`openfeeder.security.key_delivery`); the agent keeps it in
  ``<state_dir>/<device>/device.kek`` (mode 0600) next to its certificate;
- its bundle (its own keys and the group keys, each wrapped under the KEK) comes from
  ``GET /v1/devices/{id}/keys`` (:meth:`~openfeeder.iot.catalog_client.CatalogClient.device_keys`)
  at every start, and is kept in ``keys.json`` (it opens only with the KEK) so that a device
  starting while the catalog is away still seals and opens with the keys it had;
- the bundle holds each key's next version (:class:`~openfeeder.security.keys.KeyState`), so a
  rotation activates a key the device holds already; a message under a key id the device does
  not hold (its bundle predates the rotation before) makes it fetch the bundle again, at most
  once every ``refresh_interval_s``; the agent also fetches it every ``periodic_refresh_s`` so
  that its own sealing follows a rotation within the overlap and it holds the new next versions.

:class:`CatalogKeys` is the :class:`~openfeeder.security.payload.KeyResolver` the device's
protection uses; a refresh swaps the whole key ring at once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from openfeeder.config import PayloadProtectionSettings
from openfeeder.errors import OpenFeederError, SecurityError
from openfeeder.security.keys import KeyRing, KeyStoreError, open_issued_bundle
from openfeeder.security.payload import SymmetricKey, TrafficClass

__all__ = [
    "BUNDLE_FILE",
    "KEK_FILE",
    "CatalogKeys",
    "KeySource",
    "catalog_delivers_keys",
    "read_kek",
    "write_private",
]

_LOG = logging.getLogger(__name__)
KEK_FILE: Final = "device.kek"
BUNDLE_FILE: Final = "keys.json"
DEFAULT_REFRESH_INTERVAL_S: Final = 5.0


@runtime_checkable
class KeySource(Protocol):
    """Where a device fetches its bundle (:class:`~openfeeder.iot.catalog_client.CatalogClient`)."""

    def device_keys(self, device_id: str) -> dict[str, Any]: ...


def catalog_delivers_keys(settings: PayloadProtectionSettings) -> bool:
    """Whether a device's payload keys come from the catalog: protection on, and neither an
    issued bundle (``key_bundle``) nor a key store (``key_dir``) configured."""
    return settings.enabled and settings.key_bundle is None and settings.key_dir is None


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with mode 0600 (a temporary file, then rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError as err:
        raise SecurityError(f"{path}: cannot write: {err.strerror}") from err


def read_kek(path: Path) -> bytes | None:
    """The KEK stored in ``path`` (base64); None when there is none or it is unusable."""
    try:
        raw = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, ValueError):
        return None
    return raw if len(raw) == 32 else None


class CatalogKeys:
    """The device's key ring, fetched from the catalog and refreshed (module docstring)."""

    def __init__(
        self,
        device_id: str,
        *,
        kek: bytes,
        fetch: Callable[[], Mapping[str, Any]],
        cache: Path | None = None,
        refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self._kek = kek
        self._fetch = fetch
        self._cache = cache
        self._refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._ring = KeyRing(())
        self._last_attempt: float | None = None
        self.refreshes = 0
        if cache is not None and cache.exists():
            try:
                self._ring = self._open(json.loads(cache.read_text(encoding="utf-8")))
            except (OSError, ValueError, SecurityError) as err:
                _LOG.warning("%s: cached key bundle %s unusable: %s", device_id, cache, err)

    def _open(self, bundle: Mapping[str, Any]) -> KeyRing:
        if bundle.get("device_id") != self.device_id:
            raise KeyStoreError(
                f"{self.device_id}: the key bundle is for {bundle.get('device_id')!r}"
            )
        return open_issued_bundle(bundle, kek=self._kek)

    def refresh(self) -> bool:
        """Fetch and open the bundle now; False (logged, the ring kept) when that fails."""
        try:
            bundle = dict(self._fetch())
            ring = self._open(bundle)
        except (OpenFeederError, ValueError) as err:
            _LOG.warning(
                "%s: payload keys not refreshed: %s",
                self.device_id,
                err,
                extra={"device_id": self.device_id},
            )
            return False
        with self._lock:
            self._ring = ring
            self.refreshes += 1
        if self._cache is not None:
            write_private(self._cache, json.dumps(bundle).encode("utf-8"))
        _LOG.info(
            "%s: payload keys %s",
            self.device_id,
            ", ".join(ring.key_ids()),
            extra={"device_id": self.device_id, "event": "payload_keys"},
        )
        return True

    @property
    def key_ids(self) -> list[str]:
        return self._ring.key_ids()

    def sealing_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey:
        return self._ring.sealing_key(traffic, device_id)

    def opening_key(self, key_id: str) -> SymmetricKey:
        try:
            return self._ring.opening_key(key_id)
        except KeyStoreError:
            if not self._may_refresh() or not self.refresh():
                raise
        return self._ring.opening_key(key_id)

    def _may_refresh(self) -> bool:
        """Whether a miss may fetch now (claims the slot: one fetch per interval, whatever the
        number of threads or of made-up key ids)."""
        with self._lock:
            now, last = self._clock(), self._last_attempt
            if last is not None and now - last < self._refresh_interval_s:
                return False
            self._last_attempt = now
            return True
