"""Which device ids the historian accepts: the device catalog's registry, read over REST.

:class:`DeviceDirectory` is the interface; :class:`CatalogDirectory` reads ``GET {url}/v1/devices``
(a JSON list of device objects with an ``id`` or ``device_id``, or the catalog's page ``{"total", "offset",
"devices": [...]}``, followed page by page). When the catalog cannot be reached, the devices already
known stay known and the failure is logged. :class:`OpenDirectory` accepts every id (for
``require_registered_devices = false``), :class:`StaticDirectory` a fixed set.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterable
from typing import Any, Final, Protocol

import httpx

__all__ = ["CatalogDirectory", "DeviceDirectory", "OpenDirectory", "StaticDirectory"]

_LOG = logging.getLogger(__name__)
PAGE_SIZE: Final = 10_000


class DeviceDirectory(Protocol):
    """Registered devices. ``known`` must be quick (it runs for every message)."""

    def known(self, device_id: str) -> bool: ...

    def refresh(self) -> None:
        """Re-read the registry; keeps what it knew when the registry cannot be read."""
        ...


class OpenDirectory:
    """Every device id is accepted."""

    def known(self, device_id: str) -> bool:  # noqa: ARG002 (the Protocol's signature)
        return True

    def refresh(self) -> None:
        return None


class StaticDirectory:
    """A fixed set of device ids (benchmarks, tools)."""

    def __init__(self, device_ids: Iterable[str]) -> None:
        self._ids = frozenset(device_ids)

    def known(self, device_id: str) -> bool:
        return device_id in self._ids

    def refresh(self) -> None:
        return None


class CatalogDirectory:
    """The device catalog's registry, cached; :meth:`refresh` re-reads it over HTTP."""

    def __init__(
        self, catalog_url: str, *, timeout_s: float = 5.0, verify: ssl.SSLContext | None = None
    ) -> None:
        """``verify``: the TLS context that checks an ``https://`` catalog (the platform CA)."""
        self._url = catalog_url.rstrip("/") + "/v1/devices"
        self._client = httpx.Client(
            timeout=timeout_s, verify=verify if verify is not None else True
        )
        self._ids: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self.refreshes = 0
        self.failures = 0
        self.reachable = False

    def known(self, device_id: str) -> bool:
        return device_id in self._ids

    def refresh(self) -> None:
        with self._lock:
            try:
                ids = self._fetch()
            except (httpx.HTTPError, ValueError) as err:
                self.failures += 1
                self.reachable = False
                _LOG.warning(
                    "device catalog unreachable url=%s, keeping %d known devices: %s",
                    self._url,
                    len(self._ids),
                    err,
                    extra={"url": self._url, "known_devices": len(self._ids)},
                )
                return
            self._ids = frozenset(ids)
            self.refreshes += 1
            self.reachable = True

    def _fetch(self) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            response = self._client.get(self._url, params={"offset": offset, "limit": PAGE_SIZE})
            response.raise_for_status()
            document: Any = response.json()
            if isinstance(document, list):  # a plain list: everything at once
                ids.update(_ids_of(document))
                return ids
            if not isinstance(document, dict) or not isinstance(document.get("devices"), list):
                raise ValueError("the device list is neither a list nor {'devices': [...]}")
            page = document["devices"]
            ids.update(_ids_of(page))
            offset += len(page)
            total = document.get("total")
            if not page or not isinstance(total, int) or offset >= total:
                return ids

    @property
    def count(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        self._client.close()


def _ids_of(devices: list[Any]) -> list[str]:
    ids: list[str] = []
    for device in devices:
        if isinstance(device, dict):
            value = device.get("id", device.get("device_id"))
            if isinstance(value, str):
                ids.append(value)
    return ids
