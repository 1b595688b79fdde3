"""LV level of the hierarchical state estimator (seed 003) as an agent plug-in.

:class:`~openfeeder.iot.agent.estimation_level.LevelAlgorithm` for ``lv`` areas: the protocol,
the parameters the estimation service sets and what is published are described there.
"""

from __future__ import annotations

from openfeeder.analysis.estimation import Level
from openfeeder.iot.agent.estimation_level import LevelAlgorithm


class LvEstimator(LevelAlgorithm):
    LEVEL = Level.LV
