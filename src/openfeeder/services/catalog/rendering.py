"""A device's complete settings from its record and the catalog's configuration.

:func:`render_settings` is the one place that decides what a device gets: broker endpoints per
context, the topics to publish on and the filters to subscribe to, rates (the device's overrides or
the ``[catalog]`` defaults), poll interval and disconnect timeout, its algorithms resolved to
package SHA-256, download URL and signature, the publisher keys it trusts, and its part of the grid
model. :func:`settings_fingerprint` hashes everything but ``config_version``: when it changes, the settings changed and the device gets
a new version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from openfeeder.config import BrokerSettings, Settings
from openfeeder.iot.device_settings import AlgorithmRef, BrokerEndpoint, DeviceSettings
from openfeeder.iot.topics import (
    BrokerContext,
    ack_topic,
    algorithm_topic,
    command_filter,
    committed_filter,
    config_filter,
    event_topic,
    measurement_topic,
    status_topic,
    topology_filter,
)
from openfeeder.services.catalog.records import AlgorithmMeta, DeviceRecord

__all__ = ["RenderContext", "algorithm_url", "render_settings", "settings_fingerprint"]


def algorithm_url(catalog_url: str, name: str, version: str) -> str:
    """Where the catalog serves a package: ``{catalog_url}/v1/algorithms/{name}/{version}``."""
    return f"{catalog_url}/v1/algorithms/{quote(name, safe='')}/{quote(version, safe='')}"


def _endpoint(broker: BrokerSettings) -> BrokerEndpoint:
    parts = urlsplit(broker.url)
    host_port = parts.netloc.rpartition("@")[2]  # never hand out credentials embedded in the URL
    return BrokerEndpoint(
        url=f"{parts.scheme}://{host_port}", username=broker.username or parts.username
    )


@dataclass(frozen=True, slots=True)
class RenderContext:
    """What the settings of every device share: brokers, the catalog's URL, defaults."""

    brokers: Mapping[BrokerContext, BrokerEndpoint]
    catalog_url: str
    sampling_rate_hz: float
    reporting_interval_s: float
    poll_interval_s: float
    disconnect_timeout_s: float
    package_keys: tuple[str, ...] = ()
    """Publisher keys devices trust for algorithm packages (``ed25519:...``)."""
    catalog_id: str = ""
    """This installation's identity (:attr:`DeviceSettings.catalog_id`)."""

    @classmethod
    def from_settings(cls, settings: Settings, *, catalog_url: str) -> RenderContext:
        catalog = settings.catalog
        return cls(
            brokers={
                context: _endpoint(getattr(settings.brokers, context.value))
                for context in BrokerContext
            },
            catalog_url=catalog_url.rstrip("/"),
            sampling_rate_hz=catalog.sampling_rate_hz,
            reporting_interval_s=catalog.reporting_interval_s,
            poll_interval_s=catalog.poll_interval_s,
            disconnect_timeout_s=catalog.disconnect_timeout_s,
        )


def render_settings(
    record: DeviceRecord,
    *,
    context: RenderContext,
    algorithms: Mapping[tuple[str, str], AlgorithmMeta],
) -> DeviceSettings:
    """The settings of the device ``record`` describes (its packages must be in ``algorithms``)."""
    device = record.device_id
    refs = []
    for assignment in record.algorithms:
        meta = algorithms[(assignment.name, assignment.version)]
        refs.append(
            AlgorithmRef(
                name=assignment.name,
                version=assignment.version,
                sha256=meta.sha256,
                url=algorithm_url(context.catalog_url, assignment.name, assignment.version),
                parameters=dict(assignment.parameters),
                signature=meta.signature,
            )
        )
    publish = [
        str(measurement_topic(device)),
        str(event_topic(device)),
        str(ack_topic(device)),
        str(status_topic(device)),
        *(str(algorithm_topic(device, ref.name)) for ref in refs),
    ]
    subscribe = [
        str(config_filter(device)),
        str(command_filter(device)),
        str(committed_filter(device)),
        str(topology_filter()),
    ]
    return DeviceSettings(
        device_id=device,
        device_type=record.device_type,
        config_version=record.config_version,
        brokers=dict(context.brokers),
        publish=tuple(publish),
        subscribe=tuple(subscribe),
        sampling_rate_hz=_or_default(record.sampling_rate_hz, context.sampling_rate_hz),
        reporting_interval_s=_or_default(record.reporting_interval_s, context.reporting_interval_s),
        poll_interval_s=context.poll_interval_s,
        disconnect_timeout_s=context.disconnect_timeout_s,
        algorithms=tuple(refs),
        grid=record.grid,
        package_keys=context.package_keys,
        catalog_id=context.catalog_id,
    )


def settings_fingerprint(settings: DeviceSettings) -> str:
    """SHA-256 of the settings without their version: equal fingerprints, equal settings."""
    document = settings.model_dump_json(exclude={"config_version"})
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def _or_default(override: float | None, default: float) -> float:
    return default if override is None else override
