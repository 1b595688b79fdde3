"""The on-disk buffer: persistence of seq, bound and drop policy, committed marks, forwarding."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfeeder.errors import StorageError
from openfeeder.iot.agent.store import DroppedRange, Forwarder, MeasurementStore


class Delivery:
    """What a publish returns: acknowledged by the 'broker' when the test says so."""

    def __init__(self) -> None:
        self.acked = False

    def is_published(self) -> bool:
        return self.acked


class Broker:
    """Records what the forwarder publishes, in order (stands in for the MQTT link)."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.deliveries: list[Delivery] = []

    def publish(self, seq: int, _payload: bytes) -> Delivery:
        self.sent.append(seq)
        self.deliveries.append(Delivery())
        return self.deliveries[-1]

    def ack_all(self) -> None:
        for delivery in self.deliveries:
            delivery.acked = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fill(store: MeasurementStore, count: int) -> list[DroppedRange]:
    dropped = []
    for _ in range(count):
        seq = store.next_seq
        result = store.append(seq, 1_000 + seq, f"payload-{seq}".encode())
        if result is not None:
            dropped.append(result)
    return dropped


def test_seq_counter_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "buffer.db"
    store = MeasurementStore(path, max_messages=100)
    _fill(store, 7)
    store.confirm(6)  # everything confirmed: the table is empty, the counter must survive
    store.close()
    reopened = MeasurementStore(path, max_messages=100)
    try:
        assert reopened.next_seq == 7
        assert reopened.count == 0
        assert reopened.committed_seq == 6
        with pytest.raises(ValueError, match="expected 7"):
            reopened.append(3, 0, b"old seq")
    finally:
        reopened.close()


def test_buffer_keeps_unconfirmed_rows_in_order_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = MeasurementStore(path, max_messages=100)
    _fill(store, 5)
    store.close()
    reopened = MeasurementStore(path, max_messages=100)
    try:
        assert [seq for seq, _ in reopened.read(0, 100)] == [0, 1, 2, 3, 4]
        assert reopened.read(3, 1) == [(3, b"payload-3")]
        assert reopened.next_seq == 5
    finally:
        reopened.close()


def test_overflow_drops_the_oldest_in_chunks_and_remembers_the_range(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "buffer.db", max_messages=10, drop_chunk=3)
    try:
        assert _fill(store, 10) == []
        dropped = _fill(store, 4)  # the 11th append drops 0..2, the 14th drops 3..5
        assert dropped == [DroppedRange(0, 2), DroppedRange(3, 5)]
        assert store.count <= 10
        assert [seq for seq, _ in store.read(0, 100)] == list(range(6, 14))
        assert store.dropped_total == 6
        # consecutive drops are one range to announce, kept until the mark passes it
        assert store.dropped_ranges() == [DroppedRange(0, 5)]
        store.confirm(5)
        assert store.dropped_ranges() == []
    finally:
        store.close()


def test_committed_mark_deletes_rows_and_never_goes_back(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "buffer.db", max_messages=100)
    try:
        _fill(store, 10)
        assert store.confirm(3) == 4
        assert store.first_seq == 4
        assert store.count == 6
        assert store.confirm(2) == 0  # an older mark (a stale retained message) changes nothing
        assert store.committed_seq == 3
        # a mark beyond what this buffer produced (its state was lost): never reuse a seq
        store.confirm(50)
        assert store.next_seq == 51
        assert store.count == 0
    finally:
        store.close()


def test_forwarder_publishes_in_order_within_the_window(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "buffer.db", max_messages=100)
    broker = Broker()
    forwarder = Forwarder(
        store, publish=broker.publish, announce=lambda _r: None, resend_after_s=5, max_in_flight=4
    )
    try:
        _fill(store, 10)
        assert forwarder.pump(connected=False) == 0  # nothing while disconnected
        forwarder.pump(connected=True)
        assert broker.sent == [0, 1, 2, 3]  # the window is full
        assert forwarder.pump(connected=True) == 0
        broker.ack_all()
        while forwarder.pump(connected=True):
            broker.ack_all()
        assert broker.sent == list(range(10))
        assert forwarder.in_flight == 0
    finally:
        store.close()


def test_reconnect_resends_from_the_mark_and_announces_drops(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "buffer.db", max_messages=10, drop_chunk=2)
    broker = Broker()
    announced: list[DroppedRange] = []
    forwarder = Forwarder(
        store, publish=broker.publish, announce=announced.append, resend_after_s=5
    )
    try:
        _fill(store, 6)
        forwarder.pump(connected=True)
        broker.ack_all()
        forwarder.on_committed(2)
        forwarder.on_connected()  # the broker restarted: it may have lost 3..5
        forwarder.pump(connected=True)
        assert broker.sent == [0, 1, 2, 3, 4, 5, 3, 4, 5]
        # the broker goes away; the buffer overflows
        for dropped in _fill(store, 10):
            forwarder.on_dropped(dropped)
        assert announced == [DroppedRange(3, 4), DroppedRange(5, 6)]
        forwarder.on_connected()
        assert announced[-1] == DroppedRange(3, 6)  # pending ranges are announced again
        broker.sent.clear()
        broker.ack_all()
        while forwarder.pump(connected=True):
            broker.ack_all()
        assert broker.sent == list(range(7, 16))
    finally:
        store.close()


def test_without_any_mark_a_reconnect_resumes_after_the_last_puback(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "buffer.db", max_messages=100)
    broker = Broker()
    forwarder = Forwarder(store, publish=broker.publish, announce=lambda _r: None, resend_after_s=5)
    try:
        _fill(store, 4)
        forwarder.pump(connected=True)
        broker.deliveries[0].acked = True
        broker.deliveries[1].acked = True
        forwarder.on_connected()
        forwarder.pump(connected=True)
        assert broker.sent == [0, 1, 2, 3, 2, 3]
    finally:
        store.close()


def test_a_stalled_mark_triggers_resends_with_back_off(tmp_path: Path) -> None:
    clock = Clock()
    store = MeasurementStore(tmp_path / "buffer.db", max_messages=100)
    broker = Broker()
    forwarder = Forwarder(
        store, publish=broker.publish, announce=lambda _r: None, resend_after_s=5, clock=clock
    )
    try:
        _fill(store, 5)
        forwarder.pump(connected=True)
        broker.ack_all()
        forwarder.on_committed(1)  # the historian has 0..1 and then stops confirming
        clock.now += 4.9
        assert forwarder.pump(connected=True) == 0
        clock.now += 0.2
        assert forwarder.pump(connected=True) == 3  # 2, 3, 4 again
        assert forwarder.resends == 1
        broker.ack_all()
        clock.now += 5.1  # the second resend waits twice as long
        assert forwarder.pump(connected=True) == 0
        clock.now += 5.0
        assert forwarder.pump(connected=True) == 3
        assert forwarder.resends == 2
        assert broker.sent == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4]
    finally:
        store.close()


def test_a_second_agent_cannot_open_the_same_buffer(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    store = MeasurementStore(path, max_messages=10)
    try:
        with pytest.raises(StorageError, match="locked"):
            MeasurementStore(path, max_messages=10)
    finally:
        store.close()
    MeasurementStore(path, max_messages=10).close()  # free again once the first one closed
