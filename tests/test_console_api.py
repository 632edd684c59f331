"""What the console needs from the server, without a browser: the page and its files are
served from the package (and name no outside host), /v1/info and /v1/catalog answer (with
each task's source language and each diff's recorded dev scores), the language-name table
covers the MasakhaNER languages, every refusal code has the console's words."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from service.console import STATIC
from service_fixtures import AUTH, post_diff

ROOT = Path(__file__).resolve().parents[1]
MASAKHANER = ["hau", "ibo", "yor", "swa", "pcm", "amh", "kin", "lug", "luo", "wol"]


def test_page_and_every_file_it_loads_are_served(app_client):
    page = app_client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    scripts = re.findall(r'(?:src|href)="(console/[^"]+)"', page.text)
    assert "console/main.js" in scripts and "console/console.css" in scripts
    modules = {p.name for p in STATIC.glob("*.js")}
    for name in modules:  # every module, and every module it imports, is there
        r = app_client.get(f"/console/{name}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"], name
        for imported in re.findall(r'from "\./([^"]+)"', r.text):
            assert imported in modules, (name, imported)
    for url in scripts:
        assert app_client.get(f"/{url}").status_code == 200, url
    assert app_client.get("/console/../app.py").status_code == 404


def test_console_files_name_no_outside_host():
    for path in STATIC.iterdir():
        assert not re.search(r"https?://", path.read_text()), f"{path.name} loads from outside the server"


def test_console_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service.console"]
    package = STATIC.parent
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert shipped == set(STATIC.iterdir())


def test_language_names_cover_masakhaner_and_the_big_ones():
    names = json.loads((STATIC / "languages.json").read_text())
    for code in MASAKHANER + ["en", "fr", "ar", "zh", "es", "ha", "sw", "yo"]:
        assert names.get(code), code
    assert names["hau"] == names["ha"] == "Hausa" and names["pcm"] == "Nigerian Pidgin"


def test_info_says_what_is_loaded(loaded):
    loaded.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": ["john went to lagos"]})
    info = loaded.get("/v1/info").json()
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["mask_token"] == "[MASK]"
    assert info["admin_enabled"] is True and info["base_fingerprint"].startswith("sha256:")
    assert info["plan_cache"]["budget"] == 2 * 1024**3 and info["plan_cache"]["bytes"] > 0
    assert info["requests_total"] >= 1 and info["switches_total"] >= 1


def test_catalog_gives_latest_versions_and_heads(loaded, tiny_base_dir):
    from diffs_store.base import load_base_model
    from diffs_store.metadata import DiffKind
    from factories import random_diff

    model, spec = load_base_model(str(tiny_base_dir))
    no_head = random_diff(model, spec, DiffKind.LANGUAGE, language="wol", seed=5, density=0.1, with_head=False)
    assert post_diff(loaded, no_head.to_bytes()).status_code == 201
    body = loaded.get("/v1/catalog").json()
    languages = {row["language"]: row for row in body["languages"]}
    assert set(languages) == {"hau", "ibo", "pcm", "swa", "yor", "wol"}
    assert languages["hau"]["latest_version"] == 1 and languages["hau"]["task_type"] == "fill-mask"
    assert languages["wol"]["task_type"] is None  # cannot answer alone: the matrix greys it out
    assert [t["task"] for t in body["tasks"]] == ["ner", "nli", "pos", "qa"]
    assert body["tasks"][0]["labels"][0] == "O"


def test_catalog_and_tasks_carry_source_language_and_dev_scores(app_client, tiny_base_dir):
    """What the console shows beside each pair: the task's source language and each diff's
    recorded dev scores (the `dev` part of its metadata `metrics`); the admin list keeps all."""
    from diffs_store.base import load_base_model
    from diffs_store.metadata import DiffKind, TaskType
    from factories import random_diff

    model, spec = load_base_model(str(tiny_base_dir))
    ner_metrics = {"train": {"steps": 10}, "dev": {"hau": {"f1": 0.81, "accuracy": 0.96}}}
    diffs = [
        random_diff(model, spec, DiffKind.TASK, language="hau", task="ner", seed=1, metrics=ner_metrics),
        random_diff(model, spec, DiffKind.TASK, language=None, task="nli", task_type=TaskType.SEQUENCE_CLASSIFICATION,
                    labels=("entailment", "neutral", "contradiction"), seed=2),  # several sources, nothing recorded
        random_diff(model, spec, DiffKind.LANGUAGE, language="pcm", seed=3, metrics={"dev": {"perplexity": 12.2}}),
    ]
    for diff in diffs:
        assert post_diff(app_client, diff.to_bytes()).status_code == 201
    catalog = app_client.get("/v1/catalog").json()
    tasks = {t["task"]: t for t in catalog["tasks"]}
    assert tasks["ner"]["source_language"] == "hau" and tasks["ner"]["dev_metrics"] == ner_metrics["dev"]
    assert tasks["nli"]["source_language"] is None and tasks["nli"]["dev_metrics"] == {}
    assert catalog["languages"][0]["language"] == "pcm" and catalog["languages"][0]["dev_metrics"] == {"perplexity": 12.2}
    assert app_client.get("/v1/tasks").json()["tasks"] == catalog["tasks"]
    listed = {d["key"]: d for d in app_client.get("/v1/admin/diffs", headers=AUTH).json()["diffs"]}
    assert listed["ner"]["metrics"] == ner_metrics and listed["nli"]["metrics"] == {}


def test_entries_published_before_metrics_were_kept_read_as_none_recorded():
    from diffs_store.registry import Entry

    row = {"id": "a" * 64, "kind": "task", "key": "ner", "version": "1", "base_fingerprint": "sha256:" + "0" * 64,
           "base_model": "tiny", "language": "hau", "task": "ner", "task_type": "token-classification",
           "labels": '["O", "B-PER"]', "nnz": "3", "size": "10", "created_at": "2026-01-01T00:00:00+00:00",
           "published_at": "2026-01-01T00:00:00+00:00"}
    entry = Entry.from_hash(row)
    assert entry.metrics == {} and entry.dev_metrics == {} and entry.to_dict()["metrics"] == {}
    assert Entry.from_hash({**row, "metrics": '{"dev": {"hau": {"f1": 0.5}}}'}).dev_metrics == {"hau": {"f1": 0.5}}


def test_refusal_codes_the_console_words_are_the_servers():
    """Every refusal code the diff store raises has a sentence in the console, and no other."""
    from diffs_store import errors

    codes = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)} - {errors.BAD_REFERENCE}
    worded = set(re.findall(r"^\s+([a-z_]+): \"", (STATIC / "refusals.js").read_text(), re.MULTILINE))
    assert worded == codes
