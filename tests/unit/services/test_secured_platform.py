"""The secured platform end to end: a meter enrols, connects with mutual TLS and is stored.

Everything real on loopback, as ``openfeeder demo`` runs it (:mod:`openfeeder.cli.demo_security`):
the embedded broker with mutual TLS 1.3 and the access table the catalog keeps, the catalog on
HTTPS signing enrolments with a CA made in the test, the historian on mqtts and HTTPS with its
service certificate, and meter agents that make their keys, enrol and publish.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from openfeeder.cli.demo_iot import DemoSettings, demo_settings
from openfeeder.cli.demo_security import DEMO_HISTORIAN_INSTANCE
from openfeeder.config import SecuritySettings, Settings
from openfeeder.iot.agent.identity import CERT_FILE, KEY_FILE, catalog_client
from openfeeder.iot.agent.runtime import AgentState, MeterAgent
from openfeeder.iot.agent.source import SyntheticSource
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.catalog_client import CatalogClient, EnrolmentStatus
from openfeeder.services.catalog.service import CatalogThread
from openfeeder.services.historian.service import HistorianThread

TIMEOUT_S = 15.0


@dataclass
class Secured:
    demo: DemoSettings
    broker: BrokerThread
    catalog: CatalogThread
    historian: HistorianThread
    devices: Settings
    clients: list[CatalogClient]

    def agent(self, device_id: str, settings: Settings | None = None) -> MeterAgent:
        chosen = settings or self.devices
        client = catalog_client(chosen)
        self.clients.append(client)
        return MeterAgent(chosen, device_id=device_id, source=SyntheticSource(7), catalog=client)

    def stored(self, device_id: str) -> list[int]:
        return self.historian.historian.store.stored_seqs(device_id)

    def operator(self) -> CatalogClient:
        return catalog_client(self.devices)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    demo = demo_settings(tmp_path, secure=True)
    with demo.broker_thread() as broker:
        catalog = demo.catalog_thread(broker, "")
        catalog.start()
        try:
            historian_settings = demo.settings(
                broker, "", catalog, f"historian-{DEMO_HISTORIAN_INSTANCE}"
            )
            with HistorianThread(historian_settings, instance=DEMO_HISTORIAN_INSTANCE) as running:
                clients: list[CatalogClient] = []
                try:
                    yield Secured(
                        demo,
                        broker,
                        catalog,
                        running,
                        demo.settings(broker, "", catalog, "devices"),
                        clients,
                    )
                finally:
                    for client in clients:
                        client.close()
        finally:
            catalog.stop()


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_an_enrolled_meter_is_stored_over_mutual_tls(secured: Secured) -> None:
    assert secured.devices.brokers.monitoring.url.startswith("mqtts://")
    assert secured.devices.catalog.url.startswith("https://")
    agent = secured.agent("sec-meter-1")
    agent.start()
    try:
        assert agent.wait_running(TIMEOUT_S)
        _wait(lambda: len(secured.stored("sec-meter-1")) >= 2, "two stored measurements")
    finally:
        agent.stop()
    folder = secured.devices.agent.state_dir / "sec-meter-1"
    assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600
    assert agent.tls_files is not None
    assert agent.tls_files.cert_file == folder / CERT_FILE
    certificate = (folder / CERT_FILE).read_bytes()
    # the historian's REST API is HTTPS with its service certificate, checked against the CA
    response = httpx.get(
        f"{secured.historian.url}/v1/devices", verify=secured.demo.http_verify(), timeout=10
    )
    assert secured.historian.url.startswith("https://")
    assert "sec-meter-1" in {device["device_id"] for device in response.json()}
    # the next start uses the stored certificate (not enrolled again) and goes on publishing
    before = len(secured.stored("sec-meter-1"))
    again = secured.agent("sec-meter-1")
    again.start()
    try:
        assert again.wait_running(TIMEOUT_S)
        _wait(lambda: len(secured.stored("sec-meter-1")) > before, "a measurement after restart")
    finally:
        again.stop()
    assert (folder / CERT_FILE).read_bytes() == certificate


@pytest.mark.slow
def test_a_meter_without_the_secret_is_refused_until_an_operator_approves(
    secured: Secured,
) -> None:
    no_secret = secured.devices.model_copy(
        update={"security": SecuritySettings(ca_file=secured.devices.security.ca_file)}
    )
    waiting = secured.agent("sec-meter-2", no_secret)
    rejected = secured.agent("sec-meter-3", no_secret)
    waiting.start()
    rejected.start()
    try:
        _wait(
            lambda: (
                waiting.state is AgentState.ENROLLING and rejected.state is AgentState.ENROLLING
            ),
            "both enrolments pending",
        )
        with secured.operator() as operator:
            pending = {e.device_id: e.status for e in operator.enrolments()}
            assert pending["sec-meter-2"] is EnrolmentStatus.PENDING
            assert pending["sec-meter-3"] is EnrolmentStatus.PENDING
            # no certificate, so no broker connection and nothing stored
            time.sleep(0.5)
            assert not waiting.wait_running(0)
            assert secured.stored("sec-meter-2") == []
            folder = secured.devices.agent.state_dir
            assert not (folder / "sec-meter-2" / CERT_FILE).exists()

            operator.decide_enrolment("sec-meter-3", approve=False)
            _wait(lambda: rejected.state is AgentState.FAILED, "the rejected meter to give up")
            assert not (folder / "sec-meter-3" / CERT_FILE).exists()

            operator.decide_enrolment("sec-meter-2", approve=True)
        assert waiting.wait_running(TIMEOUT_S)
        _wait(lambda: len(secured.stored("sec-meter-2")) >= 1, "the approved meter's data")
        assert secured.stored("sec-meter-3") == []
    finally:
        waiting.stop()
        rejected.stop()
