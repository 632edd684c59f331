"""The one base model in memory, and the small task heads that wrap it.

The encoder is loaded once in its checkpoint precision, fingerprinted, then cast to the
serving dtype and moved to the device. A task head (classifier, QA outputs, MLM head) is a
task model built on the meta device whose encoder attribute is *the* shared encoder, so a
new task costs only its head's memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel

from diffs_store.base import BaseSpec, base_params, load_base_model, load_tokenizer
from diffs_store.heads import assemble_task_model
from diffs_store.metadata import TaskType

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelHost:
    def __init__(self, base_model: str, device: str = "cpu", dtype: str = "float32") -> None:
        encoder, spec = load_base_model(base_model)  # fingerprint taken in checkpoint precision
        self.dtype = DTYPES[dtype]
        self.device = torch.device(device)
        self.encoder: PreTrainedModel = encoder.to(device=self.device, dtype=self.dtype).eval()
        self.spec: BaseSpec = spec
        # What clients are told the base is: a local directory by its name only, so no
        # server path appears in an answer.
        self.public_name = Path(base_model).name if Path(base_model).is_dir() else base_model
        self.tokenizer = load_tokenizer(base_model)
        # Base-model names -> live parameter tensors; only the scheduler's worker writes them.
        self.params: dict[str, torch.Tensor] = base_params(self.encoder)
        log.info("base %s loaded: %s on %s (%s)", base_model, spec.fingerprint[:19], device, dtype)

    def build_task_model(
        self, task_type: TaskType, labels: tuple[str, ...], head: dict[str, torch.Tensor]
    ) -> PreTrainedModel:
        """A task model sharing the live encoder, with ``head`` (a diff's dense tensors) and
        whatever else the head needs from the checkpoint (see :mod:`diffs_store.heads`)."""
        return assemble_task_model(self.spec, self.encoder, task_type, labels, head, device=self.device, dtype=self.dtype)

    def head_nbytes(self, model: PreTrainedModel) -> int:
        """Bytes a task model adds to the encoder's (tied tensors are the encoder's)."""
        shared = {id(p) for p in self.encoder.parameters()}
        return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in shared)
