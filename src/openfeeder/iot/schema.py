"""Versioned MQTT payload schemas, their codec, and the subscriber's defences against bad input.

One pydantic model per :class:`~openfeeder.iot.topics.MessageClass`; every publisher and subscriber
uses these, so the wire format is defined here and nowhere else. Payloads are compact UTF-8 JSON.

Every payload carries the envelope:

- ``schema_version``: :data:`SCHEMA_VERSION`; a subscriber accepts exactly the versions it knows.
- ``device_id``: the device the message is about, the same as the topic's device level (for
  ``topology``, which has no device level, the id of the publishing service).
- ``seq``: per topic, counting from 0 at each birth of the publisher (each new session), so that
  :class:`~openfeeder.iot.sequence.SequenceTracker` can tell loss, duplicates, reordering and restarts apart.
  Measurements are the exception: a meter keeps counting across sessions and restarts (the counter
  is stored with its store-and-forward buffer), because the historian stores each reading once under
  ``(device_id, seq)`` and a meter re-sends what the historian has not yet committed.
- ``t_ns``: UTC nanoseconds since the epoch when the message's content was produced.

Values travel as :class:`Reading` (channel, value, unit, quality); the quality flag is required on
every one. Unknown fields are rejected (``extra="forbid"``): a field is added with a new schema
version, not silently. Models are frozen; their dict fields must be treated as read-only too.

:func:`decode` parses strictly (no ``"5"`` for ``5``, no ``true`` for ``1``) and raises
:class:`~openfeeder.errors.MessagingError` with a :class:`RejectReason`; :class:`RejectCounter`
wraps it for subscribers, which must never crash on bad input.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, ClassVar, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, from_json

from openfeeder.errors import MessagingError
from openfeeder.iot.topics import ID_PATTERN, MessageClass, Topic, parse_topic, topic_for

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PAYLOAD_MODELS",
    "SCHEMA_VERSION",
    "AckStatus",
    "AlgorithmOutput",
    "Command",
    "CommandAck",
    "CommandAction",
    "Committed",
    "ConfigChange",
    "Envelope",
    "Event",
    "LinkState",
    "Measurement",
    "Payload",
    "Quality",
    "Reading",
    "RejectCounter",
    "RejectReason",
    "Severity",
    "Status",
    "SwitchPosition",
    "TopologyChange",
    "Unit",
    "decode",
    "encode",
    "publish_topic",
]

_LOG = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 65536
"""Default size limit, in bytes, for encoding and decoding one payload."""
_INT64_MAX: Final = 2**63 - 1  # seq and t_ns are stored as PostgreSQL/SQLite 64-bit integers

DeviceId = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]
Token = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""Lower snake-case name: channels, event kinds, parameter names, capabilities."""
CommandId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
NonNegativeInt64 = Annotated[int, Field(ge=0, le=_INT64_MAX)]
ShortText = Annotated[str, StringConstraints(max_length=256)]
LongText = Annotated[str, StringConstraints(max_length=2048)]
ParameterValue = bool | int | float | str


class Quality(StrEnum):
    """How far a value can be trusted (after IEC 61850 validity, plus substitution)."""

    GOOD = "good"
    SUSPECT = "suspect"  # questionable: out of range, old, or from a device in test
    INVALID = "invalid"  # must not be used; the value is kept only for diagnosis
    SUBSTITUTED = "substituted"  # not measured: entered by an operator or estimated


class Unit(StrEnum):
    """Units a reading may carry; the value is the symbol on the wire."""

    V = "V"
    A = "A"
    W = "W"
    VAR = "var"
    VA = "VA"
    HZ = "Hz"
    PU = "pu"
    DEG = "deg"
    WH = "Wh"
    VARH = "varh"
    M = "m"  # distances, e.g. a fault location's distance from the first bus of the pair
    ONE = "1"  # dimensionless: power factor, ratios, counts


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"


class CommandAction(StrEnum):
    OPEN = "open"  # open a switch
    CLOSE = "close"  # close a switch
    SET = "set"  # write set-points given in ``parameters`` (e.g. ``p_mw``, ``tap_pos``)
    RESET = "reset"  # reset latched state (fault indicators, protection targets)
    BLOCK = "block"  # block automatic operation (reclosing, local control)
    UNBLOCK = "unblock"


class AckStatus(StrEnum):
    ACCEPTED = "accepted"  # checked and started; a final DONE or FAILED follows
    DONE = "done"
    FAILED = "failed"  # tried and did not succeed
    REJECTED = "rejected"  # not tried: invalid, expired (past deadline_ns) or not permitted


class LinkState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class SwitchPosition(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Reading(_Frozen):
    """One value with its unit and quality, e.g. ``u_a`` in V or ``p`` in W."""

    channel: Token
    value: float
    unit: Unit
    quality: Quality


def _unique_channels(readings: tuple[Reading, ...]) -> tuple[Reading, ...]:
    seen: set[str] = set()
    for reading in readings:
        if reading.channel in seen:
            raise PydanticCustomError(
                "duplicate_channel",
                "channel '{channel}' appears twice",
                {"channel": reading.channel},
            )
        seen.add(reading.channel)
    return readings


Readings = Annotated[tuple[Reading, ...], Field(max_length=1024), AfterValidator(_unique_channels)]
"""Readings of one message: at most 1024, each channel once."""


class Envelope(_Frozen):
    """Fields every payload carries; the base of all payload models."""

    message_class: ClassVar[MessageClass]

    schema_version: StrictInt = SCHEMA_VERSION
    device_id: DeviceId
    seq: NonNegativeInt64
    t_ns: NonNegativeInt64

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise PydanticCustomError(
                "unknown_schema_version",
                "schema version {version} is not supported (this build reads {supported})",
                {"version": value, "supported": SCHEMA_VERSION},
            )
        return value


class Measurement(Envelope):
    message_class: ClassVar[MessageClass] = MessageClass.MEASUREMENT

    values: Annotated[Readings, Field(min_length=1)]


class Event(Envelope):
    """Something happened: a fault detected, a protection trip, a limit violation."""

    message_class: ClassVar[MessageClass] = MessageClass.EVENT

    kind: Token
    severity: Severity
    message: LongText
    values: Readings = ()


class Command(Envelope):
    """An instruction to the device; ``target_id`` is the grid-model component it acts on."""

    message_class: ClassVar[MessageClass] = MessageClass.COMMAND

    command_id: CommandId
    action: CommandAction
    target_id: NonNegativeInt64
    parameters: dict[Token, ParameterValue] = Field(default_factory=dict)
    deadline_ns: NonNegativeInt64 | None = None

    @model_validator(mode="after")
    def _set_has_parameters(self) -> Command:
        if self.action is CommandAction.SET and not self.parameters:
            raise PydanticCustomError("missing_parameters", "action 'set' needs parameters")
        return self


class CommandAck(Envelope):
    message_class: ClassVar[MessageClass] = MessageClass.COMMAND_ACK

    command_id: CommandId
    status: AckStatus
    detail: LongText = ""


def _finite_json(value: JsonValue) -> JsonValue:
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "settings must hold finite numbers")
    if isinstance(value, list):
        for item in value:
            _finite_json(item)
    elif isinstance(value, dict):
        for item in value.values():
            _finite_json(item)
    return value


class ConfigChange(Envelope):
    """The device's complete configuration (retained), identified by ``config_version``."""

    message_class: ClassVar[MessageClass] = MessageClass.CONFIG

    config_version: NonNegativeInt64
    settings: dict[str, Annotated[JsonValue, AfterValidator(_finite_json)]]


class Status(Envelope):
    """Birth (ONLINE) or death (OFFLINE, also the MQTT last will) of a device's session."""

    message_class: ClassVar[MessageClass] = MessageClass.STATUS

    state: LinkState
    reason: ShortText = ""
    firmware: ShortText = ""
    capabilities: Annotated[tuple[Token, ...], Field(max_length=256)] = ()


class AlgorithmOutput(Envelope):
    message_class: ClassVar[MessageClass] = MessageClass.ALGORITHM

    algorithm: DeviceId
    algorithm_version: ShortText
    outputs: Annotated[Readings, Field(min_length=1)]


_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def _switch_id_key(value: object) -> object:
    # JSON object keys are strings; accept only canonical decimal ones ("12", not "012" or " 12").
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    return value


SwitchId = Annotated[int, BeforeValidator(_switch_id_key), Field(ge=0, le=_INT64_MAX)]


class TopologyChange(Envelope):
    """The complete switch states after a change (not a delta: the retained message is enough)."""

    message_class: ClassVar[MessageClass] = MessageClass.TOPOLOGY

    topology_version: NonNegativeInt64
    switch_states: dict[SwitchId, SwitchPosition]
    reason: ShortText = ""


class Committed(Envelope):
    """The historian has durably stored the device's measurements up to ``high_water_seq``."""

    message_class: ClassVar[MessageClass] = MessageClass.COMMITTED

    high_water_seq: NonNegativeInt64


Payload = (
    Measurement
    | Event
    | Command
    | CommandAck
    | ConfigChange
    | Status
    | AlgorithmOutput
    | TopologyChange
    | Committed
)

PAYLOAD_MODELS: Final[Mapping[MessageClass, type[Payload]]] = MappingProxyType(
    {
        model.message_class: model
        for model in (
            Measurement,
            Event,
            Command,
            CommandAck,
            ConfigChange,
            Status,
            AlgorithmOutput,
            TopologyChange,
            Committed,
        )
    }
)


# --- codec ------------------------------------------------------------------------------------


class RejectReason(StrEnum):
    """Why :func:`decode` refused a message (``MessagingError.reason``)."""

    OVERSIZE = "oversize"
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    INVALID_PAYLOAD = "invalid_payload"
    DEVICE_MISMATCH = "device_mismatch"
    UNKNOWN_TOPIC = "unknown_topic"


def publish_topic(payload: Payload) -> Topic:
    """The topic ``payload`` is published on (its class, device and, for outputs, algorithm)."""
    if isinstance(payload, TopologyChange):
        return topic_for(MessageClass.TOPOLOGY)
    algorithm = payload.algorithm if isinstance(payload, AlgorithmOutput) else None
    return topic_for(payload.message_class, device_id=payload.device_id, algorithm=algorithm)


def encode(payload: Payload, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Compact UTF-8 JSON; ``MessagingError`` (OVERSIZE) rather than publish what subscribers refuse."""
    data = payload.model_dump_json().encode("utf-8")
    if len(data) > max_bytes:
        topic = str(publish_topic(payload))
        raise MessagingError(
            f"{topic}: payload is {len(data)} bytes, more than {max_bytes}",
            topic=topic,
            reason=RejectReason.OVERSIZE,
        )
    return data


def _reject(topic: str, reason: RejectReason, detail: str, *, field: str | None) -> MessagingError:
    where = f"{topic}: field '{field}'" if field else topic
    return MessagingError(f"{where}: {detail}", topic=topic, reason=reason, field=field)


def _field_of(loc: tuple[int | str, ...]) -> str | None:
    return ".".join(str(part) for part in loc) or None


def decode(
    message_class: MessageClass,
    data: bytes,
    *,
    topic: Topic | str,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> Payload:
    """Parse and validate a payload received on ``topic``; ``MessagingError`` names what failed.

    Checks, in order: the topic is in the scheme and of ``message_class`` (UNKNOWN_TOPIC), the size
    (OVERSIZE), the JSON (MALFORMED_JSON), the schema version (UNKNOWN_SCHEMA_VERSION), the fields
    (INVALID_PAYLOAD), and that the payload's device id is the topic's (DEVICE_MISMATCH).
    """
    name = str(topic)
    try:
        parsed = parse_topic(name)
    except MessagingError as err:
        raise MessagingError(
            str(err), topic=name, reason=RejectReason.UNKNOWN_TOPIC, field="topic"
        ) from err
    if parsed.message_class != message_class:
        raise _reject(
            name,
            RejectReason.UNKNOWN_TOPIC,
            f"topic carries '{parsed.message_class}' messages, not '{message_class}'",
            field="topic",
        )
    if len(data) > max_bytes:
        raise _reject(
            name,
            RejectReason.OVERSIZE,
            f"payload is {len(data)} bytes, more than {max_bytes}",
            field=None,
        )
    model = PAYLOAD_MODELS[message_class]
    try:
        payload = model.model_validate_json(data, strict=True)
    except ValidationError as err:
        raise _validation_reject(name, err, data) from err
    if "schema_version" not in payload.model_fields_set:
        # In Python the version defaults to the current one; on the wire it must be stated.
        raise _missing_version(name)
    if parsed.device_id is not None and payload.device_id != parsed.device_id:
        raise _reject(
            name,
            RejectReason.DEVICE_MISMATCH,
            f"payload is about {payload.device_id!r}, the topic about {parsed.device_id!r}",
            field="device_id",
        )
    if isinstance(payload, AlgorithmOutput) and payload.algorithm != parsed.algorithm:
        raise _reject(
            name,
            RejectReason.INVALID_PAYLOAD,
            f"payload is from algorithm {payload.algorithm!r}, the topic {parsed.algorithm!r}",
            field="algorithm",
        )
    return payload


def _missing_version(topic: str) -> MessagingError:
    return _reject(
        topic,
        RejectReason.UNKNOWN_SCHEMA_VERSION,
        "schema_version is missing",
        field="schema_version",
    )


def _validation_reject(topic: str, err: ValidationError, data: bytes) -> MessagingError:
    errors = err.errors(include_url=False)
    for error in errors:
        if error["type"] == "json_invalid":
            return _reject(topic, RejectReason.MALFORMED_JSON, error["msg"], field=None)
    for error in errors:
        if error["loc"][:1] == ("schema_version",):
            return _reject(
                topic, RejectReason.UNKNOWN_SCHEMA_VERSION, error["msg"], field="schema_version"
            )
    # A payload without a version is reported as such, whatever else is wrong with it (parsing
    # twice only on this error path keeps the accepting path to one parse).
    try:
        document = from_json(data)
    except ValueError:  # not expected once the validator parsed it; fall through to the field error
        document = None
    if isinstance(document, dict) and "schema_version" not in document:
        return _missing_version(topic)
    first = errors[0]
    detail = first["msg"]
    if first["type"] == "model_type":
        detail = "payload must be a JSON object"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more problems)"
    return _reject(topic, RejectReason.INVALID_PAYLOAD, detail, field=_field_of(first["loc"]))


class RejectCounter:
    """Decodes without raising: counts each rejection by reason and logs one structured line.

    A subscriber calls :meth:`safe_decode` and skips None; ``counts`` feeds its health metrics.
    """

    def __init__(self, *, logger: logging.Logger | None = None) -> None:
        self._logger = logger if logger is not None else _LOG
        self._counts: Counter[RejectReason] = Counter()

    def safe_decode(
        self,
        message_class: MessageClass,
        data: bytes,
        *,
        topic: Topic | str,
        max_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> Payload | None:
        """:func:`decode`, or None (counted and logged) when the message is refused."""
        try:
            return decode(message_class, data, topic=topic, max_bytes=max_bytes)
        except MessagingError as err:
            reason = RejectReason(err.reason)
            self._counts[reason] += 1
            self._logger.warning(
                "payload rejected reason=%s topic=%s field=%s size_bytes=%d: %s",
                reason,
                err.topic,
                err.field,
                len(data),
                err,
                extra={
                    "reason": str(reason),
                    "topic": err.topic,
                    "field": err.field,
                    "size_bytes": len(data),
                },
            )
            return None

    @property
    def counts(self) -> Mapping[RejectReason, int]:
        """Rejections so far by reason (a snapshot; reasons never seen are absent)."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())
