"""The catalog's REST API (FastAPI): OpenAPI at ``/openapi.json``, interactive docs at ``/docs``.

====== =================================== ===================================================
method path                                what
====== =================================== ===================================================
GET    /health                             status, version, devices by status, storage, MQTT
GET    /v1/devices                         registry (filters ``type``, ``status``; paged)
POST   /v1/devices/boot                    self-configuration: BootRequest -> DeviceSettings
GET    /v1/devices/{id}/settings           auto-update: ``If-None-Match`` -> 304 or settings
GET    /v1/devices/{id}                    one device
PUT    /v1/devices/{id}                    provision (201 new, 200 replaced)
PATCH  /v1/devices/{id}                    change some provisioned fields
DELETE /v1/devices/{id}                    forget it (and clear its retained config)
GET    /v1/topology                        switch positions and topology version
PUT    /v1/topology                        set switches: new version, pushed to devices
GET    /v1/services                        service discovery
PUT    /v1/services/{name}                 register / heartbeat (201 new, 200 refreshed)
GET    /v1/services/{name}                 one service
DELETE /v1/services/{name}
GET    /v1/algorithms                      packages with SHA-256 and size
PUT    /v1/algorithms/{name}/{version}     upload the package bytes (any content type)
GET    /v1/algorithms/{name}/{version}     download (``X-Checksum-SHA256``; ``Range`` resumes)
DELETE /v1/algorithms/{name}/{version}     409 while a device is assigned to it
====== =================================== ===================================================

Access (:mod:`openfeeder.services.access`, ``[access]``): the device endpoints (boot, settings
poll, package download) take no operator token: devices are known by their identity (TLS client
certificate). With enforcement on, every other write needs ``Authorization: Bearer <token>`` whose
principal the policy allows: ``catalog.device.write`` (PUT/PATCH/DELETE a device; the areas of its
old and new location, its device type), ``catalog.topology.write`` (the areas of the switches
set), ``catalog.algorithm.write`` (upload, delete), ``catalog.service.write``; reads
(``catalog.<resource>.read``) only with ``protect_reads``. 401 without a valid token, 403 (audited)
when the policy refuses.

An upload may carry its publisher's signature in ``X-Package-Signature``
(:mod:`~openfeeder.services.catalog.repository`). A download answers ``Range: bytes=<from>-`` with
206 and the rest of the package (``If-Range: "<sha256>"`` guards against another content), so a
device continues an interrupted download instead of starting over.

Settings answers carry ``ETag: "<config_version>"``. Every error is ``application/problem+json``
(RFC 7807) with ``type``, ``title``, ``status``, ``detail`` and, when one input is at fault,
``field`` (``location.bus_id``, ``algorithms[0].version``, ``device_id``); a request refused is
refused whole, nothing of it is stored.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openfeeder import __version__
from openfeeder.errors import StorageError
from openfeeder.iot.catalog_client import (
    SIGNATURE_HEADER,
    AlgorithmInfo,
    DeviceInfo,
    DeviceList,
    DevicePatch,
    DeviceSpec,
    DeviceStatus,
    ServiceInfo,
    ServiceSpec,
    TopologyInfo,
    TopologyUpdate,
    etag_for,
)
from openfeeder.iot.device_settings import BootRequest, DeviceSettings, Location
from openfeeder.iot.topics import ID_PATTERN
from openfeeder.security.pki import RevocationReason
from openfeeder.security.policy import AccessRequest
from openfeeder.services.access import AccessControl, Caller, GridAreas, Reader, install_access
from openfeeder.services.catalog.core import Catalog
from openfeeder.services.catalog.enrolment import Enrolments, enrolment_router
from openfeeder.services.catalog.payload_keys import DeviceKeys, device_keys_router
from openfeeder.services.catalog.problems import (
    PROBLEM_CONTENT_TYPE,
    ProblemError,
    ProblemKind,
    problem_document,
)

__all__ = ["DEFAULT_MAX_PACKAGE_BYTES", "create_app"]

DEFAULT_MAX_PACKAGE_BYTES: Final = 16 * 1024 * 1024
_ID: Final = f"^{ID_PATTERN.pattern}$"
_VERSION: Final = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_TOKEN: Final = r"^[a-z][a-z0-9_]{0,63}$"

DeviceIdPath = Annotated[str, Path(pattern=_ID, description="device id ([A-Za-z0-9_.-]{1,64})")]
NamePath = Annotated[str, Path(pattern=_ID, description="name ([A-Za-z0-9_.-]{1,64})")]
VersionPath = Annotated[str, Path(pattern=_VERSION, description="package version")]

_PROBLEM_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    "4XX": {
        "description": "RFC 7807 problem; ``field`` names the input at fault",
        "content": {PROBLEM_CONTENT_TYPE: {}},
    },
}


def _created(model: type[Any], what: str) -> dict[int | str, dict[str, Any]]:
    """The responses of a PUT that answers 201 when it creates and 200 when it replaces."""
    return {201: {"model": model, "description": f"{what} created"}, **_PROBLEM_RESPONSES}


_SETTINGS_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"model": DeviceSettings, "description": "the settings, with ETag"},
    **_PROBLEM_RESPONSES,
}


def problem_response(
    kind: ProblemKind,
    status: int,
    detail: str,
    *,
    field: str | None = None,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_document(kind, status, detail, field=field, instance=instance, errors=errors),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _field_name(loc: tuple[int | str, ...]) -> str:
    """``("body", "algorithms", 0, "version")`` -> ``algorithms[0].version``."""
    parts = [p for p in loc if p not in ("[key]",)]
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ProblemError):  # pragma: no cover - registered for this type
            raise exc
        return problem_response(
            exc.kind, exc.status, exc.detail, field=exc.field, instance=request.url.path
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            raise exc
        errors = list(exc.errors())
        for error in errors:
            if error.get("type") == "json_invalid":
                detail = f"the body is not valid JSON: {error.get('ctx', {}).get('error', '')}"
                return problem_response(
                    ProblemKind.MALFORMED, 400, detail.rstrip(": "), instance=request.url.path
                )
        first_error = errors[0] if errors else {}
        if tuple(first_error.get("loc", ())) == ("body",):
            detail = (
                "a JSON body is required"
                if first_error.get("type") == "missing"
                else "the body must be a JSON object sent as Content-Type: application/json"
            )
            return problem_response(
                ProblemKind.MALFORMED, 400, detail, field="body", instance=request.url.path
            )
        listed = [
            {
                "field": _field_name(tuple(error["loc"])),
                "message": str(error["msg"]),
                "type": str(error["type"]),
            }
            for error in errors
        ]
        first = listed[0]
        detail = f"{first['field']}: {first['message']}"
        if len(listed) > 1:
            detail += f" (and {len(listed) - 1} more problems)"
        return problem_response(
            ProblemKind.INVALID,
            422,
            detail,
            field=first["field"],
            instance=request.url.path,
            errors=listed,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        kinds = {404: ProblemKind.NOT_FOUND, 405: ProblemKind.NOT_ALLOWED}
        kind = kinds.get(exc.status_code, ProblemKind.MALFORMED)
        detail = (
            f"no such resource: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        )
        response = problem_response(kind, exc.status_code, detail, instance=request.url.path)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(StorageError)
    async def on_storage(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(
            ProblemKind.UNAVAILABLE,
            503,
            f"the catalog's database failed, nothing was changed: {exc}",
            instance=request.url.path,
        )


def _settings_response(version: int, body: bytes) -> Response:
    return Response(
        body,
        media_type="application/json",
        headers={"ETag": etag_for(version), "Cache-Control": "no-cache"},
    )


def _matches(if_none_match: str | None, version: int) -> bool:
    """Whether ``If-None-Match`` names the current version (or is ``*``)."""
    if if_none_match is None:
        return False
    current = etag_for(version)
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in ("*", current) for tag in tags)


def create_app(
    catalog: Catalog,
    *,
    max_package_bytes: int = DEFAULT_MAX_PACKAGE_BYTES,
    access: AccessControl | None = None,
    enrolments: Enrolments | None = None,
    device_keys: DeviceKeys | None = None,
) -> FastAPI:
    """The catalog's FastAPI application over ``catalog`` (which must be started to serve);
    ``access`` checks operators' tokens (None: nothing is checked); ``enrolments`` adds the
    device enrolment endpoints (:mod:`~openfeeder.services.catalog.enrolment`); ``device_keys``
    the devices' payload key bundles (:mod:`~openfeeder.services.catalog.payload_keys`)."""
    access = access if access is not None else AccessControl.disabled()
    grid_areas: list[GridAreas] = []

    def areas() -> GridAreas | None:
        case = catalog.case_grid
        if case is None:
            return None
        if not grid_areas:
            grid_areas.append(GridAreas(case.model, policy=access.policy, topology=case.initial))
        return grid_areas[0]

    def device_access(
        device_id: str, new_type: str | None, new_location: Location | None, *, moved: bool
    ) -> AccessRequest:
        """The areas and type a device write touches: where it is and where it goes."""
        found = areas()
        touched: set[str] = set()
        old_type: str | None = None
        try:
            old = catalog.device(device_id)
        except ProblemError:
            old = None
        if old is not None:
            old_type = old.device_type
            if found is not None:
                touched |= found.of_location(old.location)
        if found is not None and moved:
            touched |= found.of_location(new_location)
        return AccessRequest(
            operation="catalog.device.write",
            areas=frozenset(touched),
            device_type=new_type or old_type,
            target=f"device {device_id}",
        )

    app = FastAPI(
        title="OpenFeeder device catalog",
        version=__version__,
        summary="Registry, self-configuration, liveness, topology, discovery, algorithm packages",
        description=__doc__ or "",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    _install_error_handlers(app)
    install_access(app, access)
    if enrolments is not None:
        app.include_router(enrolment_router(enrolments, access), responses=_PROBLEM_RESPONSES)
    if device_keys is not None:
        app.include_router(device_keys_router(device_keys, catalog), responses=_PROBLEM_RESPONSES)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        """Service health: device counts by status, storage backend, MQTT connections."""
        return catalog.health()

    # -- devices -------------------------------------------------------------------------------

    @app.get("/v1/devices", tags=["devices"], responses=_PROBLEM_RESPONSES)
    async def list_devices(
        device_type: Annotated[str | None, Query(alias="type", pattern=_TOKEN)] = None,
        status: DeviceStatus | None = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        _reader: Reader = None,
    ) -> DeviceList:
        """Devices by id; ``total`` counts all that match the filters."""
        return catalog.devices(device_type=device_type, status=status, offset=offset, limit=limit)

    @app.post(
        "/v1/devices/boot",
        tags=["self-configuration"],
        response_class=Response,
        responses=_SETTINGS_RESPONSES,
    )
    async def boot(request: BootRequest) -> Response:
        """Register (or refresh) a booting device; answers its complete settings."""
        version, body = await catalog.boot(request)
        return _settings_response(version, body)

    @app.get(
        "/v1/devices/{device_id}/settings",
        tags=["self-configuration"],
        response_class=Response,
        responses={
            **_SETTINGS_RESPONSES,
            304: {"description": "unchanged since the ETag in If-None-Match"},
        },
    )
    async def device_settings(
        device_id: DeviceIdPath,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Poll: 304 if ``If-None-Match`` holds the current ETag, else the settings."""
        version, body = catalog.poll(device_id)
        if _matches(if_none_match, version):
            return Response(status_code=304, headers={"ETag": etag_for(version)})
        return _settings_response(version, body)

    @app.get("/v1/devices/{device_id}", tags=["devices"], responses=_PROBLEM_RESPONSES)
    async def get_device(device_id: DeviceIdPath, _reader: Reader) -> DeviceInfo:
        return catalog.device(device_id)

    @app.put("/v1/devices/{device_id}", tags=["devices"], responses=_created(DeviceInfo, "device"))
    async def put_device(
        device_id: DeviceIdPath,
        spec: DeviceSpec,
        request: Request,
        response: Response,
        caller: Caller,
    ) -> DeviceInfo:
        """Provision a device: type, location, algorithms, rate overrides (replaces them all)."""
        wanted = device_access(device_id, spec.device_type, spec.location, moved=True)
        access.authorize(caller, wanted, request)
        info, created = await catalog.put_device(device_id, spec)
        response.status_code = 201 if created else 200
        return info

    @app.patch("/v1/devices/{device_id}", tags=["devices"], responses=_PROBLEM_RESPONSES)
    async def patch_device(
        device_id: DeviceIdPath, patch: DevicePatch, request: Request, caller: Caller
    ) -> DeviceInfo:
        """Change the fields present; ``null`` clears a location or resets a rate to default."""
        moved = "location" in patch.model_fields_set
        wanted = device_access(device_id, patch.device_type, patch.location, moved=moved)
        access.authorize(caller, wanted, request)
        return await catalog.patch_device(device_id, patch)

    @app.delete(
        "/v1/devices/{device_id}",
        tags=["devices"],
        status_code=204,
        response_class=Response,
        responses=_PROBLEM_RESPONSES,
    )
    async def delete_device(device_id: DeviceIdPath, request: Request, caller: Caller) -> Response:
        access.authorize(caller, device_access(device_id, None, None, moved=False), request)
        await catalog.delete_device(device_id)
        if enrolments is not None:  # its certificates must not connect again, even re-added
            await asyncio.to_thread(
                enrolments.revoke,
                device_id,
                reason=RevocationReason.CESSATION_OF_OPERATION,
                actor=caller.subject if caller is not None else "anonymous",
            )
        return Response(status_code=204)

    # -- topology ------------------------------------------------------------------------------

    @app.get("/v1/topology", tags=["topology"])
    async def get_topology(_reader: Reader) -> TopologyInfo:
        return catalog.topology()

    @app.put("/v1/topology", tags=["topology"], responses=_PROBLEM_RESPONSES)
    async def put_topology(
        update: TopologyUpdate, request: Request, caller: Caller
    ) -> TopologyInfo:
        """Set switch positions (others keep theirs); devices whose grid part changes get pushed."""
        found = areas()
        touched = found.of_switches(update.switch_states) if found is not None else frozenset()
        switches = ", ".join(str(s) for s in sorted(update.switch_states))
        wanted = AccessRequest(
            operation="catalog.topology.write", areas=touched, target=f"switches {switches}"
        )
        access.authorize(caller, wanted, request)
        return await catalog.set_topology(update)

    # -- services ------------------------------------------------------------------------------

    @app.get("/v1/services", tags=["services"])
    async def list_services(_reader: Reader) -> list[ServiceInfo]:
        return catalog.services.infos()

    @app.put("/v1/services/{name}", tags=["services"], responses=_created(ServiceInfo, "service"))
    async def put_service(
        name: NamePath, spec: ServiceSpec, request: Request, response: Response, caller: Caller
    ) -> ServiceInfo:
        """Register a service's endpoints; calling it again is the heartbeat."""
        wanted = AccessRequest(operation="catalog.service.write", target=f"service {name}")
        access.authorize(caller, wanted, request)
        info, created = await catalog.services.put(name, spec)
        response.status_code = 201 if created else 200
        return info

    @app.get("/v1/services/{name}", tags=["services"], responses=_PROBLEM_RESPONSES)
    async def get_service(name: NamePath, _reader: Reader) -> ServiceInfo:
        return catalog.services.get(name)

    @app.delete(
        "/v1/services/{name}",
        tags=["services"],
        status_code=204,
        response_class=Response,
        responses=_PROBLEM_RESPONSES,
    )
    async def delete_service(name: NamePath, request: Request, caller: Caller) -> Response:
        wanted = AccessRequest(operation="catalog.service.write", target=f"service {name}")
        access.authorize(caller, wanted, request)
        await catalog.services.delete(name)
        return Response(status_code=204)

    # -- algorithm repository ------------------------------------------------------------------

    @app.get("/v1/algorithms", tags=["algorithms"])
    async def list_algorithms(_reader: Reader) -> list[AlgorithmInfo]:
        return catalog.algorithms.infos()

    @app.put(
        "/v1/algorithms/{name}/{version}",
        tags=["algorithms"],
        responses={413: {"description": "package too large"}, **_created(AlgorithmInfo, "package")},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def put_algorithm(
        *,
        name: NamePath,
        version: VersionPath,
        request: Request,
        response: Response,
        caller: Caller,
        signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
    ) -> AlgorithmInfo:
        """Upload a package (the body, any content type; at most 16 MiB by default), with its
        publisher's signature in ``X-Package-Signature`` or for the catalog to sign."""
        wanted = AccessRequest(
            operation="catalog.algorithm.write", target=f"algorithm {name} {version}"
        )
        access.authorize(caller, wanted, request)
        data = await _read_limited(request, max_package_bytes)
        info, created = await catalog.algorithms.put(name, version, data, signature=signature)
        response.status_code = 201 if created else 200
        return info

    @app.get(
        "/v1/algorithms/{name}/{version}",
        tags=["algorithms"],
        response_class=Response,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the package"},
            **_PROBLEM_RESPONSES,
        },
    )
    async def get_algorithm(
        name: NamePath,
        version: VersionPath,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
        if_range: Annotated[str | None, Header(alias="If-Range")] = None,
    ) -> Response:
        """The package; ``Range: bytes=<from>-[<to>]`` answers 206 with that part (resume)."""
        meta, data = await catalog.algorithms.data(name, version)
        etag = f'"{meta.sha256}"'
        headers = {"X-Checksum-SHA256": meta.sha256, "ETag": etag, "Accept-Ranges": "bytes"}
        wanted = None
        if range_header is not None and (if_range is None or if_range.strip() == etag):
            wanted = _byte_range(range_header, len(data))
        if wanted is None:
            return Response(data, media_type="application/octet-stream", headers=headers)
        start, end = wanted
        if start >= len(data) or start > end:
            response = problem_response(
                ProblemKind.INVALID,
                416,
                f"range {range_header} is outside the package's {len(data)} bytes",
                field="Range",
                instance=f"/v1/algorithms/{name}/{version}",
            )
            response.headers["Content-Range"] = f"bytes */{len(data)}"
            return response
        end = min(end, len(data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(
            data[start : end + 1],
            status_code=206,
            media_type="application/octet-stream",
            headers=headers,
        )

    @app.delete(
        "/v1/algorithms/{name}/{version}",
        tags=["algorithms"],
        status_code=204,
        response_class=Response,
        responses=_PROBLEM_RESPONSES,
    )
    async def delete_algorithm(
        name: NamePath, version: VersionPath, request: Request, caller: Caller
    ) -> Response:
        wanted = AccessRequest(
            operation="catalog.algorithm.write", target=f"algorithm {name} {version}"
        )
        access.authorize(caller, wanted, request)
        await catalog.delete_algorithm(name, version)
        return Response(status_code=204)

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and _is_number(declared) and int(declared) > limit:
        raise ProblemError(
            ProblemKind.TOO_LARGE,
            413,
            f"the package is {int(declared)} bytes, more than the limit of {limit}",
            field="body",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProblemError(
                ProblemKind.TOO_LARGE,
                413,
                f"the package is more than the limit of {limit} bytes",
                field="body",
            )
        chunks.append(chunk)
    if size == 0:
        raise ProblemError(ProblemKind.INVALID, 422, "the package is empty", field="body")
    return b"".join(chunks)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range; None when the header is not one (then
    the whole package is sent, as RFC 9110 allows)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    if not first:  # a suffix: the last N bytes
        if not _is_number(last) or int(last) == 0:
            return None
        return max(0, size - int(last)), size - 1
    if not _is_number(first) or (last and not _is_number(last)):
        return None
    return int(first), int(last) if last else size - 1


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²`` (latin-1, so valid in a header),
    which ``int`` refuses."""
    return text.isascii() and text.isdigit()
