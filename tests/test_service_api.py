"""The HTTP API against the real app (TestClient = httpx), a real embedded Redis, a tiny base."""

from __future__ import annotations

from fastapi.testclient import TestClient

from diffs_store.base import load_base_model
from diffs_store.metadata import DiffKind
from service.app import create_app
from service.config import Settings
from service.patcher import switch_kind
from tests.support import AUTH, TOKEN, post_diff, random_diff, state_sha, tiny_base


def registry_snapshot(client) -> tuple:
    engine = client.app.state.engine
    blobs = sorted(p.name for p in (engine.settings.data_dir / "blobs").rglob("*") if p.is_file())
    return tuple(e.id for e in engine.registry.list(engine.fingerprint)), tuple(blobs)


def test_catalog_lists_what_was_uploaded(loaded):
    assert loaded.get("/v1/languages").json()["languages"] == ["hau", "ibo", "pcm", "swa", "yor"]
    assert [t["task"] for t in loaded.get("/v1/tasks").json()["tasks"]] == ["ner", "nli", "pos", "qa"]
    pairs = {(p["language"], p["task"]) for p in loaded.get("/v1/pairs").json()["pairs"]}
    assert ("hau", "ner") in pairs and ("yor", "qa") in pairs
    assert loaded.get("/readyz").status_code == 200 and loaded.get("/healthz").json() == {"status": "alive"}


def test_predict_each_task_type(loaded):
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john went to lagos"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["diffs"]["language"]["version"] == 1 and len(body["predictions"][0]["labels"]) == 4
    r = loaded.post("/v1/predict", json={"language": "swa", "task": "nli", "inputs": [{"text": "john went", "text_pair": "mary went"}]})
    assert r.json()["predictions"][0]["label"] in ("entailment", "neutral", "contradiction")
    r = loaded.post("/v1/predict", json={"task": "qa", "inputs": [{"question": "who went", "context": "john went to lagos"}]})
    ans = r.json()["predictions"][0]
    assert "john went to lagos"[ans["start"] : ans["end"]] == ans["answer"]
    r = loaded.post("/v1/predict", json={"language": "yor", "inputs": ["john [MASK] to lagos"]})
    assert len(r.json()["predictions"][0]["masks"][0]) == 5
    assert "csft_requests_total" in loaded.get("/metrics").text


def test_unknown_language_or_task_is_404_naming_what_exists(loaded):
    r = loaded.post("/v1/predict", json={"language": "fra", "task": "ner", "inputs": ["x"]})
    assert r.status_code == 404 and "hau, ibo, pcm, swa, yor" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "sentiment", "inputs": ["x"]})
    assert r.status_code == 404 and "ner" in r.json()["detail"]


def test_malformed_bodies_are_422(loaded):
    assert loaded.post("/v1/predict", json={"language": "hau", "task": "ner"}).status_code == 422
    assert loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": "john"}).status_code == 422
    assert loaded.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "qa", "inputs": ["not an object"]})
    assert r.status_code == 422 and "question" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "english!", "task": "ner", "inputs": ["x"]})
    assert r.status_code == 422 and "language tag" in r.json()["detail"]


def test_limits_are_413_with_the_limit(loaded):
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john"] * 5})
    assert r.status_code == 413 and "limit is 4" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john went " * 10]})
    assert r.status_code == 413 and "16 tokens" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["x" * 201]})
    assert r.status_code == 413 and "200" in r.json()["detail"]


def test_admin_auth(app_client, tiny_diffs, tiny_base_dir, tmp_path):
    data = tiny_diffs[("language", "hau")]
    assert post_diff(app_client, data, headers={}).status_code == 401
    assert post_diff(app_client, data, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert app_client.get("/v1/admin/diffs", headers={"Authorization": "Bearer wrong"}).status_code == 403
    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "other", device="cpu")
    with TestClient(create_app(settings)) as no_admin:
        r = post_diff(no_admin, data)
        assert r.status_code == 403 and "CSFT_ADMIN_TOKEN" in r.json()["detail"]


def test_invalid_uploads_are_refused_and_change_nothing(loaded, tiny_diffs):
    before = registry_snapshot(loaded)
    good = tiny_diffs[("task", "ner")]
    r = post_diff(loaded, b"nope")
    assert r.status_code == 422 and "safetensors" in r.json()["detail"]
    r = post_diff(loaded, b"definitely not safetensors")
    assert r.status_code == 422 and "header_too_large" in r.json()["detail"]
    r = post_diff(loaded, good[:-7])
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    other_model, other_spec = tiny_base(seed=5)  # a different base: fingerprint mismatch
    r = post_diff(loaded, random_diff(other_model, other_spec).to_bytes())
    assert r.status_code == 409 and "fingerprint_mismatch" in r.json()["detail"]
    assert registry_snapshot(loaded) == before


def test_upload_takes_effect_without_restart_and_delete_makes_404(loaded, tiny_base_dir):
    model, spec = load_base_model(str(tiny_base_dir))
    new = random_diff(model, spec, DiffKind.LANGUAGE, language="zul", seed=77)
    assert loaded.post("/v1/predict", json={"language": "zul", "task": "ner", "inputs": ["john"]}).status_code == 404
    entry = post_diff(loaded, new.to_bytes()).json()
    r = loaded.post("/v1/predict", json={"language": "zul", "task": "ner", "inputs": ["john"]})
    assert r.status_code == 200 and r.json()["diffs"]["language"]["id"] == entry["id"]
    # A second version becomes latest at once.
    v2 = random_diff(model, spec, DiffKind.LANGUAGE, language="zul", seed=78)
    entry2 = post_diff(loaded, v2.to_bytes()).json()
    assert entry2["version"] == 2
    r = loaded.post("/v1/predict", json={"language": "zul", "task": "ner", "inputs": ["john"]})
    assert r.json()["diffs"]["language"] == {"id": entry2["id"], "version": 2}
    for e in (entry2, entry):
        assert loaded.delete(f"/v1/admin/diffs/{e['id']}", headers=AUTH).status_code == 200
    assert loaded.post("/v1/predict", json={"language": "zul", "task": "ner", "inputs": ["john"]}).status_code == 404
    assert loaded.delete(f"/v1/admin/diffs/{entry['id']}", headers=AUTH).status_code == 404


def test_forward_failure_restores_weights_and_service_recovers(loaded):
    engine = loaded.app.state.engine
    pristine = state_sha(engine.host.params)
    ok = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john went to lagos"]}).json()

    def boom(comp):
        engine.before_forward = None
        raise RuntimeError("injected failure inside the forward pass")

    loaded.post("/v1/predict", json={"language": "swa", "task": "pos", "inputs": ["mary"]})  # apply another pair
    engine.before_forward = boom
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john went to lagos"]})
    assert r.status_code == 500 and "injected failure" in r.json()["detail"]
    assert engine.patcher.active is None and state_sha(engine.host.params) == pristine
    again = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john went to lagos"]}).json()
    assert again["predictions"] == ok["predictions"]


def test_timeout_does_not_leave_engine_stuck(loaded):
    engine = loaded.app.state.engine
    engine.settings.request_timeout_s = 0.2
    import time

    def slow(comp):
        engine.before_forward = None
        time.sleep(0.5)

    engine.before_forward = slow
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john"]})
    assert r.status_code == 504
    engine.settings.request_timeout_s = 30
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john"]})
    assert r.status_code == 200


def test_embedded_redis_stops_with_the_app(tiny_base_dir, tmp_path):
    import psutil

    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", device="cpu")
    with TestClient(create_app(settings)) as client:
        sock = client.app.state.engine.registry.redis.connection_pool.connection_kwargs["path"]
        assert client.get("/readyz").status_code == 200

    def serving(proc):
        try:
            return "redis-server" in proc.name() and any(sock in part for part in proc.cmdline())
        except psutil.Error:
            return False

    assert not [p for p in psutil.process_iter() if serving(p)]


def test_docs_work_offline(app_client):
    """Swagger UI's assets are served by the app itself (fastapi-offline), not a CDN."""
    html = app_client.get("/docs").text
    assert "cdn" not in html.lower()
    js = [part.split('"')[0] for part in html.split('src="')[1:]]
    assert js and all(u.startswith("/") for u in js)
    for url in js:
        r = app_client.get(url)
        assert r.status_code == 200 and len(r.content) > 10_000


def test_uploaded_diffs_are_planned_before_their_first_request(tiny_base_dir, tiny_diffs, tmp_path):
    """Prewarming: layers are built off the worker when diffs are announced, so a new
    pair's first request finds them cached (and answers as it would cold)."""
    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu")
    with TestClient(create_app(settings)) as client:
        ids = [post_diff(client, data).json()["id"] for data in tiny_diffs.values()]
        engine = client.app.state.engine
        assert engine.wait_prewarmed(60)
        assert all(i in engine.plans for i in ids)  # every layer
        assert (ids[2], ids[-1]) in engine.plans  # a (language, task) overlap: yor | qa
        assert engine._heads.peek(ids[-1]) is not None  # the qa task head
        warm = client.post("/v1/predict", json={"language": "yor", "task": "pos", "inputs": ["john went to lagos"]})
        before = engine.patcher.active
        assert client.post("/v1/predict", json={"language": "hau", "task": "pos", "inputs": ["mary"]}).status_code == 200
        assert switch_kind(before, engine.patcher.active) == "language"
        text = client.get("/metrics").text
        assert 'csft_pair_switches_total{kind="language",tier="layers"}' in text
        assert 'csft_switch_seconds_total{kind="language",tier="layers"}' in text
    cold_settings = settings.model_copy(update={"data_dir": tmp_path / "cold", "prewarm": False})
    with TestClient(create_app(cold_settings)) as client:
        for data in tiny_diffs.values():
            post_diff(client, data)
        engine = client.app.state.engine
        assert len(engine.plans) == 0  # nothing planned ahead when prewarming is off
        cold = client.post("/v1/predict", json={"language": "yor", "task": "pos", "inputs": ["john went to lagos"]})
    assert warm.status_code == cold.status_code == 200
    assert warm.json()["predictions"] == cold.json()["predictions"]
