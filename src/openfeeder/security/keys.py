"""Key lifecycle (seed 002): generation, issuance, storage, rotation, archiving, backup, recovery,
destruction and export of the payload keys, every transition written to the audit log.

Storage: one SQLite file (``keys.sqlite3``) under the store's directory. Key material is never
stored in clear: each key is wrapped with AES-256-GCM under the **master key**, with the key id and
algorithm as associated data (a wrapped blob copied to another row does not open). The master key
is 32 bytes read from a file or from the ``OPENFEEDER_MASTER_KEY`` environment variable (base64),
never from settings text; the store holds a check value that tells a wrong master key apart from a
damaged store.

Names and ids: a key *name* says what it protects, ``<traffic class>`` for a key shared by every
device (a group key) or ``<traffic class>/<device id>`` for one device's key (preferred: a device
then can seal only its own messages); each version of a name has the id ``<name>@<version>``.

States::

    active --rotate--> overlap --(overlap ends)--> archived --destroy--> destroyed
      |                   |                           ^
      +----archive--------+-------archive-------------+

*active*: seals and opens; *overlap*: the previous version after a rotation, still opens traffic
until ``overlap_until_utc`` so messages in flight and devices not yet re-keyed keep working;
*archived*: opens no live traffic, kept to read stored data (:meth:`KeyStore.decrypt`) and for
backup; *destroyed*: the wrapped material is erased (``PRAGMA secure_delete`` overwrites the freed
bytes) and only a tombstone row is kept: data sealed under it is unreadable (crypto-shredding), and
:meth:`KeyStore.recover` never brings a tombstoned key back from an older backup.

Backup is one file sealed with AES-256-GCM under the master key (or a separate backup key);
recovery restores the keys it holds that the store lacks or whose material it lost. Export wraps a
key with AES key wrap with padding (RFC 5649) under a key-encryption key the recipient holds.
Issuance to a device wraps its keys the same way under that device's own key-encryption key
(``kek/<device id>``, created on first issue and handed to the device when it is provisioned), so a
device bundle opens only on that device.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from openfeeder.errors import SecurityError
from openfeeder.security.audit import AuditKind, AuditLog
from openfeeder.security.payload import AeadCipher, Algorithm, SymmetricKey, TrafficClass

__all__ = [
    "DEFAULT_OVERLAP_S",
    "MASTER_KEY_ENV",
    "KeyInfo",
    "KeyRing",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "StoreResolver",
    "generate_master_key",
    "key_name",
    "load_master_key",
    "open_issued_bundle",
    "unwrap_exported_key",
]

MASTER_KEY_ENV: Final = "OPENFEEDER_MASTER_KEY"
DEFAULT_OVERLAP_S: Final = 24 * 3600.0
STORE_FILE: Final = "keys.sqlite3"
_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}(/[A-Za-z0-9_.-]{1,64})?$")
_CHECK_PLAINTEXT: Final = b"openfeeder key store"
_BACKUP_MAGIC: Final = b"OFKB1"
_KEK_ALGORITHM: Final = "kek"  # 32-byte key-encryption keys (AES key wrap), not payload keys


class KeyStoreError(SecurityError):
    """A key is unknown, destroyed or in the wrong state, or the store cannot be used."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class KeyState(StrEnum):
    NEXT = "next"
    """Made and handed to devices ahead of use: it opens traffic, seals nothing until a
    rotation makes it active (so devices hold it before anyone seals with it)."""
    ACTIVE = "active"
    OVERLAP = "overlap"
    ARCHIVED = "archived"
    DESTROYED = "destroyed"


OPENING_STATES: Final = (KeyState.ACTIVE, KeyState.OVERLAP, KeyState.NEXT)
"""The states whose keys open traffic (what a bundle holds)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the store knows about one key version (never its material)."""

    key_id: str
    name: str
    version: int
    algorithm: str
    state: KeyState
    created_utc: str
    changed_utc: str
    overlap_until_utc: str | None

    @property
    def scope(self) -> str | None:
        """The device the key belongs to (None for a group key)."""
        return self.name.split("/", 1)[1] if "/" in self.name else None


def key_name(traffic: TrafficClass | str, device_id: str | None = None) -> str:
    """``control`` (group key) or ``control/fsw-12`` (one device's key)."""
    return f"{traffic}/{device_id}" if device_id else str(traffic)


def generate_master_key(path: str | os.PathLike[str]) -> None:
    """Write a new random 32-byte master key (base64, mode 0600); refuses to overwrite."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise KeyStoreError(f"{target}: refusing to overwrite an existing master key") from err
    except OSError as err:
        raise KeyStoreError(f"{target}: cannot write master key: {err}") from err
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")


def _decode_master(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError as err:
        raise KeyStoreError(f"{where}: master key is not base64") from err
    if len(raw) != 32:
        raise KeyStoreError(f"{where}: master key must be 32 bytes, not {len(raw)}")
    return raw


def load_master_key(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> bytes:
    """The master key from ``path`` or, without one, from ``OPENFEEDER_MASTER_KEY`` (base64)."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            raise KeyStoreError(f"{path}: cannot read master key: {err}") from err
        return _decode_master(text, str(path))
    env = os.environ if environ is None else environ
    value = env.get(MASTER_KEY_ENV)
    if not value:
        raise KeyStoreError(f"no master key: give a key file or set {MASTER_KEY_ENV}")
    return _decode_master(value, MASTER_KEY_ENV)


def _now_utc(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="seconds")


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:12], blob[12:], aad)


def _key_bytes(algorithm: str) -> int:
    if algorithm == _KEK_ALGORITHM:
        return 32
    return Algorithm(algorithm).key_bytes


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    state TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    changed_utc TEXT NOT NULL,
    overlap_until_s REAL,
    wrapped BLOB,
    UNIQUE (name, version)
);
"""


class KeyStore:
    """The key store under ``directory``; every transition goes to ``audit`` when given.

    Open an existing store with ``KeyStore(directory, master_key=...)``; create one with
    :meth:`init`. ``actor`` names who acts (the operator or service) in the audit entries.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        master_key: bytes,
        audit: AuditLog | None = None,
        actor: str = "keys",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE
        if not self.path.is_file():
            raise KeyStoreError(f"{self.path}: no key store here (create one with 'keys init')")
        self._master = master_key
        self._audit = audit
        self._actor = actor
        self._clock = clock
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'check'").fetchone()
        if row is None:
            raise KeyStoreError(f"{self.path}: store has no master-key check value")
        try:
            _unseal(master_key, bytes(row[0]), b"check")
        except InvalidTag as err:
            raise KeyStoreError(f"{self.path}: wrong master key for this store") from err

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        master_key: bytes,
        audit: AuditLog | None = None,
        actor: str = "keys",
        clock: Callable[[], float] = time.time,
    ) -> KeyStore:
        """Create an empty store (the directory is made with mode 0700)."""
        if len(master_key) != 32:
            raise KeyStoreError(f"master key must be 32 bytes, not {len(master_key)}")
        folder = Path(directory)
        path = folder / STORE_FILE
        if path.exists():
            raise KeyStoreError(f"{path}: a key store already exists")
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(path)
            try:
                db.executescript(_SCHEMA)
                db.execute(
                    "INSERT INTO meta VALUES ('check', ?)",
                    (_seal(master_key, _CHECK_PLAINTEXT, b"check"),),
                )
                db.commit()
            finally:
                db.close()
            path.chmod(0o600)
        except (OSError, sqlite3.Error) as err:
            raise KeyStoreError(f"{path}: cannot create key store: {err}") from err
        store = cls(folder, master_key=master_key, audit=audit, actor=actor, clock=clock)
        store._record("init", str(folder), {})
        return store

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=10)
        except sqlite3.Error as err:
            raise KeyStoreError(f"{self.path}: cannot open key store: {err}") from err
        try:
            db.execute("PRAGMA secure_delete = ON")
            with db:
                yield db
        except sqlite3.Error as err:
            raise KeyStoreError(f"{self.path}: key store error: {err}") from err
        finally:
            db.close()

    def _record(self, action: str, target: str, details: Mapping[str, Any]) -> None:
        if self._audit is not None:
            self._audit.append(AuditKind.KEY, self._actor, action, target, details)

    def _wrap(self, key_id: str, algorithm: str, material: bytes) -> bytes:
        return _seal(self._master, material, f"{key_id}|{algorithm}".encode())

    def _unwrap(self, key_id: str, algorithm: str, wrapped: bytes) -> bytes:
        try:
            return _unseal(self._master, wrapped, f"{key_id}|{algorithm}".encode())
        except InvalidTag as err:
            raise KeyStoreError(
                f"{self.path}: wrapped material of {key_id!r} does not open (damaged or moved)",
                key_id=key_id,
            ) from err

    def _info(self, row: sqlite3.Row | tuple[Any, ...]) -> KeyInfo:
        key_id, name, version, algorithm, state, created, changed, overlap_s = row[:8]
        return KeyInfo(
            key_id=key_id,
            name=name,
            version=version,
            algorithm=algorithm,
            state=KeyState(state),
            created_utc=created,
            changed_utc=changed,
            overlap_until_utc=_now_utc(lambda: overlap_s) if overlap_s is not None else None,
        )

    _COLUMNS: Final = (
        "key_id, name, version, algorithm, state, created_utc, changed_utc, overlap_until_s"
    )

    def _row(self, db: sqlite3.Connection, key_id: str) -> tuple[Any, ...]:
        row = db.execute(
            f"SELECT {self._COLUMNS}, wrapped FROM keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is None:
            raise KeyStoreError(f"{self.path}: no key {key_id!r}", key_id=key_id)
        return tuple(row)

    def _set_state(
        self, db: sqlite3.Connection, key_id: str, state: KeyState, **extra: object
    ) -> None:
        sets = ", ".join(["state = ?", "changed_utc = ?", *(f"{k} = ?" for k in extra)])
        db.execute(
            f"UPDATE keys SET {sets} WHERE key_id = ?",
            (state.value, _now_utc(self._clock), *extra.values(), key_id),
        )

    def _expire_overlaps(self, db: sqlite3.Connection) -> list[str]:
        expired = [
            row[0]
            for row in db.execute(
                "SELECT key_id FROM keys WHERE state = ? AND overlap_until_s <= ?",
                (KeyState.OVERLAP.value, self._clock()),
            )
        ]
        for key_id in expired:
            self._set_state(db, key_id, KeyState.ARCHIVED)
        return expired

    def _sweep(self) -> None:
        with self._db() as db:
            expired = self._expire_overlaps(db)
        for key_id in expired:
            self._record("archive", key_id, {"reason": "overlap ended"})

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self, name: str, algorithm: Algorithm | str) -> KeyInfo:
        """Generate version 1 of a new key (active) and version 2 (next: handed out now, active
        at the first rotation)."""
        if not _NAME_PATTERN.match(name):
            raise KeyStoreError(
                f"key name {name!r} must be '<class>' or '<class>/<device id>' "
                "(lower-case class, device id of [A-Za-z0-9_.-])"
            )
        algorithm_name = self._check_algorithm(algorithm, name)
        with self._db() as db:
            exists = db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone()
            if exists:
                raise KeyStoreError(f"{self.path}: key {name!r} exists; rotate it instead")
            info = self._insert(db, name, 1, algorithm_name)
            following = self._insert(db, name, 2, algorithm_name, KeyState.NEXT)
        self._record("create", info.key_id, {"algorithm": algorithm_name, "next": following.key_id})
        return info

    def _check_algorithm(self, algorithm: Algorithm | str, name: str) -> str:
        value = str(algorithm)
        if value == _KEK_ALGORITHM:
            return value
        try:
            parsed = Algorithm(value)
        except ValueError as err:
            allowed = ", ".join(a.value for a in Algorithm if a is not Algorithm.NONE)
            raise KeyStoreError(
                f"key {name!r}: unknown algorithm {value!r} (one of {allowed})"
            ) from err
        if parsed is Algorithm.NONE:
            raise KeyStoreError(f"key {name!r}: algorithm 'none' has no key")
        return parsed.value

    def _insert(
        self,
        db: sqlite3.Connection,
        name: str,
        version: int,
        algorithm: str,
        state: KeyState = KeyState.ACTIVE,
    ) -> KeyInfo:
        key_id = f"{name}@{version}"
        material = secrets.token_bytes(_key_bytes(algorithm))
        now = _now_utc(self._clock)
        db.execute(
            "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (
                key_id,
                name,
                version,
                algorithm,
                state.value,
                now,
                now,
                self._wrap(key_id, algorithm, material),
            ),
        )
        return self._info(self._row(db, key_id))

    def rotate(self, name: str, *, overlap_s: float = DEFAULT_OVERLAP_S) -> KeyInfo:
        """A new active version of ``name``; the previous active one opens traffic for
        ``overlap_s`` more seconds (state overlap), then is archived.

        The new active version is the one in state next, which devices have held since their
        last bundle (a key made before next versions existed, or whose next was archived, gets
        a new one at once); a new next version is made for the rotation after."""
        if overlap_s < 0:
            raise KeyStoreError(f"overlap must be zero or more seconds, not {overlap_s}")
        with self._db() as db:
            rows = db.execute(
                "SELECT key_id, version, algorithm, state FROM keys WHERE name = ? "
                "ORDER BY version DESC",
                (name,),
            ).fetchall()
            if not rows:
                raise KeyStoreError(f"{self.path}: no key named {name!r}")
            active = [row for row in rows if row[3] == KeyState.ACTIVE.value]
            staged = [row for row in rows if row[3] == KeyState.NEXT.value]
            algorithm = (active[0] if active else rows[0])[2]
            for row in active:
                if overlap_s > 0:
                    self._set_state(
                        db, row[0], KeyState.OVERLAP, overlap_until_s=self._clock() + overlap_s
                    )
                else:
                    self._set_state(db, row[0], KeyState.ARCHIVED)
            version = rows[0][1]
            if staged and staged[-1][2] == algorithm:  # the oldest next version
                self._set_state(db, staged[-1][0], KeyState.ACTIVE)
                info = self._info(self._row(db, staged[-1][0]))
            else:
                version += 1
                info = self._insert(db, name, version, algorithm)
            following = self._insert(db, name, version + 1, algorithm, KeyState.NEXT)
        self._record(
            "rotate",
            info.key_id,
            {
                "previous": [row[0] for row in active],
                "overlap_s": overlap_s,
                "next": following.key_id,
            },
        )
        return info

    def archive(self, key_id: str) -> KeyInfo:
        """Take a key out of live traffic; it still decrypts stored data and is backed up."""
        with self._db() as db:
            row = self._row(db, key_id)
            state = KeyState(row[4])
            if state is KeyState.DESTROYED:
                raise KeyStoreError(f"key {key_id!r} is destroyed", key_id=key_id)
            if state is not KeyState.ARCHIVED:
                self._set_state(db, key_id, KeyState.ARCHIVED, overlap_until_s=None)
            info = self._info(self._row(db, key_id))
        self._record("archive", key_id, {"from": state.value})
        return info

    def destroy(self, key_id: str) -> KeyInfo:
        """Erase the key material for good (crypto-shredding); only a tombstone row remains."""
        with self._db() as db:
            row = self._row(db, key_id)
            state = KeyState(row[4])
            if state is KeyState.DESTROYED:
                raise KeyStoreError(f"key {key_id!r} is already destroyed", key_id=key_id)
            if row[8] is not None:
                db.execute(
                    "UPDATE keys SET wrapped = zeroblob(?) WHERE key_id = ?",
                    (len(row[8]), key_id),
                )
            self._set_state(db, key_id, KeyState.DESTROYED, wrapped=None, overlap_until_s=None)
            info = self._info(self._row(db, key_id))
        self._vacuum()
        self._record("destroy", key_id, {"from": state.value})
        return info

    def _vacuum(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=10)
            try:
                db.execute("VACUUM")
            finally:
                db.close()
        except sqlite3.Error as err:
            raise KeyStoreError(f"{self.path}: cannot compact after destroy: {err}") from err

    # -- reading -------------------------------------------------------------------------------

    def list_keys(self, *, name: str | None = None) -> list[KeyInfo]:
        """Every key version (tombstones included), by name then version."""
        self._sweep()
        query = f"SELECT {self._COLUMNS} FROM keys"
        args: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            args = (name,)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY name, version", args).fetchall()
        return [self._info(row) for row in rows]

    def info(self, key_id: str) -> KeyInfo:
        with self._db() as db:
            return self._info(self._row(db, key_id))

    def key(self, key_id: str, *, states: Iterable[KeyState] | None = None) -> SymmetricKey:
        """The usable key ``key_id``; ``states`` limits which states are acceptable."""
        with self._db() as db:
            expired = self._expire_overlaps(db)
            row = self._row(db, key_id)
        for expired_id in expired:
            self._record("archive", expired_id, {"reason": "overlap ended"})
        state = KeyState(row[4])
        if state is KeyState.DESTROYED or row[8] is None:
            raise KeyStoreError(f"key {key_id!r} was destroyed", key_id=key_id)
        allowed = set(states) if states is not None else set(KeyState) - {KeyState.DESTROYED}
        if state not in allowed:
            raise KeyStoreError(
                f"key {key_id!r} is {state}, not {'/'.join(sorted(allowed))}", key_id=key_id
            )
        if row[3] == _KEK_ALGORITHM:
            raise KeyStoreError(f"{key_id!r} is a key-encryption key", key_id=key_id)
        material = self._unwrap(key_id, row[3], bytes(row[8]))
        return SymmetricKey(key_id, Algorithm(row[3]), material, scope=self._info(row).scope)

    def active(self, name: str) -> SymmetricKey:
        """The active version of ``name``."""
        with self._db() as db:
            row = db.execute(
                "SELECT key_id FROM keys WHERE name = ? AND state = ?",
                (name, KeyState.ACTIVE.value),
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"{self.path}: key {name!r} has no active version")
        return self.key(row[0], states=(KeyState.ACTIVE,))

    # -- data at rest --------------------------------------------------------------------------

    def encrypt(self, name: str, plaintext: bytes, *, context: bytes = b"") -> bytes:
        """Seal stored data under the active version of ``name`` (the key id travels with it)."""
        key = self.active(name)
        key_id = key.key_id.encode("utf-8")
        sealed = _seal_with(key, plaintext, key_id + b"|" + context)
        return bytes((len(key_id),)) + key_id + sealed

    def decrypt(self, blob: bytes, *, context: bytes = b"") -> bytes:
        """Open data sealed by :meth:`encrypt`, with any key not destroyed (archived included)."""
        if not blob:
            raise KeyStoreError("empty ciphertext")
        length = blob[0]
        key_id = blob[1 : 1 + length].decode("utf-8", errors="replace")
        key = self.key(key_id)
        try:
            return _open_with(key, blob[1 + length :], blob[1 : 1 + length] + b"|" + context)
        except InvalidTag as err:
            raise KeyStoreError(
                f"data sealed under {key_id!r} does not authenticate", key_id=key_id
            ) from err

    # -- backup and recovery -------------------------------------------------------------------

    def backup(self, path: str | os.PathLike[str], *, backup_key: bytes | None = None) -> int:
        """Write every key that is not destroyed to one sealed file; returns how many."""
        wrapping = backup_key if backup_key is not None else self._master
        records = []
        with self._db() as db:
            rows = db.execute(
                f"SELECT {self._COLUMNS}, wrapped FROM keys WHERE state != ? ORDER BY key_id",
                (KeyState.DESTROYED.value,),
            ).fetchall()
        for row in rows:
            if row[8] is None:
                continue
            material = self._unwrap(row[0], row[3], bytes(row[8]))
            records.append(
                {
                    "key_id": row[0],
                    "name": row[1],
                    "version": row[2],
                    "algorithm": row[3],
                    "state": row[4],
                    "created_utc": row[5],
                    "overlap_until_s": row[7],
                    "material": base64.b64encode(material).decode("ascii"),
                }
            )
        document = json.dumps({"format": "openfeeder-key-backup", "keys": records}).encode()
        target = Path(path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(_BACKUP_MAGIC + _seal(wrapping, document, _BACKUP_MAGIC))
        except OSError as err:
            raise KeyStoreError(f"{target}: cannot write backup: {err}") from err
        self._record("backup", str(target), {"keys": len(records)})
        return len(records)

    def recover(
        self, path: str | os.PathLike[str], *, backup_key: bytes | None = None
    ) -> list[str]:
        """Restore from a backup the keys this store lacks; returns the restored ids.

        Destroyed keys (tombstones) stay destroyed; keys the store still holds are left alone. A
        restored key keeps its recorded state, except that an active or overlap key is archived
        when its name already has an active version here.
        """
        source = Path(path)
        wrapping = backup_key if backup_key is not None else self._master
        try:
            blob = source.read_bytes()
        except OSError as err:
            raise KeyStoreError(f"{source}: cannot read backup: {err}") from err
        if not blob.startswith(_BACKUP_MAGIC):
            raise KeyStoreError(f"{source}: not an OpenFeeder key backup")
        try:
            document = json.loads(_unseal(wrapping, blob[len(_BACKUP_MAGIC) :], _BACKUP_MAGIC))
        except InvalidTag as err:
            raise KeyStoreError(f"{source}: backup does not open with this key") from err
        restored: list[str] = []
        skipped: list[str] = []
        with self._db() as db:
            for record in document["keys"]:
                key_id = record["key_id"]
                row = db.execute(
                    "SELECT state, wrapped FROM keys WHERE key_id = ?", (key_id,)
                ).fetchone()
                if row is not None and (row[0] == KeyState.DESTROYED.value or row[1] is not None):
                    skipped.append(key_id)
                    continue
                state = KeyState(record["state"])
                if state in (KeyState.ACTIVE, KeyState.OVERLAP):
                    live = db.execute(
                        "SELECT 1 FROM keys WHERE name = ? AND state = ? AND key_id != ?",
                        (record["name"], KeyState.ACTIVE.value, key_id),
                    ).fetchone()
                    if live:
                        state = KeyState.ARCHIVED
                material = base64.b64decode(record["material"])
                wrapped = self._wrap(key_id, record["algorithm"], material)
                now = _now_utc(self._clock)
                db.execute(
                    "INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key_id,
                        record["name"],
                        record["version"],
                        record["algorithm"],
                        state.value,
                        record["created_utc"],
                        now,
                        record["overlap_until_s"] if state is KeyState.OVERLAP else None,
                        wrapped,
                    ),
                )
                restored.append(key_id)
        self._record("recover", str(source), {"restored": restored, "skipped": skipped})
        return restored

    # -- export and issuance -------------------------------------------------------------------

    def export(self, key_id: str, *, wrapping_key: bytes) -> dict[str, str]:
        """The key wrapped for another system (RFC 5649 AES key wrap under ``wrapping_key``)."""
        if len(wrapping_key) not in (16, 24, 32):
            raise KeyStoreError("wrapping key must be 16, 24 or 32 bytes")
        key = self.key(key_id)
        document = {
            "format": "openfeeder-wrapped-key",
            "key_id": key.key_id,
            "algorithm": key.algorithm.value,
            "wrap": "aes-kwp",
            "wrapped": base64.b64encode(
                aes_key_wrap_with_padding(wrapping_key, key.material)
            ).decode("ascii"),
        }
        self._record("export", key_id, {"wrap": "aes-kwp"})
        return document

    def device_kek(self, device_id: str) -> bytes:
        """The key-encryption key of ``device_id`` (created on first use), for provisioning."""
        name = key_name("kek", device_id)
        with self._db() as db:
            row = db.execute(
                "SELECT key_id, wrapped FROM keys WHERE name = ? AND state = ?",
                (name, KeyState.ACTIVE.value),
            ).fetchone()
            created = row is None
            if row is None:
                info = self._insert(db, name, 1, _KEK_ALGORITHM)
                row = db.execute(
                    "SELECT key_id, wrapped FROM keys WHERE key_id = ?", (info.key_id,)
                ).fetchone()
        if created:
            self._record("create", row[0], {"algorithm": _KEK_ALGORITHM})
        return self._unwrap(row[0], _KEK_ALGORITHM, bytes(row[1]))

    def issue(self, device_id: str, *, readable: Iterable[str] = ()) -> dict[str, Any]:
        """The bundle of keys ``device_id`` needs, wrapped under its key-encryption key.

        It holds the usable (next, active and overlap) versions of the device's own keys
        (``<class>/<device id>``), of the group keys (``<class>``) and of the other devices'
        keys named in ``readable`` (a device whose algorithm reads their sealed traffic, e.g. an
        edge fault locator reading every ``event``).
        """
        also = frozenset(readable)
        kek = self.device_kek(device_id)
        self._sweep()
        entries = []
        with self._db() as db:
            rows = db.execute(
                f"SELECT {self._COLUMNS}, wrapped FROM keys WHERE state IN (?, ?, ?) "
                "AND algorithm != ? ORDER BY key_id",
                (*(state.value for state in OPENING_STATES), _KEK_ALGORITHM),
            ).fetchall()
        for row in rows:
            info = self._info(row)
            if info.scope not in (None, device_id) and info.name not in also:
                continue
            material = self._unwrap(info.key_id, info.algorithm, bytes(row[8]))
            entries.append(
                {
                    "key_id": info.key_id,
                    "algorithm": info.algorithm,
                    "state": info.state.value,
                    "wrapped": base64.b64encode(aes_key_wrap_with_padding(kek, material)).decode(
                        "ascii"
                    ),
                }
            )
        self._record("issue", device_id, {"keys": [entry["key_id"] for entry in entries]})
        return {"format": "openfeeder-device-keys", "device_id": device_id, "keys": entries}


def _seal_with(key: SymmetricKey, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AeadCipher(key).encrypt(nonce, plaintext, aad)


def _open_with(key: SymmetricKey, blob: bytes, aad: bytes) -> bytes:
    return AeadCipher(key).decrypt(blob[:12], blob[12:], aad)


def unwrap_exported_key(document: Mapping[str, Any], *, wrapping_key: bytes) -> SymmetricKey:
    """The key inside a document made by :meth:`KeyStore.export`."""
    try:
        material = aes_key_unwrap_with_padding(wrapping_key, base64.b64decode(document["wrapped"]))
        return SymmetricKey(str(document["key_id"]), Algorithm(document["algorithm"]), material)
    except (KeyError, ValueError, InvalidUnwrap) as err:
        raise KeyStoreError(f"wrapped key does not open: {err}") from err


def open_issued_bundle(bundle: Mapping[str, Any], *, kek: bytes) -> KeyRing:
    """The device side of :meth:`KeyStore.issue`: unwrap the bundle with the device's KEK."""
    device_id = str(bundle.get("device_id", ""))
    keys = []
    try:
        for entry in bundle["keys"]:
            material = aes_key_unwrap_with_padding(kek, base64.b64decode(entry["wrapped"]))
            key_id = str(entry["key_id"])
            name = key_id.rsplit("@", 1)[0]
            scope = name.split("/", 1)[1] if "/" in name else None
            keys.append(
                (
                    SymmetricKey(key_id, Algorithm(entry["algorithm"]), material, scope=scope),
                    KeyState(entry["state"]),
                )
            )
    except (KeyError, ValueError, TypeError, InvalidUnwrap) as err:
        raise KeyStoreError(f"key bundle for {device_id!r} does not open: {err}") from err
    return KeyRing(keys)


class KeyRing:
    """An in-memory set of keys with their states: what a device holds after issuance.

    Sealing picks the active key ``<class>/<device id>`` and falls back to the group key
    ``<class>``; opening accepts next, active and overlap keys.
    """

    def __init__(self, keys: Iterable[tuple[SymmetricKey, KeyState]]) -> None:
        self._keys: dict[str, tuple[SymmetricKey, KeyState]] = {}
        self._active: dict[str, SymmetricKey] = {}
        self._opening: dict[str, SymmetricKey] = {}  # the keys that may open: active, overlap
        for key, state in keys:
            self._keys[key.key_id] = (key, state)
            if state is KeyState.ACTIVE:
                self._active[key.key_id.rsplit("@", 1)[0]] = key
            if state in OPENING_STATES:
                self._opening[key.key_id] = key
            else:
                self._opening.pop(key.key_id, None)
        # (class, device) -> its sealing key: a ring does not change, so each is looked up once
        self._sealing: dict[tuple[str, str], SymmetricKey] = {}

    @classmethod
    def of(cls, *keys: SymmetricKey) -> KeyRing:
        """A ring of active keys."""
        return cls((key, KeyState.ACTIVE) for key in keys)

    def sealing_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey:
        key = self._sealing.get((traffic, device_id))
        if key is not None:
            return key
        for name in (key_name(traffic, device_id), key_name(traffic)):
            key = self._active.get(name)
            if key is not None:
                self._sealing[traffic, device_id] = key
                return key
        raise KeyStoreError(f"no active {traffic} key for device {device_id!r}")

    def opening_key(self, key_id: str) -> SymmetricKey:
        key = self._opening.get(key_id)
        if key is not None:
            return key
        found = self._keys.get(key_id)
        if found is None:
            raise KeyStoreError(f"no key {key_id!r}", key_id=key_id)
        raise KeyStoreError(f"key {key_id!r} is {found[1]}", key_id=key_id)

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def with_key(self, key: SymmetricKey, state: KeyState = KeyState.ACTIVE) -> KeyRing:
        """A copy with ``key`` added (or its state changed)."""
        entries = dict(self._keys)
        entries[key.key_id] = (replace(key), state)
        return KeyRing(entries.values())


class StoreResolver:
    """Finds payload keys in a :class:`KeyStore` (services), caching them for ``ttl_s`` seconds.

    The cache keeps the per-message cost to a dictionary look-up; a rotation or destruction is
    seen within ``ttl_s``.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._sealing: dict[str, tuple[float, SymmetricKey]] = {}
        self._opening: dict[str, tuple[float, SymmetricKey | KeyStoreError]] = {}

    def sealing_key(self, traffic: TrafficClass, device_id: str) -> SymmetricKey:
        now = self._clock()
        for name in (key_name(traffic, device_id), key_name(traffic)):
            cached = self._sealing.get(name)
            if cached is not None and now - cached[0] < self._ttl_s:
                return cached[1]
            try:
                key = self._store.active(name)
            except KeyStoreError:
                continue
            self._sealing[name] = (now, key)
            return key
        raise KeyStoreError(f"no active {traffic} key for device {device_id!r}")

    def opening_key(self, key_id: str) -> SymmetricKey:
        now = self._clock()
        cached = self._opening.get(key_id)
        if cached is None or now - cached[0] >= self._ttl_s:
            try:
                found: SymmetricKey | KeyStoreError = self._store.key(key_id, states=OPENING_STATES)
            except KeyStoreError as err:
                found = err
            cached = self._opening[key_id] = (now, found)
        if isinstance(cached[1], KeyStoreError):
            raise KeyStoreError(str(cached[1]), key_id=key_id)
        return cached[1]

    def forget(self) -> None:
        """Drop the cache (after a rotation or destruction made here)."""
        self._sealing.clear()
        self._opening.clear()
