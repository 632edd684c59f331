"""Evaluation of compositions: base + language diff + task diff, built by the service's code.

The model under test comes from :func:`diffs_store.merge.build_composed_model`, i.e. the
same composition math (``diffs_store.compose``) the service patches with, so a score here
is the score the service would get. Metrics: seqeval entity F1 for BIO-tagged data (NER),
accuracy for other tags (POS) and classification, SQuAD EM/F1 for QA.

Two tools keep a comparison honest: :func:`sample_subset` (a seeded random subset of a test
set instead of its first N sentences, which come from a few documents and are not
representative) and :func:`paired_bootstrap_f1` (a 95% interval for the entity-F1
difference of two systems on the same sentences).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np
import torch
from transformers import PreTrainedModel

from diffs_store.base import load_base_model, load_tokenizer
from diffs_store.format import SparseDiff
from diffs_store.merge import build_composed_model
from diffs_store.metadata import TaskType
from diffs_store.validate import validate_diff_bytes
from trainer.data.classification import ClassificationExample
from trainer.data.conll import TaggedSentence

log = logging.getLogger(__name__)

T = TypeVar("T")
SUBSET_SEED = 42  # default seed of evaluation subsets; results record the one used


def usable_length(model: PreTrainedModel, max_len: int) -> int:
    """``max_len`` capped to the positions the model has (RoBERTa-style models offset
    positions by ``pad_token_id + 1``)."""
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", max_len)
    if cfg.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= (cfg.pad_token_id or 0) + 1
    return min(max_len, limit)


@torch.no_grad()
def predict_tags(
    model: PreTrainedModel, tokenizer, sentences: Sequence[TaggedSentence], *, batch_size: int = 32,
    max_len: int = 512, device: str = "cpu",
) -> list[list[str]]:
    """One tag per word, read from its first sub-word (as the service does). Words cut off
    by ``max_len`` get ``O``. Batches are length-sorted for speed; output keeps input order."""
    model.eval().to(device)
    max_len = usable_length(model, max_len)
    id2label = model.config.id2label
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i].words))
    out: list[list[str]] = [[] for _ in sentences]
    for b in range(0, len(order), batch_size):
        ids = order[b : b + batch_size]
        enc = tokenizer(
            [list(sentences[i].words) for i in ids], is_split_into_words=True, truncation=True,
            max_length=max_len, padding=True, return_tensors="pt",
        )
        logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
        pred = logits.argmax(-1).cpu()
        for row, i in enumerate(ids):
            tags = ["O"] * len(sentences[i].words)
            previous = None
            for pos, w in enumerate(enc.word_ids(row)):
                if w is not None and w != previous:
                    tags[w] = id2label[int(pred[row, pos])]
                previous = w
            out[i] = tags
    return out


def is_bio(tags: Sequence[str]) -> bool:
    return any(t[:2] in ("B-", "I-") for t in tags)


def tagging_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Word accuracy always; seqeval (default, conlleval-style) entity P/R/F1 for BIO tags."""
    n = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    scores = {"accuracy": correct / max(n, 1)}
    if is_bio([t for g in gold for t in g]):
        from seqeval.metrics import f1_score, precision_score, recall_score

        gold_l, pred_l = [list(g) for g in gold], [list(p) for p in pred]
        scores.update(
            precision=precision_score(gold_l, pred_l, zero_division=0),
            recall=recall_score(gold_l, pred_l, zero_division=0),
            f1=f1_score(gold_l, pred_l, zero_division=0),
        )
    return {k: float(v) for k, v in scores.items()}


def sample_subset(items: Sequence[T], n: int | None, seed: int = SUBSET_SEED) -> list[T]:
    """``n`` items drawn at random without replacement (seeded), kept in file order.

    Test files are grouped by source document, so their first N sentences are one corner of
    the set (on ibo the task diff scores 28.2 F1 on the first 500 and 40.4 on all 2,181).
    ``n`` None or at least ``len(items)``: every item.
    """
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise ValueError(f"subset size {n} must be >= 0")
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def entity_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> np.ndarray:
    """Per sentence: (correct entities, predicted entities, gold entities), seqeval's
    default (conlleval-style) chunking. Summed over any set of sentences they give that
    set's micro entity F1, so a bootstrap resample costs a sum, not a seqeval call."""
    from seqeval.metrics.sequence_labeling import get_entities

    counts = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        g_ent, p_ent = set(get_entities(list(g))), set(get_entities(list(p)))
        counts[i] = (len(g_ent & p_ent), len(p_ent), len(g_ent))
    return counts


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Micro entity F1 from summed (correct, predicted, gold) counts on the last axis:
    2 * correct / (predicted + gold), 0 when there is nothing to find or predict (seqeval
    with ``zero_division=0`` gives the same value)."""
    correct, total = counts[..., 0], counts[..., 1] + counts[..., 2]
    return np.divide(2.0 * correct, total, out=np.zeros(np.shape(total)), where=total > 0)


@dataclass(frozen=True)
class PairedInterval:
    """F1(b) - F1(a) on the evaluated sentences, with a percentile bootstrap interval."""

    delta: float
    low: float
    high: float
    level: float
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_bootstrap_f1(
    gold: Sequence[Sequence[str]], pred_a: Sequence[Sequence[str]], pred_b: Sequence[Sequence[str]], *,
    resamples: int = 1000, seed: int = SUBSET_SEED, level: float = 0.95,
) -> PairedInterval:
    """Paired bootstrap over sentences of the entity-F1 difference (b) - (a).

    Each resample draws ``len(gold)`` sentences with replacement (seeded) and scores both
    systems on the *same* draw, so sentence difficulty cancels and only the systems'
    disagreement spreads the interval: identical systems give a zero-width interval.
    """
    if not gold:
        raise ValueError("the bootstrap needs at least one sentence")
    counts = np.concatenate([entity_counts(gold, pred_a), entity_counts(gold, pred_b)[:, :2]], axis=1)
    a_cols, b_cols = [0, 1, 2], [3, 4, 2]  # (correct, predicted, gold): a's, then b's; gold shared
    rng = np.random.default_rng(seed)
    n = len(gold)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    sums = weights @ counts
    deltas = f1_from_counts(sums[:, b_cols]) - f1_from_counts(sums[:, a_cols])
    total = counts.sum(axis=0)
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    delta = float(f1_from_counts(total[b_cols]) - f1_from_counts(total[a_cols]))
    return PairedInterval(delta, float(low), float(high), level, resamples, seed)


@torch.no_grad()
def predict_classes(
    model: PreTrainedModel, tokenizer, examples: Sequence[ClassificationExample], *, batch_size: int = 32,
    max_len: int = 512, device: str = "cpu",
) -> list[str]:
    model.eval().to(device)
    max_len = usable_length(model, max_len)
    out = []
    for b in range(0, len(examples), batch_size):
        chunk = examples[b : b + batch_size]
        pairs = [e.text_pair for e in chunk]
        enc = tokenizer(
            [e.text for e in chunk], pairs if any(p is not None for p in pairs) else None,
            truncation=True, max_length=max_len, padding=True, return_tensors="pt",
        )
        logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
        out += [model.config.id2label[int(i)] for i in logits.argmax(-1).cpu()]
    return out


def evaluate_model(model: PreTrainedModel, tokenizer, task_type: TaskType, data: Sequence, **kw) -> dict[str, float]:
    """Score ``model`` on labelled ``data`` (examples of the task type's reader)."""
    from trainer.task_types import trainer_task

    return trainer_task(task_type).evaluate(model, tokenizer, data, **kw)


def load_diffs(paths: Sequence[str | Path], spec) -> list[SparseDiff]:
    """Read and fully validate diff files against the base (the service's gate)."""
    return [validate_diff_bytes(Path(p).read_bytes(), spec) for p in paths]


def evaluate_composition(
    base_name: str, diff_paths: Sequence[str | Path], data: Sequence, *, base=None, spec=None, tokenizer=None, **kw
) -> dict[str, float]:
    """Compose base + diffs with the service's code and score the result on ``data``."""
    if base is None or spec is None:
        base, spec = load_base_model(base_name)
    model, task = composed_model(base, spec, diff_paths)
    return evaluate_model(model, tokenizer or load_tokenizer(base_name), task, data, **kw)


def composed_model(base: PreTrainedModel, spec, diff_paths: Sequence[str | Path]) -> tuple[PreTrainedModel, TaskType]:
    """base + diffs as the service composes them, and the task diff's task type (callers
    that need per-example predictions, e.g. for a paired bootstrap, start from here)."""
    diffs = load_diffs(diff_paths, spec)
    task = next((d.meta.task_type for d in diffs if d.meta.kind.value == "task"), None)
    if task is None:
        raise ValueError("evaluation needs a task diff")
    return build_composed_model(base, spec, diffs), task
