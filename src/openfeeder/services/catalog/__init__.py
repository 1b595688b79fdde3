"""The device catalog service: registry, self-configuration, liveness, topology, discovery,
algorithm repository (``openfeeder catalog serve``).

- :mod:`~openfeeder.services.catalog.store`: SQLite / PostgreSQL tables, one transaction per write;
- :mod:`~openfeeder.services.catalog.writer`: the single writer thread with group commit;
- :mod:`~openfeeder.services.catalog.core`: :class:`Catalog`, the state and its operations;
- :mod:`~openfeeder.services.catalog.rendering`: a device's settings from its record;
- :mod:`~openfeeder.services.catalog.grid_view`: a device's part of the grid model;
- :mod:`~openfeeder.services.catalog.api`: the REST API (FastAPI, problem+json errors);
- :mod:`~openfeeder.services.catalog.service`: :func:`serve_catalog` and :class:`CatalogThread`.

Clients use :class:`openfeeder.iot.catalog_client.CatalogClient`.
"""

from openfeeder.services.catalog.api import create_app
from openfeeder.services.catalog.core import Catalog
from openfeeder.services.catalog.service import CatalogThread, serve_catalog
from openfeeder.services.catalog.store import CatalogStore, open_store

__all__ = ["Catalog", "CatalogStore", "CatalogThread", "create_app", "open_store", "serve_catalog"]
