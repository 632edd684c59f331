"""Connection hygiene for the uvicorn server ``csft serve`` runs: read deadlines, a head-size
cap and a connection cap, so idle, stalled or trickling clients cannot hold sockets forever.

Why a protocol subclass. Uvicorn closes a connection only when it stays idle *between*
requests (``timeout_keep_alive``). Nothing bounds a connection that has sent nothing yet, a
request head that never ends, or a body trickled at one byte a second; ``limit_concurrency``
answers 503 only after a head has been read, so stalled connections still pile up until the
process runs out of file descriptors (every request, ``/healthz`` included, then fails). No
uvicorn option covers this, and the server has to be safe as shipped, without a proxy in
front. So the HTTP protocol class uvicorn would pick anyway (httptools when installed, else
h11) is subclassed with a few hooks that do not depend on the parser:

* every connection records when its current phase began (opened, previous response done,
  request head complete); ``data_received`` notices a new request by uvicorn creating a new
  ``cycle``;
* one timer per server sweeps the connections once a second (a few microseconds each, so
  thousands cost milliseconds) and closes those past their deadline: the head must be
  complete ``header_timeout_s`` after the connection opened or its previous response ended,
  the body ``body_timeout_s`` after the head (408 when the response has not started). A
  route that streams a long body on purpose (the admin upload) lengthens its own deadline
  through the ASGI scope extension :data:`EXTEND_BODY_DEADLINE`;
* a head larger than ``max_header_bytes`` is refused with 431;
* at ``max_connections`` a new connection evicts the oldest one that is not inside a
  request (idle keep-alive, or still sending its head), else the oldest still sending its
  body; if every connection is being answered, the new one is closed at once. Attackers
  thus cannot keep a legitimate client (or a health probe) out, and the file descriptors
  used stay bounded.

A sweep rather than a timer per connection: it needs no hook into each parser's events, and
a deadline one second late does not matter. The Ray Serve path has its own HTTP proxy and
does not use this class (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.metrics import CONNECTIONS_CLOSED, OPEN_CONNECTIONS

log = logging.getLogger(__name__)

# ASGI scope extension (``scope["extensions"][EXTEND_BODY_DEADLINE]``): called with a number
# of seconds, it sets the current request's body deadline to that long after its head.
EXTEND_BODY_DEADLINE = "csft.extend_body_deadline"
SWEEP_S = 1.0
# File descriptors kept free of client connections: model files, Redis, the listening socket.
FD_RESERVE = 256


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings) -> "ConnectionLimits":
        return cls(settings.header_timeout_s, settings.body_timeout_s, settings.max_header_bytes,
                   settings.max_connections)


def _response(status: bytes, text: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: " + str(len(text)).encode() + b"\r\n\r\n" + text)


TIMEOUT_408 = _response(b"408 Request Timeout", b"the request did not arrive in time")
TOO_LARGE_431 = _response(b"431 Request Header Fields Too Large", b"the request head is too large")


class ConnectionGuard:
    """The connections of one server, their deadlines and the cap. Create one per server and
    give uvicorn :meth:`protocol_class` as its ``http`` protocol."""

    def __init__(self, limits: ConnectionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.open: dict[Any, None] = {}  # insertion-ordered: oldest first
        self.closed_by_reason = {"header_timeout": 0, "body_timeout": 0, "header_too_large": 0,
                                 "evicted": 0, "refused": 0}
        self._sweeper: asyncio.TimerHandle | None = None
        OPEN_CONNECTIONS.set_function(lambda: len(self.open))

    def count(self, reason: str) -> None:
        self.closed_by_reason[reason] += 1
        CONNECTIONS_CLOSED.labels(reason).inc()

    def protocol_class(self, base: type | None = None) -> type:
        """``base`` (default: the class uvicorn's ``http="auto"`` picks) with the guard's hooks."""
        if base is None:
            from uvicorn.protocols.http.auto import AutoHTTPProtocol

            base = AutoHTTPProtocol
        return type(f"Guarded{base.__name__}", (_GuardedMixin, base), {"guard": self})

    # -- called by the protocol ------------------------------------------------------------

    def admit(self, conn) -> bool:
        """Make room for ``conn``: False when every connection is inside a request."""
        if len(self.open) >= self.limits.max_connections:
            victim = next((c for c in self.open if c._between_requests()), None) \
                or next((c for c in self.open if c._sending_body()), None)
            if victim is None:
                self.count("refused")
                return False
            self.count("evicted")
            self.forget(victim)
            victim.transport.close()
        self.open[conn] = None
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        return True

    def forget(self, conn) -> None:
        self.open.pop(conn, None)

    def _sweep(self) -> None:
        now = self.clock()
        for conn in list(self.open):
            reason = conn._overdue(now)
            if reason is not None:
                self.count(reason)
                self.forget(conn)
                conn._close_overdue(reason)
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep) if self.open else None


class _GuardedMixin:
    """Hooks around uvicorn's HTTP protocol (httptools or h11); see the module docstring."""

    guard: ConnectionGuard

    def connection_made(self, transport) -> None:
        self._since = self.guard.clock()
        self._head_bytes = 0
        self._body_timeout_s = self.guard.limits.body_timeout_s
        super().connection_made(transport)  # type: ignore[misc]
        if not self.guard.admit(self):
            transport.close()

    def connection_lost(self, exc) -> None:
        self.guard.forget(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        before = self.cycle  # type: ignore[attr-defined]
        reading_head = self._between_requests()
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # a request head was completed: the body phase begins
            self._since = self.guard.clock()
            self._head_bytes = 0
            self._body_timeout_s = self.guard.limits.body_timeout_s
            self.cycle.scope.setdefault("extensions", {})[EXTEND_BODY_DEADLINE] = self._extend_body_deadline
        elif reading_head and self._between_requests():
            self._head_bytes += len(data)
            if self._head_bytes > self.guard.limits.max_header_bytes and not self.transport.is_closing():
                self.guard.count("header_too_large")
                self.guard.forget(self)
                self.transport.write(TOO_LARGE_431)
                self.transport.close()

    def on_response_complete(self) -> None:
        self._since = self.guard.clock()
        self._head_bytes = 0
        super().on_response_complete()  # type: ignore[misc]

    def _extend_body_deadline(self, seconds: float) -> None:
        self._body_timeout_s = max(self._body_timeout_s, seconds)

    def _between_requests(self) -> bool:
        """Not inside a request: nothing received yet, idle after a response, or sending a head."""
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is None or cycle.response_complete

    def _sending_body(self) -> bool:
        """Inside a request whose body is still arriving and whose answer has not begun."""
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is not None and cycle.more_body and not cycle.response_started

    def _overdue(self, now: float) -> str | None:
        cycle = self.cycle  # type: ignore[attr-defined]
        if self._between_requests():
            return "header_timeout" if now - self._since > self.guard.limits.header_timeout_s else None
        if cycle.more_body and now - self._since > self._body_timeout_s:
            return "body_timeout"
        return None  # the application has the request: CSFT_REQUEST_TIMEOUT_S bounds it

    def _close_overdue(self, reason: str) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle  # type: ignore[attr-defined]
        started_head = self._head_bytes > 0
        if (reason == "body_timeout" and not cycle.response_started) or (reason == "header_timeout" and started_head):
            self.transport.write(TIMEOUT_408)
        self.transport.close()


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit (many systems start at a
    soft 1024, fewer than the connection cap needs); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def uvicorn_config(app, settings, *, host: str, port: int, log_level: str):
    """The uvicorn configuration ``csft serve`` runs: the guarded protocol, keep-alive timeout,
    and a connection cap that fits under the open-file limit (raised first)."""
    import uvicorn

    limits = ConnectionLimits.from_settings(settings)
    fd_limit = raise_fd_limit()
    if limits.max_connections + FD_RESERVE > fd_limit:
        fitted = max(16, fd_limit - FD_RESERVE)
        log.warning("CSFT_MAX_CONNECTIONS=%d does not fit the open-file limit %d; capping connections at %d",
                    limits.max_connections, fd_limit, fitted)
        limits = ConnectionLimits(limits.header_timeout_s, limits.body_timeout_s, limits.max_header_bytes, fitted)
    guard = ConnectionGuard(limits)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=guard.protocol_class(),
                            timeout_keep_alive=settings.keep_alive_timeout_s,
                            h11_max_incomplete_event_size=limits.max_header_bytes)  # same head cap on h11
    config.connection_guard = guard  # for tests and diagnostics
    return config
