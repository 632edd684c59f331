"""Fill-mask I/O (a language diff with an MLM head): the most probable tokens per mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffs_store.metadata import TaskType
from service.tasks.base import InputError, Limits, Prepared, TaskIO, model_inputs, softmax, text_of
from service.tasks.fill_mask.params import FillMaskParams


class FillMask(TaskIO):
    task_type = TaskType.FILL_MASK
    params_model = FillMaskParams

    def prepare(self, tokenizer, raw: Any, params: FillMaskParams, limits: Limits) -> Prepared:
        text = text_of(raw, "a fill-mask input")
        enc = tokenizer(text)
        ids = enc["input_ids"]
        positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
        if not positions:
            raise InputError(f"a fill-mask input must contain the mask token {tokenizer.mask_token!r}")
        if len(ids) > limits.max_tokens:
            raise InputError(f"the input is {len(ids)} tokens long; fill-mask reads at most {limits.max_tokens}", status=413)
        return Prepared([model_inputs(tokenizer, enc)], {"positions": positions})

    def keep(self, tokenizer, output: torch.Tensor, row: int, window: dict[str, list[int]]) -> np.ndarray:
        """Only the mask positions' rows: a 250k-token vocabulary row per token would be
        megabytes per input."""
        positions = [i for i, t in enumerate(window["input_ids"]) if t == tokenizer.mask_token_id]
        return output[row, positions].float().cpu().numpy()

    def postprocess(self, tokenizer, prepared: Prepared, outputs, params: FillMaskParams,
                    labels: tuple[str, ...]) -> list[list[dict[str, Any]]]:
        probs = softmax(outputs[0]["logits"])
        targets = _target_ids(tokenizer, params.targets) if params.targets else None
        if targets is not None:
            probs = probs[:, targets]
        k = min(params.top_k, probs.shape[-1])
        values, picks = torch.from_numpy(probs).topk(k)
        ids = np.asarray(prepared.windows[0]["input_ids"])
        positions = prepared.context["positions"]
        single = len(positions) == 1
        answer = []
        for position, row_values, row_picks in zip(positions, values.tolist(), picks.tolist()):
            row = []
            for score, pick in zip(row_values, row_picks):
                token = int(targets[pick]) if targets is not None else pick
                filled = ids.copy()
                filled[position] = token
                filled = filled[filled != tokenizer.pad_token_id]
                row.append({"score": score, "token": token, "token_str": tokenizer.decode([token]),
                            "sequence": tokenizer.decode(filled, skip_special_tokens=single)})
            answer.append(row)
        return answer

    def inference_api_view(self, answer):
        return answer[0] if len(answer) == 1 else answer  # one mask: its list; several: a list each

    def predict_view(self, answer, outputs, return_logits: bool) -> dict[str, Any]:
        return {"masks": answer}


def _target_ids(tokenizer, targets: list[str]) -> np.ndarray:
    """Vocabulary ids of ``targets``; a target not in the vocabulary stands for its first
    sub-token (the pipeline's rule), one with no token at all is dropped."""
    vocab = tokenizer.get_vocab()
    ids = set()
    for target in targets:
        found = vocab.get(target)
        if found is None:
            pieces = tokenizer(target, add_special_tokens=False, max_length=1, truncation=True)["input_ids"]
            if not pieces:
                continue
            found = pieces[0]
        ids.add(found)
    if not ids:
        raise InputError("parameters.targets: none of the targets is a token of this model")
    return np.array(sorted(ids))
