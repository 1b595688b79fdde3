"""The set of algorithms a meter runs, kept equal to its settings, swapped without a gap.

:meth:`AlgorithmHost.apply` is called with the ``algorithms`` of each new configuration and the
device's grid part. It compares them with what runs:

- a new name: fetch the package (from the local package cache when its SHA-256 still matches, else
  from the catalog), verify, load, start;
- a changed version (or SHA-256): load v2 and start it, *then* switch the inputs to it and stop v1,
  so there is no moment with neither; v1 finishes the inputs already queued for it;
- same version, changed parameters or grid part: ``reconfigure(context)`` if the algorithm has it,
  else a fresh instance is started and swapped in the same way;
- a name no longer listed: its inputs stop, then it is stopped; its outputs stop with it;
- an algorithm that failed or hung is started again (fresh instance), per the policy of
  :mod:`openfeeder.iot.agent.plugins`.

If the new version cannot be fetched, verified, loaded or started, the old one keeps running and an
``algorithm_failed`` event says why. The measurement loop only ever reads the current mapping of
runners (replaced as a whole), so it never waits for a swap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from openfeeder.errors import OpenFeederError
from openfeeder.iot.agent.packages import (
    LoadedAlgorithm,
    load_package,
    package_sha256,
    parameters_for,
    unload,
)
from openfeeder.iot.agent.plugins import (
    DEFAULT_CALL_DEADLINE_S,
    DEFAULT_QUEUE_SIZE,
    AlgorithmContext,
    EventSink,
    OutputSink,
    PluginRunner,
    PluginState,
    PluginStats,
)
from openfeeder.iot.device_settings import AlgorithmRef, GridPart
from openfeeder.iot.schema import Reading, Severity

__all__ = ["AlgorithmHost", "Downloader"]

_LOG = logging.getLogger(__name__)

Downloader = Callable[[AlgorithmRef], bytes]
"""Fetches a package's bytes (the catalog's ``download_algorithm``)."""


class AlgorithmHost:
    """Runs a device's algorithms (see the module docstring)."""

    def __init__(
        self,
        *,
        device_id: str,
        root: Path,
        download: Downloader,
        on_outputs: OutputSink,
        emit_event: EventSink,
        deadline_s: float = DEFAULT_CALL_DEADLINE_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.device_id = device_id
        self._packages_dir = root / "algorithms"
        self._state_root = root / "algorithm-state"
        self._download = download
        self._on_outputs = on_outputs
        self._emit_event = emit_event
        self._deadline_s = deadline_s
        self._queue_size = queue_size
        self._apply_lock = threading.Lock()
        self._runners: Mapping[str, PluginRunner] = MappingProxyType({})
        self._refs: dict[str, AlgorithmRef] = {}
        self._loaded: dict[tuple[str, str, str], LoadedAlgorithm] = {}
        self._grid: GridPart | None = None
        self.swaps = 0

    # -- what the loop and the network threads call --------------------------------------------

    @property
    def runners(self) -> Mapping[str, PluginRunner]:
        return self._runners

    def dispatch(self, readings: Sequence[Reading], t_ns: int) -> None:
        """Queue a measurement for every running algorithm (never blocks)."""
        for runner in self._runners.values():
            runner.submit_measurement(readings, t_ns)

    def route(self, topic: str, payload: bytes) -> None:
        """Queue a message for every running algorithm that subscribed to ``topic``."""
        for runner in self._runners.values():
            if any(flt.matches(topic) for flt in runner.loaded.manifest.input_topics):
                runner.submit_message(topic, payload)

    def input_channels(self) -> frozenset[str] | None:
        """Measurement channels any running algorithm consumes (None: all of them)."""
        wanted: set[str] = set()
        for runner in self._runners.values():
            channels = runner.loaded.manifest.input_channels
            if channels is None:
                return None
            wanted |= channels
        return frozenset(wanted)

    def input_topics(self) -> set[str]:
        """The topic filters the running algorithms consume."""
        return {
            flt.value
            for runner in self._runners.values()
            for flt in runner.loaded.manifest.input_topics
        }

    def watchdog(self) -> None:
        """Abandon algorithms whose call ran past the deadline (each reports itself once)."""
        for runner in self._runners.values():
            runner.check_deadline()

    def stats(self) -> tuple[PluginStats, ...]:
        return tuple(runner.stats() for runner in self._runners.values())

    # -- what the control thread calls ---------------------------------------------------------

    def apply(self, refs: Sequence[AlgorithmRef], grid: GridPart | None) -> None:
        """Make the running set equal to ``refs`` (module docstring); never raises."""
        with self._apply_lock:
            desired = {ref.name: ref for ref in refs}
            grid_changed = grid != self._grid
            self._grid = grid
            for name in [name for name in self._runners if name not in desired]:
                self._remove(name)
            for ref in desired.values():
                try:
                    self._apply_one(ref, grid_changed=grid_changed)
                except Exception as err:  # one algorithm's trouble must not stop the others
                    _LOG.exception("cannot apply algorithm %s %s", ref.name, ref.version)
                    self._report_failure(ref, f"cannot be applied: {err}")

    def stop_all(self) -> None:
        with self._apply_lock:
            for name in list(self._runners):
                self._remove(name)

    def _apply_one(self, ref: AlgorithmRef, *, grid_changed: bool) -> None:
        old = self._runners.get(ref.name)
        old_ref = self._refs.get(ref.name)
        healthy = old is not None and old.state is PluginState.RUNNING
        same_package = old_ref is not None and (old_ref.version, old_ref.sha256) == (
            ref.version,
            ref.sha256,
        )
        if old is not None and healthy and same_package:
            if old_ref == ref and not grid_changed:
                return
            context = self._context(old.loaded, ref)
            if old.reconfigure(context):
                self._refs[ref.name] = ref
                return
        try:
            loaded = self._load(ref)
        except (OpenFeederError, OSError) as err:
            self._report_failure(ref, f"cannot be loaded: {err}")
            return
        except Exception as err:  # the catalog client's own errors, whatever they are
            self._report_failure(ref, f"cannot be fetched: {err}")
            return
        runner = PluginRunner(
            loaded,
            self._context(loaded, ref),
            on_outputs=self._on_outputs,
            on_problem=self._on_problem,
            deadline_s=self._deadline_s,
            queue_size=self._queue_size,
        )
        if not runner.start():
            if old is None or not healthy:  # nothing better to keep: show the failed one
                self._set_runner(ref.name, runner)
                self._refs[ref.name] = ref
            self._release(loaded)
            return
        self._set_runner(ref.name, runner)  # from here on the new one gets the inputs
        self._refs[ref.name] = ref
        if old is not None:
            self.swaps += 1
            old.stop()
            self._release(old.loaded)
        _LOG.info(
            "algorithm %s %s running%s",
            ref.name,
            ref.version,
            f" (replaces {old.version})" if old is not None else "",
            extra={"algorithm": ref.name, "version": ref.version},
        )

    def _remove(self, name: str) -> None:
        runner = self._runners.get(name)
        remaining = {key: value for key, value in self._runners.items() if key != name}
        self._runners = MappingProxyType(remaining)
        self._refs.pop(name, None)
        if runner is not None:
            runner.stop()
            self._release(runner.loaded)
            _LOG.info("algorithm %s %s removed", runner.name, runner.version)

    def _set_runner(self, name: str, runner: PluginRunner) -> None:
        self._runners = MappingProxyType({**self._runners, name: runner})

    def _release(self, loaded: LoadedAlgorithm) -> None:
        """Forget a loaded package once no runner uses it."""
        if any(runner.loaded is loaded for runner in self._runners.values()):
            return
        key = (loaded.name, loaded.version, loaded.ref.sha256)
        if self._loaded.get(key) is loaded:
            del self._loaded[key]
        unload(loaded)

    def _context(self, loaded: LoadedAlgorithm, ref: AlgorithmRef) -> AlgorithmContext:
        state_dir = self._state_root / ref.name
        state_dir.mkdir(parents=True, exist_ok=True)
        return AlgorithmContext(
            device_id=self.device_id,
            algorithm=ref.name,
            version=ref.version,
            parameters=parameters_for(loaded.manifest, ref),
            grid=self._grid,
            state_dir=state_dir,
            emit_event=self._emit_event,
            logger=logging.getLogger(f"openfeeder.algorithm.{ref.name}"),
        )

    def _load(self, ref: AlgorithmRef) -> LoadedAlgorithm:
        key = (ref.name, ref.version, ref.sha256)
        cached = self._loaded.get(key)
        if cached is not None:
            return cached
        package_file = self._packages_dir / ref.name / f"{ref.version}.zip"
        data: bytes | None = None
        if package_file.is_file():
            data = package_file.read_bytes()
            if package_sha256(data) != ref.sha256:
                data = None
        from_catalog = data is None
        if data is None:
            data = self._download(ref)
        loaded = load_package(data, ref, root=self._packages_dir)
        if from_catalog:
            package_file.write_bytes(data)
        self._loaded[key] = loaded
        return loaded

    def _on_problem(self, _runner: PluginRunner, kind: str, message: str) -> None:
        self._emit_event(kind, Severity.WARNING, message)

    def _report_failure(self, ref: AlgorithmRef, detail: str) -> None:
        message = f"algorithm {ref.name} {ref.version} {detail}"
        _LOG.warning("%s", message, extra={"algorithm": ref.name, "version": ref.version})
        self._emit_event("algorithm_failed", Severity.WARNING, message[:2048])
