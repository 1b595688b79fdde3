"""The audit log: a chain that shows which entry was edited, deleted or moved, and signed checkpoints."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfeeder.security.audit import (
    AuditError,
    AuditKind,
    AuditLog,
    ProblemKind,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    read_audit_log,
    verify_audit_log,
)


def _write_log(path: Path, key: Ed25519PrivateKey | None, count: int, every: int = 5) -> list[str]:
    with AuditLog(path, signing_key=key, checkpoint_every=every) as log:
        for index in range(count):
            log.append(AuditKind.OPERATOR, "alice", "open-switch", f"switch-{index}", {"n": index})
    return path.read_text().splitlines()


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_an_intact_log_verifies_with_every_checkpoint(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.log"
    lines = _write_log(path, key, 12)
    report = verify_audit_log(path, public_key=key.public_key())
    assert report.ok, report.problems
    assert report.checkpoints == 3  # seq 6 after 5, seq 11 after 10, and the final one on close
    assert report.verified_checkpoints == 3
    assert report.entries == len(lines) == 15
    assert report.unanchored_entries == 0


def test_edited_entry_is_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.log"
    lines = _write_log(path, key, 8)
    record = json.loads(lines[3])
    record["details"]["n"] = 99
    lines[3] = json.dumps(record)
    _rewrite(path, lines)
    report = verify_audit_log(path, public_key=key.public_key())
    assert not report.ok
    assert [(p.kind, p.seq, p.line) for p in report.problems] == [(ProblemKind.MODIFIED, 4, 4)]


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = _write_log(path, None, 6)
    entries = [entry for _, entry, _ in read_audit_log(path)]
    assert all(entry is not None for entry in entries)
    forged = json.loads(lines[2])
    forged["actor"] = "mallory"
    from openfeeder.security.audit import _hash_body

    body = {k: v for k, v in forged.items() if k not in ("hash", "signature")}
    forged["hash"] = _hash_body(body)
    lines[2] = json.dumps(forged)
    _rewrite(path, lines)
    report = verify_audit_log(path)
    assert [(p.kind, p.seq) for p in report.problems] == [(ProblemKind.MODIFIED, 3)]
    assert "entry 4 no longer links" in report.problems[0].message


def test_deleted_entry_is_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.log"
    lines = _write_log(path, key, 8)
    del lines[2]
    _rewrite(path, lines)
    report = verify_audit_log(path, public_key=key.public_key())
    assert [(p.kind, p.seq) for p in report.problems] == [(ProblemKind.DELETED, 3)]
    assert "entry 3 was deleted (after entry 2)" in str(report.problems[0])


def test_deleting_the_first_entry_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = _write_log(path, None, 3)
    _rewrite(path, lines[1:])
    report = verify_audit_log(path)
    assert [(p.kind, p.seq) for p in report.problems] == [(ProblemKind.DELETED, 1)]


def test_reordered_entries_are_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.log"
    lines = _write_log(path, key, 8)
    lines[4], lines[5] = lines[5], lines[4]
    _rewrite(path, lines)
    report = verify_audit_log(path, public_key=key.public_key())
    assert [(p.kind, p.seq, p.line) for p in report.problems] == [(ProblemKind.REORDERED, 5, 6)]


def test_consistent_rewrite_is_caught_by_the_checkpoint_signature(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """Rewriting every hash after an edit fools the chain but not the signed checkpoint."""
    from openfeeder.security.audit import GENESIS_HASH, _hash_body

    path = tmp_path / "audit.log"
    lines = _write_log(path, key, 4, every=100)  # 4 entries and one checkpoint (seq 5) on close
    prev = GENESIS_HASH
    rewritten = []
    for line in lines:
        record = json.loads(line)
        if record["seq"] == 2:
            record["target"] = "switch-forged"
        record["prev_hash"] = prev
        record["hash"] = _hash_body(
            {k: v for k, v in record.items() if k not in ("hash", "signature")}
        )
        prev = record["hash"]
        rewritten.append(json.dumps(record))
    _rewrite(path, rewritten)
    assert verify_audit_log(path).ok  # the chain alone is consistent again
    report = verify_audit_log(path, public_key=key.public_key())
    assert [(p.kind, p.seq) for p in report.problems] == [(ProblemKind.BAD_SIGNATURE, 5)]


def test_wrong_public_key_is_reported(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.log"
    _write_log(path, key, 2)
    other = Ed25519PrivateKey.generate().public_key()
    report = verify_audit_log(path, public_key=other)
    assert [p.kind for p in report.problems] == [ProblemKind.BAD_SIGNATURE]
    assert "not by the given key" in report.problems[0].message


def test_tail_after_last_checkpoint_is_reported_unanchored(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, signing_key=None)
    for index in range(3):
        log.append("config", "ops", "set", "historian.retention_days", {"value": index})
    report = verify_audit_log(path)
    assert report.ok
    assert report.unanchored_entries == 3
    assert report.checkpoints == 0


def test_garbage_line_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = _write_log(path, None, 2)
    _rewrite(path, [lines[0], "{not json", lines[1]])
    report = verify_audit_log(path)
    assert [(p.kind, p.line) for p in report.problems] == [(ProblemKind.MALFORMED, 2)]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    with pytest.raises(AuditError, match="kind 'Bad Kind'"):
        log.append("Bad Kind", "a", "b", "c", {})
    with pytest.raises(AuditError, match="not JSON"):
        log.append("security", "a", "b", "c", {"x": object()})
    with pytest.raises(ValueError, match="checkpoint_every"):
        AuditLog(tmp_path / "other.log", checkpoint_every=0)


def test_key_files_round_trip(tmp_path: Path) -> None:
    public = generate_signing_key(tmp_path / "audit.key")
    assert (tmp_path / "audit.key").stat().st_mode & 0o077 == 0
    private = load_signing_key(tmp_path / "audit.key")
    loaded_public = load_public_key(tmp_path / "audit.key.pub")
    assert private.public_key().public_bytes_raw() == public.public_bytes_raw()
    assert loaded_public.public_bytes_raw() == public.public_bytes_raw()
    with pytest.raises(AuditError, match="refusing to overwrite"):
        generate_signing_key(tmp_path / "audit.key")
    with pytest.raises(AuditError, match=r"not an Ed25519 private key|cannot load"):
        load_signing_key(tmp_path / "audit.key.pub")


def _append_many(path: str, actor: str, count: int) -> None:
    log = AuditLog(path)
    for index in range(count):
        log.append("command", actor, "trip", f"breaker-{index}", {})


def test_two_processes_append_to_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), name, 25)) for name in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    report = verify_audit_log(path)
    assert report.ok, report.problems
    assert report.entries == 50
