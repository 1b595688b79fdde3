"""A device's key-encryption key delivered sealed to its CSR key, and its bundle refreshed."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from openfeeder.config import PayloadProtectionSettings
from openfeeder.iot.agent.payload_keys import CatalogKeys, catalog_delivers_keys
from openfeeder.security.key_delivery import KekDeliveryError, open_kek, seal_kek
from openfeeder.security.keys import KeyStore, KeyStoreError, StoreResolver
from openfeeder.security.payload import Algorithm, PayloadProtector


def test_only_the_device_key_opens_its_kek() -> None:
    device = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    kek = bytes(range(32))
    envelope = seal_kek(kek, public_key=device.public_key(), device_id="m-1")
    assert base64.b64encode(kek).decode() not in json.dumps(envelope)
    assert open_kek(envelope, private_key=device, device_id="m-1") == kek
    with pytest.raises(KekDeliveryError, match="does not open with this device's key"):
        open_kek(envelope, private_key=other, device_id="m-1")
    with pytest.raises(KekDeliveryError, match="is for 'm-1'"):
        open_kek(envelope, private_key=device, device_id="m-2")
    # relabelled for another device: the AAD and the KDF bind the id, so it does not open
    relabelled = dict(envelope, device_id="m-2")
    with pytest.raises(KekDeliveryError, match="does not open"):
        open_kek(relabelled, private_key=device, device_id="m-2")
    sealed = bytearray(base64.b64decode(envelope["sealed"]))
    sealed[0] ^= 1
    flipped = dict(envelope, sealed=base64.b64encode(bytes(sealed)).decode())
    with pytest.raises(KekDeliveryError, match="does not open"):
        open_kek(flipped, private_key=device, device_id="m-1")
    with pytest.raises(KekDeliveryError, match="malformed"):
        open_kek(dict(envelope, epk="AAAA"), private_key=device, device_id="m-1")
    with pytest.raises(KekDeliveryError, match="32 bytes"):
        seal_kek(b"short", public_key=device.public_key(), device_id="m-1")


def test_where_a_device_gets_its_keys() -> None:
    assert catalog_delivers_keys(PayloadProtectionSettings(enabled=True))
    assert not catalog_delivers_keys(PayloadProtectionSettings(enabled=False))
    files = PayloadProtectionSettings(
        enabled=True, key_bundle=Path("b.json"), kek_file=Path("k.kek")
    )
    assert not catalog_delivers_keys(files)


def _store(tmp_path: Path) -> KeyStore:
    store = KeyStore.init(tmp_path / "keys", master_key=bytes(32))
    store.create("control", Algorithm.AES_256_GCM)
    store.create("control/m-1", Algorithm.AES_256_GCM)
    store.create("control/m-2", Algorithm.AES_256_GCM)
    return store


def test_a_rotated_key_is_fetched_when_a_message_names_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    kek = store.device_kek("m-1")
    fetched: list[dict[str, Any]] = []
    now = [0.0]

    def fetch() -> dict[str, Any]:
        fetched.append(store.issue("m-1"))
        return fetched[-1]

    cache = tmp_path / "m-1" / "keys.json"
    keys = CatalogKeys("m-1", kek=kek, fetch=fetch, cache=cache, clock=lambda: now[0])
    assert keys.refresh()
    # its own and the group key, each with its next version; not m-2's
    assert keys.key_ids == ["control/m-1@1", "control/m-1@2", "control@1", "control@2"]
    assert cache.stat().st_mode & 0o777 == 0o600
    service = PayloadProtector(StoreResolver(store, ttl_s=0), sender_id="svc")
    device = PayloadProtector(keys, sender_id="m-1")
    topic = "openfeeder/v1/cmd/m-1"

    def deliver() -> bytes:
        sealed = service.seal(b'{"x": 1}', topic=topic, message_class="cmd", device_id="m-1")
        return device.open(sealed, topic=topic, message_class="cmd", device_id="m-1").plaintext

    assert deliver() == b'{"x": 1}'
    store.rotate("control/m-1", overlap_s=60)
    assert deliver() == b'{"x": 1}'  # control/m-1@2, held since the bundle as next: no fetch
    assert len(fetched) == 1
    store.rotate("control/m-1", overlap_s=60)  # @3 was made by the rotation before
    assert deliver() == b'{"x": 1}'  # control/m-1@3: not held, fetched on the miss
    assert len(fetched) == 2
    assert {"control/m-1@3", "control/m-1@4"} <= set(keys.key_ids)
    # a made-up key id fetches at most once per interval, however many messages name it
    store.rotate("control/m-1", overlap_s=60)
    store.rotate("control/m-1", overlap_s=60)
    now[0] = 2.0
    for _ in range(3):
        with pytest.raises(KeyStoreError):
            keys.opening_key("control/m-1@9")
    assert len(fetched) == 2  # the last fetch was 2 s ago
    now[0] = 10.0
    for _ in range(3):
        with pytest.raises(KeyStoreError):
            keys.opening_key("control/m-1@9")
    assert len(fetched) == 3
    # a restart without the catalog opens the cached bundle with the KEK
    offline = CatalogKeys("m-1", kek=kek, fetch=_unreachable, cache=cache)
    assert {"control/m-1@5", "control/m-1@6"} <= set(offline.key_ids)
    assert not offline.refresh()  # logged, the cached ring kept
    assert "control/m-1@6" in offline.key_ids
    # another device's bundle is refused
    with pytest.raises(KeyStoreError, match="is for 'm-2'"):
        CatalogKeys("m-1", kek=kek, fetch=lambda: store.issue("m-2"))._open(store.issue("m-2"))


def test_a_bundle_holds_other_devices_keys_only_when_named(tmp_path: Path) -> None:
    store = _store(tmp_path)
    own = store.issue("m-1")
    assert [(entry["key_id"], entry["state"]) for entry in own["keys"]] == [
        ("control/m-1@1", "active"),
        ("control/m-1@2", "next"),
        ("control@1", "active"),
        ("control@2", "next"),
    ]
    reader = store.issue("m-1", readable={"control/m-2"})
    assert [entry["key_id"] for entry in reader["keys"]] == [
        "control/m-1@1",
        "control/m-1@2",
        "control/m-2@1",
        "control/m-2@2",
        "control@1",
        "control@2",
    ]


def _unreachable() -> dict[str, Any]:
    raise KeyStoreError("catalog unreachable")
