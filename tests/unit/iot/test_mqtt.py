"""MqttLink and Messenger against the real Mosquitto: routing by message class, wills, resubscribe."""

from __future__ import annotations

import contextlib
import queue
import uuid
from collections.abc import Callable

import pytest

from conftest import PrivateMosquitto
from openfeeder.config import BrokerSettings, BrokersSettings
from openfeeder.iot import LinkState, Measurement, Reading, Status
from openfeeder.iot.mqtt import Messenger, MqttLink
from openfeeder.iot.topics import (
    BrokerContext,
    measurement_filter,
    status_filter,
    status_topic,
)

pytestmark = pytest.mark.integration


def _measurement(device: str, seq: int) -> Measurement:
    reading = Reading(channel="u_a", value=230.0 + seq, unit="V", quality="good")
    return Measurement(device_id=device, seq=seq, t_ns=1_000 + seq, values=(reading,))


def _collector() -> tuple[queue.Queue[tuple[str, bytes]], Callable[[str, bytes], None]]:
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    return received, lambda topic, payload: received.put((topic, payload))


def test_messenger_routes_measurements_to_monitoring_only(mqtt_url: str) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    # two contexts on distinguishable "brokers": the same Mosquitto, but we watch each link
    brokers = BrokersSettings(
        grid_ops=BrokerSettings(url=mqtt_url), monitoring=BrokerSettings(url=mqtt_url)
    )
    watcher = Messenger(brokers, client_id=f"watch-{device}")
    on_monitoring, handler_monitoring = _collector()
    watcher.subscribe(
        measurement_filter(device), handler_monitoring, context=BrokerContext.MONITORING
    )
    watcher.start()
    publisher = Messenger(brokers, client_id=device)
    publisher.start()
    try:
        assert watcher.wait_connected(10)
        assert publisher.wait_connected(10)
        # wait_connected returns before the SUBACK; wait_subscribed after it: one publish is seen
        assert watcher.wait_subscribed(10)
        handles = publisher.publish(_measurement(device, 7))
        assert len(handles) == 1  # measurements go to one broker: monitoring
        assert handles[0].wait(10)
        topic, payload = on_monitoring.get(timeout=10)
        assert topic == f"openfeeder/v1/meas/{device}"
        assert Measurement.model_validate_json(payload).seq == 7
    finally:
        publisher.stop()
        watcher.stop()


def test_status_goes_to_both_brokers_and_is_retained(mqtt_url: str) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    brokers = BrokersSettings(
        grid_ops=BrokerSettings(url=mqtt_url), monitoring=BrokerSettings(url=mqtt_url)
    )
    publisher = Messenger(brokers, client_id=device)
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        birth = Status(device_id=device, seq=0, t_ns=1, state=LinkState.ONLINE)
        handles = publisher.publish(birth)
        assert len(handles) == 2
        assert all(handle.wait(10) for handle in handles)
        # a late subscriber gets the retained birth at once
        late = MqttLink(BrokerSettings(url=mqtt_url), client_id=f"late-{device}")
        received, handler = _collector()
        late.subscribe(status_filter(device), handler)
        late.start()
        try:
            topic, payload = received.get(timeout=10)
            assert topic == str(status_topic(device))
            assert Status.model_validate_json(payload).state is LinkState.ONLINE
        finally:
            late.stop()
    finally:
        # clear the retained message so the shared broker keeps no garbage
        publisher.link(BrokerContext.GRID_OPS).publish(status_topic(device), b"", retain=True)
        publisher.link(BrokerContext.MONITORING).publish(
            status_topic(device), b"", retain=True
        ).wait(10)
        publisher.stop()


def test_last_will_announces_a_lost_connection(
    private_mosquitto: Callable[[], PrivateMosquitto],
) -> None:
    broker = private_mosquitto()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    settings = BrokerSettings(url=broker.url, keepalive_s=5)
    watcher = MqttLink(settings, client_id=f"watch-{device}")
    received, handler = _collector()
    watcher.subscribe(status_filter(device), handler)
    watcher.start()
    will = Status(device_id=device, seq=1, t_ns=2, state=LinkState.OFFLINE, reason="lost")
    dying = MqttLink(
        settings,
        client_id=device,
        will=(status_topic(device), will.model_dump_json().encode()),
    )
    dying.start()
    try:
        assert watcher.wait_subscribed(10)  # SUBACK in: the will cannot miss it
        assert dying.wait_connected(10)
        dying.stop(publish_will=True)  # MQTT v5 "disconnect with will message"
        topic, payload = received.get(timeout=10)
        assert topic == str(status_topic(device))
        assert Status.model_validate_json(payload).state is LinkState.OFFLINE
    finally:
        watcher.stop()


def test_link_resubscribes_after_the_broker_restarts(
    private_mosquitto: Callable[[], PrivateMosquitto],
) -> None:
    broker = private_mosquitto()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    settings = BrokerSettings(url=broker.url)
    subscriber = MqttLink(settings, client_id=f"sub-{device}")
    received, handler = _collector()
    subscriber.subscribe(measurement_filter(device), handler)
    subscriber.start()
    publisher = MqttLink(settings, client_id=device)
    publisher.start()
    try:
        assert subscriber.wait_connected(10)
        assert publisher.wait_connected(10)
        broker.stop()
        broker.start()  # same port, fresh process
        payload = _measurement(device, 1).model_dump_json().encode()
        for _ in range(100):  # reconnect back-off is up to 8 s
            # resubscribed (SUBACK in), not just reconnected
            if subscriber.wait_subscribed(0.2) and publisher.wait_connected(0.2):
                break
        assert subscriber.connects >= 2
        assert publisher.publish(f"openfeeder/v1/meas/{device}", payload).wait(10)
        topic, _ = received.get(timeout=15)
        assert topic == f"openfeeder/v1/meas/{device}"
    finally:
        publisher.stop()
        subscriber.stop()


def test_a_failing_handler_is_counted_and_the_link_keeps_going(mqtt_url: str) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    link = MqttLink(BrokerSettings(url=mqtt_url), client_id=f"sub-{device}")
    received: queue.Queue[int] = queue.Queue()

    def handler(_topic: str, payload: bytes) -> None:
        seq = Measurement.model_validate_json(payload).seq
        received.put(seq)
        if seq == 0:
            raise ValueError("handler bug")

    link.subscribe(measurement_filter(device), handler)
    link.start()
    try:
        assert link.wait_connected(10)
        probe = _measurement(device, 99).model_dump_json().encode()
        for _ in range(40):  # until the link's own subscription is acknowledged and delivers
            assert link.publish(f"openfeeder/v1/meas/{device}", probe).wait(10)
            with contextlib.suppress(queue.Empty):
                assert received.get(timeout=0.25) == 99
                break
        else:
            pytest.fail("the link never received its own measurement")
        for seq in (0, 1):
            data = _measurement(device, seq).model_dump_json().encode()
            assert link.publish(f"openfeeder/v1/meas/{device}", data).wait(10)
        got: list[int] = []
        while len(got) < 2:
            value = received.get(timeout=10)
            if value != 99:  # a late copy of a probe
                got.append(value)
        assert got == [0, 1]
        assert link.handler_errors == 1
        assert link.connected
    finally:
        link.stop()
