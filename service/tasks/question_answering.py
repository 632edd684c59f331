"""Extractive question answering: the best context span by start + end logit."""

from __future__ import annotations

from typing import Any

import torch

from service.tasks.common import InputError, Prepared, TaskAdapter, check_length, text_field

MAX_ANSWER_TOKENS = 30


class QuestionAnswering(TaskAdapter):
    def prepare(self, tokenizer, raw: Any, max_seq_len: int) -> Prepared:
        if not isinstance(raw, dict):
            raise InputError("question-answering inputs are objects {question, context}")
        question, context = text_field(raw.get("question"), "question"), text_field(raw.get("context"), "context")
        enc = tokenizer(question, context, truncation=False, return_offsets_mapping=True)
        check_length(enc, max_seq_len)
        seq_ids = enc.sequence_ids()
        offsets = enc.pop("offset_mapping")
        in_context = [i for i, s in enumerate(seq_ids) if s == 1]
        return Prepared(dict(enc), {"context": context, "offsets": offsets, "in_context": in_context})

    def postprocess(self, model, outputs, batch, prepared, tokenizer) -> list[dict]:
        results = []
        for start_row, end_row, p in zip(outputs.start_logits, outputs.end_logits, prepared):
            ctx = torch.tensor(p.extra["in_context"])
            s, e = start_row[ctx].float(), end_row[ctx].float()
            scores = s[:, None] + e[None, :]
            n = ctx.numel()
            valid = torch.triu(torch.ones(n, n, dtype=torch.bool)) & ~torch.triu(
                torch.ones(n, n, dtype=torch.bool), diagonal=MAX_ANSWER_TOKENS
            )
            scores = scores.masked_fill(~valid, float("-inf"))
            best = int(scores.argmax())
            i, j = divmod(best, n)
            start = p.extra["offsets"][int(ctx[i])][0]
            end = p.extra["offsets"][int(ctx[j])][1]
            prob = torch.softmax(s, 0)[i] * torch.softmax(e, 0)[j]
            results.append(
                {"answer": p.extra["context"][start:end], "start": start, "end": end, "score": float(prob),
                 "logit_score": float(scores.view(-1)[best])}
            )
        return results
