"""The fault-record event format: phasors survive the trip through readings and the codec."""

from __future__ import annotations

import numpy as np
import pytest

from openfeeder.errors import MessagingError
from openfeeder.iot.fault_record import FAULT_RECORD_EVENT, parse_record, record_readings
from openfeeder.iot.schema import Event, Severity, decode, encode

TOPIC = "openfeeder/v1/event/ftu-301"


def _phasors(magnitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return magnitude * rng.uniform(0.5, 1.0, 3) * np.exp(1j * rng.uniform(-np.pi, np.pi, 3))


def test_record_round_trips_through_an_encoded_event() -> None:
    u_pre, u_fault = _phasors(12_700, 1), _phasors(3_000, 2)
    i_pre, i_fault = _phasors(50, 3), _phasors(4_000, 4)
    event = Event(
        device_id="ftu-301",
        seq=7,
        t_ns=1_000,
        kind=FAULT_RECORD_EVENT,
        severity=Severity.ALARM,
        message="fault recorded",
        values=record_readings(
            fault_t_ns=123_456_789,
            u_pre_v=u_pre,
            u_fault_v=u_fault,
            i_pre_a=i_pre,
            i_fault_a=i_fault,
        ),
    )
    received = decode(Event.message_class, encode(event), topic=TOPIC)
    assert isinstance(received, Event)
    record = parse_record(received.values, topic=TOPIC)
    assert record.fault_t_ns == 123_456_789
    np.testing.assert_allclose(record.u_pre_v, u_pre)
    np.testing.assert_allclose(record.u_fault_v, u_fault)
    assert record.i_pre_a is not None
    assert record.i_fault_a is not None
    np.testing.assert_allclose(record.i_pre_a, i_pre)
    np.testing.assert_allclose(record.i_fault_a, i_fault)


def test_voltage_only_record_has_no_currents() -> None:
    values = record_readings(fault_t_ns=1, u_pre_v=_phasors(230, 5), u_fault_v=_phasors(100, 6))
    record = parse_record(values, topic=TOPIC)
    assert record.i_pre_a is None
    assert record.i_fault_a is None
    assert len(values) == 13


def test_missing_channel_is_named_with_the_topic() -> None:
    values = record_readings(fault_t_ns=1, u_pre_v=_phasors(230, 5), u_fault_v=_phasors(100, 6))
    without = tuple(r for r in values if r.channel != "u_fault_b_im")
    with pytest.raises(MessagingError, match="u_fault_b_im missing") as err:
        parse_record(without, topic=TOPIC)
    assert err.value.topic == TOPIC
    assert err.value.field == "u_fault_b_im"


def test_bad_phasors_are_refused_when_recording() -> None:
    with pytest.raises(MessagingError, match="u_fault"):
        record_readings(fault_t_ns=1, u_pre_v=np.ones(3), u_fault_v=np.array([1.0, np.nan, 1.0]))
    with pytest.raises(MessagingError, match="both currents"):
        record_readings(fault_t_ns=1, u_pre_v=np.ones(3), u_fault_v=np.ones(3), i_pre_a=np.ones(3))
