"""The FLISR coordinator's REST API: health, incidents, and the operator's clear.

=======================================  ==========================================================
``GET /health``                          ok/degraded, broker connection, variant, active incident
``GET /v1/incidents``                    every incident of this run (latest state), newest first
``GET /v1/incidents/{id}``               one incident: plans, outcome and the timeline
``POST /v1/incidents/{id}/clear``        the fault is repaired: unblock, reset, return to normal
=======================================  ==========================================================

With ``[access]`` enforcing (:mod:`openfeeder.services.access`), the clear is a control operation:
it needs a bearer token the policy allows ``flisr.incident.clear`` in the area of the incident's
feeder (401 without a valid token, 403 audited); the reads need one only with ``protect_reads``.
Errors are ``application/problem+json`` naming the field at fault (:mod:`openfeeder.services.problems`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from openfeeder.security.policy import AccessRequest
from openfeeder.services.access import AccessControl, Caller, GridAreas, Reader, install_access
from openfeeder.services.flisr.coordinator import FlisrCoordinator
from openfeeder.services.problems import PROBLEM_RESPONSES, ServiceProblemError, install_problems

__all__ = ["create_app"]


def create_app(coordinator: FlisrCoordinator, *, access: AccessControl | None = None) -> FastAPI:
    app = FastAPI(title="OpenFeeder FLISR coordinator", version="1")
    access = access if access is not None else AccessControl.disabled()
    install_problems(app)
    install_access(app, access)
    areas = GridAreas(coordinator.model, policy=access.policy) if access.enforced else None

    @app.get("/health", tags=["health"], responses={503: {"description": "degraded"}})
    async def health() -> JSONResponse:
        healthy = coordinator.healthy
        active = coordinator.active
        body = {
            "status": "ok" if healthy else "degraded",
            "variant": coordinator.config.variant,
            "active_incident": None if active is None else active.incident_id,
            "handler_errors": coordinator.handler_errors,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/v1/incidents", tags=["incidents"])
    async def incidents(_reader: Reader) -> list[dict[str, Any]]:
        found = coordinator.log.all()
        return [incident.as_dict() for incident in reversed(found)]

    @app.get("/v1/incidents/{incident_id}", tags=["incidents"], responses=PROBLEM_RESPONSES)
    async def incident(incident_id: str, _reader: Reader) -> dict[str, Any]:
        found = coordinator.log.get(incident_id)
        if found is None:
            raise _unknown(incident_id)
        return found.as_dict()

    @app.post(
        "/v1/incidents/{incident_id}/clear",
        tags=["incidents"],
        status_code=202,
        responses=PROBLEM_RESPONSES,
    )
    async def clear(incident_id: str, request: Request, caller: Caller) -> dict[str, str]:
        found = coordinator.log.get(incident_id)
        touched = areas.of_switches([found.breaker]) if found and areas else frozenset()
        wanted = AccessRequest(
            operation="flisr.incident.clear", areas=touched, target=f"incident {incident_id}"
        )
        access.authorize(caller, wanted, request)
        try:
            coordinator.clear(incident_id)
        except KeyError as err:
            raise _unknown(incident_id) from err
        return {"incident_id": incident_id, "status": "clearing"}

    return app


def _unknown(incident_id: str) -> ServiceProblemError:
    return ServiceProblemError(404, f"no incident {incident_id}", field="incident_id")
