"""The domain clock: real, accelerated and stepped time."""

from __future__ import annotations

import math
import threading
import time

import pytest

from openfeeder.sim.clock import (
    NS_PER_S,
    Clock,
    RealClock,
    ScaledClock,
    SteppedClock,
    clock_for_speed,
)


def test_real_clock_is_wall_clock_utc() -> None:
    clock = RealClock()
    before = time.time_ns()
    now = clock.now_ns()
    after = time.time_ns()
    assert before <= now <= after
    assert clock.speed == 1.0
    assert isinstance(clock, Clock)


def test_scaled_clock_starts_at_its_start_and_runs_faster() -> None:
    start = 1_700_000_000 * NS_PER_S
    clock = ScaledClock(start, factor=100.0)
    first = clock.now_ns()
    assert start <= first < start + 5 * NS_PER_S
    wall0 = time.monotonic()
    assert clock.sleep(2.0)  # two simulated seconds: about 20 ms of wall time
    wall = time.monotonic() - wall0
    simulated = (clock.now_ns() - first) / NS_PER_S
    assert simulated >= 2.0
    assert simulated / max(wall, 1e-9) == pytest.approx(100.0, rel=0.5)


def test_scaled_clock_rejects_a_bad_factor() -> None:
    for factor in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="positive and finite"):
            ScaledClock(0, factor)


def test_stepped_clock_moves_only_when_advanced_and_wakes_sleepers() -> None:
    clock = SteppedClock(1_000)
    assert clock.now_ns() == 1_000
    woke: list[int] = []

    def sleeper() -> None:
        if clock.sleep_until(5_000):
            woke.append(clock.now_ns())

    thread = threading.Thread(target=sleeper)
    thread.start()
    clock.advance_to(4_999)
    thread.join(0.3)
    assert thread.is_alive()
    assert woke == []
    clock.advance_to(5_000)
    thread.join(5.0)
    assert woke == [5_000]
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance_to(10)


def test_a_stop_event_interrupts_a_sleep() -> None:
    stop = threading.Event()
    stop.set()
    assert SteppedClock(0).sleep(10.0, stop) is False
    assert ScaledClock(0, 1.0).sleep(10.0, stop) is False


def test_clock_for_speed_words_and_factors() -> None:
    assert isinstance(clock_for_speed("realtime"), RealClock)
    stepped = clock_for_speed("max", start_ns=42)
    assert isinstance(stepped, SteppedClock)
    assert stepped.now_ns() == 42
    scaled = clock_for_speed("60x", start_ns=0)
    assert isinstance(scaled, ScaledClock)
    assert scaled.speed == 60.0
    assert isinstance(clock_for_speed(math.inf, start_ns=0), SteppedClock)
    with pytest.raises(ValueError, match="realtime"):
        clock_for_speed("quickly")
