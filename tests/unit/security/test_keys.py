"""The key store: lifecycle, crypto-shredding, backup and recovery, export, issuance, audit."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from openfeeder.security.audit import AuditLog, verify_audit_log
from openfeeder.security.keys import (
    MASTER_KEY_ENV,
    KeyState,
    KeyStore,
    KeyStoreError,
    StoreResolver,
    generate_master_key,
    load_master_key,
    open_issued_bundle,
    unwrap_exported_key,
)
from openfeeder.security.payload import (
    Algorithm,
    PayloadProtector,
    PayloadRejectedError,
    RejectKind,
    TrafficClass,
    parse_header,
)

TOPIC = "openfeeder/v1/cmd/fsw-1"


class _Clock:
    def __init__(self) -> None:
        self.now_s = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def master() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.log")


@pytest.fixture
def store(tmp_path: Path, master: bytes, audit: AuditLog, clock: _Clock) -> KeyStore:
    return KeyStore.init(tmp_path / "keys", master_key=master, audit=audit, clock=clock)


def test_master_key_from_file_or_environment(tmp_path: Path) -> None:
    generate_master_key(tmp_path / "master.key")
    assert (tmp_path / "master.key").stat().st_mode & 0o077 == 0
    key = load_master_key(tmp_path / "master.key")
    assert len(key) == 32
    encoded = (tmp_path / "master.key").read_text().strip()
    assert load_master_key(environ={MASTER_KEY_ENV: encoded}) == key
    with pytest.raises(KeyStoreError, match=MASTER_KEY_ENV):
        load_master_key(environ={})
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        generate_master_key(tmp_path / "master.key")
    (tmp_path / "short.key").write_text("c2hvcnQ=\n")
    with pytest.raises(KeyStoreError, match="must be 32 bytes"):
        load_master_key(tmp_path / "short.key")


def test_wrong_master_key_is_named(tmp_path: Path, store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="wrong master key"):
        KeyStore(store.directory, master_key=secrets.token_bytes(32))
    with pytest.raises(KeyStoreError, match="no key store here"):
        KeyStore(tmp_path / "nowhere", master_key=secrets.token_bytes(32))


def test_material_is_never_stored_in_clear(store: KeyStore) -> None:
    info = store.create("control", Algorithm.AES_256_GCM)
    material = store.key(info.key_id).material
    assert material not in store.path.read_bytes()


def test_rotation_keeps_the_old_key_for_the_overlap(store: KeyStore, clock: _Clock) -> None:
    first = store.create("control/fsw-1", "aes-256-gcm")
    assert first.key_id == "control/fsw-1@1"
    assert first.scope == "fsw-1"
    old_sender = PayloadProtector(StoreResolver(store), sender_id="flisr")
    in_flight = old_sender.seal(b"{}", topic=TOPIC, message_class="cmd", device_id="fsw-1")

    second = store.rotate("control/fsw-1", overlap_s=600)
    assert second.key_id == "control/fsw-1@2"
    assert store.info(first.key_id).state is KeyState.OVERLAP
    assert store.active("control/fsw-1").key_id == second.key_id
    receiver = PayloadProtector(StoreResolver(store), sender_id="fsw-1")
    opened = receiver.open(in_flight, topic=TOPIC, message_class="cmd", device_id="fsw-1")
    assert opened.plaintext == b"{}"

    clock.now_s += 601
    states = {info.key_id: info.state for info in store.list_keys()}
    assert states == {
        first.key_id: KeyState.ARCHIVED,
        second.key_id: KeyState.ACTIVE,
        "control/fsw-1@3": KeyState.NEXT,
    }
    late = PayloadProtector(StoreResolver(store), sender_id="fsw-1")
    with pytest.raises(PayloadRejectedError) as caught:
        late.open(in_flight, topic=TOPIC, message_class="cmd", device_id="fsw-1")
    assert caught.value.reason is RejectKind.UNKNOWN_KEY


def test_destroyed_key_cannot_read_its_data(store: KeyStore) -> None:
    info = store.create("protection", Algorithm.SM4_GCM)
    with sqlite3.connect(store.path) as db:
        (wrapped,) = db.execute(
            "SELECT wrapped FROM keys WHERE key_id = ?", (info.key_id,)
        ).fetchone()
    db.close()
    assert bytes(wrapped) in store.path.read_bytes()
    stored = store.encrypt("protection", b"fault record 17", context=b"historian")
    assert store.decrypt(stored, context=b"historian") == b"fault record 17"
    store.archive(info.key_id)
    assert store.decrypt(stored, context=b"historian") == b"fault record 17"  # archived: readable

    store.destroy(info.key_id)
    assert store.info(info.key_id).state is KeyState.DESTROYED
    with pytest.raises(KeyStoreError, match="destroyed"):
        store.decrypt(stored, context=b"historian")
    with pytest.raises(KeyStoreError, match="already destroyed"):
        store.destroy(info.key_id)
    assert bytes(wrapped) not in store.path.read_bytes()  # erased, not just unlinked


def test_backup_and_recovery_restore_an_archived_key(
    tmp_path: Path, store: KeyStore, master: bytes, clock: _Clock
) -> None:
    info = store.create("control", Algorithm.AES_256_GCM)
    stored = store.encrypt("control", b"switching plan")
    store.rotate("control", overlap_s=0)
    assert store.info(info.key_id).state is KeyState.ARCHIVED
    doomed = store.create("protection", Algorithm.SM4_GCM)
    assert store.backup(tmp_path / "keys.backup") == 5  # control@1-3, protection@1-2

    # the disk with the store is lost: a new store with the same master key, then recovery
    fresh = KeyStore.init(tmp_path / "replacement", master_key=master, clock=clock)
    with pytest.raises(KeyStoreError, match="no key"):
        fresh.decrypt(stored)
    restored = fresh.recover(tmp_path / "keys.backup")
    assert sorted(restored) == [
        "control@1",
        "control@2",
        "control@3",
        "protection@1",
        "protection@2",
    ]
    assert fresh.info(info.key_id).state is KeyState.ARCHIVED
    assert fresh.decrypt(stored) == b"switching plan"

    # a key destroyed after the backup stays destroyed: recovery does not resurrect it
    store.destroy(doomed.key_id)
    assert store.recover(tmp_path / "keys.backup") == []
    assert store.info(doomed.key_id).state is KeyState.DESTROYED

    with pytest.raises(KeyStoreError, match="does not open with this key"):
        fresh.recover(tmp_path / "keys.backup", backup_key=secrets.token_bytes(32))


def test_export_is_wrapped_for_the_recipient(store: KeyStore) -> None:
    info = store.create("control", Algorithm.AES_256_GCM)
    kek = secrets.token_bytes(32)
    document = store.export(info.key_id, wrapping_key=kek)
    assert document["wrap"] == "aes-kwp"
    key = unwrap_exported_key(document, wrapping_key=kek)
    assert key.material == store.key(info.key_id).material
    with pytest.raises(KeyStoreError, match="does not open"):
        unwrap_exported_key(document, wrapping_key=secrets.token_bytes(32))


def test_issued_bundle_opens_only_on_its_device(store: KeyStore) -> None:
    store.create("control/fsw-1", Algorithm.AES_256_GCM)
    store.create("control/fsw-2", Algorithm.AES_256_GCM)
    store.create("protection", Algorithm.SM4_GCM)
    bundle = store.issue("fsw-1")
    held = ["control/fsw-1@1", "control/fsw-1@2", "protection@1", "protection@2"]
    assert [entry["key_id"] for entry in bundle["keys"]] == held
    ring = open_issued_bundle(bundle, kek=store.device_kek("fsw-1"))
    assert ring.key_ids() == held
    with pytest.raises(KeyStoreError, match="does not open"):
        open_issued_bundle(bundle, kek=store.device_kek("fsw-2"))

    # the device answers a command sealed by the platform with the store's key
    platform = PayloadProtector(StoreResolver(store), sender_id="flisr")
    device = PayloadProtector(ring, sender_id="fsw-1")
    sealed = platform.seal(b"{}", topic=TOPIC, message_class="cmd", device_id="fsw-1")
    assert (
        device.open(sealed, topic=TOPIC, message_class="cmd", device_id="fsw-1").plaintext == b"{}"
    )
    assert ring.sealing_key(TrafficClass.PROTECTION, "fsw-1").key_id == "protection@1"


def test_bad_requests_name_what_is_wrong(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="key name 'Control'"):
        store.create("Control", Algorithm.AES_256_GCM)
    with pytest.raises(KeyStoreError, match="unknown algorithm 'des'"):
        store.create("control", "des")
    store.create("control", Algorithm.AES_256_GCM)
    with pytest.raises(KeyStoreError, match="exists; rotate it instead"):
        store.create("control", Algorithm.AES_256_GCM)
    with pytest.raises(KeyStoreError, match="no key named 'monitoring'"):
        store.rotate("monitoring")
    with pytest.raises(KeyStoreError, match="no key 'control@7'"):
        store.archive("control@7")


def test_every_transition_is_audited(tmp_path: Path, store: KeyStore) -> None:
    info = store.create("control", Algorithm.AES_256_GCM)
    store.rotate("control", overlap_s=0)
    store.archive("control@2")
    store.backup(tmp_path / "b")
    store.export(info.key_id, wrapping_key=secrets.token_bytes(32))
    store.issue("fsw-9")
    store.destroy(info.key_id)
    store.recover(tmp_path / "b")
    lines = (tmp_path / "audit.log").read_text().splitlines()
    actions = [line.split('"action":"')[1].split('"')[0] for line in lines]
    assert actions == [
        "init",
        "create",
        "rotate",
        "archive",
        "backup",
        "export",
        "create",  # the device's key-encryption key, made on first issue
        "issue",
        "destroy",
        "recover",
    ]
    assert verify_audit_log(tmp_path / "audit.log").ok


def test_the_next_version_is_handed_out_before_it_seals(store: KeyStore) -> None:
    """A key's next version is in the bundles from the start and becomes active at the
    rotation: a device that fetched its bundle before opens what is sealed after, unfetched."""
    store.create("control/fsw-1", Algorithm.AES_256_GCM)
    assert [(i.key_id, i.state) for i in store.list_keys()] == [
        ("control/fsw-1@1", KeyState.ACTIVE),
        ("control/fsw-1@2", KeyState.NEXT),
    ]
    ring = open_issued_bundle(store.issue("fsw-1"), kek=store.device_kek("fsw-1"))
    assert ring.sealing_key(TrafficClass.CONTROL, "fsw-1").key_id == "control/fsw-1@1"
    resolver = StoreResolver(store, ttl_s=0)
    assert resolver.sealing_key(TrafficClass.CONTROL, "fsw-1").key_id == "control/fsw-1@1"

    assert store.rotate("control/fsw-1", overlap_s=600).key_id == "control/fsw-1@2"
    states = {i.key_id: i.state for i in store.list_keys(name="control/fsw-1")}
    assert states == {
        "control/fsw-1@1": KeyState.OVERLAP,
        "control/fsw-1@2": KeyState.ACTIVE,
        "control/fsw-1@3": KeyState.NEXT,
    }
    service = PayloadProtector(resolver, sender_id="flisr")
    sealed = service.seal(b"{}", topic=TOPIC, message_class="cmd", device_id="fsw-1")
    device = PayloadProtector(ring, sender_id="fsw-1")
    opened = device.open(sealed, topic=TOPIC, message_class="cmd", device_id="fsw-1")
    assert opened.plaintext == b"{}"
    # the device still seals under its own view of active (@1, in overlap): the service opens it
    reply = device.seal(b"{}", topic=TOPIC, message_class="cmd", device_id="fsw-1")
    assert parse_header(reply).key_id == "control/fsw-1@1"
    assert (
        PayloadProtector(resolver, sender_id="x")
        .open(reply, topic=TOPIC, message_class="cmd", device_id="fsw-1")
        .plaintext
        == b"{}"
    )

    # a next version taken out of use is not activated: the rotation makes a new one
    store.archive("control/fsw-1@3")
    assert store.rotate("control/fsw-1", overlap_s=0).key_id == "control/fsw-1@4"
    assert store.info("control/fsw-1@5").state is KeyState.NEXT
