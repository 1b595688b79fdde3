"""Payload protection through the real Mosquitto: the broker sees only ciphertext, and captured
messages replayed, held back beyond the window, altered or sent in clear are rejected, counted and
answered with a security event on the receiver's event topic."""

from __future__ import annotations

import base64
import queue
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openfeeder.config import BrokerSettings, BrokersSettings, PayloadProtectionSettings
from openfeeder.errors import ConfigError
from openfeeder.iot import Command, CommandAction, Event
from openfeeder.iot.mqtt import Messenger, MqttLink
from openfeeder.iot.protection import (
    SECURITY_EVENT_KIND,
    MessageProtection,
    protection_from_settings,
)
from openfeeder.iot.schema import decode, encode
from openfeeder.iot.topics import (
    BrokerContext,
    MessageClass,
    command_filter,
    command_topic,
    event_filter,
)
from openfeeder.security.audit import AuditLog, verify_audit_log
from openfeeder.security.keys import KeyStore, StoreResolver, open_issued_bundle
from openfeeder.security.payload import Algorithm, PayloadProtector, RejectKind

pytestmark = pytest.mark.integration

Received = queue.Queue[tuple[str, bytes]]


def _collector() -> tuple[Received, Callable[[str, bytes], None]]:
    received: Received = queue.Queue()
    return received, lambda topic, payload: received.put((topic, payload))


def _command(device: str, seq: int) -> Command:
    return Command(
        device_id=device,
        seq=seq,
        t_ns=1_000 + seq,
        command_id=f"c-{seq}",
        action=CommandAction.OPEN,
        target_id=17,
    )


@dataclass
class Scene:
    device: str
    platform: Messenger
    field_device: Messenger
    device_protection: MessageProtection
    sniffer: MqttLink
    commands: Received
    captured: Received
    events: Received
    platform_protection: MessageProtection
    audit_path: Path


@pytest.fixture
def scene(mqtt_url: str, tmp_path: Path) -> Iterator[Scene]:
    device = f"fsw-{uuid.uuid4().hex[:10]}"
    platform_id = f"flisr-{uuid.uuid4().hex[:6]}"
    store = KeyStore.init(tmp_path / "keys", master_key=secrets.token_bytes(32))
    store.create(f"control/{device}", Algorithm.AES_256_GCM)
    store.create(f"protection/{device}", Algorithm.SM4_GCM)
    ring = open_issued_bundle(store.issue(device), kek=store.device_kek(device))
    audit_path = tmp_path / "audit.log"
    platform_protection = MessageProtection(
        PayloadProtector(StoreResolver(store), sender_id=platform_id),
        event_device_id=platform_id,
        event_interval_s=0,
    )
    device_protection = MessageProtection(
        PayloadProtector(ring, sender_id=device, replay_window=4),
        event_device_id=device,
        event_interval_s=0,
        audit=AuditLog(audit_path),
    )
    brokers = BrokersSettings(
        grid_ops=BrokerSettings(url=mqtt_url), monitoring=BrokerSettings(url=mqtt_url)
    )
    platform = Messenger(brokers, client_id=platform_id, protection=platform_protection)
    field_device = Messenger(brokers, client_id=device, protection=device_protection)
    sniffer = MqttLink(brokers.grid_ops, client_id=f"sniff-{device}")
    commands, on_command = _collector()
    captured, on_capture = _collector()
    events, on_event = _collector()
    field_device.subscribe(command_filter(device), on_command, context=BrokerContext.GRID_OPS)
    platform.subscribe(event_filter(device), on_event, context=BrokerContext.GRID_OPS)
    sniffer.subscribe(command_filter(device), on_capture)
    for party in (platform, field_device, sniffer):
        party.start()
    try:
        assert platform.wait_subscribed(10)
        assert field_device.wait_subscribed(10)
        assert sniffer.wait_subscribed(10)
        yield Scene(
            device,
            platform,
            field_device,
            device_protection,
            sniffer,
            commands,
            captured,
            events,
            platform_protection,
            audit_path,
        )
    finally:
        for party in (sniffer, field_device, platform):
            party.stop()


def _deliver(scene: Scene, command: Command) -> bytes:
    """Publish a command, see it arrive opened at the device; return what the broker carried."""
    for handle in scene.platform.publish(command):
        assert handle.wait(10)
    topic, data = scene.commands.get(timeout=10)
    assert decode(MessageClass.COMMAND, data, topic=topic) == command
    return scene.captured.get(timeout=10)[1]


def _security_event(scene: Scene) -> Event:
    topic, data = scene.events.get(timeout=10)
    event = decode(MessageClass.EVENT, data, topic=topic)
    assert isinstance(event, Event)
    assert event.device_id == scene.device
    assert event.kind == SECURITY_EVENT_KIND
    return event


def _inject(scene: Scene, data: bytes) -> None:
    assert scene.sniffer.publish(command_topic(scene.device), data).wait(10)


def test_the_broker_carries_only_ciphertext(scene: Scene) -> None:
    command = _command(scene.device, 1)
    on_the_wire = _deliver(scene, command)
    assert encode(command) not in on_the_wire
    assert b"command_id" not in on_the_wire
    assert on_the_wire.startswith(b"OF")


def test_replayed_command_is_rejected_counted_and_evented(scene: Scene) -> None:
    on_the_wire = _deliver(scene, _command(scene.device, 1))
    _inject(scene, on_the_wire)
    event = _security_event(scene)
    assert event.message.startswith("duplicate")
    assert scene.device_protection.rejected == {RejectKind.DUPLICATE.value: 1}
    assert scene.commands.empty()
    report = verify_audit_log(scene.audit_path)
    assert report.ok
    assert report.entries == 1


def test_command_held_back_beyond_the_window_is_rejected(scene: Scene) -> None:
    held_back = scene.platform_protection.seal(
        command_topic(scene.device), encode(_command(scene.device, 1))
    )
    for seq in range(2, 8):  # six newer commands: the window holds four
        _deliver(scene, _command(scene.device, seq))
    _inject(scene, held_back)
    event = _security_event(scene)
    assert event.message.startswith("stale")
    assert scene.device_protection.rejected == {RejectKind.STALE.value: 1}
    assert scene.commands.empty()


def test_flipped_bit_and_plaintext_are_rejected(scene: Scene) -> None:
    _deliver(scene, _command(scene.device, 1))
    # a man in the middle alters a fresh command in flight (a copy of one already delivered
    # would be refused as a duplicate before its tag is even checked)
    in_flight = bytearray(
        scene.platform_protection.seal(
            command_topic(scene.device), encode(_command(scene.device, 2))
        )
    )
    in_flight[-20] ^= 0x01  # a ciphertext bit
    _inject(scene, bytes(in_flight))
    assert _security_event(scene).message.startswith("authentication")
    _inject(scene, encode(_command(scene.device, 3)))
    assert _security_event(scene).message.startswith("plaintext")
    assert scene.device_protection.rejected == {
        RejectKind.AUTHENTICATION.value: 1,
        RejectKind.PLAINTEXT.value: 1,
    }
    assert scene.commands.empty()
    _deliver(scene, _command(scene.device, 4))  # genuine traffic still flows


def test_settings_build_the_protection(tmp_path: Path) -> None:
    assert protection_from_settings(PayloadProtectionSettings(), sender_id="x") is None
    with pytest.raises(ConfigError, match="neither key_dir"):
        protection_from_settings(PayloadProtectionSettings(enabled=True), sender_id="x")
    master = secrets.token_bytes(32)
    KeyStore.init(tmp_path / "keys", master_key=master)
    settings = PayloadProtectionSettings(enabled=True, key_dir=tmp_path / "keys")
    environ = {"OPENFEEDER_MASTER_KEY": base64.b64encode(master).decode()}
    protection = protection_from_settings(settings, sender_id="flisr-1", environ=environ)
    assert protection is not None
    assert protection.protector.protects("cmd")
    assert not protection.protector.protects("meas")
    with pytest.raises(ConfigError, match="wrong master key"):
        protection_from_settings(
            settings,
            sender_id="flisr-1",
            environ={"OPENFEEDER_MASTER_KEY": base64.b64encode(b"k" * 32).decode()},
        )
