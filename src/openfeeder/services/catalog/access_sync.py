"""The catalog keeps the brokers' topic ACL equal to its registry.

Every device the catalog knows gets the grants of :func:`openfeeder.iot.access.device_grants`
(its own topics, plus the topic inputs of the algorithm packages assigned to it, read from their
manifests); every service in ``[security] services`` the grants of its role. When a device is
added, removed or gets other algorithms, :class:`AccessSync` (a task of the catalog service,
checking the registry every ``interval_s``) builds the new
:class:`~openfeeder.security.acl.AccessTable` and hands it on, by ``[security] acl_backend``:

- ``dynsec``: the commands that turn the old table into the new one go to Mosquitto's
  dynamic-security plug-in (``$CONTROL/dynamic-security/v1``) on both broker links; the catalog's
  identity must be the plug-in's administrator (``openfeeder pki mosquitto-config`` makes it so);
- ``acl_file``: the table is written to ``acl_file`` (atomically) and Mosquitto is sent SIGHUP
  (pid from ``mosquitto_pid_file``), or ``openfeeder broker --acl-file`` re-reads it on SIGHUP;
- in-process: ``on_table`` receives the table (the demo's embedded broker:
  :meth:`~openfeeder.iot.broker.BrokerThread.set_access`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from openfeeder.config import SecuritySettings
from openfeeder.errors import OpenFeederError
from openfeeder.iot.access import build_access_table
from openfeeder.iot.agent.packages import MANIFEST_FILE, Manifest
from openfeeder.security.acl import AccessTable
from openfeeder.security.mosquitto import dynsec_commands, reload_mosquitto
from openfeeder.services.catalog.core import Catalog

__all__ = ["AccessSync", "package_input_filters"]

_LOG = logging.getLogger(__name__)
DEFAULT_INTERVAL_S: Final = 0.5

Assignments = Mapping[str, tuple[tuple[str, str], ...]]
"""Device id -> (algorithm name, version) of each package assigned to it."""


def package_input_filters(data: bytes) -> tuple[str, ...]:
    """The MQTT topic filters an algorithm package subscribes to (its manifest's topic inputs)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = Manifest.model_validate_json(archive.read(MANIFEST_FILE))
    return tuple(str(flt) for flt in manifest.input_topics)


class AccessSync:
    """Builds the access table from the catalog's registry and applies it (module docstring)."""

    def __init__(
        self,
        security: SecuritySettings,
        *,
        identity: str,
        send_control: Callable[[bytes], None] | None = None,
        on_table: Callable[[AccessTable], None] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._security = security
        self._identity = identity
        self._send_control = send_control
        self._on_table = on_table
        self._interval_s = interval_s
        self._inputs: dict[tuple[str, str], tuple[str, ...]] = {}
        self._seen: dict[str, tuple[tuple[str, str], ...]] | None = None
        self.table: AccessTable | None = None
        self.updates = 0

    async def run(self, catalog: Catalog, stop: asyncio.Event) -> None:
        """Apply the table now and whenever the registry changes, until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.sync(catalog)
            except (OpenFeederError, OSError) as err:
                _LOG.error("broker ACL not updated: %s", err, extra={"event": "acl_update_failed"})
            try:
                await asyncio.wait_for(stop.wait(), self._interval_s)
            except TimeoutError:
                continue

    async def sync(self, catalog: Catalog) -> bool:
        """Apply the table if the registry changed since the last call; whether it did."""
        current = catalog.device_assignments()
        if current == self._seen:
            return False
        devices: dict[str, tuple[str, ...]] = {}
        for device_id, packages in current.items():
            extra: list[str] = []
            for package in packages:
                extra += await self._input_filters(catalog, package)
            devices[device_id] = tuple(extra)
        version = (self.table.version + 1) if self.table is not None else 1
        table = build_access_table(
            devices=devices, services=self._security.services, version=version
        )
        self._apply(table)
        self._seen = dict(current)
        return True

    async def _input_filters(self, catalog: Catalog, package: tuple[str, str]) -> tuple[str, ...]:
        known = self._inputs.get(package)
        if known is not None:
            return known
        try:
            _, data = await catalog.algorithms.data(*package)
            filters = package_input_filters(data)
        except (OpenFeederError, KeyError, ValueError, zipfile.BadZipFile, ValidationError) as err:
            _LOG.warning(
                "algorithm %s %s: no topic grants from its manifest (%s)",
                *package,
                err,
                extra={"event": "acl_manifest_unreadable"},
            )
            filters = ()
        self._inputs[package] = filters
        return filters

    def _apply(self, table: AccessTable) -> None:
        old = self.table
        backend = self._security.acl_backend
        if backend == "dynsec" and self._send_control is not None:
            commands = dynsec_commands(old or AccessTable(), table, admins=[self._identity])
            if old is None:  # first run: what the plug-in holds for these names is replaced
                resets: list[dict[str, object]] = []
                for name in sorted(table.entries):
                    if name != self._identity:  # deleting itself would cut its own connection
                        resets.append({"command": "deleteClient", "username": name})
                        resets.append({"command": "deleteRole", "rolename": f"of-{name}"})
                commands = resets + [c for c in commands if _subject(c) != self._identity]
            self._send_control(json.dumps({"commands": commands}).encode("utf-8"))
        elif backend == "acl_file" and self._security.acl_file is not None:
            _write_atomically(self._security.acl_file, table.mosquitto_acl())
            if self._security.mosquitto_pid_file is not None:
                reload_mosquitto(self._security.mosquitto_pid_file)
        if self._on_table is not None:
            self._on_table(table)
        self.table = table
        self.updates += 1
        _LOG.info(
            "broker ACL updated identities=%d version=%d backend=%s",
            len(table),
            table.version,
            backend,
            extra={"event": "acl_updated", "identities": len(table), "version": table.version},
        )


def _subject(command: Mapping[str, object]) -> str:
    """The identity a dynamic-security command is about."""
    name = command.get("username", command.get("rolename", ""))
    return str(name).removeprefix("of-")


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
