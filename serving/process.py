"""Starting ``bentoml serve`` for this service as a child process and waiting until it is
ready: shared by ``nbo demo``, the serving benchmark and the process test."""

from __future__ import annotations

import contextlib
import os
import signal
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


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, its children's children included (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone in between
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def stop(server: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0
         ) -> None:
    """Stop the service and every worker it started: ``sig`` to its process group, then
    SIGKILL to whatever of it is left after ``timeout`` (BentoML's workers are not always in
    the group, and outlive a killed parent)."""
    workers = signal_service(server.pid, sig)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=timeout)
    finish(workers, timeout)


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """Stop a service that another process started (the demo's, by its pid file) and every
    worker of it, and return once they are gone: SIGTERM, then SIGKILL after ``timeout``."""
    finish([pid, *signal_service(pid, signal.SIGTERM)], timeout)


def finish(pids: list[int], timeout: float) -> None:
    """Wait for ``pids`` to exit; SIGKILL to those left after ``timeout``."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def signal_service(pid: int, sig: int) -> list[int]:
    """Send ``sig`` to the service ``pid``'s process group and to every process it started
    (its workers are not always in the group); the processes it started."""
    workers = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, sig)
    return workers


def ready_workers(url: str, workers: int, timeout: float = 120.0) -> set[int]:
    """Ask ``url``/readyz on a new connection each time until ``workers`` distinct workers
    answered with a model, or the time runs out; the workers seen."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/readyz", timeout=5)
        except httpx.HTTPError:  # not listening yet
            time.sleep(0.5)
            continue
        if answer.status_code == 200:
            seen.add(answer.json()["worker"])
    return seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


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
