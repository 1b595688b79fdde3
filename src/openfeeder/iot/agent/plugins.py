"""Algorithms as plug-ins: the package format, verified loading, and isolated execution.

**Package.** An algorithm is a zip archive holding ``manifest.json`` and its Python code::

    manifest.json        {"name": "energy", "version": "1.0.0", "entry": "energy:EnergyMeter",
                          "inputs": ["p", "q"],
                          "outputs": [{"channel": "e_p", "unit": "Wh"}, ...],
                          "description": "...", "parameters": {"...": "defaults"}}
    energy.py            the module named by ``entry`` (or a package: energy/__init__.py, ...)

- ``entry`` is ``module:Class``; the module is one file or one package at the archive's root (a
  package may hold submodules and import them relatively; it must not import sibling top-level
  modules of the archive by absolute name, they are not on ``sys.path``).
- ``inputs``: measurement channels the algorithm receives (``"u_a"``, ``"p"``, ... or ``"*"`` for all
  of them), and MQTT topic filters of the scheme it subscribes to (``"openfeeder/v1/topology"``,
  ``"openfeeder/v1/algo/+/energy"``); a filter is recognised by its ``/`` and subscribed on the
  broker its message class travels on.
- ``outputs``: the channels (with units) it may publish. Outputs are published as
  :class:`~openfeeder.iot.schema.AlgorithmOutput` on ``openfeeder/v1/algo/<device>/<name>``; a reading
  with a channel or unit the manifest does not declare is a failure of the algorithm.
- ``parameters``: defaults, overridden by the ``parameters`` of the catalog's
  :class:`~openfeeder.iot.device_settings.AlgorithmRef`.

``openfeeder algorithm package DIR -o FILE`` (:func:`build_package`) builds an archive from a folder
holding ``manifest.json`` and the code; the archive is reproducible (sorted entries, fixed times), so
its SHA-256 identifies the content. The examples in ``openfeeder/iot/agent/algorithms/`` are built
this way (:func:`builtin_algorithms`).

**Loading** (:func:`load_package`): the bytes are checked against the SHA-256 of the
``AlgorithmRef`` *before* anything is opened, extracted or imported; then the archive is checked
(manifest valid, name and version equal to the ref's, no absolute or ``..`` paths, no links, at most
:data:`MAX_PACKAGE_FILES` files and :data:`MAX_UNPACKED_BYTES`), extracted to
``<root>/<name>/<version>/`` and its module imported under a unique name
(``_openfeeder_algo_<name>_<version>_<n>``), so that v1 and v2 of one algorithm coexist during a
swap. Every refusal is a :class:`PackageError` with a :class:`PackageFault`.

**Interface** (:class:`Algorithm`, a lifecycle like pandapower's controllers). The class is
instantiated without arguments, then:

- ``start(context)``: receives an :class:`AlgorithmContext` (device id, its own name and version,
  parameters, the grid part the device monitors, a private state folder, ``emit_event`` and a
  logger); sets up its state;
- ``on_measurement(readings, t_ns)``: called once per measurement message with the readings of its
  input channels; returns the readings to publish (or None / an empty sequence);
- ``on_message(topic, payload)`` (optional): called for each message on its input topics (raw bytes:
  decode them with :func:`openfeeder.iot.schema.decode`); returns readings to publish, like above;
- ``reconfigure(context)`` (optional): the device's grid part or the algorithm's parameters changed
  (same version); without it the algorithm is restarted as a fresh instance instead;
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

import hashlib
import hmac
import importlib.util
import io
import itertools
import logging
import os
import queue
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Annotated, Any, Final, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    model_validator,
)

from openfeeder.errors import MessagingError, OpenFeederError
from openfeeder.iot.device_settings import AlgorithmRef, GridPart
from openfeeder.iot.schema import Reading, Severity, Unit
from openfeeder.iot.topics import MESSAGE_SPECS, BrokerContext, MessageClass, TopicFilter

__all__ = [
    "DEFAULT_CALL_DEADLINE_S",
    "DEFAULT_QUEUE_SIZE",
    "MANIFEST_FILE",
    "MAX_PACKAGE_FILES",
    "MAX_UNPACKED_BYTES",
    "Algorithm",
    "AlgorithmContext",
    "EventSink",
    "LoadedAlgorithm",
    "Manifest",
    "OutputSpec",
    "PackageError",
    "PackageFault",
    "PluginRunner",
    "PluginState",
    "PluginStats",
    "build_package",
    "builtin_algorithms",
    "load_package",
    "package_sha256",
    "parameters_for",
    "topic_context",
    "unload",
]

_LOG = logging.getLogger(__name__)

MANIFEST_FILE: Final = "manifest.json"
MAX_PACKAGE_FILES: Final = 1000
MAX_UNPACKED_BYTES: Final = 16 * 1024 * 1024
DEFAULT_CALL_DEADLINE_S: Final = 2.0
DEFAULT_QUEUE_SIZE: Final = 16
_BUILTIN_DIR: Final = Path(__file__).parent / "algorithms"
_MODULE_COUNTER = itertools.count()

Token = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")]
Entry = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*$"),
]


class PackageFault(StrEnum):
    """Why a package was refused (``PackageError.reason``)."""

    CHECKSUM_MISMATCH = "checksum_mismatch"
    NOT_A_ZIP = "not_a_zip"
    UNSAFE_ENTRY = "unsafe_entry"
    TOO_LARGE = "too_large"
    BAD_MANIFEST = "bad_manifest"
    NAME_MISMATCH = "name_mismatch"
    MISSING_MODULE = "missing_module"
    IMPORT_FAILED = "import_failed"
    NOT_AN_ALGORITHM = "not_an_algorithm"


class PackageError(OpenFeederError):
    """An algorithm package was refused; nothing of it was imported."""

    def __init__(self, message: str, *, name: str, version: str, reason: PackageFault) -> None:
        super().__init__(message)
        self.name = name
        self.version = version
        self.reason = reason


class OutputSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: Token
    unit: Unit


class Manifest(BaseModel):
    """``manifest.json`` of an algorithm package (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    version: Version
    entry: Entry
    inputs: Annotated[tuple[str, ...], Field(max_length=256)] = ()
    outputs: Annotated[tuple[OutputSpec, ...], Field(max_length=1024)] = ()
    description: Annotated[str, StringConstraints(max_length=2048)] = ""
    parameters: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_inputs_outputs(self) -> Manifest:
        for value in self.inputs:
            if "/" in value:
                topic_context(value)  # raises ValueError for a filter outside the scheme
            elif value != "*" and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", value) is None:
                raise ValueError(f"input {value!r} is neither a channel, '*' nor a topic filter")
        channels = [spec.channel for spec in self.outputs]
        if len(set(channels)) != len(channels):
            raise ValueError("an output channel is declared twice")
        return self

    @property
    def module(self) -> str:
        return self.entry.split(":", 1)[0]

    @property
    def class_name(self) -> str:
        return self.entry.split(":", 1)[1]

    @property
    def input_channels(self) -> frozenset[str] | None:
        """Channels it consumes; None means all of them (``"*"``)."""
        if "*" in self.inputs:
            return None
        return frozenset(value for value in self.inputs if "/" not in value)

    @property
    def input_topics(self) -> tuple[TopicFilter, ...]:
        return tuple(TopicFilter(value) for value in self.inputs if "/" in value)

    @property
    def output_units(self) -> Mapping[str, Unit]:
        return {spec.channel: spec.unit for spec in self.outputs}


def topic_context(topic_filter: str) -> BrokerContext:
    """The broker a filter's messages travel on (the first context of its message class)."""
    try:
        flt = TopicFilter(topic_filter)
    except MessagingError as err:
        raise ValueError(f"input {topic_filter!r}: {err}") from err
    levels = flt.inner.split("/")
    if levels[:2] != ["openfeeder", "v1"] or len(levels) < 3:
        raise ValueError(f"input {topic_filter!r} is not under 'openfeeder/v1/'")
    try:
        message_class = MessageClass(levels[2])
    except ValueError as err:
        raise ValueError(f"input {topic_filter!r}: unknown message class {levels[2]!r}") from err
    return MESSAGE_SPECS[message_class].contexts[0]


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


# --- building packages ----------------------------------------------------------------------------

_ZIP_TIME: Final = (2020, 1, 1, 0, 0, 0)


def _package_files(directory: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_dir() or "__pycache__" in relative.split("/") or path.suffix == ".pyc":
            continue
        yield relative, path


def build_package(directory: Path) -> bytes:
    """A reproducible zip of ``directory`` (its ``manifest.json`` checked, ``__pycache__`` left out).

    Raises :class:`PackageError` (BAD_MANIFEST, MISSING_MODULE) when the folder is not a package.
    """
    manifest = _read_manifest_file(directory / MANIFEST_FILE)
    module = manifest.module
    if (
        not (directory / f"{module}.py").is_file()
        and not (directory / module / "__init__.py").is_file()
    ):
        raise PackageError(
            f"{directory}: entry module {module!r} is neither {module}.py nor {module}/__init__.py",
            name=manifest.name,
            version=manifest.version,
            reason=PackageFault.MISSING_MODULE,
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, path in _package_files(directory):
            info = zipfile.ZipInfo(relative, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def package_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def builtin_algorithms() -> dict[str, Path]:
    """The example algorithms shipped with OpenFeeder: name -> source folder."""
    found: dict[str, Path] = {}
    if _BUILTIN_DIR.is_dir():
        for manifest_path in sorted(_BUILTIN_DIR.glob(f"*/{MANIFEST_FILE}")):
            manifest = _read_manifest_file(manifest_path)
            found[manifest.name] = manifest_path.parent
    return found


def _read_manifest_file(path: Path) -> Manifest:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PackageError(
            f"{path}: cannot read the manifest: {err.strerror or err}",
            name="",
            version="",
            reason=PackageFault.BAD_MANIFEST,
        ) from err
    return _parse_manifest(data, where=str(path), name="", version="")


def _parse_manifest(data: bytes, *, where: str, name: str, version: str) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field_name = ".".join(str(part) for part in first["loc"]) or "manifest"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise PackageError(
            f"{where}: {field_name}: {message}",
            name=name,
            version=version,
            reason=PackageFault.BAD_MANIFEST,
        ) from err


# --- loading --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadedAlgorithm:
    """A verified, extracted and imported package."""

    ref: AlgorithmRef
    manifest: Manifest
    factory: Callable[[], Any]
    """The algorithm class (called without arguments for each new instance)."""
    module_name: str
    directory: Path

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def version(self) -> str:
        return self.ref.version


def _refuse(ref: AlgorithmRef, reason: PackageFault, detail: str) -> PackageError:
    return PackageError(
        f"algorithm {ref.name} {ref.version}: {detail}",
        name=ref.name,
        version=ref.version,
        reason=reason,
    )


def load_package(data: bytes, ref: AlgorithmRef, *, root: Path) -> LoadedAlgorithm:
    """Verify ``data`` against ``ref.sha256``, check, extract under ``root`` and import it."""
    digest = package_sha256(data)
    if not hmac.compare_digest(digest, ref.sha256):
        raise _refuse(
            ref,
            PackageFault.CHECKSUM_MISMATCH,
            f"package SHA-256 is {digest}, the catalog says {ref.sha256}: refused, nothing "
            "extracted",
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise _refuse(ref, PackageFault.NOT_A_ZIP, f"not a zip archive ({err})") from err
    with archive:
        members = _checked_members(archive, ref)
        if MANIFEST_FILE not in members:
            raise _refuse(ref, PackageFault.BAD_MANIFEST, f"no {MANIFEST_FILE} at the root")
        manifest = _parse_manifest(
            archive.read(members[MANIFEST_FILE]),
            where=f"algorithm {ref.name} {ref.version}: {MANIFEST_FILE}",
            name=ref.name,
            version=ref.version,
        )
        if (manifest.name, manifest.version) != (ref.name, ref.version):
            raise _refuse(
                ref,
                PackageFault.NAME_MISMATCH,
                f"the package is {manifest.name} {manifest.version}",
            )
        module = manifest.module
        single, package = f"{module}.py", f"{module}/__init__.py"
        if single not in members and package not in members:
            raise _refuse(
                ref, PackageFault.MISSING_MODULE, f"entry module {module!r} is not in the package"
            )
        directory = _extract(archive, members, root / ref.name / ref.version)
    is_package = (directory / package).is_file()
    module_name = _unique_module_name(ref)
    factory = _import_entry(ref, manifest, directory, module_name, is_package=is_package)
    return LoadedAlgorithm(
        ref=ref, manifest=manifest, factory=factory, module_name=module_name, directory=directory
    )


def _checked_members(archive: zipfile.ZipFile, ref: AlgorithmRef) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_PACKAGE_FILES:
        raise _refuse(ref, PackageFault.TOO_LARGE, f"more than {MAX_PACKAGE_FILES} files")
    total = 0
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        path = PurePosixPath(name)
        mode = info.external_attr >> 16
        unsafe = (
            name.startswith("/")
            or "\\" in name
            or ".." in path.parts
            or (path.parts and ":" in path.parts[0])
            or stat.S_ISLNK(mode)
        )
        if unsafe:
            raise _refuse(ref, PackageFault.UNSAFE_ENTRY, f"unsafe entry {name!r}")
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise _refuse(
                ref, PackageFault.TOO_LARGE, f"more than {MAX_UNPACKED_BYTES} bytes unpacked"
            )
        if not info.is_dir():
            members[name] = info
    return members


def _extract(
    archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo], target: Path
) -> Path:
    """Extract into a fresh folder next to ``target``, then put it in place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, info in members.items():
            destination = staging / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, destination.open("wb") as sink:
                remaining = MAX_UNPACKED_BYTES
                while chunk := source.read(65536):  # the header's size may lie: count again
                    remaining -= len(chunk)
                    if remaining < 0:
                        raise OSError("entry larger than the unpacked limit")
                    sink.write(chunk)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _unique_module_name(ref: AlgorithmRef) -> str:
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", text)

    return f"_openfeeder_algo_{clean(ref.name)}_{clean(ref.version)}_{next(_MODULE_COUNTER)}"


def _import_entry(
    ref: AlgorithmRef,
    manifest: Manifest,
    directory: Path,
    module_name: str,
    *,
    is_package: bool,
) -> Callable[[], Any]:
    module_dir = directory / manifest.module
    if is_package:
        spec = importlib.util.spec_from_file_location(
            module_name, module_dir / "__init__.py", submodule_search_locations=[str(module_dir)]
        )
    else:
        spec = importlib.util.spec_from_file_location(
            module_name, directory / f"{manifest.module}.py"
        )
    if spec is None or spec.loader is None:
        raise _refuse(ref, PackageFault.IMPORT_FAILED, "cannot make an import spec")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # any error of the plug-in's module code refuses the package
        _forget_module(module_name)
        raise _refuse(
            ref, PackageFault.IMPORT_FAILED, f"importing it raised {type(err).__name__}: {err}"
        ) from err
    factory = getattr(module, manifest.class_name, None)
    if not isinstance(factory, type) or not _has_methods(factory):
        _forget_module(module_name)
        raise _refuse(
            ref,
            PackageFault.NOT_AN_ALGORITHM,
            f"{manifest.entry} is not a class with start, on_measurement and stop",
        )
    return factory


def _has_methods(cls: type) -> bool:
    return all(callable(getattr(cls, name, None)) for name in ("start", "on_measurement", "stop"))


def _forget_module(module_name: str) -> None:
    for name in [n for n in sys.modules if n == module_name or n.startswith(f"{module_name}.")]:
        del sys.modules[name]


def unload(loaded: LoadedAlgorithm) -> None:
    """Drop the imported module (and submodules) from ``sys.modules``; instances keep working."""
    _forget_module(loaded.module_name)


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
            return None
        instance.stop()  # "stop"
        return None

    def _after(self, call: _Call, result: Any, error: BaseException | None) -> bool:
        """Handle a call's outcome; True when the worker is finished."""
        if error is None and call.kind in ("measurement", "message") and result:
            try:
                readings = self._checked_outputs(result)
            except TypeError as err:
                error = err
            else:
                t_ns = call.args[1] if call.kind == "measurement" else None
                self.outputs += 1
                try:
                    self._on_outputs(self, readings, t_ns)
                except Exception:  # publishing is the agent's job; its failure is not the plug-in's
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

    def _checked_outputs(self, result: Any) -> tuple[Reading, ...]:
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


def parameters_for(manifest: Manifest, ref: AlgorithmRef) -> Mapping[str, JsonValue]:
    """The manifest's default parameters overridden by the ref's."""
    return MappingProxyType({**manifest.parameters, **ref.parameters})
