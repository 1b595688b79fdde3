"""End-to-end delivery: what the meters produced is what the historian holds, once, whatever fails.

The guarantee under test (README, "Delivery guarantee"): a meter keeps every reading on disk until the
historian's committed mark covers it and re-sends what the mark does not cover; the historian stores
each (device, seq) once. So a broker that is stopped or killed with ``kill -9`` (losing what it held
in memory), a meter cut off from the broker, and a historian restart all end with the same set of
rows as the meters produced, without duplicates.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_support import (
    Platform,
    all_committed,
    all_produced,
    produced_rows,
    stored_rows,
    wait_for,
)

from conftest import EmbeddedBrokerProcess, PrivateMosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METERS = 3
READINGS = 100  # per meter, at 20 messages/s: 5 s of stream


@pytest.fixture(params=["mosquitto", "embedded"])
def platform(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    private_mosquitto: Callable[[], PrivateMosquitto],
    embedded_broker: Callable[[], EmbeddedBrokerProcess],
    postgres_url: str,
) -> Iterator[Platform]:
    """The platform on a real Mosquitto, and on OpenFeeder's embedded broker."""
    broker = private_mosquitto() if request.param == "mosquitto" else embedded_broker()
    running = Platform(broker=broker, postgres_url=postgres_url, workdir=tmp_path)
    try:
        running.start_catalog()
        running.start_historian()
        yield running
    finally:
        running.stop()


def _assert_same_rows(platform: Platform) -> None:
    agents = platform.agents
    wait_for(lambda: all_produced(agents, READINGS), timeout_s=60, what="all readings produced")
    wait_for(
        lambda: all_committed(agents),
        timeout_s=60,
        what=lambda: (
            "the historian committing all: "
            + "; ".join(
                f"{a.device_id} next={a.stats().next_seq} committed={a.stats().committed_seq} "
                f"buffered={a.stats().buffered} resends={a.stats().resends}"
                for a in agents
            )
            + f" historian: {platform.historian.historian.health() if platform.historian else None}"
        ),
    )
    stored = stored_rows(platform.postgres_url, [agent.device_id for agent in agents])
    duplicates = [row for row, count in Counter(stored).items() if count > 1]
    assert duplicates == []
    produced = produced_rows(agents)
    assert len(produced) == METERS * READINGS
    assert set(stored) == produced


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["clean-stop", "kill-9"])
def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    platform: Platform, sig: signal.Signals
) -> None:
    agents = platform.start_agents(METERS, limit=READINGS)
    wait_for(lambda: all_produced(agents, READINGS // 3), timeout_s=30, what="a third produced")
    platform.broker.stop(sig)
    time.sleep(1.0)  # the meters keep measuring into their buffers meanwhile
    platform.broker.start()
    _assert_same_rows(platform)


def test_meter_cut_off_delivers_its_buffer_in_order_afterwards(platform: Platform) -> None:
    agents = platform.start_agents(METERS, limit=READINGS)
    wait_for(lambda: all_produced(agents, 10), timeout_s=30, what="ten readings each")
    platform.broker.stop(signal.SIGKILL)
    wait_for(
        lambda: all_produced(agents, READINGS // 2), timeout_s=30, what="half produced offline"
    )
    buffered = [agent.stats().buffered for agent in agents]
    assert all(count >= READINGS // 2 - 10 for count in buffered)  # kept on disk meanwhile
    platform.broker.start()
    _assert_same_rows(platform)
    assert all(agent.stats().buffered == 0 for agent in agents)
    assert all(agent.stats().dropped == 0 for agent in agents)


def test_historian_restart_resumes_without_loss_or_duplicates(platform: Platform) -> None:
    agents = platform.start_agents(METERS, limit=READINGS)
    wait_for(lambda: all_produced(agents, READINGS // 3), timeout_s=30, what="a third produced")
    assert platform.historian is not None
    platform.historian.stop()
    time.sleep(1.0)
    platform.start_historian()
    _assert_same_rows(platform)
