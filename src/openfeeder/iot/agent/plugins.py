"""Algorithms as plug-ins: the interface they implement and how the agent runs them in isolation.

The package format and its verified loading are :mod:`openfeeder.iot.agent.packages`; the user's
guide with an example is ``docs/algorithms.md``.

**Interface** (:class:`Algorithm`, a lifecycle like pandapower's controllers). The class named by
the manifest's ``entry`` is instantiated without arguments, then:

- ``start(context)``: receives an :class:`AlgorithmContext` (device id, its own name and version,
  parameters, the grid part the device monitors, a private state folder, ``emit_event`` and a
  logger); sets up its state;
- ``on_measurement(readings, t_ns)``: called once per measurement message with the readings of its
  input channels; returns the readings to publish as one message (or None / an empty sequence),
  or a sequence of reading sequences to publish several messages in order (an output too large
  for one message, whose readings are limited to 1,024);
- ``on_message(topic, payload)`` (optional): called for each message on its input topics (raw bytes:
  decode them with :func:`openfeeder.iot.schema.decode`); returns readings to publish, like above;
- ``reconfigure(context)`` (optional): the device's grid part or the algorithm's parameters changed
  (same version); without it the algorithm is restarted as a fresh instance instead;
- ``check_health()`` (optional): the health check of a new version, called once after its first
  measurements (:mod:`openfeeder.iot.agent.algorithm_host`); returning False or raising fails it,
  and the agent goes back to the version it replaced;
- ``stop()``: release what it holds. Its state is its own: attributes of the instance.

**Isolation.** Each algorithm runs on its own worker thread fed by a bounded queue
(:data:`DEFAULT_QUEUE_SIZE` items; when full, new inputs are skipped and counted, never waited for):

- a call that *raises* is caught; the algorithm is reported as an ``Event`` of kind
  ``algorithm_failed`` (severity warning, the algorithm named in the message), its ``stop()`` is
  called and it is **disabled**: it stays FAILED until the next configuration change that lists it
  (a push or a poll with a new ``config_version``), which restarts it with a fresh instance;
- a call that runs past its deadline (:data:`DEFAULT_CALL_DEADLINE_S`, 2 s, for ``start``,
  ``on_measurement``, ``on_message``, ``reconfigure`` and ``stop`` alike) is reported as
  ``algorithm_hung`` and **abandoned**: no more inputs are queued for it, whatever it returns later
  is discarded, and its thread is left behind (a daemon thread: Python cannot kill a thread). It is
  retried like a failed one, on the next configuration change.

What a thread does **not** give: no memory protection (an algorithm shares the interpreter and can
change any module state), no CPU isolation (it holds the GIL while it runs pure Python, which slows
the agent; numpy releases it), no protection against ``os._exit``, a segfault in a C extension or
unbounded memory use. Run untrusted algorithms only after the package is signed and reviewed; a
process per algorithm would isolate more at the cost of serialising every measurement.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from pydantic import JsonValue

from openfeeder.iot.agent.packages import LoadedAlgorithm
from openfeeder.iot.device_settings import GridPart
from openfeeder.iot.schema import Reading, Severity

__all__ = [
    "DEFAULT_CALL_DEADLINE_S",
    "DEFAULT_QUEUE_SIZE",
    "Algorithm",
    "AlgorithmContext",
    "EventSink",
    "OutputSink",
    "PluginRunner",
    "PluginState",
    "PluginStats",
    "ProblemSink",
]

_LOG = logging.getLogger(__name__)

DEFAULT_CALL_DEADLINE_S: Final = 2.0
DEFAULT_QUEUE_SIZE: Final = 256
"""Inputs waiting per algorithm: enough for the burst of events a fault causes (every FTU's
indicator and record at once) reaching an algorithm that listens to events (the edge locator)."""

# --- the interface --------------------------------------------------------------------------------


class EventSink(Protocol):
    def __call__(
        self, kind: str, severity: Severity, message: str, values: Sequence[Reading] = ()
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class AlgorithmContext:
    """What an algorithm is given at ``start`` (and ``reconfigure``)."""

    device_id: str
    algorithm: str
    version: str
    parameters: Mapping[str, JsonValue]
    """The manifest's defaults overridden by the catalog's parameters for this device."""
    grid: GridPart | None
    """The part of the grid model the device monitors (None when the catalog gives none)."""
    state_dir: Path
    """A folder of its own that survives restarts and version changes (one per algorithm name)."""
    emit_event: EventSink
    """Publish an ``Event`` about the device on the grid_ops broker (kind: lower snake case)."""
    logger: logging.Logger


@runtime_checkable
class Algorithm(Protocol):
    """What a plug-in class implements (``on_message`` and ``reconfigure`` are optional)."""

    def start(self, context: AlgorithmContext) -> None: ...

    def on_measurement(
        self, readings: Sequence[Reading], t_ns: int
    ) -> Sequence[Reading] | None: ...

    def stop(self) -> None: ...


# --- running --------------------------------------------------------------------------------------


class PluginState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # raised: disabled until the next configuration change
    HUNG = "hung"  # a call passed its deadline: abandoned


@dataclass(frozen=True, slots=True)
class PluginStats:
    name: str
    version: str
    state: PluginState
    calls: int
    outputs: int
    skipped: int
    """Inputs not queued because the queue was full (the algorithm is slower than the data)."""
    error: str


OutputSink = Callable[["PluginRunner", tuple[Reading, ...], int | None], None]
"""Publishes an algorithm's outputs (runner, readings, t_ns of the measurement or None for outputs
of ``on_message``); called on the runner's thread."""
ProblemSink = Callable[["PluginRunner", str, str], None]
"""Reports ``algorithm_failed`` / ``algorithm_hung`` (runner, kind, message); any thread."""


@dataclass(slots=True)
class _Call:
    kind: str
    args: tuple[Any, ...] = ()
    done: threading.Event = field(default_factory=threading.Event)


class PluginRunner:
    """One algorithm instance on its own worker thread, with a bounded input queue and deadlines."""

    def __init__(
        self,
        loaded: LoadedAlgorithm,
        context: AlgorithmContext,
        *,
        on_outputs: OutputSink,
        on_problem: ProblemSink,
        deadline_s: float = DEFAULT_CALL_DEADLINE_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loaded = loaded
        self.context = context
        self.deadline_s = deadline_s
        self._on_outputs = on_outputs
        self._on_problem = on_problem
        self._clock = clock
        self._queue: queue.Queue[_Call] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._state = PluginState.STARTING
        self._abandoned = False
        self._busy_since: float | None = None
        self._busy_kind = ""
        self._instance: Any = None
        self.calls = 0
        self.outputs = 0
        self.skipped = 0
        self.error = ""
        self.health_passed = False
        """Its ``check_health`` (or, without one, :meth:`submit_health`) said it is healthy."""
        manifest = loaded.manifest
        self._channels = manifest.input_channels
        self._units = manifest.output_units
        self._thread = threading.Thread(
            target=self._work,
            name=f"algo-{context.device_id}-{loaded.name}-{loaded.version}",
            daemon=True,  # a hung algorithm's thread must not keep the process alive
        )

    # -- control (agent threads) ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def state(self) -> PluginState:
        return self._state

    @property
    def accepting(self) -> bool:
        return self._state is PluginState.RUNNING and not self._abandoned

    def start(self) -> bool:
        """Instantiate and ``start`` it on its thread; True when it is running within the deadline."""
        self._thread.start()
        call = _Call("start", (self.context,))
        self._queue.put(call)
        if not call.done.wait(self.deadline_s + 0.5):
            self.check_deadline(force=True)
            return False
        return self._state is PluginState.RUNNING

    def submit_measurement(self, readings: Sequence[Reading], t_ns: int) -> bool:
        """Queue the readings of its input channels; False (counted) if it cannot take them now."""
        if not self.accepting:
            return False
        if self._channels is not None:
            readings = tuple(r for r in readings if r.channel in self._channels)
        return self._offer(_Call("measurement", (readings, t_ns)))

    def submit_message(self, topic: str, payload: bytes) -> bool:
        if not self.accepting:
            return False
        return self._offer(_Call("message", (topic, payload)))

    def submit_health(self) -> bool:
        """Queue the health check (``check_health()`` if the algorithm has one); False if it
        cannot take it now. :attr:`health_passed` turns True once it passed."""
        if not self.accepting:
            return False
        if self._instance is not None and not callable(
            getattr(self._instance, "check_health", None)
        ):
            self.health_passed = True
            return True
        return self._offer(_Call("health"))

    def reconfigure(self, context: AlgorithmContext) -> bool:
        """Hand a changed context to ``reconfigure``; False if it has none (restart it instead)."""
        self.context = context
        if self._instance is None or not callable(getattr(self._instance, "reconfigure", None)):
            return False
        return self._offer(_Call("reconfigure", (context,)))

    def stop(self, *, wait: bool = True) -> None:
        """Let queued inputs finish, then ``stop`` it; waits up to the deadline (then: hung)."""
        with self._lock:
            if self._state in (PluginState.STOPPED, PluginState.HUNG) or self._abandoned:
                return
            failed = self._state is PluginState.FAILED
            if not failed:
                self._state = PluginState.STOPPING
        if failed or not self._thread.is_alive():
            return
        call = _Call("stop")
        try:
            self._queue.put(call, timeout=self.deadline_s)
        except queue.Full:
            self.check_deadline(force=True)
            return
        if wait and not call.done.wait(self.deadline_s * (self._queue.qsize() + 2)):
            self.check_deadline(force=True)

    def check_deadline(self, *, force: bool = False) -> bool:
        """Abandon it if a call has run past the deadline (or, with ``force``, if one is running
        at all); reports ``algorithm_hung`` once. True if it is (now) abandoned as hung."""
        with self._lock:
            if self._abandoned:
                return self._state is PluginState.HUNG
            busy = self._busy_since
            if busy is None:
                return False
            late = self._clock() - busy
            if late <= self.deadline_s and not force:
                return False
            self._abandoned = True
            self._state = PluginState.HUNG
            kind = self._busy_kind
            self.error = f"{kind} still running after {late:.1f} s (deadline {self.deadline_s} s)"
        self._report(
            "algorithm_hung",
            f"algorithm {self.name} {self.version}: {self.error}; abandoned (its thread is left "
            "behind, no more inputs are queued)",
        )
        return True

    def stats(self) -> PluginStats:
        return PluginStats(
            name=self.name,
            version=self.version,
            state=self._state,
            calls=self.calls,
            outputs=self.outputs,
            skipped=self.skipped,
            error=self.error,
        )

    def _offer(self, call: _Call) -> bool:
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.skipped += 1
            return False
        return True

    def _report(self, kind: str, message: str) -> None:
        try:
            self._on_problem(self, kind, message)
        except Exception:  # reporting must never take the caller down
            _LOG.exception("cannot report %s for algorithm %s", kind, self.name)

    # -- worker thread -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            call = self._queue.get()
            with self._lock:
                if self._abandoned:
                    call.done.set()
                    return
                self._busy_since = self._clock()
                self._busy_kind = call.kind
            result: Any = None
            error: BaseException | None = None
            try:
                result = self._dispatch(call)
            except Exception as err:  # the plug-in's bug: isolate it, report it
                error = err
            with self._lock:
                self._busy_since = None
                abandoned = self._abandoned
            if abandoned:  # it came back after the deadline: its results are discarded
                call.done.set()
                return
            finished = self._after(call, result, error)
            call.done.set()
            if finished:
                return

    def _dispatch(self, call: _Call) -> Any:
        if call.kind == "start":
            self._instance = self.loaded.factory()
            self._instance.start(call.args[0])
            return None
        instance = self._instance
        if call.kind == "measurement":
            self.calls += 1
            return instance.on_measurement(*call.args)
        if call.kind == "message":
            handler = getattr(instance, "on_message", None)
            if handler is None:
                return None
            self.calls += 1
            return handler(*call.args)
        if call.kind == "reconfigure":
            instance.reconfigure(call.args[0])
        elif call.kind == "health":
            if instance.check_health() is False:
                raise RuntimeError("check_health() returned False")
            self.health_passed = True
        else:
            instance.stop()  # "stop"
        return None

    def _after(self, call: _Call, result: Any, error: BaseException | None) -> bool:
        """Handle a call's outcome; True when the worker is finished."""
        if error is None and call.kind in ("measurement", "message") and result:
            try:
                messages = self._checked_messages(result)
            except TypeError as err:
                error = err
            else:
                t_ns = call.args[1] if call.kind == "measurement" else None
                for readings in messages:
                    self.outputs += 1
                    try:
                        self._on_outputs(self, readings, t_ns)
                    except (
                        Exception
                    ):  # publishing is the agent's job, its failure not the plug-in's
                        _LOG.exception("cannot publish outputs of algorithm %s", self.name)
        if error is not None:
            self._fail(call.kind, error)
            return True
        if call.kind == "start":
            with self._lock:
                if self._state is PluginState.STARTING:
                    self._state = PluginState.RUNNING
        elif call.kind == "stop":
            with self._lock:
                self._state = PluginState.STOPPED
            return True
        return False

    def _checked_messages(self, result: Any) -> list[tuple[Reading, ...]]:
        """The output messages of a call: its readings (one message), or a sequence of reading
        sequences (one message each, published in order)."""
        items = tuple(result)
        if not items:
            return []
        if isinstance(items[0], Reading):
            return [self._checked_outputs(items)]
        return [self._checked_outputs(message) for message in items if message]

    def _checked_outputs(self, result: Any) -> tuple[Reading, ...]:
        if isinstance(result, str | bytes) or not isinstance(result, Sequence):
            raise TypeError(f"returned {type(result).__name__}, not a sequence of Reading")
        readings = tuple(result)
        for reading in readings:
            if not isinstance(reading, Reading):
                raise TypeError(f"returned {type(reading).__name__}, not Reading")
            unit = self._units.get(reading.channel)
            if unit is None:
                raise TypeError(f"output channel {reading.channel!r} is not in its manifest")
            if reading.unit != unit:
                raise TypeError(
                    f"output {reading.channel!r} in {reading.unit}, its manifest says {unit}"
                )
        return readings

    def _fail(self, kind: str, error: BaseException) -> None:
        with self._lock:
            self._state = PluginState.FAILED
            self.error = f"{kind} raised {type(error).__name__}: {error}"[:512]
        _LOG.warning(
            "algorithm %s %s failed: %s",
            self.name,
            self.version,
            self.error,
            exc_info=error,
            extra={"algorithm": self.name, "version": self.version},
        )
        self._report(
            "algorithm_failed",
            f"algorithm {self.name} {self.version}: {self.error}; disabled until the next "
            "configuration change",
        )
        if kind != "stop" and self._instance is not None:
            try:  # best effort: let it release what it holds
                self._instance.stop()
            except Exception:
                _LOG.debug("stop of failed algorithm %s raised too", self.name, exc_info=True)
