"""Helpers the benchmarks share for the processes they start: a free port, a clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    """SIGTERM (a clean stop), SIGKILL if it has not ended within ``timeout_s``; its pipes
    closed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()
