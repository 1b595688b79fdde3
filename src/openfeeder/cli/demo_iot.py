"""The metering part of ``openfeeder demo``: seed 003's platform running in one process.

An embedded MQTT broker, the device catalog (SQLite), the historian (SQLite) and a fleet of meter
agents placed on the case's load buses, all in a temporary folder. The meters self-configure from
the catalog and stream; midway an algorithm package is uploaded and assigned to some meters, which
start it without a restart; at the end the historian is queried over REST.

Secured by default (:mod:`openfeeder.cli.demo_security`): mutual TLS 1.3 on the broker with the
ACL the catalog keeps, HTTPS for REST, each meter enrols for its certificate and payload keys, and
control and protection payloads are sealed end to end; ``secure=False``
(``openfeeder demo --insecure``) runs everything in plain text.
"""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from openfeeder.cli.agent_cmd import meter_placements
from openfeeder.cli.demo_security import DEMO_HISTORIAN_INSTANCE, DemoPki, demo_pki
from openfeeder.config import (
    AgentSettings,
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    HistorianSettings,
    LoggingSettings,
    PayloadProtectionSettings,
    SecuritySettings,
    Settings,
    StorageSettings,
)
from openfeeder.iot.agent.fleet import Fleet, MeterSpec
from openfeeder.iot.agent.identity import catalog_client
from openfeeder.iot.agent.packages import MANIFEST_FILE, build_package, builtin_algorithms
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.catalog_client import AlgorithmAssignment, CatalogClient, DeviceSpec
from openfeeder.security.tls import TlsFiles
from openfeeder.services.catalog.service import CatalogThread
from openfeeder.services.historian.service import HistorianThread

__all__ = ["DemoSettings", "demo_settings", "run_metering_demo"]

_ALGORITHM = "energy"


def _settings(
    workdir: Path,
    broker_url: str,
    case: str,
    catalog_url: str,
    port: int,
    *,
    security: SecuritySettings | None = None,
    payload_protection: PayloadProtectionSettings | None = None,
) -> Settings:
    """The demo's settings (plain unless ``security`` is given: the benchmarks use them plain)."""
    broker = BrokerSettings(url=broker_url)
    return Settings(
        security=security or SecuritySettings(),
        payload_protection=payload_protection or PayloadProtectionSettings(),
        brokers=BrokersSettings(grid_ops=broker, monitoring=broker),
        storage=StorageSettings(url=f"sqlite:///{workdir}/catalog.db"),
        logging=LoggingSettings(level="WARNING", json_lines=False),
        catalog=CatalogSettings(
            listen_port=port,
            url=catalog_url,
            case=case,
            reporting_interval_s=0.5,
            sampling_rate_hz=3200,
            poll_interval_s=2.0,
        ),
        historian=HistorianSettings(
            listen_port=0,
            storage_url=f"sqlite:///{workdir}/historian.db",
            committed_interval_ms=200,
        ),
        agent=AgentSettings(state_dir=workdir / "agents", resend_after_s=2.0),
    )


def run_metering_demo(
    out: Console, *, case: str, meters: int, seconds: float, secure: bool = True
) -> None:
    """Run the platform for ``seconds`` with ``meters`` meters and print what happened."""
    quiet = ("openfeeder", "httpx", "uvicorn")  # the demo prints; the services' logs stay quiet
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        _run(out, case=case, meters=meters, seconds=seconds, secure=secure)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class DemoSettings:
    """Each party's settings in the demo: the same platform, its own ``[security]``."""

    def __init__(self, workdir: Path, pki: DemoPki | None) -> None:
        self.workdir = workdir
        self.pki = pki

    @property
    def secure(self) -> bool:
        return self.pki is not None

    def broker_thread(self) -> BrokerThread:
        """The embedded broker: mutual TLS 1.3 with the services' ACL, or plain."""
        if self.pki is None:
            return BrokerThread(port=0)
        return BrokerThread(
            port=0,
            ssl_context=self.pki.broker_context(),
            access=self.pki.initial_table(),
            revocations=self.pki.revocations(),
        )

    def broker_url(self, broker: BrokerThread) -> str:
        return f"{'mqtts' if self.secure else 'mqtt'}://127.0.0.1:{broker.port}"

    def catalog_thread(self, broker: BrokerThread, case: str) -> CatalogThread:
        """The catalog (port 0, HTTPS when secured), keeping ``broker``'s ACL when secured."""
        placeholder = "https://127.0.0.1:1" if self.secure else "http://127.0.0.1:1"
        security = self.pki.catalog() if self.pki is not None else None
        sealing = self.pki.payload_protection("catalog") if self.pki is not None else None
        settings = _settings(
            self.workdir,
            self.broker_url(broker),
            case,
            placeholder,
            0,
            security=security,
            payload_protection=sealing,
        )
        secured = self.pki is not None
        return CatalogThread(
            settings,
            on_access_table=broker.set_access if secured else None,
            on_revoked=broker.drop_revoked if secured else None,
        )

    def settings(
        self, broker: BrokerThread, case: str, catalog: CatalogThread, party: str
    ) -> Settings:
        """Settings of ``party``: a service identity (``historian-demo``, ``flisr``) or
        ``devices`` (they enrol)."""
        security = sealing = None
        if self.pki is not None:
            security = self.pki.devices() if party == "devices" else self.pki.service(party)
            sealing = self.pki.payload_protection(party)
        return _settings(
            self.workdir,
            self.broker_url(broker),
            case,
            catalog.url,
            catalog.port,
            security=security,
            payload_protection=sealing,
        )

    def http_verify(self) -> ssl.SSLContext | bool:
        """How the demo's own HTTP requests check the services: the demo CA (or nothing)."""
        if self.pki is None:
            return True
        return TlsFiles(self.pki.ca_file).client_context()

    def describe(self) -> str:
        if self.pki is None:
            return "INSECURE (--insecure): plain MQTT and HTTP, no identities, no topic ACL"
        return (
            "secured: mutual TLS 1.3 (mqtts) with certificates of a throwaway CA, topic ACL kept "
            "by the catalog, HTTPS; devices enrol with the catalog for their certificates and "
            "payload keys; payloads sealed end to end (control AES-256-GCM, protection SM4-GCM, "
            "monitoring TLS only)"
        )


def demo_settings(workdir: Path, *, secure: bool) -> DemoSettings:
    """The demo's parties' settings in ``workdir`` (a CA is made there when ``secure``)."""
    return DemoSettings(workdir, demo_pki(workdir) if secure else None)


def _run(out: Console, *, case: str, meters: int, seconds: float, secure: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="openfeeder-demo-") as tmp:
        workdir = Path(tmp)
        demo = demo_settings(workdir, secure=secure)
        out.print(f"security: {demo.describe()}")
        with demo.broker_thread() as broker:
            catalog = demo.catalog_thread(broker, case)
            catalog_url = catalog.start()
            historian = HistorianThread(
                demo.settings(broker, case, catalog, f"historian-{DEMO_HISTORIAN_INSTANCE}"),
                instance=DEMO_HISTORIAN_INSTANCE,
            )
            try:
                historian.start()
                out.print(
                    f"embedded broker {demo.broker_url(broker)}, catalog {catalog_url}, "
                    f"historian {historian.url} (SQLite in {workdir})"
                )
                _stream(
                    out,
                    demo.settings(broker, case, catalog, "devices"),
                    historian.url,
                    meters=meters,
                    seconds=seconds,
                    verify=demo.http_verify(),
                )
            finally:
                historian.stop()
                catalog.stop()


def _stream(
    out: Console,
    settings: Settings,
    historian_url: str,
    *,
    meters: int,
    seconds: float,
    verify: ssl.SSLContext | bool,
) -> None:
    placements = meter_placements(settings, meters)
    specs = [
        MeterSpec(device_id=f"meter-{index:02d}", seed=index, params=params, location=location)
        for index, (location, params) in enumerate(placements)
    ]
    with catalog_client(settings) as catalog:
        fleet = Fleet(settings, specs, catalog=catalog)
        fleet.start()
        swapped = False
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=out,
                transient=True,
            ) as progress:
                task = progress.add_task(f"{meters} meters streaming", total=seconds, status="")
                started = time.monotonic()
                while (elapsed := time.monotonic() - started) < seconds:
                    stats = fleet.stats()
                    progress.update(
                        task,
                        completed=elapsed,
                        status=f"{stats.running} running, {stats.produced} produced, "
                        f"{stats.plugins_running} algorithms",
                    )
                    if not swapped and elapsed > seconds / 3:
                        _deploy_algorithm(out, catalog, specs[: max(1, meters // 3)])
                        swapped = True
                    time.sleep(0.2)
            _wait_committed(fleet, timeout_s=10)
            _report(out, fleet, specs, historian_url, verify=verify)
        finally:
            fleet.stop()


def _deploy_algorithm(out: Console, catalog: CatalogClient, specs: list[MeterSpec]) -> None:
    source = builtin_algorithms()[_ALGORITHM]
    package = build_package(source)
    version = str(json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))["version"])
    catalog.upload_algorithm(_ALGORITHM, version, package)
    for spec in specs:
        catalog.put_device(
            spec.device_id,
            DeviceSpec(
                device_type="meter",
                location=spec.location,
                algorithms=(AlgorithmAssignment(name=_ALGORITHM, version=version),),
            ),
        )
    out.print(
        f"uploaded algorithm {_ALGORITHM} {version} and assigned it to {len(specs)} meters "
        "(pushed over MQTT, started without a restart)"
    )


def _wait_committed(fleet: Fleet, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        behind = [
            agent
            for agent in fleet.agents
            if (stats := agent.stats()).committed_seq is None
            or stats.committed_seq < stats.next_seq - 3
        ]
        if not behind:
            return
        time.sleep(0.1)


def _report(
    out: Console,
    fleet: Fleet,
    specs: list[MeterSpec],
    historian_url: str,
    *,
    verify: ssl.SSLContext | bool,
) -> None:
    with httpx.Client(base_url=historian_url, timeout=10, verify=verify) as client:
        stored = {item["device_id"]: item for item in client.get("/v1/devices").json()}
        first = specs[0].device_id
        series = client.get(
            f"/v1/devices/{first}/readings", params={"channel": "u_a", "bucket_s": 2}
        ).json()
        health = client.get("/health").json()
    table = Table(title="meters and what the historian holds of them")
    for column in (
        "meter",
        "bus",
        "produced",
        "stored",
        "committed up to",
        "buffered",
        "algorithm",
    ):
        table.add_column(column, justify="right")
    for agent, spec in zip(fleet.agents, specs, strict=True):
        stats = agent.stats()
        row = stored.get(agent.device_id, {})
        algorithms = ", ".join(f"{p.name} {p.version} ({p.outputs})" for p in stats.plugins)
        table.add_row(
            agent.device_id,
            str(spec.location.bus_id if spec.location else "-"),
            str(stats.produced),
            str(row.get("message_count", 0)),
            str(stats.committed_seq if stats.committed_seq is not None else "-"),
            str(stats.buffered),
            algorithms or "-",
        )
    out.print(table)
    out.print(
        "stored: rows in the historian; committed: the historian's durable mark (all seqs up to it"
        " are stored); buffered: kept on the meter's disk until committed"
    )
    buckets = series.get("buckets") or []
    points = ", ".join(
        f"{bucket['avg']:.1f}" for bucket in buckets if bucket.get("avg") is not None
    )
    out.print(f"{first} u_a, 2 s averages (V): {points}")
    counters = health.get("counters", {})
    rejected = sum(counters.get("rejected", {}).values())
    out.print(
        f"historian: {health.get('status')}; {counters.get('messages_stored', 0)} messages stored "
        f"in {counters.get('batches', 0)} batches, {counters.get('duplicates_ignored', 0)} "
        f"duplicates ignored, {rejected} rejected, {counters.get('gaps', 0)} sequence gaps"
    )
