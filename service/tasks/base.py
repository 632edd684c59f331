"""What every task type shares: the contract of a task's I/O, the windows it runs as, and
the one batched forward pass.

A request's life in a task (each step a method of :class:`TaskIO`):

1. ``parse_params``: the request's ``parameters`` against the task's pydantic model
   (unknown or bad ones are a 422 naming the parameter).
2. ``prepare`` (a worker thread of the API, never the event loop): one input to
   :class:`Prepared`, the model windows it runs as (a long text becomes overlapping
   windows, as the transformers pipelines' ``stride`` / ``doc_stride`` make them) plus what
   post-processing needs to map answers back to characters of the input.
3. ``forward`` (the model worker, inside the patched composition): windows of many
   requests padded into batches; only each window's own rows of the outputs are kept, as
   float32 numpy arrays, so nothing of the live model leaves the worker.
4. ``postprocess`` (a worker thread of the API again): the pipeline's answer for the input,
   in the shape the Hugging Face Inference API gives.
5. ``predict_view``: the same answer as ``/v1/predict`` reports it (an object per input).

The transformers pipelines are the specification: same labels, groups, words, character
offsets, and scores to float32 rounding (``tests/test_task_io_pipeline.py`` holds them to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from diffs_store.metadata import TaskType


class InputError(ValueError):
    """An input or parameter the task cannot take. ``status`` is the HTTP status to answer
    with; the message names the offending input or parameter."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class Params(BaseModel):
    """Base of every task's parameters: unknown names are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Prepared:
    """One input as the model sees it: its windows (tokenizer outputs, unpadded) and the
    context post-processing needs (text, offsets, ...)."""

    windows: list[dict[str, list[int]]]
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """How long a window may be: the model's positions, capped by the server's setting."""

    max_tokens: int


class TaskIO:
    """One task type's I/O. Subclasses set ``task_type``, ``params_model`` and
    ``output_names`` and implement ``prepare``, ``postprocess`` and ``predict_view``."""

    task_type: ClassVar[TaskType]
    params_model: ClassVar[type[Params]]
    # The model outputs a window keeps (e.g. ``logits``; QA: ``start_logits``, ``end_logits``).
    output_names: ClassVar[tuple[str, ...]] = ("logits",)
    # Per token (sliced to the window's length) or one row per window.
    per_token: ClassVar[bool] = True

    def parse_params(self, raw: dict[str, Any] | None) -> Params:
        try:
            return self.params_model.model_validate(raw or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "parameters"
            raise InputError(f"parameters.{where}: {first['msg']}") from None

    def prepare(self, tokenizer, raw: Any, params: Params, limits: Limits) -> Prepared:  # pragma: no cover
        raise NotImplementedError

    def keep(self, tokenizer, output: torch.Tensor, row: int, window: dict[str, list[int]]) -> np.ndarray:
        """What of a batch output one window keeps: its unpadded rows."""
        if not self.per_token:
            return output[row].float().cpu().numpy()
        return output[row, : len(window["input_ids"])].float().cpu().numpy()

    @torch.inference_mode()
    def forward(self, model, tokenizer, windows: list[dict[str, list[int]]], device: torch.device) -> list[dict[str, np.ndarray]]:
        """One forward pass over ``windows`` (any inputs, one composition)."""
        batch = tokenizer.pad(windows, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(**batch)
        return [{n: self.keep(tokenizer, outputs[n], i, w) for n in self.output_names} for i, w in enumerate(windows)]

    def postprocess(self, tokenizer, prepared: Prepared, outputs: list[dict[str, np.ndarray]], params: Params,
                    labels: tuple[str, ...]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def predict_view(self, answer: Any, outputs: list[dict[str, np.ndarray]], return_logits: bool) -> dict[str, Any]:
        """The answer as ``/v1/predict`` reports it: one object per input."""
        raise NotImplementedError  # pragma: no cover

    def inference_api_view(self, answer: Any) -> Any:
        """The answer in the Hugging Face Inference API's shape for this task."""
        return answer


def model_inputs(tokenizer, encoding, index: int | None = None) -> dict[str, list[int]]:
    """The model's own inputs of a tokenizer output (one window of it with ``index``)."""
    return {k: list(encoding[k] if index is None else encoding[k][index])
            for k in tokenizer.model_input_names if k in encoding}


def text_of(raw: Any, name: str) -> str:
    """``raw`` as text; what is not a string is refused naming ``name``."""
    if not isinstance(raw, str):
        raise InputError(f"{name} must be a string, not {type(raw).__name__}")
    return raw


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32, shifted by the maximum (as the pipelines do)."""
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def model_window(tokenizer, config, max_seq_len: int) -> int:
    """Longest window in tokens: the model's positions (RoBERTa-style models reserve the
    padding index and one more), the tokenizer's stated maximum, the server's cap."""
    positions = getattr(config, "max_position_embeddings", None) or max_seq_len
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}:
        positions -= (config.pad_token_id or 0) + 1
    stated = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 10**9 else positions
    return max(8, min(positions, stated, max_seq_len))
