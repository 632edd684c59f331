"""Idle, stalled and trickling connections against a real `csft serve` process, over raw
sockets: each is closed within its deadline, the connection cap holds the server's file
descriptors, and `/healthz` keeps answering meanwhile. Prints the figures as JSON lines
(docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import threading
import time

import httpx
import psutil
import pytest

from tests.support import server_process

pytestmark = pytest.mark.faults

TOKEN = "conn-token"
HEADER_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 6.0
KEEP_ALIVE_S = 1.0
UPLOAD_TIMEOUT_S = 20.0
MAX_CONNECTIONS = 1200
# A deadline is checked once a second; the rest is room for a loaded 2-core CI machine.
SLACK_S = 4.0

PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "
# A body under CSFT_MAX_BODY_BYTES (a declared 10 MB is refused with 413 at once), so the
# body timeout is what ends it.
TRICKLED_BODY_HEAD = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000\r\n\r\n")


@pytest.fixture(scope="module")
def server(tiny_base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-conn")
    with server_process(tiny_base_dir, root / "data", TOKEN, log=root / "server.log", TORCH_THREADS="1",
                        HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
                        KEEP_ALIVE_TIMEOUT_S=str(KEEP_ALIVE_S), UPLOAD_TIMEOUT_S=str(UPLOAD_TIMEOUT_S),
                        MAX_CONNECTIONS=str(MAX_CONNECTIONS)) as (proc, url):
        yield psutil.Process(proc.pid), url, root / "server.log"


class Clients:
    """Raw client sockets; a thread notes when the server closes each (epoll, so thousands)
    and another sends one body byte a second on the trickling ones."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened: dict[socket.socket, tuple[str, float]] = {}
        self.closed: dict[socket.socket, float] = {}
        self.first_bytes: dict[socket.socket, bytes] = {}
        self.sel = selectors.DefaultSelector()
        self.pending: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._watch, self._trickle)]
        for t in self.threads:
            t.start()

    def open(self, kind: str, n: int, first: bytes = b"") -> None:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.port))
            if first:
                s.sendall(first)
            s.setblocking(False)
            with self.lock:
                self.opened[s] = (kind, time.monotonic())
                self.pending.append(s)

    def _watch(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                for s in self.pending:
                    self.sel.register(s, selectors.EVENT_READ)
                self.pending.clear()
            ready = self.sel.select(0.05) if self.sel.get_map() else []
            now = time.monotonic()
            for key, _ in ready:
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.first_bytes.setdefault(s, data)
                    continue
                self.sel.unregister(s)
                with self.lock:
                    self.closed[s] = now
            if not ready:
                time.sleep(0.01)

    def _trickle(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                live = [s for s, (kind, _) in self.opened.items() if kind == "trickle" and s not in self.closed]
            for s in live:
                try:
                    s.send(b"[")
                except OSError:
                    pass

    def open_count(self) -> int:
        with self.lock:
            return len(self.opened) - len(self.closed)

    def wait_all_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_count() == 0:
                return True
            time.sleep(0.1)
        return False

    def seconds_to_close(self, kind: str) -> list[float]:
        with self.lock:
            return [self.closed[s] - t for s, (k, t) in self.opened.items() if k == kind and s in self.closed]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for s in self.opened:
            s.close()


def healthz_latencies(url: str, n: int) -> list[float]:
    """``n`` sequential GET /healthz; every one must answer 200."""
    out = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def test_a_thousand_stalled_clients_are_closed_in_time_and_healthz_answers(server):
    proc, url, _ = server
    port = int(url.rsplit(":", 1)[1])
    fds_before = proc.num_fds()
    clients = Clients(port)
    try:
        t0 = time.monotonic()
        clients.open("partial_head", 500, PARTIAL_HEAD)
        clients.open("silent", 300)
        clients.open("trickle", 200, TRICKLED_BODY_HEAD)
        opened_s = time.monotonic() - t0
        lat = healthz_latencies(url, 200)  # after the server accepted all 1,000 (accept order)
        fds_held = proc.num_fds()
        held = clients.open_count()
        assert clients.wait_all_closed(BODY_TIMEOUT_S + 30), f"{clients.open_count()} connections still open"
        heads, silent, trickle = (clients.seconds_to_close(k) for k in ("partial_head", "silent", "trickle"))
        fds_after = proc.num_fds()
        answers = {clients.first_bytes.get(s, b"")[:12] for s, (k, _) in clients.opened.items() if k == "trickle"}
    finally:
        clients.close()
    print(json.dumps({"attack": "1000 stalled connections", "opened_in_s": round(opened_s, 2), "held": held,
                      "healthz_p50_ms": round(pct(lat, 50) * 1000, 2), "healthz_p99_ms": round(pct(lat, 99) * 1000, 2),
                      "healthz_max_ms": round(max(lat) * 1000, 2),
                      "closed_after_s": {"partial_head": [round(min(heads), 2), round(max(heads), 2)],
                                         "silent": [round(min(silent), 2), round(max(silent), 2)],
                                         "trickle": [round(min(trickle), 2), round(max(trickle), 2)]},
                      "server_fds": {"before": fds_before, "held": fds_held, "after": fds_after}}))
    assert held > 950  # they really were held while /healthz was measured
    assert max(heads) <= HEADER_TIMEOUT_S + SLACK_S and max(silent) <= HEADER_TIMEOUT_S + SLACK_S
    assert BODY_TIMEOUT_S - 0.5 <= min(trickle) and max(trickle) <= BODY_TIMEOUT_S + SLACK_S
    assert answers == {b"HTTP/1.1 408"}  # the trickling clients were told why
    assert fds_after <= fds_before + 10
    metrics = httpx.get(f"{url}/metrics").text
    closed = {reason: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("csft_connections_closed_total{")
              for reason in [line.split('"')[1]]}
    assert closed["header_timeout"] >= 800 and closed["body_timeout"] >= 200, closed


def test_the_connection_cap_sheds_the_oldest_stalled_connections(server):
    proc, url, _ = server
    port = int(url.rsplit(":", 1)[1])
    fds_before = proc.num_fds()
    clients = Clients(port)
    try:
        clients.open("silent", MAX_CONNECTIONS + 400)
        lat = healthz_latencies(url, 50)
        fds_held = proc.num_fds()
        evicted_quickly = len(clients.seconds_to_close("silent"))
        assert clients.wait_all_closed(HEADER_TIMEOUT_S + 30)
    finally:
        clients.close()
    print(json.dumps({"attack": f"{MAX_CONNECTIONS + 400} silent connections, cap {MAX_CONNECTIONS}",
                      "healthz_p50_ms": round(pct(lat, 50) * 1000, 2), "healthz_p99_ms": round(pct(lat, 99) * 1000, 2),
                      "server_fds": {"before": fds_before, "held": fds_held}, "evicted_at_once": evicted_quickly}))
    assert fds_held <= fds_before + MAX_CONNECTIONS + 5
    assert evicted_quickly >= 400


def test_an_oversized_request_head_gets_431(server):
    _, url, _ = server
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(200):  # 200 x 1 KiB header lines, above the 64 KiB default
                s.sendall(b"X-Pad: " + b"a" * 1024 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert s.recv(4096).startswith(b"HTTP/1.1 431")


def test_idle_keep_alive_connections_are_closed_after_the_setting(server):
    _, url, _ = server
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=15) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b"alive" not in reply:
            reply += s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(4096) == b""
        idle = time.monotonic() - t0
    assert idle <= KEEP_ALIVE_S + 1.5  # uvicorn's own default would keep it 5 s


def test_a_slow_authorised_upload_gets_the_upload_deadline_not_the_body_deadline(server, tiny_diffs):
    _, url, _ = server
    data = tiny_diffs[("task", "nli")]
    boundary = b"b0undary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="d.safetensors"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    head = (b"POST /v1/admin/diffs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=" + boundary
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
    pieces = 10
    step = len(body) // pieces + 1
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as s:
        s.sendall(head)
        t0 = time.monotonic()
        for i in range(pieces):  # the body takes ~BODY_TIMEOUT_S + 3 s to arrive
            time.sleep((BODY_TIMEOUT_S + 3) / pieces)
            s.sendall(body[i * step:(i + 1) * step])
        reply = s.recv(4096)
    assert time.monotonic() - t0 > BODY_TIMEOUT_S
    assert reply.startswith(b"HTTP/1.1 201"), reply[:200]


async def _echo_app(scope, receive, send):
    """A minimal ASGI app: reads the whole body, answers 200 "ok"."""
    if scope["type"] == "lifespan":
        while (m := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (m := await receive())["type"] == "http.request" and m.get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _closed_after(port: int, first: bytes, trickle: bool = False) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(first)
        s.settimeout(0.5)
        t0, got = time.monotonic(), b""
        while time.monotonic() - t0 < 15:
            try:
                data = s.recv(4096)
            except socket.timeout:
                if trickle:
                    s.send(b"x")
                continue
            if not data:
                return time.monotonic() - t0, got
            got += data
    raise AssertionError("the connection was not closed")


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_the_guard_works_on_either_uvicorn_parser(parser):
    """The hooks do not depend on the parser: the same deadlines, head cap and connection cap
    on h11 (a plain install) and httptools (uvicorn[standard])."""
    import uvicorn

    from service.connection_guard import ConnectionGuard, ConnectionLimits
    from tests.support import free_port

    if parser == "httptools":
        pytest.importorskip("httptools")
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    guard = ConnectionGuard(ConnectionLimits(header_timeout_s=1, body_timeout_s=2, max_header_bytes=4096,
                                             max_connections=16))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_echo_app, host="127.0.0.1", port=port, http=guard.protocol_class(base),
                                           timeout_keep_alive=1, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        t, got = _closed_after(port, PARTIAL_HEAD)
        assert t < 1 + SLACK_S and got.startswith(b"HTTP/1.1 408")
        t, got = _closed_after(port, b"")
        assert t < 1 + SLACK_S and got == b""
        t, got = _closed_after(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", trickle=True)
        assert 1.5 < t < 2 + SLACK_S and got.startswith(b"HTTP/1.1 408")
        t, got = _closed_after(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200") and t < 1 + SLACK_S
        _, got = _closed_after(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-P: " + b"a" * 5000 + b"\r\n")
        assert got.startswith(b"HTTP/1.1 431")
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        deadline = time.monotonic() + 10
        while guard.closed_by_reason["evicted"] < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(guard.open) <= 16 and guard.closed_by_reason["evicted"] >= 24
        for s in held:
            s.close()
        # Connections with a complete head, trickling their bodies, are evicted next.
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        for s in held:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx")
        time.sleep(0.5)
        evicted = guard.closed_by_reason["evicted"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        assert guard.closed_by_reason["evicted"] > evicted
        for s in held:
            s.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_open_file_limit_is_raised_and_the_cap_fits_under_it():
    """A soft limit of 256 (below the cap) is raised to the hard limit; a hard limit of 1024
    lowers the connection cap to fit, rather than running out of descriptors at 1024."""
    import subprocess
    import sys

    code = """
import resource
from service.config import Settings
from service.connection_guard import uvicorn_config
resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard}))
config = uvicorn_config(lambda *a: None, Settings(max_connections=2048), host="127.0.0.1", port=1, log_level="error")
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], config.connection_guard.limits.max_connections)
"""
    hard = resource_hard_limit()
    out = subprocess.run([sys.executable, "-c", code.format(hard=hard)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(hard), str(min(2048, hard - 256))]
    out = subprocess.run([sys.executable, "-c", code.format(hard=1024)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1024", "768"] and "does not fit the open-file limit" in out.stderr


def resource_hard_limit() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20
