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
    assert body["diffs"]["language"]["version"] == 1
    for entity in body["predictions"][0]["entities"]:  # character offsets into the input
        assert "john went to lagos"[entity["start"] : entity["end"]] == entity["word"]
        assert entity["entity_group"] in ("PER", "LOC", "ORG") and 0 < entity["score"] <= 1
    assert "logits" not in body["predictions"][0]
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john went"], "return_logits": True,
                                         "parameters": {"aggregation_strategy": "none", "ignore_labels": []}})
    prediction = r.json()["predictions"][0]
    assert [e["word"] for e in prediction["entities"]] == ["john", "went"]
    assert len(prediction["logits"]) == 1 and len(prediction["logits"][0]) == 4  # one window: [CLS] john went [SEP]
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
    pristine = state_sha(loaded.app.state.engine.host.params)
    assert loaded.post("/v1/predict", json={"language": "hau", "task": "ner"}).status_code == 422
    assert loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": "john"}).status_code == 422
    assert loaded.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "qa", "inputs": [{"question": "who", "context": "john"}, "not an object"]})
    assert r.status_code == 422 and r.json()["detail"].startswith("inputs[1]: ") and "question" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["x"], "parameters": {"top_k": 3}})
    assert r.status_code == 422 and "parameters.top_k" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["x"], "parameters": {"aggregation_strategy": "most"}})
    assert r.status_code == 422 and "parameters.aggregation_strategy" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["x"], "extra": 1})
    assert r.status_code == 422 and "extra" in str(r.json()["detail"])
    r = loaded.post("/models/hau/ner", json={"inputs": "john", "parameters": {"stride": 500}})
    assert r.status_code == 422 and "parameters.stride" in r.json()["detail"]
    r = loaded.post("/models/hau/ner", json={"inputs": ["john", 7]})
    assert r.status_code == 422 and r.json()["detail"].startswith("inputs[1]: ")
    r = loaded.post("/models/hau/ner", content='{"inputs": "john \\ud800"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("inputs: ")
    # Refused before the worker: nothing was patched, nothing queued.
    assert loaded.app.state.engine.patcher.active is None and state_sha(loaded.app.state.engine.host.params) == pristine
    r = loaded.post("/v1/predict", json={"language": "english!", "task": "ner", "inputs": ["x"]})
    assert r.status_code == 422 and "language tag" in r.json()["detail"]


def test_limits_are_413_with_the_limit(loaded):
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john"] * 5})
    assert r.status_code == 413 and "limit is 4" in r.json()["detail"]
    r = loaded.post("/v1/predict", json={"language": "yor", "inputs": ["john [MASK] " * 10]})
    assert r.status_code == 413 and "16" in r.json()["detail"] and "inputs[0]" in r.json()["detail"]
    # Longer than the model's window: a token-classification text runs as overlapping windows.
    text = "john went to lagos " * 10
    r = loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": [text], "return_logits": True})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["logits"]) > 2
    assert all(e["end"] <= len(text) for e in r.json()["predictions"][0]["entities"])
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
    assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
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


def test_a_heavy_request_takes_turns_with_a_light_one(loaded):
    """Fair share: a request of many windows goes to the worker a batch at a time, so a
    light request sent while it runs is answered long before it ends."""
    import threading
    import time

    engine = loaded.app.state.engine
    engine.settings.max_batch_size = 2  # 8 turns of 0.2 s: room for the light request under load
    forwards: list[str] = []

    def slow(comp):
        forwards.append(comp.task.key)
        time.sleep(0.2)

    engine.before_forward = slow
    heavy = {"language": "hau", "task": "ner", "inputs": ["john went to lagos " * 10] * 4}  # 4 inputs x ~4 windows
    done: dict[str, float] = {}

    def send(name, body):
        assert loaded.post("/v1/predict", json=body).status_code == 200
        done[name] = time.monotonic()

    t = threading.Thread(target=send, args=("heavy", heavy))
    t.start()
    while len(forwards) < 1:
        time.sleep(0.005)
    send("light", {"language": "hau", "task": "pos", "inputs": ["mary"]})
    t.join()
    engine.before_forward = None
    assert done["light"] < done["heavy"]
    assert forwards.index("pos") < len(forwards) - 2  # served between the heavy request's batches
