"""Composition math: plans, exact restore, order independence, merged model = base + diffs."""

from __future__ import annotations


import pytest
import torch

from diffs_store.base import base_params
from diffs_store.compose import apply_plan, build_patch_plan, composed_state_dict, restore_plan
from diffs_store.merge import build_composed_model
from diffs_store.metadata import DiffKind, TaskType
from tests.support import random_diff, tiny_base, state_sha




@pytest.fixture(scope="module")
def base():
    return tiny_base()


def test_plan_equals_dense_sum_and_is_order_free(base):
    model, spec = base
    lang = random_diff(model, spec, DiffKind.LANGUAGE, seed=1, density=0.2)
    task = random_diff(model, spec, DiffKind.TASK, seed=2, density=0.2)
    params = base_params(model)
    a = composed_state_dict(params, [lang, task])
    b = composed_state_dict(params, [task, lang])
    for name, p in params.items():
        assert torch.equal(a[name], b[name])
        dense = p.detach().clone().view(-1)
        for d in (lang, task):
            if name in d.sparse:
                dense.index_add_(0, d.sparse[name].indices.long(), d.sparse[name].values.float())
        torch.testing.assert_close(a[name].view(-1), dense, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_apply_restore_is_bit_exact_over_many_cycles(dtype):
    model, spec = tiny_base()
    model.to(dtype)
    params = base_params(model)
    before = state_sha(params)
    diffs = [random_diff(model, spec, DiffKind.LANGUAGE, seed=s, language=["hau", "swa", "yor"][s]) for s in range(3)]
    diffs += [random_diff(model, spec, DiffKind.TASK, seed=10 + s, task=f"t{s}") for s in range(2)]
    plans = [build_patch_plan(params, [diffs[i], diffs[3 + j]]) for i in range(3) for j in range(2)]
    patched_shas = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        plan = plans[int(torch.randint(len(plans), (1,), generator=gen))]
        apply_plan(params, plan)
        patched_shas.add(state_sha(params))
        restore_plan(params, plan)
    assert state_sha(params) == before
    assert len(patched_shas) == len(plans)  # each pair patched to a different, stable state


def test_merged_model_equals_base_plus_diffs(base):
    model, spec = base
    lang = random_diff(model, spec, DiffKind.LANGUAGE, seed=3)
    task = random_diff(model, spec, DiffKind.TASK, seed=4)
    merged = build_composed_model(model, spec, [lang, task])
    assert type(merged).__name__ == "BertForTokenClassification"
    assert merged.config.id2label[1] == "B-PER"
    expected = composed_state_dict(base_params(model), [lang, task])
    got = base_params(merged)
    for name, t in got.items():
        assert torch.equal(t, expected[name]), name
    assert torch.equal(merged.classifier.weight, task.dense["classifier.weight"])
    assert state_sha(base_params(model)) == state_sha(base_params(tiny_base()[0]))  # base untouched


def test_language_only_merge_builds_masked_lm(base):
    model, spec = base
    lang = random_diff(model, spec, DiffKind.LANGUAGE, seed=5)
    merged = build_composed_model(model, spec, [lang])
    assert type(merged).__name__ == "BertForMaskedLM"
    assert torch.equal(merged.cls.predictions.transform.dense.weight, lang.dense["cls.predictions.transform.dense.weight"])


def test_sequence_classification_and_qa_heads(base):
    model, spec = base
    for task_type, cls in [
        (TaskType.SEQUENCE_CLASSIFICATION, "BertForSequenceClassification"),
        (TaskType.QUESTION_ANSWERING, "BertForQuestionAnswering"),
    ]:
        task = random_diff(model, spec, DiffKind.TASK, seed=6, task="t", task_type=task_type, labels=("a", "b", "c"))
        assert type(build_composed_model(model, spec, [task])).__name__ == cls
