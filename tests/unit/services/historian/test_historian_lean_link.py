"""The historian's lean MQTT link against real Mosquitto: acks, persistent session, publishing."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from historian_support import unique, wait_until

from conftest import PrivateMosquitto
from openfeeder.config import BrokerSettings
from openfeeder.errors import MessagingError
from openfeeder.iot.mqtt import MqttLink
from openfeeder.iot.topics import TopicFilter
from openfeeder.services.historian.lean_link import LeanLink

pytestmark = pytest.mark.integration


class Received:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        del topic
        with self._lock:
            self.payloads.append(payload)

    def __len__(self) -> int:
        with self._lock:
            return len(self.payloads)


def _link(url: str, client_id: str, root: str, handler: Callable[[str, bytes], None]) -> LeanLink:
    return LeanLink(
        BrokerSettings(url=url),
        client_id=client_id,
        topic_filter=TopicFilter(f"{root}/#"),
        handler=handler,
        session_expiry_s=15,
    )


def _publisher(url: str) -> MqttLink:
    link = MqttLink(BrokerSettings(url=url), client_id=unique("pub"))
    link.start()
    assert link.wait_connected(10)
    return link


def test_acknowledged_messages_are_not_redelivered_and_the_session_queues_while_away(
    mqtt_url: str,
) -> None:
    root, client_id = unique("lean"), unique("lean-client")
    publisher = _publisher(mqtt_url)
    first = Received()
    link = _link(mqtt_url, client_id, root, first)
    link.start()
    try:
        assert link.wait_subscribed(10)
        for n in range(100):
            publisher.publish(f"{root}/a", str(n).encode())
        assert wait_until(lambda: len(first) == 100)
        link.stop()  # clean: the session stays, nothing unacknowledged is left in it
        handle = None
        for n in range(100, 150):
            handle = publisher.publish(f"{root}/a", str(n).encode())
        assert handle is not None
        assert handle.wait(10)
        second = Received()
        link = _link(mqtt_url, client_id, root, second)
        link.start()
        assert link.wait_subscribed(10)
        assert wait_until(lambda: len(second) == 50)
        assert sorted(int(p) for p in second.payloads) == list(range(100, 150))
    finally:
        link.stop()
        publisher.stop()


def test_publish_many_delivers_everything_within_the_broker_window(
    private_mosquitto: Callable[[], PrivateMosquitto],
) -> None:
    broker = private_mosquitto()  # max_inflight_messages 100: the window is smaller than the batch
    root = unique("marks")
    watcher_received = Received()
    watcher = _link(broker.url, unique("watch"), root, watcher_received)
    link = _link(broker.url, unique("pub"), unique("unused"), Received())
    watcher.start()
    link.start()
    try:
        assert watcher.wait_subscribed(10)
        assert link.wait_subscribed(10)
        messages = [(f"{root}/{n}", str(n).encode(), False) for n in range(3_000)]
        assert link.publish_many(messages).wait(20)
        assert wait_until(lambda: len(watcher_received) == 3_000)
        assert sorted(int(p) for p in watcher_received.payloads) == list(range(3_000))
    finally:
        link.stop()
        watcher.stop()


def test_publishing_without_a_connection_is_refused() -> None:
    link = _link("mqtt://127.0.0.1:9", unique("nobody"), unique("x"), Received())
    with pytest.raises(MessagingError, match="not connected"):
        link.publish("x/y", b"1")
