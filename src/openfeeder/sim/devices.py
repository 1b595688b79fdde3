"""Virtual devices of the twin: remote-controlled switches and FTUs that are real platform devices.

A :class:`VirtualSwitch` is a :class:`~openfeeder.iot.agent.runtime.MeterAgent` like any meter in
the field: it boots against the device catalog, reports measurements with persistent sequence
numbers, buffers them while the broker is away and runs the algorithms the catalog assigns. What
makes it a switch is its command handler, which drives one switch of the twin's
:class:`~openfeeder.sim.world.GridWorld` the way a motor-operated mechanism does, in domain time:

- ``open`` / ``close``: ack ACCEPTED at once, then after the operating time the contacts move
  (``world.operate_switch``), an event ``switch_position`` (reading ``closed`` 1/0) and ack DONE.
  Already in the requested position: DONE at once, with a detail saying so.
- ``block`` / ``unblock``: lockout on / off. A locked-out switch refuses ``close`` (REJECTED
  "locked out" and an event ``close_refused``) but still opens: lockout exists so that a switch
  isolating a fault is not closed back onto it. The FLISR coordinator may also set
  :attr:`VirtualSwitch.lockout` directly.
- ``reset``: clears the latched fault indicator (FTUs only).
- ``set``: refused; a switch has no set-points.

The controller checks before it drives the mechanism, in this order: the target is its switch,
lockout (for ``close``), the present position; so even a stuck switch answers a refused or needless
command.

Fault injection (:class:`SwitchMode`, at construction or at any time with
:meth:`VirtualSwitch.set_mode`): ``slow`` multiplies the operating time by ``slow_factor`` and adds
``slow_extra_s``; ``fail`` is a stuck mechanism, whose controller sends **no** acknowledgement at all
and, after the operating time, an alarm event ``switch_failed`` naming the command, while the
position stays as it was. Both are what a FLISR coordinator must survive: a late DONE, a missing one.

The position is reported at boot and whenever it changes, whatever moved it (the twin's
protection tripping a breaker, another actor): through :meth:`SolvedWorld.on_switch
<openfeeder.sim.world.SolvedWorld.on_switch>` at once when the world offers it, and by comparing
on every tick otherwise. An FTU (a switch with a fault indicator, device type ``ftu``) also watches
``world.fault_passed``: an alarm event ``fault_indicator`` when it latches, an info event
``fault_indicator_cleared`` when it is reset.

:func:`build_switches` makes one device per remote-controllable switch of a model, named
``sw-<switch id>``, with the operating time of its kind (:data:`OPERATING_TIME_S`).

This module sits at the top of ``sim``: the twin's devices are built from the platform's device
runtime (``iot.agent``), while the rest of ``sim`` (clock, world, sources) stays below ``iot``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import numpy as np

from openfeeder.config import Settings
from openfeeder.errors import ConfigError
from openfeeder.iot.agent.hosting import AgentHost
from openfeeder.iot.agent.runtime import (
    DEFAULT_CAPABILITIES,
    CommandContext,
    MeterAgent,
    SettingsSource,
)
from openfeeder.iot.agent.source import DataSource, PhasorFrame, SyntheticSource
from openfeeder.iot.device_settings import Location
from openfeeder.iot.fault_record import FAULT_RECORD_EVENT, record_readings
from openfeeder.iot.schema import (
    AckStatus,
    Command,
    CommandAction,
    Quality,
    Reading,
    Severity,
    Unit,
)
from openfeeder.model.components import SwitchKind, enum_from_code
from openfeeder.model.grid import GridModel
from openfeeder.sim.sources import TwinSource
from openfeeder.sim.world import GridWorld

if TYPE_CHECKING:
    from openfeeder.analysis.phasors import PhasorState

__all__ = [
    "DEFAULT_SLOW_FACTOR",
    "OPERATING_TIME_S",
    "SwitchMode",
    "VirtualSwitch",
    "VirtualSwitches",
    "build_switches",
    "switch_device_id",
]

_LOG = logging.getLogger(__name__)

OPERATING_TIME_S: Final[Mapping[SwitchKind, float]] = MappingProxyType(
    {
        SwitchKind.BREAKER: 0.1,
        SwitchKind.RECLOSER: 0.1,
        SwitchKind.LOAD_BREAK: 1.0,
        SwitchKind.SECTIONALIZER: 1.0,
        SwitchKind.DISCONNECTOR: 5.0,
    }
)
"""Seconds (domain time) from command to contacts moved, by switch kind.

Typical of MV distribution equipment: a circuit breaker or recloser opens in 3-5 cycles and closes
from its charged spring in a few more (0.1 s, interrupting and control-relay time included); a
motor-operated load-break switch or sectionalizer needs about a second for its motor to drive the
spring mechanism; a motorised disconnector several seconds. Fuses have no mechanism and are never
made devices.
"""

DEFAULT_SLOW_FACTOR: Final = 5.0
"""Operating-time multiplier of the ``slow`` mode when none is given (a mechanism short of grease,
a motor on a weak auxiliary supply)."""

SWITCH_CAPABILITIES: Final = (*DEFAULT_CAPABILITIES, "switch_control")

_CYCLE_NS: Final = 20_000_000
"""The recorder's pre-fault phasors come from one cycle before it triggered."""
_TRIGGER_U: Final = 0.05
"""A fault recorder triggers on a voltage step above 5 % of the pre-fault voltage..."""
_TRIGGER_I: Final = 0.5
_TRIGGER_I_MIN_A: Final = 10.0
"""... or on a current step above half the pre-fault current plus 10 A."""
_RECORDER_SAMPLES: Final = 32
_SAMPLE_NS: Final = 312_500
"""Samples a recorder may fall back on when the measurement model drops one (3.2 kHz)."""


class SwitchMode(StrEnum):
    """How the mechanism of a virtual switch behaves (fault injection)."""

    NORMAL = "normal"
    SLOW = "slow"  # operating time * slow_factor + slow_extra_s
    FAIL = "fail"  # stuck: no acknowledgement, an alarm event, the position does not change


def switch_device_id(switch_id: int) -> str:
    """The device id of the virtual device operating switch ``switch_id``: ``sw-<id>``."""
    return f"sw-{switch_id}"


def _word(closed: bool) -> str:
    return "closed" if closed else "open"


def _flag(channel: str, value: bool) -> Reading:
    return Reading(channel=channel, value=float(value), unit=Unit.ONE, quality=Quality.GOOD)


class VirtualSwitch:
    """One remote-controlled switch (or FTU) of the twin as a device on the platform.

    Thread-safe: commands run on the agent's command thread, position and fault-indicator checks on
    its loop thread and on whatever thread operates the world's switch; the mode and the lockout
    may be changed from anywhere.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        world: GridWorld,
        switch_id: int,
        catalog: SettingsSource,
        operating_time_s: float,
        fault_indicator: bool = False,
        device_id: str | None = None,
        source: DataSource | None = None,
        location: Location | None = None,
        mode: SwitchMode = SwitchMode.NORMAL,
        slow_factor: float = DEFAULT_SLOW_FACTOR,
        slow_extra_s: float = 0.0,
        lockout: bool = False,
        retained_wait_s: float = 1.0,
        host: AgentHost | None = None,
    ) -> None:
        """``operating_time_s`` in domain time; ``source`` defaults to a synthetic one seeded with
        the switch id (the twin passes its :class:`~openfeeder.sim.sources.TwinSource`);
        ``host``: the agent host running its agent (None: the agent's own threads)."""
        self.switch_id = int(switch_id)
        self.device_id = device_id or switch_device_id(self.switch_id)
        try:
            world.switch_closed(self.switch_id)
        except KeyError as err:
            raise ConfigError(
                f"device {self.device_id}: the twin's grid has no switch {self.switch_id}"
            ) from err
        self._check_timing(operating_time_s, slow_factor, slow_extra_s)
        self.world = world
        self.fault_indicator = fault_indicator
        self._lock = threading.RLock()
        self._base_time_s = float(operating_time_s)
        self._mode = SwitchMode(mode)
        self._slow_factor = float(slow_factor)
        self._slow_extra_s = float(slow_extra_s)
        self._lockout = lockout
        self._reported_closed: bool | None = None
        self._reported_fault = False
        self._operating: str | None = None  # the command moving the contacts now
        self._active = False
        capabilities = SWITCH_CAPABILITIES + (("fault_indicator",) if fault_indicator else ())
        self.agent = MeterAgent(
            settings,
            device_id=self.device_id,
            source=source if source is not None else SyntheticSource(self.switch_id),
            catalog=catalog,
            location=location,
            device_type="ftu" if fault_indicator else "switch",
            capabilities=capabilities,
            retained_wait_s=retained_wait_s,
            clock=world.clock,
            command_handler=self,
            on_tick=self._on_tick,
            host=host,
        )
        on_switch = getattr(world, "on_switch", None)  # SolvedWorld: hear of every operation
        self._observed = callable(on_switch)
        if callable(on_switch):
            on_switch(self._on_world_switch)
        on_indicators = getattr(world, "on_fault_indicators", None)
        if fault_indicator and callable(on_indicators):
            on_indicators(self._on_indicators)
        # the fault recorder: an FTU fed by the twin records phasors around every disturbance
        self._recorder = source if fault_indicator and isinstance(source, TwinSource) else None
        self._recorded = False
        on_impose = getattr(world, "on_impose", None)
        if self._recorder is not None and callable(on_impose):
            on_impose(self._on_impose)

    # -- control by the twin and the coordinator ------------------------------------------------

    @property
    def mode(self) -> SwitchMode:
        return self._mode

    def set_mode(
        self,
        mode: SwitchMode,
        *,
        slow_factor: float | None = None,
        slow_extra_s: float | None = None,
    ) -> None:
        """Change how the mechanism behaves from the next command on (fault injection)."""
        with self._lock:
            factor = self._slow_factor if slow_factor is None else float(slow_factor)
            extra_s = self._slow_extra_s if slow_extra_s is None else float(slow_extra_s)
            self._check_timing(self._base_time_s, factor, extra_s)
            self._mode, self._slow_factor, self._slow_extra_s = SwitchMode(mode), factor, extra_s
        _LOG.info(
            "%s: switch %d mechanism now %s",
            self.device_id,
            self.switch_id,
            mode,
            extra={"device_id": self.device_id, "switch_id": self.switch_id, "mode": str(mode)},
        )

    @property
    def operating_time_s(self) -> float:
        """Domain seconds the next operation takes in the present mode."""
        with self._lock:
            if self._mode is SwitchMode.SLOW:
                return self._base_time_s * self._slow_factor + self._slow_extra_s
            return self._base_time_s

    @property
    def lockout(self) -> bool:
        """True: ``close`` is refused until ``unblock`` (or this flag is cleared)."""
        return self._lockout

    @lockout.setter
    def lockout(self, value: bool) -> None:
        with self._lock:
            self._lockout = bool(value)

    @property
    def closed(self) -> bool:
        """The switch's present position in the twin."""
        return self.world.switch_closed(self.switch_id)

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the device in the background (see :meth:`wait_running`)."""
        self._active = True
        self.agent.start()

    def wait_running(self, timeout_s: float) -> bool:
        return self.agent.wait_running(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the device (an operation in progress is abandoned and answered FAILED)."""
        self._active = False
        self.agent.stop(timeout_s)

    # -- commands (the agent's command thread) --------------------------------------------------

    def handle_command(self, command: Command, context: CommandContext) -> None:
        """Act on one command addressed to this device (see the module docstring)."""
        if command.target_id != self.switch_id:
            context.ack(
                AckStatus.REJECTED,
                f"device {self.device_id} operates switch {self.switch_id}, "
                f"not component {command.target_id}",
            )
            return
        action = command.action
        if action in (CommandAction.OPEN, CommandAction.CLOSE):
            self._operate(command, context, closed=action is CommandAction.CLOSE)
        elif action in (CommandAction.BLOCK, CommandAction.UNBLOCK):
            self.lockout = action is CommandAction.BLOCK
            state = "locked out: close refused" if self.lockout else "lockout cleared"
            context.ack(AckStatus.DONE, f"switch {self.switch_id} {state}")
        elif action is CommandAction.RESET:
            if not self.fault_indicator:
                context.ack(
                    AckStatus.REJECTED, f"switch {self.switch_id} has no fault indicator to reset"
                )
                return
            self.world.reset_fault_indicator(self.switch_id)
            self._check_fault_indicator()
            context.ack(AckStatus.DONE, f"fault indicator of switch {self.switch_id} reset")
        else:
            context.ack(AckStatus.REJECTED, f"switch {self.switch_id} has no set-points")

    def _operate(self, command: Command, context: CommandContext, *, closed: bool) -> None:
        switch_id, command_id = self.switch_id, command.command_id
        if closed and self.lockout:
            context.event(
                "close_refused",
                Severity.WARNING,
                f"switch {switch_id} is locked out: close (command {command_id}) refused",
                (_flag("closed", self.closed),),
            )
            context.ack(AckStatus.REJECTED, "locked out")
            return
        if self.closed == closed:
            context.ack(AckStatus.DONE, f"switch {switch_id} already {_word(closed)}")
            return
        with self._lock:
            mode, duration_s = self._mode, self.operating_time_s
        if mode is SwitchMode.FAIL:
            self._fail(command, context, duration_s)
            return
        context.ack(
            AckStatus.ACCEPTED,
            f"switch {switch_id} {'closing' if closed else 'opening'}, "
            f"operating time {duration_s:.3f} s",
        )
        with self._lock:
            self._operating = command_id
        try:
            if not context.clock.sleep(duration_s, context.stop):
                context.ack(
                    AckStatus.FAILED,
                    f"device {self.device_id} stopped before switch {switch_id} moved",
                )
                return
            self.world.operate_switch(switch_id, closed)
            self._report_position(self.closed, cause=f"command {command_id}")
        finally:
            with self._lock:
                self._operating = None
        context.ack(AckStatus.DONE, f"switch {switch_id} {_word(closed)}")

    def _fail(self, command: Command, context: CommandContext, duration_s: float) -> None:
        """A stuck mechanism: the controller waits out the operating time, then raises an alarm."""
        _LOG.warning(
            "%s: switch %d mechanism stuck, command %s (%s) will not be executed",
            self.device_id,
            self.switch_id,
            command.command_id,
            command.action,
            extra={
                "device_id": self.device_id,
                "switch_id": self.switch_id,
                "command_id": command.command_id,
            },
        )
        if not context.clock.sleep(duration_s, context.stop):
            return
        position = _word(self.closed)
        context.event(
            "switch_failed",
            Severity.ALARM,
            f"switch {self.switch_id}: mechanism failed to {command.action} "
            f"(command {command.command_id}); it stays {position}",
            (_flag("closed", self.closed),),
        )

    # -- position and fault indicator -----------------------------------------------------------

    def _on_tick(self, t_ns: int) -> None:
        """Loop thread: the boot report, changes no observer told about, the fault indicator."""
        del t_ns  # the event carries the clock's time of publication
        with self._lock:
            first = self._reported_closed is None
        self._report_position(
            self.closed, cause="at boot" if first else "found at a periodic check"
        )
        if self.fault_indicator:
            self._check_fault_indicator()

    def _on_world_switch(self, switch_id: int, closed: bool) -> None:
        """Any thread that operated a switch of the world (SolvedWorld's observer)."""
        if switch_id != self.switch_id or not self._active:
            return
        with self._lock:
            operating = self._operating
        cause = f"command {operating}" if operating else "operated by another cause"
        self._report_position(closed, cause=cause)

    def _on_indicators(self, switch_ids: Sequence[int]) -> None:
        """The world latched fault indicators: report at once, not at the next tick."""
        if self._active and self.switch_id in switch_ids:
            self._check_fault_indicator()

    def _on_impose(self, state: PhasorState | None) -> None:
        """The grid left its power-flow state (a fault): send a fault record if this device saw
        the disturbance; re-armed when the grid returns to the power flow."""
        if state is None:
            self._recorded = False
            return
        solved = getattr(self.world, "solved", None)
        if self._recorded or not self._active or self._recorder is None or not callable(solved):
            return
        self._recorded = True
        t_ns = self.world.clock.now_ns()
        pre = _recorded_frame(self._recorder, solved(), t_ns - _CYCLE_NS)
        during = _recorded_frame(self._recorder, state, t_ns)
        u_step = np.abs(during.voltage_v - pre.voltage_v).max()
        i_step = np.abs(during.current_a - pre.current_a).max()
        if u_step < _TRIGGER_U * np.abs(pre.voltage_v).max() and i_step < (
            _TRIGGER_I * np.abs(pre.current_a).max() + _TRIGGER_I_MIN_A
        ):
            return  # nothing this recorder would trigger on
        self.agent.emit_event(
            FAULT_RECORD_EVENT,
            Severity.ALARM,
            f"fault recorded at switch {self.switch_id}",
            record_readings(
                fault_t_ns=during.t_ns,
                u_pre_v=pre.voltage_v,
                u_fault_v=during.voltage_v,
                i_pre_a=pre.current_a,
                i_fault_a=during.current_a,
            ),
        )

    def _report_position(self, closed: bool, *, cause: str) -> None:
        with self._lock:
            if closed == self._reported_closed:
                return
            self._reported_closed = closed
            self.agent.emit_event(
                "switch_position",
                Severity.INFO,
                f"switch {self.switch_id} {_word(closed)} ({cause})",
                (_flag("closed", closed),),
            )

    def _check_fault_indicator(self) -> None:
        passed = self.world.fault_passed(self.switch_id)
        with self._lock:
            if passed == self._reported_fault:
                return
            self._reported_fault = passed
            if passed:
                self.agent.emit_event(
                    "fault_indicator",
                    Severity.ALARM,
                    f"fault current passed switch {self.switch_id}",
                    (_flag("fault_passed", True), _flag("closed", self.closed)),
                )
            else:
                self.agent.emit_event(
                    "fault_indicator_cleared",
                    Severity.INFO,
                    f"fault indicator of switch {self.switch_id} reset",
                    (_flag("fault_passed", False),),
                )

    def _check_timing(self, operating_time_s: float, factor: float, extra_s: float) -> None:
        for name, value in (
            ("operating_time_s", operating_time_s),
            ("slow_factor", factor),
            ("slow_extra_s", extra_s),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"device {self.device_id} (switch {self.switch_id}): {name} must be finite "
                    f"and not negative, got {value}"
                )

    def __repr__(self) -> str:
        return f"VirtualSwitch({self.device_id!r}, switch_id={self.switch_id}, mode={self._mode})"


def _recorded_frame(source: TwinSource, state: PhasorState, t_ns: int) -> PhasorFrame:
    """What the recorder of ``source``'s device holds for ``state``: the reading at ``t_ns``, or,
    where the measurement model drops that one, the next of its samples (a recorder keeps
    every sample of its buffer; only periodic reports are lost)."""
    for k in range(_RECORDER_SAMPLES):
        readings = source.model.measure(
            state, t_ns + k * _SAMPLE_NS, device_ids=(source.device_id,)
        )
        if readings.valid[0]:
            current = (
                readings.i_a[0] if readings.measures_current[0] else np.zeros(3, np.complex128)
            )
            return PhasorFrame(
                t_ns=int(readings.t_ns[0]),
                voltage_v=readings.u_v[0].copy(),
                current_a=current.copy(),
                frequency_hz=float(readings.frequency_hz[0]),
            )
    raise ConfigError(
        f"device {source.device_id}: every recorder sample was dropped; the measurement model's "
        "dropout_probability is too close to 1 for a fault recorder"
    )


class VirtualSwitches(Mapping[int, VirtualSwitch]):
    """The switch devices of a twin, by switch id; started and stopped together."""

    def __init__(self, switches: Sequence[VirtualSwitch]) -> None:
        self._by_id = {switch.switch_id: switch for switch in switches}

    def __getitem__(self, switch_id: int) -> VirtualSwitch:
        return self._by_id[switch_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def start(self) -> None:
        for switch in self._by_id.values():
            switch.start()

    def wait_running(self, timeout_s: float) -> bool:
        """True once every device runs (each gets up to ``timeout_s``)."""
        return all(switch.wait_running(timeout_s) for switch in self._by_id.values())

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop all (several at once: each waits for its shutdown status to be acknowledged)."""
        if not self._by_id:
            return
        with ThreadPoolExecutor(max_workers=min(16, len(self._by_id))) as pool:
            list(pool.map(lambda switch: switch.stop(timeout_s), self._by_id.values()))


def build_switches(
    settings: Settings,
    *,
    world: GridWorld,
    model: GridModel,
    catalog: SettingsSource,
    source_for: Callable[[int], DataSource] | None = None,
    operating_times_s: Mapping[SwitchKind, float] = OPERATING_TIME_S,
    case: str | None = None,
    retained_wait_s: float = 1.0,
) -> VirtualSwitches:
    """A :class:`VirtualSwitch` for every remote-controllable switch of ``model`` (not started).

    Device ids are ``sw-<switch id>``; a switch with a fault indicator becomes an FTU. Each device's
    location names ``case`` (default: the model's name), the switch's first bus and the switch, so
    the catalog hands it its part of the grid. ``source_for(switch_id)`` gives each device's data
    source (default: synthetic, seeded with the switch id). A remote-controllable switch whose kind
    has no operating time (a fuse) is skipped with a warning.
    """
    table = model.switch
    kinds = enum_from_code(SwitchKind, table["kind"])
    rows = np.flatnonzero(table["remote_controllable"])
    devices = []
    for row in rows.tolist():
        switch_id = int(table["id"][row])
        kind = SwitchKind(str(kinds[row]))
        operating_time_s = operating_times_s.get(kind)
        if operating_time_s is None:
            _LOG.warning(
                "switch %d (%s) is remote controllable but has no mechanism to operate: skipped",
                switch_id,
                kind,
                extra={"switch_id": switch_id, "switch_kind": str(kind)},
            )
            continue
        devices.append(
            VirtualSwitch(
                settings,
                world=world,
                switch_id=switch_id,
                catalog=catalog,
                operating_time_s=operating_time_s,
                fault_indicator=bool(table["fault_indicator"][row]),
                source=source_for(switch_id) if source_for is not None else None,
                location=Location(
                    case=case or model.name,
                    bus_id=int(table["from_bus"][row]),
                    element_id=switch_id,
                ),
                retained_wait_s=retained_wait_s,
            )
        )
    return VirtualSwitches(devices)
