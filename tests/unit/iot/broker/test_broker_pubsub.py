"""Publish/subscribe through the embedded broker with real paho clients (MQTT 5 and 3.1.1).

"Nothing else arrived" is checked with a marker: the same publisher sends a marker last, and since
the broker keeps per-publisher order towards each subscriber, anything else would come before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from broker_testkit import V5, V311, PeerPool, running_broker, unique, wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from openfeeder.iot.broker import BrokerThread


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with running_broker() as running:
        yield running


@pytest.fixture
def peers(broker: BrokerThread) -> Iterator[PeerPool]:
    pool = PeerPool(broker.port)
    yield pool
    pool.close()


@pytest.mark.parametrize(
    ("sub_protocol", "pub_protocol"), [(V5, V5), (V5, V311), (V311, V5), (V311, V311)]
)
def test_qos_0_1_2_delivered_in_order(
    peers: PeerPool, sub_protocol: int, pub_protocol: int
) -> None:
    root = unique()
    subscriber = peers.connected(protocol=sub_protocol)
    assert [int(code.value) for code in subscriber.subscribe(f"{root}/#", qos=2)] == [2]
    publisher = peers.connected(protocol=pub_protocol)
    for qos in (0, 1, 2):
        publisher.publish(f"{root}/q{qos}", f"payload-{qos}".encode(), qos=qos)
    got = subscriber.expect(3)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        (f"{root}/q0", b"payload-0", 0, False),
        (f"{root}/q1", b"payload-1", 1, False),
        (f"{root}/q2", b"payload-2", 2, False),
    ]


def test_delivered_qos_is_the_lower_of_publish_and_subscription(peers: PeerPool) -> None:
    root = unique()
    low = peers.connected()
    low.subscribe(f"{root}/x", qos=0)
    mid = peers.connected()
    mid.subscribe(f"{root}/x", qos=1)
    publisher = peers.connected()
    publisher.publish(f"{root}/x", b"2", qos=2)
    assert low.expect()[0].qos == 0
    assert mid.expect()[0].qos == 1


def test_wildcard_filters(peers: PeerPool) -> None:
    root = unique()
    topics = [f"{root}/a", f"{root}/a/b", f"{root}/a/b/c", f"{root}/x/b", f"{root}//b", "other/a"]
    filters = [f"{root}/+/b", f"{root}/#", f"{root}/a/#", f"{root}/+", "+/a", "#", f"{root}/a/b"]
    listeners = []
    for index, topic_filter in enumerate(filters):
        peer = peers.connected()
        peer.subscribe(topic_filter)
        peer.subscribe(f"{root}-end/{index}")
        listeners.append((index, topic_filter, peer))
    publisher = peers.connected()
    for topic in topics:
        publisher.publish(topic, topic.encode())
    for index in range(len(filters)):
        publisher.publish(f"{root}-end/{index}", b"")
    for index, topic_filter, peer in listeners:
        got = [m.topic for m in peer.expect_until(f"{root}-end/{index}")]
        received = [t for t in got if not t.startswith(f"{root}-end/")]
        assert received == [t for t in topics if _matches(topic_filter, t)], topic_filter


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching, empty levels allowed (TopicFilter forbids them in the OpenFeeder scheme)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for index, level in enumerate(f_levels):
        if level == "#":
            return True
        if index >= len(t_levels) or (level not in ("+", t_levels[index])):
            return False
    return len(f_levels) == len(t_levels)


def test_dollar_topics_are_not_matched_by_first_level_wildcards(peers: PeerPool) -> None:
    root = unique()
    everything = peers.connected()
    everything.subscribe("#")
    plus = peers.connected()
    plus.subscribe(f"+/{root}")
    dollar = peers.connected()
    dollar.subscribe(f"$sys-{root}/#")
    publisher = peers.connected()
    publisher.publish(f"$sys-{root}/{root}", b"internal")
    publisher.publish(f"plain/{root}", b"marker")
    assert [m.topic for m in everything.expect()] == [f"plain/{root}"]
    assert [m.topic for m in plus.expect()] == [f"plain/{root}"]
    assert [m.payload for m in dollar.expect()] == [b"internal"]


def test_overlapping_subscriptions_give_one_copy_at_the_highest_qos(peers: PeerPool) -> None:
    root = unique()
    subscriber = peers.connected()
    subscriber.subscribe(f"{root}/#", qos=0)
    subscriber.subscribe(f"{root}/a", qos=1)
    subscriber.subscribe(f"{root}/+", qos=0)
    publisher = peers.connected()
    publisher.publish(f"{root}/a", b"once", qos=1)
    publisher.publish(f"{root}/marker", b"", qos=0)
    got = subscriber.expect_until(f"{root}/marker")
    assert [(m.topic, m.qos) for m in got] == [(f"{root}/a", 1), (f"{root}/marker", 0)]


def test_no_local_suppresses_own_messages(peers: PeerPool) -> None:
    topic = f"{unique()}/chat"
    talker = peers.connected()
    talker.subscribe(topic, noLocal=True)
    other = peers.connected()
    talker.publish(topic, b"mine")
    other.publish(topic, b"theirs")
    assert [m.payload for m in talker.expect()] == [b"theirs"]


def test_retain_as_published(peers: PeerPool) -> None:
    topic = f"{unique()}/state"
    keeps = peers.connected()
    keeps.subscribe(topic, retainAsPublished=True)
    clears = peers.connected()
    clears.subscribe(topic)
    v311 = peers.connected(protocol=V311)
    v311.subscribe(topic)
    publisher = peers.connected()
    publisher.publish(topic, b"on", retain=True)
    assert keeps.expect()[0].retain is True
    assert clears.expect()[0].retain is False
    assert v311.expect()[0].retain is False


def test_retained_set_replace_and_clear(broker: BrokerThread, peers: PeerPool) -> None:
    root = unique()
    publisher = peers.connected()
    publisher.publish(f"{root}/config", b"v1", retain=True)
    publisher.publish(f"{root}/config", b"v2", retain=True)
    publisher.publish(f"{root}/other/deep", b"o", qos=0, retain=True)
    assert broker.stats()["retained_messages"] == 2

    late = peers.connected()
    late.subscribe(f"{root}/config")
    got = late.expect()
    assert [(m.payload, m.retain) for m in got] == [(b"v2", True)]

    wild = peers.connected(protocol=V311)
    wild.subscribe(f"{root}/#")
    got = wild.expect(2)
    assert sorted((m.topic, m.payload, m.retain) for m in got) == [
        (f"{root}/config", b"v2", True),
        (f"{root}/other/deep", b"o", True),
    ]

    publisher.publish(f"{root}/config", b"", retain=True)
    assert broker.stats()["retained_messages"] == 1
    # the clearing message itself still reaches current subscribers
    assert late.expect()[0].payload == b""
    cleared = peers.connected()
    cleared.subscribe(f"{root}/config")
    publisher.publish(f"{root}/config", b"live")
    assert [(m.payload, m.retain) for m in cleared.expect()] == [(b"live", False)]


def test_retain_handling_options(peers: PeerPool) -> None:
    root = unique()
    topic = f"{root}/t"
    marker = f"{root}/marker"
    publisher = peers.connected()
    publisher.publish(topic, b"kept", retain=True)

    never = peers.connected()
    never.subscribe(f"{root}/+", retainHandling=2)
    if_new = peers.connected()
    if_new.subscribe(f"{root}/+", retainHandling=1)
    if_new.subscribe(f"{root}/+", retainHandling=1)
    always = peers.connected()
    always.subscribe(f"{root}/+", retainHandling=0)
    always.subscribe(f"{root}/+", retainHandling=0)
    publisher.publish(marker, b"m")
    assert [m.topic for m in never.expect_until(marker)] == [marker]
    assert [m.topic for m in if_new.expect_until(marker)] == [topic, marker]
    assert [m.topic for m in always.expect_until(marker)] == [topic, topic, marker]


def test_shared_subscription_gives_each_message_to_one_member_per_group(
    broker: BrokerThread, peers: PeerPool
) -> None:
    root = unique()
    count = 30
    group_a = [peers.connected() for _ in range(3)]
    group_b = [peers.connected(protocol=V311) for _ in range(2)]
    for peer in group_a:
        peer.subscribe(f"$share/a/{root}/+")
    for peer in group_b:
        peer.subscribe(f"$share/b/{root}/+")
    publisher = peers.connected()
    for index in range(count):
        publisher.publish(f"{root}/m", str(index).encode())
    for group in (group_a, group_b):
        wait_until(lambda g=group: sum(p.messages.qsize() for p in g) >= count, "all messages")
        # one marker per member, published directly: a duplicate would arrive before it
        for peer in group:
            peer.subscribe(f"{root}-direct/{peer.client_id}")
            publisher.publish(f"{root}-direct/{peer.client_id}", b"end")
        payloads = []
        for peer in group:
            got = [m.payload for m in peer.expect_until(f"{root}-direct/{peer.client_id}")][:-1]
            assert got, "round-robin gives every member a share"
            payloads.extend(got)
        assert sorted(payloads, key=int) == [str(i).encode() for i in range(count)]
    assert broker.stats()["messages_sent"] >= 2 * count


def test_shared_member_that_disconnects_leaves_the_group(peers: PeerPool) -> None:
    root = unique()
    stays = peers.connected()
    leaves = peers.connected()
    stays.subscribe(f"$share/g/{root}/#")
    leaves.subscribe(f"$share/g/{root}/#")
    leaves.disconnect()
    publisher = peers.connected()
    for index in range(6):
        publisher.publish(f"{root}/x", str(index).encode())
    assert [m.payload for m in stays.expect(6)] == [str(i).encode() for i in range(6)]


def test_unsubscribe(peers: PeerPool) -> None:
    root = unique()
    subscriber = peers.connected()
    subscriber.subscribe(f"{root}/a")
    subscriber.subscribe(f"{root}/marker")
    codes = subscriber.unsubscribe(f"{root}/a")
    assert [int(c.value) for c in codes] == [0]
    assert [int(c.value) for c in subscriber.unsubscribe(f"{root}/never")] == [0x11]
    publisher = peers.connected()
    publisher.publish(f"{root}/a", b"gone")
    publisher.publish(f"{root}/marker", b"m")
    assert [m.topic for m in subscriber.expect_until(f"{root}/marker")] == [f"{root}/marker"]


@pytest.mark.parametrize(("protocol", "failure"), [(V5, 0x8F), (V311, 0x80)], ids=["v5", "v311"])
def test_invalid_filter_is_refused_in_suback(peers: PeerPool, protocol: int, failure: int) -> None:
    root = unique()
    subscriber = peers.connected(protocol=protocol)
    # paho refuses misplaced wildcards itself (see the raw-socket tests); bad share names it sends
    for bad in ("$share/g", "$share//x", "$share/g/"):
        assert [int(c.value) for c in subscriber.subscribe(bad)] == [failure], bad
    subscriber.subscribe(f"{root}/ok")
    peers.connected().publish(f"{root}/ok", b"still usable")
    assert subscriber.expect()[0].payload == b"still usable"


def test_v5_properties_pass_through(peers: PeerPool) -> None:
    topic = f"{unique()}/req"
    subscriber = peers.connected()
    subscriber.subscribe(topic)
    publisher = peers.connected()
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.ResponseTopic = f"{topic}/reply"
    props.CorrelationData = b"\x01\x02"
    props.UserProperty = ("device", "rmu-7")
    props.MessageExpiryInterval = 3600
    info = publisher.client.publish(topic, b"{}", qos=1, properties=props)
    info.wait_for_publish(10)
    got = subscriber.expect()[0].properties
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == f"{topic}/reply"
    assert got.CorrelationData == b"\x01\x02"
    assert got.UserProperty == [("device", "rmu-7")]
    assert 3590 <= got.MessageExpiryInterval <= 3600


def test_large_payload_and_client_maximum_packet_size(
    broker: BrokerThread, peers: PeerPool
) -> None:
    topic = f"{unique()}/blob"
    big = bytes(range(256)) * 800
    whole = peers.connected()
    whole.subscribe(topic)
    small_only = peers.connected(max_packet_bytes=1000)
    small_only.subscribe(topic)
    publisher = peers.connected()
    publisher.publish(topic, big)
    publisher.publish(topic, b"small")
    assert [m.payload for m in whole.expect(2)] == [big, b"small"]
    assert [m.payload for m in small_only.expect()] == [b"small"]
    assert broker.stats()["dropped_too_large"] == 1


def test_stats_count_traffic(broker: BrokerThread, peers: PeerPool) -> None:
    topic = f"{unique()}/s"
    subscriber = peers.connected()
    subscriber.subscribe(topic)
    publisher = peers.connected()
    for _ in range(5):
        publisher.publish(topic, b"x" * 10)
    subscriber.expect(5)
    wait_until(lambda: broker.stats()["inflight_messages"] == 0, "acks processed")
    stats = broker.stats()
    assert stats["connections_current"] == 2
    assert stats["connections_total"] == 2
    assert stats["messages_received"] == 5
    assert stats["messages_sent"] == 5
    assert stats["subscriptions"] == 1
    assert stats["sessions"] == 2
    assert stats["bytes_received"] > 50
    assert stats["bytes_sent"] > 50
    assert stats["messages_dropped"] == 0
