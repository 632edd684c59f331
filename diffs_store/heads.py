"""Task heads around an encoder: the one place that decides where each head tensor comes from.

A task model is the shared encoder plus a small head (classifier, QA outputs, MLM head).
Validation, ``csft merge``, evaluation and the service all build heads here, so a merged
model and a served pair cannot disagree. Each head parameter comes from, in order:

1. the diff's ``dense/`` tensor (composable-sft's ``abs``), when it brings one;
2. for a parameter the checkpoint's model ties (the MLM decoder to the input embeddings,
   its bias to the head bias), the tensor it is tied to, exactly as
   ``AutoModelForMaskedLM.from_pretrained`` would tie it: the decoder then follows the
   *patched* embeddings, which is what the reference's ``SFT.apply`` produces on a
   masked-LM model;
3. for a fill-mask head, the base checkpoint's own pretrained MLM head (mBERT and XLM-R
   ship one; the reference's ``run_mlm`` freezes the head LayerNorm and the decoder and
   saves only what it trained, sometimes just the bias).

A diff may also record a head tensor as equal to a base parameter at theta0 instead of
storing it (``head_from_base`` in its metadata): the frozen MLM decoder of a language diff
*is* the base's input embeddings before any patch, and that is what is used then, not the
patched embeddings. Whatever is left is what a diff must bring (:attr:`HeadLayout.required`); validation refuses
a diff that does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel

from diffs_store.base import TASK_MODEL_CLASSES, BaseSpec, quiet_transformers, task_config
from diffs_store.format import SparseDiff
from diffs_store.metadata import DiffKind, TaskType


@dataclass(frozen=True)
class HeadLayout:
    """The head of one task model on one base."""

    shapes: dict[str, tuple[int, ...]]  # every head tensor (task-model names outside the encoder)
    tied: dict[str, str]  # head parameter -> the parameter it is tied to, unless a diff brings it
    pretrained: frozenset[str]  # head parameters the base checkpoint provides
    required: frozenset[str]  # what a diff must bring: the rest
    encoder_prefix: str  # "bert.", "roberta.": the task model's name for the encoder


def _tied_pairs(model: PreTrainedModel) -> dict[str, str]:
    """Ties in effect in ``model`` (target -> source), whichever way transformers declares
    them (a dict in 5.x; a list of targets tied to the input embeddings in 4.x)."""
    declared = getattr(model, "_tied_weights_keys", None) or {}
    if not isinstance(declared, dict):
        emb = model.get_input_embeddings().weight
        source = next(n for n, p in model.named_parameters() if p is emb)
        declared = {t: source for t in declared if t.endswith("weight")}
    tied = {}
    for target, source in declared.items():
        try:
            if model.get_parameter(target) is model.get_parameter(source):
                tied[target] = source
        except AttributeError:  # declared for an attribute this configuration does not build
            continue
    return tied


def _meta_model(config, task_type: TaskType, labels: tuple[str, ...]) -> PreTrainedModel:
    with torch.device("meta"):
        return TASK_MODEL_CLASSES[task_type].from_config(task_config(config, task_type, labels))


def _placeholder_labels(num_labels: int) -> tuple[str, ...]:
    return tuple(f"LABEL_{i}" for i in range(num_labels))


def head_layout(spec: BaseSpec, task_type: TaskType, num_labels: int = 2) -> HeadLayout:
    """The head layout for ``task_type`` with ``num_labels`` outputs (cached in ``spec``)."""
    key = ("layout", task_type, num_labels)
    if key not in spec._cache:
        labels = () if task_type in (TaskType.FILL_MASK, TaskType.QUESTION_ANSWERING) else _placeholder_labels(num_labels)
        model = _meta_model(spec.config, task_type, labels)
        prefix = model.base_model_prefix + "."
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(prefix)}
        params = {k for k, _ in model.named_parameters(remove_duplicate=False) if not k.startswith(prefix)}
        tied = {t: s for t, s in _tied_pairs(model).items() if t in params}
        pretrained = frozenset()
        if task_type is TaskType.FILL_MASK:  # the only head pretrained checkpoints ship
            pretrained = frozenset((params - tied.keys()) & spec.checkpoint_heads)
        required = frozenset(params - tied.keys() - pretrained)
        spec._cache[key] = HeadLayout(shapes, tied, pretrained, required, prefix)
    return spec._cache[key]


def pretrained_head(spec: BaseSpec, task_type: TaskType) -> dict[str, torch.Tensor]:
    """The checkpoint's own head tensors for ``task_type`` (float32, CPU; cached in ``spec``).

    Read through the task model's ``from_pretrained``, which knows every checkpoint layout
    and legacy name; only the head is kept.
    """
    layout = head_layout(spec, task_type)
    if not layout.pretrained or spec.source is None:
        return {}
    key = ("pretrained", task_type)
    if key not in spec._cache:
        quiet_transformers()
        model = TASK_MODEL_CLASSES[task_type].from_pretrained(spec.source, dtype=torch.float32)
        state = model.state_dict()
        spec._cache[key] = {name: state[name].detach().clone() for name in layout.pretrained}
    return spec._cache[key]


def assemble_task_model(
    spec: BaseSpec,
    encoder: PreTrainedModel,
    task_type: TaskType,
    labels: tuple[str, ...],
    head: dict[str, torch.Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    own_encoder: bool = False,
) -> PreTrainedModel:
    """A task model whose encoder *is* ``encoder`` (shared, not copied) and whose head comes
    from ``head`` (a diff's dense tensors), ties and the checkpoint, as the module says.

    Head tensors are cast to ``dtype`` and moved to ``device`` (default: the encoder's).
    With ``own_encoder`` (a merge: the encoder belongs to this model alone) a pooler the
    task model does not build (``*ForMaskedLM``, ``*ForTokenClassification``) is dropped, so
    the model's weights are exactly those ``from_pretrained`` of that class would hold.
    Raises ``ValueError`` naming the first head parameter nothing provides.
    """
    ref = next(encoder.parameters())
    device = torch.device(device) if device is not None else ref.device
    dtype = dtype or ref.dtype
    layout = head_layout(spec, task_type, max(len(labels), 2))
    cfg = task_config(spec.config, task_type, labels)
    if any(target in head and source.startswith(layout.encoder_prefix) for target, source in layout.tied.items()):
        # the diff brings its own decoder: no longer the input embeddings (cfg is a copy)
        cfg.tie_word_embeddings = False
        if hasattr(cfg, "get_text_config"):
            cfg.get_text_config().tie_word_embeddings = False
    with torch.device("meta"):
        model = TASK_MODEL_CLASSES[task_type].from_config(cfg)
    if own_encoder and getattr(model.base_model, "pooler", None) is None and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    setattr(model, model.base_model_prefix, encoder)
    from_checkpoint = layout.pretrained - head.keys()
    tensors = {name: t for name, t in pretrained_head(spec, task_type).items() if name in from_checkpoint}
    tensors.update(head)
    tensors = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    for target, source in layout.tied.items():
        if target not in head:
            owner, _, attr = target.rpartition(".")
            setattr(model.get_submodule(owner), attr, model.get_parameter(source))
    left = [name for name, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if left:
        raise ValueError(f"the {task_type.value} head is missing {left[0]!r}")
    return model.eval()


def head_diff(diffs: Sequence[SparseDiff]) -> SparseDiff | None:
    """Whose head a composition runs: the task diff's when there is one, else the language
    diff's MLM head (a language head is never used under a task)."""
    tasks = [d for d in diffs if d.meta.kind is DiffKind.TASK]
    if len(tasks) > 1:
        raise ValueError("a composition takes at most one task diff")
    source = tasks or [d for d in diffs if d.meta.task_type is TaskType.FILL_MASK]
    return source[0] if source else None


def head_tensors(diff: SparseDiff | None, base_tensor: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diff's head tensors: what it stores, plus what it records as a base parameter at
    theta0, read through ``base_tensor(name)`` (the caller knows where theta0 lives: the
    unpatched base for a merge, the patcher's pristine values for the service)."""
    if diff is None:
        return {}
    out = {name: base_tensor(source) for name, source in diff.meta.head_from_base.items()}
    out.update(diff.dense)
    return out
