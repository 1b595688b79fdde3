"""The catalog's state as plain frozen records: devices, services, algorithm packages.

These are what the store reads and writes and what the catalog keeps in memory; the REST layer turns
them into the pydantic models of :mod:`openfeeder.iot.catalog_client` at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import JsonValue

from openfeeder.iot.catalog_client import DeviceStatus
from openfeeder.iot.device_settings import GridPart, Location

__all__ = [
    "AlgorithmMeta",
    "Assignment",
    "DeviceRecord",
    "Liveness",
    "ServiceRecord",
    "freeze_json",
]


def freeze_json(value: Mapping[str, JsonValue]) -> Mapping[str, JsonValue]:
    """A read-only view of a JSON object (records are shared between requests)."""
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class Assignment:
    """An algorithm assigned to a device: package name and version, and its parameters."""

    name: str
    version: str
    parameters: Mapping[str, JsonValue]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "parameters": dict(self.parameters)}


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What the catalog knows about one device, apart from its liveness.

    ``sampling_rate_hz`` and ``reporting_interval_s`` are per-device overrides (None: the
    ``[catalog]`` default). ``grid`` is the device's part of the grid model as last handed out (its
    ``topology_version`` is the version that last changed it). ``settings_sha256`` fingerprints the
    rendered settings without their version, so that a change of anything they contain is noticed
    and bumps ``config_version``.
    """

    device_id: str
    device_type: str
    firmware: str
    capabilities: tuple[str, ...]
    location: Location | None
    sampling_rate_hz: float | None
    reporting_interval_s: float | None
    algorithms: tuple[Assignment, ...]
    config_version: int
    grid: GridPart | None
    settings_sha256: str
    registered_ns: int


@dataclass(frozen=True, slots=True)
class Liveness:
    """When the device was last heard from and what the catalog concluded."""

    status: DeviceStatus
    last_seen_ns: int | None


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """A platform service that registered its endpoints (name -> URL)."""

    name: str
    kind: str
    instance_id: str
    endpoints: Mapping[str, str]
    last_seen_ns: int
    registered_ns: int


@dataclass(frozen=True, slots=True)
class AlgorithmMeta:
    """An algorithm package in the repository (the bytes stay in the database)."""

    name: str
    version: str
    sha256: str
    size_bytes: int
    uploaded_ns: int
    signature: str | None = None
    """The publisher's signed metadata (:mod:`openfeeder.security.signing`), None if unsigned."""
