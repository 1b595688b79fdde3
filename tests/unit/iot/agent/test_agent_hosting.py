"""Hosted meter agents (one AgentHost thread for their loops and connections) behave as threaded
ones: the runtime tests that matter most run again here with every agent on a shared host, against
the same real brokers and catalog."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import Collector, LoopbackCatalog, agent_settings, clear_retained, new_device_id
from test_agent_runtime import (  # the same tests, with the hosted ``agents`` fixture below
    AgentFactory,
    catalog,
    private_catalog,
    test_a_stalled_committed_mark_makes_the_agent_resend,
    test_agent_boots_measures_and_continues_its_seq_after_a_restart,
    test_algorithms_swap_without_a_gap_and_removal_stops_outputs,
    test_committed_marks_set_the_first_seq_and_delete_buffered_rows,
    test_readings_are_buffered_while_the_broker_is_away_and_delivered_in_order,
)

from openfeeder.config import BrokerSettings
from openfeeder.iot.agent import MeterAgent, SyntheticSource
from openfeeder.iot.agent.hosting import AgentHost
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.iot.mqtt import MqttLink, NetworkLoop
from openfeeder.iot.schema import Measurement
from openfeeder.iot.topics import measurement_filter

pytestmark = pytest.mark.integration

__all__ = [
    "catalog",
    "private_catalog",
    "test_a_stalled_committed_mark_makes_the_agent_resend",
    "test_agent_boots_measures_and_continues_its_seq_after_a_restart",
    "test_algorithms_swap_without_a_gap_and_removal_stops_outputs",
    "test_committed_marks_set_the_first_seq_and_delete_buffered_rows",
    "test_readings_are_buffered_while_the_broker_is_away_and_delivered_in_order",
]


@pytest.fixture
def host() -> Iterator[AgentHost]:
    agent_host = AgentHost(name="test-host")
    agent_host.start()
    yield agent_host
    agent_host.stop()


@pytest.fixture
def agents(tmp_path: Path, host: AgentHost) -> Iterator[AgentFactory]:
    """Like test_agent_runtime's ``agents``, every agent on ``host``."""
    made: list[tuple[MeterAgent, CatalogClient, str]] = []

    def make(
        server: LoopbackCatalog, device_id: str, *, settings: Any = None, **kwargs: Any
    ) -> MeterAgent:
        client = CatalogClient(server.url, timeout_s=5)
        agent = MeterAgent(
            settings or agent_settings(tmp_path / "state", server.broker_url),
            device_id=device_id,
            source=SyntheticSource(len(made)),
            catalog=client,
            retained_wait_s=kwargs.pop("retained_wait_s", 0.3),
            host=host,
            **kwargs,
        )
        made.append((agent, client, server.broker_url))
        return agent

    yield make
    for agent, client, url in made:
        agent.stop()
        client.close()
        clear_retained(url, agent.device_id)


def test_many_hosted_agents_share_one_thread_and_each_keeps_its_own_sequence(
    catalog: LoopbackCatalog, agents: AgentFactory, host: AgentHost, mqtt_url: str
) -> None:
    devices = [new_device_id("hosted") for _ in range(12)]
    with Collector(mqtt_url, *(str(measurement_filter(d)) for d in devices)) as seen:
        fleet = [agents(catalog, device) for device in devices]
        for agent in fleet:
            agent.start()
        assert all(agent.wait_running(10) for agent in fleet)
        # no loop or network threads of their own
        names = [thread.name for thread in threading.enumerate()]
        assert not [n for n in names if n.startswith(("agent-loop-", "paho-mqtt-client-hosted"))]
        deadline = time.monotonic() + 5  # attaching is handed to the host's thread
        while host.agents < len(fleet) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host.agents == len(fleet)
        assert host.network.links == 2 * len(fleet)
        seqs: dict[str, list[int]] = {device: [] for device in devices}
        deadline = time.monotonic() + 20
        while min(len(s) for s in seqs.values()) < 5 and time.monotonic() < deadline:
            _, payload = seen.wait_for(lambda t, _p: "/meas/" in t, timeout_s=10)
            measurement = Measurement.model_validate_json(payload)
            seqs[measurement.device_id].append(measurement.seq)
        for device, received in seqs.items():
            assert len(received) >= 5, device
            assert received == list(range(received[0], received[0] + len(received))), device
    assert host.iterations > 0
    for agent in fleet:
        agent.stop()
    assert host.agents == 0
    assert host.network.links == 0


def test_network_loop_runs_timed_calls_in_order_and_closes_its_links(mqtt_url: str) -> None:
    loop = NetworkLoop(name="test-loop")
    loop.start()
    try:
        order: list[int] = []
        done = threading.Event()
        loop.call_later(0.2, lambda: (order.append(2), done.set()))
        loop.call_later(0.05, lambda: order.append(1))
        loop.call_later(0.1, lambda: order.append(9)).cancel()
        assert done.wait(5)
        assert order == [1, 2]
        received: list[bytes] = []
        got = threading.Event()
        topic = f"openfeeder-test/{new_device_id('loop')}"
        listener = MqttLink(BrokerSettings(url=mqtt_url), client_id=f"{topic}-l", network=loop)
        listener.subscribe(topic, lambda _t, p: (received.append(p), got.set()))
        talker = MqttLink(BrokerSettings(url=mqtt_url), client_id=f"{topic}-t", network=loop)
        listener.start()
        talker.start()
        assert listener.wait_subscribed(5)  # SUBACK in: the message cannot miss it
        assert talker.wait_connected(5)
        assert talker.publish(topic, b"hello").wait(5)
        assert got.wait(5)
        assert received == [b"hello"]
        talker.stop()
        listener.stop()
        assert loop.links == 0
    finally:
        loop.stop()
