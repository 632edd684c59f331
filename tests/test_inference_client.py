"""The real ``huggingface_hub.InferenceClient``, unchanged, against a live `csft serve`: each
pair's ``inference_url`` from ``GET /v1/pairs`` is a model for the client, for the four task
types and for a task without a language."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from tests.support import running_server, upload

pytestmark = pytest.mark.slow  # a real `csft serve` process

TOKEN = "client-token"


@pytest.fixture(scope="module")
def server(tiny_base_dir, tiny_diffs, tmp_path_factory):
    with running_server(tiny_base_dir, tmp_path_factory.mktemp("hf-data"), TOKEN) as url:
        for (_, key), data in tiny_diffs.items():
            assert upload(url, TOKEN, key, data).status_code == 201
        yield url


@pytest.fixture(autouse=True)
def online_for_the_client(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 (no model hub); the client only talks to our
    loopback server here, which the hub library's offline mode would refuse too."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def url_of(server: str, language: str | None, task: str | None) -> str:
    pairs = httpx.get(f"{server}/v1/pairs").json()["pairs"]
    match = next(p for p in pairs if p["language"] == language and p["task"] == task)
    assert match["inference_url"] == server + match["inference_path"]
    return match["inference_url"]


def test_token_classification(server):
    client = InferenceClient(model=url_of(server, "hau", "ner"))
    text = "john  went to\nlagos , mary"
    entities = client.token_classification(text, aggregation_strategy="simple", ignore_labels=[])
    assert entities and all(text[e.start : e.end].lower().replace("\n", " ") for e in entities)
    assert {e.entity_group for e in entities} <= {"O", "PER", "LOC", "ORG"}
    tokens = client.token_classification(text, aggregation_strategy="none", ignore_labels=[])
    assert [t.word for t in tokens] == ["john", "went", "to", "lagos", ",", "mary"]
    assert [text[t.start : t.end] for t in tokens] == ["john", "went", "to", "lagos", ",", "mary"]


def test_text_classification(server):
    client = InferenceClient(model=url_of(server, "swa", "nli"))
    labels = client.text_classification("john went to lagos")
    assert sorted(x.label for x in labels) == ["contradiction", "entailment", "neutral"]
    assert labels[0].score >= labels[1].score >= labels[2].score
    assert len(client.text_classification("john went to lagos", top_k=1)) == 1


def test_question_answering(server):
    client = InferenceClient(model=url_of(server, "yor", "qa"))
    context = "john went to lagos with mary"
    answer = client.question_answering(question="who went", context=context)
    assert context[answer.start : answer.end] == answer.answer and 0 <= answer.score <= 1
    answers = client.question_answering(question="who went", context=context, top_k=3)
    assert isinstance(answers, list) and len(answers) == 3


def test_fill_mask(server):
    client = InferenceClient(model=url_of(server, "yor", None))
    filled = client.fill_mask("john [MASK] to lagos", top_k=3)
    assert len(filled) == 3 and all(f.sequence.startswith("john") for f in filled)
    only = client.fill_mask("john [MASK] to lagos", targets=["went", "lives"])
    assert {f.token_str for f in only} == {"went", "lives"}


def test_a_task_without_a_language(server):
    client = InferenceClient(model=url_of(server, None, "ner"))
    tokens = client.token_classification("mary lives in paris", aggregation_strategy="none", ignore_labels=[])
    assert [t.word for t in tokens] == ["mary", "lives", "in", "paris"]
    direct = httpx.post(f"{server}/v1/predict", json={"task": "ner", "inputs": ["mary lives in paris"],
                                                       "parameters": {"aggregation_strategy": "none", "ignore_labels": []}})
    assert [e["score"] for e in direct.json()["predictions"][0]["entities"]] == [t.score for t in tokens]


def test_errors_reach_the_client_with_the_servers_words(server):
    client = InferenceClient(model=url_of(server, "hau", "ner"))
    with pytest.raises(HfHubHTTPError) as err:
        client.token_classification("john", aggregation_strategy="most")
    assert err.value.response.status_code == 422 and "aggregation_strategy" in err.value.response.text
    with pytest.raises(HfHubHTTPError) as err:
        InferenceClient(model=f"{server}/models/fra/ner").token_classification("john")
    assert err.value.response.status_code == 404
