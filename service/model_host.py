"""The one base model in memory, and the small task heads that wrap it.

The encoder is loaded once in its checkpoint precision, fingerprinted, then cast to the
serving dtype and moved to the device. A task head (classifier, QA outputs, MLM head) is a
task model built on the meta device whose encoder attribute is *the* shared encoder, so a
new task costs only its head's memory.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from diffs_store.base import TASK_MODEL_CLASSES, BaseSpec, base_params, load_base_model, load_tokenizer
from diffs_store.merge import head_config
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
        self.tokenizer = load_tokenizer(base_model)
        # Base-model names -> live parameter tensors; only the scheduler's worker writes them.
        self.params: dict[str, torch.Tensor] = base_params(self.encoder)
        log.info("base %s loaded: %s on %s (%s)", base_model, spec.fingerprint[:19], device, dtype)

    def build_task_model(
        self, task_type: TaskType, labels: tuple[str, ...], head: dict[str, torch.Tensor]
    ) -> PreTrainedModel:
        """A task model sharing the live encoder, with ``head`` as its own parameters."""
        cfg = head_config(self.spec.config, task_type, labels, set(head))
        with torch.device("meta"):
            model = TASK_MODEL_CLASSES[task_type].from_config(cfg)
        setattr(model, model.base_model_prefix, self.encoder)
        tensors = {k: v.to(device=self.device, dtype=self.dtype) for k, v in head.items()}
        model.load_state_dict(tensors, strict=False, assign=True)
        # Tied head weights the diff does not bring (e.g. the MLM decoder) follow their source.
        tied = getattr(model, "_tied_weights_keys", None) or {}
        if not isinstance(tied, dict):  # transformers 4.x: a list of targets tied to the input embeddings
            source = f"{model.base_model_prefix}.{_input_embedding_name(self.encoder)}"
            tied = {t: source for t in tied if t.endswith("weight")}
        for target, source in tied.items():
            if target not in head:
                owner, _, attr = target.rpartition(".")
                setattr(model.get_submodule(owner), attr, model.get_parameter(source))
        left = [n for n, p in model.named_parameters() if p.is_meta]
        if left:
            raise ValueError(f"the {task_type.value} head is missing {left[0]!r}")
        return model.eval()


def _input_embedding_name(encoder: PreTrainedModel) -> str:
    emb = encoder.get_input_embeddings().weight
    return next(name for name, p in encoder.named_parameters() if p is emb)
