"""What every long-running service shares: structured logs, signal handling, an HTTP server.

- :func:`configure_logging` writes one JSON object per line on stderr (``json_lines = true``, the
  default) with the time in UTC, level, service, logger, message, and every ``extra={...}`` field;
  or plain text lines for people at a terminal.
- :func:`run_service` runs an async main with SIGINT and SIGTERM setting a stop event, so a service
  stops cleanly (finishes its batch, closes connections) and exits 0.
- :class:`HttpServer` serves an ASGI app (FastAPI) with uvicorn inside the service's own event loop,
  leaving signals to :func:`run_service`; port 0 binds a free port, readable afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

import uvicorn

from openfeeder.config import LoggingSettings
from openfeeder.security.tls import TlsFiles

__all__ = [
    "HttpServer",
    "JsonLineFormatter",
    "ServiceThread",
    "configure_logging",
    "run_service",
]

_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC ISO 8601), ``level``, ``service``, ``logger``,
    ``msg``, the record's ``extra`` fields, and ``exc`` with the traceback when there is one."""

    def __init__(self, *, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in document:
                document[key] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(settings: LoggingSettings, *, service: str) -> None:
    """Route all logging to stderr in the configured format and level (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_lines:
        handler.setFormatter(JsonLineFormatter(service=service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # uvicorn's access log is one line per request: too much at 10,000 polling devices.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def run_service(main: Callable[[asyncio.Event], Awaitable[None]], *, name: str) -> int:
    """Run ``main(stop)`` until it returns; SIGINT/SIGTERM set ``stop``. Returns the exit code 0."""
    log = logging.getLogger(f"openfeeder.services.{name}")

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, stop, sig, log)
        try:
            await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    log.info("%s starting", name, extra={"event": "starting"})
    asyncio.run(runner())
    log.info("%s stopped", name, extra={"event": "stopped"})
    return 0


def _on_signal(stop: asyncio.Event, sig: signal.Signals, log: logging.Logger) -> None:
    log.info("received %s, stopping", sig.name, extra={"event": "signal", "signal": sig.name})
    stop.set()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service's stop event decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """An ASGI app served by uvicorn in the current event loop, on a socket bound up front.

    With ``tls`` it serves HTTPS (TLS 1.3 unless ``tls.min_version`` says otherwise) with the
    certificate and key of ``tls``; clients verify it against the platform CA.
    """

    def __init__(self, app: Any, *, host: str, port: int, tls: TlsFiles | None = None) -> None:
        # IPPROTO_TCP explicitly: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on
        # sockets that say they are TCP; without it Nagle and delayed ACKs add 40 ms per response.
        self._socket = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as err:
            self._socket.close()
            raise OSError(f"cannot listen on {host}:{port}: {err.strerror}") from err
        self._socket.listen(2048)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self.tls = tls
        options: dict[str, Any] = {}
        if tls is not None:
            # the files' own context: the platform's minimum TLS version (uvicorn has no setting
            # for it); client certificates are not asked for (REST authorization is by token)
            context = tls.server_context(require_client_cert=False)
            options = {
                "ssl_certfile": str(tls.cert_file),
                "ssl_keyfile": str(tls.key_file),
                "ssl_context_factory": lambda _config, _default: context,
            }
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            backlog=2048,
            **options,
        )
        self._server = _QuietServer(config)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully and close the socket."""
        task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._server.should_exit = True
            stopper.cancel()
            await task
            self._socket.close()

    @property
    def started(self) -> bool:
        return bool(self._server.started)


T = TypeVar("T")

ServeFunction = Callable[[asyncio.Event, Callable[[Any, str], None]], Awaitable[None]]
"""``serve(stop, ready)``: runs a service until ``stop`` is set; calls ``ready(handle, url)`` once
its REST API listens."""


class ServiceThread(Generic[T]):
    """A service served from a background thread (the demo, tests, benchmarks); a context
    manager. ``start()`` returns the handle the service reported ready with (its coordinator)."""

    def __init__(self, serve: ServeFunction, *, name: str, startup_timeout_s: float) -> None:
        self._serve = serve
        self._name = name
        self._timeout_s = startup_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._handle: T | None = None
        self.url: str | None = None

    def start(self) -> T:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout_s):
            self.stop()
            raise TimeoutError(f"{self._name} did not start within {self._timeout_s} s")
        if self._error is not None:
            raise self._error
        if self._handle is None:
            raise RuntimeError(f"{self._name} reported ready without a handle")
        return self._handle

    def stop(self, timeout_s: float = 30.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(handle: T, url: str) -> None:
                self._handle, self.url = handle, url
                self._ready.set()

            await self._serve(self._stop, ready)

        try:
            asyncio.run(main())
        except BaseException as err:  # handed to start()
            self._error = err
            self._ready.set()

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
