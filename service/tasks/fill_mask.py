"""Fill-mask (a language diff with an MLM head): top-k tokens for each mask position."""

from __future__ import annotations

from typing import Any

import torch

from service.tasks.common import InputError, Prepared, TaskAdapter, check_length, text_field

TOP_K = 5


class FillMask(TaskAdapter):
    def prepare(self, tokenizer, raw: Any, max_seq_len: int) -> Prepared:
        text = text_field(raw)
        mask = tokenizer.mask_token
        if mask is None or mask not in text:
            raise InputError(f"fill-mask inputs must contain the mask token {mask!r}")
        enc = tokenizer(text, truncation=False)
        check_length(enc, max_seq_len)
        positions = [i for i, t in enumerate(enc["input_ids"]) if t == tokenizer.mask_token_id]
        return Prepared(dict(enc), {"positions": positions})

    def postprocess(self, model, outputs, batch, prepared, tokenizer) -> list[dict]:
        results = []
        for row, p in zip(outputs.logits, prepared):
            masks = []
            for pos in p.extra["positions"]:
                probs = torch.softmax(row[pos].float(), dim=-1)
                top = probs.topk(TOP_K)
                masks.append(
                    [
                        {"token": tokenizer.convert_ids_to_tokens(int(i)), "score": float(s)}
                        for s, i in zip(top.values, top.indices)
                    ]
                )
            results.append({"masks": masks})
        return results
