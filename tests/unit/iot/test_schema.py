"""Payload schemas, the codec and its reject reasons, the reject counter, the sequence tracker."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from pydantic import ValidationError

from openfeeder.errors import MessagingError
from openfeeder.iot.schema import (
    MAX_PAYLOAD_BYTES,
    PAYLOAD_MODELS,
    SCHEMA_VERSION,
    AckStatus,
    AlgorithmOutput,
    Command,
    CommandAck,
    CommandAction,
    Committed,
    ConfigChange,
    Event,
    LinkState,
    Measurement,
    Payload,
    Quality,
    Reading,
    RejectCounter,
    RejectReason,
    Severity,
    Status,
    SwitchPosition,
    TopologyChange,
    Unit,
    decode,
    encode,
    publish_topic,
)
from openfeeder.iot.sequence import SeqKind, SeqObservation, SequenceTracker
from openfeeder.iot.topics import MessageClass, measurement_topic

T0_NS = 1_700_000_000_000_000_000
MEAS_TOPIC = "openfeeder/v1/meas/m1"


def _reading(channel: str = "u_a", value: float = 230.4, unit: Unit = Unit.V) -> Reading:
    return Reading(channel=channel, value=value, unit=unit, quality=Quality.GOOD)


def _samples() -> dict[MessageClass, Payload]:
    env: dict[str, Any] = {"device_id": "m1", "seq": 7, "t_ns": T0_NS}
    return {
        MessageClass.MEASUREMENT: Measurement(
            **env,
            values=(
                _reading(),
                _reading("i_b", 12.5, Unit.A),
                Reading(channel="p", value=-3.0e3, unit=Unit.W, quality=Quality.SUSPECT),
                Reading(channel="f", value=50.01, unit=Unit.HZ, quality=Quality.SUBSTITUTED),
                Reading(channel="q", value=0.0, unit=Unit.VAR, quality=Quality.INVALID),
            ),
        ),
        MessageClass.EVENT: Event(
            **env,
            kind="fault_detected",
            severity=Severity.ALARM,
            message="overcurrent on phase b",
            values=(_reading("i_b", 812.0, Unit.A),),
        ),
        MessageClass.COMMAND: Command(
            **env,
            command_id="c-0001",
            action=CommandAction.SET,
            target_id=4021,
            parameters={"p_mw": 0.5, "tap_pos": 3, "enabled": True, "mode": "volt_var"},
            deadline_ns=T0_NS + 2_000_000_000,
        ),
        MessageClass.COMMAND_ACK: CommandAck(
            **env, command_id="c-0001", status=AckStatus.DONE, detail="tap at 3"
        ),
        MessageClass.CONFIG: ConfigChange(
            **env,
            config_version=12,
            settings={"period_ms": 1000, "algorithms": ["se-lv"], "limits": {"u_max_pu": 1.1}},
        ),
        MessageClass.STATUS: Status(
            **env,
            state=LinkState.ONLINE,
            reason="birth",
            firmware="3sma-2.1.0",
            capabilities=("meas", "floc"),
        ),
        MessageClass.ALGORITHM: AlgorithmOutput(
            **env,
            algorithm="floc",
            algorithm_version="1.2",
            outputs=(
                Reading(channel="fault_distance", value=412.0, unit=Unit.M, quality=Quality.GOOD),
            ),
        ),
        MessageClass.TOPOLOGY: TopologyChange(
            device_id="flisr",
            seq=3,
            t_ns=T0_NS,
            topology_version=5,
            switch_states={101: SwitchPosition.OPEN, 102: SwitchPosition.CLOSED},
            reason="fault isolated between 17 and 18",
        ),
        MessageClass.COMMITTED: Committed(**env, high_water_seq=6),
    }


SAMPLES = _samples()


def _wire(message_class: MessageClass, **changes: Any) -> bytes:
    """The sample of ``message_class`` as JSON, with fields replaced (or removed with ...)."""
    document = json.loads(encode(SAMPLES[message_class]))
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


def _reject(message_class: MessageClass, data: bytes, topic: str = MEAS_TOPIC) -> MessagingError:
    with pytest.raises(MessagingError) as info:
        decode(message_class, data, topic=topic)
    return info.value


# --- models and round trips -------------------------------------------------------------------


def test_every_message_class_has_a_model_and_a_sample() -> None:
    assert set(PAYLOAD_MODELS) == set(MessageClass) == set(SAMPLES)
    for message_class, model in PAYLOAD_MODELS.items():
        assert model.message_class == message_class
        assert isinstance(SAMPLES[message_class], model)


@pytest.mark.parametrize("message_class", list(MessageClass))
def test_round_trip(message_class: MessageClass) -> None:
    payload = SAMPLES[message_class]
    data = encode(payload)
    assert isinstance(data, bytes)
    decoded = decode(message_class, data, topic=publish_topic(payload))
    assert decoded == payload
    assert type(decoded) is type(payload)
    assert encode(decoded) == data


@pytest.mark.parametrize("message_class", list(MessageClass))
def test_encoding_is_compact_json_with_the_envelope(message_class: MessageClass) -> None:
    data = encode(SAMPLES[message_class])
    text = data.decode("utf-8")
    assert ", " not in text
    assert ": " not in text
    document = json.loads(text)
    assert document["schema_version"] == SCHEMA_VERSION == 1
    assert isinstance(document["seq"], int)
    assert document["t_ns"] == T0_NS


def test_wire_values_are_units_and_lowercase_codes() -> None:
    document = json.loads(encode(SAMPLES[MessageClass.MEASUREMENT]))
    assert document["values"][0] == {
        "channel": "u_a",
        "value": 230.4,
        "unit": "V",
        "quality": "good",
    }
    assert [v["unit"] for v in document["values"]] == ["V", "A", "W", "Hz", "var"]
    topology = json.loads(encode(SAMPLES[MessageClass.TOPOLOGY]))
    assert topology["switch_states"] == {"101": "open", "102": "closed"}


def test_command_parameters_keep_their_json_types() -> None:
    data = encode(SAMPLES[MessageClass.COMMAND])
    command = decode(MessageClass.COMMAND, data, topic="openfeeder/v1/cmd/m1")
    assert isinstance(command, Command)
    assert command.parameters == {"p_mw": 0.5, "tap_pos": 3, "enabled": True, "mode": "volt_var"}
    assert type(command.parameters["tap_pos"]) is int
    assert type(command.parameters["enabled"]) is bool


def test_publish_topic_of_each_payload() -> None:
    expected = {
        MessageClass.MEASUREMENT: "openfeeder/v1/meas/m1",
        MessageClass.EVENT: "openfeeder/v1/event/m1",
        MessageClass.COMMAND: "openfeeder/v1/cmd/m1",
        MessageClass.COMMAND_ACK: "openfeeder/v1/ack/m1",
        MessageClass.CONFIG: "openfeeder/v1/config/m1",
        MessageClass.STATUS: "openfeeder/v1/status/m1",
        MessageClass.ALGORITHM: "openfeeder/v1/algo/m1/floc",
        MessageClass.TOPOLOGY: "openfeeder/v1/topology",
        MessageClass.COMMITTED: "openfeeder/v1/committed/m1",
    }
    assert {c: str(publish_topic(p)) for c, p in SAMPLES.items()} == expected


def test_models_are_frozen() -> None:
    payload = SAMPLES[MessageClass.COMMITTED]
    with pytest.raises(ValidationError):
        payload.seq = 8


def test_quality_is_required_on_every_reading() -> None:
    with pytest.raises(ValidationError, match="quality"):
        Reading(channel="u_a", value=230.0, unit=Unit.V)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Measurement(device_id="m1", seq=0, t_ns=0, values=()), "values"),
        (
            lambda: Measurement(device_id="m1", seq=0, t_ns=0, values=(_reading(), _reading())),
            "appears twice",
        ),
        (lambda: Measurement(device_id="m/1", seq=0, t_ns=0, values=(_reading(),)), "device_id"),
        (lambda: Measurement(device_id="m1", seq=-1, t_ns=0, values=(_reading(),)), "seq"),
        (lambda: Measurement(device_id="m1", seq=0, t_ns=-5, values=(_reading(),)), "t_ns"),
        (lambda: Committed(device_id="m1", seq=2**63, t_ns=0, high_water_seq=0), "seq"),
        (lambda: _reading(value=float("nan")), "finite"),
        (lambda: _reading(channel="U_A"), "channel"),
        (
            lambda: Command(
                device_id="m1",
                seq=0,
                t_ns=0,
                command_id="c1",
                action=CommandAction.SET,
                target_id=1,
            ),
            "parameters",
        ),
        (
            lambda: ConfigChange(
                device_id="m1", seq=0, t_ns=0, config_version=1, settings={"x": [float("inf")]}
            ),
            "finite",
        ),
        (
            lambda: Status(device_id="m1", seq=0, t_ns=0, state=LinkState.ONLINE, extra=1),  # type: ignore[call-arg]
            "extra",
        ),
    ],
)
def test_models_refuse_invalid_values(build: Any, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        build()


# --- reject reasons ---------------------------------------------------------------------------


def test_oversize() -> None:
    data = encode(SAMPLES[MessageClass.MEASUREMENT])
    with pytest.raises(MessagingError) as info:
        decode(MessageClass.MEASUREMENT, data, topic=MEAS_TOPIC, max_bytes=len(data) - 1)
    assert info.value.reason == RejectReason.OVERSIZE
    assert info.value.topic == MEAS_TOPIC
    assert MEAS_TOPIC in str(info.value)
    assert decode(MessageClass.MEASUREMENT, data, topic=MEAS_TOPIC, max_bytes=len(data))
    big = b" " * (MAX_PAYLOAD_BYTES + 1)
    assert _reject(MessageClass.MEASUREMENT, big).reason == RejectReason.OVERSIZE


def test_encode_refuses_what_subscribers_would_refuse() -> None:
    with pytest.raises(MessagingError) as info:
        encode(SAMPLES[MessageClass.MEASUREMENT], max_bytes=10)
    assert info.value.reason == RejectReason.OVERSIZE
    assert info.value.topic == MEAS_TOPIC


@pytest.mark.parametrize("data", [b"{", b"", b"\xff\xfe{}", b"{'a': 1}", b"[" * 10_000, b"nul"])
def test_malformed_json(data: bytes) -> None:
    err = _reject(MessageClass.MEASUREMENT, data)
    assert err.reason == RejectReason.MALFORMED_JSON
    assert MEAS_TOPIC in str(err)


@pytest.mark.parametrize("version", [2, 0, "1", True, 1.0, None, ...])
def test_unknown_schema_version(version: Any) -> None:
    err = _reject(MessageClass.MEASUREMENT, _wire(MessageClass.MEASUREMENT, schema_version=version))
    assert err.reason == RejectReason.UNKNOWN_SCHEMA_VERSION
    assert err.field == "schema_version"
    assert "schema_version" in str(err)


def test_unknown_schema_version_wins_over_other_field_errors() -> None:
    future = _wire(MessageClass.MEASUREMENT, schema_version=2, values=..., readings=[])
    assert _reject(MessageClass.MEASUREMENT, future).reason == RejectReason.UNKNOWN_SCHEMA_VERSION
    unversioned = _wire(MessageClass.MEASUREMENT, schema_version=..., values=...)
    err = _reject(MessageClass.MEASUREMENT, unversioned)
    assert err.reason == RejectReason.UNKNOWN_SCHEMA_VERSION


_BAD_READING = {"channel": "u_a", "value": 230.0, "unit": "kV", "quality": "good"}


@pytest.mark.parametrize(
    ("message_class", "changes", "field"),
    [
        (MessageClass.MEASUREMENT, {"values": [_BAD_READING]}, "values.0.unit"),
        (
            MessageClass.MEASUREMENT,
            {"values": [{"channel": "u_a", "value": 1.0, "unit": "V"}]},
            "values.0.quality",
        ),
        (
            MessageClass.MEASUREMENT,
            {"values": [{"channel": "u_a", "value": "1.0", "unit": "V", "quality": "good"}]},
            "values.0.value",
        ),
        (
            MessageClass.MEASUREMENT,
            {"values": [{"channel": "u_a", "value": 1.0, "unit": "V", "quality": "GOOD"}]},
            "values.0.quality",
        ),
        (MessageClass.MEASUREMENT, {"values": []}, "values"),
        (MessageClass.MEASUREMENT, {"seq": "7"}, "seq"),
        (MessageClass.MEASUREMENT, {"seq": -1}, "seq"),
        (MessageClass.MEASUREMENT, {"seq": 7.0}, "seq"),
        (MessageClass.MEASUREMENT, {"t_ns": ...}, "t_ns"),
        (MessageClass.MEASUREMENT, {"colour": "red"}, "colour"),
        (MessageClass.EVENT, {"severity": "panic"}, "severity"),
        (MessageClass.COMMAND, {"action": "explode"}, "action"),
        (MessageClass.COMMAND, {"parameters": {}}, None),
        (MessageClass.COMMAND, {"target_id": "4021"}, "target_id"),
        (MessageClass.COMMAND_ACK, {"status": "maybe"}, "status"),
        (MessageClass.CONFIG, {"config_version": -1}, "config_version"),
        (MessageClass.STATUS, {"state": "sleeping"}, "state"),
        (MessageClass.ALGORITHM, {"outputs": []}, "outputs"),
        (MessageClass.TOPOLOGY, {"switch_states": {"012": "open"}}, "switch_states.012.[key]"),
        (MessageClass.TOPOLOGY, {"switch_states": {"-1": "open"}}, "switch_states.-1.[key]"),
        (MessageClass.TOPOLOGY, {"switch_states": {"5": "ajar"}}, "switch_states.5"),
        (MessageClass.COMMITTED, {"high_water_seq": None}, "high_water_seq"),
    ],
)
def test_invalid_payload_names_topic_and_field(
    message_class: MessageClass, changes: dict[str, Any], field: str | None
) -> None:
    topic = str(publish_topic(SAMPLES[message_class]))
    err = _reject(message_class, _wire(message_class, **changes), topic=topic)
    assert err.reason == RejectReason.INVALID_PAYLOAD
    assert err.topic == topic
    assert err.field == field
    assert topic in str(err)
    if field is not None:
        assert f"'{field}'" in str(err)


def test_invalid_payload_for_a_non_object() -> None:
    err = _reject(MessageClass.MEASUREMENT, b"[1, 2]")
    assert err.reason == RejectReason.INVALID_PAYLOAD
    assert "JSON object" in str(err)


def test_nan_is_not_accepted_from_the_wire() -> None:
    data = _wire(MessageClass.MEASUREMENT).replace(b"230.4", b"NaN")
    err = _reject(MessageClass.MEASUREMENT, data)
    assert err.reason == RejectReason.INVALID_PAYLOAD
    assert err.field == "values.0.value"


def test_device_mismatch() -> None:
    data = _wire(MessageClass.MEASUREMENT, device_id="m2")
    err = _reject(MessageClass.MEASUREMENT, data, topic=MEAS_TOPIC)
    assert err.reason == RejectReason.DEVICE_MISMATCH
    assert err.field == "device_id"
    assert "'m2'" in str(err)
    assert "'m1'" in str(err)


def test_topology_has_no_device_to_mismatch() -> None:
    data = _wire(MessageClass.TOPOLOGY, device_id="scheduler")
    decoded = decode(MessageClass.TOPOLOGY, data, topic="openfeeder/v1/topology")
    assert decoded.device_id == "scheduler"


def test_algorithm_must_match_the_topic() -> None:
    data = encode(SAMPLES[MessageClass.ALGORITHM])
    err = _reject(MessageClass.ALGORITHM, data, topic="openfeeder/v1/algo/m1/se-lv")
    assert err.reason == RejectReason.INVALID_PAYLOAD
    assert err.field == "algorithm"


@pytest.mark.parametrize(
    "topic",
    [
        "openfeeder/v1/event/m1",  # another class than asked for
        "openfeeder/v2/meas/m1",
        "elsewhere/meas/m1",
        "openfeeder/v1/meas/+",
        "openfeeder/v1/meas/m1/extra",
    ],
)
def test_unknown_topic(topic: str) -> None:
    err = _reject(MessageClass.MEASUREMENT, encode(SAMPLES[MessageClass.MEASUREMENT]), topic=topic)
    assert err.reason == RejectReason.UNKNOWN_TOPIC
    assert err.topic == topic
    assert err.field == "topic"
    assert topic in str(err)


def test_decode_accepts_a_topic_object() -> None:
    data = encode(SAMPLES[MessageClass.MEASUREMENT])
    assert decode(MessageClass.MEASUREMENT, data, topic=measurement_topic("m1"))


# --- reject counter ---------------------------------------------------------------------------


def test_reject_counter_counts_by_reason_and_logs_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = RejectCounter()
    good = encode(SAMPLES[MessageClass.MEASUREMENT])
    caplog.set_level(logging.WARNING, logger="openfeeder.iot.schema")

    assert (
        counter.safe_decode(MessageClass.MEASUREMENT, good, topic=MEAS_TOPIC)
        == (SAMPLES[MessageClass.MEASUREMENT])
    )
    assert counter.total == 0
    assert caplog.records == []

    bad = [
        (b"{", MEAS_TOPIC),
        (b"{", MEAS_TOPIC),
        (_wire(MessageClass.MEASUREMENT, device_id="m2"), MEAS_TOPIC),
        (good, "openfeeder/v1/nope/m1"),
        (_wire(MessageClass.MEASUREMENT, schema_version=9), MEAS_TOPIC),
        (_wire(MessageClass.MEASUREMENT, seq=-1), MEAS_TOPIC),
    ]
    for data, topic in bad:
        assert counter.safe_decode(MessageClass.MEASUREMENT, data, topic=topic) is None
    assert (
        counter.safe_decode(MessageClass.MEASUREMENT, good, topic=MEAS_TOPIC, max_bytes=8) is None
    )

    assert counter.counts == {
        RejectReason.MALFORMED_JSON: 2,
        RejectReason.DEVICE_MISMATCH: 1,
        RejectReason.UNKNOWN_TOPIC: 1,
        RejectReason.UNKNOWN_SCHEMA_VERSION: 1,
        RejectReason.INVALID_PAYLOAD: 1,
        RejectReason.OVERSIZE: 1,
    }
    assert counter.total == 7
    assert len(caplog.records) == 7
    record = caplog.records[2]
    assert record.levelno == logging.WARNING
    assert record.__dict__["reason"] == "device_mismatch"
    assert record.__dict__["topic"] == MEAS_TOPIC
    assert record.__dict__["field"] == "device_id"
    assert "reason=device_mismatch" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_reject_counter_uses_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    counter = RejectCounter(logger=logging.getLogger("test.subscriber"))
    caplog.set_level(logging.WARNING, logger="test.subscriber")
    counter.safe_decode(MessageClass.MEASUREMENT, b"{", topic=MEAS_TOPIC)
    assert [r.name for r in caplog.records] == ["test.subscriber"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"0",
        b'"text"',
        b"{}",
        b'{"schema_version": 1}',
        b'{"schema_version": 1, "values": {"a": 1}}',
        b'{"schema_version": 1e999}',
        b"\x00\x01\x02",
        b'{"a":' * 5000,
        '{"device_id": "m\u00e9"}'.encode(),
        b'{"schema_version":1,"device_id":"m1","seq":1e30,"t_ns":0,"values":[]}',
    ],
)
@pytest.mark.parametrize("message_class", list(MessageClass))
def test_safe_decode_never_raises_on_garbage(data: bytes, message_class: MessageClass) -> None:
    counter = RejectCounter(logger=logging.getLogger("test.garbage"))
    topic = str(publish_topic(SAMPLES[message_class]))
    assert counter.safe_decode(message_class, data, topic=topic) is None
    assert counter.total == 1


# --- sequence tracking ------------------------------------------------------------------------

NEW = SeqObservation(SeqKind.NEW)
DUP = SeqObservation(SeqKind.DUPLICATE)
REORDERED = SeqObservation(SeqKind.REORDERED)
RESET = SeqObservation(SeqKind.RESET)


def _gap(missing: int) -> SeqObservation:
    return SeqObservation(SeqKind.GAP, missing=missing)


def _observe(tracker: SequenceTracker, seqs: list[int], device_id: str = "m1") -> list[Any]:
    return [tracker.observe(device_id, seq) for seq in seqs]


def test_in_order_stream_is_all_new() -> None:
    tracker = SequenceTracker()
    assert _observe(tracker, [0, 1, 2, 3]) == [NEW] * 4
    assert (tracker.gaps_total, tracker.missing_total, tracker.duplicates_total) == (0, 0, 0)
    assert tracker.last_seq("m1") == 3
    assert tracker.last_seq("unknown") is None


def test_first_sighting_mid_stream_is_not_a_gap() -> None:
    tracker = SequenceTracker()
    assert _observe(tracker, [57, 58]) == [NEW, NEW]
    assert tracker.gaps_total == 0


def test_gap_reports_missing_count() -> None:
    tracker = SequenceTracker()
    assert _observe(tracker, [0, 1, 5, 6, 10]) == [NEW, NEW, _gap(3), NEW, _gap(3)]
    assert tracker.gaps_total == 2
    assert tracker.missing_total == 6


def test_duplicates() -> None:
    tracker = SequenceTracker()
    assert _observe(tracker, [0, 1, 1, 2, 1, 2]) == [NEW, NEW, DUP, NEW, DUP, DUP]
    assert tracker.duplicates_total == 3
    assert tracker.gaps_total == 0


def test_seq_zero_after_higher_numbers_is_read_as_a_restart() -> None:
    # The documented trade-off: a lost birth must not turn a restarted device's data into
    # "duplicates" for hours, so a (rare) late duplicate of seq 0 is taken as a restart.
    tracker = SequenceTracker()
    assert _observe(tracker, [0, 1, 2, 0]) == [NEW, NEW, NEW, RESET]
    assert tracker.duplicates_total == 0


def test_late_arrival_fills_a_gap_once() -> None:
    tracker = SequenceTracker()
    assert _observe(tracker, [0, 1, 4, 2, 3, 2, 5]) == [
        NEW,
        NEW,
        _gap(2),
        REORDERED,
        REORDERED,
        DUP,
        NEW,
    ]
    assert tracker.missing_total == 2
    assert tracker.reordered_total == 2
    assert tracker.duplicates_total == 1


def test_arrivals_older_than_the_window_count_as_duplicates() -> None:
    tracker = SequenceTracker(window=4)
    assert _observe(tracker, [1, 10, 7, 6]) == [NEW, _gap(8), REORDERED, DUP]


def test_huge_jump_is_one_gap_and_cheap() -> None:
    tracker = SequenceTracker()
    big = 2**62
    assert _observe(tracker, [0, big, big - 1, 1]) == [NEW, _gap(big - 1), REORDERED, DUP]
    assert tracker.missing_total == big - 1


def test_reset_after_birth() -> None:
    tracker = SequenceTracker()
    _observe(tracker, [0, 1, 2, 3])
    tracker.birth("m1")
    assert _observe(tracker, [0, 1, 2]) == [RESET, NEW, NEW]
    assert tracker.resets_total == 1
    assert tracker.duplicates_total == 0


def test_birth_then_lost_first_messages_is_a_gap_from_zero() -> None:
    tracker = SequenceTracker()
    _observe(tracker, [40, 41])
    tracker.birth("m1")
    assert _observe(tracker, [3, 4]) == [_gap(3), NEW]
    assert tracker.missing_total == 3


def test_birth_of_a_new_device_then_zero_is_new() -> None:
    tracker = SequenceTracker()
    tracker.birth("m9")
    assert _observe(tracker, [0, 1], device_id="m9") == [NEW, NEW]
    assert tracker.resets_total == 0


def test_restart_without_a_seen_birth_is_still_a_reset() -> None:
    tracker = SequenceTracker()
    assert _observe(tracker, [0, 1, 2, 0, 1]) == [NEW, NEW, NEW, RESET, NEW]
    assert tracker.duplicates_total == 0


def test_devices_are_tracked_independently() -> None:
    tracker = SequenceTracker()
    assert tracker.observe("a", 0) == NEW
    assert tracker.observe("b", 5) == NEW
    assert tracker.observe("a", 1) == NEW
    assert tracker.observe("b", 7) == _gap(1)
    assert tracker.observe("a", 1) == DUP
    assert (tracker.gaps_total, tracker.missing_total, tracker.duplicates_total) == (1, 1, 1)


def test_tracker_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="seq"):
        SequenceTracker().observe("m1", -1)
    with pytest.raises(ValueError, match="window"):
        SequenceTracker(window=0)
