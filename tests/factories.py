"""Tiny models and random diffs built inside the tests (no model hub, no network)."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import AutoModel, BertConfig, PreTrainedModel, XLMRobertaConfig

from diffs_store.base import BaseSpec, base_params
from diffs_store.format import SparseDiff, SparseTensorDiff
from diffs_store.heads import head_layout
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType


def tiny_bert_config(vocab_size: int = 120, **kw) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, **kw,
    )


def tiny_xlmr_config(vocab_size: int = 120) -> XLMRobertaConfig:
    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=70, pad_token_id=1,
    )


def tiny_base(config=None, seed: int = 0) -> tuple[PreTrainedModel, BaseSpec]:
    torch.manual_seed(seed)
    model = AutoModel.from_config(config or tiny_bert_config())
    model.eval()
    return model, BaseSpec.from_model("tiny-bert", model)


def random_sparse(params, density: float, gen: torch.Generator, dtype=torch.float32, scale: float = 0.05):
    sparse = {}
    for name, p in params.items():
        if "LayerNorm" in name:
            continue
        n = p.numel()
        k = max(1, int(n * density))
        idx = torch.randperm(n, generator=gen)[:k].sort().values
        val = (torch.randn(k, generator=gen) * scale).to(dtype)
        sparse[name] = SparseTensorDiff(idx, val)
    return sparse


def random_diff(
    model: PreTrainedModel,
    spec: BaseSpec,
    kind: DiffKind = DiffKind.LANGUAGE,
    *,
    language: str | None = "hau",
    task: str = "ner",
    task_type: TaskType = TaskType.TOKEN_CLASSIFICATION,
    labels: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
    density: float = 0.05,
    seed: int = 1,
    with_head: bool = True,
    metrics: dict | None = None,
) -> SparseDiff:
    """A valid diff for ``spec`` with random deltas (and a random head for task diffs);
    ``metrics`` as a producer would record them (e.g. ``{"dev": {"hau": {"f1": 0.8}}}``)."""
    gen = torch.Generator().manual_seed(seed)
    sparse = random_sparse(base_params(model), density, gen)
    if kind is DiffKind.LANGUAGE:
        meta = dict(kind=kind, language=language)
        if with_head:
            meta["task_type"] = TaskType.FILL_MASK
        head_type, n_labels = TaskType.FILL_MASK, 2
    else:
        if task_type is TaskType.QUESTION_ANSWERING:
            labels = ()
        meta = dict(kind=kind, language=language, task=task, task_type=task_type, labels=labels)
        head_type, n_labels = task_type, max(len(labels), 2)
    dense = {}
    if with_head or kind is DiffKind.TASK:
        layout = head_layout(spec, head_type, n_labels)
        dense = {name: torch.randn(layout.shapes[name], generator=gen) * 0.1 for name in sorted(layout.required)}
    nnz = sum(len(s) for s in sparse.values())
    return SparseDiff(
        meta=DiffMetadata(base_model=spec.name, base_fingerprint=spec.fingerprint, nnz=nnz, metrics=metrics or {}, **meta),
        sparse=sparse,
        dense=dense,
    )


def state_sha(params) -> str:
    """sha256 over names and raw bytes: equal only for bit-identical weights."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def counted_index_copies() -> Iterator[list[int]]:
    """Inside the block, the entries written by every ``Tensor.index_copy_`` call, in order
    (to check that a switch writes only what changes)."""
    writes: list[int] = []
    original = torch.Tensor.index_copy_

    def counting(self, dim, index, source):
        writes.append(index.numel())
        return original(self, dim, index, source)

    torch.Tensor.index_copy_ = counting
    try:
        yield writes
    finally:
        torch.Tensor.index_copy_ = original
