"""Tamper-evident audit log: a hash chain of JSON lines with signed checkpoints.

Every operator action, configuration change, command, key event and security event is appended as
one JSON line. Each entry carries its sequence number, the hash of the entry before it and its own
hash (SHA-256 over the canonical JSON of everything else), so editing, deleting or reordering one
line breaks the chain at that line. Every ``checkpoint_every`` entries (and when the log is closed)
an entry of kind ``checkpoint`` is appended and signed with Ed25519: a checkpoint's hash covers the
chain head before it, so someone who rewrites the whole chain after an edit (recomputing every hash)
still cannot produce a valid checkpoint signature without the private key.

:func:`verify_audit_log` reads a log and says exactly what is wrong and where (sequence number and
line): a modified entry, a deleted one, one out of order, a broken link, a checkpoint whose signature
does not verify. Entries after the last checkpoint are reported as not yet anchored: truncating the
tail of a log is only visible against a checkpoint, so services checkpoint on shutdown.

Appends are serialised by a lock file (``fcntl.flock``), so several processes may share one log.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from openfeeder.errors import SecurityError

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditError",
    "AuditKind",
    "AuditLog",
    "AuditProblem",
    "AuditReport",
    "ProblemKind",
    "generate_signing_key",
    "load_public_key",
    "load_signing_key",
    "public_key_id",
    "read_audit_log",
    "verify_audit_log",
]

#: The ``prev_hash`` of the first entry.
GENESIS_HASH = "0" * 64
#: Checkpoint interval (entries) when none is given.
DEFAULT_CHECKPOINT_EVERY = 100

_KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_FIELDS = ("seq", "time_utc", "kind", "actor", "action", "target", "details", "prev_hash")


class AuditError(SecurityError):
    """The audit log cannot be written or read; ``path`` names the file."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class AuditKind(StrEnum):
    """The kinds of entry OpenFeeder writes (any lower-case word is accepted)."""

    OPERATOR = "operator"
    CONFIG = "config"
    COMMAND = "command"
    KEY = "key"
    SECURITY = "security"
    CHECKPOINT = "checkpoint"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the log. ``entry_hash`` covers every other field except ``signature``."""

    seq: int
    time_utc: str
    kind: str
    actor: str
    action: str
    target: str
    details: Mapping[str, Any]
    prev_hash: str
    entry_hash: str
    signature: str | None = None

    def to_json(self) -> str:
        record = _body(self)
        record["hash"] = self.entry_hash
        if self.signature is not None:
            record["signature"] = self.signature
        return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _body(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "time_utc": entry.time_utc,
        "kind": entry.kind,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": dict(entry.details),
        "prev_hash": entry.prev_hash,
    }


def _hash_body(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of an Ed25519 public key (first 16 hex digits of SHA-256 of its bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class AuditLog:
    """Appends entries to a hash-chained log file; safe across threads and processes.

    ``signing_key`` enables checkpoints (every ``checkpoint_every`` entries and on :meth:`close`);
    without it the chain still detects edits, deletions and reordering of single entries.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        signing_key: Ed25519PrivateKey | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, not {checkpoint_every}")
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._signing_key = signing_key
        self._key_id = public_key_id(signing_key.public_key()) if signing_key else None
        self._checkpoint_every = checkpoint_every
        self._clock = clock
        self._thread_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(exist_ok=True)
        except OSError as err:
            raise AuditError(
                f"{self.path}: cannot create audit log: {err}", path=str(path)
            ) from err

    def append(
        self,
        kind: str,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry and return it (with its sequence number and hash)."""
        if not _KIND_PATTERN.match(kind):
            raise AuditError(
                f"{self.path}: audit kind {kind!r} must be a lower-case word", path=str(self.path)
            )
        for name, value in (("actor", actor), ("action", action), ("target", target)):
            if not isinstance(value, str):
                raise AuditError(
                    f"{self.path}: audit field '{name}' must be text, not {type(value).__name__}",
                    path=str(self.path),
                )
        payload = dict(details or {})
        try:
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise AuditError(
                f"{self.path}: audit details for {kind}/{action} are not JSON: {err}",
                path=str(self.path),
            ) from err
        with self._locked():
            entry = self._write(kind, actor, action, target, payload)
            if self._signing_key is not None and entry.seq % self._checkpoint_every == 0:
                self._write_checkpoint()
        return entry

    def checkpoint(self) -> AuditEntry | None:
        """Sign the chain head now; None without a signing key or when the head is signed."""
        if self._signing_key is None:
            return None
        with self._locked():
            last = _last_entry(self.path)
            if last is not None and last.kind == AuditKind.CHECKPOINT:
                return None
            return self._write_checkpoint()

    def close(self) -> None:
        """Write a final checkpoint (when signing) so the tail of the log is anchored."""
        self.checkpoint()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_checkpoint(self) -> AuditEntry:
        if self._signing_key is None or self._key_id is None:
            raise AuditError(f"{self.path}: checkpoints need a signing key", path=str(self.path))
        last = _last_entry(self.path)
        details = {
            "key_id": self._key_id,
            "covers_seq": last.seq if last else 0,
            "head_hash": last.entry_hash if last else GENESIS_HASH,
        }
        return self._write(AuditKind.CHECKPOINT, "audit", "checkpoint", str(self.path), details)

    def _write(
        self, kind: str, actor: str, action: str, target: str, details: Mapping[str, Any]
    ) -> AuditEntry:
        last = _last_entry(self.path)
        seq = last.seq + 1 if last else 1
        prev_hash = last.entry_hash if last else GENESIS_HASH
        stamp = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="microseconds")
        entry = AuditEntry(
            seq=seq,
            time_utc=stamp,
            kind=str(kind),
            actor=actor,
            action=action,
            target=target,
            details=dict(details),
            prev_hash=prev_hash,
            entry_hash="",
        )
        entry_hash = _hash_body(_body(entry))
        signature = None
        if kind == AuditKind.CHECKPOINT and self._signing_key is not None:
            raw = self._signing_key.sign(bytes.fromhex(entry_hash))
            signature = base64.b64encode(raw).decode("ascii")
        entry = replace(entry, entry_hash=entry_hash, signature=signature)
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(entry.to_json() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise AuditError(f"{self.path}: cannot append: {err}", path=str(self.path)) from err
        return entry

    def _locked(self) -> _FileLock:
        return _FileLock(self._lock_path, self._thread_lock)


class _FileLock:
    """Thread lock plus an exclusive ``flock`` on a side file, as one context manager."""

    def __init__(self, path: Path, thread_lock: threading.Lock) -> None:
        self._path = path
        self._thread_lock = thread_lock
        self._fd = -1

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as err:
            self._thread_lock.release()
            raise AuditError(f"{self._path}: cannot lock: {err}", path=str(self._path)) from err

    def __exit__(self, *exc_info: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        finally:
            self._thread_lock.release()


def _last_entry(path: Path) -> AuditEntry | None:
    """The last well-formed entry of the file (read backwards from the end)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size == 0:
                return None
            block = 4096
            data = b""
            position = size
            while position > 0:
                step = min(block, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
                lines = data.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or position == 0:
                    tail = lines[-1]
                    break
                block *= 2
    except OSError as err:
        raise AuditError(f"{path}: cannot read: {err}", path=str(path)) from err
    entry, error = _parse_line(tail.decode("utf-8", errors="replace"))
    if entry is None:
        raise AuditError(f"{path}: last line is not an audit entry ({error})", path=str(path))
    return entry


def _parse_line(line: str) -> tuple[AuditEntry | None, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"not JSON: {err.msg}"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    missing = [name for name in (*_FIELDS, "hash") if name not in record]
    if missing:
        return None, f"missing field {missing[0]!r}"
    if not isinstance(record["seq"], int) or not isinstance(record["details"], dict):
        return None, "field 'seq' must be an integer and 'details' an object"
    signature = record.get("signature")
    return (
        AuditEntry(
            seq=record["seq"],
            time_utc=str(record["time_utc"]),
            kind=str(record["kind"]),
            actor=str(record["actor"]),
            action=str(record["action"]),
            target=str(record["target"]),
            details=record["details"],
            prev_hash=str(record["prev_hash"]),
            entry_hash=str(record["hash"]),
            signature=str(signature) if signature is not None else None,
        ),
        "",
    )


def read_audit_log(path: str | os.PathLike[str]) -> Iterator[tuple[int, AuditEntry | None, str]]:
    """Yield ``(line number, entry or None, parse error)`` for every non-empty line."""
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    entry, error = _parse_line(line)
                    yield number, entry, error
    except OSError as err:
        raise AuditError(f"{path}: cannot read audit log: {err}", path=str(path)) from err


class ProblemKind(StrEnum):
    """What :func:`verify_audit_log` found wrong with one entry."""

    MALFORMED = "malformed"
    MODIFIED = "modified"
    DELETED = "deleted"
    REORDERED = "reordered"
    BROKEN_LINK = "broken-link"
    BAD_SIGNATURE = "bad-signature"


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One finding: which entry (sequence number), on which line of the file, and what."""

    kind: ProblemKind
    seq: int | None
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.message}"


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of verifying a log. ``ok`` is true when there is no problem."""

    path: str
    entries: int
    checkpoints: int
    verified_checkpoints: int
    unanchored_entries: int
    problems: tuple[AuditProblem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_audit_log(
    path: str | os.PathLike[str], *, public_key: Ed25519PublicKey | None = None
) -> AuditReport:
    """Check the chain of ``path`` and, given ``public_key``, every checkpoint signature.

    Without a public key the checkpoints are checked as chain entries only (``verified_checkpoints``
    stays 0): the chain then shows single edits but not a consistent rewrite of the whole log.
    """
    problems: list[AuditProblem] = []
    rows: list[tuple[int, AuditEntry]] = []
    for number, entry, error in read_audit_log(path):
        if entry is None:
            problems.append(
                AuditProblem(ProblemKind.MALFORMED, None, number, f"not an audit entry: {error}")
            )
            continue
        rows.append((number, entry))

    intact: dict[int, bool] = {}
    for number, entry in rows:
        intact[number] = _hash_body(_body(entry)) == entry.entry_hash
        if not intact[number]:
            problems.append(
                AuditProblem(
                    ProblemKind.MODIFIED,
                    entry.seq,
                    number,
                    f"entry {entry.seq} was modified (its content no longer matches its hash)",
                )
            )

    seqs = [entry.seq for _, entry in rows]
    present = set(seqs)
    if rows:
        last_seq = max(seqs)
        missing = sorted(set(range(1, last_seq + 1)) - present)
        for seq in missing:
            after = max((s for s in seqs if s < seq), default=None)
            line = next((n for n, e in rows if e.seq == after), None) if after else None
            where = f" (after entry {after})" if after else " (at the start of the log)"
            problems.append(
                AuditProblem(ProblemKind.DELETED, seq, line, f"entry {seq} was deleted{where}")
            )

    highest = 0
    previous: tuple[int, AuditEntry] | None = None
    for number, entry in rows:
        if entry.seq < highest:
            problems.append(
                AuditProblem(
                    ProblemKind.REORDERED,
                    entry.seq,
                    number,
                    f"entry {entry.seq} is out of order (found after entry {highest})",
                )
            )
        highest = max(highest, entry.seq)
        expected_prev: str | None = None
        if entry.seq == 1:
            expected_prev = GENESIS_HASH
        elif previous is not None and previous[1].seq == entry.seq - 1:
            expected_prev = previous[1].entry_hash
        if expected_prev is not None and intact[number] and entry.prev_hash != expected_prev:
            if entry.seq == 1:
                message = "entry 1 does not start the chain"
                culprit = entry.seq
            else:
                assert previous is not None
                culprit = previous[1].seq
                message = (
                    f"entry {culprit} was modified or entries after it removed "
                    f"(entry {entry.seq} no longer links to it)"
                    if intact[previous[0]]
                    else f"entry {entry.seq} does not link to entry {culprit}"
                )
            kind = ProblemKind.MODIFIED if entry.seq != 1 else ProblemKind.BROKEN_LINK
            if not any(p.seq == culprit and p.kind == ProblemKind.MODIFIED for p in problems):
                line = previous[0] if previous is not None and entry.seq != 1 else number
                problems.append(AuditProblem(kind, culprit, line, message))
        previous = (number, entry)

    checkpoints = 0
    verified = 0
    last_checkpoint_seq = 0
    for number, entry in rows:
        if entry.kind != AuditKind.CHECKPOINT:
            continue
        checkpoints += 1
        last_checkpoint_seq = max(last_checkpoint_seq, entry.seq)
        if public_key is None:
            continue
        problem = _check_signature(entry, public_key)
        if problem:
            problems.append(AuditProblem(ProblemKind.BAD_SIGNATURE, entry.seq, number, problem))
        else:
            verified += 1

    problems.sort(key=lambda p: (p.seq if p.seq is not None else -1, p.line or 0))
    return AuditReport(
        path=str(path),
        entries=len(rows),
        checkpoints=checkpoints,
        verified_checkpoints=verified,
        unanchored_entries=sum(1 for s in seqs if s > last_checkpoint_seq),
        problems=tuple(problems),
    )


def _check_signature(entry: AuditEntry, public_key: Ed25519PublicKey) -> str:
    expected_id = public_key_id(public_key)
    if entry.details.get("key_id") != expected_id:
        return (
            f"checkpoint {entry.seq} was signed by key {entry.details.get('key_id')!r}, "
            f"not by the given key {expected_id}"
        )
    if entry.signature is None:
        return f"checkpoint {entry.seq} carries no signature"
    try:
        public_key.verify(base64.b64decode(entry.signature), bytes.fromhex(entry.entry_hash))
    except (InvalidSignature, ValueError):
        return (
            f"checkpoint {entry.seq}: signature does not verify "
            f"(entries up to {entry.seq} were rewritten)"
        )
    return ""


def generate_signing_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Write a new Ed25519 private key (PEM, mode 0600) to ``path`` and its public key beside it.

    The public key goes to ``<path>.pub``; returns it.
    """
    target = Path(path)
    if target.exists():
        raise AuditError(f"{target}: refusing to overwrite an existing key", path=str(target))
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        target.with_name(target.name + ".pub").write_bytes(public_pem)
    except OSError as err:
        raise AuditError(f"{target}: cannot write key: {err}", path=str(target)) from err
    return key.public_key()


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM) for checkpoint signatures."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise AuditError(f"{path}: cannot load signing key: {err}", path=str(path)) from err
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path}: not an Ed25519 private key", path=str(path))
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM) to verify checkpoints."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise AuditError(f"{path}: cannot load public key: {err}", path=str(path)) from err
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path}: not an Ed25519 public key", path=str(path))
    return key
