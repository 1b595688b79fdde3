"""What virtual devices can sense and do in the twin's physical grid.

The twin (:mod:`openfeeder.sim.twin`) owns the physical state: the solved phasors, the positions of
the switches, the latched fault indicators. Virtual devices reach it only through
:class:`GridWorld`, the way a real device reaches the grid only through its sensors and its
operating mechanism; everything else a device does goes over MQTT and REST like a real one.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from openfeeder.analysis.phasors import PhasorState
from openfeeder.sim.clock import Clock

__all__ = ["GridWorld"]


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
