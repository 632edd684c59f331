"""Jobs: a language diff (MLM on raw text), a task diff (one or several source languages),
and the dense full fine-tuning baseline. Each returns the diff, written in our format with
full metadata, and the trained model (for evaluation and tests).

* Language diff: masked LM on raw lines. The MLM decoder is untied from the input
  embeddings and frozen (reference ``--freeze_decoder``); a base without an MLM head gets a
  fresh one, trained densely. The diff stores only the head tensors the base cannot give
  back (:func:`language_head`): the frozen decoder *is* theta0's input embeddings, so it is
  recorded as such (``head_from_base``) rather than stored (vocab x hidden: 384 MB for a
  250k vocabulary), and head tensors still equal to the checkpoint's pretrained head are
  left to it; fill-mask on base + diff reproduces the trained model exactly either way
  (``store_decoder=True`` stores the decoder anyway, for tools that read the file alone).
* Task diff, one source: the source-language diff is applied to theta0 first (through
  ``diffs_store.compose``), so theta_ref = theta0 + language diff and the stored diff is
  relative to it, as in the reference. Only its sparse part is applied: its MLM head plays
  no role under a task head.
* Task diff, several sources: theta_ref = theta0; each batch's language diff is applied
  for its forward/backward and removed before the optimizer step
  (:mod:`trainer.multisource`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from transformers import PreTrainedModel

from diffs_store.base import BaseSpec, base_params, load_base_model, load_tokenizer
from diffs_store.compose import apply_plan, build_patch_plan
from diffs_store.format import SparseDiff
from diffs_store.heads import head_layout, pretrained_head
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType
from diffs_store.validate import check_against_base
from trainer import lt_sft
from trainer.data.encode import SourceCollator, collator_for, encode_mlm
from trainer.evaluate import evaluate_model
from trainer.hf import (
    SOURCE_KEY, LtSftTrainer, compute_dtype, run_full_finetune, run_lt_sft, training_arguments, warn_if_bf16_is_emulated,
)
from trainer.models import build_model, cast_once_frozen_decoder, frozen_encoder, mlm_loss, untie_and_freeze_decoder
from trainer.multisource import LanguageSwitch, SourceBatchSampler, sparse_part_for
from trainer.recipe import PhaseLength, Recipe, resolve_k
from trainer.task_types import trainer_task

log = logging.getLogger(__name__)


@dataclass
class Base:
    """The base model, its identity and tokenizer, loaded once per process."""

    name: str
    model: PreTrainedModel
    spec: BaseSpec
    tokenizer: Any

    @classmethod
    def load(cls, name: str) -> "Base":
        model, spec = load_base_model(name)
        return cls(name, model, spec, load_tokenizer(name))


@dataclass
class Source:
    """One source language's training data and (optionally) its language diff."""

    language: str | None
    examples: Sequence
    diff: SparseDiff | None = None
    diff_id: str | None = None
    dev: Sequence | None = None


@dataclass
class JobResult:
    diff: SparseDiff
    model: PreTrainedModel
    trainer: LtSftTrainer
    diff_id: str | None = None
    metrics: dict = field(default_factory=dict)


def file_info(path: str | Path) -> dict[str, Any]:
    """What the metadata records about a data file: name, size, sha256."""
    data = Path(path).read_bytes()
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _environment() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def _prepare(model: PreTrainedModel, recipe: Recipe) -> list[str]:
    if recipe.freeze_layer_norm:
        lt_sft.freeze_layer_norms(model)
    return list(lt_sft.maskable_parameters(model, include_layer_norm=not recipe.freeze_layer_norm))


def _n_maskable(model: PreTrainedModel, names: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def _recipe_record(recipe: Recipe, k: int, n_maskable: int, **extra: Any) -> dict[str, Any]:
    return {
        "method": "lt-sft",
        **recipe.to_dict(),
        "k_resolved": k,
        "n_maskable": n_maskable,
        "tie_rule": "exactly K: all above the K-th largest |delta|, ties by parameter order then flat index",
        "environment": _environment(),
        **extra,
    }


def _save(diff: SparseDiff, output: str | Path | None, trainer: LtSftTrainer) -> str | None:
    """Write the diff and return its id, on the main process only: under ``torchrun`` every
    rank ends with the same weights, and one file must come out of the job (the other
    ranks return None)."""
    if output is None or not trainer.is_world_process_zero():
        return None
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    return diff.save(output)


# -- language diffs ----------------------------------------------------------------------


@torch.no_grad()
def mlm_dev_loss(model: PreTrainedModel, tokenizer, features: list[dict], recipe: Recipe, batch_size: int = 32) -> dict:
    """Mean masked-LM loss (and perplexity) on dev lines, masks drawn with a fixed seed so
    numbers are comparable across runs."""
    collate = collator_for(TaskType.FILL_MASK, tokenizer, mlm_probability=recipe.mlm_probability, seed=recipe.seed)
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for b in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in collate(features[b : b + batch_size]).items()}
        n = int((batch["labels"] != -100).sum())
        if n:
            total += float(mlm_loss(model, batch)) * n
            count += n
    model.train()
    loss = total / max(count, 1)
    return {"mlm_loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 2), "masked_tokens": count}


def train_language_diff(
    base: Base,
    language: str,
    lines: Sequence[str],
    *,
    recipe: Recipe,
    out_dir: str | Path,
    dev_lines: Sequence[str] | None = None,
    output: str | Path | None = None,
    store_decoder: bool = False,
    data: dict[str, Any] | None = None,
) -> JobResult:
    """LT-SFT masked language modelling on ``lines`` of one language -> a language diff.

    The text is packed into full blocks unless ``recipe.mlm_packing`` is off. A fresh MLM
    head (a base without one) is first warmed up alone (:func:`warm_up_head`); the warmed
    head is theta_ref for the head, so phase 1 starts, and phase 2 restarts, from it.
    """
    started = time.time()
    model, fresh = build_model(base.model, base.spec, TaskType.FILL_MASK, seed=recipe.seed)
    untie_and_freeze_decoder(model)
    maskable = _prepare(model, recipe)
    n_maskable = _n_maskable(model, maskable)
    k = resolve_k(recipe.k, n_maskable, kind="language", hidden_size=base.spec.config.hidden_size)
    features = encode_mlm(base.tokenizer, lines, recipe.max_seq_len, packed=recipe.mlm_packing)
    dev_features = encode_mlm(base.tokenizer, dev_lines, recipe.max_seq_len, packed=recipe.mlm_packing) if dev_lines else None
    out = Path(out_dir)
    collator = collator_for(TaskType.FILL_MASK, base.tokenizer, mlm_probability=recipe.mlm_probability)
    warmup = head_warmup_length(recipe, fresh)
    warn_if_bf16_is_emulated(recipe)
    with cast_once_frozen_decoder(model, compute_dtype(recipe)):
        warmup_record = warm_up_head(model, recipe, warmup, features, collator, out)
        if dev_features is not None and warmup_record["steps"]:
            warmup_record["dev_after"] = mlm_dev_loss(model, base.tokenizer, dev_features, recipe)
        trainer = LtSftTrainer(
            model=model,
            args=training_arguments(recipe, out),
            train_dataset=features,
            data_collator=collator,
            recipe=recipe,
            maskable=maskable,
            loss_fn=mlm_loss,
        )
        result = run_lt_sft(trainer, recipe, k, out, len(features))
    metrics: dict[str, Any] = {
        "train": {"head_warmup": warmup_record, **result.phases, "examples": len(features),
                  "seconds": round(time.time() - started, 1)},
    }
    if dev_features is not None:
        metrics["dev"] = mlm_dev_loss(model, base.tokenizer, dev_features, recipe)
    meta = DiffMetadata(
        kind=DiffKind.LANGUAGE, language=language, task_type=TaskType.FILL_MASK,
        base_model=base.spec.name, base_fingerprint=base.spec.fingerprint, nnz=0,
        recipe=_recipe_record(
            recipe, k, n_maskable, objective="masked-lm", mlm_head="fresh" if fresh else "pretrained",
            mlm_data=f"blocks of {recipe.max_seq_len} tokens" if recipe.mlm_packing else "one line per example",
            head_warmup_steps=warmup_record["steps"],
            decoder="untied from input embeddings, frozen" + (", stored" if store_decoder else ", recorded as the base's"),
            data=data or {"train_lines": len(lines)},
        ),
        metrics=metrics,
    )
    heads, from_base = language_head(model, base, store_decoder=store_decoder)
    meta = meta.model_copy(update={"head_from_base": from_base})
    diff = lt_sft.extract_diff(model, trainer.reference, result.masks, meta, head_names=heads)
    return JobResult(diff, model, trainer, _save(diff, output, trainer), metrics)


def head_warmup_length(recipe: Recipe, fresh_head: bool) -> PhaseLength:
    """The head warm-up the recipe asks for; by default as long as phase 1 for a fresh head
    and none for a pretrained one."""
    if recipe.head_warmup is not None:
        return recipe.head_warmup
    return recipe.full if fresh_head else PhaseLength(max_steps=0)


def warm_up_head(
    model: PreTrainedModel, recipe: Recipe, length: PhaseLength, features: list[dict], collator, out: Path
) -> dict[str, Any]:
    """Dense training of the MLM head alone, the encoder frozen, at ``head_warmup_lr``.

    Without it, a base with no pretrained MLM head spends phase 1 fitting a random head,
    and the top-K by |theta1 - theta0| picks the encoder entries that helped the head,
    not the ones the language moves. Returns the steps run and the final train loss.
    """
    if length.steps(len(features), recipe.batch_size, recipe.grad_accum) == 0:
        return {"steps": 0}
    warm_recipe = recipe.with_(learning_rate=recipe.head_warmup_lr, full_l1_reg=0.0)
    with frozen_encoder(model):
        trainer = LtSftTrainer(
            model=model, args=training_arguments(warm_recipe, out), train_dataset=features, data_collator=collator,
            recipe=warm_recipe, maskable=[], loss_fn=mlm_loss,
        )
        record = trainer.run_phase("head-warmup", length, 0.0, out, len(features))
    record["learning_rate"] = warm_recipe.learning_rate
    return record


def language_head(model: PreTrainedModel, base: "Base", *, store_decoder: bool = False) -> tuple[list[str], dict[str, str]]:
    """(head tensors a language diff stores, head tensors it records as base parameters).

    Head assembly (:mod:`diffs_store.heads`) gives back, exactly, a tensor tied to another
    head tensor (the decoder bias), a tensor equal to the checkpoint's pretrained head, and
    the frozen decoder when it is still theta0's input embeddings (recorded in
    ``head_from_base``); everything else was trained or is not in the base, and is stored.
    """
    layout = head_layout(base.spec, TaskType.FILL_MASK)
    pretrained = pretrained_head(base.spec, TaskType.FILL_MASK)
    theta0 = base_params(base.model)
    state = model.state_dict()
    prefix = layout.encoder_prefix
    stored, from_base = [], {}
    for name in sorted(n for n in state if not n.startswith(prefix)):
        value = state[name]
        source = layout.tied.get(name)
        if source is not None and not source.startswith(prefix) and torch.equal(value, state[source]):
            continue  # tied to a head tensor the diff stores or the checkpoint has
        if source is not None and not store_decoder:
            base_name = source[len(prefix):]
            if torch.equal(value, theta0[base_name].to(value.dtype)):
                from_base[name] = base_name
                continue
        if name in pretrained and torch.equal(value, pretrained[name].to(value.dtype)):
            continue
        stored.append(name)
    return stored, from_base


# -- task diffs --------------------------------------------------------------------------


def task_labels(task_type: TaskType, examples: Sequence) -> tuple[str, ...]:
    return trainer_task(task_type).labels(list(examples))


def encode_task(task_type: TaskType, tokenizer, examples: Sequence, labels: tuple[str, ...], max_len: int) -> list[dict]:
    label2id = {label: i for i, label in enumerate(labels)}
    return trainer_task(task_type).encode(tokenizer, examples, label2id, max_len)


def _task_setup(base: Base, task_type: TaskType, sources: Sequence[Source], labels, recipe: Recipe):
    if not sources:
        raise ValueError("a task job needs at least one source")
    if len(sources) > 1 and len({s.language for s in sources}) != len(sources):
        raise ValueError("multi-source training needs one distinct language per source")
    labels = tuple(labels) if labels else task_labels(task_type, [e for s in sources for e in s.examples])
    model, _ = build_model(base.model, base.spec, task_type, labels, seed=recipe.seed)
    for s in sources:
        if s.diff is not None:
            if s.diff.meta.kind is not DiffKind.LANGUAGE:
                raise ValueError(f"source {s.language!r}: a {s.diff.meta.kind.value} diff is not a language diff")
            check_against_base(s.diff, base.spec)
    return labels, model


def _task_dataset(base: Base, task_type, sources, labels, recipe, multi: bool):
    features, tags = [], []
    for s in sources:
        feats = encode_task(task_type, base.tokenizer, s.examples, labels, recipe.max_seq_len)
        if multi:
            feats = [{**f, SOURCE_KEY: s.language} for f in feats]
        features += feats
        tags += [s.language] * len(feats)
    return features, tags


def train_task_diff(
    base: Base,
    task: str,
    task_type: TaskType,
    sources: Sequence[Source],
    *,
    recipe: Recipe,
    out_dir: str | Path,
    labels: Sequence[str] | None = None,
    output: str | Path | None = None,
    data: dict[str, Any] | None = None,
) -> JobResult:
    """LT-SFT on labelled data from one or more source languages -> a task diff."""
    started = time.time()
    labels, model = _task_setup(base, task_type, sources, labels, recipe)
    warn_if_bf16_is_emulated(recipe)
    multi = len(sources) > 1
    params = base_params(model)
    if not multi and sources[0].diff is not None:
        source_diff = sparse_part_for(sources[0].diff, params)
        apply_plan(params, build_patch_plan(params, [source_diff]))  # theta_ref = theta0 + lang
    maskable = _prepare(model, recipe)
    n_maskable = _n_maskable(model, maskable)
    k = resolve_k(recipe.k, n_maskable, kind="task", hidden_size=base.spec.config.hidden_size)
    features, tags = _task_dataset(base, task_type, sources, labels, recipe, multi)
    collate = collator_for(task_type, base.tokenizer)
    out = Path(out_dir)
    args = training_arguments(recipe, out)
    extra: dict[str, Any] = {}
    if multi:
        switch = LanguageSwitch(params, {s.language: s.diff for s in sources})
        extra = dict(
            source_switch=switch,
            batch_sampler=SourceBatchSampler(tags, recipe.batch_size, recipe.seed, args.world_size),
            data_collator=SourceCollator(collate),
        )
    trainer = LtSftTrainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=extra.pop("data_collator", collate),
        recipe=recipe,
        maskable=maskable,
        **extra,
    )
    result = run_lt_sft(trainer, recipe, k, out, len(features))
    metrics: dict[str, Any] = {"train": {**result.phases, "examples": len(features), "seconds": round(time.time() - started, 1)}}
    dev = _dev_metrics(model, base, task_type, sources, params)
    if dev:
        metrics["dev"] = dev
    source_record = [
        {"language": s.language, "language_diff": s.diff_id, "examples": len(s.examples)} for s in sources
    ]
    meta = DiffMetadata(
        kind=DiffKind.TASK, task=task, task_type=task_type, labels=labels,
        language=sources[0].language if not multi else None,
        base_model=base.spec.name, base_fingerprint=base.spec.fingerprint, nnz=0,
        recipe=_recipe_record(
            recipe, k, n_maskable, objective=task_type.value, sources=source_record,
            relative_to="theta0 + source-language diff" if not multi and sources[0].diff is not None else "theta0",
            multi_source=multi, data=data or {},
        ),
        metrics=metrics,
    )
    diff = lt_sft.extract_diff(model, trainer.reference, result.masks, meta)
    return JobResult(diff, model, trainer, _save(diff, output, trainer), metrics)


def _dev_metrics(model, base: Base, task_type, sources: Sequence[Source], params) -> dict[str, Any]:
    """Dev scores of the trained model as trained: single-source with its language diff
    still applied; multi-source with each source's diff applied for its own dev set."""
    out: dict[str, Any] = {}
    multi = len(sources) > 1
    for s in sources:
        if not s.dev:
            continue
        undo = None
        if multi and s.diff is not None:
            undo = LanguageSwitch(params, {s.language: s.diff})(s.language)
        try:
            out[s.language or "dev"] = evaluate_model(model, base.tokenizer, task_type, s.dev)
        finally:
            if undo:
                undo()
    model.train()
    return out


def train_full_model(
    base: Base, task_type: TaskType, examples: Sequence, *, recipe: Recipe, out_dir: str | Path,
    labels: Sequence[str] | None = None,
) -> tuple[PreTrainedModel, dict]:
    """The dense baseline: fine-tune every parameter (LayerNorm per the recipe) for the
    recipe's *phase-1* length. No diff is written; returns the model and its metrics."""
    started = time.time()
    src = Source(None, examples)
    labels, model = _task_setup(base, task_type, [src], labels, recipe)
    maskable = _prepare(model, recipe)
    features, _ = _task_dataset(base, task_type, [src], labels, recipe, False)
    trainer = LtSftTrainer(
        model=model, args=training_arguments(recipe, Path(out_dir)), train_dataset=features,
        data_collator=collator_for(task_type, base.tokenizer), recipe=recipe, maskable=maskable,
    )
    metrics = run_full_finetune(trainer, recipe, Path(out_dir), len(features))
    metrics["seconds"] = round(time.time() - started, 1)
    return model.eval(), metrics
