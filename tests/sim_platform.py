"""The real platform the twin's device tests run on: embedded broker plus device catalog."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from openfeeder.config import (
    AgentSettings,
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    LoggingSettings,
    Settings,
    StorageSettings,
)
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.services.catalog.service import CatalogThread


@dataclass
class Platform:
    settings: Settings
    catalog: CatalogClient
    broker_url: str


@contextlib.contextmanager
def running_platform(tmp_path: Path) -> Iterator[Platform]:
    """The embedded broker and the device catalog (case turin, reporting every 1 s domain)."""
    with BrokerThread(port=0) as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        endpoint = BrokerSettings(url=url, connect_timeout_s=5, keepalive_s=5)
        settings = Settings(
            brokers=BrokersSettings(grid_ops=endpoint, monitoring=endpoint),
            storage=StorageSettings(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
            logging=LoggingSettings(level="WARNING"),
            catalog=CatalogSettings(listen_port=0, case="turin", reporting_interval_s=1.0),
            agent=AgentSettings(state_dir=tmp_path / "state"),
        )
        with (
            CatalogThread(settings) as catalog,
            CatalogClient(catalog.url, timeout_s=10) as client,
        ):
            yield Platform(settings, client, url)
