"""Algorithm packages (build, verify, load) and their isolation on worker threads."""

from __future__ import annotations

import io
import logging
import queue
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from agent_support import COUNTER_SOURCE, FAULTY_SOURCE, HANG_SOURCE, write_plugin

from openfeeder.iot.agent.packages import (
    LoadedAlgorithm,
    PackageError,
    PackageFault,
    build_package,
    builtin_algorithms,
    load_package,
    package_sha256,
    parameters_for,
    unload,
)
from openfeeder.iot.agent.plugins import AlgorithmContext, PluginRunner, PluginState
from openfeeder.iot.device_settings import AlgorithmRef
from openfeeder.iot.schema import Quality, Reading, Severity, Unit

_SHA_ZERO = "0" * 64


def _ref(data: bytes, name: str, version: str, **parameters: object) -> AlgorithmRef:
    return AlgorithmRef.model_validate(
        {
            "name": name,
            "version": version,
            "sha256": package_sha256(data),
            "url": f"http://catalog.invalid/v1/algorithms/{name}/{version}",
            "parameters": parameters,
        }
    )


def _reading(channel: str, value: float, unit: Unit = Unit.W) -> Reading:
    return Reading(channel=channel, value=value, unit=unit, quality=Quality.GOOD)


class Recorder:
    """Collects what runners publish and report (the agent's role)."""

    def __init__(self) -> None:
        self.outputs: queue.Queue[tuple[str, tuple[Reading, ...]]] = queue.Queue()
        self.problems: queue.Queue[tuple[str, str]] = queue.Queue()
        self.events: list[tuple[str, Severity, str, tuple[Reading, ...]]] = []

    def on_outputs(
        self, runner: PluginRunner, readings: tuple[Reading, ...], _t: int | None
    ) -> None:
        self.outputs.put((runner.version, readings))

    def on_problem(self, _runner: PluginRunner, kind: str, message: str) -> None:
        self.problems.put((kind, message))

    def emit_event(
        self, kind: str, severity: Severity, message: str, values: Sequence[Reading] = ()
    ) -> None:
        self.events.append((kind, severity, message, tuple(values)))


@pytest.fixture
def loaded_modules() -> Iterator[list[LoadedAlgorithm]]:
    """Packages loaded by a test; their modules leave sys.modules afterwards."""
    loaded: list[LoadedAlgorithm] = []
    yield loaded
    for item in loaded:
        unload(item)


def _runner(
    loaded: LoadedAlgorithm,
    recorder: Recorder,
    tmp_path: Path,
    *,
    deadline_s: float = 2.0,
) -> PluginRunner:
    context = AlgorithmContext(
        device_id="dev-1",
        algorithm=loaded.name,
        version=loaded.version,
        parameters=parameters_for(loaded.manifest, loaded.ref),
        grid=None,
        state_dir=tmp_path,
        emit_event=recorder.emit_event,
        logger=logging.getLogger("test"),
    )
    return PluginRunner(
        loaded,
        context,
        on_outputs=recorder.on_outputs,
        on_problem=recorder.on_problem,
        deadline_s=deadline_s,
    )


def test_package_build_is_reproducible_and_checked(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path, name="counter", version="1.0", source=COUNTER_SOURCE)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "junk.pyc").write_bytes(b"x")
    first, second = build_package(folder), build_package(folder)
    assert first == second  # same content, same SHA-256
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert names == ["manifest.json", "plugin_counter.py"]

    (folder / "manifest.json").write_text('{"name": "counter", "version": "1.0"}')
    with pytest.raises(PackageError) as err:
        build_package(folder)
    assert err.value.reason is PackageFault.BAD_MANIFEST
    assert "entry" in str(err.value)


def test_wrong_checksum_is_refused_before_anything_is_extracted_or_imported(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "imported"
    source = f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")


        class Plugin:
            def start(self, context): pass
            def on_measurement(self, readings, t_ns): return None
            def stop(self): pass
    """
    data = build_package(write_plugin(tmp_path, name="evil", version="1", source=source))
    ref = _ref(data, "evil", "1").model_copy(update={"sha256": _SHA_ZERO})
    root = tmp_path / "algorithms"
    modules_before = set(sys.modules)
    with pytest.raises(PackageError) as err:
        load_package(data, ref, root=root)
    assert err.value.reason is PackageFault.CHECKSUM_MISMATCH
    assert not root.exists()  # nothing extracted
    assert not marker.exists()  # nothing imported
    assert set(sys.modules) == modules_before


def test_unsafe_entries_and_name_mismatch_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", '{"name": "x", "version": "1", "entry": "m:C"}')
        archive.writestr("../escape.py", "print('out')")
    data = buffer.getvalue()
    with pytest.raises(PackageError) as err:
        load_package(data, _ref(data, "x", "1"), root=tmp_path / "algorithms")
    assert err.value.reason is PackageFault.UNSAFE_ENTRY
    assert not (tmp_path / "escape.py").exists()

    good = build_package(write_plugin(tmp_path, name="counter", version="1", source=COUNTER_SOURCE))
    with pytest.raises(PackageError) as err:
        load_package(good, _ref(good, "counter", "2"), root=tmp_path / "algorithms")
    assert err.value.reason is PackageFault.NAME_MISMATCH


def test_two_versions_of_one_algorithm_coexist(
    tmp_path: Path, loaded_modules: list[LoadedAlgorithm]
) -> None:
    root = tmp_path / "algorithms"
    packages = {
        version: build_package(
            write_plugin(tmp_path, name="counter", version=version, source=COUNTER_SOURCE)
        )
        for version in ("1.0", "2.0")
    }
    v1 = load_package(packages["1.0"], _ref(packages["1.0"], "counter", "1.0"), root=root)
    v2 = load_package(packages["2.0"], _ref(packages["2.0"], "counter", "2.0"), root=root)
    loaded_modules.extend((v1, v2))
    assert v1.module_name != v2.module_name
    assert v1.factory is not v2.factory
    assert v1.module_name in sys.modules
    assert v2.module_name in sys.modules
    assert (root / "counter" / "1.0" / "manifest.json").is_file()
    assert (root / "counter" / "2.0" / "plugin_counter.py").is_file()
    unload(v1)
    assert v1.module_name not in sys.modules
    assert v2.module_name in sys.modules


def _load(
    tmp_path: Path, name: str, source: str, loaded_modules: list[LoadedAlgorithm], **kwargs: object
) -> LoadedAlgorithm:
    data = build_package(write_plugin(tmp_path, name=name, version="1.0", source=source))
    loaded = load_package(data, _ref(data, name, "1.0", **kwargs), root=tmp_path / "algorithms")
    loaded_modules.append(loaded)
    return loaded


def test_a_raising_plugin_is_reported_and_disabled_others_go_on(
    tmp_path: Path, loaded_modules: list[LoadedAlgorithm]
) -> None:
    recorder = Recorder()
    faulty = _runner(_load(tmp_path, "faulty", FAULTY_SOURCE, loaded_modules), recorder, tmp_path)
    counter = _runner(
        _load(tmp_path, "counter", COUNTER_SOURCE, loaded_modules), recorder, tmp_path
    )
    assert faulty.start()
    assert counter.start()
    readings = (_reading("p", 100.0),)
    for t_ns in range(5):
        faulty.submit_measurement(readings, t_ns)
        counter.submit_measurement(readings, t_ns)
    kind, message = recorder.problems.get(timeout=5)
    assert kind == "algorithm_failed"
    assert "faulty" in message
    assert "RuntimeError" in message
    for _ in range(5):  # the other one produced an output for every measurement
        recorder.outputs.get(timeout=5)
    assert faulty.state is PluginState.FAILED
    assert not faulty.submit_measurement(readings, 9)  # disabled: no more inputs
    assert counter.state is PluginState.RUNNING
    counter.stop()
    assert counter.state is PluginState.STOPPED


def test_a_hanging_plugin_is_abandoned_and_reported(
    tmp_path: Path, loaded_modules: list[LoadedAlgorithm]
) -> None:
    release = tmp_path / "release"
    recorder = Recorder()
    loaded = _load(tmp_path, "hang", HANG_SOURCE, loaded_modules, release_file=str(release))
    runner = _runner(loaded, recorder, tmp_path, deadline_s=0.3)
    try:
        assert runner.start()
        assert runner.submit_measurement((_reading("p", 1.0),), 1)
        # the agent's watchdog calls check_deadline on every loop iteration
        give_up = time.monotonic() + 5
        while not runner.check_deadline() and time.monotonic() < give_up:
            time.sleep(0.02)
        kind, message = recorder.problems.get(timeout=5)
        assert kind == "algorithm_hung"
        assert "hang" in message
        assert runner.state is PluginState.HUNG
        assert not runner.submit_measurement((_reading("p", 1.0),), 2)
        runner.stop()  # returns at once: an abandoned runner is not waited for
    finally:
        release.write_text("go")  # let the left-behind thread end


def test_outputs_outside_the_manifest_are_a_failure(
    tmp_path: Path, loaded_modules: list[LoadedAlgorithm]
) -> None:
    source = """
        from openfeeder.iot.schema import Reading


        class Plugin:
            def start(self, context): pass
            def on_measurement(self, readings, t_ns):
                return [Reading(channel="undeclared", value=1.0, unit="1", quality="good")]
            def stop(self): pass
    """
    recorder = Recorder()
    runner = _runner(_load(tmp_path, "liar", source, loaded_modules), recorder, tmp_path)
    assert runner.start()
    runner.submit_measurement((_reading("p", 1.0),), 1)
    kind, message = recorder.problems.get(timeout=5)
    assert kind == "algorithm_failed"
    assert "undeclared" in message
    assert recorder.outputs.empty()


def test_a_list_of_messages_is_published_in_order_and_checked_whole(
    tmp_path: Path, loaded_modules: list[LoadedAlgorithm]
) -> None:
    source = """
        from openfeeder.iot.schema import Reading


        def n(value):
            return Reading(channel="n", value=value, unit="1", quality="good")


        class Plugin:
            def start(self, context):
                self.calls = 0

            def on_measurement(self, readings, t_ns):
                self.calls += 1
                if self.calls == 1:
                    return [[n(1.0)], (n(2.0),), [], [n(3.0)]]
                # a message with an undeclared channel: nothing of this call goes out
                bad = Reading(channel="undeclared", value=0.0, unit="1", quality="good")
                return [[n(4.0)], [bad]]

            def stop(self):
                pass
    """
    recorder = Recorder()
    runner = _runner(_load(tmp_path, "parts", source, loaded_modules), recorder, tmp_path)
    assert runner.start()
    runner.submit_measurement((_reading("p", 1.0),), 1)
    published = [recorder.outputs.get(timeout=5)[1] for _ in range(3)]
    assert [r[0].value for r in published] == [1.0, 2.0, 3.0]
    assert runner.stats().outputs == 3
    runner.submit_measurement((_reading("p", 1.0),), 2)
    kind, message = recorder.problems.get(timeout=5)
    assert kind == "algorithm_failed"
    assert "undeclared" in message
    assert recorder.outputs.empty()


def test_builtin_energy_integrates_power(
    tmp_path: Path, loaded_modules: list[LoadedAlgorithm]
) -> None:
    folders = builtin_algorithms()
    assert {"energy", "voltage_monitor"} <= set(folders)
    data = build_package(folders["energy"])
    loaded = load_package(data, _ref(data, "energy", "1.0.0"), root=tmp_path / "algorithms")
    loaded_modules.append(loaded)
    recorder = Recorder()
    runner = _runner(loaded, recorder, tmp_path)
    assert runner.start()
    # 1 kW and 500 var for one hour in 1-second steps: 1 kWh and 500 varh
    second_ns = 1_000_000_000
    for k in range(3601):
        readings = (
            _reading("p", 1000.0),
            _reading("q", 500.0, Unit.VAR),
            _reading("u_a", 230.0, Unit.V),
        )
        while not runner.submit_measurement(readings, k * second_ns):
            time.sleep(0.001)  # the queue is bounded; wait for room
    last: dict[str, float] = {}
    for _ in range(3601):
        _, outputs = recorder.outputs.get(timeout=10)
        last = {r.channel: r.value for r in outputs}
    assert last["e_p_import"] == pytest.approx(1000.0)
    assert last["e_q"] == pytest.approx(500.0)
    assert last["e_p_export"] == 0.0
    runner.stop()


def test_builtin_voltage_monitor_raises_and_clears_events(
    tmp_path: Path, loaded_modules: list[LoadedAlgorithm]
) -> None:
    data = build_package(builtin_algorithms()["voltage_monitor"])
    ref = _ref(data, "voltage_monitor", "1.0.0", window_s=2.0)
    loaded = load_package(data, ref, root=tmp_path / "algorithms")
    loaded_modules.append(loaded)
    recorder = Recorder()
    runner = _runner(loaded, recorder, tmp_path)
    assert runner.start()
    second_ns = 1_000_000_000
    levels = [230.0] * 3 + [260.0] * 3 + [231.0] * 3  # windows: normal, 13 % over, back
    for k, level in enumerate(levels):
        readings = tuple(_reading(f"u_{x}", level, Unit.V) for x in "abc")
        assert runner.submit_measurement(readings, k * second_ns)
        if k % 3 == 2:
            recorder.outputs.get(timeout=5)  # one output per window (3 samples span 2 s)
    runner.stop()
    kinds = [event[0] for event in recorder.events]
    assert kinds == ["overvoltage", "voltage_restored"]
    assert recorder.events[0][1] is Severity.WARNING
    assert "phase(s) a, b, c" in recorder.events[0][2]
