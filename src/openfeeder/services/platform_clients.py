"""What every coordinating service needs from the platform before it starts: its own TLS
identity, a client of the device catalog that checks the catalog's HTTPS and presents the service
token, and the grid model the catalog serves."""

from __future__ import annotations

from openfeeder.config import Settings
from openfeeder.errors import ConfigError
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.model.cases import resolve_case
from openfeeder.model.grid import GridModel
from openfeeder.security.tls import TlsFiles, tls_files_from

__all__ = ["catalog_client", "model_from_catalog", "own_tls"]


def own_tls(settings: Settings) -> TlsFiles | None:
    """The service's certificate and key from ``[security]`` (None: it runs without TLS)."""
    tls = tls_files_from(settings.security)
    return tls if tls is not None and tls.cert_file is not None else None


def catalog_client(settings: Settings) -> CatalogClient:
    """The catalog at ``[catalog] url``: HTTPS checked against ``[security] ca_file`` when one is
    set, the ``[access]`` service token on every request."""
    security = settings.security
    verify = (
        TlsFiles(security.ca_file, min_version=security.tls_min_version)
        if security.ca_file is not None
        else None
    )
    return CatalogClient(
        settings.catalog.url,
        timeout_s=settings.catalog.request_timeout_s,
        token=settings.access.service_token(),
        verify=verify.client_context() if verify is not None else None,
    )


def model_from_catalog(catalog: CatalogClient, *, service: str) -> GridModel:
    """The case the catalog serves (``[catalog] case``), loaded as the catalog loads it."""
    case = catalog.topology().case
    if case is None:
        raise ConfigError(f"{service}: the device catalog serves no case ([catalog] case)")
    return resolve_case(case)
