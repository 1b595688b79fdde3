"""The meter agent: the 3-phase smart meter of seed 003 (Section III-B) in software.

- :mod:`~openfeeder.iot.agent.source`: what is acquired (waveforms or phasors); a synthetic source;
- :mod:`~openfeeder.iot.agent.metering`: RMS, P, Q, S, PF, frequency -> readings (pure numpy);
- :mod:`~openfeeder.iot.agent.packages`: algorithm packages: format, building, verified loading;
- :mod:`~openfeeder.iot.agent.plugins`: the plug-in interface and isolated execution;
- :mod:`~openfeeder.iot.agent.algorithm_host`: the running set of algorithms, hot swap;
- :mod:`~openfeeder.iot.agent.store`: the on-disk store-and-forward buffer and its delivery;
- :mod:`~openfeeder.iot.agent.runtime`: :class:`MeterAgent`, which ties them together;
- :mod:`~openfeeder.iot.agent.fleet`: many agents in one process or over worker processes.

Several agents run in one process side by side (``openfeeder meters --count N``): each has its own
threads, broker connections and buffer file, and shares nothing with the others.
"""

from openfeeder.iot.agent.metering import MeteringLimits, MeterValues, compute, to_readings
from openfeeder.iot.agent.packages import (
    Manifest,
    PackageError,
    PackageFault,
    build_package,
    builtin_algorithms,
    load_package,
    package_sha256,
)
from openfeeder.iot.agent.plugins import Algorithm, AlgorithmContext, PluginState, PluginStats
from openfeeder.iot.agent.runtime import AgentState, AgentStats, MeterAgent, SettingsSource
from openfeeder.iot.agent.source import (
    DataSource,
    PhasorFrame,
    SyntheticParams,
    SyntheticSource,
    WaveformWindow,
)
from openfeeder.iot.agent.store import DroppedRange, MeasurementStore

__all__ = [
    "AgentState",
    "AgentStats",
    "Algorithm",
    "AlgorithmContext",
    "DataSource",
    "DroppedRange",
    "Manifest",
    "MeasurementStore",
    "MeterAgent",
    "MeterValues",
    "MeteringLimits",
    "PackageError",
    "PackageFault",
    "PhasorFrame",
    "PluginState",
    "PluginStats",
    "SettingsSource",
    "SyntheticParams",
    "SyntheticSource",
    "WaveformWindow",
    "build_package",
    "builtin_algorithms",
    "compute",
    "load_package",
    "package_sha256",
    "to_readings",
]
