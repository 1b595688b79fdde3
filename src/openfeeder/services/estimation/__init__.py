"""The estimation service: periodic and event-driven state estimation, central or distributed
over the devices' agents (seed 003's hierarchical estimator); see ``docs/estimation-service.md``."""

from openfeeder.services.estimation.coordinator import SERVICE_ID, EstimationCoordinator
from openfeeder.services.estimation.service import EstimationThread, serve_estimation

__all__ = ["SERVICE_ID", "EstimationCoordinator", "EstimationThread", "serve_estimation"]
