"""A level plug-in of the distributed estimator, run as the agent runs it (the built-in package,
its manifest checked), on an MV area larger than one message holds: its final estimate goes out in
parts, and the parts put together are the estimate."""

from __future__ import annotations

import logging
import math
import queue
from pathlib import Path

import numpy as np
import pytest

from openfeeder.analysis.estimation import Level, estimate_area, partition_areas
from openfeeder.analysis.estimation.device_readings import DeviceSite, measurements_from_readings
from openfeeder.analysis.estimation.hierarchical import area_measurements
from openfeeder.analysis.powerflow import run_power_flow
from openfeeder.iot.agent.packages import (
    build_package,
    builtin_algorithms,
    load_package,
    package_sha256,
    parameters_for,
    unload,
)
from openfeeder.iot.agent.plugins import AlgorithmContext, PluginRunner
from openfeeder.iot.device_settings import AlgorithmRef
from openfeeder.iot.estimation_messages import (
    CYCLE_ALGORITHM,
    LEVEL_ALGORITHMS,
    PART_BUSES,
    FinalAssembly,
    read_final_part,
    sites_parameter,
)
from openfeeder.iot.schema import AlgorithmOutput, Measurement, Quality, Reading, Unit, encode
from openfeeder.iot.topics import algorithm_topic, measurement_topic
from openfeeder.model.case_file import save_case
from openfeeder.model.synth import generate_feeders

SQRT3 = math.sqrt(3.0)


def _good(channel: str, value: float, unit: Unit) -> Reading:
    return Reading(channel=channel, value=value, unit=unit, quality=Quality.GOOD)


def test_an_mv_area_of_450_buses_publishes_its_final_estimate_in_parts(tmp_path: Path) -> None:
    model = generate_feeders(buses=452, feeders=3, ties=0, seed=11)
    case = tmp_path / "grid.json"
    save_case(model, case)
    partition = partition_areas(model)
    (area,) = [a for a in partition.areas if a.level is Level.MV]
    assert area.bus_ids.size > 2 * PART_BUSES

    # a meter at every load and one at the busbar of the source, reading the power flow exactly
    flow = run_power_flow(model)
    u_kv = dict(zip(flow.bus["id"].tolist(), flow.bus["u_kv"].tolist(), strict=True))
    sites = {
        f"meter-{int(load['id'])}": DeviceSite(
            f"meter-{int(load['id'])}", int(load["bus"]), int(load["id"]), 0.5
        )
        for load in model.load
    }
    source_bus = int(model.source["bus"][0])
    sites["ftu-source"] = DeviceSite("ftu-source", source_bus, None, 0.5)
    load_p = dict(zip(flow.load["id"].tolist(), flow.load["p_mw"].tolist(), strict=True))
    load_q = dict(zip(flow.load["id"].tolist(), flow.load["q_mvar"].tolist(), strict=True))
    readings: dict[str, dict[str, float]] = {}
    for device, site in sites.items():
        phase_v = u_kv[site.bus_id] * 1e3 / SQRT3
        values = {"u_a": phase_v, "u_b": phase_v, "u_c": phase_v}
        if site.element_id is not None:
            values |= {"p": load_p[site.element_id] * 1e6, "q": load_q[site.element_id] * 1e6}
        readings[device] = values

    name = LEVEL_ALGORITHMS[Level.MV]
    data = build_package(builtin_algorithms()[name])
    loaded = load_package(
        data,
        AlgorithmRef.model_validate(
            {
                "name": name,
                "version": "1.2.0",
                "sha256": package_sha256(data),
                "url": f"http://catalog.invalid/v1/algorithms/{name}/1.2.0",
                "parameters": {
                    "case": str(case),
                    "area": area.name,
                    "sites": sites_parameter(sites),
                    "children": {},
                    "service": "estimation",
                },
            }
        ),
        root=tmp_path / "algorithms",
    )
    outputs: queue.Queue[tuple[Reading, ...]] = queue.Queue()
    problems: list[str] = []
    runner = PluginRunner(
        loaded,
        AlgorithmContext(
            device_id="ftu-source",
            algorithm=name,
            version=loaded.version,
            parameters=parameters_for(loaded.manifest, loaded.ref),
            grid=None,
            state_dir=tmp_path / "state",
            emit_event=lambda _kind, _severity, message, _values=(): problems.append(message),
            logger=logging.getLogger("test.se_mv"),
        ),
        on_outputs=lambda _runner, out, _t: outputs.put(out),
        on_problem=lambda _runner, kind, message: problems.append(f"{kind}: {message}"),
        deadline_s=30.0,
        # every meter's message is queued at once: room for all, whatever the machine's load
        queue_size=len(readings) + 8,
    )
    try:
        assert runner.start(), problems
        for seq, (device, values) in enumerate(readings.items()):
            unit = {"p": Unit.W, "q": Unit.VAR}
            message = Measurement(
                device_id=device,
                seq=seq,
                t_ns=1,
                values=tuple(_good(c, v, unit.get(c, Unit.V)) for c, v in values.items()),
            )
            assert runner.submit_message(str(measurement_topic(device)), encode(message))
        cycle = AlgorithmOutput(
            device_id="estimation",
            seq=1,
            t_ns=2,
            algorithm=CYCLE_ALGORITHM,
            algorithm_version="1",
            outputs=(_good("cycle", 5.0, Unit.ONE),),
        )
        topic = str(algorithm_topic("estimation", CYCLE_ALGORITHM))
        assert runner.submit_message(topic, encode(cycle))
        parts = []
        for _ in range(-(-area.bus_ids.size // PART_BUSES)):
            try:
                parts.append(outputs.get(timeout=30))
            except queue.Empty:
                pytest.fail(f"{len(parts)} parts published; problems: {problems}")
        assert outputs.empty()
    finally:
        runner.stop()
        unload(loaded)
    assert not problems

    assembly = FinalAssembly()
    finals = []
    for readings_out in parts:
        sent = AlgorithmOutput(
            device_id="ftu-source",
            seq=1,
            t_ns=3,
            algorithm=name,
            algorithm_version=loaded.version,
            outputs=readings_out,
        )
        part = read_final_part(sent, buses=area.bus_ids.size, children=0)
        assert part is not None
        finals.append(assembly.add(part))
    final = finals[-1]
    assert final is not None
    assert final.cycle == 5
    # the same estimate as the area's own, made here from the same readings
    own = area_measurements(
        model, partition, measurements_from_readings(model, sites.values(), readings)
    )[area.name]
    expected = estimate_area(model, partition, area.name, own, uncertainty=False)
    np.testing.assert_allclose(final.u_pu, expected.u_pu, atol=1e-9)
    np.testing.assert_allclose(final.u_angle_deg, expected.u_angle_deg, atol=1e-7)
    # and the grid's state: exact readings give the power flow back
    u_pu = dict(zip(flow.bus["id"].tolist(), flow.bus["u_pu"].tolist(), strict=True))
    truth = [u_pu[b] for b in area.bus_ids.tolist()]
    np.testing.assert_allclose(final.u_pu, truth, atol=1e-4)
