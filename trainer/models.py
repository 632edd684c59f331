"""Building the model a job trains: base weights + a head, LT-SFT freezing, MLM loss.

The task model is assembled from the *fingerprinted* base (``diffs_store.base``) rather
than loaded independently, so theta0 is exactly what the diff will be checked against.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, set_seed

from diffs_store.base import TASK_MODEL_CLASSES, BaseSpec, task_config
from diffs_store.heads import head_layout, pretrained_head
from diffs_store.metadata import TaskType

log = logging.getLogger(__name__)


def build_model(
    base: PreTrainedModel, spec: BaseSpec, task_type: TaskType, labels: tuple[str, ...] = (), *, seed: int = 42
) -> tuple[PreTrainedModel, bool]:
    """A task model holding the base's weights and a head. Returns (model, head_is_fresh).

    The head is initialised (seeded), then takes whatever the checkpoint provides for it
    (:func:`diffs_store.heads.pretrained_head`, the reader head assembly uses): for
    fill-mask on mBERT or XLM-R, their pretrained MLM head. It is fresh when the checkpoint
    leaves part of it to train from scratch (a base without an MLM head, any task head).
    """
    set_seed(seed)  # head initialisation
    model = TASK_MODEL_CLASSES[task_type].from_config(task_config(spec.config, task_type, labels))
    missing, _ = model.base_model.load_state_dict(base.state_dict(), strict=False)  # pooler may be unused
    if missing:
        raise ValueError(f"the {task_type.value} model needs encoder parameters the base lacks: {missing[:3]}")
    pretrained = pretrained_head(spec, task_type)
    if pretrained:
        model.load_state_dict(pretrained, strict=False)
    return model.float().train(), head_is_fresh(spec, task_type, len(labels) or 2)


def head_is_fresh(spec: BaseSpec, task_type: TaskType, n_labels: int = 2) -> bool:
    """Whether the checkpoint leaves part of the ``task_type`` head to train from scratch
    (for fill-mask: a base without a pretrained MLM head, e.g. a sentence encoder)."""
    return bool(head_layout(spec, task_type, n_labels).required)


def untie_and_freeze_decoder(model: PreTrainedModel) -> None:
    """The reference's ``--freeze_decoder``: the MLM decoder becomes a frozen copy of the
    input embeddings (theta0), so sparse changes to the embeddings do not leak into the
    output layer and the decoder is not part of the diff's trained entries."""
    decoder = model.get_output_embeddings()
    emb = model.get_input_embeddings().weight
    decoder.weight = nn.Parameter(emb.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


@contextmanager
def cast_once_frozen_decoder(model: PreTrainedModel, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside the block, the frozen MLM decoder uses one ``dtype`` copy of its weight made on
    entry, when autocast to ``dtype`` is on; outside autocast it is the plain fp32 layer.

    Autocast casts every weight on every forward: for a 250k-row vocabulary that is a
    96M-entry copy per step. The decoder is frozen (:func:`untie_and_freeze_decoder`), so
    the cast gives the same values every time and is made once; the result is identical to
    autocast's own cast (round to nearest). Its bias (tied to the trainable head bias) is
    cast per call, as autocast does, so its gradient flows. ``dtype=None`` or a decoder
    that trains: no change.
    """
    decoder = model.get_output_embeddings()
    if dtype is None or decoder is None or decoder.weight.requires_grad:
        yield
        return
    weight = decoder.weight.detach().to(dtype)
    plain = type(decoder).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == dtype:
            bias = None if decoder.bias is None else decoder.bias.to(dtype)
            return F.linear(x.to(dtype), weight, bias)
        return plain(decoder, x)

    decoder.forward = forward
    try:
        yield
    finally:
        del decoder.forward


@contextmanager
def frozen_encoder(model: PreTrainedModel) -> Iterator[None]:
    """Only the head trains inside the block; ``requires_grad`` is restored after it."""
    encoder = list(model.base_model.parameters())
    was = [p.requires_grad for p in encoder]
    for p in encoder:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(encoder, was):
            p.requires_grad_(flag)


def mlm_head(model: PreTrainedModel) -> nn.Module:
    for attr in ("cls", "lm_head"):  # BERT, RoBERTa/XLM-R
        head = getattr(model, attr, None)
        if head is not None:
            return head
    raise ValueError(f"{type(model).__name__}: no MLM head found (expected .cls or .lm_head)")


def mlm_loss(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Masked-LM cross-entropy over masked positions (the model's own loss, per-batch mean).

    The bare model takes the cheap path: the vocabulary projection applied to masked
    positions only (~15% of tokens), the same value at a fraction of the cost. A wrapped
    model (``DistributedDataParallel`` under ``torchrun``, ``DataParallel``) is called
    through the wrapper's own forward instead: DDP's forward is what arms the gradient
    all-reduce, so reaching inside (``model.module.base_model``) would leave each process
    stepping on its own gradients. It projects every position; the loss is the same.
    """
    labels = inputs["labels"]
    enc = {k: v for k, v in inputs.items() if k not in ("labels", "special_tokens_mask")}
    outputs, project = _mlm_outputs(model, enc)
    selected = labels != -100
    if not bool(selected.any()):
        return outputs.sum() * 0.0  # no masked token: a zero loss that still reaches the graph
    logits = project(outputs[selected])
    return F.cross_entropy(logits.float(), labels[selected])


def _mlm_outputs(model: nn.Module, enc: dict) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(per-position outputs, what turns selected rows of them into vocabulary logits):
    encoder states and the MLM head for a bare model, the full logits and the identity for
    a wrapper (see :func:`mlm_loss`)."""
    if isinstance(model, PreTrainedModel):
        return model.base_model(**enc)[0], mlm_head(model)
    return model(**enc).logits, lambda logits: logits
