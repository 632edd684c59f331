"""The Ray Serve application (service.scaleout) on a local 2-CPU Ray instance, loopback only.

One module-scoped cluster and application with two model replicas, shared by every test
(start-up costs most of the time); the replica-kill test runs last. Answers are compared
with the offline merge of their pair (diffs_store.merge, as in test_service_e2e).
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from diffs_store.base import load_base_model  # noqa: E402
from diffs_store.metadata import DiffKind  # noqa: E402
from factories import random_diff  # noqa: E402
from service.config import Settings  # noqa: E402
from service.scaleout.ingress import REPLICA_HEADER, ROUTING_HEADER, SWITCHES_HEADER  # noqa: E402
from service.scaleout.launch import APP_NAME, deploy, free_port, shared_registry  # noqa: E402
from service.scaleout.options import ScaleOutOptions, settings_args  # noqa: E402
from test_service_e2e import assert_same, expected, make_input  # noqa: E402

TOKEN = "ray-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAIRS = [("hau", "ner"), ("swa", "pos"), ("yor", "nli"), ("pcm", "qa")]


@pytest.fixture(scope="module")
def app_url(tiny_base_dir, tiny_diffs, tmp_path_factory):
    settings = Settings(
        base_model=str(tiny_base_dir), data_dir=tmp_path_factory.mktemp("ray-data"), admin_token=TOKEN,
        device="cpu", max_batch_size=16, max_wait_ms=3, registry_poll_ms=100, redis_url=None,
        # Routing is under test, not prewarming: its CPU burst after each upload (every
        # replica plans all 20 pairs) slows answers on a 2-core CI machine past Serve's
        # model-id matching timeout, and Serve then routes a pair elsewhere.
        prewarm=False,
    )
    with shared_registry(settings) as shared:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            port = free_port()
            deploy(ScaleOutOptions(replicas=2, replica_cpus=1, settings=settings_args(shared)), "127.0.0.1", port)
            url = f"http://127.0.0.1:{port}"
            for (_, key), data in tiny_diffs.items():
                upload(url, data, key)
            yield url
        finally:
            serve.shutdown()
            ray.shutdown()


def upload(url: str, data: bytes, name: str) -> dict:
    r = httpx.post(f"{url}/v1/admin/diffs", files={"file": (f"{name}.safetensors", data)}, headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def predict(url: str, language: str, task: str, inputs: list, routing: str | None = None) -> httpx.Response:
    headers = {ROUTING_HEADER: routing} if routing else {}
    return httpx.post(f"{url}/v1/predict", json={"language": language, "task": task, "inputs": inputs, "return_logits": True},
                      headers=headers, timeout=60)


def check_answers(tiny_base_dir, diffs, language, task, answered: list[tuple[list, list]]) -> None:
    inputs = [x for xs, _ in answered for x in xs]
    got = [p for _, preds in answered for p in preds]
    for g, w in zip(got, expected(tiny_base_dir, diffs, language, task, inputs), strict=True):
        assert_same(g, w)


def serve_on_every_replica(url, language, task, rng, tries: int = 20, burst: int = 4) -> dict[str, list]:
    """Requests with pair routing bypassed until both replicas have answered. Sent in
    concurrent bursts: Serve's default router picks the replica with fewer requests in
    flight, so one request at a time can land on the same replica every time."""

    async def one_burst(client: httpx.AsyncClient) -> list[tuple[list, httpx.Response]]:
        batch = [[make_input(task, rng)] for _ in range(burst)]
        sent = [client.post("/v1/predict", json={"language": language, "task": task, "inputs": x, "return_logits": True},
                            headers={ROUTING_HEADER: "random"}) for x in batch]
        return list(zip(batch, await asyncio.gather(*sent)))

    async def run() -> dict[str, list]:
        seen: dict[str, list] = {}
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for _ in range(tries):
                for inputs, r in await one_burst(client):
                    assert r.status_code == 200, r.text
                    seen.setdefault(r.headers[REPLICA_HEADER], []).append((inputs, r.json()))
                if len(seen) == 2:
                    break
        return seen

    seen = asyncio.run(run())
    assert len(seen) == 2, f"only {list(seen)} answered"
    return seen


def test_pairs_match_merge_and_stick_to_their_replica(app_url, tiny_base_dir, tiny_diffs):
    rng = random.Random(3)
    for language, task in PAIRS:  # load each pair once, then mixed concurrent traffic
        assert predict(app_url, language, task, [make_input(task, rng)]).status_code == 200
    # A replica pushes its loaded pairs every 0.1 s and the ingress's router learns them by
    # long poll; a request sent before that reaches the router goes to the replica with the
    # fewest pairs, which loads the pair too (for good: 4 pairs are within every replica's
    # share). There is no signal to wait on, so give the propagation a second.
    time.sleep(1.0)
    requests = [(l, t, [make_input(t, rng) for _ in range(rng.randint(1, 3))]) for l, t in rng.choices(PAIRS, k=80)]

    async def fire():
        async with httpx.AsyncClient(base_url=app_url, timeout=60) as client:
            sem = asyncio.Semaphore(8)

            async def one(l, t, x):
                async with sem:
                    return await client.post("/v1/predict", json={"language": l, "task": t, "inputs": x, "return_logits": True})

            return await asyncio.gather(*[one(*req) for req in requests])

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    by_pair: dict = {}
    replicas: dict = {}
    for (language, task, inputs), r in zip(requests, responses):
        by_pair.setdefault((language, task), []).append((inputs, r.json()["predictions"]))
        replicas.setdefault((language, task), []).append(r.headers[REPLICA_HEADER])
        assert int(r.headers[SWITCHES_HEADER]) >= 1
    for (language, task), answered in by_pair.items():
        check_answers(tiny_base_dir, tiny_diffs, language, task, answered)
    # Affinity: a pair's requests go to the replica that holds it. Serve's multiplexing is
    # best effort (a request whose replica cannot take it in time goes elsewhere, which a
    # loaded CI machine can cause), so a strong majority per pair, not every request.
    for pair, held in replicas.items():
        assert max(held.count(r) for r in set(held)) >= 0.8 * len(held), (pair, held)
    sticky = sum(max(held.count(r) for r in set(held)) for held in replicas.values())
    assert sticky >= 0.9 * len(requests), replicas
    metrics = httpx.get(f"{app_url}/metrics").text
    for replica in {r for held in replicas.values() for r in held}:
        assert f'csft_replica_switches{{replica="{replica}"}}' in metrics
        assert f'csft_replica_queue_depth{{replica="{replica}"}}' in metrics
    # A replica reports at most its share of the catalog loaded (5 languages x 4 tasks x
    # 1.25 / 2 replicas), not the whole plan budget: else every pair ends up everywhere.
    model = serve.get_deployment_handle("PairModel", app_name=APP_NAME)
    assert {model.capacity.remote().result() for _ in range(6)} == {13}


def test_catalog_and_health_through_the_ingress(app_url):
    assert httpx.get(f"{app_url}/readyz").json()["status"] == "ready"
    assert {"hau", "swa", "yor", "pcm", "ibo"} <= set(httpx.get(f"{app_url}/v1/languages").json()["languages"])
    assert predict(app_url, "zzz", "ner", ["x"]).status_code == 404
    assert predict(app_url, "hau", "ner", ["x"] * 100).status_code == 413


def test_upload_is_served_by_every_replica(app_url, tiny_base_dir, tiny_diffs):
    model, spec = load_base_model(str(tiny_base_dir))
    data = random_diff(model, spec, DiffKind.LANGUAGE, language="xho", seed=31, density=0.1).to_bytes()
    upload(app_url, data, "xho")
    seen = serve_on_every_replica(app_url, "xho", "ner", random.Random(4))
    diffs = {**tiny_diffs, ("language", "xho"): data}
    for answered in seen.values():
        check_answers(tiny_base_dir, diffs, "xho", "ner", [(x, r["predictions"]) for x, r in answered])


def test_retired_version_stops_being_served_everywhere(app_url, tiny_base_dir, tiny_diffs):
    model, spec = load_base_model(str(tiny_base_dir))
    v2 = random_diff(model, spec, DiffKind.LANGUAGE, language="hau", seed=77, density=0.1).to_bytes()
    entry = upload(app_url, v2, "hau-v2")
    rng = random.Random(5)
    for answered in serve_on_every_replica(app_url, "hau", "pos", rng).values():
        assert all(r["diffs"]["language"]["id"] == entry["id"] for _, r in answered)
        check_answers(tiny_base_dir, {**tiny_diffs, ("language", "hau"): v2}, "hau", "pos",
                      [(x, r["predictions"]) for x, r in answered])
    r = httpx.delete(f"{app_url}/v1/admin/diffs/{entry['id']}", headers=AUTH)
    assert r.status_code == 200, r.text
    for answered in serve_on_every_replica(app_url, "hau", "pos", rng).values():
        assert all(r["diffs"]["language"]["id"] != entry["id"] for _, r in answered)
        check_answers(tiny_base_dir, tiny_diffs, "hau", "pos", [(x, r["predictions"]) for x, r in answered])


def test_replica_killed_under_traffic_loses_no_retried_request(app_url, tiny_base_dir, tiny_diffs):
    rng = random.Random(6)
    requests = [(l, t, [make_input(t, rng)]) for l, t in rng.choices(PAIRS, k=60)]
    victim = predict(app_url, *PAIRS[0], [make_input(PAIRS[0][1], rng)]).headers[REPLICA_HEADER]
    attempts = []

    async def fire():
        async with httpx.AsyncClient(base_url=app_url, timeout=60) as client:
            sem = asyncio.Semaphore(6)

            async def one(i, l, t, x):
                async with sem:
                    if i == 10:
                        kill_replica(victim)
                    for attempt in range(20):  # the client retries what was not answered
                        try:
                            r = await client.post("/v1/predict", json={"language": l, "task": t, "inputs": x, "return_logits": True})
                            if r.status_code == 200:
                                attempts.append(attempt)
                                return r.json()["predictions"]
                        except httpx.TransportError:
                            pass
                        await asyncio.sleep(0.5)
                    raise AssertionError(f"request {i} never answered")

            return await asyncio.gather(*[one(i, *req) for i, req in enumerate(requests)])

    answers = asyncio.run(fire())
    by_pair: dict = {}
    for (language, task, inputs), preds in zip(requests, answers):
        by_pair.setdefault((language, task), []).append((inputs, preds))
    for (language, task), answered in by_pair.items():
        check_answers(tiny_base_dir, tiny_diffs, language, task, answered)
    assert len(attempts) == len(requests)


def kill_replica(unique_id: str) -> None:
    """SIGKILL-equivalent for the replica actor whose id the ingress reported."""
    found = [a for a in ray.util.list_named_actors(all_namespaces=True) if unique_id in a["name"]]
    assert found, unique_id
    ray.kill(ray.get_actor(found[0]["name"], namespace=found[0]["namespace"]), no_restart=True)
