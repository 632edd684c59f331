"""Sequence classification (NLI, sentiment, ...): a text or a text pair -> one label."""

from __future__ import annotations

from typing import Any

import torch

from service.tasks.common import Prepared, TaskAdapter, check_length, tensor_list, text_field


class SequenceClassification(TaskAdapter):
    def prepare(self, tokenizer, raw: Any, max_seq_len: int) -> Prepared:
        if isinstance(raw, dict):
            text = text_field(raw.get("text"), "text")
            pair = raw.get("text_pair")
            enc = tokenizer(text, text_field(pair, "text_pair") if pair is not None else None, truncation=False)
        else:
            enc = tokenizer(text_field(raw), truncation=False)
        check_length(enc, max_seq_len)
        return Prepared(dict(enc))

    def postprocess(self, model, outputs, batch, prepared, tokenizer) -> list[dict]:
        logits = outputs.logits.float()
        probs = torch.softmax(logits, dim=-1)
        id2label = model.config.id2label
        return [
            {"label": id2label[int(p.argmax())], "score": float(p.max()), "logits": tensor_list(l)}
            for p, l in zip(probs, logits)
        ]
