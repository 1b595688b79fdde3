"""MeterAgent against real Mosquitto brokers and a real catalog on loopback.

Every test uses its own device ids (the shared broker may serve other runs) and clears the retained
messages it leaves behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import (
    COUNTER_SOURCE,
    FAULTY_SOURCE,
    HANG_SOURCE,
    Collector,
    LoopbackCatalog,
    agent_settings,
    clear_retained,
    new_device_id,
    package,
    publish_retained,
    write_plugin,
)

from conftest import PrivateMosquitto, free_port
from openfeeder.config import Settings
from openfeeder.iot.agent import AgentState, MeterAgent, PluginState, SyntheticSource
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.iot.schema import (
    AlgorithmOutput,
    Committed,
    ConfigChange,
    Event,
    LinkState,
    Measurement,
    Severity,
    Status,
)
from openfeeder.iot.topics import (
    algorithm_filter,
    committed_topic,
    config_topic,
    event_filter,
    event_topic,
    measurement_filter,
    measurement_topic,
    status_filter,
)

pytestmark = pytest.mark.integration

AgentFactory = Callable[..., MeterAgent]


@pytest.fixture
def catalog(mqtt_url: str) -> Iterator[LoopbackCatalog]:
    server = LoopbackCatalog(mqtt_url).start()
    yield server
    server.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[AgentFactory]:
    """``agents(catalog, device_id, ...)`` makes an agent; all are stopped, retained cleared."""
    made: list[tuple[MeterAgent, CatalogClient, str]] = []

    def make(
        server: LoopbackCatalog,
        device_id: str,
        *,
        settings: Settings | None = None,
        **kwargs: Any,
    ) -> MeterAgent:
        client = CatalogClient(server.url, timeout_s=5)
        agent = MeterAgent(
            settings or agent_settings(tmp_path / "state", server.broker_url),
            device_id=device_id,
            source=SyntheticSource(len(made)),
            catalog=client,
            retained_wait_s=kwargs.pop("retained_wait_s", 0.3),
            **kwargs,
        )
        made.append((agent, client, server.broker_url))
        return agent

    yield make
    for agent, client, url in made:
        agent.stop()
        client.close()
        clear_retained(url, agent.device_id)


def _seq(payload: bytes) -> int:
    return Measurement.model_validate_json(payload).seq


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def _measurements(collector: Collector, count: int, timeout_s: float = 10.0) -> list[int]:
    seqs: list[int] = []
    for _ in range(count):
        _, payload = collector.wait_for(lambda t, _p: "/meas/" in t, timeout_s=timeout_s)
        seqs.append(_seq(payload))
    return seqs


def test_agent_boots_measures_and_continues_its_seq_after_a_restart(
    catalog: LoopbackCatalog, agents: AgentFactory, mqtt_url: str
) -> None:
    device = new_device_id()
    with Collector(mqtt_url, str(measurement_filter(device)), str(status_filter(device))) as seen:
        agent = agents(catalog, device)
        agent.start()
        assert agent.wait_running(10)
        _, birth = seen.wait_for(lambda t, _p: "/status/" in t)
        status = Status.model_validate_json(birth)
        assert status.state is LinkState.ONLINE
        assert status.firmware.startswith("openfeeder-agent")
        assert "algorithms" in status.capabilities
        first = _measurements(seen, 10)
        assert first == list(range(first[0], first[0] + 10))
        stats = agent.stats()
        assert stats.config_version == 1
        assert stats.produced >= 10
        assert stats.connected == {"grid_ops": True, "monitoring": True}
        agent.stop()
        _, death = seen.wait_for(
            lambda t, p: "/status/" in t and Status.model_validate_json(p).state == "offline"
        )
        assert Status.model_validate_json(death).reason == "shutdown"
        next_seq = agent.stats().next_seq

        again = agents(catalog, device)  # same id, same state folder
        again.start()
        assert again.wait_running(10)
        resumed = _measurements(seen, 30)
        # messages of the first run still in flight at the stop may come again; then it continues
        assert next_seq in resumed
        assert max(resumed) > next_seq
        assert all(seq >= first[0] for seq in resumed)


@pytest.fixture
def private_catalog(
    private_mosquitto: Callable[[], PrivateMosquitto],
) -> Iterator[LoopbackCatalog]:
    """A catalog whose meters use a private broker: no historian of other tests confirms them."""
    broker = private_mosquitto()
    server = LoopbackCatalog(broker.url).start()
    yield server
    server.stop()


def test_committed_marks_set_the_first_seq_and_delete_buffered_rows(
    private_catalog: LoopbackCatalog, agents: AgentFactory
) -> None:
    device, url = new_device_id(), private_catalog.broker_url
    publish_retained(  # the historian already holds this meter's data up to 500
        url, committed_topic(device), Committed(device_id=device, seq=0, t_ns=1, high_water_seq=500)
    )
    with Collector(url, str(measurement_filter(device))) as seen:
        agent = agents(private_catalog, device, retained_wait_s=3.0)
        agent.start()
        assert agent.wait_running(10)
        first = _measurements(seen, 10)
        assert first[0] == 501
        assert agent.stats().committed_seq == 500
        publish_retained(
            url,
            committed_topic(device),
            Committed(device_id=device, seq=1, t_ns=2, high_water_seq=first[-1]),
        )
        _wait_until(lambda: agent.stats().committed_seq == first[-1])
        stats = agent.stats()
        assert stats.buffered == stats.next_seq - (first[-1] + 1)
        assert stats.buffered < stats.produced


def test_a_stalled_committed_mark_makes_the_agent_resend(
    private_catalog: LoopbackCatalog, agents: AgentFactory, tmp_path: Path
) -> None:
    device, url = new_device_id(), private_catalog.broker_url
    settings = agent_settings(tmp_path / "state", url, resend_after_s=0.5)
    with Collector(url, str(measurement_filter(device))) as seen:
        agent = agents(private_catalog, device, settings=settings)
        agent.start()
        assert agent.wait_running(10)
        first = _measurements(seen, 5)
        mark = first[2]
        publish_retained(
            url,
            committed_topic(device),
            Committed(device_id=device, seq=0, t_ns=1, high_water_seq=mark),
        )
        _wait_until(lambda: agent.stats().resends >= 1)
        # mark + 1 arrives again: the historian missed it, so the agent sends it once more
        seen.wait_for(lambda t, p: "/meas/" in t and _seq(p) == mark + 1)


def test_readings_are_buffered_while_the_broker_is_away_and_delivered_in_order(
    private_mosquitto: Callable[[], PrivateMosquitto],
    agents: AgentFactory,
    tmp_path: Path,
) -> None:
    broker = private_mosquitto()
    roomy, tight = new_device_id("roomy"), new_device_id("tight")
    filters = (measurement_filter(roomy), measurement_filter(tight), event_filter(tight))
    server = LoopbackCatalog(broker.url).start()
    # the watcher's session survives the outage (Mosquitto persists it), so it misses nothing
    with Collector(broker.url, *map(str, filters), persistent=True) as seen:
        seen.confirm_subscribed(
            measurement_topic(roomy), measurement_topic(tight), event_topic(tight)
        )
        broker.stop()  # nothing listens on its port until the test starts it again
        agent = agents(server, roomy, settings=agent_settings(tmp_path / "a", broker.url))
        small = agents(
            server,
            tight,
            settings=agent_settings(tmp_path / "b", broker.url, buffer_max_messages=10),
        )
        agent.start()
        small.start()
        _wait_until(lambda: agent.stats().buffered >= 30 and small.stats().dropped >= 10, 15)
        assert agent.stats().published == 0
        assert small.stats().buffered <= 10

        broker.start()
        produced = agent.stats().next_seq
        arrivals: dict[str, list[int]] = {roomy: [], tight: []}
        dropped_events: list[Event] = []

        def collect() -> bool:
            while not seen.messages.empty():
                topic, payload = seen.messages.get()
                if "/event/" in topic:
                    dropped_events.append(Event.model_validate_json(payload))
                else:
                    arrivals[topic.rsplit("/", 1)[1]].append(_seq(payload))
            # drop announcements travel on the grid_ops connection, measurements on the monitoring
            # one: wait until the hole before the first delivered measurement is announced too
            announced = {int(e.values[1].value) for e in dropped_events}
            hole_announced = bool(arrivals[tight]) and min(arrivals[tight]) - 1 in announced
            return (
                len(set(arrivals[roomy])) >= produced + 5
                and len(arrivals[tight]) >= 5
                and hole_announced
            )

        _wait_until(collect, 30)
    server.stop()
    # nothing lost, in order: every seq from 0, first arrivals strictly increasing
    firsts = list(dict.fromkeys(arrivals[roomy]))
    assert firsts == list(range(len(firsts)))
    # the small buffer dropped its oldest and said so, from seq 0 on
    assert dropped_events
    assert {event.kind for event in dropped_events} == {"data_dropped"}
    assert {event.severity for event in dropped_events} == {Severity.WARNING}
    ranges = [(int(e.values[0].value), int(e.values[1].value)) for e in dropped_events]
    assert [r.channel for r in dropped_events[0].values] == ["first_seq", "last_seq"]
    assert min(first for first, _ in ranges) == 0
    # what it still held arrives in order, right after an announced hole
    tight_firsts = list(dict.fromkeys(arrivals[tight]))
    assert tight_firsts == list(range(tight_firsts[0], tight_firsts[0] + len(tight_firsts)))
    assert tight_firsts[0] - 1 in {last for _, last in ranges}


def test_algorithms_swap_without_a_gap_and_removal_stops_outputs(
    catalog: LoopbackCatalog,
    agents: AgentFactory,
    mqtt_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = new_device_id()
    v1 = catalog.add_package(
        package(write_plugin(tmp_path, name="counter", version="1.0", source=COUNTER_SOURCE)),
        "counter",
        "1.0",
    )
    v2 = catalog.add_package(
        package(write_plugin(tmp_path, name="counter", version="2.0", source=COUNTER_SOURCE)),
        "counter",
        "2.0",
    )
    catalog.initial_algorithms = (v1,)
    filters = (measurement_filter(device), algorithm_filter(device, "counter"))
    with Collector(mqtt_url, *map(str, filters)) as seen:
        agent = agents(catalog, device)
        agent.start()
        assert agent.wait_running(10)
        seqs: list[int] = []
        outputs: list[AlgorithmOutput] = []

        def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
            def step() -> bool:
                while not seen.messages.empty():
                    topic, payload = seen.messages.get()
                    if "/meas/" in topic:
                        seqs.append(_seq(payload))
                    else:
                        outputs.append(AlgorithmOutput.model_validate_json(payload))
                return predicate()

            _wait_until(step, timeout_s)

        until(lambda: any(o.algorithm_version == "1.0" for o in outputs))
        catalog.update(device, algorithms=(v2,))  # picked up by the agent's next poll
        until(lambda: any(o.algorithm_version == "2.0" for o in outputs))
        assert outputs[-1].outputs[0].value == 2.0
        assert agent.stats().plugins[0].version == "2.0"

        # removal, pushed over MQTT this time (retained config, as the catalog does)
        removed = catalog.update(device, algorithms=())
        publish_retained(
            mqtt_url,
            config_topic(device),
            ConfigChange(
                device_id=device,
                seq=0,
                t_ns=1,
                config_version=removed.config_version,
                settings=removed.model_dump(mode="json"),
            ),
        )
        until(lambda: agent.stats().plugins == ())
        settled = len(seqs) + 3
        until(lambda: len(seqs) >= settled)  # outputs queued before the removal have arrived
        count_after_removal = len(outputs)
        later = len(seqs) + 10
        until(lambda: len(seqs) >= later)
        assert len(outputs) == count_after_removal
        # the measurement stream never paused: no gap, no duplicate, through both changes
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert agent.stats().config_version == removed.config_version

        # another catalog installation's configuration, left retained on the broker with a higher
        # version, is ignored: our catalog's next push (a lower version) is the one applied
        foreign = removed.model_copy(
            update={"catalog_id": "earlier-installation", "config_version": 10_000}
        )
        restored = catalog.update(device, algorithms=(v1,))
        caplog.set_level(logging.INFO, logger="openfeeder.iot.agent.runtime")
        for settings in (foreign, restored):
            publish_retained(
                mqtt_url,
                config_topic(device),
                ConfigChange(
                    device_id=device,
                    seq=0,
                    t_ns=1,
                    config_version=settings.config_version,
                    settings=settings.model_dump(mode="json"),
                ),
            )
        until(lambda: agent.stats().config_version == restored.config_version)
        until(lambda: any(p.version == "1.0" for p in agent.stats().plugins))
        messages = [r.getMessage() for r in caplog.records if r.name.endswith("agent.runtime")]
        assert any("ignores a pushed configuration of another catalog" in m for m in messages)
        assert not any("applies config version 10000" in m for m in messages)


def test_failing_and_hanging_algorithms_are_isolated_and_reported(
    catalog: LoopbackCatalog, agents: AgentFactory, mqtt_url: str, tmp_path: Path
) -> None:
    device = new_device_id()
    release = tmp_path / "release"
    catalog.initial_algorithms = (
        catalog.add_package(
            package(write_plugin(tmp_path, name="faulty", version="1", source=FAULTY_SOURCE)),
            "faulty",
            "1",
        ),
        catalog.add_package(
            package(write_plugin(tmp_path, name="hang", version="1", source=HANG_SOURCE)),
            "hang",
            "1",
            release_file=str(release),
        ),
        catalog.add_package(
            package(write_plugin(tmp_path, name="counter", version="1.0", source=COUNTER_SOURCE)),
            "counter",
            "1.0",
        ),
    )
    filters = (
        event_filter(device),
        measurement_filter(device),
        algorithm_filter(device, "counter"),
    )
    with Collector(mqtt_url, *map(str, filters)) as seen:
        agent = agents(catalog, device, call_deadline_s=0.5)
        agent.start()
        try:
            assert agent.wait_running(10)
            kinds: dict[str, Event] = {}
            while len(kinds) < 2:
                _, payload = seen.wait_for(lambda t, _p: "/event/" in t)
                event = Event.model_validate_json(payload)
                kinds[event.kind] = event
            assert "faulty" in kinds["algorithm_failed"].message
            assert "hang" in kinds["algorithm_hung"].message
            assert kinds["algorithm_hung"].severity is Severity.WARNING
            after = _measurements(seen, 10)  # the agent keeps publishing
            assert after == list(range(after[0], after[0] + 10))
            seen.wait_for(lambda t, _p: "/algo/" in t)  # and the healthy algorithm too
            states = {p.name: p.state for p in agent.stats().plugins}
            assert states == {
                "faulty": PluginState.FAILED,
                "hang": PluginState.HUNG,
                "counter": PluginState.RUNNING,
            }
        finally:
            release.write_text("go")


def test_boot_is_retried_until_the_catalog_answers(agents: AgentFactory, mqtt_url: str) -> None:
    server = LoopbackCatalog(mqtt_url, port=free_port())  # not serving yet
    device = new_device_id()
    agent = agents(server, device)
    agent.start()
    try:
        assert not agent.wait_running(1.0)
        server.start()
        assert agent.wait_running(10)
        assert server.boots >= 1
        assert agent.stats().config_version == 1
    finally:
        server.stop()


def test_a_second_agent_with_the_same_id_and_state_fails_visibly(
    catalog: LoopbackCatalog, agents: AgentFactory
) -> None:
    device = new_device_id()
    first = agents(catalog, device)
    first.start()
    assert first.wait_running(10)
    second = agents(catalog, device)  # same state folder: its buffer is held by the first
    second.start()
    _wait_until(lambda: second.state is AgentState.FAILED)
    assert not second.wait_running(0)
    assert first.stats().state is AgentState.RUNNING
    assert first.stats().produced > 0


def test_an_agent_starts_on_cached_settings_while_the_catalog_is_down(
    catalog: LoopbackCatalog, agents: AgentFactory, mqtt_url: str
) -> None:
    device = new_device_id()
    first = agents(catalog, device)
    first.start()
    assert first.wait_running(10)
    first.stop()
    catalog.stop()  # the catalog is gone; the meter remembers its last settings
    with Collector(mqtt_url, str(measurement_filter(device))) as seen:
        again = agents(catalog, device)
        again.start()
        assert again.wait_running(10)
        assert again.stats().config_version == 1
        seqs = _measurements(seen, 5)
        assert seqs == list(range(seqs[0], seqs[0] + 5))
