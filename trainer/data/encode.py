"""Tokenisation into model features, and collators (plus the multi-source wrapper).

Token classification labels the *first* sub-word of each word and ignores the rest
(-100), as the reference does by default (``label_all_tokens=False``) and as the service's
token-classification adapter reads predictions.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from transformers import (
    DataCollatorForLanguageModeling,
)

from diffs_store.metadata import TaskType
from trainer.data.classification import ClassificationExample
from trainer.data.conll import TaggedSentence
from trainer.hf import SOURCE_KEY

IGNORE = -100


def encode_tagged(
    tokenizer, sentences: Sequence[TaggedSentence], label2id: dict[str, int], max_len: int
) -> list[dict]:
    """Features for token classification; words cut off by ``max_len`` are not trained on."""
    out = []
    for s in sentences:
        enc = tokenizer(list(s.words), is_split_into_words=True, truncation=True, max_length=max_len)
        labels, previous = [], None
        for w in enc.word_ids():
            if w is None or w == previous:
                labels.append(IGNORE)
            else:
                try:
                    labels.append(label2id[s.tags[w]])
                except KeyError:
                    raise ValueError(f"tag {s.tags[w]!r} is not among the labels {sorted(label2id)}") from None
            previous = w
        feat = dict(enc)
        feat["labels"] = labels
        out.append(feat)
    return out


def encode_lines(tokenizer, lines: Sequence[str], max_len: int) -> list[dict]:
    """MLM features in line mode: one line per example, truncated at ``max_len`` (the
    reference's ``--line_by_line``). Short lines waste most of a sequence's length."""
    enc = tokenizer(list(lines), truncation=True, max_length=max_len, return_special_tokens_mask=True)
    return [{k: enc[k][i] for k in enc} for i in range(len(lines))]


def encode_blocks(tokenizer, lines: Sequence[str], block_size: int) -> list[dict]:
    """MLM features as the reference makes them by default (run_mlm's ``group_texts``):
    every line tokenised whole with its special tokens, all concatenated, cut into blocks
    of exactly ``block_size`` tokens; the remainder shorter than a block is dropped. Every
    example is then a full sequence, so a step sees ``block_size`` tokens per example
    whatever the line lengths."""
    enc = tokenizer(list(lines), return_special_tokens_mask=True, verbose=False)
    keys = list(enc.keys())
    stream = {k: [t for row in enc[k] for t in row] for k in keys}
    n_blocks = len(stream["input_ids"]) // block_size
    if n_blocks == 0:
        raise ValueError(
            f"{len(stream['input_ids'])} tokens of text make no block of {block_size}: give more text or use line mode"
        )
    return [{k: stream[k][i * block_size : (i + 1) * block_size] for k in keys} for i in range(n_blocks)]


def encode_mlm(tokenizer, lines: Sequence[str], max_len: int, *, packed: bool) -> list[dict]:
    """MLM features: packed blocks (default) or one line per example."""
    return encode_blocks(tokenizer, lines, max_len) if packed else encode_lines(tokenizer, lines, max_len)


def encode_classification(
    tokenizer, examples: Sequence[ClassificationExample], label2id: dict[str, int], max_len: int
) -> list[dict]:
    out = []
    for e in examples:
        enc = tokenizer(e.text, e.text_pair, truncation=True, max_length=max_len)
        feat = dict(enc)
        feat["labels"] = label2id[e.label]
        out.append(feat)
    return out


def collator_for(task_type: TaskType, tokenizer, *, mlm_probability: float = 0.15, seed: int | None = None) -> Callable:
    """The padding/masking collator for a task type. ``seed`` fixes MLM masking (dev loss)."""
    if task_type is TaskType.FILL_MASK:
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    from trainer.task_types import trainer_task

    return trainer_task(task_type).collator(tokenizer)


class SourceCollator:
    """Wraps a collator for multi-source batches: every feature carries ``source``; a batch
    must come from one source (the batch sampler guarantees it) and keeps it as a string."""

    def __init__(self, inner: Callable) -> None:
        self.inner = inner

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        sources = {f[SOURCE_KEY] for f in features}
        if len(sources) != 1:
            raise ValueError(f"a multi-source batch mixes sources {sorted(sources)}")
        batch = self.inner([{k: v for k, v in f.items() if k != SOURCE_KEY} for f in features])
        batch[SOURCE_KEY] = sources.pop()
        return batch
