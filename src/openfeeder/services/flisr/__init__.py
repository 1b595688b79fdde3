"""The FLISR service: the coordinator that turns a breaker trip into a restored grid, its incident
timelines, and its REST API (``openfeeder flisr serve``)."""

from openfeeder.services.flisr.coordinator import COORDINATOR_ID, FLOC_ALGORITHM, FlisrCoordinator
from openfeeder.services.flisr.incident import Incident, IncidentLog, Step

__all__ = [
    "COORDINATOR_ID",
    "FLOC_ALGORITHM",
    "FlisrCoordinator",
    "Incident",
    "IncidentLog",
    "Step",
]
