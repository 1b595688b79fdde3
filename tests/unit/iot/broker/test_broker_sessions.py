"""Wills, persistent sessions, takeover and flow control, with paho clients and raw sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from broker_testkit import (
    TIMEOUT_S,
    V5,
    V311,
    Peer,
    PeerPool,
    RawPeer,
    running_broker,
    unique,
    wait_until,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode

from openfeeder.iot.broker import BrokerLimits, BrokerThread
from openfeeder.iot.broker.codec import (
    Connack,
    Connect,
    Disconnect,
    PubAck,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from openfeeder.iot.broker.codes import PacketType, ReasonCode
from openfeeder.iot.broker.properties import PropertyId


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with running_broker() as running:
        yield running


@pytest.fixture
def peers(broker: BrokerThread) -> Iterator[PeerPool]:
    pool = PeerPool(broker.port)
    yield pool
    pool.close()


def _with_will(peers: PeerPool, topic: str, protocol: int = V5, **connect_args: Any) -> Peer:
    peer = peers(protocol=protocol)
    peer.client.will_set(topic, b"dead", qos=1, retain=False)
    _, rc, _ = peer.connect(**connect_args)
    assert not rc.is_failure
    return peer


@pytest.mark.parametrize("protocol", [V5, V311], ids=["v5", "v311"])
def test_will_published_when_the_socket_closes_without_disconnect(
    peers: PeerPool, protocol: int
) -> None:
    topic = f"{unique()}/status"
    watcher = peers.connected()
    watcher.subscribe(topic)
    device = _with_will(peers, topic, protocol)
    device.drop()
    got = watcher.expect()
    assert [(m.topic, m.payload, m.qos) for m in got] == [(topic, b"dead", 1)]


def test_will_published_when_keepalive_expires(broker: BrokerThread, peers: PeerPool) -> None:
    topic = f"{unique()}/status"
    watcher = peers.connected()
    watcher.subscribe(topic)
    device = _with_will(peers, topic, keepalive_s=1)
    device.freeze()  # socket stays open, but no PINGREQ any more
    assert watcher.expect()[0].payload == b"dead"
    assert broker.stats()["wills_published"] == 1


def test_no_will_after_a_clean_disconnect(broker: BrokerThread, peers: PeerPool) -> None:
    root = unique()
    watcher = peers.connected()
    watcher.subscribe(f"{root}/#")
    device = _with_will(peers, f"{root}/status")
    device.disconnect()
    wait_until(lambda: broker.stats()["clients_connected"] == 1, "the broker to drop the device")
    peers.connected().publish(f"{root}/marker", b"m")
    assert [m.topic for m in watcher.expect_until(f"{root}/marker")] == [f"{root}/marker"]
    assert broker.stats()["wills_published"] == 0


def test_disconnect_with_will_message_publishes_the_will(peers: PeerPool) -> None:
    topic = f"{unique()}/status"
    watcher = peers.connected()
    watcher.subscribe(topic)
    device = _with_will(peers, topic)
    device.client.disconnect(reasoncode=PahoReasonCode(PacketTypes.DISCONNECT, identifier=4))
    device.stop()
    assert watcher.expect()[0].payload == b"dead"


def test_will_delay_is_cancelled_by_a_reconnect_to_the_same_session(
    broker: BrokerThread, peers: PeerPool
) -> None:
    topic = f"{unique()}/status"
    client_id = unique("dev")
    device = peers(client_id)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 120
    device.client.will_set(topic, b"dead", qos=1, properties=props)
    device.connect(clean_start=False, session_expiry_s=300)
    device.drop()
    wait_until(lambda: broker.stats()["wills_pending"] == 1, "the delayed will")
    again = peers(client_id)
    flags, _, _ = again.connect(clean_start=False, session_expiry_s=300)
    assert flags.session_present
    stats = broker.stats()
    assert stats["wills_pending"] == 0
    assert stats["wills_published"] == 0


def test_persistent_v5_session_queues_while_offline(broker: BrokerThread, peers: PeerPool) -> None:
    root = unique()
    client_id = unique("historian")
    subscriber = peers(client_id)
    flags, _, _ = subscriber.connect(clean_start=False, session_expiry_s=300)
    assert not flags.session_present
    subscriber.subscribe(f"{root}/#", qos=1)
    subscriber.disconnect()
    wait_until(lambda: broker.stats()["clients_connected"] == 0, "the subscriber to go")

    publisher = peers.connected()
    for index in range(5):
        publisher.publish(f"{root}/m", str(index).encode(), qos=1)
    publisher.publish(f"{root}/m", b"qos0 is not kept", qos=0)
    wait_until(lambda: broker.stats()["queued_messages"] == 5, "five queued messages")
    assert broker.stats()["dropped_offline_qos0"] == 1

    back = peers(client_id)
    flags, _, _ = back.connect(clean_start=False, session_expiry_s=300)
    assert flags.session_present
    assert [m.payload for m in back.expect(5)] == [str(i).encode() for i in range(5)]


def test_persistent_v311_session_keeps_subscriptions(broker: BrokerThread, peers: PeerPool) -> None:
    root = unique()
    client_id = unique("v311")
    first = peers(client_id, V311, clean_session=False)
    first.connect()
    first.subscribe(f"{root}/+", qos=1)
    first.disconnect()
    wait_until(lambda: broker.stats()["clients_connected"] == 0, "the subscriber to go")
    publisher = peers.connected()
    publisher.publish(f"{root}/a", b"while away", qos=1)
    second = peers(client_id, V311, clean_session=False)
    flags, _, _ = second.connect()
    assert flags.session_present
    assert second.expect()[0].payload == b"while away"
    publisher.publish(f"{root}/b", b"after", qos=1)
    assert second.expect()[0].payload == b"after"


def test_clean_start_discards_the_old_session(broker: BrokerThread, peers: PeerPool) -> None:
    root = unique()
    client_id = unique("c")
    first = peers(client_id)
    first.connect(clean_start=False, session_expiry_s=300)
    first.subscribe(f"{root}/#")
    first.disconnect()
    wait_until(lambda: broker.stats()["clients_connected"] == 0, "the subscriber to go")
    assert broker.stats()["subscriptions"] == 1
    second = peers(client_id)
    flags, _, _ = second.connect(clean_start=True)
    assert not flags.session_present
    assert broker.stats()["subscriptions"] == 0


def test_session_expires_after_its_interval(broker: BrokerThread, peers: PeerPool) -> None:
    client = peers()
    client.connect(clean_start=False, session_expiry_s=1)
    client.subscribe(f"{unique()}/x")
    client.disconnect()
    wait_until(lambda: broker.stats()["sessions"] == 0, "the session to expire")
    assert broker.stats()["subscriptions"] == 0


def test_session_takeover_closes_the_old_connection(broker: BrokerThread, peers: PeerPool) -> None:
    topic = f"{unique()}/status"
    watcher = peers.connected()
    watcher.subscribe(topic)
    old = _with_will(peers, topic)
    old_id = old.client_id
    new = peers(old_id)
    _, rc, _ = new.connect()
    assert not rc.is_failure
    assert int(old.disconnects.get(timeout=TIMEOUT_S).value) == 0x8E  # session taken over
    old.stop()
    # the old connection ended without DISCONNECT and its session ended (clean start): will
    assert watcher.expect()[0].payload == b"dead"
    new.subscribe(f"{topic}/echo")
    watcher.publish(f"{topic}/echo", b"new connection works")
    assert new.expect()[0].payload == b"new connection works"
    assert broker.stats()["clients_connected"] == 2


def _raw_connect(
    port: int, client_id: str, *, clean_start: bool = True, **props: int
) -> tuple[RawPeer, Connack]:
    raw = RawPeer(port)
    properties = {PropertyId[name.upper()]: value for name, value in props.items()}
    raw.send(Connect(client_id, 5, clean_start=clean_start, properties=properties))
    connack = raw.read()
    assert isinstance(connack, Connack)
    return raw, connack


def _raw_subscribe(raw: RawPeer, topic_filter: str, qos: int = 1) -> None:
    raw.send(Subscribe(1, [SubscriptionRequest(topic_filter, qos)]))
    assert isinstance(raw.read(), Suback)


def test_unacknowledged_messages_are_resent_with_dup(broker: BrokerThread, peers: PeerPool) -> None:
    topic = f"{unique()}/cmd"
    client_id = unique("raw")
    raw, connack = _raw_connect(
        broker.port, client_id, clean_start=False, session_expiry_interval=300
    )
    assert connack.reason_code == 0
    _raw_subscribe(raw, topic)
    peers.connected().publish(topic, b"switch open")
    first = raw.read()
    assert isinstance(first, Publish)
    assert not first.dup
    raw.close()  # never acknowledged
    wait_until(lambda: broker.stats()["clients_connected"] == 1, "the raw client to go")

    raw, connack = _raw_connect(
        broker.port, client_id, clean_start=False, session_expiry_interval=300
    )
    try:
        assert connack.session_present
        again = raw.read()
        assert isinstance(again, Publish)
        assert (again.dup, again.packet_id, again.payload) == (
            True,
            first.packet_id,
            b"switch open",
        )
        raw.send(PubAck(PacketType.PUBACK, again.packet_id))
        wait_until(lambda: broker.stats()["inflight_messages"] == 0, "the acknowledgement")
    finally:
        raw.close()


def test_receive_maximum_limits_messages_in_flight(broker: BrokerThread, peers: PeerPool) -> None:
    topic = f"{unique()}/meas"
    raw, _ = _raw_connect(broker.port, unique("slow"), receive_maximum=2)
    try:
        _raw_subscribe(raw, topic)
        publisher = peers.connected()
        for index in range(5):
            publisher.publish(topic, str(index).encode())
        got = [raw.read(), raw.read()]
        wait_until(
            lambda: (
                broker.stats()["inflight_messages"] == 2 and broker.stats()["queued_messages"] == 3
            ),
            "two in flight, three queued",
        )
        for index in range(5):
            packet = got[index]
            assert isinstance(packet, Publish)
            assert packet.payload == str(index).encode()
            raw.send(PubAck(PacketType.PUBACK, packet.packet_id))
            if index < 3:
                got.append(raw.read())
        wait_until(lambda: broker.stats()["inflight_messages"] == 0, "all acknowledged")
    finally:
        raw.close()


def test_slow_subscriber_queue_is_bounded_drop_oldest() -> None:
    limits = BrokerLimits(max_queued_messages=10)
    with running_broker(limits) as broker:
        pool = PeerPool(broker.port)
        raw, _ = _raw_connect(broker.port, unique("slow"), receive_maximum=1)
        try:
            topic = f"{unique()}/meas"
            _raw_subscribe(raw, topic)
            publisher = pool.connected()
            for index in range(30):
                publisher.publish(topic, str(index).encode())
            wait_until(lambda: broker.stats()["dropped_queue_full"] == 19, "19 dropped")
            stats = broker.stats()
            assert (stats["inflight_messages"], stats["queued_messages"]) == (1, 10)
            payloads = []
            for _ in range(11):
                packet = raw.read()
                assert isinstance(packet, Publish)
                payloads.append(packet.payload)
                raw.send(PubAck(PacketType.PUBACK, packet.packet_id))
            assert payloads == [b"0"] + [str(i).encode() for i in range(20, 30)]
        finally:
            raw.close()
            pool.close()


def test_qos2_handshakes_both_ways(broker: BrokerThread, peers: PeerPool) -> None:
    topic = f"{unique()}/exact"
    raw, _ = _raw_connect(broker.port, unique("q2"))
    try:
        _raw_subscribe(raw, topic, qos=2)
        watcher = peers.connected()
        watcher.subscribe(topic, qos=2)
        # incoming: the same QoS 2 message sent twice (DUP) is routed once
        raw.send(Publish(topic, b"once", qos=2, packet_id=9))
        raw.send(Publish(topic, b"once", qos=2, packet_id=9, dup=True))
        packets = [raw.read() for _ in range(3)]
        recs = [p for p in packets if isinstance(p, PubAck)]
        delivered = [p for p in packets if isinstance(p, Publish)]
        assert [r.packet_type for r in recs] == [PacketType.PUBREC, PacketType.PUBREC]
        assert len(delivered) == 1
        raw.send(PubAck(PacketType.PUBREL, 9))
        # outgoing: PUBLISH -> PUBREC -> PUBREL -> PUBCOMP
        out = delivered[0]
        assert out.qos == 2
        raw.send(PubAck(PacketType.PUBREC, out.packet_id))
        rest = [raw.read(), raw.read()]
        kinds = sorted(p.packet_type for p in rest if isinstance(p, PubAck))
        assert kinds == [PacketType.PUBREL, PacketType.PUBCOMP]
        raw.send(PubAck(PacketType.PUBCOMP, out.packet_id))
        wait_until(lambda: broker.stats()["inflight_messages"] == 0, "the handshake to finish")
        assert [m.payload for m in watcher.expect()] == [b"once"]
    finally:
        raw.close()


def test_empty_client_id_is_assigned_in_v5(broker: BrokerThread) -> None:
    raw, connack = _raw_connect(broker.port, "")
    try:
        assigned = connack.properties.get(PropertyId.ASSIGNED_CLIENT_IDENTIFIER)
        assert isinstance(assigned, str)
        assert assigned
    finally:
        raw.close()


def test_empty_client_id_with_persistent_v311_session_is_refused(broker: BrokerThread) -> None:
    raw = RawPeer(broker.port)
    try:
        raw.send(Connect("", 4, clean_start=False), version=4)
        connack = raw.read(version=4)
        assert isinstance(connack, Connack)
        assert connack.reason_code == 2  # identifier rejected
        assert raw.read(version=4) is None
    finally:
        raw.close()


def test_password_check_hook() -> None:
    def check(client_id: str, username: str | None, password: bytes | None) -> bool:
        return bool(client_id) and username == "grid" and password == b"s3cret"

    with BrokerThread(port=0, password_check=check) as broker:
        for version, expected in ((5, 0x86), (4, 4)):
            raw = RawPeer(broker.port)
            try:
                raw.send(Connect("x", version, username="grid", password=b"wrong"), version=version)
                refused = raw.read(version=version)
                assert isinstance(refused, Connack)
                assert refused.reason_code == expected
            finally:
                raw.close()
        pool = PeerPool(broker.port)
        try:
            ok = pool()
            ok.client.username_pw_set("grid", "s3cret")
            _, rc, _ = ok.connect()
            assert not rc.is_failure
        finally:
            pool.close()


def test_will_properties_are_delivered(peers: PeerPool) -> None:
    topic = f"{unique()}/status"
    watcher = peers.connected()
    watcher.subscribe(topic)
    raw = RawPeer(peers.port)
    will = Will(topic, b"gone", 1, False, {PropertyId.CONTENT_TYPE: "text/plain"})
    raw.send(Connect(unique("w"), 5, will=will))
    assert isinstance(raw.read(), Connack)
    raw.close()
    got = watcher.expect()[0]
    assert got.payload == b"gone"
    assert got.properties.ContentType == "text/plain"


def test_disconnect_session_expiry_rules(broker: BrokerThread) -> None:
    # raising the expiry at DISCONNECT after 0 at CONNECT is a protocol error
    raw, _ = _raw_connect(broker.port, unique("e0"))
    try:
        raw.send(Disconnect(0, {PropertyId.SESSION_EXPIRY_INTERVAL: 60}))
        assert raw.read_until_closed() == [Disconnect(ReasonCode.PROTOCOL_ERROR)]
    finally:
        raw.close()
    # lowering it to 0 at DISCONNECT ends a persistent session with the connection
    raw, _ = _raw_connect(broker.port, unique("e1"), session_expiry_interval=600)
    try:
        _raw_subscribe(raw, f"{unique()}/x")
        raw.send(Disconnect(0, {PropertyId.SESSION_EXPIRY_INTERVAL: 0}))
        assert raw.read_until_closed() == []
    finally:
        raw.close()
    wait_until(lambda: broker.stats()["sessions"] == 0, "the session to end")


def test_disconnect_with_an_error_reason_publishes_the_will(peers: PeerPool) -> None:
    topic = f"{unique()}/status"
    watcher = peers.connected()
    watcher.subscribe(topic)
    raw = RawPeer(peers.port)
    try:
        raw.send(Connect(unique("w"), 5, will=Will(topic, b"dead", 1)))
        assert isinstance(raw.read(), Connack)
        raw.send(Disconnect(ReasonCode.UNSPECIFIED_ERROR))
        assert raw.read_until_closed() == []
    finally:
        raw.close()
    assert watcher.expect()[0].payload == b"dead"
