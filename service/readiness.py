"""Starting a server on a free port and waiting for it to answer ``/readyz``: the Ray
launcher, the tests and the benchmarks start servers and wait for them the same way."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it), for a server about to start."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float, *, exited: Callable[[], str | None] | None = None,
               poll_s: float = 0.3) -> dict[str, Any]:
    """Poll ``{url}/readyz`` until it answers 200 and return its JSON body.

    ``exited``, for a server in a child process, returns why that process is gone (e.g. its
    last output) or None while it runs, so a crash fails at once instead of at the timeout.
    Raises RuntimeError when it has exited and TimeoutError after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited is not None and (why := exited()) is not None:
            raise RuntimeError(f"the server at {url} exited: {why}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)  # polling another process's readiness, not synchronising with it
    raise TimeoutError(f"the server at {url} was not ready within {timeout_s:g} s")
