"""Token classification (NER, POS): word-level labels from the first sub-word of each word,
and entity spans when the label set is BIO/IOB2."""

from __future__ import annotations

from typing import Any

import torch

from service.tasks.common import InputError, Prepared, TaskAdapter, check_length, tensor_list


def bio_spans(words: list[str], labels: list[str]) -> list[dict]:
    """Entity spans from BIO tags; an I- tag that does not continue its type starts a span
    (the lenient reading seqeval uses by default)."""
    spans: list[dict] = []
    current: dict | None = None
    for i, label in enumerate(labels):
        prefix, _, etype = label.partition("-")
        if prefix in ("B", "I") and etype:
            if prefix == "I" and current is not None and current["type"] == etype:
                current["end"] = i + 1
                continue
            current = {"type": etype, "start": i, "end": i + 1}
            spans.append(current)
        else:
            current = None
    for span in spans:
        span["text"] = " ".join(words[span["start"] : span["end"]])
    return spans


class TokenClassification(TaskAdapter):
    def prepare(self, tokenizer, raw: Any, max_seq_len: int) -> Prepared:
        if isinstance(raw, str):
            words = raw.split()
        elif isinstance(raw, list) and all(isinstance(w, str) and w for w in raw):
            words = list(raw)
        else:
            raise InputError("token-classification inputs are a string or a list of words")
        if not words:
            raise InputError("token-classification input has no words")
        enc = tokenizer(words, is_split_into_words=True, truncation=False)
        check_length(enc, max_seq_len)
        word_ids = enc.word_ids()
        first = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
        return Prepared(dict(enc), {"words": words, "first": first})

    def postprocess(self, model, outputs, batch, prepared, tokenizer) -> list[dict]:
        id2label = model.config.id2label
        results = []
        for row, p in zip(outputs.logits, prepared):
            logits = row[p.extra["first"]].float()
            probs = torch.softmax(logits, dim=-1)
            ids = logits.argmax(dim=-1).tolist()
            labels = [id2label[i] for i in ids]
            results.append(
                {
                    "words": p.extra["words"],
                    "labels": labels,
                    "scores": probs.max(dim=-1).values.tolist(),
                    "entities": bio_spans(p.extra["words"], labels),
                    "logits": tensor_list(logits),
                }
            )
        return results
