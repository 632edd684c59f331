"""A real `csft serve` process (uvicorn on loopback) under concurrent mixed traffic: every
answer must equal the offline-merged model of its pair (the `csft merge` composition),
whichever plan tier (layers, or a hot pair's union plan) wrote the pair."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
import torch

from diffs_store.base import load_base_model, load_tokenizer
from diffs_store.format import parse_diff
from diffs_store.merge import build_composed_model
from diffs_store.metadata import TaskType
from service.tasks import TASKS, Limits
from service_fixtures import LANGUAGES, WORDS, running_server, upload
from service_fixtures import TASKS as TASKS_BY_NAME

TOKEN = "e2e-token"


@pytest.fixture(scope="module")
def server(tiny_base_dir, tiny_diffs, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("serve-data")
    with running_server(tiny_base_dir, data_dir, TOKEN, MAX_BATCH_SIZE="16", MAX_WAIT_MS="3") as url:
        for (_, key), data in tiny_diffs.items():
            r = upload(url, TOKEN, key, data)
            assert r.status_code == 201, r.text
        yield url


def sentence(rng: random.Random) -> str:
    plain = [w for w in WORDS if not w.startswith("##")]
    return " ".join(rng.choice(plain) for _ in range(rng.randint(1, 9)))


def make_input(task: str, rng: random.Random):
    task_type = TASKS_BY_NAME[task][0]
    if task_type is TaskType.SEQUENCE_CLASSIFICATION:
        return {"text": sentence(rng), "text_pair": sentence(rng)}
    if task_type is TaskType.QUESTION_ANSWERING:
        return {"question": sentence(rng), "context": sentence(rng) + " " + sentence(rng)}
    return sentence(rng)


def expected(tiny_base_dir, tiny_diffs, language, task, inputs):
    """Offline: merge the pair into a plain model and run each input alone."""
    base, spec = load_base_model(str(tiny_base_dir))
    tokenizer = load_tokenizer(str(tiny_base_dir))
    diffs = [parse_diff(tiny_diffs[("language", language)]), parse_diff(tiny_diffs[("task", task)])]
    model = build_composed_model(base, spec, diffs)
    task_type, labels = TASKS_BY_NAME[task]
    io = TASKS[task_type]
    params = io.parse_params({})
    answers = []
    for x in inputs:  # one at a time, unbatched
        prepared = io.prepare(tokenizer, x, params, Limits(64))
        outputs = [io.forward(model, tokenizer, [w], torch.device("cpu"))[0] for w in prepared.windows]
        answers.append(io.predict_view(io.postprocess(tokenizer, prepared, outputs, params, labels), outputs, True))
    return answers


def assert_same(got, want) -> None:
    """Labels, words and offsets equal; scores and logits to float32 rounding."""
    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, float):
        assert abs(got - want) <= 1e-5
    else:
        assert got == want


def test_concurrent_mixed_pairs_match_offline_merge(server, tiny_base_dir, tiny_diffs):
    rng = random.Random(1)
    pairs = [(l, t) for l in LANGUAGES for t in TASKS_BY_NAME]  # 20 pairs
    requests = []
    for _ in range(240):
        language, task = rng.choice(pairs)
        requests.append((language, task, [make_input(task, rng) for _ in range(rng.randint(1, 3))]))

    async def fire():
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=server, timeout=120, limits=limits) as client:
            return await asyncio.gather(*[
                client.post("/v1/predict", json={"language": l, "task": t, "inputs": x, "return_logits": True}) for l, t, x in requests
            ])

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    by_pair: dict = {}
    for (language, task, inputs), r in zip(requests, responses):
        by_pair.setdefault((language, task), []).append((inputs, r.json()["predictions"]))
    assert len(by_pair) >= 10
    for (language, task), items in by_pair.items():
        flat_inputs = [x for inputs, _ in items for x in inputs]
        flat_got = [p for _, preds in items for p in preds]
        for got, want in zip(flat_got, expected(tiny_base_dir, tiny_diffs, language, task, flat_inputs)):
            assert_same(got, want)
    metrics = httpx.get(f"{server}/metrics").text
    assert "csft_pair_switches_total" in metrics and "csft_batch_inputs_bucket" in metrics
    # The hot-pair tier (on by default) served some of those switches: answers equal merge across tiers.
    union = [line for line in metrics.splitlines() if line.startswith("csft_pair_switches_total{") and 'tier="union"' in line]
    assert sum(float(line.split()[-1]) for line in union) > 0, metrics
