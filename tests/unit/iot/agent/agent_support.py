"""Helpers of the meter agent tests: a small real catalog on loopback, settings, plug-in sources.

:class:`LoopbackCatalog` is a FastAPI app served by uvicorn on 127.0.0.1 in a thread: it answers
``POST /v1/devices/boot``, ``GET /v1/devices/{id}/settings`` (ETag / 304) and
``GET /v1/algorithms/{name}/{version}`` like the device catalog does, from settings the test sets.
Its packages are signed with a publisher key of its own (:attr:`LoopbackCatalog.publisher`), whose
public key it hands to the devices in their settings.
"""

from __future__ import annotations

import asyncio
import json
import queue
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Header, Response

from openfeeder.config import AgentSettings, BrokerSettings, BrokersSettings, Settings
from openfeeder.iot.agent.packages import build_package, package_sha256
from openfeeder.iot.device_settings import (
    AlgorithmRef,
    BootRequest,
    BrokerEndpoint,
    DeviceSettings,
)
from openfeeder.iot.mqtt import MqttLink
from openfeeder.iot.schema import Payload, encode
from openfeeder.iot.topics import (
    BrokerContext,
    Topic,
    command_filter,
    committed_filter,
    committed_topic,
    config_filter,
    config_topic,
    status_topic,
    topology_filter,
)
from openfeeder.security.signing import NS_PER_DAY, encode_public_key, sign_package
from openfeeder.services.runtime import HttpServer


def new_device_id(prefix: str = "agent") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def agent_settings(
    state_dir: Path,
    broker_url: str,
    *,
    buffer_max_messages: int = 10_000,
    resend_after_s: float = 5.0,
) -> Settings:
    broker = BrokerSettings(url=broker_url, connect_timeout_s=2.0, keepalive_s=5)
    return Settings(
        brokers=BrokersSettings(grid_ops=broker, monitoring=broker),
        agent=AgentSettings(
            state_dir=state_dir,
            buffer_max_messages=buffer_max_messages,
            resend_after_s=resend_after_s,
        ),
    )


class LoopbackCatalog:
    """Serves boot, poll and package downloads for the devices the test configures."""

    def __init__(
        self,
        broker_url: str,
        *,
        reporting_interval_s: float = 0.05,
        sampling_rate_hz: float = 3200.0,
        poll_interval_s: float = 0.5,
        port: int = 0,
    ) -> None:
        self.broker_url = broker_url
        self.defaults: dict[str, Any] = {
            "reporting_interval_s": reporting_interval_s,
            "sampling_rate_hz": sampling_rate_hz,
            "poll_interval_s": poll_interval_s,
        }
        self.devices: dict[str, DeviceSettings] = {}
        self.boot_requests: dict[str, BootRequest] = {}
        self.packages: dict[tuple[str, str], bytes] = {}
        self.initial_algorithms: tuple[AlgorithmRef, ...] = ()
        self.publisher = Ed25519PrivateKey.generate()
        self.boots = 0
        self.polls = 0
        self._lock = threading.Lock()
        self._port = port
        self._server: HttpServer | None = None
        self._thread = threading.Thread(target=self._run, name="loopback-catalog", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        if self._server is not None:
            return self._server.url
        return f"http://127.0.0.1:{self._port}"

    # -- what the test does --------------------------------------------------------------------

    def start(self) -> LoopbackCatalog:
        """Listen (on ``port``, or a free one) and serve in a thread."""
        self._server = HttpServer(self._app(), host="127.0.0.1", port=self._port)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def add_package(self, data: bytes, name: str, version: str, **parameters: Any) -> AlgorithmRef:
        """Serve ``data`` as a package signed by :attr:`publisher` (valid for a day)."""
        self.packages[(name, version)] = data
        signature = sign_package(
            self.publisher,
            name=name,
            version=version,
            sha256=package_sha256(data),
            size_bytes=len(data),
            signed_ns=time.time_ns(),
            validity_ns=NS_PER_DAY,
        )
        return AlgorithmRef(
            name=name,
            version=version,
            sha256=package_sha256(data),
            url=f"{self.url}/v1/algorithms/{name}/{version}",
            parameters=parameters,
            signature=signature,
        )

    def update(self, device_id: str, **changes: Any) -> DeviceSettings:
        """Change a device's settings (new config_version), as an operator would."""
        with self._lock:
            current = self.devices[device_id]
            changed = current.model_copy(
                update={**changes, "config_version": current.config_version + 1}
            )
            self.devices[device_id] = DeviceSettings.model_validate(changed.model_dump())
            return self.devices[device_id]

    # -- the app -------------------------------------------------------------------------------

    def settings_for(self, device_id: str) -> DeviceSettings:
        endpoint = BrokerEndpoint(url=self.broker_url)
        return DeviceSettings(
            device_id=device_id,
            device_type="meter",
            config_version=1,
            brokers={BrokerContext.GRID_OPS: endpoint, BrokerContext.MONITORING: endpoint},
            publish=(),
            subscribe=tuple(
                str(f)
                for f in (
                    config_filter(device_id),
                    command_filter(device_id),
                    committed_filter(device_id),
                    topology_filter(),
                )
            ),
            disconnect_timeout_s=30.0,
            algorithms=self.initial_algorithms,
            package_keys=(encode_public_key(self.publisher.public_key()),),
            **self.defaults,
        )

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/devices/boot")
        def boot(request: BootRequest) -> Response:
            with self._lock:
                self.boots += 1
                self.boot_requests[request.device_id] = request
                settings = self.devices.get(request.device_id)
                if settings is None:
                    settings = self.settings_for(request.device_id)
                    self.devices[request.device_id] = settings
            return _settings_response(settings)

        @app.get("/v1/devices/{device_id}/settings")
        def poll(device_id: str, if_none_match: str | None = Header(default=None)) -> Response:
            with self._lock:
                self.polls += 1
                settings = self.devices.get(device_id)
            if settings is None:
                return Response(status_code=404)
            if if_none_match == f'"{settings.config_version}"':
                return Response(status_code=304)
            return _settings_response(settings)

        @app.get("/v1/algorithms/{name}/{version}")
        def download(name: str, version: str) -> Response:
            data = self.packages.get((name, version))
            if data is None:
                return Response(status_code=404)
            return Response(content=data, media_type="application/zip")

        return app

    def _run(self) -> None:
        server = self._server
        assert server is not None

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await server.serve(self._stop)

        asyncio.run(main())


def _settings_response(settings: DeviceSettings) -> Response:
    return Response(
        content=settings.model_dump_json(),
        media_type="application/json",
        headers={"ETag": f'"{settings.config_version}"'},
    )


# --- plug-in packages written by the tests --------------------------------------------------------


def write_plugin(
    directory: Path,
    *,
    name: str,
    version: str,
    source: str,
    class_name: str = "Plugin",
    inputs: Iterable[str] = ("*",),
    outputs: Iterable[tuple[str, str]] = (("n", "1"),),
    parameters: dict[str, Any] | None = None,
) -> Path:
    """A plug-in source folder (manifest + module ``plugin_<name>.py``)."""
    folder = directory / f"{name}-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    module = f"plugin_{name}"
    manifest = {
        "name": name,
        "version": version,
        "entry": f"{module}:{class_name}",
        "inputs": list(inputs),
        "outputs": [{"channel": c, "unit": u} for c, u in outputs],
        "parameters": parameters or {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return folder


COUNTER_SOURCE = """
    from openfeeder.iot.schema import Reading


    class Plugin:
        def start(self, context):
            self.version = context.version
            self.count = 0

        def on_measurement(self, readings, t_ns):
            self.count += 1
            tag = float(self.version.split(".")[0])
            return [Reading(channel="n", value=tag, unit="1", quality="good")]

        def stop(self):
            pass
"""

FAULTY_SOURCE = """
    class Plugin:
        def start(self, context):
            self.calls = 0

        def on_measurement(self, readings, t_ns):
            self.calls += 1
            if self.calls >= 3:
                raise RuntimeError("plug-in bug on call 3")
            return None

        def stop(self):
            pass
"""

HANG_SOURCE = """
    import time
    from pathlib import Path


    class Plugin:
        def start(self, context):
            self.release = Path(context.parameters["release_file"])

        def on_measurement(self, readings, t_ns):
            while not self.release.exists():  # hangs until the test releases it
                time.sleep(0.02)
            return None

        def stop(self):
            pass
"""


def package(directory: Path) -> bytes:
    return build_package(directory)


def publish_retained(broker_url: str, topic: Topic, payload: Payload) -> None:
    """Publish a retained message (as the historian or the catalog would) and wait for PUBACK."""
    link = MqttLink(BrokerSettings(url=broker_url), client_id=new_device_id("pub"))
    link.start()
    try:
        assert link.wait_connected(10)
        assert link.publish(topic, encode(payload), retain=True).wait(10)
    finally:
        link.stop()


def clear_retained(broker_url: str, device_id: str) -> None:
    """Remove the retained messages a test left for ``device_id`` on the broker."""
    link = MqttLink(
        BrokerSettings(url=broker_url, connect_timeout_s=2), client_id=new_device_id("clr")
    )
    link.start()
    try:
        if not link.wait_connected(2):
            return  # a private broker already gone: nothing to clear
        handles = [
            link.publish(topic(device_id), b"", retain=True)
            for topic in (status_topic, committed_topic, config_topic)
        ]
        for handle in handles:
            handle.wait(5)
    finally:
        link.stop()


class Collector:
    """A real MQTT subscriber (MqttLink) that queues every message it receives."""

    def __init__(self, broker_url: str, *filters: str, persistent: bool = False) -> None:
        """``persistent``: a session the broker keeps (and queues for) while it is disconnected,
        also across a broker restart when the broker persists its state."""
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.link = MqttLink(
            BrokerSettings(url=broker_url),
            client_id=new_device_id("watch"),
            clean_start=not persistent,
            session_expiry_s=300 if persistent else 0,
        )
        for flt in filters:
            self.link.subscribe(flt, self._on_message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.messages.put((topic, payload))

    def __enter__(self) -> Collector:
        self.link.start()
        assert self.link.wait_subscribed(10)  # SUBACK in, not just connected
        return self

    def __exit__(self, *_exc: object) -> None:
        self.link.stop()

    def confirm_subscribed(self, *topics: Topic, timeout_s: float = 10.0) -> None:
        """Publish a probe on each topic and wait until every one came back: the broker holds
        the subscriptions (the link reports connected before their SUBACKs arrive)."""
        for topic in topics:
            assert self.link.publish(topic, b"probe").wait(timeout_s)
        pending = {str(topic) for topic in topics}
        others: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"probes on {sorted(pending)} never came back"
            try:
                topic, payload = self.messages.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                continue
            if payload == b"probe":
                pending.discard(topic)
            else:
                others.append((topic, payload))
        for message in others:
            self.messages.put(message)

    def wait_for(
        self, predicate: Callable[[str, bytes], bool], *, timeout_s: float = 10.0
    ) -> tuple[str, bytes]:
        """The first message (from now) that satisfies ``predicate``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                topic, payload = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if predicate(topic, payload):
                return topic, payload
        raise AssertionError(f"no matching message within {timeout_s} s")
