"""Running the catalog: :func:`serve_catalog` for a process, :class:`CatalogThread` in a thread.

``serve_catalog`` opens the store, connects to both brokers (client id ``catalog-<random>`` unless
one is given, so that two catalogs on one broker never take each other's connection), loads the
state, starts the liveness watchdog and serves HTTP until ``stop`` is set; then it stops taking
requests, writes the pending last-seen times, waits briefly for the broker to acknowledge what was
published and closes everything.

With ``[catalog] listen_port = 0`` the server binds a free port and the catalog advertises the URL
it bound (in algorithm download URLs) instead of ``[catalog] url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from openfeeder.config import Settings
from openfeeder.errors import ConfigError
from openfeeder.iot.mqtt import Messenger
from openfeeder.iot.protection import protection_from_settings
from openfeeder.security.acl import AccessTable
from openfeeder.security.mosquitto import DYNSEC_TOPIC, reload_mosquitto
from openfeeder.security.pki import CertificateAuthority
from openfeeder.security.tls import own_identity, tls_files_from
from openfeeder.services.access import AccessControl
from openfeeder.services.catalog.access_sync import AccessSync
from openfeeder.services.catalog.api import create_app
from openfeeder.services.catalog.core import Catalog
from openfeeder.services.catalog.enrolment import Enrolments
from openfeeder.services.catalog.payload_keys import DeviceKeys
from openfeeder.services.catalog.publishing import MessengerPublisher
from openfeeder.services.catalog.store import DEFAULT_TABLE_PREFIX, open_store
from openfeeder.services.runtime import HttpServer

__all__ = ["CatalogThread", "serve_catalog"]

_LOG = logging.getLogger(__name__)
_DRAIN_TIMEOUT_S: Final = 2.0


async def serve_catalog(
    settings: Settings,
    stop: asyncio.Event,
    *,
    ready: Callable[[str], None] | None = None,
    client_id: str | None = None,
    table_prefix: str = DEFAULT_TABLE_PREFIX,
    on_access_table: Callable[[AccessTable], None] | None = None,
    on_revoked: Callable[[], object] | None = None,
) -> None:
    """Serve the device catalog until ``stop`` is set; ``ready(url)`` once it accepts requests.

    With ``[security]``: connections to ``mqtts://`` brokers use the catalog's certificate, HTTPS is
    served when ``[catalog] url`` is ``https://``, devices enrol when ``pki_dir`` names the CA, and
    the broker ACL follows the registry (``acl_backend``, or ``on_access_table`` for a broker in
    this process: :mod:`~openfeeder.services.catalog.access_sync`). When it revokes certificates
    (:mod:`~openfeeder.services.catalog.enrolment`) it sends SIGHUP to ``mosquitto_pid_file``
    (Mosquitto reads its CRL again) and calls ``on_revoked`` (a broker in this process).
    """
    store = await asyncio.to_thread(
        open_store, settings.catalog_storage_url(), table_prefix=table_prefix
    )
    security = settings.security
    tls = tls_files_from(security)
    identity = own_identity(tls, default="catalog")
    mqtt_id = client_id or f"{identity}-{uuid.uuid4().hex[:10]}"
    # configurations and topology are control traffic, liveness events protection traffic:
    # sealed when [payload_protection] is on (the catalog holds the key store)
    device_keys = await asyncio.to_thread(DeviceKeys.from_settings, settings.payload_protection)
    messenger = Messenger(
        settings.brokers,
        client_id=mqtt_id,
        tls=tls.client_context() if tls is not None and tls.cert_file is not None else None,
        protection=protection_from_settings(
            settings.payload_protection, sender_id=mqtt_id, event_device_id=identity
        ),
    )
    publisher = MessengerPublisher(messenger)
    try:
        messenger.start()
        catalog = Catalog(settings, store=store, publisher=publisher)
        access = AccessControl.from_settings(settings.access, service="catalog")
        enrolments = None
        if security.pki_dir is not None:
            secret_file = security.enrolment_secret_file
            enrolments = Enrolments(
                await asyncio.to_thread(CertificateAuthority.open, security.pki_dir),
                secret=_first_line(secret_file) if secret_file is not None else None,
                keys=device_keys,
                audit=access.audit,
                on_revoked=_crl_readers(security.mosquitto_pid_file, on_revoked),
            )
        https = settings.catalog.url.startswith("https://") and tls is not None
        server = HttpServer(
            create_app(catalog, access=access, enrolments=enrolments, device_keys=device_keys),
            host=settings.catalog.listen_host,
            port=settings.catalog.listen_port,
            tls=tls if https else None,
        )
        acl = None
        if security.acl_backend != "none" or on_access_table is not None:
            acl = AccessSync(
                security,
                identity=identity,
                send_control=lambda body: _send_control(messenger, body),
                on_table=on_access_table,
            )
        public_url = server.url if settings.catalog.listen_port == 0 else settings.catalog.url
        try:
            await catalog.start(public_url=public_url)
        except BaseException:
            await catalog.close()
            await _close_unused(server)
            raise
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(catalog.run(stop))
                if acl is not None:
                    group.create_task(acl.run(catalog, stop))
                group.create_task(_serve_http(server, stop))
                group.create_task(_announce_ready(server, stop, ready))
        finally:
            await catalog.close()
            if enrolments is not None:
                enrolments.close()
    finally:
        await asyncio.to_thread(publisher.drain, _DRAIN_TIMEOUT_S)
        # both links at once: a link waiting to reconnect takes up to a second to stop
        await asyncio.gather(*(asyncio.to_thread(link.stop) for link in messenger.links.values()))
        store.close()


def _crl_readers(
    pid_file: Path | None, in_process: Callable[[], object] | None
) -> Callable[[], object] | None:
    """What tells the brokers that the CRL changed: SIGHUP to Mosquitto, the broker here."""
    if pid_file is None and in_process is None:
        return None

    def announce() -> None:
        if pid_file is not None:
            reload_mosquitto(pid_file)
        if in_process is not None:
            in_process()

    return announce


def _first_line(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as err:
        raise ConfigError(f"security.enrolment_secret_file: cannot read {path}") from err


def _send_control(messenger: Messenger, body: bytes) -> None:
    """Dynamic-security commands to the broker behind each link (twice if it is one broker:
    the commands are idempotent in effect)."""
    for link in messenger.links.values():
        link.publish(DYNSEC_TOPIC, body)


async def _serve_http(server: HttpServer, stop: asyncio.Event) -> None:
    try:
        await server.serve(stop)
    finally:
        stop.set()  # if the server ends on its own, the rest of the catalog stops with it


async def _announce_ready(
    server: HttpServer, stop: asyncio.Event, ready: Callable[[str], None] | None
) -> None:
    while not server.started:
        if stop.is_set():
            return
        await asyncio.sleep(0.01)
    _LOG.info(
        "catalog listening url=%s", server.url, extra={"url": server.url, "event": "listening"}
    )
    if ready is not None:
        ready(server.url)


async def _close_unused(server: HttpServer) -> None:
    """Release a bound server socket that will not serve (HttpServer closes it after serving)."""
    stopped = asyncio.Event()
    stopped.set()
    await server.serve(stopped)


class CatalogThread:
    """The catalog served from a background thread with its own event loop (tests, the demo).

    ``start()`` returns the URL once requests are accepted (``listen_port = 0`` picks a free
    port); ``stop()`` shuts it down cleanly. Also a context manager.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str | None = None,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        startup_timeout_s: float = 30.0,
        on_access_table: Callable[[AccessTable], None] | None = None,
        on_revoked: Callable[[], object] | None = None,
    ) -> None:
        self._on_access_table = on_access_table
        self._on_revoked = on_revoked
        self._settings = settings
        self._client_id = client_id
        self._table_prefix = table_prefix
        self._startup_timeout_s = startup_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the catalog is not running")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> str:
        """Start serving; the URL (raises what made the start fail)."""
        if self._thread is not None:
            return self.url
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="catalog", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._startup_timeout_s):
            self.stop()
            raise TimeoutError(f"the catalog did not start within {self._startup_timeout_s} s")
        if self._error is not None:
            error = self._error
            self._join()
            raise error
        return self.url

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop serving and wait for the thread (idempotent)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._join(timeout_s)
        self._url = None

    def _join(self, timeout_s: float = 30.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"the catalog thread did not stop within {timeout_s} s")
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # handed to start() in the caller's thread
            self._error = err
            if self._ready.is_set():  # it had started: nobody waits for the error, log it
                _LOG.error("catalog thread failed: %s", err, exc_info=err)
        finally:
            self._loop = None
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def on_ready(url: str) -> None:
            self._url = url
            self._ready.set()

        await serve_catalog(
            self._settings,
            self._stop,
            ready=on_ready,
            client_id=self._client_id,
            table_prefix=self._table_prefix,
            on_access_table=self._on_access_table,
            on_revoked=self._on_revoked,
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
