"""The historian's REST API (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

=========================================  =====================================================
GET /health                                status, backend, MQTT links, queue depth, counters,
                                           last batch
GET /v1/devices                            devices with message count, first/last t_ns and the
                                           committed high_water_seq
GET /v1/devices/{device_id}/channels       the channels (and units) a device's messages carry
GET /v1/devices/{device_id}/readings       one channel over ``[start_ns, end_ns)``: raw values, or
                                           per-bucket avg/min/max/count with ``bucket_s``
=========================================  =====================================================

Errors are RFC 7807 ``application/problem+json`` documents naming the parameter at fault::

    {"type": "urn:openfeeder:problem:invalid", "title": "Invalid input", "status": 422,
     "detail": "end_ns must be greater than start_ns", "field": "end_ns",
     "instance": "/v1/devices/m1/readings"}

Queries run on FastAPI's thread pool (plain ``def`` endpoints), never on the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated, Any, Final

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from openfeeder import __version__
from openfeeder.errors import StorageError
from openfeeder.iot.topics import ID_PATTERN
from openfeeder.services.historian.core import HealthReport, Historian
from openfeeder.services.historian.store import MAX_T_NS
from openfeeder.services.problems import PROBLEM_CONTENT_TYPE, problem_response

__all__ = ["PROBLEM_CONTENT_TYPE", "create_app"]

MAX_POINTS: Final = 100_000
_CHANNEL_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$"
_DEVICE_PATTERN: Final = f"^{ID_PATTERN.pattern}$"


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class DeviceOut(_Out):
    device_id: str
    message_count: int
    first_t_ns: int | None
    last_t_ns: int | None
    high_water_seq: int | None
    """Every seq up to this one is stored or announced lost; None while seq 0 is not."""


class ChannelOut(_Out):
    channel: str
    unit: str


class ChannelsOut(_Out):
    device_id: str
    channels: list[ChannelOut]


class ReadingOut(_Out):
    t_ns: int
    value: float
    quality: str


class BucketOut(_Out):
    t_ns: int
    """Start of the bucket (a multiple of the bucket length since the epoch)."""
    avg: float | None
    min: float | None
    max: float | None
    count: int
    """Values in the bucket, invalid ones excluded (they are not in avg/min/max either)."""


class ReadingsOut(_Out):
    device_id: str
    channel: str
    unit: str
    start_ns: int
    end_ns: int
    bucket_s: float | None
    readings: list[ReadingOut] | None = None
    """Raw values (without ``bucket_s``), by time."""
    buckets: list[BucketOut] | None = None
    """Per-bucket aggregates (with ``bucket_s``), by time."""


class _ProblemError(Exception):
    def __init__(self, status: int, kind: str, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.field = status, kind, detail, field


_TITLES: Final = {
    "not-found": "Not found",
    "invalid": "Invalid input",
    "unavailable": "Service unavailable",
    "http": "Request refused",
}


def _problem(
    request: Request,
    status: int,
    kind: str,
    detail: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    title = _TITLES.get(kind, "Request refused")
    return problem_response(request, status, kind, title, detail, field=field, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(_ProblemError)
    async def _on_problem(request: Request, exc: _ProblemError) -> JSONResponse:
        return _problem(request, exc.status, exc.kind, exc.detail, field=exc.field)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        field = location[-1] if location else None  # ("query", "end_ns") -> "end_ns"
        detail = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg"))
        return _problem(request, 422, "invalid", detail, field=field)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not-found" if exc.status_code == 404 else "http"
        # exc.headers carries what the status needs, e.g. the Allow of a 405
        return _problem(request, exc.status_code, kind, str(exc.detail), headers=exc.headers)

    @app.exception_handler(StorageError)
    async def _on_storage(request: Request, exc: StorageError) -> JSONResponse:
        return _problem(request, 503, "unavailable", f"storage: {exc}")


def create_app(historian: Historian) -> FastAPI:
    """The REST API over a started :class:`~.core.Historian`."""
    app = FastAPI(
        title="OpenFeeder historian",
        version=__version__,
        description="Stored measurements by device and channel; committed marks; health.",
    )
    _install_error_handlers(app)
    problems: dict[int | str, dict[str, Any]] = {
        404: {"description": "unknown device (problem+json)"},
        422: {"description": "invalid parameter, named in `field` (problem+json)"},
    }

    @app.get("/health", tags=["health"])
    def health() -> HealthReport:
        """Status, backend, broker links, queue depth, counters and the last batch."""
        return historian.health()

    @app.get("/v1/devices", tags=["devices"])
    def devices() -> list[DeviceOut]:
        """Every device with stored messages (or announced losses), by id."""
        return [DeviceOut(**asdict(d)) for d in historian.store.devices()]

    @app.get("/v1/devices/{device_id}/channels", tags=["devices"], responses=problems)
    def channels(
        device_id: Annotated[str, Path(pattern=_DEVICE_PATTERN)],
    ) -> ChannelsOut:
        """The channels, with units, of a device's stored messages."""
        _existing(historian, device_id)
        found = historian.store.channels(device_id)
        return ChannelsOut(
            device_id=device_id,
            channels=[ChannelOut(channel=c.channel, unit=c.unit) for c in found],
        )

    @app.get("/v1/devices/{device_id}/readings", tags=["readings"], responses=problems)
    def readings(
        device_id: Annotated[str, Path(pattern=_DEVICE_PATTERN)],
        *,
        channel: Annotated[str, Query(pattern=_CHANNEL_PATTERN, description="e.g. u_a")],
        start_ns: Annotated[int, Query(ge=0, le=MAX_T_NS, description="inclusive")] = 0,
        end_ns: Annotated[int, Query(ge=0, le=MAX_T_NS, description="exclusive")] = MAX_T_NS,
        bucket_s: Annotated[
            float | None, Query(gt=0, le=10 * 365 * 86_400, description="downsample")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 10_000,
    ) -> ReadingsOut:
        """One channel of one device over a time range, raw or downsampled into buckets."""
        if end_ns <= start_ns:
            raise _ProblemError(
                422, "invalid", "end_ns must be greater than start_ns", field="end_ns"
            )
        bucket_ns = None if bucket_s is None else round(bucket_s * 1e9)
        if bucket_ns is not None and (bucket_ns < 1 or not math.isfinite(bucket_s or 0.0)):
            raise _ProblemError(
                422, "invalid", "bucket_s is below one nanosecond", field="bucket_s"
            )
        _existing(historian, device_id)
        store = historian.store
        units = [c.unit for c in store.channels(device_id) if c.channel == channel]
        if not units:
            raise _ProblemError(
                422, "invalid", f"device {device_id!r} has no channel {channel!r}", field="channel"
            )
        result = ReadingsOut(
            device_id=device_id,
            channel=channel,
            unit=units[0],
            start_ns=start_ns,
            end_ns=end_ns,
            bucket_s=bucket_s,
        )
        if bucket_ns is None:
            points = store.raw(device_id, channel, start_ns=start_ns, end_ns=end_ns, limit=limit)
            return result.model_copy(
                update={
                    "readings": [
                        ReadingOut(t_ns=p.t_ns, value=p.value, quality=str(p.quality))
                        for p in points
                    ]
                }
            )
        found = store.buckets(
            device_id,
            channel,
            start_ns=start_ns,
            end_ns=end_ns,
            bucket_ns=bucket_ns,
            limit=limit,
        )
        return result.model_copy(
            update={
                "buckets": [
                    BucketOut(t_ns=b.start_ns, avg=b.avg, min=b.min, max=b.max, count=b.count)
                    for b in found
                ]
            }
        )

    return app


def _existing(historian: Historian, device_id: str) -> None:
    if historian.store.device(device_id) is None:
        raise _ProblemError(
            404, "not-found", f"no device {device_id!r} in the historian", field="device_id"
        )
