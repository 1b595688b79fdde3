"""Virtual switches of the twin, and meters paced by the domain clock, on the real platform.

Every test runs the real embedded broker (:class:`BrokerThread`), the real device catalog
(:class:`CatalogThread`, case ``turin``) and a :class:`SolvedWorld` of the turin case; an operator
client commands the devices over MQTT with :class:`Command` payloads and reads their acks and events.
The twin runs 20x faster than the wall clock, so a 1 s load-break switch moves in 50 ms; durations
are checked in domain time, against lower bounds the clock guarantees, never against the machine's
speed.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from openfeeder.config import (
    BrokerSettings,
)
from openfeeder.iot.agent import MeterAgent, SyntheticSource
from openfeeder.iot.agent.runtime import CommandContext
from openfeeder.iot.mqtt import MqttLink
from openfeeder.iot.schema import (
    AckStatus,
    Command,
    CommandAck,
    CommandAction,
    Event,
    Measurement,
    Severity,
    encode,
)
from openfeeder.iot.topics import (
    ack_filter,
    command_topic,
    event_filter,
    measurement_filter,
)
from openfeeder.model.cases import load_builtin
from openfeeder.model.components import SwitchKind
from openfeeder.sim.clock import NS_PER_S, Clock, ScaledClock, SteppedClock
from openfeeder.sim.devices import (
    OPERATING_TIME_S,
    SwitchMode,
    VirtualSwitch,
    build_switches,
    switch_device_id,
)
from openfeeder.sim.world import SolvedWorld
from sim_platform import Platform, running_platform

FACTOR = 20.0
"""Domain seconds per wall second in the switch tests."""
TIMEOUT_S = 15.0
LBS_S = OPERATING_TIME_S[SwitchKind.LOAD_BREAK]
_T = TypeVar("_T")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the operator's client ------------------------------------------------------------------------


class Operator:
    """A control-centre client of one device: publishes commands, collects its acks and events."""

    def __init__(self, broker_url: str, device_id: str, clock: Clock) -> None:
        self.device_id = device_id
        self.clock = clock
        self.acks: list[CommandAck] = []
        self.events: list[Event] = []
        self._changed = threading.Condition()
        self._seq = itertools.count()
        self._probed: queue.Queue[bytes] = queue.Queue()
        self._probe_topic = f"openfeeder-test/probe/{_unique('probe')}"
        self.link = MqttLink(BrokerSettings(url=broker_url), client_id=_unique("operator"))
        self.link.subscribe(ack_filter(device_id), self._on_ack)
        self.link.subscribe(event_filter(device_id), self._on_event)
        self.link.subscribe(self._probe_topic, lambda _t, data: self._probed.put(data))

    def __enter__(self) -> Operator:
        self.link.start()
        assert self.link.wait_connected(10)
        # the broker handles one client's packets in order: the probe's return proves the
        # subscriptions sent before it are in place
        self.link.publish(self._probe_topic, b"probe")
        self._probed.get(timeout=10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.link.stop()

    def _on_ack(self, _topic: str, payload: bytes) -> None:
        with self._changed:
            self.acks.append(CommandAck.model_validate_json(payload))
            self._changed.notify_all()

    def _on_event(self, _topic: str, payload: bytes) -> None:
        with self._changed:
            self.events.append(Event.model_validate_json(payload))
            self._changed.notify_all()

    def command(
        self,
        action: CommandAction,
        target_id: int,
        *,
        command_id: str | None = None,
        deadline_ns: int | None = None,
        parameters: dict[str, bool | int | float | str] | None = None,
        repeat: int = 1,
    ) -> str:
        """Publish a command (``repeat`` times, the same payload: an at-least-once redelivery)."""
        command = Command(
            device_id=self.device_id,
            seq=next(self._seq),
            t_ns=self.clock.now_ns(),
            command_id=command_id or _unique("cmd"),
            action=action,
            target_id=target_id,
            deadline_ns=deadline_ns,
            parameters=parameters or {},
        )
        data = encode(command)
        for _ in range(repeat):
            assert self.link.publish(command_topic(self.device_id), data).wait(10)
        return command.command_id

    def ack(self, command_id: str, status: AckStatus) -> CommandAck:
        """The ack of ``command_id`` with ``status`` (waiting for it)."""
        return self._wait(
            lambda: next(
                (a for a in self.acks if a.command_id == command_id and a.status is status), None
            ),
            f"ack {status} of {command_id}",
        )

    def event(self, kind: str, predicate: Callable[[Event], bool] = lambda _e: True) -> Event:
        """The first event of ``kind`` satisfying ``predicate`` (waiting for it)."""
        return self._wait(
            lambda: next((e for e in self.events if e.kind == kind and predicate(e)), None),
            f"event {kind}",
        )

    def acks_of(self, command_id: str) -> list[AckStatus]:
        with self._changed:
            return [a.status for a in self.acks if a.command_id == command_id]

    def _wait(self, find: Callable[[], _T | None], what: str) -> _T:
        deadline = time.monotonic() + TIMEOUT_S
        with self._changed:
            while (found := find()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.device_id}: no {what} within {TIMEOUT_S} s")
                self._changed.wait(left)
            return found


def _reading(event: Event, channel: str) -> float:
    return next(r.value for r in event.values if r.channel == channel)


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with running_platform(tmp_path) as running:
        yield running


@dataclass
class Rig:
    """One virtual switch in a world of its own, its operator, and the world's switch log."""

    switch: VirtualSwitch
    world: SolvedWorld
    clock: ScaledClock
    operator: Operator
    operations: list[tuple[int, bool, int]]
    """(switch id, closed, domain t_ns) of every operation of the world's switches."""


SwitchFactory = Callable[..., Rig]


@pytest.fixture
def rig(platform: Platform) -> Iterator[SwitchFactory]:
    """``rig(switch_id, **options)``: a started VirtualSwitch whose boot position was reported."""
    cleanup = contextlib.ExitStack()

    def make(switch_id: int = 301, *, clock: ScaledClock | None = None, **options: Any) -> Rig:
        clock = clock or ScaledClock(time.time_ns(), FACTOR)
        world = SolvedWorld(load_builtin("turin"), clock)
        operations: list[tuple[int, bool, int]] = []
        world.on_switch(lambda sid, closed: operations.append((sid, closed, clock.now_ns())))
        options.setdefault("operating_time_s", LBS_S)
        switch = VirtualSwitch(
            platform.settings,
            world=world,
            switch_id=switch_id,
            catalog=platform.catalog,
            retained_wait_s=0.1,
            **options,
        )
        operator = cleanup.enter_context(Operator(platform.broker_url, switch.device_id, clock))
        cleanup.callback(switch.stop)
        switch.start()
        assert switch.wait_running(TIMEOUT_S)
        boot = operator.event("switch_position")  # also proves it listens for commands
        assert _reading(boot, "closed") == float(world.switch_closed(switch_id))
        assert "at boot" in boot.message
        return Rig(switch, world, clock, operator, operations)

    with cleanup:
        yield make


# --- switches ---------------------------------------------------------------------------------------


def test_open_and_close_act_after_the_operating_time(rig: SwitchFactory) -> None:
    r = rig(301, fault_indicator=True)
    assert r.switch.agent.stats().state == "running"
    opened = r.operator.command(CommandAction.OPEN, 301)
    accepted = r.operator.ack(opened, AckStatus.ACCEPTED)
    done = r.operator.ack(opened, AckStatus.DONE)
    assert not r.world.switch_closed(301)
    assert r.operator.acks_of(opened) == [AckStatus.ACCEPTED, AckStatus.DONE]
    (moved,) = r.operations
    assert moved[:2] == (301, False)
    operating_ns = round(LBS_S * NS_PER_S)
    assert moved[2] - accepted.t_ns >= operating_ns  # the contacts moved after the operating time
    assert done.t_ns - accepted.t_ns >= operating_ns
    position = r.operator.event("switch_position", lambda e: _reading(e, "closed") == 0.0)
    assert opened in position.message
    assert position.t_ns >= moved[2]

    closed = r.operator.command(CommandAction.CLOSE, 301)
    accepted = r.operator.ack(closed, AckStatus.ACCEPTED)
    done = r.operator.ack(closed, AckStatus.DONE)
    assert r.world.switch_closed(301)
    assert done.t_ns - accepted.t_ns >= operating_ns
    assert r.operator.event("switch_position", lambda e: closed in e.message).values[0].value == 1.0

    again = r.operator.command(CommandAction.CLOSE, 301)  # already there: DONE at once
    done = r.operator.ack(again, AckStatus.DONE)
    assert "already closed" in done.detail
    assert r.operator.acks_of(again) == [AckStatus.DONE]
    assert len(r.operations) == 2


def test_a_failing_switch_answers_nothing_and_raises_an_alarm(rig: SwitchFactory) -> None:
    r = rig(302, mode=SwitchMode.FAIL)
    stuck = r.operator.command(CommandAction.OPEN, 302)
    failed = r.operator.event("switch_failed")
    assert failed.severity is Severity.ALARM
    assert stuck in failed.message
    assert "302" in failed.message
    assert _reading(failed, "closed") == 1.0
    # commands are handled in order and published on one connection: once the next command is
    # answered, an ack of the stuck one can no longer be on its way
    probe = r.operator.command(CommandAction.BLOCK, 302)
    r.operator.ack(probe, AckStatus.DONE)
    assert r.operator.acks_of(stuck) == []
    assert r.world.switch_closed(302)
    assert r.operations == []

    r.switch.set_mode(SwitchMode.NORMAL)  # repaired: the switch works again
    opened = r.operator.command(CommandAction.OPEN, 302)
    r.operator.ack(opened, AckStatus.DONE)
    assert not r.world.switch_closed(302)


def test_a_slow_switch_finishes_later_than_a_normal_one(rig: SwitchFactory) -> None:
    r = rig(303)
    normal = r.operator.command(CommandAction.OPEN, 303)
    normal_ns = (
        r.operator.ack(normal, AckStatus.DONE).t_ns
        - r.operator.ack(normal, AckStatus.ACCEPTED).t_ns
    )
    r.switch.set_mode(SwitchMode.SLOW, slow_factor=4.0, slow_extra_s=1.0)
    assert r.switch.operating_time_s == pytest.approx(4.0 * LBS_S + 1.0)
    slow = r.operator.command(CommandAction.CLOSE, 303)
    accepted = r.operator.ack(slow, AckStatus.ACCEPTED)
    assert "operating time 5.000 s" in accepted.detail
    slow_ns = r.operator.ack(slow, AckStatus.DONE).t_ns - accepted.t_ns
    assert normal_ns >= LBS_S * NS_PER_S
    assert slow_ns >= 5.0 * NS_PER_S
    assert slow_ns - normal_ns >= 2.0 * NS_PER_S  # 4 s apart by design: a generous margin
    assert r.world.switch_closed(303)


def test_lockout_refuses_close_but_still_opens(rig: SwitchFactory) -> None:
    r = rig(304)
    blocked = r.operator.command(CommandAction.BLOCK, 304)
    assert "locked out" in r.operator.ack(blocked, AckStatus.DONE).detail
    assert r.switch.lockout
    opened = r.operator.command(CommandAction.OPEN, 304)
    r.operator.ack(opened, AckStatus.DONE)
    assert not r.world.switch_closed(304)

    refused = r.operator.command(CommandAction.CLOSE, 304)
    rejected = r.operator.ack(refused, AckStatus.REJECTED)
    assert rejected.detail == "locked out"
    event = r.operator.event("close_refused")
    assert refused in event.message
    assert event.severity is Severity.WARNING
    assert r.operator.acks_of(refused) == [AckStatus.REJECTED]
    assert not r.world.switch_closed(304)

    unblocked = r.operator.command(CommandAction.UNBLOCK, 304)
    r.operator.ack(unblocked, AckStatus.DONE)
    closed = r.operator.command(CommandAction.CLOSE, 304)
    r.operator.ack(closed, AckStatus.DONE)
    assert r.world.switch_closed(304)

    r.switch.lockout = True  # as the FLISR coordinator sets it
    again = r.operator.command(CommandAction.OPEN, 304)
    r.operator.ack(again, AckStatus.DONE)
    refused_again = r.operator.command(CommandAction.CLOSE, 304)
    assert r.operator.ack(refused_again, AckStatus.REJECTED).detail == "locked out"


def test_a_repeated_command_id_executes_once(rig: SwitchFactory) -> None:
    r = rig(305)
    twice = r.operator.command(CommandAction.OPEN, 305, repeat=3)
    r.operator.ack(twice, AckStatus.DONE)
    probe = r.operator.command(CommandAction.CLOSE, 305)  # answered after any repeat would be
    r.operator.ack(probe, AckStatus.DONE)
    assert r.operator.acks_of(twice) == [AckStatus.ACCEPTED, AckStatus.DONE]
    assert [(sid, closed) for sid, closed, _ in r.operations] == [(305, False), (305, True)]


def test_a_command_past_its_domain_deadline_is_rejected(
    rig: SwitchFactory, platform: Platform
) -> None:
    # domain time runs a day ahead of the wall: a deadline an hour from now (wall) has passed
    day_ns = 86_400 * NS_PER_S
    r = rig(306, clock=ScaledClock(time.time_ns() + day_ns, FACTOR))
    late = r.operator.command(
        CommandAction.OPEN, 306, deadline_ns=time.time_ns() + 3_600 * NS_PER_S
    )
    assert r.operator.ack(late, AckStatus.REJECTED).detail == "expired"
    in_time = r.operator.command(
        CommandAction.OPEN, 306, deadline_ns=r.clock.now_ns() + 60 * NS_PER_S
    )
    r.operator.ack(in_time, AckStatus.DONE)
    assert r.operator.acks_of(late) == [AckStatus.REJECTED]
    assert [(sid, closed) for sid, closed, _ in r.operations] == [(306, False)]
    assert platform.catalog.device(r.switch.device_id).device_type == "switch"


def test_commands_for_another_component_or_action_are_refused(rig: SwitchFactory) -> None:
    r = rig(307)
    wrong = r.operator.command(CommandAction.OPEN, 308)
    assert "not component 308" in r.operator.ack(wrong, AckStatus.REJECTED).detail
    reset = r.operator.command(CommandAction.RESET, 307)  # no fault indicator on this one
    assert "no fault indicator" in r.operator.ack(reset, AckStatus.REJECTED).detail
    assert r.world.switch_closed(308)
    assert r.operations == []


def test_fault_indicator_alarm_and_reset(rig: SwitchFactory, platform: Platform) -> None:
    r = rig(309, fault_indicator=True)
    r.world.latch_fault_indicators([309])
    alarm = r.operator.event("fault_indicator")
    assert alarm.severity is Severity.ALARM
    assert _reading(alarm, "fault_passed") == 1.0
    reset = r.operator.command(CommandAction.RESET, 309)
    r.operator.ack(reset, AckStatus.DONE)
    cleared = r.operator.event("fault_indicator_cleared")
    assert cleared.severity is Severity.INFO
    assert _reading(cleared, "fault_passed") == 0.0
    assert not r.world.fault_passed(309)
    info = platform.catalog.device(r.switch.device_id)
    assert info.device_type == "ftu"
    assert "fault_indicator" in info.capabilities


def test_a_trip_by_another_cause_is_reported(rig: SwitchFactory) -> None:
    r = rig(310)
    r.world.operate_switch(310, False)  # the twin's protection, not a command
    event = r.operator.event("switch_position", lambda e: _reading(e, "closed") == 0.0)
    assert "another cause" in event.message


def test_factory_builds_a_device_per_remote_switch_that_boots_and_operates(
    platform: Platform,
) -> None:
    model = load_builtin("turin")
    clock = ScaledClock(time.time_ns(), FACTOR)
    world = SolvedWorld(model, clock)
    switches = build_switches(
        platform.settings, world=world, model=model, catalog=platform.catalog, retained_wait_s=0.1
    )
    assert sorted(switches) == list(range(300, 326))
    assert switches[313].device_id == switch_device_id(313) == "sw-313"
    assert switches[313].operating_time_s == OPERATING_TIME_S[SwitchKind.BREAKER]
    assert switches[301].operating_time_s == LBS_S
    assert all(s.fault_indicator for s in switches.values())
    breaker = switches[313]
    with Operator(platform.broker_url, breaker.device_id, clock) as operator:
        breaker.start()
        try:
            assert breaker.wait_running(TIMEOUT_S)
            operator.event("switch_position")
            tripped = operator.command(CommandAction.OPEN, 313)
            done = operator.ack(tripped, AckStatus.DONE)
            accepted = operator.ack(tripped, AckStatus.ACCEPTED)
            assert done.t_ns - accepted.t_ns >= 0.1 * NS_PER_S
            assert not world.switch_closed(313)
            info = platform.catalog.device("sw-313")
            assert info.location is not None
            assert (info.location.case, info.location.element_id) == ("turin", 313)
        finally:
            switches.stop()


class _Faulty:
    """A command handler with a bug: the agent must answer FAILED and keep taking commands."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    def handle_command(self, command: Command, context: CommandContext) -> None:
        self.handled.append(command.command_id)
        if command.action is CommandAction.SET:
            raise ValueError(f"set-point {sorted(command.parameters)} out of range")
        context.ack(AckStatus.DONE, "ok")


def test_agent_command_path_with_and_without_a_handler(platform: Platform) -> None:
    clock = ScaledClock(time.time_ns(), FACTOR)
    faulty = _Faulty()
    devices = {"handled": _unique("dev"), "meter": _unique("meter")}
    agents = {
        name: MeterAgent(
            platform.settings,
            device_id=device,
            source=SyntheticSource(3),
            catalog=platform.catalog,
            retained_wait_s=0.1,
            clock=clock,
            command_handler=faulty if name == "handled" else None,
        )
        for name, device in devices.items()
    }
    with contextlib.ExitStack() as stack:
        operators = {
            name: stack.enter_context(Operator(platform.broker_url, device, clock))
            for name, device in devices.items()
        }
        for agent in agents.values():
            stack.callback(agent.stop)
            agent.start()
            assert agent.wait_running(TIMEOUT_S)
        meter, handled = operators["meter"], operators["handled"]
        # a meter without a handler has nothing to operate (an expired command: expired)
        refused = meter.command(CommandAction.OPEN, 301)
        assert meter.ack(refused, AckStatus.REJECTED).detail == "a meter has nothing to operate"
        late = meter.command(CommandAction.OPEN, 301, deadline_ns=clock.now_ns() - NS_PER_S)
        assert meter.ack(late, AckStatus.REJECTED).detail == "expired"
        # a handler's exception is answered FAILED with the error, and the next command runs
        broken = handled.command(CommandAction.SET, 7, parameters={"p_mw": 1.5})
        failed = handled.ack(broken, AckStatus.FAILED)
        assert "ValueError" in failed.detail
        assert "p_mw" in failed.detail
        fine = handled.command(CommandAction.RESET, 7)
        handled.ack(fine, AckStatus.DONE)
        late = handled.command(CommandAction.RESET, 7, deadline_ns=clock.now_ns() - NS_PER_S)
        assert handled.ack(late, AckStatus.REJECTED).detail == "expired"
        assert faulty.handled == [broken, fine]  # the expired one never reached the handler


# --- pacing of any meter by the domain clock -------------------------------------------------------


def _collect_measurements(broker_url: str, device_id: str) -> tuple[MqttLink, queue.Queue[Any]]:
    received: queue.Queue[tuple[float, Measurement]] = queue.Queue()
    link = MqttLink(BrokerSettings(url=broker_url), client_id=_unique("historian"))
    link.subscribe(
        measurement_filter(device_id),
        lambda _t, p: received.put((time.monotonic(), Measurement.model_validate_json(p))),
    )
    link.start()
    assert link.wait_subscribed(10)
    return link, received


def test_an_accelerated_meter_reports_each_domain_interval(platform: Platform) -> None:
    factor = 10.0
    clock = ScaledClock(time.time_ns(), factor)
    device = _unique("meter")
    link, received = _collect_measurements(platform.broker_url, device)
    agent = MeterAgent(
        platform.settings,
        device_id=device,
        source=SyntheticSource(1),
        catalog=platform.catalog,
        retained_wait_s=0.1,
        clock=clock,
    )
    agent.start()
    try:
        assert agent.wait_running(TIMEOUT_S)
        seen = [received.get(timeout=TIMEOUT_S) for _ in range(16)]
    finally:
        agent.stop()
        link.stop()
    wall_s = [w for w, _ in seen]
    domain_ns = [m.t_ns for _, m in seen]
    assert [m.seq for _, m in seen] == list(range(seen[0][1].seq, seen[0][1].seq + 16))
    spacing_s = [(b - a) / NS_PER_S for a, b in itertools.pairwise(domain_ns)]
    # one reporting interval (1 s) of domain time between reports: a meter paced by the wall
    # clock would show 10 s here
    assert statistics.median(spacing_s) == pytest.approx(1.0, abs=0.2)
    # ticks sit on the domain grid t0 + k * 1 s (late by a fraction of an interval at most)
    offsets = [(t - domain_ns[0]) / NS_PER_S for t in domain_ns]
    assert all(abs(o - round(o)) < 0.5 for o in offsets)
    # and never faster than asked in wall time: 15 intervals of 0.1 s wall
    assert wall_s[-1] - wall_s[0] >= 15 * (1.0 / factor) * 0.5


def test_a_stepped_meter_reports_exactly_at_each_simulated_interval(platform: Platform) -> None:
    start_ns = 1_700_000_000 * NS_PER_S
    clock = SteppedClock(start_ns)
    device = _unique("meter")
    link, received = _collect_measurements(platform.broker_url, device)
    agent = MeterAgent(
        platform.settings,
        device_id=device,
        source=SyntheticSource(2),
        catalog=platform.catalog,
        retained_wait_s=0.1,
        clock=clock,
    )
    agent.start()
    try:
        assert agent.wait_running(TIMEOUT_S)
        stamps = [received.get(timeout=TIMEOUT_S)[1].t_ns]  # the first tick, at the start
        for step in range(1, 6):
            with pytest.raises(queue.Empty):  # time stands still: nothing more is reported
                received.get(timeout=0.2)
            clock.advance(1.0)
            stamps.append(received.get(timeout=TIMEOUT_S)[1].t_ns)
            assert agent.last_tick_ns == start_ns + step * NS_PER_S
        assert agent.stats().skipped_ticks == 0
    finally:
        agent.stop()
        link.stop()
    assert stamps == [start_ns + k * NS_PER_S for k in range(6)]
