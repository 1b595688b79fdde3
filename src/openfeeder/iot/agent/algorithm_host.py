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

**Trust** (:mod:`openfeeder.iot.agent.trust`): before anything is fetched the reference must carry
a valid, unexpired signature of a trusted publisher and must not be older than the installed
version; a refusal is a ``package_refused`` event (severity warning) and the running version stays.

**Download**: a package is fetched into ``<name>/<version>.zip.part``; when the catalog cannot be
reached or the transfer breaks, the partial file stays and the fetch is retried every
``retry_after_s``, continuing where it stopped (HTTP ``Range``, seed 002's "resume breakpoint").

**Health check and rollback**: a new version is on probation until it has handled
``health_measurements`` measurements and its optional ``check_health()`` passed; then it becomes
the installed version (the rollback-protection floor) and an ``algorithm_updated`` event (info)
says so. If it fails, hangs or is unhealthy on probation, the version it replaced is started again
(a fresh instance of the already verified package), the failed package is remembered and never
retried, and an ``algorithm_rolled_back`` event (warning) says why. :meth:`AlgorithmHost.review`
does this on the agent's control thread; the host asks for it through ``on_attention``.

If the new version cannot be fetched, verified, loaded or started, the old one keeps running and an
``algorithm_failed`` event says why. The measurement loop only ever reads the current mapping of
runners (replaced as a whole), so it never waits for a swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, Protocol

from openfeeder.iot.agent.packages import (
    LoadedAlgorithm,
    PackageError,
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
from openfeeder.iot.agent.trust import InstalledPackages, PackageTrust
from openfeeder.iot.catalog_client import CatalogUnavailableError
from openfeeder.iot.device_settings import AlgorithmRef, GridPart
from openfeeder.iot.schema import Reading, Severity

__all__ = ["DEFAULT_HEALTH_MEASUREMENTS", "AlgorithmHost", "Downloader"]

_LOG = logging.getLogger(__name__)
DEFAULT_HEALTH_MEASUREMENTS: Final = 3
DEFAULT_RETRY_AFTER_S: Final = 5.0


class Downloader(Protocol):
    """Fetches a package's bytes (the catalog's ``download_algorithm``); with ``partial`` it keeps
    what arrived in that file and continues from there on the next call."""

    def __call__(self, ref: AlgorithmRef, *, partial: Path | None = None) -> bytes: ...


@dataclass(slots=True)
class _Probation:
    """A new version not yet installed, and what to go back to if it fails."""

    ref: AlgorithmRef
    runner: PluginRunner
    previous: tuple[LoadedAlgorithm, AlgorithmRef] | None
    health_asked: bool = False


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
        trust: PackageTrust | None = None,
        health_measurements: int = DEFAULT_HEALTH_MEASUREMENTS,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        on_attention: Callable[[], None] = lambda: None,
    ) -> None:
        """``trust``: which packages are accepted (default: signed by the keys of the settings);
        ``on_attention``: asks the owner to call :meth:`review` soon (any thread)."""
        self.device_id = device_id
        self._packages_dir = root / "algorithms"
        self._trust = trust if trust is not None else PackageTrust()
        self.installed = InstalledPackages(self._packages_dir / "installed.json")
        self._health_measurements = health_measurements
        self._retry_after_s = retry_after_s
        self._on_attention = on_attention
        self._package_keys: tuple[str, ...] = ()
        self._probation: dict[str, _Probation] = {}
        self._retry: dict[str, tuple[AlgorithmRef, float]] = {}
        self._desired: dict[str, AlgorithmRef] = {}
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
        if self._probation:
            for trial in list(self._probation.values()):
                if not trial.health_asked and trial.runner.calls >= self._health_measurements:
                    self._on_attention()

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

    def apply(
        self,
        refs: Sequence[AlgorithmRef],
        grid: GridPart | None,
        *,
        package_keys: Sequence[str] = (),
    ) -> None:
        """Make the running set equal to ``refs`` (module docstring); never raises.

        ``package_keys``: the publisher keys of the settings (used unless keys are pinned).
        """
        with self._apply_lock:
            desired = {ref.name: ref for ref in refs}
            self._desired = desired
            self._package_keys = tuple(package_keys)
            self._retry = {n: r for n, r in self._retry.items() if desired.get(n) == r[0]}
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

    def review(self) -> None:
        """Settle probations (install or roll back) and retry interrupted downloads; called on
        the control thread (never raises)."""
        with self._apply_lock:
            for name, trial in list(self._probation.items()):
                try:
                    self._review_one(name, trial)
                except Exception:  # one algorithm's trouble must not stop the others
                    _LOG.exception("cannot review algorithm %s", name)
            now = time.monotonic()
            for name, (ref, since) in list(self._retry.items()):
                if now - since < self._retry_after_s or self._desired.get(name) != ref:
                    continue
                del self._retry[name]
                try:
                    self._apply_one(ref, grid_changed=False)
                except Exception as err:
                    _LOG.exception("cannot apply algorithm %s %s", ref.name, ref.version)
                    self._report_failure(ref, f"cannot be applied: {err}")

    @property
    def pending_retries(self) -> int:
        """Downloads waiting to be retried (continued) by :meth:`review`."""
        return len(self._retry)

    def _review_one(self, name: str, trial: _Probation) -> None:
        runner = trial.runner
        if runner.state in (PluginState.FAILED, PluginState.HUNG):
            self._roll_back(name, trial, runner.error or str(runner.state))
        elif runner.health_passed:
            del self._probation[name]
            self.installed.install(trial.ref)
            if trial.previous is not None:
                previous_loaded, previous_ref = trial.previous
                self._release(previous_loaded)
                self._emit_event(
                    "algorithm_updated",
                    Severity.INFO,
                    f"algorithm {name} {trial.ref.version} passed its health check and "
                    f"replaces {previous_ref.version}",
                )
            _LOG.info("algorithm %s %s installed", name, trial.ref.version)
        elif not trial.health_asked and runner.calls >= self._health_measurements:
            trial.health_asked = runner.submit_health()
            if runner.health_passed:
                self._review_one(name, trial)

    def _roll_back(self, name: str, trial: _Probation, why: str) -> None:
        del self._probation[name]
        if trial.previous is None:
            return  # nothing to go back to: it stays failed, retried on a new configuration
        self.installed.reject(trial.ref)
        previous_loaded, previous_ref = trial.previous
        runner = PluginRunner(
            previous_loaded,
            self._context(previous_loaded, previous_ref),
            on_outputs=self._on_outputs,
            on_problem=self._on_problem,
            deadline_s=self._deadline_s,
            queue_size=self._queue_size,
        )
        started = runner.start()
        self._set_runner(name, runner)
        self._refs[name] = previous_ref
        trial.runner.stop(wait=False)
        self._release(trial.runner.loaded)
        message = (
            f"algorithm {name} {trial.ref.version} failed its health check ({why}); rolled back "
            f"to {previous_ref.version}"
            + ("" if started else f", which did not start either: {runner.error}")
        )
        _LOG.warning("%s", message, extra={"algorithm": name, "version": trial.ref.version})
        self._emit_event("algorithm_rolled_back", Severity.WARNING, message[:2048])

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
        loaded = self._fetch(ref)
        if loaded is None:
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
        earlier = self._probation.pop(ref.name, None)
        previous: tuple[LoadedAlgorithm, AlgorithmRef] | None = None
        if earlier is not None:  # replaces a version still on probation: keep its fallback
            previous = earlier.previous
        elif old is not None and healthy and old_ref is not None:
            previous = (old.loaded, old_ref)
        self._probation[ref.name] = _Probation(ref=ref, runner=runner, previous=previous)
        if old is not None:
            self.swaps += 1
            old.stop()
            if previous is None or old.loaded is not previous[0]:
                self._release(old.loaded)
        _LOG.info(
            "algorithm %s %s running%s",
            ref.name,
            ref.version,
            f" (replaces {old.version})" if old is not None else "",
            extra={"algorithm": ref.name, "version": ref.version},
        )

    def _fetch(self, ref: AlgorithmRef) -> LoadedAlgorithm | None:
        """The verified, loaded package; None when it is refused or unavailable (reported)."""
        if self.installed.is_rejected(ref):
            _LOG.debug("algorithm %s %s failed its health check before", ref.name, ref.version)
            return None
        try:
            self._trust.check(ref, self._package_keys, self.installed)
        except PackageError as err:
            self._refuse(ref, str(err))
            return None
        try:
            return self._load(ref)
        except PackageError as err:
            self._report_failure(ref, f"cannot be loaded: {err}")
        except (CatalogUnavailableError, OSError) as err:
            self._retry[ref.name] = (ref, time.monotonic())  # no answer: continue later
            self._report_failure(ref, f"cannot be fetched (retried): {err}")
        except Exception as err:  # the catalog client's other errors, whatever they are
            self._report_failure(ref, f"cannot be fetched: {err}")
        return None

    def _remove(self, name: str) -> None:
        runner = self._runners.get(name)
        remaining = {key: value for key, value in self._runners.items() if key != name}
        self._runners = MappingProxyType(remaining)
        self._refs.pop(name, None)
        self._retry.pop(name, None)
        trial = self._probation.pop(name, None)
        if trial is not None and trial.previous is not None:
            self._release(trial.previous[0])
        if runner is not None:
            runner.stop()
            self._release(runner.loaded)
            _LOG.info("algorithm %s %s removed", runner.name, runner.version)

    def _set_runner(self, name: str, runner: PluginRunner) -> None:
        self._runners = MappingProxyType({**self._runners, name: runner})

    def _release(self, loaded: LoadedAlgorithm) -> None:
        """Forget a loaded package once no runner uses it and no probation may go back to it."""
        if any(runner.loaded is loaded for runner in self._runners.values()):
            return
        if any(
            trial.previous is not None and trial.previous[0] is loaded
            for trial in self._probation.values()
        ):
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
            partial = package_file.with_name(f"{package_file.name}.part")
            data = self._download(ref, partial=partial)
        loaded = load_package(data, ref, root=self._packages_dir)
        if from_catalog:
            package_file.write_bytes(data)
        self._loaded[key] = loaded
        return loaded

    def _on_problem(self, runner: PluginRunner, kind: str, message: str) -> None:
        self._emit_event(kind, Severity.WARNING, message)
        if any(trial.runner is runner for trial in self._probation.values()):
            self._on_attention()  # on probation: roll back soon

    def _refuse(self, ref: AlgorithmRef, detail: str) -> None:
        _LOG.warning("%s", detail, extra={"algorithm": ref.name, "version": ref.version})
        self._emit_event("package_refused", Severity.WARNING, detail[:2048])

    def _report_failure(self, ref: AlgorithmRef, detail: str) -> None:
        message = f"algorithm {ref.name} {ref.version} {detail}"
        _LOG.warning("%s", message, extra={"algorithm": ref.name, "version": ref.version})
        self._emit_event("algorithm_failed", Severity.WARNING, message[:2048])
