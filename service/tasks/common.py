"""Shared pieces of the task adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class InputError(ValueError):
    """An input the task cannot take. ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Prepared:
    """One tokenized input plus whatever post-processing needs to map back to text."""

    encoding: dict[str, list[int]]
    extra: dict[str, Any] = field(default_factory=dict)


class TaskAdapter:
    """Base class: subclasses implement ``prepare`` and ``postprocess``."""

    def prepare(self, tokenizer, raw: Any, max_seq_len: int) -> Prepared:  # pragma: no cover
        raise NotImplementedError

    def postprocess(self, model, outputs, batch, prepared: list[Prepared], tokenizer) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    @torch.inference_mode()
    def run(self, model, tokenizer, prepared: list[Prepared], device: torch.device) -> list[dict]:
        batch = tokenizer.pad([p.encoding for p in prepared], return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(**batch)
        return self.postprocess(model, outputs, batch, prepared, tokenizer)


def check_length(encoding: dict[str, list[int]], max_seq_len: int) -> None:
    n = len(encoding["input_ids"])
    if n > max_seq_len:
        raise InputError(f"input is {n} tokens long; the limit is {max_seq_len} tokens", status=413)


def text_field(raw: Any, name: str = "input") -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InputError(f"{name} must be a non-empty string")
    return raw


def tensor_list(t: torch.Tensor) -> list:
    return t.detach().float().cpu().tolist()
