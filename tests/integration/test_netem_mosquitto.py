"""The network emulator in front of the real Mosquitto: configured delay and loss show up in the
latency that real MQTT 3.1.1 and 5 clients measure, and v5 topic aliases are classified.

The subscriber connects to Mosquitto directly, so each message crosses the emulator once (the
publisher's uplink); baselines are measured in the same test. Topics are unique per run, because
other test runs may share the broker.
"""

from __future__ import annotations

import queue
import statistics
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from openfeeder.sim.netem import Direction, Impairment, NetworkEmulator

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
UP = Direction.UPLINK
_STAMP = struct.Struct("!Id")


class Client:
    """A paho client that waits for CONNACK and SUBACK and queues what it receives, timestamped."""

    def __init__(
        self, host: str, port: int, client_id: str, protocol: MQTTProtocolVersion = mqtt.MQTTv5
    ) -> None:
        self.received: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self._subacks: queue.Queue[object] = queue.Queue()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        client.reconnect_delay_set(min_delay=60, max_delay=120)
        client.on_connect = lambda *_args: self.connected.set()
        client.on_subscribe = lambda *args: self._subacks.put(args)
        client.on_message = lambda _c, _u, msg: self.received.put(
            (time.monotonic(), msg.topic, bytes(msg.payload))
        )
        client.connect(host, port, keepalive=30)
        client.loop_start()
        self.client = client
        assert self.connected.wait(TIMEOUT_S), f"{client_id} did not connect to {host}:{port}"

    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, 1)
        self._subacks.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # paho closes its socket pair only in __del__


def stamped(seq: int) -> bytes:
    return _STAMP.pack(seq, time.monotonic())


def collect(client: Client, count: int) -> dict[int, float]:
    """Latency in ms per sequence number of the next ``count`` stamped messages."""
    out: dict[int, float] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"received {len(out)} of {count} messages in {TIMEOUT_S} s")
        try:
            arrival, _topic, payload = client.received.get(timeout=remaining)
        except queue.Empty:
            continue
        seq, sent = _STAMP.unpack_from(payload)
        out[seq] = (arrival - sent) * 1e3
    return out


def paced(publisher: Client, subscriber: Client, topic: str, count: int) -> list[float]:
    for seq in range(count):
        publisher.client.publish(topic, stamped(seq), qos=1)
        time.sleep(0.03)
    latencies = collect(subscriber, count)
    return [latencies[seq] for seq in range(count)]


@pytest.fixture
def broker_address(mqtt_url: str) -> tuple[str, int]:
    parts = urlsplit(mqtt_url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


@pytest.fixture
def emulator(mqtt_url: str) -> Iterator[NetworkEmulator]:
    netem = NetworkEmulator.for_broker(mqtt_url, seed=5)
    netem.start()
    yield netem
    netem.stop()


@pytest.fixture
def opened() -> Iterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for client in clients:
        client.close()


def test_delay_and_jitter_on_meas_through_mosquitto(
    broker_address: tuple[str, int], emulator: NetworkEmulator, opened: list[Client]
) -> None:
    host, port = broker_address
    device = f"meter-{uuid.uuid4().hex[:8]}"
    meas, cmd = f"openfeeder/v1/meas/{device}", f"openfeeder/v1/cmd/{device}"
    subscriber = Client(host, port, f"sub-{device}")
    opened.append(subscriber)
    subscriber.subscribe(f"openfeeder/v1/+/{device}")
    direct = Client(host, port, f"direct-{device}", mqtt.MQTTv311)
    opened.append(direct)
    baseline = paced(direct, subscriber, meas, 30)

    emulator.set_impairment(Impairment(delay_ms=50, jitter_ms=10), message_class="meas")
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        relayed = Client("127.0.0.1", emulator.port, f"{device}.{protocol.name}", protocol)
        opened.append(relayed)
        delayed = paced(relayed, subscriber, meas, 40)
        commands = paced(relayed, subscriber, cmd, 15)
        added = statistics.fmean(delayed) - statistics.median(baseline)
        assert added == pytest.approx(50, abs=8), (protocol, baseline, delayed)
        assert 5 < statistics.stdev(delayed) < 20
        assert statistics.median(commands) - statistics.median(baseline) < 15
    stats = emulator.stats()
    assert stats.get("meas", UP).packets == 80
    assert stats.get("meas", UP).mean_added_delay_ms == pytest.approx(50, abs=4)
    assert stats.get("cmd", UP).max_added_delay_ms < 1


def test_loss_as_retransmission_through_mosquitto(
    broker_address: tuple[str, int], emulator: NetworkEmulator, opened: list[Client]
) -> None:
    host, port = broker_address
    run = uuid.uuid4().hex[:8]
    subscriber = Client(host, port, f"sub-{run}")
    opened.append(subscriber)
    subscriber.subscribe("openfeeder/v1/meas/+")
    emulator.set_impairment(Impairment(loss=0.2), message_class="meas", direction=UP)
    meters = [Client("127.0.0.1", emulator.port, f"m{index}-{run}") for index in range(16)]
    opened.extend(meters)
    rounds = 8
    for round_no in range(rounds):
        for index, meter in enumerate(meters):
            meter.client.publish(
                f"openfeeder/v1/meas/m{index}-{run}", stamped(round_no * 100 + index), qos=1
            )
        time.sleep(0.25)
    latencies = collect(subscriber, rounds * len(meters))
    slow = [value for value in latencies.values() if value >= 180]
    fraction = len(slow) / len(latencies)
    stats = emulator.stats().get("meas", UP)
    assert stats.packets == len(latencies)
    assert 0.12 <= fraction <= 0.34, fraction
    assert stats.retransmitted / stats.packets == pytest.approx(fraction, abs=0.07)
    assert 190 <= statistics.median(slow) <= 260
    assert min(slow) >= 195


def test_v5_topic_alias_is_classified_by_the_aliased_topic(
    broker_address: tuple[str, int], emulator: NetworkEmulator, opened: list[Client]
) -> None:
    host, port = broker_address
    device = f"meter-{uuid.uuid4().hex[:8]}"
    topic = f"openfeeder/v1/meas/{device}"
    subscriber = Client(host, port, f"sub-{device}")
    opened.append(subscriber)
    subscriber.subscribe(topic)
    emulator.set_impairment(Impairment(delay_ms=60), message_class="meas", direction=UP)
    meter = Client("127.0.0.1", emulator.port, device)
    opened.append(meter)
    for seq in range(10):
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.TopicAlias = 1
        meter.client.publish(topic if seq == 0 else "", stamped(seq), qos=1, properties=props)
        time.sleep(0.02)
    latencies = collect(subscriber, 10)
    assert min(latencies.values()) >= 55
    stats = emulator.stats()
    assert stats.get("meas", UP).packets == 10  # aliased ones (empty topic) included
    assert stats.get("other", UP).packets == 0
