"""A subscription the broker refused is asked for again, and granted once the ACL allows it.

The catalog updates the broker's ACL a moment after a device gets a new algorithm, while the device
subscribes to the plug-in's inputs at once: the first SUBSCRIBE can be refused. The embedded broker
(identities from user names accepted by ``password_check``) plays that sequence.
"""

from __future__ import annotations

import queue
import time

import pytest

from openfeeder.config import BrokerSettings
from openfeeder.iot.access import build_access_table
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.mqtt import MqttLink, NetworkLoop
from openfeeder.security.acl import AccessTable

TIMEOUT_S = 10.0
DEVICE = "retry-dev-1"
WANTED = "openfeeder/v1/event/+"


def _table(*, with_input: bool) -> AccessTable:
    extra = (WANTED,) if with_input else ()
    table = build_access_table(devices={DEVICE: extra}, services={"ops": "operator"})
    assert table.may_subscribe(DEVICE, WANTED) is with_input
    return table


@pytest.mark.parametrize("hosted", [False, True], ids=["paho-thread", "network-loop"])
def test_a_refused_subscription_is_granted_after_the_acl_changes(hosted: bool) -> None:
    network = NetworkLoop(name="retry-test") if hosted else None
    with BrokerThread(
        port=0, password_check=lambda *_: True, access=_table(with_input=False)
    ) as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        received: queue.Queue[str] = queue.Queue()
        if network is not None:
            network.start()
        device = MqttLink(
            BrokerSettings(url=url, username=DEVICE),
            client_id=f"{DEVICE}.grid_ops",
            network=network,
        )
        operator = MqttLink(BrokerSettings(url=url, username="ops"), client_id="ops.retry")
        try:
            device.start()
            operator.start()
            assert device.wait_connected(TIMEOUT_S)
            assert operator.wait_connected(TIMEOUT_S)
            device.subscribe(WANTED, lambda topic, _payload: received.put(topic))
            deadline = time.monotonic() + TIMEOUT_S
            while device.refused_subscriptions == 0:
                if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                    pytest.fail("the broker never refused the subscription")
                time.sleep(0.05)
            assert broker.stats()["denied_subscribes"] >= 1

            broker.set_access(_table(with_input=True))  # the catalog's update arrives
            topic = "openfeeder/v1/event/retry-dev-2"
            got = None
            for _ in range(int(TIMEOUT_S / 0.25)):
                operator.publish(topic, b"x").wait(TIMEOUT_S)
                try:
                    got = received.get(timeout=0.25)
                    break
                except queue.Empty:
                    continue
            assert got == topic
            assert device.connects == 1  # granted on the same connection, no reconnect
        finally:
            device.stop()
            operator.stop()
            if network is not None:
                network.stop()
