"""The historian's store on both backends: idempotent batches, marks, losses, retention, queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openfeeder.iot.schema import Measurement, Quality, Reading, Unit
from openfeeder.services.historian import LossRange, SqlStore, open_store
from openfeeder.services.historian.marks import MarkBook
from openfeeder.services.historian.records import LayoutRegistry, MessageRow

SECOND_NS = 1_000_000_000


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'historian.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()


LAYOUTS = LayoutRegistry()


def row(
    device: str,
    seq: int,
    *,
    t_ns: int | None = None,
    u_a: float | None = None,
    quality: Quality = Quality.GOOD,
    with_f: bool = False,
) -> MessageRow:
    readings = [
        Reading(
            channel="u_a", value=230.0 + seq if u_a is None else u_a, unit=Unit.V, quality=quality
        ),
        Reading(channel="i_a", value=10.0, unit=Unit.A, quality=Quality.GOOD),
    ]
    if with_f:
        readings.append(Reading(channel="f", value=50.0, unit=Unit.HZ, quality=Quality.GOOD))
    message = Measurement(
        device_id=device,
        seq=seq,
        t_ns=seq * SECOND_NS if t_ns is None else t_ns,
        values=tuple(readings),
    )
    return LAYOUTS.row_of(message)


def commit(
    store: SqlStore,
    book: MarkBook,
    rows: list[MessageRow],
    losses: list[LossRange] | None = None,
    *,
    now_ns: int = 0,
    recheck: list[str] | None = None,
) -> dict[str, int]:
    result = store.commit_batch(
        rows, losses or [], layouts=LAYOUTS.get, book=book, now_ns=now_ns, recheck=recheck or []
    )
    return dict(result.advanced)


def test_the_same_batch_twice_stores_each_message_once(store: SqlStore) -> None:
    book = store.load_marks()
    batch = [row("m1", seq) for seq in range(10)] + [row("m2", 0)]
    first = store.commit_batch(batch, [], layouts=LAYOUTS.get, book=book, now_ns=0)
    second = store.commit_batch(batch, [], layouts=LAYOUTS.get, book=book, now_ns=0)
    assert (first.inserted, first.duplicates) == (11, 0)
    assert (second.inserted, second.duplicates) == (0, 11)
    assert store.stored_seqs("m1") == list(range(10))
    assert store.message_count() == 11
    summary = store.device("m1")
    assert summary is not None
    assert summary.message_count == 10
    assert (summary.first_t_ns, summary.last_t_ns) == (0, 9 * SECOND_NS)


def test_repeats_within_one_batch_are_stored_once(store: SqlStore) -> None:
    book = store.load_marks()
    result = store.commit_batch(
        [row("m1", 0), row("m1", 0), row("m1", 1)], [], layouts=LAYOUTS.get, book=book, now_ns=0
    )
    assert result.inserted == 2
    assert store.stored_seqs("m1") == [0, 1]


def test_out_of_order_and_duplicate_seqs_give_the_contiguous_mark(store: SqlStore) -> None:
    book = store.load_marks()
    assert commit(store, book, [row("m1", s) for s in (0, 1, 3, 5, 3)]) == {"m1": 1}
    assert commit(store, book, [row("m1", s) for s in (4, 1)]) == {}  # 2 still missing
    assert commit(store, book, [row("m1", 2)]) == {"m1": 5}
    assert store.stored_seqs("m1") == [0, 1, 2, 3, 4, 5]
    summary = store.device("m1")
    assert summary is not None
    assert summary.high_water_seq == 5


def test_a_device_without_seq_zero_has_no_mark(store: SqlStore) -> None:
    book = store.load_marks()
    commit(store, book, [row("m1", s) for s in (1, 2)])
    summary = store.device("m1")
    assert summary is not None
    assert summary.high_water_seq is None
    assert summary.message_count == 2


def test_marks_and_pending_rows_survive_a_restart(store_url: str) -> None:
    store = open_store(store_url)
    book = store.load_marks()
    commit(store, book, [row("m1", s) for s in (0, 1, 2, 4, 5)] + [row("m2", 0)])
    store.close()
    reopened = open_store(store_url)
    try:
        book = reopened.load_marks()
        assert book.marks() == {"m1": 2, "m2": 0}
        assert book.runs("m1") == [(4, 5)]  # rebuilt from the rows above the mark
        assert commit(reopened, book, [row("m1", 3)]) == {"m1": 5}
    finally:
        reopened.close()


def test_a_loss_range_lets_the_mark_pass(store: SqlStore) -> None:
    book = store.load_marks()
    commit(store, book, [row("m1", s) for s in (0, 1, 7, 8)])
    advanced = commit(store, book, [], [LossRange("m1", 2, 6, t_ns=123)])
    assert advanced == {"m1": 8}
    assert store.losses("m1") == [LossRange("m1", 2, 6, 123)]
    assert store.stored_seqs("m1") == [0, 1, 7, 8]  # nothing invented for the lost range


def test_a_loss_announced_before_the_rows_arrive_counts_too(store_url: str) -> None:
    store = open_store(store_url)
    book = store.load_marks()
    commit(store, book, [], [LossRange("m1", 0, 3, t_ns=1)])
    assert book.mark("m1") == 3
    commit(store, book, [row("m1", 5)])
    store.close()
    reopened = open_store(store_url)
    try:
        book = reopened.load_marks()
        assert book.mark("m1") == 3
        assert commit(reopened, book, [row("m1", 4)]) == {"m1": 5}
        assert [d.device_id for d in reopened.devices()] == ["m1"]
    finally:
        reopened.close()


def test_two_historians_sharing_one_database_get_the_marks_right(store_url: str) -> None:
    # A shared subscription splits one device's messages between group members.
    one, two = open_store(store_url), open_store(store_url)
    try:
        book_one, book_two = one.load_marks(), two.load_marks()
        commit(one, book_one, [row("m1", s) for s in range(0, 20, 2)])
        assert book_one.mark("m1") == 0
        advanced = commit(two, book_two, [row("m1", s) for s in range(1, 20, 2)])
        assert advanced == {"m1": 19}  # the second one found the first one's rows in its holes
        commit(one, book_one, [row("m1", 20)])
        assert book_one.mark("m1") == 20  # and the first one read the persisted mark
        assert one.stored_seqs("m1") == list(range(21))
    finally:
        one.close()
        two.close()


def test_a_stale_hole_is_looked_up_again_without_new_messages(store_url: str) -> None:
    one, two = open_store(store_url), open_store(store_url)
    try:
        book_one, book_two = one.load_marks(), two.load_marks()
        commit(two, book_two, [row("m1", 1)])  # the other historian got seq 1 first
        commit(one, book_one, [row("m1", 0), row("m1", 2)])
        assert book_one.mark("m1") == 2  # seq 1 found in the hole at once
        commit(one, book_one, [row("m1", 4)], now_ns=10)  # hole at 3: nothing there yet
        commit(two, book_two, [row("m1", 3)])  # then the other historian stores seq 3
        assert book_one.stale_holes(now_ns=20, recheck_after_ns=SECOND_NS, limit=10) == []
        later = 10 + 2 * SECOND_NS
        stale = book_one.stale_holes(now_ns=later, recheck_after_ns=SECOND_NS, limit=10)
        assert stale == ["m1"]
        assert commit(one, book_one, [], now_ns=later, recheck=stale) == {"m1": 4}
        assert book_one.stale_holes(now_ns=later * 2, recheck_after_ns=SECOND_NS, limit=10) == []
    finally:
        one.close()
        two.close()


def test_retention_deletes_only_old_messages_and_keeps_marks(store: SqlStore) -> None:
    book = store.load_marks()
    commit(store, book, [row("m1", s) for s in range(10)] + [row("m2", 0, t_ns=100 * SECOND_NS)])
    deleted = store.delete_older_than(5 * SECOND_NS)
    assert deleted == 5
    assert store.stored_seqs("m1") == [5, 6, 7, 8, 9]
    assert store.stored_seqs("m2") == [0]
    summary = store.device("m1")
    assert summary is not None
    assert summary.message_count == 5
    assert summary.first_t_ns == 5 * SECOND_NS
    assert summary.high_water_seq == 9  # marks are never touched
    assert store.load_marks().marks() == {"m1": 9, "m2": 0}


def test_raw_query_returns_one_channel_in_a_time_range(store: SqlStore) -> None:
    book = store.load_marks()
    commit(
        store, book, [row("m1", s) for s in range(10)] + [row("m1", 10, quality=Quality.SUSPECT)]
    )
    points = store.raw("m1", "u_a", start_ns=3 * SECOND_NS, end_ns=6 * SECOND_NS, limit=100)
    assert [(p.t_ns, p.value) for p in points] == [
        (3 * SECOND_NS, 233.0),
        (4 * SECOND_NS, 234.0),
        (5 * SECOND_NS, 235.0),
    ]
    assert store.raw("m1", "u_a", start_ns=0, end_ns=100 * SECOND_NS, limit=2)[-1].value == 231.0
    last = store.raw("m1", "u_a", start_ns=10 * SECOND_NS, end_ns=11 * SECOND_NS, limit=5)
    assert [(p.value, p.quality) for p in last] == [(240.0, Quality.SUSPECT)]
    assert store.raw("m1", "i_a", start_ns=0, end_ns=SECOND_NS, limit=5)[0].value == 10.0


def test_downsampling_aggregates_per_bucket_without_invalid_values(store: SqlStore) -> None:
    book = store.load_marks()
    rows = [row("m1", s, u_a=float(s)) for s in range(10)]
    rows.append(row("m1", 10, u_a=1e6, quality=Quality.INVALID))
    commit(store, book, rows)
    buckets = store.buckets(
        "m1", "u_a", start_ns=0, end_ns=20 * SECOND_NS, bucket_ns=4 * SECOND_NS, limit=10
    )
    assert [(b.start_ns, b.avg, b.min, b.max, b.count) for b in buckets] == [
        (0, 1.5, 0.0, 3.0, 4),
        (4 * SECOND_NS, 5.5, 4.0, 7.0, 4),
        (8 * SECOND_NS, 8.5, 8.0, 9.0, 2),  # the invalid value at 10 s is left out
    ]


def test_channels_and_queries_span_layout_changes(store: SqlStore) -> None:
    book = store.load_marks()
    commit(store, book, [row("m1", 0), row("m1", 1, with_f=True)])
    assert [(c.channel, c.unit) for c in store.channels("m1")] == [
        ("f", "Hz"),
        ("i_a", "A"),
        ("u_a", "V"),
    ]
    assert len(store.raw("m1", "u_a", start_ns=0, end_ns=10 * SECOND_NS, limit=10)) == 2
    assert len(store.raw("m1", "f", start_ns=0, end_ns=10 * SECOND_NS, limit=10)) == 1
    assert store.channels("nobody") == []
    assert store.device("nobody") is None


@pytest.mark.integration
def test_postgresql_store_reconnects_after_losing_its_connections(postgres_url: str) -> None:
    import psycopg

    from openfeeder.errors import StorageError
    from openfeeder.services.historian.postgresql_store import PostgresqlStore

    store = open_store(postgres_url)
    assert isinstance(store, PostgresqlStore)
    try:
        book = store.load_marks()
        commit(store, book, [row("m1", 0)])
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            for pid in store.backend_pids:  # as a server restart would
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StorageError):
            commit(store, book, [row("m1", 1)])  # the batch in flight fails; the writer retries
        assert commit(store, book, [row("m1", 1)]) == {"m1": 1}
        assert store.stored_seqs("m1") == [0, 1]
    finally:
        store.close()
