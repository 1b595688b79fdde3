"""The MQTT topic scheme: every topic OpenFeeder publishes or subscribes to is built here.

Topics are ``openfeeder/v1/<class>[/<device_id>[/<algorithm>]]``: the root, the scheme version, the
message class, then the device the message is about and, for algorithm outputs, the algorithm.
Device ids and algorithm names match ``[A-Za-z0-9_.-]{1,64}`` (so never ``/``, ``+`` or ``#``).

Two broker contexts carry the traffic (ARCHITECTURE.md, and Section III-A of the 3SMA paper in
``shared/seeds``): **grid_ops** for what operates the grid (commands, acknowledgements,
configuration, events and alarms, topology, the historian's committed marks), kept small so that a
flood of measurements can never delay a switching command; **monitoring** for the bulk data
(measurements and algorithm outputs) that the historian, estimation and dashboard read.

==========  ========================================  =====================  ===  ======
class       topic                                     broker                 QoS  retain
==========  ========================================  =====================  ===  ======
meas        openfeeder/v1/meas/{device_id}            monitoring             1    no
algo        openfeeder/v1/algo/{device_id}/{algo}     monitoring             1    no
event       openfeeder/v1/event/{device_id}           grid_ops               1    no
cmd         openfeeder/v1/cmd/{device_id}             grid_ops               1    no
ack         openfeeder/v1/ack/{device_id}             grid_ops               1    no
config      openfeeder/v1/config/{device_id}          grid_ops               1    yes
topology    openfeeder/v1/topology                    grid_ops               1    yes
committed   openfeeder/v1/committed/{device_id}       grid_ops               1    yes
status      openfeeder/v1/status/{device_id}          grid_ops+monitoring    1    yes
==========  ========================================  =====================  ===  ======

Why (each row's ``rationale`` in :data:`MESSAGE_SPECS` says the same):

- **meas**, device -> historian, estimation. QoS 1: every sample is wanted and the sequence number
  detects loss; a duplicate from QoS 1 redelivery is recognised by ``(device_id, seq)``, so QoS 2's
  four-way handshake is not worth its latency. Not retained: a retained sample would be served as if
  it were current long after the device stopped.
- **algo**, device or service -> the next level (hierarchical estimation, fault location). Like
  ``meas``; not retained because a stale result computed for an earlier topology is wrong, not late.
- **event**, device -> FLISR coordinator, operators. QoS 1: an alarm must arrive. Not retained: a
  late subscriber must not see an old alarm as a new one (current state lives in ``status``).
- **cmd**, platform -> device. QoS 1 with ``command_id`` so the device executes a redelivered command
  once; ``deadline_ns`` drops late ones. Never retained: a device reconnecting hours later must not
  switch because of a stale retained command.
- **ack**, device -> the commanding service. QoS 1, not retained: it answers one command.
- **config**, device catalog -> device. Retained: a device (re)connecting receives its current
  configuration at once; ``config_version`` lets it ignore an older one.
- **topology**, platform -> every device and service. Retained: the latest switch states are what a
  late subscriber needs; ``topology_version`` orders them.
- **committed**, historian -> device. Retained: a reconnecting device learns at once how far its
  data is durably stored and drops that part of its store-and-forward buffer. On grid_ops because it
  is device management and must not queue behind measurements.
- **status**, device (birth; death as MQTT last will, set per connection) -> catalog, everyone.
  Retained so that a late subscriber sees liveness at once. On **both** brokers: a device holds one
  connection per broker and each connection has its own last will, so each broker announces the
  death of the connection it lost; and subscribers of each broker see the birth in order with the
  data that follows it on that same connection, which is what sequence-number resets rely on.

Subscriptions use :class:`TopicFilter` built by the ``*_filter`` functions; several copies of a
service share the work with MQTT v5 shared subscriptions, :func:`shared` (``$share/{group}/...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final

from openfeeder.errors import MessagingError

__all__ = [
    "ID_PATTERN",
    "MAX_TOPIC_BYTES",
    "MESSAGE_SPECS",
    "TOPIC_PREFIX",
    "BrokerContext",
    "MessageClass",
    "MessageSpec",
    "ParsedTopic",
    "QoS",
    "Topic",
    "TopicFault",
    "TopicFilter",
    "ack_filter",
    "ack_topic",
    "algorithm_filter",
    "algorithm_topic",
    "all_filter",
    "command_filter",
    "command_topic",
    "committed_filter",
    "committed_topic",
    "config_filter",
    "config_topic",
    "event_filter",
    "event_topic",
    "filter_for",
    "measurement_filter",
    "measurement_topic",
    "parse_topic",
    "shared",
    "status_filter",
    "status_topic",
    "topic_for",
    "topology_filter",
    "topology_topic",
]

TOPIC_ROOT: Final = "openfeeder"
SCHEME_VERSION: Final = "v1"
TOPIC_PREFIX: Final = f"{TOPIC_ROOT}/{SCHEME_VERSION}"
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""Device ids, algorithm names and shared-subscription group names (``fullmatch``)."""
MAX_TOPIC_BYTES: Final = 65535
"""MQTT limit on a topic's UTF-8 length."""
SHARE_PREFIX: Final = "$share"


class MessageClass(StrEnum):
    """What a message is; its value is the topic level after ``openfeeder/v1``."""

    MEASUREMENT = "meas"
    EVENT = "event"
    COMMAND = "cmd"
    COMMAND_ACK = "ack"
    CONFIG = "config"
    STATUS = "status"
    ALGORITHM = "algo"
    TOPOLOGY = "topology"
    COMMITTED = "committed"


class BrokerContext(StrEnum):
    """The two brokers: grid operations (low latency, small) and monitoring (bulk data)."""

    GRID_OPS = "grid_ops"
    MONITORING = "monitoring"


class QoS(IntEnum):
    """MQTT quality of service levels."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class TopicFault(StrEnum):
    """Why a topic, filter or topic part was refused (``MessagingError.reason``)."""

    EMPTY = "empty"
    TOO_LONG = "too_long"
    NUL_CHARACTER = "nul_character"
    WILDCARD_IN_PUBLISH = "wildcard_in_publish"
    MISPLACED_WILDCARD = "misplaced_wildcard"
    EMPTY_LEVEL = "empty_level"
    RESERVED_PREFIX = "reserved_prefix"
    INVALID_DEVICE_ID = "invalid_device_id"
    INVALID_ALGORITHM = "invalid_algorithm"
    INVALID_GROUP = "invalid_group"
    OUTSIDE_SCHEME = "outside_scheme"


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """How one message class travels: topic shape, broker(s), QoS, retain flag, and why."""

    message_class: MessageClass
    contexts: tuple[BrokerContext, ...]
    qos: QoS
    retain: bool
    has_device: bool
    has_algorithm: bool
    rationale: str


def _spec(
    message_class: MessageClass,
    *contexts: BrokerContext,
    retain: bool,
    rationale: str,
    has_device: bool = True,
    has_algorithm: bool = False,
) -> tuple[MessageClass, MessageSpec]:
    spec = MessageSpec(
        message_class=message_class,
        contexts=contexts,
        qos=QoS.AT_LEAST_ONCE,
        retain=retain,
        has_device=has_device,
        has_algorithm=has_algorithm,
        rationale=rationale,
    )
    return message_class, spec


_OPS = BrokerContext.GRID_OPS
_MON = BrokerContext.MONITORING

MESSAGE_SPECS: Final[Mapping[MessageClass, MessageSpec]] = MappingProxyType(
    dict(
        [
            _spec(
                MessageClass.MEASUREMENT,
                _MON,
                retain=False,
                rationale="every sample wanted, seq detects loss and duplicates; a retained sample "
                "would pose as current",
            ),
            _spec(
                MessageClass.ALGORITHM,
                _MON,
                retain=False,
                has_algorithm=True,
                rationale="like measurements; a stale result from an earlier topology is wrong",
            ),
            _spec(
                MessageClass.EVENT,
                _OPS,
                retain=False,
                rationale="an alarm must arrive; a retained alarm would be replayed as new",
            ),
            _spec(
                MessageClass.COMMAND,
                _OPS,
                retain=False,
                rationale="at least once, deduplicated by command_id; never retained so a device "
                "reconnecting later does not act on a stale command",
            ),
            _spec(
                MessageClass.COMMAND_ACK,
                _OPS,
                retain=False,
                rationale="answers one command",
            ),
            _spec(
                MessageClass.CONFIG,
                _OPS,
                retain=True,
                rationale="a (re)connecting device gets its current configuration at once",
            ),
            _spec(
                MessageClass.TOPOLOGY,
                _OPS,
                retain=True,
                has_device=False,
                rationale="a late subscriber needs the latest switch states",
            ),
            _spec(
                MessageClass.COMMITTED,
                _OPS,
                retain=True,
                rationale="a reconnecting device learns at once what it may drop from its buffer",
            ),
            _spec(
                MessageClass.STATUS,
                _OPS,
                _MON,
                retain=True,
                rationale="late subscribers see liveness; one last will per broker connection",
            ),
        ]
    )
)


def _fail(
    message: str, *, topic: str, reason: TopicFault, field: str | None = None
) -> MessagingError:
    return MessagingError(f"{topic!r}: {message}", topic=topic, reason=reason, field=field)


def _check_common(value: str) -> None:
    if not value:
        raise _fail("topic is empty", topic=value, reason=TopicFault.EMPTY)
    if len(value.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise _fail(
            f"topic is longer than {MAX_TOPIC_BYTES} bytes", topic=value, reason=TopicFault.TOO_LONG
        )
    if "\x00" in value:
        raise _fail("topic contains a NUL character", topic=value, reason=TopicFault.NUL_CHARACTER)
    if "" in value.split("/"):
        raise _fail(
            "topic has an empty level (leading, trailing or double '/')",
            topic=value,
            reason=TopicFault.EMPTY_LEVEL,
        )


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic name to publish to, valid by construction.

    Raises :class:`MessagingError` for an empty topic or level, a ``+`` or ``#`` wildcard, a NUL
    character, a ``$`` prefix (reserved for the broker) or more than 65535 bytes.
    """

    value: str

    def __post_init__(self) -> None:
        _check_common(self.value)
        if "+" in self.value or "#" in self.value:
            raise _fail(
                "wildcards '+' and '#' are not allowed in a publish topic",
                topic=self.value,
                reason=TopicFault.WILDCARD_IN_PUBLISH,
            )
        if self.value.startswith("$"):
            raise _fail(
                "topics starting with '$' are reserved for the broker",
                topic=self.value,
                reason=TopicFault.RESERVED_PREFIX,
            )

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A subscription filter, valid by construction; may be an MQTT v5 shared subscription.

    ``+`` must fill a whole level, ``#`` must be the whole last level, no level may be empty. A shared filter is
    ``$share/{group}/{filter}``; ``group`` and ``inner`` give its parts (``group`` is None otherwise).
    """

    value: str

    def __post_init__(self) -> None:
        _check_common(self.value)
        levels = self.value.split("/")
        if levels[0] == SHARE_PREFIX:
            if len(levels) < 3:
                raise _fail(
                    "a shared subscription is '$share/{group}/{filter}'",
                    topic=self.value,
                    reason=TopicFault.INVALID_GROUP,
                    field="group",
                )
            _check_id(levels[1], topic=self.value, reason=TopicFault.INVALID_GROUP, field="group")
            levels = levels[2:]
        last = len(levels) - 1
        for index, level in enumerate(levels):
            bad_hash = "#" in level and (level != "#" or index != last)
            bad_plus = "+" in level and level != "+"
            if bad_hash or bad_plus:
                raise _fail(
                    f"wildcard must fill a whole level ('#' only as the last one): {level!r}",
                    topic=self.value,
                    reason=TopicFault.MISPLACED_WILDCARD,
                )

    def __str__(self) -> str:
        return self.value

    @property
    def group(self) -> str | None:
        """The shared-subscription group, or None for an ordinary filter."""
        if self.value.startswith(f"{SHARE_PREFIX}/"):
            return self.value.split("/", 2)[1]
        return None

    @property
    def inner(self) -> str:
        """The filter without a ``$share/{group}/`` prefix (what topics are matched against)."""
        if self.group is None:
            return self.value
        return self.value.split("/", 2)[2]

    def matches(self, topic: Topic | str) -> bool:
        """Whether a message published on ``topic`` is delivered to this subscription."""
        name = str(topic)
        filter_levels = self.inner.split("/")
        topic_levels = name.split("/")
        if name.startswith("$") and filter_levels[0] in ("+", "#"):
            return False  # MQTT: wildcards at the first level never match broker ('$') topics
        for index, level in enumerate(filter_levels):
            if level == "#":
                return True
            if index >= len(topic_levels):
                return False
            if level == "+":
                continue
            if level != topic_levels[index]:
                return False
        return len(filter_levels) == len(topic_levels)


def _check_id(value: str, *, topic: str, reason: TopicFault, field: str) -> None:
    if ID_PATTERN.fullmatch(value) is None:
        raise _fail(
            f"{field} {value!r} must match [A-Za-z0-9_.-]{{1,64}}",
            topic=topic,
            reason=reason,
            field=field,
        )


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """One address in the scheme: message class, device and (for ``algo``) algorithm.

    Validates itself: the device id and algorithm name must be present exactly when the class has
    them and match ``[A-Za-z0-9_.-]{1,64}``.
    """

    message_class: MessageClass
    device_id: str | None = None
    algorithm: str | None = None

    def __post_init__(self) -> None:
        spec = MESSAGE_SPECS[self.message_class]
        parts = (TOPIC_PREFIX, self.message_class, self.device_id, self.algorithm)
        where = "/".join(part for part in parts if part is not None)
        _check_level(
            self.device_id,
            needed=spec.has_device,
            what="a device id",
            message_class=self.message_class,
            topic=where,
            reason=TopicFault.INVALID_DEVICE_ID,
            field="device_id",
        )
        _check_level(
            self.algorithm,
            needed=spec.has_algorithm,
            what="an algorithm name",
            message_class=self.message_class,
            topic=where,
            reason=TopicFault.INVALID_ALGORITHM,
            field="algorithm",
        )

    @property
    def spec(self) -> MessageSpec:
        """Broker contexts, QoS and retain flag of this topic's message class."""
        return MESSAGE_SPECS[self.message_class]

    @property
    def topic(self) -> Topic:
        """The topic name to publish on."""
        levels = [TOPIC_PREFIX, str(self.message_class)]
        if self.device_id is not None:
            levels.append(self.device_id)
        if self.algorithm is not None:
            levels.append(self.algorithm)
        return Topic("/".join(levels))


def parse_topic(topic: Topic | str) -> ParsedTopic:
    """Read a topic name back into its parts; ``MessagingError`` if it is outside the scheme."""
    value = topic.value if isinstance(topic, Topic) else Topic(topic).value
    levels = value.split("/")
    if levels[:2] != [TOPIC_ROOT, SCHEME_VERSION] or len(levels) < 3:
        raise _fail(
            f"topic is not under '{TOPIC_PREFIX}/'", topic=value, reason=TopicFault.OUTSIDE_SCHEME
        )
    try:
        message_class = MessageClass(levels[2])
    except ValueError as err:
        raise _fail(
            f"unknown message class {levels[2]!r}",
            topic=value,
            reason=TopicFault.OUTSIDE_SCHEME,
            field="message_class",
        ) from err
    spec = MESSAGE_SPECS[message_class]
    expected = 3 + int(spec.has_device) + int(spec.has_algorithm)
    if len(levels) != expected:
        raise _fail(
            f"'{message_class}' topics have {expected} levels, not {len(levels)}",
            topic=value,
            reason=TopicFault.OUTSIDE_SCHEME,
        )
    device_id = levels[3] if spec.has_device else None
    algorithm = levels[4] if spec.has_algorithm else None
    return ParsedTopic(message_class, device_id, algorithm)


# --- publish topics ---------------------------------------------------------------------------


def topic_for(
    message_class: MessageClass, *, device_id: str | None = None, algorithm: str | None = None
) -> Topic:
    """The topic for a message of ``message_class`` (about ``device_id``, from ``algorithm``)."""
    return ParsedTopic(message_class, device_id, algorithm).topic


def measurement_topic(device_id: str) -> Topic:
    return topic_for(MessageClass.MEASUREMENT, device_id=device_id)


def event_topic(device_id: str) -> Topic:
    return topic_for(MessageClass.EVENT, device_id=device_id)


def command_topic(device_id: str) -> Topic:
    return topic_for(MessageClass.COMMAND, device_id=device_id)


def ack_topic(device_id: str) -> Topic:
    return topic_for(MessageClass.COMMAND_ACK, device_id=device_id)


def config_topic(device_id: str) -> Topic:
    return topic_for(MessageClass.CONFIG, device_id=device_id)


def status_topic(device_id: str) -> Topic:
    return topic_for(MessageClass.STATUS, device_id=device_id)


def algorithm_topic(device_id: str, algorithm: str) -> Topic:
    return topic_for(MessageClass.ALGORITHM, device_id=device_id, algorithm=algorithm)


def topology_topic() -> Topic:
    return topic_for(MessageClass.TOPOLOGY)


def committed_topic(device_id: str) -> Topic:
    return topic_for(MessageClass.COMMITTED, device_id=device_id)


# --- subscription filters ---------------------------------------------------------------------


def filter_for(
    message_class: MessageClass, *, device_id: str | None = None, algorithm: str | None = None
) -> TopicFilter:
    """Filter for ``message_class``; a device id or algorithm left as None matches any (``+``)."""
    spec = MESSAGE_SPECS[message_class]
    if device_id is not None and not spec.has_device:
        raise _fail(
            f"'{message_class}' topics have no device id",
            topic=f"{TOPIC_PREFIX}/{message_class}",
            reason=TopicFault.INVALID_DEVICE_ID,
            field="device_id",
        )
    if algorithm is not None and not spec.has_algorithm:
        raise _fail(
            f"'{message_class}' topics have no algorithm name",
            topic=f"{TOPIC_PREFIX}/{message_class}",
            reason=TopicFault.INVALID_ALGORITHM,
            field="algorithm",
        )
    levels = [TOPIC_PREFIX, str(message_class)]
    if spec.has_device:
        if device_id is not None:
            _check_id(
                device_id,
                topic="/".join([*levels, device_id]),
                reason=TopicFault.INVALID_DEVICE_ID,
                field="device_id",
            )
        levels.append("+" if device_id is None else device_id)
    if spec.has_algorithm:
        if algorithm is not None:
            _check_id(
                algorithm,
                topic="/".join([*levels, algorithm]),
                reason=TopicFault.INVALID_ALGORITHM,
                field="algorithm",
            )
        levels.append("+" if algorithm is None else algorithm)
    return TopicFilter("/".join(levels))


def measurement_filter(device_id: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.MEASUREMENT, device_id=device_id)


def event_filter(device_id: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.EVENT, device_id=device_id)


def command_filter(device_id: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.COMMAND, device_id=device_id)


def ack_filter(device_id: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.COMMAND_ACK, device_id=device_id)


def config_filter(device_id: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.CONFIG, device_id=device_id)


def status_filter(device_id: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.STATUS, device_id=device_id)


def algorithm_filter(device_id: str | None = None, algorithm: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.ALGORITHM, device_id=device_id, algorithm=algorithm)


def topology_filter() -> TopicFilter:
    return filter_for(MessageClass.TOPOLOGY)


def committed_filter(device_id: str | None = None) -> TopicFilter:
    return filter_for(MessageClass.COMMITTED, device_id=device_id)


def all_filter() -> TopicFilter:
    """Everything in the scheme (``openfeeder/v1/#``), e.g. for a bridge or a recorder."""
    return TopicFilter(f"{TOPIC_PREFIX}/#")


def shared(topic_filter: TopicFilter | str, group: str) -> TopicFilter:
    """MQTT v5 shared subscription ``$share/{group}/{filter}``: each message goes to one member."""
    inner = topic_filter if isinstance(topic_filter, TopicFilter) else TopicFilter(topic_filter)
    if inner.group is not None:
        raise _fail(
            "filter is already a shared subscription",
            topic=inner.value,
            reason=TopicFault.INVALID_GROUP,
            field="group",
        )
    _check_id(group, topic=inner.value, reason=TopicFault.INVALID_GROUP, field="group")
    return TopicFilter(f"{SHARE_PREFIX}/{group}/{inner.value}")


def _check_level(
    value: str | None,
    *,
    needed: bool,
    what: str,
    message_class: MessageClass,
    topic: str,
    reason: TopicFault,
    field: str,
) -> None:
    """A device or algorithm level must be present and valid where the class has it, else absent."""
    if needed and value is None:
        raise _fail(
            f"'{message_class}' topics need {what}", topic=topic, reason=reason, field=field
        )
    if not needed and value is not None:
        raise _fail(
            f"'{message_class}' topics have no {what.split(' ', 1)[1]}",
            topic=topic,
            reason=reason,
            field=field,
        )
    if value is not None:
        _check_id(value, topic=topic, reason=reason, field=field)
