"""The topic scheme: builders, parsing, validation, filters, shared subscriptions, delivery table."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from openfeeder.errors import MessagingError, OpenFeederError
from openfeeder.iot import topics
from openfeeder.iot.topics import (
    MESSAGE_SPECS,
    BrokerContext,
    MessageClass,
    ParsedTopic,
    QoS,
    Topic,
    TopicFault,
    TopicFilter,
    ack_filter,
    ack_topic,
    algorithm_filter,
    algorithm_topic,
    all_filter,
    command_filter,
    command_topic,
    committed_filter,
    committed_topic,
    config_filter,
    config_topic,
    event_filter,
    event_topic,
    filter_for,
    measurement_filter,
    measurement_topic,
    parse_topic,
    shared,
    status_filter,
    status_topic,
    topic_for,
    topology_filter,
    topology_topic,
)

# (builder result, expected name, parsed parts)
BUILT = [
    (measurement_topic("m1"), "openfeeder/v1/meas/m1", ParsedTopic(MessageClass.MEASUREMENT, "m1")),
    (event_topic("m1"), "openfeeder/v1/event/m1", ParsedTopic(MessageClass.EVENT, "m1")),
    (command_topic("sw-7"), "openfeeder/v1/cmd/sw-7", ParsedTopic(MessageClass.COMMAND, "sw-7")),
    (ack_topic("sw-7"), "openfeeder/v1/ack/sw-7", ParsedTopic(MessageClass.COMMAND_ACK, "sw-7")),
    (config_topic("m.2"), "openfeeder/v1/config/m.2", ParsedTopic(MessageClass.CONFIG, "m.2")),
    (status_topic("M_3"), "openfeeder/v1/status/M_3", ParsedTopic(MessageClass.STATUS, "M_3")),
    (
        algorithm_topic("m1", "se-lv"),
        "openfeeder/v1/algo/m1/se-lv",
        ParsedTopic(MessageClass.ALGORITHM, "m1", "se-lv"),
    ),
    (topology_topic(), "openfeeder/v1/topology", ParsedTopic(MessageClass.TOPOLOGY)),
    (
        committed_topic("m1"),
        "openfeeder/v1/committed/m1",
        ParsedTopic(MessageClass.COMMITTED, "m1"),
    ),
]


@pytest.mark.parametrize(("topic", "name", "parsed"), BUILT, ids=[name for _, name, _ in BUILT])
def test_builders_make_the_documented_topic_and_parse_back(
    topic: Topic, name: str, parsed: ParsedTopic
) -> None:
    assert isinstance(topic, Topic)
    assert str(topic) == topic.value == name
    assert parse_topic(name) == parsed
    assert parse_topic(topic) == parsed
    assert parsed.topic == topic
    assert parsed.spec is MESSAGE_SPECS[parsed.message_class]


def test_every_message_class_has_a_builder_in_the_table() -> None:
    assert {parsed.message_class for _, _, parsed in BUILT} == set(MessageClass)


def test_topic_for_is_the_generic_builder() -> None:
    assert topic_for(MessageClass.MEASUREMENT, device_id="m1") == measurement_topic("m1")
    assert topic_for(MessageClass.ALGORITHM, device_id="m1", algorithm="floc") == algorithm_topic(
        "m1", "floc"
    )


def test_messaging_error_is_an_openfeeder_error_with_structured_attributes() -> None:
    with pytest.raises(OpenFeederError) as info:
        measurement_topic("a/b")
    err = info.value
    assert isinstance(err, MessagingError)
    assert err.topic == "openfeeder/v1/meas/a/b"
    assert err.reason == TopicFault.INVALID_DEVICE_ID
    assert err.field == "device_id"
    assert "'a/b'" in str(err)


@pytest.mark.parametrize(
    "device_id", ["a/b", "+", "#", "a+b", "x#", "", "a b", "é", "x" * 65, "a\x00b"]
)
def test_device_ids_outside_the_pattern_are_refused(device_id: str) -> None:
    with pytest.raises(MessagingError) as info:
        measurement_topic(device_id)
    assert info.value.reason == TopicFault.INVALID_DEVICE_ID
    assert info.value.field == "device_id"


def test_longest_device_id_is_accepted() -> None:
    assert str(status_topic("x" * 64)).endswith("/" + "x" * 64)


@pytest.mark.parametrize("algorithm", ["a/b", "+", "", "x" * 65])
def test_algorithm_names_outside_the_pattern_are_refused(algorithm: str) -> None:
    with pytest.raises(MessagingError) as info:
        algorithm_topic("m1", algorithm)
    assert info.value.reason == TopicFault.INVALID_ALGORITHM
    assert info.value.field == "algorithm"


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ({"message_class": MessageClass.MEASUREMENT}, TopicFault.INVALID_DEVICE_ID),
        ({"message_class": MessageClass.TOPOLOGY, "device_id": "m1"}, TopicFault.INVALID_DEVICE_ID),
        (
            {"message_class": MessageClass.ALGORITHM, "device_id": "m1"},
            TopicFault.INVALID_ALGORITHM,
        ),
        (
            {"message_class": MessageClass.EVENT, "device_id": "m1", "algorithm": "se"},
            TopicFault.INVALID_ALGORITHM,
        ),
    ],
)
def test_parsed_topic_validates_its_shape(parts: dict[str, str], reason: TopicFault) -> None:
    with pytest.raises(MessagingError) as info:
        ParsedTopic(**parts)  # type: ignore[arg-type]
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("openfeeder/v1/meas/+", TopicFault.WILDCARD_IN_PUBLISH),
        ("openfeeder/v1/meas/#", TopicFault.WILDCARD_IN_PUBLISH),
        ("openfeeder/v1/meas/a+", TopicFault.WILDCARD_IN_PUBLISH),
        ("openfeeder/v1//m1", TopicFault.EMPTY_LEVEL),
        ("/openfeeder/v1/meas/m1", TopicFault.EMPTY_LEVEL),
        ("openfeeder/v1/meas/m1/", TopicFault.EMPTY_LEVEL),
        ("", TopicFault.EMPTY),
        ("openfeeder/v1/meas/m\x001", TopicFault.NUL_CHARACTER),
        ("$SYS/broker/uptime", TopicFault.RESERVED_PREFIX),
        ("a" * 65536, TopicFault.TOO_LONG),
    ],
)
def test_publish_topics_validate_themselves(name: str, reason: TopicFault) -> None:
    with pytest.raises(MessagingError) as info:
        Topic(name)
    assert info.value.reason == reason
    assert info.value.topic == name


def test_topic_is_frozen() -> None:
    topic = measurement_topic("m1")
    with pytest.raises(AttributeError):
        topic.value = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    [
        "other/v1/meas/m1",
        "openfeeder/v2/meas/m1",
        "openfeeder/v1/unknown/m1",
        "openfeeder/v1",
        "openfeeder/v1/meas",
        "openfeeder/v1/meas/m1/extra",
        "openfeeder/v1/topology/m1",
        "openfeeder/v1/algo/m1",
        "openfeeder/v1/algo/m1/se/extra",
    ],
)
def test_topics_outside_the_scheme_are_refused(name: str) -> None:
    with pytest.raises(MessagingError) as info:
        parse_topic(name)
    assert info.value.reason == TopicFault.OUTSIDE_SCHEME
    assert info.value.topic == name
    assert name in str(info.value)


def test_parse_topic_refuses_bad_device_and_wildcards() -> None:
    with pytest.raises(MessagingError) as info:
        parse_topic("openfeeder/v1/meas/a b")
    assert info.value.reason == TopicFault.INVALID_DEVICE_ID
    assert info.value.topic == "openfeeder/v1/meas/a b"
    with pytest.raises(MessagingError) as info:
        parse_topic("openfeeder/v1/meas/+")
    assert info.value.reason == TopicFault.WILDCARD_IN_PUBLISH


# --- filters ----------------------------------------------------------------------------------

FILTERS: list[tuple[Callable[[], TopicFilter], str]] = [
    (measurement_filter, "openfeeder/v1/meas/+"),
    (lambda: measurement_filter("m1"), "openfeeder/v1/meas/m1"),
    (event_filter, "openfeeder/v1/event/+"),
    (command_filter, "openfeeder/v1/cmd/+"),
    (lambda: command_filter("sw-7"), "openfeeder/v1/cmd/sw-7"),
    (ack_filter, "openfeeder/v1/ack/+"),
    (config_filter, "openfeeder/v1/config/+"),
    (status_filter, "openfeeder/v1/status/+"),
    (algorithm_filter, "openfeeder/v1/algo/+/+"),
    (lambda: algorithm_filter("m1"), "openfeeder/v1/algo/m1/+"),
    (lambda: algorithm_filter(algorithm="se-lv"), "openfeeder/v1/algo/+/se-lv"),
    (lambda: algorithm_filter("m1", "se-lv"), "openfeeder/v1/algo/m1/se-lv"),
    (topology_filter, "openfeeder/v1/topology"),
    (committed_filter, "openfeeder/v1/committed/+"),
    (all_filter, "openfeeder/v1/#"),
]


@pytest.mark.parametrize(("build", "expected"), FILTERS, ids=[e for _, e in FILTERS])
def test_filter_builders(build: Callable[[], TopicFilter], expected: str) -> None:
    built = build()
    assert isinstance(built, TopicFilter)
    assert str(built) == expected
    assert built.group is None
    assert built.inner == expected


@pytest.mark.parametrize(("topic", "_name", "parsed"), BUILT, ids=[name for _, name, _ in BUILT])
def test_class_filter_matches_its_topics_and_no_other_class(
    topic: Topic, _name: str, parsed: ParsedTopic
) -> None:
    for message_class in MessageClass:
        assert filter_for(message_class).matches(topic) == (message_class == parsed.message_class)
    assert all_filter().matches(topic)


def test_filter_for_refuses_parts_the_class_does_not_have() -> None:
    with pytest.raises(MessagingError) as info:
        filter_for(MessageClass.TOPOLOGY, device_id="m1")
    assert info.value.reason == TopicFault.INVALID_DEVICE_ID
    with pytest.raises(MessagingError) as info:
        filter_for(MessageClass.MEASUREMENT, algorithm="se")
    assert info.value.reason == TopicFault.INVALID_ALGORITHM
    with pytest.raises(MessagingError) as info:
        measurement_filter("a/b")
    assert info.value.reason == TopicFault.INVALID_DEVICE_ID
    with pytest.raises(MessagingError) as info:
        algorithm_filter("m1", "#")
    assert info.value.reason == TopicFault.INVALID_ALGORITHM


@pytest.mark.parametrize("value", ["#", "+", "a/+/c", "a/#", "+/+/#", "$SYS/#"])
def test_valid_filters(value: str) -> None:
    assert TopicFilter(value).value == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a/#/b", TopicFault.MISPLACED_WILDCARD),
        ("a/b#", TopicFault.MISPLACED_WILDCARD),
        ("a/+b", TopicFault.MISPLACED_WILDCARD),
        ("a//b", TopicFault.EMPTY_LEVEL),
        ("", TopicFault.EMPTY),
    ],
)
def test_invalid_filters(value: str, reason: TopicFault) -> None:
    with pytest.raises(MessagingError) as info:
        TopicFilter(value)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("openfeeder/v1/meas/+", "openfeeder/v1/meas/m1", True),
        ("openfeeder/v1/meas/+", "openfeeder/v1/meas/m1/x", False),
        ("openfeeder/v1/meas/+", "openfeeder/v1/meas", False),
        ("openfeeder/v1/meas/m1", "openfeeder/v1/meas/m2", False),
        ("openfeeder/v1/#", "openfeeder/v1/algo/m1/se", True),
        ("openfeeder/v1/#", "openfeeder/v2/meas/m1", False),
        ("openfeeder/v1/algo/+/se", "openfeeder/v1/algo/m9/se", True),
        ("openfeeder/v1/algo/+/se", "openfeeder/v1/algo/m9/floc", False),
        ("#", "$SYS/uptime", False),
        ("+/uptime", "$SYS/uptime", False),
        ("$SYS/#", "$SYS/uptime", True),
    ],
)
def test_filter_matching(pattern: str, name: str, expected: bool) -> None:
    assert TopicFilter(pattern).matches(name) is expected


# --- shared subscriptions ---------------------------------------------------------------------


def test_shared_subscription_format() -> None:
    group_filter = shared(measurement_filter(), "historian")
    assert str(group_filter) == "$share/historian/openfeeder/v1/meas/+"
    assert group_filter.group == "historian"
    assert group_filter.inner == "openfeeder/v1/meas/+"
    assert group_filter.matches(measurement_topic("m1"))
    assert not group_filter.matches(event_topic("m1"))
    assert shared("openfeeder/v1/#", "rec.1") == TopicFilter("$share/rec.1/openfeeder/v1/#")


@pytest.mark.parametrize("group", ["", "a/b", "+", "#", "x" * 65])
def test_shared_refuses_bad_groups(group: str) -> None:
    with pytest.raises(MessagingError) as info:
        shared(measurement_filter(), group)
    assert info.value.reason == TopicFault.INVALID_GROUP
    assert info.value.field == "group"


def test_shared_refuses_nesting_and_malformed_share_filters() -> None:
    with pytest.raises(MessagingError) as info:
        shared(shared(measurement_filter(), "g"), "h")
    assert info.value.reason == TopicFault.INVALID_GROUP
    for value in ("$share/g", "$share/+/a", "$share/g/a/#/b"):
        with pytest.raises(MessagingError):
            TopicFilter(value)


# --- the delivery table -----------------------------------------------------------------------


def test_every_message_class_has_a_spec_with_a_context() -> None:
    assert set(MESSAGE_SPECS) == set(MessageClass)
    for message_class, spec in MESSAGE_SPECS.items():
        assert spec.message_class == message_class
        assert spec.contexts, message_class
        assert len(set(spec.contexts)) == len(spec.contexts)
        assert spec.qos in set(QoS)
        assert spec.rationale


def test_broker_contexts_follow_the_grid_ops_monitoring_split() -> None:
    def on(context: BrokerContext) -> set[MessageClass]:
        return {c for c, spec in MESSAGE_SPECS.items() if context in spec.contexts}

    assert on(BrokerContext.MONITORING) == {
        MessageClass.MEASUREMENT,
        MessageClass.ALGORITHM,
        MessageClass.STATUS,
    }
    assert on(BrokerContext.GRID_OPS) == {
        MessageClass.COMMAND,
        MessageClass.COMMAND_ACK,
        MessageClass.CONFIG,
        MessageClass.EVENT,
        MessageClass.TOPOLOGY,
        MessageClass.COMMITTED,
        MessageClass.STATUS,
    }


def test_retain_and_qos_choices() -> None:
    retained = {c for c, spec in MESSAGE_SPECS.items() if spec.retain}
    assert retained == {
        MessageClass.STATUS,
        MessageClass.CONFIG,
        MessageClass.TOPOLOGY,
        MessageClass.COMMITTED,
    }
    assert not MESSAGE_SPECS[MessageClass.COMMAND].retain
    assert MESSAGE_SPECS[MessageClass.COMMAND].qos == QoS.AT_LEAST_ONCE
    assert MESSAGE_SPECS[MessageClass.MEASUREMENT].qos == QoS.AT_LEAST_ONCE
    assert {c for c, s in MESSAGE_SPECS.items() if not s.has_device} == {MessageClass.TOPOLOGY}
    assert {c for c, s in MESSAGE_SPECS.items() if s.has_algorithm} == {MessageClass.ALGORITHM}


def test_module_docstring_table_matches_the_specs() -> None:
    doc = topics.__doc__
    assert doc is not None
    rows = {}
    for line in doc.splitlines():
        match = re.fullmatch(r"(\w+)\s+(openfeeder/v1/\S*)\s+(\S+)\s+([012])\s+(yes|no)", line)
        if match:
            rows[match.group(1)] = match.groups()[1:]
    assert set(rows) == {str(c) for c in MessageClass}
    for message_class, spec in MESSAGE_SPECS.items():
        pattern, contexts, qos, retain = rows[str(message_class)]
        assert pattern.split("/")[2] == str(message_class)
        assert pattern.count("{device_id}") == int(spec.has_device)
        assert pattern.count("{algo}") == int(spec.has_algorithm)
        assert set(contexts.split("+")) == {str(c) for c in spec.contexts}
        assert int(qos) == spec.qos
        assert (retain == "yes") is spec.retain
