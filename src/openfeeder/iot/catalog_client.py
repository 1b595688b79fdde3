"""The device catalog's REST contract and a small synchronous client for devices and services.

The catalog (``openfeeder catalog serve``, :mod:`openfeeder.services.catalog`) keeps the registry
of devices and services, hands devices their :class:`~openfeeder.iot.device_settings.DeviceSettings`
and serves algorithm packages. The request and response models of its REST API live here, so that
the service and its clients share one definition:

- :class:`DeviceSpec` / :class:`DevicePatch`: what an operator provisions (``PUT`` / ``PATCH
  /v1/devices/{id}``); :class:`DeviceInfo`: a registry entry as returned;
- :class:`ServiceSpec` / :class:`ServiceInfo`: service discovery (``/v1/services/{name}``);
- :class:`AlgorithmInfo`: a package of the algorithm repository (``/v1/algorithms/{name}/{version}``);
- :class:`TopologyUpdate` / :class:`TopologyInfo`: switch states (``/v1/topology``).

Errors are RFC 7807 problem documents (``application/problem+json``) that name the failing field.
:class:`CatalogClient` turns them, and network failures, into :class:`CatalogError` subclasses that
name the URL::

    OpenFeederError
    +-- CatalogError                  carries url, status (None: no answer), field, problem
        +-- CatalogUnavailableError   no answer, a timeout, or a 5xx: try again later
        +-- CatalogRequestError       the catalog refused the request (4xx)
        |   +-- CatalogNotFoundError  404: unknown device, service or package
        +-- AlgorithmChecksumError    a downloaded package does not match its SHA-256
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Final, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from openfeeder.config import ReportingInterval, SamplingRate
from openfeeder.errors import OpenFeederError
from openfeeder.iot.device_settings import (
    AlgorithmRef,
    BootRequest,
    DeviceId,
    DeviceSettings,
    GridPart,
    Location,
    Token,
    Version,
)
from openfeeder.iot.schema import SwitchId, SwitchPosition

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "SIGNATURE_HEADER",
    "AlgorithmAssignment",
    "AlgorithmChecksumError",
    "AlgorithmInfo",
    "CatalogClient",
    "CatalogError",
    "CatalogNotFoundError",
    "CatalogRequestError",
    "CatalogUnavailableError",
    "DeviceInfo",
    "DeviceList",
    "DevicePatch",
    "DeviceSpec",
    "DeviceStatus",
    "EnrolmentInfo",
    "EnrolmentRequest",
    "EnrolmentStatus",
    "ServiceInfo",
    "ServiceSpec",
    "TopologyInfo",
    "TopologyUpdate",
    "etag_for",
    "parse_etag",
]

DEFAULT_TIMEOUT_S: Final = 10.0
SIGNATURE_HEADER: Final = "X-Package-Signature"
"""The header that carries a package's signature on upload."""
MAX_ALGORITHMS_PER_DEVICE: Final = 64
InstanceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
EndpointUrl = Annotated[str, StringConstraints(max_length=2048)]
_M = TypeVar("_M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DeviceStatus(StrEnum):
    """Liveness as the catalog sees it: polled within the timeout, silent past it, or never seen."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    NEVER = "never"


# --- devices ----------------------------------------------------------------------------------


class AlgorithmAssignment(_Model):
    """An algorithm a device must run: a package of the repository and its parameters."""

    name: DeviceId
    version: Version
    parameters: dict[str, JsonValue] = Field(default_factory=dict)


Assignments = Annotated[
    tuple[AlgorithmAssignment, ...], Field(max_length=MAX_ALGORITHMS_PER_DEVICE)
]


def _unique_names(algorithms: tuple[AlgorithmAssignment, ...]) -> tuple[AlgorithmAssignment, ...]:
    seen: set[str] = set()
    for algorithm in algorithms:
        if algorithm.name in seen:
            raise ValueError(f"algorithm '{algorithm.name}' is assigned twice")
        seen.add(algorithm.name)
    return algorithms


class DeviceSpec(_Model):
    """What an operator provisions for a device (``PUT /v1/devices/{id}``; replaces all of it).

    ``sampling_rate_hz`` and ``reporting_interval_s`` override the catalog's defaults; None (or
    absent) means the default. Firmware and capabilities are what the device reports at boot.
    """

    device_type: Token
    location: Location | None = None
    algorithms: Assignments = ()
    sampling_rate_hz: SamplingRate | None = None
    reporting_interval_s: ReportingInterval | None = None

    _unique = field_validator("algorithms")(_unique_names)


class DevicePatch(_Model):
    """A partial update (``PATCH /v1/devices/{id}``): only the fields present change.

    ``null`` clears ``location`` and resets a rate to the catalog's default.
    """

    # leaving them out keeps them; null is refused, so the schema does not offer it
    device_type: Token | SkipJsonSchema[None] = None
    location: Location | None = None
    algorithms: Assignments | SkipJsonSchema[None] = None
    sampling_rate_hz: SamplingRate | None = None
    reporting_interval_s: ReportingInterval | None = None

    _unique = field_validator("algorithms")(_unique_names)

    @field_validator("device_type", "algorithms", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null (leave it out to keep the current value)")
        return value


class DeviceInfo(_Model):
    """A registry entry: what was provisioned, what the device reported, and its liveness."""

    device_id: DeviceId
    device_type: Token
    firmware: str
    capabilities: tuple[str, ...]
    location: Location | None
    sampling_rate_hz: float | None
    """The device's override, None when the catalog's default applies."""
    reporting_interval_s: float | None
    algorithms: tuple[AlgorithmAssignment, ...]
    config_version: int
    status: DeviceStatus
    last_seen_ns: int | None
    registered_ns: int
    grid: GridPart | None


class DeviceList(_Model):
    total: int
    """Devices matching the filters (``devices`` holds at most ``limit`` of them from ``offset``)."""
    offset: int
    devices: tuple[DeviceInfo, ...]


# --- services ---------------------------------------------------------------------------------


def _check_endpoints(endpoints: dict[str, str]) -> dict[str, str]:
    if len(endpoints) > 64:
        raise ValueError("at most 64 endpoints")
    for name, url in endpoints.items():
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"endpoint name {name!r} must be 1-64 letters, digits, '_' or '-'")
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"endpoint '{name}': {url!r} is not an absolute URL")
    return endpoints


class ServiceSpec(_Model):
    """What a service registers about itself (``PUT /v1/services/{name}``, also its heartbeat)."""

    kind: Token
    instance_id: InstanceId
    endpoints: dict[str, EndpointUrl] = Field(default_factory=dict)

    _endpoints = field_validator("endpoints")(_check_endpoints)


class ServiceInfo(_Model):
    name: DeviceId
    kind: str
    instance_id: str
    endpoints: dict[str, str]
    last_seen_ns: int
    registered_ns: int


# --- enrolment ---------------------------------------------------------------------------------


class EnrolmentStatus(StrEnum):
    PENDING = "pending"
    ISSUED = "issued"
    REJECTED = "rejected"


class EnrolmentRequest(_Model):
    """A device asks for its certificate: its CSR (PEM, CN = its id) and, if it has one, the
    enrolment secret; without a valid secret the request waits for an operator's approval."""

    csr_pem: Annotated[str, StringConstraints(max_length=16_384)]
    secret: Annotated[str, StringConstraints(max_length=1024)] | None = None


class EnrolmentInfo(_Model):
    device_id: DeviceId
    status: EnrolmentStatus
    requested_ns: int
    certificate_pem: str | None = None
    """The device's certificate, once issued."""
    ca_pem: str | None = None
    """The platform CA to trust, once issued."""
    detail: str = ""
    kek: dict[str, str] | None = None
    """With payload protection: the device's key-encryption key sealed to its CSR's key
    (:mod:`openfeeder.security.key_delivery`), once issued."""


# --- algorithm repository and topology ---------------------------------------------------------


class AlgorithmInfo(_Model):
    name: str
    version: str
    sha256: str
    size_bytes: int
    uploaded_ns: int
    url: str
    """Where to download it."""
    signature: str | None = None
    """The publisher's signed metadata (:mod:`openfeeder.security.signing`)."""


class TopologyUpdate(_Model):
    """Switches to set (others keep their state) and why."""

    switch_states: Annotated[dict[SwitchId, SwitchPosition], Field(min_length=1)]
    reason: Annotated[str, StringConstraints(max_length=256)] = ""


class TopologyInfo(_Model):
    case: str | None
    """The grid model device locations refer to (None: no case configured)."""
    topology_version: int
    switch_states: dict[int, SwitchPosition]
    """Every switch of the case with its current position."""
    reason: str
    updated_ns: int | None


# --- client -----------------------------------------------------------------------------------


class CatalogError(OpenFeederError):
    """A request to the catalog failed; ``url`` names it, ``status`` is None without an answer."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        field: str | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.field = field
        self.problem = dict(problem) if problem is not None else None


class CatalogUnavailableError(CatalogError):
    """No answer, a timeout, or a server error: worth retrying later."""


class CatalogRequestError(CatalogError):
    """The catalog refused the request (4xx); ``field`` names what was wrong, when known."""


class CatalogNotFoundError(CatalogRequestError):
    """The device, service or package does not exist (a device should boot again)."""


class AlgorithmChecksumError(CatalogError):
    """A downloaded algorithm package does not have the SHA-256 its reference names."""


def etag_for(config_version: int) -> str:
    """The HTTP entity tag of a settings version: ``"<config_version>"``."""
    return f'"{config_version}"'


def parse_etag(value: str | None) -> int | None:
    """The config version in an ETag (``"5"`` or ``W/"5"``), or None if it is not one."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    return int(text) if text.isdigit() and len(text) <= 19 else None


class CatalogClient:
    """Synchronous client of the catalog's REST API (httpx); use it as a context manager.

    ``transport`` replaces the network (e.g. ``httpx.MockTransport`` or an ASGI transport).
    ``token``: an operator's or service's bearer token (``openfeeder token issue``), sent with
    every request; the catalog requires one on its control endpoints when ``[access]`` enforces.
    ``verify``: the TLS context that checks an ``https://`` catalog (the platform CA:
    :meth:`openfeeder.security.tls.TlsFiles.client_context`); None: the system's CAs.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers=headers,
            verify=verify if verify is not None else True,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- devices -------------------------------------------------------------------------------

    def boot(self, request: BootRequest) -> DeviceSettings:
        """Register (or re-register) the device and get its complete settings."""
        response = self._request(
            "POST", "/v1/devices/boot", content=request.model_dump_json(exclude_none=True)
        )
        return self._parse(DeviceSettings, response)

    def poll(self, device_id: str, config_version: int) -> DeviceSettings | None:
        """The device's settings if they differ from ``config_version``, else None (HTTP 304)."""
        response = self._request(
            "GET",
            f"/v1/devices/{quote(device_id, safe='')}/settings",
            headers={"If-None-Match": etag_for(config_version)},
        )
        if response.status_code == httpx.codes.NOT_MODIFIED:
            return None
        return self._parse(DeviceSettings, response)

    def device(self, device_id: str) -> DeviceInfo:
        return self._parse(
            DeviceInfo, self._request("GET", f"/v1/devices/{quote(device_id, safe='')}")
        )

    def list_devices(
        self,
        *,
        device_type: str | None = None,
        status: DeviceStatus | str | None = None,
        limit: int = 10_000,
    ) -> list[DeviceInfo]:
        """Registry entries (all of them, fetched ``limit`` at a time), by device id."""
        params: dict[str, str | int] = {"limit": limit}
        if device_type is not None:
            params["type"] = device_type
        if status is not None:
            params["status"] = str(status)
        devices: list[DeviceInfo] = []
        while True:
            params["offset"] = len(devices)
            page = self._parse(DeviceList, self._request("GET", "/v1/devices", params=params))
            devices.extend(page.devices)
            if not page.devices or len(devices) >= page.total:
                return devices

    def put_device(self, device_id: str, spec: DeviceSpec) -> DeviceInfo:
        """Provision (or replace the provisioning of) a device."""
        response = self._request(
            "PUT", f"/v1/devices/{quote(device_id, safe='')}", content=spec.model_dump_json()
        )
        return self._parse(DeviceInfo, response)

    def delete_device(self, device_id: str) -> None:
        self._request("DELETE", f"/v1/devices/{quote(device_id, safe='')}")

    # -- enrolment -----------------------------------------------------------------------------

    def enrol(self, device_id: str, csr_pem: bytes, *, secret: str | None = None) -> EnrolmentInfo:
        """Ask for the device's certificate: issued at once with the right secret, else pending."""
        request = EnrolmentRequest(csr_pem=csr_pem.decode("ascii"), secret=secret)
        response = self._request(
            "POST",
            f"/v1/enrolments/{quote(device_id, safe='')}",
            content=request.model_dump_json(exclude_none=True),
        )
        return self._parse(EnrolmentInfo, response)

    def enrolment(self, device_id: str) -> EnrolmentInfo:
        """Where the device's enrolment stands (a pending device polls this)."""
        response = self._request("GET", f"/v1/enrolments/{quote(device_id, safe='')}")
        return self._parse(EnrolmentInfo, response)

    def device_keys(self, device_id: str) -> dict[str, Any]:
        """The device's payload key bundle, wrapped under its key-encryption key."""
        response = self._request("GET", f"/v1/devices/{quote(device_id, safe='')}/keys")
        document = self._json(response)
        if not isinstance(document, dict):
            raise CatalogUnavailableError(
                f"{response.request.url}: a key bundle must be a JSON object",
                url=str(response.request.url),
                status=response.status_code,
            )
        return document

    def enrolments(self) -> list[EnrolmentInfo]:
        """Every enrolment the catalog holds (pending ones wait for an operator)."""
        return [
            EnrolmentInfo.model_validate(item)
            for item in self._json(self._request("GET", "/v1/enrolments"))
        ]

    def decide_enrolment(self, device_id: str, *, approve: bool) -> EnrolmentInfo:
        """An operator approves (the certificate is issued) or rejects a pending enrolment."""
        action = "approve" if approve else "reject"
        response = self._request("POST", f"/v1/enrolments/{quote(device_id, safe='')}/{action}")
        return self._parse(EnrolmentInfo, response)

    # -- services ------------------------------------------------------------------------------

    def register_service(
        self,
        name: str,
        *,
        kind: str,
        instance_id: str,
        endpoints: Mapping[str, str] | None = None,
    ) -> ServiceInfo:
        """Register a service or refresh its registration (call it again as a heartbeat)."""
        spec = ServiceSpec(kind=kind, instance_id=instance_id, endpoints=dict(endpoints or {}))
        response = self._request(
            "PUT", f"/v1/services/{quote(name, safe='')}", content=spec.model_dump_json()
        )
        return self._parse(ServiceInfo, response)

    def service(self, name: str) -> ServiceInfo:
        return self._parse(
            ServiceInfo, self._request("GET", f"/v1/services/{quote(name, safe='')}")
        )

    def services(self) -> list[ServiceInfo]:
        response = self._request("GET", "/v1/services")
        return [ServiceInfo.model_validate(item) for item in self._json(response)]

    # -- algorithms ----------------------------------------------------------------------------

    def upload_algorithm(
        self, name: str, version: str, data: bytes, *, signature: str | None = None
    ) -> AlgorithmInfo:
        """Upload a package, with its publisher's signature (``openfeeder algorithm sign``) or
        for the catalog to sign."""
        headers = {"Content-Type": "application/octet-stream"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        response = self._request(
            "PUT",
            f"/v1/algorithms/{quote(name, safe='')}/{quote(version, safe='')}",
            content=data,
            headers=headers,
        )
        return self._parse(AlgorithmInfo, response)

    def algorithms(self) -> list[AlgorithmInfo]:
        response = self._request("GET", "/v1/algorithms")
        return [AlgorithmInfo.model_validate(item) for item in self._json(response)]

    def download_algorithm(self, ref: AlgorithmRef, *, partial: Path | None = None) -> bytes:
        """The package ``ref`` names, checked against its SHA-256 (AlgorithmChecksumError if not).

        With ``partial`` the download survives an interruption: what arrives is appended to that
        file as it comes, and a later call continues from its end with an HTTP ``Range`` request
        (``If-Range`` the package's SHA-256, so a file of other content starts over). The file is
        removed once the package is complete and checked.
        """
        if partial is not None:
            return self._download_resumable(ref, partial)
        response = self._request("GET", ref.url)
        data = response.content
        return self._checked(ref, data, response.status_code)

    def _download_resumable(self, ref: AlgorithmRef, partial: Path) -> bytes:
        partial.parent.mkdir(parents=True, exist_ok=True)
        have = partial.stat().st_size if partial.is_file() else 0
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{ref.sha256}"'} if have else {}
        try:
            with self._http.stream("GET", ref.url, headers=headers) as response:
                if response.status_code == httpx.codes.REQUESTED_RANGE_NOT_SATISFIABLE:
                    partial.unlink(missing_ok=True)  # longer than the package: start over
                    response.read()
                    raise _error_from("GET", ref.url, response)
                if response.status_code >= 400:
                    response.read()
                    raise _error_from("GET", ref.url, response)
                resumed = response.status_code == httpx.codes.PARTIAL_CONTENT
                with partial.open("ab" if resumed else "wb") as sink:
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                        sink.flush()
                status = response.status_code
        except httpx.TimeoutException as err:
            raise CatalogUnavailableError(
                f"GET {ref.url}: timed out (kept {_size(partial)} bytes to resume)", url=ref.url
            ) from err
        except httpx.HTTPError as err:
            raise CatalogUnavailableError(
                f"GET {ref.url}: interrupted: {err} (kept {_size(partial)} bytes to resume)",
                url=ref.url,
            ) from err
        data = partial.read_bytes()
        partial.unlink(missing_ok=True)
        return self._checked(ref, data, status)

    def _checked(self, ref: AlgorithmRef, data: bytes, status: int) -> bytes:
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise AlgorithmChecksumError(
                f"{ref.url}: algorithm {ref.name} {ref.version} has SHA-256 {digest}, "
                f"expected {ref.sha256}",
                url=ref.url,
                status=status,
            )
        return data

    # -- topology ------------------------------------------------------------------------------

    def topology(self) -> TopologyInfo:
        return self._parse(TopologyInfo, self._request("GET", "/v1/topology"))

    def set_topology(
        self, switch_states: Mapping[int, SwitchPosition | str], *, reason: str = ""
    ) -> TopologyInfo:
        update = TopologyUpdate.model_validate(
            {"switch_states": dict(switch_states), "reason": reason}
        )
        response = self._request("PUT", "/v1/topology", content=update.model_dump_json())
        return self._parse(TopologyInfo, response)

    # -- plumbing ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> httpx.Response:
        url = path if "://" in path else f"{self.base_url}{path}"
        sent = dict(headers or {})
        if isinstance(content, str):
            sent.setdefault("Content-Type", "application/json")
        try:
            response = self._http.request(method, url, content=content, headers=sent, params=params)
        except httpx.TimeoutException as err:
            raise CatalogUnavailableError(f"{method} {url}: timed out", url=url) from err
        except httpx.HTTPError as err:
            raise CatalogUnavailableError(
                f"{method} {url}: cannot reach the catalog: {err}", url=url
            ) from err
        if response.status_code < 400:
            return response
        raise _error_from(method, url, response)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as err:
            raise CatalogUnavailableError(
                f"{response.request.url}: answer is not JSON",
                url=str(response.request.url),
                status=response.status_code,
            ) from err

    def _parse(self, model: type[_M], response: httpx.Response) -> _M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as err:
            url = str(response.request.url)
            raise CatalogUnavailableError(
                f"{url}: unexpected answer ({err.error_count()} problems, first: "
                f"{err.errors()[0]['msg']})",
                url=url,
                status=response.status_code,
            ) from err


def _error_from(method: str, url: str, response: httpx.Response) -> CatalogError:
    problem: dict[str, Any] | None = None
    try:
        document = response.json()
        if isinstance(document, dict):
            problem = document
    except ValueError:
        problem = None
    detail = (problem or {}).get("detail") or response.reason_phrase
    field = (problem or {}).get("field")
    message = f"{method} {url}: {response.status_code} {detail}"
    status = response.status_code
    if status >= 500:
        return CatalogUnavailableError(
            message, url=url, status=status, field=field, problem=problem
        )
    kind = CatalogNotFoundError if status == 404 else CatalogRequestError
    return kind(message, url=url, status=status, field=field, problem=problem)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
