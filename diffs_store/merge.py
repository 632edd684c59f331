"""Offline merge: bake a (language, task) composition into a plain Hugging Face model.

The weights come from :func:`diffs_store.compose.composed_state_dict`, the same math the
service patches with, so a merged model and a served pair give the same predictions.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from transformers import PretrainedConfig, PreTrainedModel

from diffs_store.base import TASK_MODEL_CLASSES, BaseSpec, base_params, load_base_model, load_tokenizer, task_config
from diffs_store.compose import composed_state_dict, head_tensors
from diffs_store.format import SparseDiff
from diffs_store.metadata import DiffKind, TaskType
from diffs_store.validate import check_against_base


def composition_task(diffs: Sequence[SparseDiff]) -> tuple[TaskType | None, tuple[str, ...]]:
    """The model a composition builds: the task diff's, else fill-mask when the language
    diff carries an MLM head, else a bare encoder (``None``)."""
    kinds = [d.meta.kind for d in diffs]
    if kinds.count(DiffKind.TASK) > 1 or kinds.count(DiffKind.LANGUAGE) > 1:
        raise ValueError("a composition takes at most one language diff and one task diff")
    for d in diffs:
        if d.meta.kind is DiffKind.TASK:
            return d.meta.task_type, d.meta.labels
    for d in diffs:
        if d.dense:
            return TaskType.FILL_MASK, ()
    return None, ()


def head_config(
    config: PretrainedConfig, task_type: TaskType, labels: tuple[str, ...], head_names: set[str]
) -> PretrainedConfig:
    """Config for the task model: labels, and untied embeddings when the head brings its own
    decoder (the LT-SFT language recipe unties and freezes the MLM decoder)."""
    cfg = task_config(config, task_type, labels)
    model_cls = TASK_MODEL_CLASSES[task_type]
    with torch.device("meta"):
        probe = model_cls.from_config(cfg)
    tied = getattr(probe, "_tied_weights_keys", None) or {}
    if any(name in head_names for name in tied):
        cfg.tie_word_embeddings = False
    return cfg


def build_composed_model(base: PreTrainedModel, spec: BaseSpec, diffs: Sequence[SparseDiff]) -> PreTrainedModel:
    """A new model (base untouched) holding base + diffs, with the composition's head."""
    for d in diffs:
        check_against_base(d, spec)
    task_type, labels = composition_task(diffs)
    state = composed_state_dict(base_params(base), diffs)
    if task_type is None:
        model = copy.deepcopy(base)
        model.load_state_dict(state, strict=False)
        return model.eval()
    head = head_tensors(diffs)
    cfg = head_config(spec.config, task_type, labels, set(head))
    model = TASK_MODEL_CLASSES[task_type].from_config(cfg)
    encoder = model.base_model
    missing, _unexpected = encoder.load_state_dict(state, strict=False)  # unexpected: an unused pooler
    if missing:
        raise ValueError(f"the task model's encoder needs parameters the base lacks: {missing[:3]}")
    missing, unexpected = model.load_state_dict(head, strict=False)
    if unexpected:
        raise ValueError(f"head tensors {unexpected[:3]} do not fit {type(model).__name__}")
    return model.eval()


def merge_to_directory(
    base_name: str, diffs: Sequence[SparseDiff], out_dir: str | Path
) -> PreTrainedModel:
    """``csft merge``: write weights, config (with labels) and tokenizer to ``out_dir``."""
    base, spec = load_base_model(base_name)
    model = build_composed_model(base, spec, diffs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    load_tokenizer(base_name).save_pretrained(out)
    return model
