"""Many meter agents on one thread: their loops and their broker connections.

A :class:`MeterAgent` on its own runs a loop thread and two paho network threads. That is the
right shape for a field device, and the wrong one for a process running a thousand of them (a
twin, a load test): eight thousand threads, each waking up for a few microseconds of work, spend
the CPU on the GIL and on context switches rather than on measurements. An :class:`AgentHost`
runs the same work for all the agents it hosts on one thread, its
:class:`~openfeeder.iot.mqtt.NetworkLoop`:

- each agent's loop iteration (marks, births after reconnects, the tick, delivery from the
  buffer, the plug-in watchdog) runs when its next tick is due or when it is woken (a committed
  mark, a PUBACK it waits for, a stepped clock reaching its tick), one agent at a time;
- agents due at the same instant run together: sources that belong to a
  :class:`~openfeeder.iot.agent.source.SourceBatch` acquire in one call first, then each agent
  ticks with the same domain time. The host puts each agent's first tick on a grid of
  ``tick_grid_s`` (domain time) so that agents reporting at the same interval share instants;
- every agent's two connections are links of the network loop (own client ids, sessions, last
  wills, subscriptions, reconnects).

What stays per agent: its control thread (boot and polls against the catalog, which block on
HTTP), its command thread (a switch's mechanism may take seconds), its plug-ins' threads, its
buffer file. Hosted agents behave as the threaded ones do, message for message; their buffers
are made durable together, by one file-system sync every 5 s from a helper thread, instead of a
checkpoint each (see :mod:`openfeeder.iot.agent.store`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from openfeeder.iot.agent.source import DataSource, SourceBatch
from openfeeder.iot.agent.store import DEFAULT_CHECKPOINT_INTERVAL_S, sync_filesystem
from openfeeder.iot.mqtt import NetworkLoop, TimerHandle
from openfeeder.sim.clock import NS_PER_S

if TYPE_CHECKING:
    from openfeeder.iot.agent.runtime import MeterAgent

__all__ = ["DEFAULT_TICK_GRID_S", "AgentHost"]

_LOG = logging.getLogger(__name__)

DEFAULT_TICK_GRID_S: Final = 0.05
"""Hosted agents' first ticks fall on multiples of this (domain seconds): 20 instants a second
share the measurements of all agents due at them."""
_BATCH_WINDOW_S: Final = 0.002
"""The host wakes this long after the earliest due agent, to run those due with it together."""
_MAX_WAIT_S: Final = 1.0
"""Longest a hosted agent goes without an iteration (0.5 s with plug-ins, for their watchdog)."""
_DETACH_WAIT_S: Final = 10.0


class AgentHost:
    """Runs the loops and connections of many :class:`MeterAgent`\\ s on one thread (module doc).

    ``start`` before the first hosted agent starts; ``stop`` after the last one stopped.
    """

    def __init__(
        self,
        *,
        name: str = "agent-host",
        tick_grid_s: float = DEFAULT_TICK_GRID_S,
        connect_workers: int = 16,
    ) -> None:
        if tick_grid_s < 0:
            raise ValueError("tick_grid_s must not be negative")
        self.network = NetworkLoop(name=name, connect_workers=connect_workers)
        self._grid_ns = round(tick_grid_s * NS_PER_S)
        self._heap: list[tuple[float, int, int, MeterAgent]] = []
        self._generation: dict[MeterAgent, int] = {}  # hosted agents (loop thread only)
        self._order = itertools.count()
        self._timer: TimerHandle | None = None
        self._timer_due = math.inf
        self._lock = threading.Lock()
        self._woken: set[MeterAgent] = set()
        self._wake_pending = False
        self._sync_dirs: set[Path] = set()
        self._syncer: threading.Thread | None = None
        self._stopped = threading.Event()
        self.iterations = 0
        """Agent loop iterations run (for tests and benchmarks)."""
        self.batches = 0
        """Source batches prefetched."""

    def start(self) -> None:
        self.network.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        self.network.stop(timeout_s)
        syncer = self._syncer
        if syncer is not None:
            syncer.join(timeout_s)

    @property
    def agents(self) -> int:
        """Agents hosted now."""
        return len(self._generation)

    # -- called by the agents ------------------------------------------------------------------

    def attach(self, agent: MeterAgent, state_dir: Path) -> None:
        """Start running ``agent``'s loop (it is configured and its buffer, under ``state_dir``,
        is open)."""
        with self._lock:
            if state_dir not in self._sync_dirs:
                self._sync_dirs.add(state_dir)
                self._start_syncer()
        self.network.call_soon(lambda: self._attach(agent))

    def _start_syncer(self) -> None:
        if self._syncer is None:
            self._syncer = threading.Thread(
                target=self._sync_main, name=f"{self.network.name}-sync", daemon=True
            )
            self._syncer.start()

    def _sync_main(self) -> None:
        """Every ``DEFAULT_CHECKPOINT_INTERVAL_S``: make the hosted buffers' appends durable."""
        while not self._stopped.wait(DEFAULT_CHECKPOINT_INTERVAL_S):
            with self._lock:
                folders = list(self._sync_dirs)
            for folder in folders:
                try:
                    sync_filesystem(folder)
                except OSError as err:
                    _LOG.warning("cannot sync the buffers in %s: %s", folder, err)

    def detach(self, agent: MeterAgent) -> None:
        """Stop running ``agent``'s loop; no iteration of it runs once this returns."""
        if self.network.in_loop_thread():
            self._generation.pop(agent, None)
            return
        done = threading.Event()

        def detached() -> None:
            self._generation.pop(agent, None)
            done.set()

        self.network.call_soon(detached)
        if not done.wait(_DETACH_WAIT_S):  # the loop has ended (or is stuck): nothing runs it
            _LOG.warning("agent %s: host %s did not detach it", agent.device_id, self.network.name)

    def wake(self, agent: MeterAgent) -> None:
        """Run an iteration of ``agent`` soon (any thread)."""
        with self._lock:
            self._woken.add(agent)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.network.call_soon(self._run_woken)

    # -- loop thread ---------------------------------------------------------------------------

    def _attach(self, agent: MeterAgent) -> None:
        now_ns = agent.clock.now_ns()
        grid = self._grid_ns
        first_ns = (
            -(-now_ns // grid) * grid if grid > 0 and not math.isinf(agent.clock.speed) else now_ns
        )
        agent._loop_begin(first_ns)
        self._generation[agent] = 0
        self._push(agent, agent._wait_s(first_ns, _MAX_WAIT_S))
        self._arm()

    def _push(self, agent: MeterAgent, wait_s: float) -> None:
        generation = self._generation[agent] + 1
        self._generation[agent] = generation
        due = time.monotonic() + wait_s
        heapq.heappush(self._heap, (due, next(self._order), generation, agent))

    def _arm(self) -> None:
        heap = self._heap
        while heap and self._generation.get(heap[0][3]) != heap[0][2]:
            heapq.heappop(heap)  # stale: the agent ran since, or left
        if not heap:
            return
        due = heap[0][0] + _BATCH_WINDOW_S
        if due >= self._timer_due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.network.call_later(due - time.monotonic(), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_due = math.inf
        now = time.monotonic()
        heap = self._heap
        due: list[MeterAgent] = []
        while heap and heap[0][0] <= now:
            _, _, generation, agent = heapq.heappop(heap)
            if self._generation.get(agent) == generation:
                due.append(agent)
        self._iterate(due)
        self._arm()

    def _run_woken(self) -> None:
        with self._lock:
            woken, self._woken = self._woken, set()
            self._wake_pending = False
        self._iterate([agent for agent in woken if agent in self._generation])
        self._arm()

    def _iterate(self, agents: list[MeterAgent]) -> None:
        if not agents:
            return
        now_by_clock: dict[int, int] = {}

        def now_ns(agent: MeterAgent) -> int:
            key = id(agent.clock)
            value = now_by_clock.get(key)
            if value is None:
                value = now_by_clock[key] = agent.clock.now_ns()
            return value

        self._prefetch(agents, now_ns)
        for agent in agents:
            if agent not in self._generation:  # detached by an earlier one's iteration
                continue
            max_wait_s = _MAX_WAIT_S / 2 if agent._has_algorithms else _MAX_WAIT_S
            wait_s = agent._loop_once(now_ns(agent), max_wait_s=max_wait_s)
            self.iterations += 1
            if agent in self._generation:
                self._push(agent, wait_s)

    def _prefetch(self, agents: list[MeterAgent], now_ns: Callable[[MeterAgent], int]) -> None:
        groups: dict[tuple[int, int], tuple[SourceBatch, list[DataSource]]] = {}
        for agent in agents:
            t_ns = now_ns(agent)
            if not agent._tick_due(t_ns):
                continue
            batch = getattr(agent.source, "batch", None)
            if isinstance(batch, SourceBatch):
                groups.setdefault((id(batch), t_ns), (batch, []))[1].append(agent.source)
        for (_, t_ns), (batch, sources) in groups.items():
            try:
                batch.prefetch(sources, t_ns=t_ns)
                self.batches += 1
            except Exception:  # each source then acquires on its own (and reports its error)
                _LOG.exception("batch acquisition of %d sources failed", len(sources))
