"""Sequence classification I/O (NLI, sentiment, ...): a text or a text pair, one label.

A text longer than the model's positions is truncated (the longer of a pair first), as the
pipeline does with ``truncation=True``: a classification reads one window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffs_store.metadata import TaskType
from service.tasks.base import InputError, Limits, Prepared, TaskIO, model_inputs, softmax, text_of
from service.tasks.sequence_classification.params import SequenceClassificationParams


class SequenceClassification(TaskIO):
    task_type = TaskType.SEQUENCE_CLASSIFICATION
    params_model = SequenceClassificationParams
    per_token = False

    def prepare(self, tokenizer, raw: Any, params: SequenceClassificationParams, limits: Limits) -> Prepared:
        if isinstance(raw, dict):
            unknown = set(raw) - {"text", "text_pair"}
            if unknown or "text" not in raw:
                raise InputError("a text pair is an object {text, text_pair}" + (f"; unknown: {sorted(unknown)}" if unknown else ""))
            text = text_of(raw["text"], "text")
            pair = text_of(raw["text_pair"], "text_pair") if raw.get("text_pair") is not None else None
        else:
            text, pair = text_of(raw, "a sequence-classification input"), None
        enc = tokenizer(text, pair, truncation=True, max_length=limits.max_tokens)
        return Prepared([model_inputs(tokenizer, enc)])

    def postprocess(self, tokenizer, prepared, outputs, params: SequenceClassificationParams,
                    labels: tuple[str, ...]) -> list[dict[str, Any]]:
        logits = outputs[0]["logits"]
        function = params.function_to_apply or ("sigmoid" if len(labels) == 1 else "softmax")
        if function == "softmax":
            scores = softmax(logits)
        elif function == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            scores = logits
        ranked = sorted(({"label": labels[i], "score": float(s)} for i, s in enumerate(scores)),
                        key=lambda x: x["score"], reverse=True)
        return ranked[: params.top_k] if params.top_k is not None else ranked

    def inference_api_view(self, answer):
        return [answer]  # the Inference API nests one input's labels in a list

    def predict_view(self, answer, outputs, return_logits: bool) -> dict[str, Any]:
        view: dict[str, Any] = {"label": answer[0]["label"], "score": answer[0]["score"], "labels": answer}
        if return_logits:
            view["logits"] = outputs[0]["logits"].tolist()
        return view
