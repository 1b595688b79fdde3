"""Committed marks: contiguous high-water marks from out-of-order, repeated and lost seqs."""

from __future__ import annotations

import random

from openfeeder.services.historian.marks import NO_MARK, Hole, MarkBook, SeqRuns


def test_in_order_seqs_move_the_mark_without_runs() -> None:
    runs = SeqRuns()
    for seq in range(5):
        runs.add(seq, seq)
    assert runs.mark == 4
    assert runs.runs == []


def test_out_of_order_and_repeated_seqs_give_the_contiguous_mark() -> None:
    runs = SeqRuns()
    for seq in (3, 1, 1, 5, 4, 3):
        runs.add(seq, seq)
    assert runs.mark == NO_MARK  # seq 0 is still missing
    assert runs.runs == [(1, 1), (3, 5)]
    runs.add(0, 0)
    assert runs.mark == 1
    assert runs.runs == [(3, 5)]
    runs.add(2, 2)
    assert runs.mark == 5
    assert runs.runs == []


def test_seqs_at_or_below_the_mark_change_nothing() -> None:
    runs = SeqRuns(mark=10)
    runs.add(3, 7)
    runs.add(10, 10)
    assert runs.mark == 10
    assert runs.runs == []


def test_a_loss_range_bridges_a_hole() -> None:
    runs = SeqRuns(mark=4)
    runs.add(20, 25)
    runs.add(5, 19)  # announced lost by the device
    assert runs.mark == 25


def test_overlapping_ranges_merge() -> None:
    runs = SeqRuns()
    runs.add(10, 12)
    runs.add(20, 22)
    runs.add(11, 21)
    assert runs.runs == [(10, 22)]
    runs.add(2, 9)
    assert runs.runs == [(2, 22)]


def test_holes_lie_between_the_mark_and_the_runs() -> None:
    runs = SeqRuns(mark=2)
    runs.add(5, 6)
    runs.add(9, 9)
    assert runs.holes("m1", limit=10) == [Hole("m1", 2, 5), Hole("m1", 6, 9)]
    assert runs.holes("m1", limit=1) == [Hole("m1", 2, 5)]


def test_random_arrival_order_always_ends_at_the_highest_seq() -> None:
    generator = random.Random(7)
    seqs = [s for s in range(500) for _ in range(generator.randint(1, 3))]
    generator.shuffle(seqs)
    runs = SeqRuns()
    for seq in seqs:
        runs.add(seq, seq)
    assert runs.mark == 499
    assert runs.runs == []


def test_raise_mark_takes_a_mark_persisted_elsewhere() -> None:
    runs = SeqRuns(mark=3)
    runs.add(10, 12)
    runs.raise_mark(9)
    assert runs.mark == 12
    runs.raise_mark(5)  # lower: ignored
    assert runs.mark == 12


def test_book_changes_apply_only_when_committed() -> None:
    book = MarkBook()
    changes = book.stage(["m1"])
    changes.add("m1", 0, 4)
    assert changes.advanced() == {"m1": 4}
    assert book.mark("m1") == NO_MARK  # not applied: the transaction did not commit
    changes = book.stage(["m1"])
    changes.add("m1", 0, 4)
    changes.apply()
    assert book.mark("m1") == 4
    again = book.stage(["m1"])
    again.add("m1", 2, 3)
    assert again.advanced() == {}  # known device, mark unchanged


def test_holes_are_looked_up_once_and_again_only_after_the_recheck_interval() -> None:
    book = MarkBook({"m1": SeqRuns(mark=0)})
    changes = book.stage(["m1"])
    changes.add("m1", 5, 5)
    assert changes.holes_to_check(now_ns=1_000, recheck_after_ns=100) == [Hole("m1", 0, 5)]
    changes.apply()
    later = book.stage(["m1"])
    later.add("m1", 8, 8)
    # the old hole was checked at t=1000; only the new one is worth a look before t=1100
    assert later.holes_to_check(now_ns=1_050, recheck_after_ns=100) == [Hole("m1", 5, 8)]
    later.apply()
    stale = book.stage(["m1"])
    assert stale.holes_to_check(now_ns=1_200, recheck_after_ns=100) == [
        Hole("m1", 0, 5),
        Hole("m1", 5, 8),
    ]
