"""Payload protection wired end to end on the secured platform, as ``openfeeder demo`` runs it.

The embedded broker (mutual TLS 1.3, the ACL the catalog keeps), the catalog holding the key store,
the historian, a meter agent that enrols and gets its key-encryption key and bundle from the
catalog, a service that commands it, and an observer with read rights on the whole scheme that sees
what the broker forwards: ciphertext for control and protection traffic, JSON for monitoring.
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openfeeder.cli.demo_iot import DemoSettings, demo_settings
from openfeeder.cli.demo_security import DEMO_HISTORIAN_INSTANCE
from openfeeder.config import Settings
from openfeeder.iot.agent.identity import catalog_client
from openfeeder.iot.agent.payload_keys import BUNDLE_FILE, KEK_FILE
from openfeeder.iot.agent.runtime import MeterAgent
from openfeeder.iot.agent.source import SyntheticSource
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.catalog_client import CatalogClient, DeviceSpec
from openfeeder.iot.mqtt import Messenger, MqttLink
from openfeeder.iot.protection import SECURITY_EVENT_KIND, protection_from_settings
from openfeeder.iot.schema import (
    AckStatus,
    Command,
    CommandAck,
    CommandAction,
    Event,
    Severity,
    decode,
)
from openfeeder.iot.topics import (
    BrokerContext,
    MessageClass,
    ack_filter,
    command_topic,
    event_filter,
    parse_topic,
)
from openfeeder.security.payload import Algorithm, TrafficClass, parse_header
from openfeeder.security.pki import CertificateAuthority
from openfeeder.security.tls import issued_files
from openfeeder.services.catalog.service import CatalogThread
from openfeeder.services.historian.service import HistorianThread

TIMEOUT_S = 15.0
OBSERVER = "observer-sealed"


@dataclass
class Captured:
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, data: bytes) -> None:
        with self.lock:
            self.messages.append((topic, data))

    def of(self, prefix: str) -> list[bytes]:
        with self.lock:
            return [data for topic, data in self.messages if topic.startswith(prefix) and data]


@dataclass
class Sealed:
    demo: DemoSettings
    broker: BrokerThread
    catalog: CatalogThread
    historian: HistorianThread
    devices: Settings
    flisr: Settings
    observed: Captured
    clients: list[CatalogClient]


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def sealed(tmp_path: Path) -> Iterator[Sealed]:
    demo = demo_settings(tmp_path, secure=True)
    assert demo.pki is not None
    ca = CertificateAuthority.open(demo.pki.directory)
    ca.issue(OBSERVER, role="observer", valid_days=1)
    demo.pki.services[OBSERVER] = "observer"  # in the broker's first table and the catalog's
    with demo.broker_thread() as broker:
        catalog = demo.catalog_thread(broker, "")
        catalog.start()
        observed = Captured()
        observer_settings = demo.settings(broker, "", catalog, "devices")
        observer = MqttLink(
            observer_settings.brokers.grid_ops,
            client_id=f"{OBSERVER}-1",
            tls=issued_files(ca, OBSERVER).client_context(),
        )
        observer.subscribe("openfeeder/v1/#", observed.add)
        observer.start()
        try:
            assert observer.wait_subscribed(TIMEOUT_S)  # SUBACK in: sees all that follows
            historian_settings = demo.settings(
                broker, "", catalog, f"historian-{DEMO_HISTORIAN_INSTANCE}"
            )
            with HistorianThread(historian_settings, instance=DEMO_HISTORIAN_INSTANCE) as running:
                clients: list[CatalogClient] = []
                try:
                    yield Sealed(
                        demo,
                        broker,
                        catalog,
                        running,
                        demo.settings(broker, "", catalog, "devices"),
                        demo.settings(broker, "", catalog, "flisr"),
                        observed,
                        clients,
                    )
                finally:
                    for client in clients:
                        client.close()
        finally:
            observer.stop()
            catalog.stop()


def test_control_and_protection_traffic_is_sealed_end_to_end(sealed: Sealed) -> None:
    assert sealed.devices.payload_protection.enabled
    assert sealed.devices.payload_protection.key_dir is None  # keys come from the catalog
    client = catalog_client(sealed.devices)
    sealed.clients.append(client)
    agent = MeterAgent(
        sealed.devices, device_id="sealed-m1", source=SyntheticSource(3), catalog=client
    )
    service_id = "flisr-sealedtest"
    protection = protection_from_settings(
        sealed.flisr.payload_protection, sender_id=service_id, event_device_id="flisr"
    )
    assert protection is not None
    service = Messenger(
        sealed.flisr.brokers,
        client_id=service_id,
        tls=issued_files(
            CertificateAuthority.open(sealed.demo.pki.directory),  # type: ignore[union-attr]
            "flisr",
        ).client_context(),
        protection=protection,
    )
    received: list[tuple[str, bytes]] = []
    service.subscribe(ack_filter(), lambda t, d: received.append((t, d)), context=_OPS)
    service.subscribe(event_filter(), lambda t, d: received.append((t, d)), context=_OPS)
    agent.start()
    service.start()
    try:
        assert agent.wait_running(TIMEOUT_S)
        assert service.wait_subscribed(TIMEOUT_S)  # SUBACKs in: the acks cannot miss them
        folder = sealed.devices.agent.state_dir / "sealed-m1"
        assert stat.S_IMODE((folder / KEK_FILE).stat().st_mode) == 0o600
        assert stat.S_IMODE((folder / BUNDLE_FILE).stat().st_mode) == 0o600
        assert agent.payload_keys is not None
        assert {"control/sealed-m1@1", "protection/sealed-m1@1", "control@1"} <= set(
            agent.payload_keys.key_ids
        )
        # measurements are monitoring traffic: TLS only, the historian stores them as before
        _wait(
            lambda: len(sealed.historian.historian.store.stored_seqs("sealed-m1")) >= 1,
            "a stored measurement",
        )
        assert sealed.observed.of("openfeeder/v1/meas/sealed-m1")[0].startswith(b"{")
        # a command sealed by the service is opened by the meter; its ack comes back sealed
        command = Command(
            device_id="sealed-m1",
            seq=1,
            t_ns=time.time_ns(),
            command_id="c-sealed-1",
            action=CommandAction.OPEN,
            target_id=7,
        )
        service.publish(command)
        _wait(lambda: _acks(received), "the meter's acknowledgement")
        ack = _acks(received)[0]
        assert ack.command_id == "c-sealed-1"
        assert ack.status is AckStatus.REJECTED  # a meter has nothing to operate
        on_the_wire = sealed.observed.of("openfeeder/v1/cmd/sealed-m1")
        assert len(on_the_wire) == 1
        assert b"c-sealed-1" not in on_the_wire[0]
        header = parse_header(on_the_wire[0])
        assert (header.algorithm, header.traffic) == (Algorithm.AES_256_GCM, TrafficClass.CONTROL)
        assert header.key_id == "control/sealed-m1@1"
        assert header.sender_id == service_id
        ack_wire = sealed.observed.of("openfeeder/v1/ack/sealed-m1")
        assert parse_header(ack_wire[0]).sender_id == "sealed-m1"
        # an event is protection traffic: SM4-GCM under the meter's own key
        agent.emit_event("sealed_probe", Severity.INFO, "probe")
        _wait(lambda: sealed.observed.of("openfeeder/v1/event/sealed-m1"), "the event")
        event_wire = sealed.observed.of("openfeeder/v1/event/sealed-m1")[0]
        header = parse_header(event_wire)
        assert (header.algorithm, header.key_id) == (Algorithm.SM4_GCM, "protection/sealed-m1@1")
        _wait(lambda: "sealed_probe" in _event_kinds(received), "the opened event")
        # the command replayed through the broker: the meter drops it and says so, sealed
        service.link(_OPS).publish(str(command_topic("sealed-m1")), on_the_wire[0])
        _wait(
            lambda: SECURITY_EVENT_KIND in _event_kinds(received),
            "the meter's security event about the replay",
        )
        assert len(_acks(received)) == 1  # the replayed command was not executed again
        # a configuration the catalog pushes is control traffic under the meter's key, and the
        # meter applies it (opened)
        before = agent.device_settings
        assert before is not None
        client.put_device("sealed-m1", DeviceSpec(device_type="meter", reporting_interval_s=0.7))
        _wait(
            lambda: (
                (current := agent.device_settings) is not None
                and current.config_version != before.config_version
            ),
            "the pushed configuration applied",
        )
        # (the meter may have taken it from a poll first: the push is looked for on its own)
        _wait(lambda: sealed.observed.of("openfeeder/v1/config/sealed-m1"), "the pushed config")
        pushed = sealed.observed.of("openfeeder/v1/config/sealed-m1")
        header = parse_header(pushed[-1])
        assert header.key_id == "control/sealed-m1@1"
        assert header.sender_id.startswith("catalog-")
    finally:
        service.stop()
        agent.stop()


_OPS = BrokerContext.GRID_OPS


def _acks(received: list[tuple[str, bytes]]) -> list[CommandAck]:
    return [
        payload
        for topic, data in list(received)
        if parse_topic(topic).message_class is MessageClass.COMMAND_ACK
        and isinstance(payload := decode(MessageClass.COMMAND_ACK, data, topic=topic), CommandAck)
    ]


def _event_kinds(received: list[tuple[str, bytes]]) -> set[str]:
    return {
        payload.kind
        for topic, data in list(received)
        if parse_topic(topic).message_class is MessageClass.EVENT
        and isinstance(payload := decode(MessageClass.EVENT, data, topic=topic), Event)
    }
