"""Many meter agents at once: in this process (threads) or spread over worker processes.

:class:`Fleet` runs agents side by side in one process; each keeps its own threads (loop, control,
one per algorithm), its two broker connections (paho's network thread each) and its buffer file.

One process holds at most :data:`MAX_AGENTS_PER_PROCESS` agents. The limit is paho's: its network
thread waits with ``select()``, which cannot watch a file descriptor numbered 1024 or higher, and an
agent holds about 8 (two sockets and two wake-up socket pairs of paho, the buffer's database and
WAL files); past roughly 120 agents new connections fail and keep failing. :class:`ProcessFleet`
therefore spreads larger fleets over worker processes (``spawn``), each running a :class:`Fleet`
and reporting its counters once a second; this also puts the machine's other cores to work, which
the GIL keeps a single process from doing.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from openfeeder.config import Settings
from openfeeder.iot.agent.runtime import AgentState, AgentStats, MeterAgent, SettingsSource
from openfeeder.iot.agent.source import SyntheticParams, SyntheticSource
from openfeeder.iot.device_settings import Location

__all__ = [
    "MAX_AGENTS_PER_PROCESS",
    "Fleet",
    "FleetStats",
    "MeterSpec",
    "ProcessFleet",
    "aggregate",
]

_LOG = logging.getLogger(__name__)

MAX_AGENTS_PER_PROCESS: Final = 100
_REPORT_EVERY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """One meter of a fleet: its id, where it sits, and its synthetic source."""

    device_id: str
    seed: int
    params: SyntheticParams = field(default_factory=SyntheticParams)
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class FleetStats:
    """Sums of the agents' counters (see :class:`~openfeeder.iot.agent.runtime.AgentStats`)."""

    meters: int = 0
    running: int = 0
    produced: int = 0
    published: int = 0
    buffered: int = 0
    in_flight: int = 0
    dropped: int = 0
    resends: int = 0
    plugins: int = 0
    plugins_running: int = 0
    cpu_s: float = 0.0
    """CPU time of the process(es) since the fleet started."""

    def __add__(self, other: FleetStats) -> FleetStats:
        return FleetStats(
            *(
                getattr(self, name) + getattr(other, name)
                for name in FleetStats.__dataclass_fields__
            )
        )


def aggregate(stats: Iterable[AgentStats], *, cpu_s: float = 0.0) -> FleetStats:
    total = FleetStats(cpu_s=cpu_s)
    for s in stats:
        total += FleetStats(
            meters=1,
            running=int(s.state is AgentState.RUNNING),
            produced=s.produced,
            published=s.published,
            buffered=s.buffered,
            in_flight=s.in_flight,
            dropped=s.dropped,
            resends=s.resends,
            plugins=len(s.plugins),
            plugins_running=sum(p.state == "running" for p in s.plugins),
        )
    return total


class Fleet:
    """Agents in this process (threads); one shared catalog client serves them all."""

    def __init__(
        self, settings: Settings, specs: Sequence[MeterSpec], *, catalog: SettingsSource
    ) -> None:
        if len(specs) > MAX_AGENTS_PER_PROCESS:
            _LOG.warning(
                "%d agents in one process: paho's select() fails past fd 1024 (about %d agents)",
                len(specs),
                MAX_AGENTS_PER_PROCESS,
            )
        self.agents = [
            MeterAgent(
                settings,
                device_id=spec.device_id,
                source=SyntheticSource(spec.seed, params=spec.params),
                catalog=catalog,
                location=spec.location,
            )
            for spec in specs
        ]
        self._cpu_started = time.process_time()

    def start(self) -> None:
        self._cpu_started = time.process_time()
        for agent in self.agents:
            agent.start()

    def stats(self) -> FleetStats:
        return aggregate(
            (agent.stats() for agent in self.agents),
            cpu_s=time.process_time() - self._cpu_started,
        )

    def stop(self) -> None:
        """Stop every agent (several at a time: each waits for its shutdown status's PUBACK)."""
        if not self.agents:
            return
        with ThreadPoolExecutor(max_workers=min(32, len(self.agents))) as pool:
            list(pool.map(lambda agent: agent.stop(), self.agents))


class ProcessFleet:
    """Agents spread over worker processes of at most ``per_process`` agents each."""

    def __init__(
        self,
        settings: Settings,
        specs: Sequence[MeterSpec],
        *,
        processes: int | None = None,
        per_process: int = MAX_AGENTS_PER_PROCESS,
    ) -> None:
        count = processes or max(1, math.ceil(len(specs) / per_process))
        size = math.ceil(len(specs) / count)
        self._chunks = [list(specs[i : i + size]) for i in range(0, len(specs), size)]
        self._settings_json = settings.model_dump_json()
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._latest: dict[int, FleetStats] = {}
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def processes(self) -> int:
        return len(self._chunks)

    @property
    def failed(self) -> list[str]:
        """Workers that ended with an error (name and exit code)."""
        return [
            f"{worker.name} (exit code {worker.exitcode})"
            for worker in self._workers
            if worker.exitcode not in (None, 0)
        ]

    def start(self) -> None:
        for index, chunk in enumerate(self._chunks):
            receiver, sender = self._context.Pipe(duplex=False)
            worker = self._context.Process(
                target=_worker,
                args=(self._settings_json, chunk, sender, self._stop),
                name=f"meters-{index}",
                daemon=False,
            )
            worker.start()
            sender.close()
            self._pipes.append(receiver)
            self._workers.append(worker)

    def stats(self) -> FleetStats:
        """The workers' latest reports, summed (after :meth:`stop`: their final ones)."""
        if not self._closed:
            self._drain(0.0)
        with self._lock:
            latest = list(self._latest.values())
        total = FleetStats()
        for stats in latest:
            total += stats
        return total

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            while worker.is_alive() and time.monotonic() < deadline:
                self._drain(0.2)
                worker.join(0.05)
            if worker.is_alive():
                _LOG.warning("worker %s did not stop; terminating it", worker.name)
                worker.terminate()
                worker.join(5)
        self._drain(0.0)
        for pipe in self._pipes:
            pipe.close()
        self._closed = True

    def _drain(self, timeout_s: float) -> None:
        for ready in multiprocessing.connection.wait(self._pipes, timeout=timeout_s):
            if not isinstance(ready, multiprocessing.connection.Connection):
                continue
            try:
                while ready.poll():
                    stats: FleetStats = ready.recv()
                    with self._lock:
                        self._latest[self._pipes.index(ready)] = stats
            except (EOFError, OSError):
                continue


def _worker(
    settings_json: str,
    specs: list[MeterSpec],
    report: multiprocessing.connection.Connection,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """One worker process: a :class:`Fleet` until ``stop`` is set (the parent handles signals)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    from openfeeder.iot.agent.identity import catalog_client
    from openfeeder.services.runtime import configure_logging

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.logging, service="agent")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with catalog_client(settings) as client:
        fleet = Fleet(settings, specs, catalog=client)
        fleet.start()
        try:
            while not stop.wait(_REPORT_EVERY_S):
                report.send(fleet.stats())
        finally:
            fleet.stop()
            report.send(fleet.stats())
            report.close()
