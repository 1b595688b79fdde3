"""Subscription index and retained store: matching agrees with the topic scheme's own matcher."""

from __future__ import annotations

import itertools
import random

import pytest

from openfeeder.iot.broker.session import BrokerLimits, Counters, Message, Session, Subscription
from openfeeder.iot.broker.topic_tree import RetainedStore, SubscriptionIndex, parse_filter
from openfeeder.iot.topics import TopicFilter

LEVELS = ["a", "b", "c"]


def _session(name: str) -> Session:
    return Session(name, BrokerLimits(), Counters())


def _sub(session: Session, text: str) -> Subscription:
    parsed = parse_filter(text)
    assert parsed is not None
    group, levels = parsed
    return Subscription(session, text, levels, group, 1)


def _all_filters() -> list[str]:
    out = []
    for depth in (1, 2, 3):
        for combo in itertools.product([*LEVELS, "+"], repeat=depth):
            out.append("/".join(combo))
            if depth < 3:
                out.append("/".join([*combo, "#"]))
    out.append("#")
    return out


def _all_topics() -> list[str]:
    out = ["$sys/a", "$sys/a/b"]
    for depth in (1, 2, 3, 4):
        out.extend("/".join(combo) for combo in itertools.product(LEVELS, repeat=depth))
    return out


def test_index_matches_like_topic_filter() -> None:
    index = SubscriptionIndex()
    filters = _all_filters()
    subs = {text: _sub(_session(text), text) for text in filters}
    for sub in subs.values():
        index.add(sub)
    assert index.count == len(filters)
    for topic in _all_topics():
        found, groups = index.match(topic)
        assert groups == ()
        expected = {text for text in filters if TopicFilter(text).matches(topic)}
        assert {sub.text for sub in found} == expected, topic


def test_index_remove_prunes_and_updates_matches() -> None:
    index = SubscriptionIndex()
    rng = random.Random(7)
    filters = _all_filters()
    subs = [_sub(_session(f"s{i}"), text) for i, text in enumerate(filters)]
    for sub in subs:
        index.add(sub)
    rng.shuffle(subs)
    kept = subs[: len(subs) // 2]
    for sub in subs[len(subs) // 2 :]:
        index.match("a/b")  # fill the cache: removal must invalidate it
        index.remove(sub)
    assert index.count == len(kept)
    for topic in ("a", "a/b", "c/c/c", "b/a/c/a"):
        expected = {s.text for s in kept if TopicFilter(s.text).matches(topic)}
        assert {s.text for s in index.match(topic)[0]} == expected
    for sub in kept:
        index.remove(sub)
    assert index.count == 0
    assert index.match("a/b") == ((), ())
    assert index._root.children == {}  # pruning leaves no empty nodes


def test_shared_groups_round_robin_and_membership() -> None:
    index = SubscriptionIndex()
    members = [_sub(_session(f"m{i}"), "$share/g/a/+") for i in range(3)]
    for member in members:
        index.add(member)
    subs, groups = index.match("a/x")
    assert subs == ()
    assert len(groups) == 1
    # no member has a connection here: the first one (a persistent session) gets the message
    assert groups[0].pick() is members[0]
    index.remove(members[1])
    assert [m.session.client_id for m in groups[0].members] == ["m0", "m2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a/b", (None, ("a", "b"))),
        ("a//b", (None, ("a", "", "b"))),
        ("#", (None, ("#",))),
        ("$share/g/a/#", ("g", ("a", "#"))),
        ("a/#/b", None),
        ("a/b#", None),
        ("a+", None),
        ("", None),
        ("$share/g", None),
        ("$share//a", None),
        ("$share/g#/a", None),
        ("a\x00", None),
    ],
)
def test_parse_filter(text: str, expected: object) -> None:
    assert parse_filter(text) == expected


def _message(topic: str, payload: bytes = b"x") -> Message:
    return Message(topic, payload, 1, True)


def test_retained_store_set_replace_delete_and_match() -> None:
    store = RetainedStore()
    for topic in ("a", "a/b", "a/b/c", "a/x", "b/b", "$sys/a"):
        store.set(_message(topic))
    store.set(_message("a/b", b"new"))
    assert store.count == 6
    cases = {
        ("#",): {"a", "a/b", "a/b/c", "a/x", "b/b"},
        ("a", "#"): {"a", "a/b", "a/b/c", "a/x"},
        ("+", "b"): {"a/b", "b/b"},
        ("+",): {"a"},
        ("$sys", "+"): {"$sys/a"},
        ("a", "b"): {"a/b"},
        ("z",): set(),
    }
    for levels, expected in cases.items():
        assert {m.topic for m in store.match(levels)} == expected, levels
    assert [m.payload for m in store.match(("a", "b"))] == [b"new"]
    store.set(_message("a/b", b""))
    store.set(_message("never/there", b""))
    assert store.count == 5
    assert {m.topic for m in store.match(("a", "+"))} == {"a/x"}
