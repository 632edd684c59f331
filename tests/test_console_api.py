"""What the console needs from the server, without a browser: the page and its files are
served from the package (and name no outside host), /v1/info and /v1/catalog answer, the
language-name table covers the MasakhaNER languages."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from service.console import STATIC
from tests.support import post_diff

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
    from tests.support import random_diff

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
