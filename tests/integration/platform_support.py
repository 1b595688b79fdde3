"""A whole metering platform in one test: a private Mosquitto, the catalog, the historian, meters.

Everything is the real component: the Mosquitto binary (which a test may stop or kill -9), the
device catalog on SQLite, the historian on PostgreSQL, and meter agents with synthetic sources.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from conftest import EmbeddedBrokerProcess, PrivateMosquitto
from openfeeder.config import (
    AgentSettings,
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    HistorianSettings,
    Settings,
    StorageSettings,
)
from openfeeder.iot.agent.runtime import MeterAgent
from openfeeder.iot.agent.source import Acquisition, SyntheticSource
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.iot.device_settings import Location
from openfeeder.services.catalog.service import CatalogThread
from openfeeder.services.historian.service import HistorianThread


class SourceExhaustedError(RuntimeError):
    pass


class LimitedSource:
    """A synthetic source that yields ``limit`` acquisitions and then fails every call.

    The agent counts a failing acquisition and goes on delivering what it buffered, so a test can
    stop the production of readings while delivery continues, and then compare sets.
    """

    def __init__(self, seed: int, limit: int) -> None:
        self._inner = SyntheticSource(seed)
        self._remaining = limit
        self._lock = threading.Lock()

    def acquire(self, *, t_ns: int, sampling_rate_hz: float) -> Acquisition:
        with self._lock:
            if self._remaining <= 0:
                raise SourceExhaustedError("the test's source is exhausted")
            self._remaining -= 1
        return self._inner.acquire(t_ns=t_ns, sampling_rate_hz=sampling_rate_hz)


@dataclass
class Platform:
    broker: PrivateMosquitto | EmbeddedBrokerProcess
    postgres_url: str
    workdir: Path
    reporting_interval_s: float = 0.05
    settings: Settings = field(init=False)
    catalog: CatalogThread | None = None
    historian: HistorianThread | None = None
    agents: list[MeterAgent] = field(default_factory=list)
    clients: list[CatalogClient] = field(default_factory=list)
    historian_instance: str = field(default_factory=lambda: f"h{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        self.settings = self._settings("http://127.0.0.1:1", catalog_port=0)

    def _settings(self, catalog_url: str, *, catalog_port: int) -> Settings:
        broker = BrokerSettings(url=self.broker.url, keepalive_s=5, connect_timeout_s=2)
        return Settings(
            brokers=BrokersSettings(grid_ops=broker, monitoring=broker),
            storage=StorageSettings(url=f"sqlite:///{self.workdir}/catalog.db"),
            catalog=CatalogSettings(
                listen_port=catalog_port,
                url=catalog_url,
                reporting_interval_s=self.reporting_interval_s,
                sampling_rate_hz=3200,
                poll_interval_s=1.0,
                disconnect_timeout_s=30,
            ),
            historian=HistorianSettings(
                listen_port=0,
                storage_url=self.postgres_url,
                committed_interval_ms=100,
                batch_max_delay_ms=50,
            ),
            agent=AgentSettings(state_dir=self.workdir / "agents", resend_after_s=1.0),
        )

    def start_catalog(self) -> None:
        port = self.catalog.port if self.catalog is not None else 0
        catalog = CatalogThread(self._settings("http://127.0.0.1:1", catalog_port=port))
        url = catalog.start()
        self.catalog = catalog
        self.settings = self._settings(url, catalog_port=catalog.port)

    def start_historian(self) -> None:
        """Start (or restart: the same instance id, so its broker session resumes) the historian."""
        self.historian = HistorianThread(self.settings, instance=self.historian_instance)
        self.historian.start()

    def start_agents(self, count: int, *, limit: int) -> list[MeterAgent]:
        started = []
        for number in range(count):
            client = CatalogClient(self.settings.catalog.url, timeout_s=5)
            self.clients.append(client)
            agent = MeterAgent(
                self.settings,
                device_id=f"rel-{uuid.uuid4().hex[:8]}-{number}",
                source=LimitedSource(seed=number, limit=limit),
                catalog=client,
                location=Location(bus_id=2 + number),
            )
            agent.start()
            started.append(agent)
        for agent in started:
            assert agent.wait_running(30), f"{agent.device_id} did not start"
        self.agents.extend(started)
        return started

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        for client in self.clients:
            client.close()
        if self.historian is not None:
            self.historian.stop()
        if self.catalog is not None:
            self.catalog.stop()


def wait_for(
    condition: Callable[[], bool], *, timeout_s: float, what: str | Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout_s} s waiting for {described}")


def all_produced(agents: list[MeterAgent], limit: int) -> bool:
    return all(agent.stats().produced >= limit for agent in agents)


def all_committed(agents: list[MeterAgent]) -> bool:
    for agent in agents:
        stats = agent.stats()
        if stats.committed_seq is None or stats.committed_seq < stats.next_seq - 1:
            return False
    return True


def stored_rows(postgres_url: str, device_ids: list[str]) -> list[tuple[str, int]]:
    """Every (device_id, seq) row of the historian's table for these devices, duplicates included."""
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT device_id, seq FROM historian_messages WHERE device_id = ANY(%s)",
            (device_ids,),
        ).fetchall()
    return [(str(device), int(seq)) for device, seq in rows]


def produced_rows(agents: list[MeterAgent]) -> set[tuple[str, int]]:
    """What the agents produced: seqs 0 .. next_seq - 1 of each (fresh state directories)."""
    return {(agent.device_id, seq) for agent in agents for seq in range(agent.stats().next_seq)}
