"""The network emulator against the embedded broker, with real paho clients (MQTT 3.1.1 and 5).

Latencies are measured from publish to receipt by clients in this process (one monotonic clock);
every comparison is with the same measurement without the emulator (or without the rule) in the
same test, so what is asserted is the *configured* impairment showing up, with tolerances sized from
the number of samples, not the speed of the machine. All random draws are seeded.
"""

from __future__ import annotations

import queue
import random
import statistics
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from openfeeder.errors import ConfigError
from openfeeder.iot.broker import BrokerThread
from openfeeder.sim.netem import (
    DEFAULT_CONGESTION_MODEL,
    Direction,
    Impairment,
    JitterDistribution,
    LinkState,
    LossMode,
    NetworkConfig,
    NetworkEmulator,
    RuleKey,
    device_of_client,
    resolve,
)
from openfeeder.sim.netem.config import EffectiveImpairment
from openfeeder.sim.netem.frames import StreamFramer

TIMEOUT_S = 10.0
UP = Direction.UPLINK
DOWN = Direction.DOWNLINK
_STAMP = struct.Struct("!Id")


# --- helpers -----------------------------------------------------------------------------------


class Client:
    """A paho client whose connect and subscribe wait for the broker; received messages queued
    with their arrival time."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        protocol: MQTTProtocolVersion = mqtt.MQTTv5,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.client_id = client_id
        self.received: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._subacks: queue.Queue[object] = queue.Queue()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        client.reconnect_delay_set(min_delay=60, max_delay=120)
        if will is not None:
            client.will_set(will[0], will[1], qos=1)
        client.on_connect = lambda *_args: self.connected.set()
        client.on_disconnect = lambda *_args: self.disconnected.set()
        client.on_subscribe = lambda *args: self._subacks.put(args)
        client.on_message = lambda _c, _u, msg: self.received.put(
            (time.monotonic(), msg.topic, bytes(msg.payload))
        )
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        self.client = client
        assert self.connected.wait(TIMEOUT_S), f"{client_id} did not connect on port {port}"

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.client.subscribe(topic_filter, qos)
        self._subacks.get(timeout=TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho closes its wake-up socket pair only in __del__, which a garbage-collected cycle
        # may run after the sockets' own finalizers (a ResourceWarning, an error here)
        self.client._reset_sockets()


class Clients:
    """Closes every client a test opened."""

    def __init__(self) -> None:
        self.opened: list[Client] = []

    def __call__(self, port: int, client_id: str, **options: Any) -> Client:
        client = Client(port, client_id, **options)
        self.opened.append(client)
        return client

    def close(self) -> None:
        for client in self.opened:
            client.close()


def stamped(seq: int, size: int = 0) -> bytes:
    return _STAMP.pack(seq, time.monotonic()) + bytes(size)


def latency_ms(arrival: float, payload: bytes) -> tuple[int, float]:
    seq, sent = _STAMP.unpack_from(payload)
    return seq, (arrival - sent) * 1e3


def collect(client: Client, count: int, *, timeout_s: float = TIMEOUT_S) -> dict[int, float]:
    """Latency (ms) per sequence number of the next ``count`` stamped messages."""
    out: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"received {len(out)} of {count} messages in {timeout_s} s")
        try:
            arrival, _topic, payload = client.received.get(timeout=remaining)
        except queue.Empty:
            continue
        seq, value = latency_ms(arrival, payload)
        out[seq] = value
    return out


def paced(
    publisher: Client, subscriber: Client, topic: str, count: int, spacing_s: float
) -> list[float]:
    """Publish ``count`` stamped messages ``spacing_s`` apart; their latencies in ms, in order."""
    for seq in range(count):
        publisher.publish(topic, stamped(seq))
        time.sleep(spacing_s)
    latencies = collect(subscriber, count)
    return [latencies[seq] for seq in range(count)]


def ping_pong(publisher: Client, subscriber: Client, topic: str, count: int) -> list[float]:
    """One message at a time: publish, wait for it, then the next (no queueing between them)."""
    out = []
    for seq in range(count):
        publisher.publish(topic, stamped(seq))
        out.append(collect(subscriber, 1)[seq])
    return out


def wait_until(predicate: Any, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    thread = BrokerThread(port=0)
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def emulator(broker: BrokerThread) -> Iterator[NetworkEmulator]:
    netem = NetworkEmulator("127.0.0.1", broker.port, seed=3)
    netem.start()
    yield netem
    netem.stop()


@pytest.fixture
def clients() -> Iterator[Clients]:
    opened = Clients()
    yield opened
    opened.close()


# --- configuration, model and framing (no network) ---------------------------------------------


SCENARIO_NETWORK = {
    "seed": 11,
    "default": {"delay_ms": 20, "jitter_ms": 5, "downlink": {"bandwidth_kbps": 512}},
    "class": {"meas": {"congestion": 60}, "cmd": {"uplink": {"delay_ms": 5}}},
    "device": {"meter-7": {"loss": 0.1, "class": {"cmd": {"delay_ms": 300}}}},
}


def test_config_layers_field_by_field_device_over_class_over_default() -> None:
    config = NetworkConfig.from_dict(SCENARIO_NETWORK)
    assert config.seed == 11
    meas = resolve(config.rules, message_class="meas", device_id="meter-1", direction=UP)
    assert (meas.delay_ms, meas.jitter_ms, meas.congestion, meas.loss) == (20, 5, 60, 0.0)
    assert meas.bandwidth_kbps is None
    assert (
        resolve(config.rules, message_class="meas", device_id="m", direction=DOWN).bandwidth_kbps
        == 512
    )
    cmd_up = resolve(config.rules, message_class="cmd", device_id="meter-1", direction=UP)
    assert cmd_up.delay_ms == 5
    seven_cmd = resolve(config.rules, message_class="cmd", device_id="meter-7", direction=UP)
    assert (seven_cmd.delay_ms, seven_cmd.loss) == (300, 0.1)
    seven_meas = resolve(config.rules, message_class="meas", device_id="meter-7", direction=UP)
    assert (seven_meas.delay_ms, seven_meas.congestion, seven_meas.loss) == (20, 60, 0.1)
    assert NetworkConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"class": {"meas": {"delay": 5}}}, "network.class.meas.delay"),
        ({"class": {"meas": {"loss": 1.5}}}, "network.class.meas.loss"),
        ({"class": {"bogus": {"loss": 0.1}}}, "network.class.bogus"),
        ({"device": {"meter-7": {"congestion": 120}}}, "network.device.meter-7.congestion"),
        ({"default": {"jitter": "pareto"}}, "network.default.jitter"),
        ({"default": {"uplink": {"bandwidth_kbps": 0}}}, "network.default.uplink.bandwidth_kbps"),
        ({"defaults": {}}, "network.defaults"),
        ({"seed": "x"}, "network.seed"),
        ({"device": {"a/b": {"loss": 0.1}}}, 'network.device."a/b"'),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        NetworkConfig.from_dict(data)
    assert str(caught.value).startswith(f"{key}:"), str(caught.value)


def test_impairment_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^delay_ms:"):
        Impairment(delay_ms=-1)
    with pytest.raises(ConfigError, match=r"^message_class:"):
        RuleKey(message_class="measurements")
    assert device_of_client("meter-7.monitoring") == "meter-7"
    assert device_of_client("meter-7.grid_ops") == "meter-7"
    assert device_of_client("historian-1") == "historian-1"


def test_congestion_model_matches_seed_003_and_sampler_matches_model() -> None:
    model = DEFAULT_CONGESTION_MODEL
    # seed 003: request/response at 100 % congestion, mean 0.49 s, maximum 1 s
    assert 2 * model.mean_wait_ms(100) == pytest.approx(490, abs=15)
    assert 2 * model.buffer_packets * model.service_ms == pytest.approx(1000, abs=5)
    # below 90 % the maximum stayed under 0.5 s: the mean is a few tens of ms, loss nil
    assert 2 * model.mean_wait_ms(90) < 25
    assert model.loss_probability(90) < 1e-15
    assert model.loss_probability(100) == pytest.approx(1 / 447)
    # rising steeply near saturation
    waits = [model.mean_wait_ms(c) for c in (0, 50, 80, 90, 95, 99, 100)]
    assert waits == sorted(waits)
    assert waits[0] == 0
    assert waits[-1] > 20 * waits[3]
    rng = random.Random(5)
    for level in (60, 95, 100):
        samples = [model.sample_wait_ms(level, rng) for _ in range(20000)]
        assert statistics.fmean(samples) == pytest.approx(
            model.mean_wait_ms(level), rel=0.05, abs=0.05
        )
        assert max(samples) <= model.buffer_packets * model.service_ms * 1.3


def test_link_never_reorders_and_shapes_and_retransmits() -> None:
    link = LinkState(random.Random(1))
    jittery = EffectiveImpairment(delay_ms=20, jitter_ms=30, jitter=JitterDistribution.UNIFORM)
    releases = [
        link.decide(i * 0.001, 100, jittery, droppable=False).release_s for i in range(2000)
    ]
    assert releases == sorted(releases)
    # token bucket: 1000 bytes at 80 kbit/s = 0.1 s each; a full 2500-byte bucket lets two
    # packets pass at once, the third waits for its missing 500 bytes (0.05 s), then 0.1 s each
    shaped = EffectiveImpairment(bandwidth_kbps=80, burst_bytes=2500)
    link = LinkState(random.Random(1))
    departures = [link.decide(0.0, 1000, shaped, droppable=False).release_s for _ in range(6)]
    assert departures == pytest.approx([0.0, 0.0, 0.05, 0.15, 0.25, 0.35])
    # loss 0.2 as retransmission: 20 % of packets wait >= RTO, losses/packet = p/(1-p)
    lossy = EffectiveImpairment(loss=0.2)
    link = LinkState(random.Random(2))
    decisions = [link.decide(i * 100.0, 100, lossy, droppable=True) for i in range(20000)]
    assert not any(d.dropped for d in decisions)
    # drop mode: a droppable packet is lost once or passes, never retransmitted
    dropping = EffectiveImpairment(loss=0.2, loss_mode=LossMode.DROP)
    link_drop = LinkState(random.Random(3))
    outcomes = [link_drop.decide(i * 100.0, 100, dropping, droppable=True) for i in range(5000)]
    assert sum(d.dropped for d in outcomes) / 5000 == pytest.approx(0.2, abs=0.02)
    assert not any(d.retransmissions for d in outcomes)
    retransmitted = [d for d in decisions if d.retransmissions]
    assert len(retransmitted) / 20000 == pytest.approx(0.2, abs=0.01)
    assert sum(d.retransmissions for d in decisions) / 20000 == pytest.approx(0.25, abs=0.015)
    singles = [d.added_delay_ms for d in retransmitted if d.retransmissions == 1]
    assert singles == pytest.approx([200.0] * len(singles), abs=1e-6)


def test_framer_cuts_any_split_and_passes_garbage_through() -> None:
    packets = [
        bytes([0x30, 3, 0, 1, 0x61]),
        bytes([0xC0, 0]),
        bytes([0x32]) + bytes([0x80, 0x01]) + bytes(128),
    ]
    stream = b"".join(packets)
    rng = random.Random(4)
    for _ in range(50):
        framer = StreamFramer()
        out: list[bytes] = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 40)
            out += framer.feed(stream[pos : pos + step])
            pos += step
        assert out == packets
        assert framer.pending_bytes == 0
    framer = StreamFramer()
    garbage = bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3])
    assert b"".join(framer.feed(packets[0] + garbage)) == packets[0] + garbage
    assert framer.passthrough
    assert framer.feed(b"tail") == [b"tail"]


# --- the emulator with real clients ------------------------------------------------------------


def test_delay_on_meas_shows_in_latency_while_cmd_stays_fast(
    broker: BrokerThread, emulator: NetworkEmulator, clients: Clients
) -> None:
    device = unique("meter")
    meas, cmd = f"openfeeder/v1/meas/{device}", f"openfeeder/v1/cmd/{device}"
    subscriber = clients(broker.port, unique("sub"))
    subscriber.subscribe("openfeeder/v1/#")
    direct = clients(broker.port, unique("direct"))
    baseline = paced(direct, subscriber, meas, 30, 0.03)

    emulator.set_impairment(Impairment(delay_ms=50, jitter_ms=10), message_class="meas")
    relayed = clients(emulator.port, device)
    delayed = paced(relayed, subscriber, meas, 40, 0.03)
    commands = paced(relayed, subscriber, cmd, 20, 0.03)

    base = statistics.median(baseline)
    added = statistics.fmean(delayed) - base
    assert added == pytest.approx(50, abs=8), (base, delayed)
    assert 5 < statistics.stdev(delayed) < 20  # the jitter (sd 10 ms) shows, nothing reorders
    assert statistics.median(commands) - base < 15  # far below the 50 ms of meas
    stats = emulator.stats()
    assert stats.get("meas", UP).packets == 40
    assert stats.get("meas", UP).delayed == 40
    assert stats.get("meas", UP).mean_added_delay_ms == pytest.approx(50, abs=4)
    assert stats.get("cmd", UP).packets == 20
    assert stats.get("cmd", UP).max_added_delay_ms < 1


def test_loss_as_retransmission_adds_the_rto_to_the_expected_fraction(
    broker: BrokerThread, emulator: NetworkEmulator, clients: Clients
) -> None:
    subscriber = clients(broker.port, unique("sub"))
    subscriber.subscribe("openfeeder/v1/meas/#")
    emulator.set_impairment(Impairment(loss=0.2), message_class="meas", direction=UP)
    meters = [clients(emulator.port, unique("meter")) for _ in range(16)]
    per_meter = 8
    for round_no in range(per_meter):
        for index, meter in enumerate(meters):
            meter.publish(f"openfeeder/v1/meas/{meter.client_id}", stamped(round_no * 100 + index))
        time.sleep(0.25)
    latencies = collect(subscriber, per_meter * len(meters))
    slow = [value for value in latencies.values() if value >= 180]
    waited_rto = [value for value in latencies.values() if value >= 195]
    stats = emulator.stats().get("meas", UP)
    assert stats.packets == len(latencies)
    assert stats.dropped == 0
    # the emulator's draws: 0.2 of the messages lost once or more (+- 3.4 sigma of 128 draws)
    assert 0.10 <= stats.retransmitted / stats.packets <= 0.32
    assert 0.14 <= stats.retransmissions / stats.packets <= 0.38  # p/(1-p) = 0.25
    # and what the subscriber measured: every retransmitted message arrived at least one RTO
    # (200 ms) late (a loaded machine may make a few others slow too, never fewer), most about one
    assert stats.delayed >= stats.retransmitted
    assert len(waited_rto) >= stats.retransmitted
    assert len(slow) <= 0.45 * stats.packets
    assert 190 <= statistics.median(slow) <= 260


def test_drop_mode_loses_qos0_only(
    broker: BrokerThread, emulator: NetworkEmulator, clients: Clients
) -> None:
    device = unique("meter")
    subscriber = clients(broker.port, unique("sub"))
    subscriber.subscribe("openfeeder/v1/meas/#", qos=1)
    emulator.set_impairment(
        Impairment(loss=0.3, loss_mode=LossMode.DROP, rto_min_ms=20), message_class="meas"
    )
    meter = clients(emulator.port, device)
    sent = 300
    for seq in range(sent):
        meter.publish(f"openfeeder/v1/meas/{device}", stamped(seq), qos=0)
    wait_until(lambda: emulator.stats().get("meas", UP).packets == sent, "all QoS 0 relayed")
    dropped = emulator.stats().get("meas", UP).dropped
    assert emulator.stats().get("meas", UP).retransmissions == 0  # survivors pass untouched
    received = collect(subscriber, sent - dropped)
    assert dropped / sent == pytest.approx(0.3, abs=0.08)
    assert subscriber.received.empty()
    assert len(received) == sent - dropped
    # QoS 1 under the same rule is retransmitted, never dropped: all arrive
    for seq in range(sent, sent + 60):
        meter.publish(f"openfeeder/v1/meas/{device}", stamped(seq), qos=1)
    assert len(collect(subscriber, 60)) == 60
    assert emulator.stats().get("meas", UP).dropped == dropped


def test_bandwidth_cap_lowers_burst_throughput(
    broker: BrokerThread, emulator: NetworkEmulator, clients: Clients
) -> None:
    device = unique("meter")
    topic = f"openfeeder/v1/meas/{device}"
    subscriber = clients(broker.port, unique("sub"))
    subscriber.subscribe(topic, qos=0)
    meter = clients(emulator.port, device)

    def burst(count: int) -> float:
        emulator.reset_stats()
        start = time.monotonic()
        for seq in range(count):
            meter.publish(topic, stamped(seq, 600), qos=0)
        collect(subscriber, count)
        last = time.monotonic()
        return emulator.stats().get("meas", UP).bytes * 8 / 1000 / (last - start)

    free_kbps = burst(40)
    emulator.set_impairment(Impairment(bandwidth_kbps=200), message_class="meas", direction=UP)
    capped_kbps = burst(40)
    assert capped_kbps == pytest.approx(200, rel=0.2), capped_kbps
    assert free_kbps > 3 * capped_kbps
    assert emulator.stats().get("meas", UP).max_added_delay_ms > 800  # 40 x 642 B at 200 kbit/s


def test_device_rule_overrides_class_rule(
    broker: BrokerThread, emulator: NetworkEmulator, clients: Clients
) -> None:
    fast, slow = unique("meter"), unique("meter")
    subscriber = clients(broker.port, unique("sub"))
    subscriber.subscribe("openfeeder/v1/meas/#")
    emulator.apply(
        NetworkConfig.from_dict(
            {"class": {"meas": {"delay_ms": 30}}, "device": {slow: {"delay_ms": 120}}}
        )
    )
    # Messenger-style client ids: the device behind "<id>.monitoring" is <id>
    fast_meter = clients(emulator.port, f"{fast}.monitoring")
    slow_meter = clients(emulator.port, f"{slow}.monitoring", protocol=mqtt.MQTTv311)
    fast_lat = paced(fast_meter, subscriber, f"openfeeder/v1/meas/{fast}", 15, 0.02)
    slow_lat = paced(slow_meter, subscriber, f"openfeeder/v1/meas/{slow}", 15, 0.02)
    assert statistics.median(fast_lat) == pytest.approx(30, abs=10)
    assert statistics.median(slow_lat) == pytest.approx(120, abs=15)


def test_congestion_raised_at_runtime_raises_latency(
    broker: BrokerThread, emulator: NetworkEmulator, clients: Clients
) -> None:
    device = unique("meter")
    topic = f"openfeeder/v1/meas/{device}"
    subscriber = clients(broker.port, unique("sub"))
    subscriber.subscribe(topic)
    meter = clients(emulator.port, device)
    emulator.set_impairment(Impairment(delay_ms=10), message_class="meas", direction=UP)
    calm = ping_pong(meter, subscriber, topic, 25)
    # a scenario event, from another thread, on the live connection
    emulator.update_impairment(Impairment(congestion=98), message_class="meas", direction=UP)
    congested = ping_pong(meter, subscriber, topic, 50)
    expected_ms = DEFAULT_CONGESTION_MODEL.mean_wait_ms(98)  # ~55 ms
    added = statistics.fmean(congested) - statistics.fmean(calm)
    assert added == pytest.approx(expected_ms, abs=25), (expected_ms, added)
    assert statistics.median(calm) == pytest.approx(10, abs=6)
    rule = emulator.rules()[RuleKey("meas", None, UP)]
    assert (rule.delay_ms, rule.congestion) == (10, 98)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt311", "mqtt5"])
def test_both_protocol_versions_pass_intact_and_classified(
    emulator: NetworkEmulator, clients: Clients, protocol: MQTTProtocolVersion
) -> None:
    device = unique("meter")
    topic = f"openfeeder/v1/meas/{device}"
    emulator.set_impairment(Impairment(delay_ms=5, jitter_ms=5), message_class="meas")
    subscriber = clients(emulator.port, unique("sub"), protocol=protocol)
    subscriber.subscribe(topic)
    meter = clients(emulator.port, device, protocol=protocol)
    rng = random.Random(protocol)
    payloads = [
        rng.randbytes(rng.choice([0, 1, 127, 128, 16383, 16384, 200_000])) for _ in range(25)
    ]
    for payload in payloads:
        meter.publish(topic, payload, qos=rng.choice([0, 1, 2]))
    got = [subscriber.received.get(timeout=TIMEOUT_S)[2] for _ in payloads]
    assert got == payloads  # byte for byte, in order
    other = "plain/topic"
    subscriber.subscribe(other)
    meter.publish(other, b"x")
    assert subscriber.received.get(timeout=TIMEOUT_S)[1] == other
    stats = emulator.stats()
    assert stats.get("meas", UP).packets == len(payloads)
    assert stats.get("meas", DOWN).packets == len(payloads)
    assert stats.get("other", UP).packets == 1
    assert stats.get("control", UP).packets >= 3  # CONNECT x2, SUBSCRIBE
    assert stats.connections_open == 2


def test_closes_cleanly_either_way_and_on_stop(
    broker: BrokerThread, emulator: NetworkEmulator, clients: Clients
) -> None:
    device = unique("meter")
    will_topic = f"openfeeder/v1/status/{device}"
    watcher = clients(broker.port, unique("watch"))
    watcher.subscribe(will_topic)
    emulator.set_impairment(Impairment(delay_ms=40))
    # a clean DISCONNECT reaches the broker before both sides close: no last will
    meter = Client(emulator.port, device, will=(will_topic, b"dead"))
    meter.close()
    wait_until(lambda: emulator.stats().connections_open == 0, "relay closed after DISCONNECT")
    wait_until(lambda: broker.stats()["connections_current"] == 1, "broker side closed")
    # the broker going away closes the device's side
    second = clients(emulator.port, unique("meter"))
    assert emulator.stats().connections_open == 1
    # stop() closes every device connection; the broker sees a lost connection (will fires)
    third = clients(emulator.port, unique("meter"), will=(will_topic, b"gone"))
    emulator.stop()
    assert second.disconnected.wait(TIMEOUT_S)
    assert third.disconnected.wait(TIMEOUT_S)
    _arrival, topic, payload = watcher.received.get(timeout=TIMEOUT_S)
    assert (topic, payload) == (will_topic, b"gone")
    assert watcher.received.empty()  # never b"dead"
    assert emulator.stats().connections_open == 0


def test_broker_closing_closes_the_device_side(clients: Clients) -> None:
    broker = BrokerThread(port=0)
    broker.start()
    try:
        with NetworkEmulator("127.0.0.1", broker.port) as netem:
            meter = clients(netem.port, unique("meter"))
            broker.stop()
            assert meter.disconnected.wait(TIMEOUT_S)
            wait_until(lambda: netem.stats().connections_open == 0, "relay closed")
    finally:
        broker.stop()
