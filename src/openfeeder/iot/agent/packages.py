"""Algorithm packages: the format, reproducible building, and verified loading.

An algorithm is a zip archive holding ``manifest.json`` and its Python code::

    manifest.json        {"name": "energy", "version": "1.0.0", "entry": "energy:EnergyMeter",
                          "inputs": ["p", "q"],
                          "outputs": [{"channel": "e_p_import", "unit": "Wh"}, ...],
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
swap. Every refusal is a :class:`PackageError` with a :class:`PackageFault`. How a loaded algorithm
runs is :mod:`openfeeder.iot.agent.plugins`.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import io
import itertools
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Annotated, Any, Final

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
from openfeeder.iot.device_settings import AlgorithmRef
from openfeeder.iot.schema import Unit
from openfeeder.iot.topics import MESSAGE_SPECS, BrokerContext, MessageClass, TopicFilter

__all__ = [
    "MANIFEST_FILE",
    "MAX_PACKAGE_FILES",
    "MAX_UNPACKED_BYTES",
    "LoadedAlgorithm",
    "Manifest",
    "OutputSpec",
    "PackageError",
    "PackageFault",
    "build_package",
    "builtin_algorithms",
    "load_package",
    "package_sha256",
    "parameters_for",
    "read_manifest",
    "topic_context",
    "unload",
]

MANIFEST_FILE: Final = "manifest.json"
MAX_PACKAGE_FILES: Final = 1000
MAX_UNPACKED_BYTES: Final = 16 * 1024 * 1024
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
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    """The signature is malformed, altered, or for another package or other bytes."""
    UNTRUSTED = "untrusted"
    """Signed by a key the device does not trust."""
    EXPIRED = "expired"
    DOWNGRADE = "downgrade"
    """Older than the installed version, or the installed version with other content."""


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


def read_manifest(directory: Path) -> Manifest:
    """The checked ``manifest.json`` of a package folder (PackageError BAD_MANIFEST if not)."""
    return _read_manifest_file(directory / MANIFEST_FILE)


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


def parameters_for(manifest: Manifest, ref: AlgorithmRef) -> Mapping[str, JsonValue]:
    """The manifest's default parameters overridden by the ref's."""
    return MappingProxyType({**manifest.parameters, **ref.parameters})
