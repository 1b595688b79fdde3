"""State estimation: weighted least squares on power-grid-model with observability and bad data.

:func:`estimate_state` takes a :class:`~openfeeder.model.grid.GridModel` and a
:class:`MeasurementSet` and returns a :class:`StateEstimate`; see ``docs/estimation.md``.
:func:`check_observability` on its own says which buses a set of measurements determines.
Measurement files are read by :func:`parse_measurement_document` (the caller reads the file).
"""

from openfeeder.analysis.estimation.areas import Area, AreaPartition, Level, partition_areas
from openfeeder.analysis.estimation.bad_data import ChiSquareTest
from openfeeder.analysis.estimation.estimator import (
    DEFAULT_CHI2_CONFIDENCE,
    DEFAULT_LNR_THRESHOLD,
    estimate_state,
)
from openfeeder.analysis.estimation.hierarchical import (
    AreaEstimate,
    BoundaryState,
    Equivalent,
    HierarchicalEstimate,
    estimate_area,
    estimate_hierarchical,
)
from openfeeder.analysis.estimation.locate import LocatedMeasurements, locate_measurements
from openfeeder.analysis.estimation.measurement_file import (
    MEASUREMENT_FORMAT,
    MEASUREMENT_FORMAT_VERSION,
    measurement_document,
    parse_measurement_document,
)
from openfeeder.analysis.estimation.measurement_set import (
    MEASUREMENT_DTYPE,
    MeasurementSet,
    Quantity,
    sigmas_from_accuracy_class,
)
from openfeeder.analysis.estimation.observability import (
    Observability,
    PseudoOptions,
    PseudoPolicy,
    check_observability,
)
from openfeeder.analysis.estimation.result import BadDataRemoval, StateEstimate

__all__ = [
    "DEFAULT_CHI2_CONFIDENCE",
    "DEFAULT_LNR_THRESHOLD",
    "MEASUREMENT_DTYPE",
    "MEASUREMENT_FORMAT",
    "MEASUREMENT_FORMAT_VERSION",
    "Area",
    "AreaEstimate",
    "AreaPartition",
    "BadDataRemoval",
    "BoundaryState",
    "ChiSquareTest",
    "Equivalent",
    "HierarchicalEstimate",
    "Level",
    "LocatedMeasurements",
    "MeasurementSet",
    "Observability",
    "PseudoOptions",
    "PseudoPolicy",
    "Quantity",
    "StateEstimate",
    "check_observability",
    "estimate_area",
    "estimate_hierarchical",
    "estimate_state",
    "locate_measurements",
    "measurement_document",
    "parse_measurement_document",
    "partition_areas",
    "sigmas_from_accuracy_class",
]
