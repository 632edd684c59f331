"""Offline merge: bake a (language, task) composition into a plain Hugging Face model.

The weights come from :func:`diffs_store.compose.composed_state_dict`, the same math the
service patches with, so a merged model and a served pair give the same predictions.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from transformers import PreTrainedModel

from diffs_store.base import BaseSpec, base_params, load_base_model, load_tokenizer
from diffs_store.compose import composed_state_dict
from diffs_store.format import SparseDiff
from diffs_store.heads import assemble_task_model, head_diff, head_tensors
from diffs_store.metadata import DiffKind, TaskType
from diffs_store.validate import check_against_base


def composition_task(diffs: Sequence[SparseDiff]) -> tuple[TaskType | None, tuple[str, ...]]:
    """The model a composition builds: the task diff's, else fill-mask when the language
    diff is a fill-mask diff (its own MLM head, or the base checkpoint's), else a bare
    encoder (``None``)."""
    kinds = [d.meta.kind for d in diffs]
    if kinds.count(DiffKind.TASK) > 1 or kinds.count(DiffKind.LANGUAGE) > 1:
        raise ValueError("a composition takes at most one language diff and one task diff")
    for d in diffs:
        if d.meta.kind is DiffKind.TASK:
            return d.meta.task_type, d.meta.labels
    for d in diffs:
        if d.meta.task_type is TaskType.FILL_MASK:
            return TaskType.FILL_MASK, ()
    return None, ()


def build_composed_model(base: PreTrainedModel, spec: BaseSpec, diffs: Sequence[SparseDiff]) -> PreTrainedModel:
    """A new model (base untouched) holding base + diffs, with the composition's head
    assembled by :func:`diffs_store.heads.assemble_task_model`, as the service does."""
    for d in diffs:
        check_against_base(d, spec)
    task_type, labels = composition_task(diffs)
    theta0 = base_params(base)
    encoder = copy.deepcopy(base)
    encoder.load_state_dict(composed_state_dict(theta0, diffs), strict=False)  # buffers stay
    if task_type is None:
        return encoder.eval()
    head = head_tensors(head_diff(diffs), lambda name: theta0[name].detach().clone())
    return assemble_task_model(spec, encoder, task_type, labels, head, own_encoder=True)


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
