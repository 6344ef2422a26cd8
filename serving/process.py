"""Starting ``bentoml serve`` for this service as a child process and waiting until it is
ready: shared by ``nbo demo``, the serving benchmark and the process test."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

SERVICE = "serving.service:NboService"


def start(port: int, env: Mapping[str, str], log: Path, host: str = "127.0.0.1",
          service: str = SERVICE, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``bentoml serve`` of ``service`` (an import path from ``cwd``, or a Bento's tag) in its
    own session, so its workers stop with it; output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", service, "--port", str(port), "--host", host],
        env=dict(env), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        cwd=cwd)


def wait_ready(server: subprocess.Popen[bytes], url: str, log: Path,
               timeout: float = 120.0) -> None:
    """Return once ``url``/readyz answers 200; raise with the log's tail if the process dies
    or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with code {server.returncode}; end of "
                               f"{log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service was not ready within {timeout:.0f} s; see {log}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``port``, so a new service will not answer for an old one."""
    with socket.socket() as probe:
        # as servers do: closed connections waiting out TIME_WAIT do not hold the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
