"""Which algorithm packages a meter accepts: publisher signatures, expiry, and rollback protection.

Before a meter fetches, extracts or imports a package it checks the reference the catalog sent
(:meth:`PackageTrust.check`):

1. **signature**: the ``AlgorithmRef.signature`` must be metadata signed by a trusted publisher
   (:func:`openfeeder.security.signing.verify_package`) for this name, version and SHA-256, and not
   expired. Unsigned, altered, foreign-key and expired signatures are refused
   (``require_signed = False`` in ``[access] require_signed_packages`` lets unsigned packages
   through; a signature that is present is still checked).
2. **rollback**: the version must not be older than the one installed for that name (the last one
   that passed its health check), and the installed version's content never changes: the same
   version with another SHA-256 is refused. Downgrading on purpose means publishing the old code
   under a new version.

The trusted keys (the *trust anchor*) are the pinned keys of ``[access] pinned_publisher_keys``
when the agent has any, else the ``package_keys`` of the device's settings, which the catalog
delivers over (TLS-protected) REST. Pinned keys survive a compromised catalog; keys from settings
follow key rotation without touching the devices.

:class:`InstalledPackages` keeps, per device, the installed version of each algorithm and the
packages that failed their health check (never retried: a fix is a new version) in
``<state>/algorithms/installed.json``, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openfeeder.config import AccessSettings
from openfeeder.iot.agent.packages import PackageError, PackageFault
from openfeeder.iot.device_settings import AlgorithmRef
from openfeeder.security.signing import (
    KeyRing,
    SignatureError,
    SignatureFault,
    verify_package,
    version_key,
)

__all__ = ["InstalledPackages", "PackageTrust", "package_trust"]

_FAULTS = {
    SignatureFault.UNSIGNED: PackageFault.UNSIGNED,
    SignatureFault.EXPIRED: PackageFault.EXPIRED,
    SignatureFault.NOT_YET_VALID: PackageFault.EXPIRED,
    SignatureFault.UNKNOWN_KEY: PackageFault.UNTRUSTED,
}


@dataclass(frozen=True, slots=True)
class PackageTrust:
    """The agent's acceptance rules (module docstring)."""

    pinned: KeyRing | None = None
    require_signed: bool = True
    skew_ns: int = 60 * 1_000_000_000
    clock_ns: Callable[[], int] = time.time_ns

    def keys(self, package_keys: Sequence[str]) -> KeyRing:
        """The trusted publisher keys: the pinned ones, else those of the settings."""
        if self.pinned is not None:
            return self.pinned
        return KeyRing.from_texts(package_keys, where="settings package_keys")

    def check(
        self, ref: AlgorithmRef, package_keys: Sequence[str], installed: InstalledPackages
    ) -> None:
        """PackageError (UNSIGNED, BAD_SIGNATURE, UNTRUSTED, EXPIRED, DOWNGRADE) unless ``ref``
        may be installed."""
        if ref.signature is not None or self.require_signed:
            try:
                verify_package(
                    ref.signature,
                    self.keys(package_keys),
                    name=ref.name,
                    version=ref.version,
                    sha256=ref.sha256,
                    now_ns=self.clock_ns(),
                    skew_ns=self.skew_ns,
                )
            except SignatureError as err:
                raise PackageError(
                    f"algorithm {ref.name} {ref.version}: refused: {err}",
                    name=ref.name,
                    version=ref.version,
                    reason=_FAULTS.get(err.reason, PackageFault.BAD_SIGNATURE),
                ) from err
            except ValueError as err:  # a malformed key in the settings
                raise PackageError(
                    f"algorithm {ref.name} {ref.version}: refused: {err}",
                    name=ref.name,
                    version=ref.version,
                    reason=PackageFault.UNTRUSTED,
                ) from err
        current = installed.version_of(ref.name)
        if current is None:
            return
        version, sha256 = current
        if version_key(ref.version) < version_key(version):
            raise PackageError(
                f"algorithm {ref.name} {ref.version}: refused: older than the installed "
                f"version {version} (rollback protection)",
                name=ref.name,
                version=ref.version,
                reason=PackageFault.DOWNGRADE,
            )
        if ref.version == version and ref.sha256 != sha256:
            raise PackageError(
                f"algorithm {ref.name} {ref.version}: refused: the installed {version} has "
                f"SHA-256 {sha256}, this one {ref.sha256} (a version never changes)",
                name=ref.name,
                version=ref.version,
                reason=PackageFault.DOWNGRADE,
            )


def package_trust(access: AccessSettings) -> PackageTrust:
    """The agent's rules from ``[access]``: pinned keys, whether signatures are required."""
    pinned = (
        KeyRing.from_files(access.pinned_publisher_keys) if access.pinned_publisher_keys else None
    )
    return PackageTrust(
        pinned=pinned,
        require_signed=access.require_signed_packages,
        skew_ns=int(access.clock_skew_s * 1e9),
    )


class InstalledPackages:
    """Installed versions and health-check failures, persisted (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._installed: dict[str, tuple[str, str]] = {}
        self._rejected: set[tuple[str, str, str]] = set()
        self._read()

    def _read(self) -> None:
        try:
            document: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            raise PackageError(
                f"{self.path}: unreadable record of installed algorithms: {err}",
                name="",
                version="",
                reason=PackageFault.BAD_MANIFEST,
            ) from err
        for name, entry in dict(document.get("installed", {})).items():
            self._installed[str(name)] = (str(entry["version"]), str(entry["sha256"]))
        for item in document.get("rejected", []):
            self._rejected.add((str(item[0]), str(item[1]), str(item[2])))

    def version_of(self, name: str) -> tuple[str, str] | None:
        """(version, sha256) installed for ``name``, or None."""
        with self._lock:
            return self._installed.get(name)

    def is_rejected(self, ref: AlgorithmRef) -> bool:
        with self._lock:
            return (ref.name, ref.version, ref.sha256) in self._rejected

    def install(self, ref: AlgorithmRef) -> None:
        """Record ``ref`` as installed (it passed its health check); never lowers the version."""
        with self._lock:
            current = self._installed.get(ref.name)
            if current is not None and version_key(ref.version) < version_key(current[0]):
                return
            self._installed[ref.name] = (ref.version, ref.sha256)
            self._write()

    def reject(self, ref: AlgorithmRef) -> None:
        with self._lock:
            self._rejected.add((ref.name, ref.version, ref.sha256))
            self._write()

    def _write(self) -> None:
        document = {
            "installed": {
                name: {"version": version, "sha256": sha256}
                for name, (version, sha256) in sorted(self._installed.items())
            },
            "rejected": sorted(list(item) for item in self._rejected),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".installed-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
