"""What virtual devices can sense and do in the twin's physical grid.

The twin (:mod:`openfeeder.sim.twin`) owns the physical state: the solved phasors, the positions of
the switches, the latched fault indicators. Virtual devices reach it only through
:class:`GridWorld`, the way a real device reaches the grid only through its sensors and its
operating mechanism; everything else a device does goes over MQTT and REST like a real one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.phasors import PhasorState, solve_phasors
from openfeeder.model.grid import GridModel
from openfeeder.sim.clock import Clock

__all__ = ["GridWorld", "SolvedWorld"]

FloatArray = npt.NDArray[np.float64]


@runtime_checkable
class GridWorld(Protocol):
    """The physical grid as the devices of the twin see it (thread-safe)."""

    @property
    def clock(self) -> Clock:
        """The domain clock the twin runs on."""
        ...

    def phasors(self) -> PhasorState:
        """The latest solved state (normal operation or a fault in progress)."""
        ...

    def switch_closed(self, switch_id: int) -> bool:
        """Present position of a switch (KeyError for an unknown id)."""
        ...

    def operate_switch(self, switch_id: int, closed: bool) -> None:
        """Move a switch's contacts now (the mechanism has finished operating); the twin solves
        the new state at once."""
        ...

    def fault_passed(self, switch_id: int) -> bool:
        """Whether fault current passed the switch since its indicator was last reset (latched)."""
        ...

    def reset_fault_indicator(self, switch_id: int) -> None:
        """Clear the latched fault indication of a switch."""
        ...


class SolvedWorld:
    """A concrete :class:`GridWorld`: a grid model at an operating point, solved on every change.

    The twin drives it: :meth:`set_operating_point` with each time step's loads and generation,
    :meth:`impose` while a fault (or any event the power flow alone cannot describe) holds the grid
    in another state, :meth:`latch_fault_indicators` when fault current passed switches. Virtual
    devices read it and operate its switches. Switch positions live here, so a switch operated by a
    device is seen by the next solve; observers registered with :meth:`on_switch` learn about every
    operation (the twin uses it to re-plan a fault's course and to record the event).
    """

    def __init__(
        self,
        model: GridModel,
        clock: Clock,
        *,
        load_p_mw: FloatArray | None = None,
        load_q_mvar: FloatArray | None = None,
        generator_p_mw: FloatArray | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._model = model
        self._switch_ids = model.switch["id"].astype(np.int64)
        self._closed = model.switch["closed"].astype(bool).copy()
        self._latched = np.zeros(self._switch_ids.size, dtype=bool)
        self._load_p = model.load["p_mw"].copy() if load_p_mw is None else np.array(load_p_mw)
        self._load_q = model.load["q_mvar"].copy() if load_q_mvar is None else np.array(load_q_mvar)
        self._gen_p = (
            model.generator["p_mw"].copy() if generator_p_mw is None else np.array(generator_p_mw)
        )
        self._imposed: PhasorState | None = None
        self._observers: list[Callable[[int, bool], None]] = []
        self._impose_observers: list[Callable[[PhasorState | None], None]] = []
        self._indicator_observers: list[Callable[[Sequence[int]], None]] = []
        self._state = self._solve()
        self.solves = 1

    # -- GridWorld ------------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    def phasors(self) -> PhasorState:
        with self._lock:
            return self._imposed if self._imposed is not None else self._state

    def switch_closed(self, switch_id: int) -> bool:
        with self._lock:
            return bool(self._closed[self._switch_row(switch_id)])

    def operate_switch(self, switch_id: int, closed: bool) -> None:
        with self._lock:
            row = self._switch_row(switch_id)
            if bool(self._closed[row]) == closed:
                return
            self._closed[row] = closed
            self._state = self._solve()
            observers = list(self._observers)
        for observer in observers:
            observer(switch_id, closed)

    def fault_passed(self, switch_id: int) -> bool:
        with self._lock:
            return bool(self._latched[self._switch_row(switch_id)])

    def reset_fault_indicator(self, switch_id: int) -> None:
        with self._lock:
            self._latched[self._switch_row(switch_id)] = False

    # -- driven by the twin ---------------------------------------------------------------------

    @property
    def model(self) -> GridModel:
        """The grid model with the present switch positions."""
        with self._lock:
            return self._model.with_switch_states(
                dict(zip(self._switch_ids.tolist(), self._closed.tolist(), strict=True))
            )

    def switch_states(self) -> dict[int, bool]:
        with self._lock:
            return dict(zip(self._switch_ids.tolist(), self._closed.tolist(), strict=True))

    def set_operating_point(
        self,
        load_p_mw: FloatArray,
        load_q_mvar: FloatArray,
        generator_p_mw: FloatArray | None = None,
        *,
        state: PhasorState | None = None,
    ) -> None:
        """New loads and generation; ``state`` when the caller already solved them (batch)."""
        with self._lock:
            self._load_p = np.array(load_p_mw, dtype=np.float64)
            self._load_q = np.array(load_q_mvar, dtype=np.float64)
            if generator_p_mw is not None:
                self._gen_p = np.array(generator_p_mw, dtype=np.float64)
            self._state = state if state is not None else self._solve()

    def operating_point(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        with self._lock:
            return self._load_p.copy(), self._load_q.copy(), self._gen_p.copy()

    def solved(self) -> PhasorState:
        """The power-flow state at the present switch positions, ignoring any imposed state."""
        with self._lock:
            return self._state

    def impose(self, state: PhasorState | None) -> None:
        """Hold the grid in ``state`` (a fault in progress); None returns to the solved state."""
        with self._lock:
            self._imposed = state
            observers = list(self._impose_observers)
        for observer in observers:
            observer(state)

    def latch_fault_indicators(self, switch_ids: Sequence[int]) -> None:
        with self._lock:
            for switch_id in switch_ids:
                self._latched[self._switch_row(switch_id)] = True
            observers = list(self._indicator_observers)
        for observer in observers:
            observer(switch_ids)

    def on_switch(self, observer: Callable[[int, bool], None]) -> None:
        """Call ``observer(switch_id, closed)`` after every switch operation (any thread)."""
        with self._lock:
            self._observers.append(observer)

    def on_impose(self, observer: Callable[[PhasorState | None], None]) -> None:
        """Call ``observer(state)`` whenever a state is imposed or released (None), any thread;
        :meth:`solved` still gives the power-flow state from before (a recorder's pre-fault)."""
        with self._lock:
            self._impose_observers.append(observer)

    def on_fault_indicators(self, observer: Callable[[Sequence[int]], None]) -> None:
        """Call ``observer(switch_ids)`` when fault indicators latch (an FTU reports at once)."""
        with self._lock:
            self._indicator_observers.append(observer)

    def _switch_row(self, switch_id: int) -> int:
        rows = np.flatnonzero(self._switch_ids == switch_id)
        if rows.size == 0:
            raise KeyError(f"no switch with id {switch_id} in the twin's grid")
        return int(rows[0])

    def _solve(self) -> PhasorState:
        model = self._model.with_switch_states(
            dict(zip(self._switch_ids.tolist(), self._closed.tolist(), strict=True))
        )
        gen_p = self._gen_p[None, :] if model.generator.size else None
        series = solve_phasors(
            model,
            load_p_mw=self._load_p[None, :],
            load_q_mvar=self._load_q[None, :],
            generator_p_mw=gen_p,
        )
        self.solves = getattr(self, "solves", 0) + 1
        return series.state(0)
