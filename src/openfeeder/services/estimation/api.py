"""The estimation service's REST API: health, the estimates, the areas.

=======================================  ==========================================================
``GET /health``                          ok/degraded, broker connections, mode, last cycle
``GET /v1/estimates``                    the estimates kept (summaries without buses), newest first
``GET /v1/estimates/latest``             the latest estimate with every bus's voltage
``GET /v1/estimates/{cycle}``            one estimate with every bus's voltage
``POST /v1/estimates``                   run a cycle now (202; the result follows on MQTT/REST)
``GET /v1/areas``                        the estimation areas and the device running each
=======================================  ==========================================================

Reads need a token only with ``[access]`` ``protect_reads`` (:mod:`openfeeder.services.access`).
Errors are ``application/problem+json`` naming the field at fault (:mod:`openfeeder.services.problems`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from openfeeder.services.access import AccessControl, Reader, install_access
from openfeeder.services.estimation.coordinator import EstimationCoordinator
from openfeeder.services.problems import PROBLEM_RESPONSES, ServiceProblemError, install_problems

__all__ = ["create_app"]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "buses"}


def create_app(
    coordinator: EstimationCoordinator, *, access: AccessControl | None = None
) -> FastAPI:
    app = FastAPI(title="OpenFeeder estimation service", version="1")
    access = access if access is not None else AccessControl.disabled()
    install_problems(app)
    install_access(app, access)

    @app.get("/health", tags=["health"], responses={503: {"description": "degraded"}})
    async def health() -> JSONResponse:
        healthy = coordinator.healthy
        results = list(coordinator.results)
        body = {
            "status": "ok" if healthy else "degraded",
            "mode": coordinator.config.mode,
            "interval_s": coordinator.config.interval_s,
            "last_cycle": results[-1]["cycle"] if results else None,
            "unhosted_areas": list(coordinator.unhosted),
            "handler_errors": coordinator.handler_errors,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/v1/estimates", tags=["estimates"])
    async def estimates(_reader: Reader) -> list[dict[str, Any]]:
        return [_summary(r) for r in reversed(list(coordinator.results))]

    @app.get("/v1/estimates/latest", tags=["estimates"], responses=PROBLEM_RESPONSES)
    async def latest(_reader: Reader) -> dict[str, Any]:
        results = list(coordinator.results)
        if not results:
            raise ServiceProblemError(404, "no estimate yet")
        return results[-1]

    @app.get("/v1/estimates/{cycle}", tags=["estimates"], responses=PROBLEM_RESPONSES)
    async def one(cycle: int, _reader: Reader) -> dict[str, Any]:
        for result in coordinator.results:
            if result["cycle"] == cycle:
                return result
        raise ServiceProblemError(404, f"no estimate of cycle {cycle} is kept", field="cycle")

    @app.post("/v1/estimates", tags=["estimates"], status_code=202)
    async def run(_reader: Reader) -> dict[str, str]:
        coordinator.trigger("requested")
        return {"status": "cycle requested"}

    @app.get("/v1/areas", tags=["areas"])
    async def areas(_reader: Reader) -> dict[str, Any]:
        partition = coordinator.partition
        hosts = dict(coordinator.hosts)
        return {
            "case": partition.case,
            "fingerprint": partition.fingerprint,
            "unhosted": list(coordinator.unhosted),
            "areas": [
                {**area.as_dict(), "device": hosts.get(area.name)} for area in partition.areas
            ],
        }

    return app
