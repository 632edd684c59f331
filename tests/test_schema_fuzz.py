"""The OpenAPI schema is what the server does: Schemathesis (an independent fuzzer, driven by
the schema alone) sends generated requests to a real uvicorn server with the admin token and
every diff loaded, and checks that no answer is a 5xx, that every status and content type is
one the schema documents for that route, that every body matches its documented schema, and
that no body holds a server path.

Bounded in time: ``MAX_EXAMPLES`` per operation (the number of requests and the run's wall
time are printed with -s).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from diffs_store.redis_connection import shutdown_embedded
from tests.live_server import LiveServer
from tests.support import AUTH, TOKEN, upload_all

pytestmark = pytest.mark.slow  # Schemathesis over every route of a live server
from service.config import Settings

MAX_EXAMPLES = 100
# Routes left out of the run while they are being rewritten (a regex of paths, e.g.
# r"^/v1/predict$|^/models/"); None fuzzes every route in the schema.
EXCLUDED_PATHS_WHILE_REWRITTEN: str | None = None


@pytest.fixture(scope="module")
def live_api(tiny_base_dir, tiny_diffs, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    settings_ = Settings(base_model=str(tiny_base_dir), data_dir=data_dir, admin_token=TOKEN, device="cpu",
                         torch_threads=1, max_upload_bytes=4 * 1024**2, max_body_bytes=64 * 1024)
    try:
        with LiveServer(settings_) as server:
            upload_all(server.url, {**tiny_diffs, ("language", "fon"): _headless_language(tiny_base_dir)})
            server.data_dir = data_dir
            t0 = time.monotonic()
            yield server
            print(f"\nschema fuzz: {sum(SEEN.values())} requests in {time.monotonic() - t0:.1f} s")
            for (method, path, code), n in sorted(SEEN.items()):
                print(f"  {method} {path} -> {code}: {n}")
    finally:
        shutdown_embedded(data_dir)


def _headless_language(base_dir) -> bytes:
    """A language diff without an MLM head: it composes with tasks but cannot answer alone."""
    from diffs_store.base import load_base_model
    from diffs_store.metadata import DiffKind
    from tests.support import random_diff

    model, spec = load_base_model(str(base_dir))
    return random_diff(model, spec, DiffKind.LANGUAGE, language="fon", with_head=False, seed=7).to_bytes()


def _spec() -> dict:
    """The schema the app serves at /openapi.json (built without starting it: collection
    needs it before any fixture runs; the first test checks the live one is the same)."""
    from service.app import create_app

    return create_app(Settings(admin_token=TOKEN)).openapi()


SPEC = _spec()
schema = schemathesis.openapi.from_dict(SPEC)
if EXCLUDED_PATHS_WHILE_REWRITTEN:
    schema = schema.exclude(path_regex=EXCLUDED_PATHS_WHILE_REWRITTEN)


def test_the_live_server_serves_this_schema(live_api):
    import httpx

    assert httpx.get(live_api.url + "/openapi.json", timeout=10).json() == SPEC


SEEN: Counter[tuple[str, str, int]] = Counter()  # (method, path, status) -> answers


def no_server_path(live_api):
    @schemathesis.check
    def no_server_paths(ctx, response, case):
        """No answer names a file or directory of the server."""
        SEEN[(case.method, case.path, response.status_code)] += 1
        body = response.text
        for path in (str(live_api.data_dir), str(live_api.data_dir.resolve())):
            assert path not in body, f"the body names the server path {path}"
    return no_server_paths


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_what_the_schema_says(case, live_api):
    case.call_and_validate(
        base_url=live_api.url,
        headers=AUTH,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
                no_server_path(live_api)],
    )


INPUTS = {
    "token-classification": ["john went to lagos"],
    "sequence-classification": ["mary lives in kano"],
    "question-answering": [{"question": "who went", "context": "john went to lagos"}],
    "fill-mask": ["john [MASK] to lagos"],
}


def test_every_listed_pair_is_served(live_api):
    """/v1/pairs lists only what answers: the headless language is listed with tasks, never alone."""
    import httpx

    with httpx.Client(base_url=live_api.url, timeout=60) as client:
        pairs = [{"language": p["language"], "task": p["task"]} for p in client.get("/v1/pairs").json()["pairs"]]
        task_types = {t["task"]: t["task_type"] for t in client.get("/v1/tasks").json()["tasks"]}
        assert {"language": "fon", "task": None} not in pairs
        assert {"language": "fon", "task": "ner"} in pairs and {"language": "hau", "task": None} in pairs
        for pair in pairs:
            kind = task_types[pair["task"]] if pair["task"] else "fill-mask"
            body = {k: v for k, v in pair.items() if v is not None} | {"inputs": INPUTS[kind]}
            r = client.post("/v1/predict", json=body)
            assert r.status_code == 200, (pair, r.status_code, r.text)


def test_allow_names_every_method_of_the_path(live_api):
    import httpx

    r = httpx.options(live_api.url + "/v1/admin/diffs", headers=AUTH, timeout=10)
    assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS, POST"
    r = httpx.put(live_api.url + "/v1/admin/diffs", headers=AUTH, timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "GET, OPTIONS, POST"
    assert r.json()["detail"] == "PUT is not allowed here; allowed: GET, OPTIONS, POST"
    r = httpx.post(live_api.url + "/healthz", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "GET, OPTIONS"


def test_422_detail_is_a_string_as_documented(live_api):
    import httpx

    r = httpx.delete(live_api.url + "/v1/admin/diffs/" + "0" * 64, headers=AUTH, timeout=10)
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)
    r = httpx.post(live_api.url + "/v1/predict", json={"inputs": []}, timeout=10)
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    schema = SPEC["paths"]["/v1/predict"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert SPEC["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    assert list(SPEC["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
