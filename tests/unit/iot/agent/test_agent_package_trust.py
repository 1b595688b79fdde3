"""Attacks on algorithm updates that must fail: the meter keeps running the version it has.

A real HTTP catalog on loopback (:class:`LoopbackCatalog`, packages signed by its publisher key)
and the agent's :class:`AlgorithmHost` fetching through the real :class:`CatalogClient`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_support import COUNTER_SOURCE, FAULTY_SOURCE, LoopbackCatalog, write_plugin
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfeeder.iot.agent.algorithm_host import AlgorithmHost
from openfeeder.iot.agent.packages import build_package, package_sha256
from openfeeder.iot.agent.plugins import PluginRunner, PluginState
from openfeeder.iot.agent.trust import PackageTrust
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.iot.device_settings import AlgorithmRef
from openfeeder.iot.schema import Quality, Reading, Severity, Unit
from openfeeder.security.signing import NS_PER_DAY, KeyRing, encode_public_key, sign_package

NAME = "ctr"

UNHEALTHY_SOURCE = """
    from openfeeder.iot.schema import Reading


    class Plugin:
        def start(self, context):
            pass

        def on_measurement(self, readings, t_ns):
            return [Reading(channel="n", value=3.0, unit="1", quality="good")]

        def check_health(self):
            return False

        def stop(self):
            pass
"""


@dataclass
class Meter:
    """An algorithm host as a meter runs it, plus what it reported."""

    root: Path
    catalog: LoopbackCatalog
    client: CatalogClient
    host: AlgorithmHost
    keys: tuple[str, ...]
    events: list[tuple[str, Severity, str]] = field(default_factory=list)
    outputs: list[tuple[str, float]] = field(default_factory=list)

    def package(self, version: str, source: str = COUNTER_SOURCE) -> bytes:
        folder = write_plugin(self.root / "src", name=NAME, version=version, source=source)
        return build_package(folder)

    def publish(self, version: str, source: str = COUNTER_SOURCE) -> AlgorithmRef:
        return self.catalog.add_package(self.package(version, source), NAME, version)

    def apply(self, *refs: AlgorithmRef) -> None:
        self.host.apply(refs, None, package_keys=self.keys)

    def measure(self, until: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Feed measurements and let the control side review until ``until()`` holds."""
        deadline = time.monotonic() + timeout_s
        reading = Reading(channel="p", value=1.0, unit=Unit.W, quality=Quality.GOOD)
        while not until():
            if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                pytest.fail("condition not reached")
            self.host.dispatch((reading,), time.time_ns())
            time.sleep(0.02)
            self.host.review()

    def running(self) -> str:
        runner = self.host.runners[NAME]
        assert runner.state is PluginState.RUNNING
        return runner.version

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]

    def install(self, ref: AlgorithmRef) -> None:
        self.apply(ref)
        self.measure(lambda: self.host.installed.version_of(NAME) == (ref.version, ref.sha256))

    def still_runs(self, version: str) -> None:
        """The running version is ``version`` and its outputs keep coming."""
        assert self.running() == version
        before = len(self.outputs)
        self.measure(lambda: len(self.outputs) > before + 2)
        assert {self.outputs[-1]} == {(version, float(version.split(".", maxsplit=1)[0]))}


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    catalog = LoopbackCatalog("mqtt://127.0.0.1:1").start()
    client = CatalogClient(catalog.url, timeout_s=5)
    events: list[tuple[str, Severity, str]] = []
    outputs: list[tuple[str, float]] = []

    def on_outputs(runner: PluginRunner, readings: tuple[Reading, ...], _t: int | None) -> None:
        outputs.extend((runner.version, r.value) for r in readings)

    def emit(kind: str, severity: Severity, message: str, _values: object = ()) -> None:
        events.append((kind, severity, message))

    host = AlgorithmHost(
        device_id="m-trust",
        root=tmp_path / "state",
        download=client.download_algorithm,
        on_outputs=on_outputs,
        emit_event=emit,
        health_measurements=3,
    )
    keys = (encode_public_key(catalog.publisher.public_key()),)
    try:
        yield Meter(tmp_path, catalog, client, host, keys, events, outputs)
    finally:
        host.stop_all()
        client.close()
        catalog.stop()


def _resigned(
    ref: AlgorithmRef,
    key: Ed25519PrivateKey,
    *,
    sha256: str | None = None,
    size: int = 1,
    signed_ns: int | None = None,
    validity_ns: int = NS_PER_DAY,
) -> AlgorithmRef:
    signature = sign_package(
        key,
        name=ref.name,
        version=ref.version,
        sha256=sha256 or ref.sha256,
        size_bytes=size,
        signed_ns=signed_ns if signed_ns is not None else time.time_ns(),
        validity_ns=validity_ns,
    )
    return ref.model_copy(update={"signature": signature, "sha256": sha256 or ref.sha256})


def _attack(meter: Meter, kind: str) -> AlgorithmRef:
    """A reference to version 2.0.0 that some attacker made (or changed)."""
    good = meter.publish("2.0.0")
    evil = meter.package("2.0.0", FAULTY_SOURCE)
    if kind == "unsigned":
        return good.model_copy(update={"signature": None})
    if kind == "foreign key":
        return _resigned(good, Ed25519PrivateKey.generate())
    if kind == "expired":
        two_days_ago = time.time_ns() - 2 * NS_PER_DAY
        return _resigned(good, meter.catalog.publisher, signed_ns=two_days_ago)
    if kind == "altered signature":
        payload, signature = (good.signature or "").split(".")
        flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
        return good.model_copy(update={"signature": f"{payload}.{flipped}"})
    if kind == "tampered bytes":  # the catalog's copy replaced, the reference untouched
        meter.catalog.packages[(NAME, "2.0.0")] = evil
        return good
    if kind == "tampered reference":  # bytes and their SHA-256 replaced, signature kept
        meter.catalog.packages[(NAME, "2.0.0")] = evil
        return good.model_copy(update={"sha256": package_sha256(evil)})
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "event"),
    [
        ("unsigned", "package_refused"),
        ("foreign key", "package_refused"),
        ("expired", "package_refused"),
        ("altered signature", "package_refused"),
        ("tampered reference", "package_refused"),
        ("tampered bytes", "algorithm_failed"),
    ],
)
def test_a_forged_update_is_refused_and_the_old_version_keeps_running(
    meter: Meter, kind: str, event: str
) -> None:
    meter.install(meter.publish("1.0.0"))
    meter.events.clear()
    meter.apply(_attack(meter, kind))
    assert meter.kinds() == [event], meter.events
    assert meter.events[0][1] is Severity.WARNING
    if kind == "tampered bytes":
        assert "SHA-256" in meter.events[0][2]
    meter.still_runs("1.0.0")
    assert meter.host.installed.version_of(NAME) is not None
    assert not (meter.root / "state" / "algorithms" / NAME / "2.0.0").exists()  # not extracted


@pytest.mark.parametrize("reason", ["unsigned", "expired", "foreign key"])
def test_a_forged_first_package_never_runs(meter: Meter, reason: str) -> None:
    ref = _attack(meter, reason)
    meter.apply(ref)
    assert meter.kinds() == ["package_refused"]
    said = {"unsigned": "no signature", "expired": "expired", "foreign key": "not trusted"}
    assert said[reason] in meter.events[0][2]
    assert NAME not in meter.host.runners


def test_a_downgrade_is_refused_even_after_a_restart(meter: Meter) -> None:
    v1 = meter.publish("1.0.0")
    meter.install(v1)
    v2 = meter.publish("2.0.0")
    meter.install(v2)
    assert "algorithm_updated" in meter.kinds()
    meter.events.clear()
    meter.apply(v1)  # properly signed, but older than what is installed
    assert meter.kinds() == ["package_refused"]
    assert "rollback protection" in meter.events[0][2]
    meter.still_runs("2.0.0")
    other = meter.package("2.0.0", FAULTY_SOURCE)  # the installed version, other content
    meter.apply(meter.catalog.add_package(other, NAME, "2.0.0"))
    assert meter.kinds()[-1] == "package_refused"
    assert "a version never changes" in meter.events[-1][2]
    meter.still_runs("2.0.0")

    meter.host.stop_all()  # the meter restarts: the installed version is on disk
    restarted = AlgorithmHost(
        device_id="m-trust",
        root=meter.root / "state",
        download=meter.client.download_algorithm,
        on_outputs=lambda *_: None,
        emit_event=lambda kind, *_: meter.events.append((kind, Severity.INFO, "")),
    )
    restarted.apply([v1], None, package_keys=meter.keys)
    assert meter.kinds()[-1] == "package_refused"
    assert NAME not in restarted.runners


def test_pinned_keys_ignore_the_keys_the_settings_bring(meter: Meter, tmp_path: Path) -> None:
    pinned = PackageTrust(pinned=KeyRing([Ed25519PrivateKey.generate().public_key()]))
    host = AlgorithmHost(
        device_id="m-pinned",
        root=tmp_path / "pinned",
        download=meter.client.download_algorithm,
        on_outputs=lambda *_: None,
        emit_event=lambda kind, *_: meter.events.append((kind, Severity.INFO, "")),
        trust=pinned,
    )
    host.apply([meter.publish("1.0.0")], None, package_keys=meter.keys)
    assert meter.kinds() == ["package_refused"]
    assert NAME not in host.runners


@pytest.mark.parametrize("source", [FAULTY_SOURCE, UNHEALTHY_SOURCE], ids=["raises", "unhealthy"])
def test_a_new_version_failing_its_health_check_is_rolled_back(meter: Meter, source: str) -> None:
    v1 = meter.publish("1.0.0")
    meter.install(v1)
    v2 = meter.publish("2.0.0", source)
    meter.apply(v2)
    meter.measure(lambda: "algorithm_rolled_back" in meter.kinds())
    rolled = next(m for k, s, m in meter.events if k == "algorithm_rolled_back")
    assert "2.0.0 failed its health check" in rolled
    assert "rolled back to 1.0.0" in rolled
    meter.still_runs("1.0.0")
    assert meter.host.installed.version_of(NAME) == ("1.0.0", v1.sha256)
    assert meter.host.installed.is_rejected(v2)
    meter.events.clear()
    meter.apply(v2)  # the catalog still says 2.0.0: not tried again
    meter.still_runs("1.0.0")
    assert "algorithm_rolled_back" not in meter.kinds()
    v3 = meter.publish("3.0.0")  # the fix is a new version
    meter.install(v3)
    meter.still_runs("3.0.0")
