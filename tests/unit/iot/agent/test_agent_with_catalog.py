"""A meter agent against the real device catalog service (and a private Mosquitto).

The catalog provisions the meter with the built-in ``energy`` algorithm; an operator's change of
version is pushed by the catalog over MQTT (polling is slowed down so that only the push can deliver
it in time), and the agent swaps the algorithm without a gap in its measurements.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_support import Collector, new_device_id

from conftest import PrivateMosquitto
from openfeeder.config import (
    AgentSettings,
    BrokerSettings,
    BrokersSettings,
    CatalogSettings,
    Settings,
)
from openfeeder.iot.agent import MeterAgent, SyntheticSource, build_package, builtin_algorithms
from openfeeder.iot.catalog_client import (
    AlgorithmAssignment,
    CatalogClient,
    DeviceSpec,
)
from openfeeder.iot.device_settings import Location
from openfeeder.iot.schema import AlgorithmOutput, Measurement
from openfeeder.iot.topics import algorithm_filter, measurement_filter
from openfeeder.services.catalog.service import CatalogThread

pytestmark = pytest.mark.integration


def _energy_package(tmp_path: Path, version: str) -> bytes:
    folder = tmp_path / f"energy-{version}"
    shutil.copytree(builtin_algorithms()["energy"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return build_package(folder)


def test_catalog_pushes_a_new_algorithm_version_and_the_agent_swaps_it(
    private_mosquitto: Callable[[], PrivateMosquitto], tmp_path: Path
) -> None:
    broker = private_mosquitto().url
    brokers = BrokersSettings(
        grid_ops=BrokerSettings(url=broker, connect_timeout_s=2),
        monitoring=BrokerSettings(url=broker, connect_timeout_s=2),
    )
    settings = Settings(
        brokers=brokers,
        catalog=CatalogSettings(
            listen_port=0,
            storage_url=f"sqlite:///{tmp_path / 'catalog.db'}",
            poll_interval_s=600,  # a change can only arrive in time by the MQTT push
            reporting_interval_s=0.1,
            sampling_rate_hz=3200,
        ),
        agent=AgentSettings(state_dir=tmp_path / "state"),
    )
    device = new_device_id("e2e")
    with CatalogThread(settings) as catalog:
        url = catalog.start()
        with CatalogClient(url, timeout_s=10) as client:
            for version in ("1.0.1", "2.0.0"):  # 1.0.0: the built-in, published by the catalog
                client.upload_algorithm("energy", version, _energy_package(tmp_path, version))
            client.put_device(
                device,
                DeviceSpec(
                    device_type="meter",
                    location=Location(case="turin", bus_id=7),
                    algorithms=(AlgorithmAssignment(name="energy", version="1.0.1"),),
                ),
            )
            filters = (measurement_filter(device), algorithm_filter(device, "energy"))
            with Collector(broker, *map(str, filters)) as seen:
                agent = MeterAgent(
                    settings,
                    device_id=device,
                    source=SyntheticSource(3),
                    catalog=client,
                    location=Location(case="turin", bus_id=7),
                    retained_wait_s=0.2,
                )
                agent.start()
                try:
                    assert agent.wait_running(10)
                    current = agent.device_settings
                    assert current is not None
                    assert current.grid is not None  # the catalog gave it its part of the grid
                    assert 7 in current.grid.bus_ids
                    seqs: list[int] = []
                    versions: list[str] = []

                    def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
                        deadline = time.monotonic() + timeout_s
                        while not predicate():
                            if time.monotonic() >= deadline:
                                pytest.fail(f"no match within {timeout_s} s")
                            topic, payload = seen.wait_for(lambda _t, _p: True)
                            if "/meas/" in topic:
                                seqs.append(Measurement.model_validate_json(payload).seq)
                            else:
                                output = AlgorithmOutput.model_validate_json(payload)
                                versions.append(output.algorithm_version)

                    until(lambda: "1.0.1" in versions)
                    client.put_device(  # the operator assigns version 2
                        device,
                        DeviceSpec(
                            device_type="meter",
                            location=Location(case="turin", bus_id=7),
                            algorithms=(AlgorithmAssignment(name="energy", version="2.0.0"),),
                        ),
                    )
                    until(lambda: "2.0.0" in versions)
                    until(lambda: len(seqs) >= 40)
                    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap
                    assert versions[-1] == "2.0.0"
                    info = client.device(device)
                    assert info.status == "connected"
                    assert agent.stats().config_version == info.config_version
                finally:
                    agent.stop()
