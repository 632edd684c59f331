"""Real files: base checkpoints as Hugging Face saves them and composable-sft SFTs as the
reference's ``SFT.save`` writes them (see ``reference_sft.py``), for BERT and XLM-R.

Ground truth is the reference's own ``SFT.apply`` on the model ``from_pretrained`` loads;
our import, ``csft merge`` (``build_composed_model``) and the service's live patch + head
assembly must give the same weights and the same outputs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from diffs_store import errors
from diffs_store.base import load_base_model
from diffs_store.compose import apply_plan, build_patch_plan, restore_plan
from diffs_store.format import SparseDiff
from diffs_store.merge import build_composed_model, merge_to_directory
from diffs_store.metadata import DiffKind, TaskType
from diffs_store.reference_import import import_reference
from tests.support import random_diff, state_sha
from tests.reference_sft import environment_for, hub_cache_entry, language_sft, save_checkpoint, task_sft
from service.app import create_app
from service.config import Settings
from service.model_host import ModelHost

NER = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
NLI = ("entailment", "neutral", "contradiction")
MASKED = {"bert": "mary went to [MASK] today", "xlmr": "mary went to <mask> today"}
PREFIX = {"bert": "bert.", "xlmr": "roberta."}
TOKEN = "t0ken"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        (arch, saved_from): save_checkpoint(root / f"{arch}-{saved_from}", arch, saved_from)
        for arch in ("bert", "xlmr")
        for saved_from in ("mlm", "model")
    }


def encode(ckpt: Path, text: str, **kw) -> dict:
    return dict(AutoTokenizer.from_pretrained(ckpt)(text, return_tensors="pt", **kw))


def assert_same_weights(ours: torch.nn.Module, reference: torch.nn.Module, exact: bool = True) -> None:
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys()
    for name, value in theirs.items():
        if exact:
            assert torch.equal(mine[name], value), name
        else:  # two deltas summed in another order: equal up to float32 rounding
            torch.testing.assert_close(mine[name], value, rtol=0, atol=1e-6, msg=name)


def served_model(host: ModelHost, diffs: list[SparseDiff], task_type: TaskType, labels=(), head=None):
    """What the service runs: the live encoder patched in place, the head assembled around
    it. Returns (model, plan); ``restore_plan(host.params, plan)`` undoes the patch."""
    plan = build_patch_plan(host.params, diffs)
    apply_plan(host.params, plan)
    return host.build_task_model(task_type, labels, head if head is not None else diffs[-1].dense), plan


# -- the base is the checkpoint, in every process ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "xlmr"])
def test_fingerprint_comes_from_the_checkpoint_in_every_process(checkpoints, arch):
    mlm, plain = checkpoints[(arch, "mlm")], checkpoints[(arch, "model")]
    code = "import sys; from diffs_store.base import load_base_model; print(load_base_model(sys.argv[1])[1].fingerprint)"
    other = subprocess.run([sys.executable, "-c", code, str(mlm)], capture_output=True, text=True, check=True)
    base, spec = load_base_model(str(mlm))
    assert other.stdout.strip() == spec.fingerprint == load_base_model(str(mlm))[1].fingerprint
    # A masked-LM checkpoint has no pooler: zero (recorded), never random.
    assert spec.initialised == ("pooler.dense.bias", "pooler.dense.weight")
    assert not base.pooler.dense.weight.any() and not base.pooler.dense.bias.any()
    # Everything else is the checkpoint's, bit for bit; its MLM head is listed for head assembly.
    stored = load_file(mlm / "model.safetensors")
    for name, p in base.named_parameters():
        if name not in spec.initialised:
            assert torch.equal(p, stored[PREFIX[arch] + name]), name
    assert {n for n in stored if not n.startswith(PREFIX[arch])} == spec.checkpoint_heads
    # A checkpoint saved from *Model keeps its own pooler.
    base2, spec2 = load_base_model(str(plain))
    assert spec2.initialised == () and spec2.checkpoint_heads == frozenset()
    assert torch.equal(base2.pooler.dense.weight, load_file(plain / "model.safetensors")["pooler.dense.weight"])


# -- fill-mask: a language SFT with all, some or none of its MLM head ------------------------


@pytest.mark.parametrize("head", ["trained", "bias", "none"])
@pytest.mark.parametrize("arch", ["bert", "xlmr"])
def test_language_sft_fill_mask_is_the_references_apply(checkpoints, tmp_path, arch, head):
    ckpt = checkpoints[(arch, "mlm")]
    sft = language_sft(ckpt, seed=1, head=head)
    base, spec = load_base_model(str(ckpt))
    diff = import_reference(sft.save(tmp_path / "sft"), spec, kind=DiffKind.LANGUAGE, language="sw")
    assert diff.meta.task_type is TaskType.FILL_MASK and set(diff.dense) == set(sft.abs)
    if arch == "xlmr" and head == "trained":  # lm_head.layer_norm does not match "LayerNorm": it trains
        assert "lm_head.layer_norm.weight" in diff.dense

    reference = AutoModelForMaskedLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    sft.apply(reference, with_abs=True)
    merged = build_composed_model(base, spec, [diff])
    assert_same_weights(merged, reference)

    inputs = encode(ckpt, MASKED[arch])
    with torch.no_grad():
        expected = reference(**inputs).logits
        served, _ = served_model(ModelHost(str(ckpt)), [diff], TaskType.FILL_MASK)
        torch.testing.assert_close(served(**inputs).logits, expected, rtol=0, atol=1e-5)
        out = tmp_path / "merged"
        merge_to_directory(str(ckpt), [diff], out)  # a plain HF directory, decoder tied on reload
        reloaded = AutoModelForMaskedLM.from_pretrained(out).eval()
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "xlmr"])
def test_partial_mlm_head_on_a_base_without_one_is_refused_by_name(checkpoints, tmp_path, arch):
    """On a checkpoint without an MLM head, run_mlm starts from a random head: tensors the
    SFT lacks exist nowhere, so the diff is refused naming one, not served with garbage."""
    sft = language_sft(checkpoints[(arch, "mlm")], seed=1, head="bias")
    _, spec = load_base_model(str(checkpoints[(arch, "model")]))
    with pytest.raises(errors.DiffError) as exc:
        import_reference(sft.save(tmp_path), spec, kind=DiffKind.LANGUAGE, language="sw", task_type=TaskType.FILL_MASK)
    assert exc.value.code == errors.BAD_LAYOUT and "no pretrained head" in str(exc.value)


# -- task SFTs (classifier in abs) composed with a language SFT without its abs --------------


@pytest.mark.parametrize(
    "arch,saved_from,model_cls,labels",
    [
        ("bert", "mlm", AutoModelForTokenClassification, NER),
        ("xlmr", "mlm", AutoModelForTokenClassification, NER),
        ("bert", "model", AutoModelForSequenceClassification, NLI),  # BERT's pooler is used
        ("xlmr", "model", AutoModelForSequenceClassification, NLI),  # classifier.dense + out_proj
    ],
)
def test_task_with_abs_then_language_without_abs_is_the_references_apply(checkpoints, tmp_path, arch, saved_from, model_cls, labels):
    ckpt = checkpoints[(arch, saved_from)]
    task_type = TaskType.TOKEN_CLASSIFICATION if model_cls is AutoModelForTokenClassification else TaskType.SEQUENCE_CLASSIFICATION
    lang_sft = language_sft(checkpoints[(arch, "mlm")], seed=1)
    t_sft = task_sft(ckpt, model_cls, len(labels), seed=2)
    base, spec = load_base_model(str(ckpt))
    if saved_from == "model":
        lang_sft.abs.clear()  # its MLM head needs the masked-LM checkpoint; under a task it is unused
    lang = import_reference(lang_sft.save(tmp_path / "lang"), spec, kind=DiffKind.LANGUAGE, language="sw")
    task = import_reference(t_sft.save(tmp_path / "task"), spec, kind=DiffKind.TASK, language="en", task="t",
                            task_type=task_type, labels=labels)
    assert set(task.dense) == set(t_sft.abs) and all(n.startswith("classifier.") for n in task.dense)

    reference = model_cls.from_pretrained(ckpt, num_labels=len(labels), dtype=torch.float32).eval()
    t_sft.apply(reference, with_abs=True)
    lang_sft.apply(reference, with_abs=False)
    merged = build_composed_model(base, spec, [lang, task])
    assert_same_weights(merged, reference, exact=False)

    inputs = encode(ckpt, "john visited lagos and kano")
    with torch.no_grad():
        expected = reference(**inputs).logits
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=0, atol=1e-5)
        served, _ = served_model(ModelHost(str(ckpt)), [lang, task], task_type, labels, task.dense)
        torch.testing.assert_close(served(**inputs).logits, expected, rtol=0, atol=1e-5)


# -- imported in one process, validated in another, served in a third -----------------------


def csft(*args: str, env=None) -> subprocess.CompletedProcess:
    """The installed ``csft`` command, in a process of its own."""
    return subprocess.run([str(Path(sys.executable).parent / "csft"), *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "xlmr"])
def test_hub_named_sft_imported_validated_and_served_across_processes(checkpoints, tmp_path, arch):
    ckpt = checkpoints[(arch, "mlm")]
    cache = tmp_path / "hub"
    lang_sft = language_sft(ckpt, seed=3, head="bias")
    hub_cache_entry(cache, f"cambridgeltl/{arch}-lang-sft-sw-small", lang_sft.save(tmp_path / "lang"))
    t_sft = task_sft(ckpt, AutoModelForTokenClassification, len(NER), seed=4)
    t_dir = t_sft.save(tmp_path / "task").parent

    env = environment_for(cache)
    r = csft("diff", "import-csft", f"cambridgeltl/{arch}-lang-sft-sw-small", "--base", str(ckpt),
             "--kind", "language", "--language", "sw", "-o", str(tmp_path / "sw.safetensors"), env=env)
    assert r.returncode == 0, r.stderr
    r = csft("diff", "validate", str(tmp_path / "sw.safetensors"), "--base", str(ckpt))
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stderr
    _, spec = load_base_model(str(ckpt))
    import_reference(t_dir, spec, kind=DiffKind.TASK, language="en", task="ner", task_type=TaskType.TOKEN_CLASSIFICATION,
                     labels=NER).save(tmp_path / "ner.safetensors")

    settings = Settings(base_model=str(ckpt), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu")
    with TestClient(create_app(settings)) as client:
        for name in ("sw", "ner"):
            files = {"file": (name, (tmp_path / f"{name}.safetensors").read_bytes())}
            r = client.post("/v1/admin/diffs", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 201, r.text
        fill = client.post("/v1/predict", json={"language": "sw", "inputs": [MASKED[arch]]})
        ner = client.post("/v1/predict", json={"language": "sw", "task": "ner", "inputs": ["john visited lagos"],
                                               "return_logits": True,
                                               "parameters": {"aggregation_strategy": "none", "ignore_labels": []}})
    assert fill.status_code == 200 and ner.status_code == 200, (fill.text, ner.text)

    reference = AutoModelForMaskedLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    lang_sft.apply(reference, with_abs=True)
    inputs = encode(ckpt, MASKED[arch])
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    with torch.no_grad():
        position = int((inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
        probs = torch.softmax(reference(**inputs).logits[0, position], -1)
    top = fill.json()["predictions"][0]["masks"][0]
    assert [t["token"] for t in top] == probs.topk(5).indices.tolist()
    assert [t["token_str"] for t in top] == [tokenizer.decode([i]) for i in probs.topk(5).indices.tolist()]
    assert [t["score"] for t in top] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-5)

    ner_ref = AutoModelForTokenClassification.from_pretrained(ckpt, num_labels=len(NER), dtype=torch.float32).eval()
    t_sft.apply(ner_ref, with_abs=True)
    lang_sft.apply(ner_ref, with_abs=False)
    words = ["john", "visited", "lagos"]
    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    word_ids = enc.word_ids()
    first = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    with torch.no_grad():
        expected = ner_ref(**enc).logits[0, first]
    answer = ner.json()["predictions"][0]
    assert len(answer["logits"]) == 1  # one window
    assert torch.tensor(answer["logits"][0])[first] == pytest.approx(expected, abs=1e-4)
    by_token = {e["index"]: e["entity"] for e in answer["entities"]}
    assert [by_token[i] for i in first] == [NER[i] for i in expected.argmax(-1).tolist()]


# -- our own trainer's language diffs without the decoder (--no-store-decoder) --------------


@pytest.mark.slow
def test_hub_name_not_in_the_offline_cache_is_one_line_exit_2(tmp_path):
    r = csft("diff", "import-csft", "cambridgeltl/xlmr-lang-sft-xx-small", "--base", "unused", "--kind", "language",
             "--language", "sw", "-o", str(tmp_path / "x.safetensors"), env=environment_for(tmp_path / "empty-cache"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cambridgeltl/xlmr-lang-sft-xx-small" in r.stderr and not (tmp_path / "x.safetensors").exists()


def test_language_diff_without_decoder_merges_and_serves_alike(tiny_base_dir):
    """A head-less base: the diff brings the MLM head but not the decoder, which is tied
    to the (patched) input embeddings in merge and service alike."""
    base, spec = load_base_model(str(tiny_base_dir))
    diff = random_diff(base, spec, DiffKind.LANGUAGE, language="hau", seed=5)
    assert "cls.predictions.decoder.weight" not in diff.dense
    merged = build_composed_model(base, spec, [diff])
    assert merged.cls.predictions.decoder.weight is merged.bert.embeddings.word_embeddings.weight
    host = ModelHost(str(tiny_base_dir))
    pristine = state_sha(host.params)
    inputs = encode(tiny_base_dir, "john went to [MASK]")
    with torch.no_grad():
        served, plan = served_model(host, [diff], TaskType.FILL_MASK)
        torch.testing.assert_close(served(**inputs).logits, merged(**inputs).logits, rtol=0, atol=1e-6)
    restore_plan(host.params, plan)
    assert state_sha(host.params) == pristine


def test_head_cache_counts_bytes_not_heads(checkpoints, tmp_path):
    """Heads are evicted by bytes; a tied decoder is the encoder's and costs nothing."""
    ckpt = checkpoints[("bert", "mlm")]
    host = ModelHost(str(ckpt))
    fill = host.build_task_model(TaskType.FILL_MASK, (), {})  # everything from the checkpoint
    own = {n: p for n, p in fill.named_parameters() if not n.startswith("bert.")}
    assert host.head_nbytes(fill) == sum(p.numel() * 4 for p in own.values())
    assert host.head_nbytes(fill) < sum(p.numel() * 4 for p in host.encoder.parameters())

    from service.lru import ByteLRU

    cache = ByteLRU(max_bytes=2 * host.head_nbytes(fill) + 1, size=host.head_nbytes)
    for i in range(5):
        cache.put(i, host.build_task_model(TaskType.FILL_MASK, (), {}))
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes and 4 in cache and 3 in cache
    huge = ByteLRU(max_bytes=1, size=host.head_nbytes)
    huge.put("a", fill)
    assert len(huge) == 1  # the newest is always kept
