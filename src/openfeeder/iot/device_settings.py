"""The self-configuration contract between the device catalog and the devices (REST and MQTT).

A device boots and posts a :class:`BootRequest` (its id, type, firmware, capabilities, optionally
where it sits on the grid). The catalog answers with its complete :class:`DeviceSettings`: broker
endpoints per context, the topics to publish and subscribe, sampling and reporting rates, the
algorithms to run (name, version, SHA-256, where to fetch the package), the part of the grid model it
monitors, and how often to poll. ``config_version`` identifies the settings (it is the HTTP ETag);
the same document travels in a :class:`~openfeeder.iot.schema.ConfigChange` (its ``settings`` field)
when the catalog pushes a change over MQTT.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, field_validator

from openfeeder.config import ReportingInterval, SamplingRate
from openfeeder.iot.topics import ID_PATTERN, BrokerContext

__all__ = [
    "AlgorithmRef",
    "BootRequest",
    "BrokerEndpoint",
    "DeviceSettings",
    "GridPart",
    "Location",
]

DeviceId = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Token = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
_MQTT_URL: Final = re.compile(r"^mqtts?://[^/\s]+$")
_PRINTABLE: Final = r"^[^\x00-\x1f\x7f]*$"  # no control characters (PostgreSQL text refuses NUL)
_ID_MAX: Final = 2**63 - 1  # component ids are looked up as 64-bit integers (model.grid.lookup)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Location(_Model):
    """Where a device sits on the grid model: the bus it measures and the element it watches."""

    case: str | None = None
    bus_id: int | None = Field(default=None, ge=0, le=_ID_MAX)
    element_id: int | None = Field(default=None, ge=0, le=_ID_MAX)


class BootRequest(_Model):
    """What a booting device tells the catalog about itself."""

    device_id: DeviceId
    device_type: Token
    firmware: Annotated[str, StringConstraints(max_length=64, pattern=_PRINTABLE)] = ""
    capabilities: Annotated[tuple[Token, ...], Field(max_length=256)] = ()
    location: Location | None = None


class BrokerEndpoint(_Model):
    url: str
    username: str | None = None

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        if _MQTT_URL.fullmatch(url) is None:
            raise ValueError("must be mqtt://host[:port] or mqtts://host[:port]")
        return url


class AlgorithmRef(_Model):
    """An algorithm the device must run: the package to fetch and check, and its parameters."""

    name: DeviceId
    version: Version
    sha256: Sha256
    url: str
    """Where to download the package (the catalog's algorithm repository)."""
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    signature: Annotated[str, StringConstraints(max_length=16_384)] | None = None
    """The publisher's signed metadata of the package (name, version, SHA-256, size, expiry;
    :func:`openfeeder.security.signing.verify_package`); None: unsigned, refused by agents that
    require signatures."""


class GridPart(_Model):
    """The part of the grid model the device monitors (ids of the case's components)."""

    case: str
    topology_version: int = Field(ge=0)
    feeder_id: int | None = None
    """The feeder (its first switch or line from the source) the device's bus is on, if energized."""
    bus_ids: tuple[int, ...] = ()
    """Buses of the device's switching section (between the switches that bound it)."""
    element_ids: tuple[int, ...] = ()
    """Lines, switches and loads inside that section."""


class DeviceSettings(_Model):
    """Everything a device needs to run, versioned by ``config_version``."""

    device_id: DeviceId
    device_type: Token
    config_version: int = Field(ge=0)
    brokers: dict[BrokerContext, BrokerEndpoint]
    publish: tuple[str, ...]
    """Topics the device publishes on (measurements, events, status, algorithm outputs)."""
    subscribe: tuple[str, ...]
    """Filters the device subscribes to (its config, commands, committed marks, topology)."""
    sampling_rate_hz: SamplingRate
    reporting_interval_s: ReportingInterval
    poll_interval_s: float = Field(gt=0, le=86_400)
    disconnect_timeout_s: float = Field(gt=0, le=86_400)
    algorithms: tuple[AlgorithmRef, ...] = ()
    grid: GridPart | None = None
    package_keys: Annotated[tuple[str, ...], Field(max_length=64)] = ()
    """Public keys (``ed25519:...``) of the publishers whose algorithm packages the device may
    run, unless the device pins its own (``[access] pinned_publisher_keys``)."""
    catalog_id: Annotated[str, Field(max_length=64)] = ""
    """The catalog installation that issued these settings (random, made with its database).
    Versions count per installation: a device ignores a pushed configuration of another one (a
    retained message an earlier installation left on the broker) and asks its catalog instead."""
