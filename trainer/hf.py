"""The two LT-SFT phases on the Hugging Face Trainer (transformers 5 signatures).

``LtSftTrainer`` adds to the stock Trainer only what LT-SFT needs, at documented hooks:

* ``training_step`` (after the Trainer's own forward + backward): optional per-batch
  source-language switching (multi-source), the L1 gradient once per optimizer step, then
  the phase-2 gradient mask. All of this happens before the Trainer clips and steps.
* an optimizer *step post-hook* (``torch.optim.Optimizer.register_step_post_hook``): in
  phase 2 with weight decay, copy theta_ref back into every unselected entry after each
  step, so AdamW's decoupled decay cannot move them. Without weight decay (the reference
  recipes) nothing can move them (:func:`trainer.lt_sft.frozen_entries_stay_put`): the
  dense theta_ref of the maskable tensors is dropped for its K selected values
  (:class:`trainer.lt_sft.SelectedReference`), the L1 term touches only those, and
  nothing is copied back, so phase 2 costs about what full fine-tuning does.
* a ``TrainerCallback.on_step_begin`` flag: the L1 term is added once per optimizer step.
* ``autocast_smart_context_manager``: with ``recipe.precision == "bf16"``, forward and loss
  run under ``torch.autocast`` (bf16) on the training device; backward follows the
  autocast graph. Parameters, gradients, AdamW state and theta_ref stay fp32, so the L1
  term, the masks and the top-K over |theta1 - theta0| are computed exactly as in fp32.
  (Our own context rather than ``TrainingArguments(bf16=True)``: accelerate wraps only
  ``model.forward``, which the MLM loss bypasses for its cheap masked-position path.)

:func:`run_lt_sft` drives phase 1 (full), mask selection, reset of *every* parameter
(heads included), phase 2 (sparse), each with a fresh optimizer and LR schedule and its own
output directory for checkpoints; resuming picks up where a run stopped. The same code runs
on CPU, one GPU or several processes (``torchrun`` / ``accelerate launch``; GPUs, or CPU
processes over gloo): device placement and gradient reduction are the Trainer's (DDP). Our
additions keep every rank identical without collectives of their own: losses go through the
wrapped model's forward (:func:`trainer.models.mlm_loss`), and the L1 term, gradient masks
and re-imposing act after DDP's all-reduce on identical values; the mask is chosen on every
rank from identical parameters. Only the main process writes the mask and the diff.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from trainer import lt_sft
from trainer.recipe import PhaseLength, Recipe

log = logging.getLogger(__name__)

SOURCE_KEY = "source"  # batch key naming the source language in multi-source training


class _StepBegin(TrainerCallback):
    def __init__(self, trainer: "LtSftTrainer") -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._l1_due = True


class LtSftTrainer(Trainer):
    """A Trainer that knows theta_ref, the phase-2 masks and the L1 coefficients.

    ``reference`` holds theta_ref for every trainable parameter (task-model names): the
    values a run starts from and is reset to (theta0, or theta0 + source-language diff).
    ``source_switch`` (multi-source) is called with a batch's source before the forward and
    returns a function that undoes it; it runs before the optimizer step.
    ``loss_fn`` replaces the model's own loss (e.g. MLM loss on masked positions only).
    ``batch_sampler`` (multi-source) yields index batches that never mix sources.
    """

    def __init__(
        self,
        *args: Any,
        recipe: Recipe,
        maskable: list[str],
        source_switch: Callable[[Any], Callable[[], None]] | None = None,
        loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
        batch_sampler: torch.utils.data.Sampler | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        self.source_switch = source_switch
        self.batch_sampler = batch_sampler
        self.loss_fn = loss_fn
        params = dict(self.model.named_parameters())
        self.trainable = {n: p for n, p in params.items() if p.requires_grad}
        self.maskable = {n: params[n] for n in maskable}
        self.reference = lt_sft.snapshot(self.trainable)
        self.n_total = sum(p.numel() for p in params.values())  # the reference's N (all parameters)
        self._masks: dict[str, torch.Tensor] | None = None  # set for phase 2
        self._selected: dict[str, torch.Tensor] = {}
        self.l1_coefficient = 0.0
        self.l1_last = 0.0
        self._l1_due = False
        self._scratch = lt_sft.Scratch()  # per-step buffers, reused (see lt_sft's docstring)
        self.add_callback(_StepBegin(self))

    @property
    def masks(self) -> dict[str, torch.Tensor] | None:
        """Phase-2 boolean masks by task-model name (None: every entry trains)."""
        return self._masks

    @masks.setter
    def masks(self, masks: dict[str, torch.Tensor] | None) -> None:
        self._masks = masks
        self._selected = lt_sft.selected_indices(masks) if masks is not None else {}
        # Phase 2 without a dense theta_ref when nothing can move the frozen entries.
        if masks is not None and not self._lean and lt_sft.frozen_entries_stay_put(self.args.optim, self.args.weight_decay):
            self.reference = lt_sft.SelectedReference(self.reference, self.maskable, self._selected)

    @property
    def _lean(self) -> bool:
        return isinstance(self.reference, lt_sft.SelectedReference)

    # -- the phase-2 and L1 mechanics --------------------------------------------------

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        undo = None
        if self.source_switch is not None:
            source = inputs.pop(SOURCE_KEY)
            undo = self.source_switch(source)
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            if undo is not None:
                undo()  # exact: the language diff is gone before anything else happens
        if self.l1_coefficient and self._l1_due:
            self._l1_due = False
            targets = self.maskable if self.recipe.l1_sparse_only else self.trainable
            scaler = getattr(self.accelerator, "scaler", None)
            scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
            coefficient = self.l1_coefficient * self.args.gradient_accumulation_steps
            if self._lean:  # maskable tensors at their K selected entries, heads densely
                distance = lt_sft.add_l1_gradient_selected(self.maskable, self.reference, coefficient, self.n_total, scale)
                targets = {n: p for n, p in targets.items() if n not in self.maskable}
            else:
                distance = 0.0
            distance += lt_sft.add_l1_gradient(targets, self.reference, coefficient, self.n_total, scale, self._scratch)
            self.l1_last = coefficient * distance / self.n_total
        if self.masks is not None:
            lt_sft.mask_gradients(self.maskable, self._selected, self._scratch)
        return loss

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> contextlib.AbstractContextManager:
        """bf16 autocast around forward and loss when the recipe asks for it (see module doc)."""
        if self.recipe.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.args.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_fn is None or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation
        return self.loss_fn(model, inputs)

    def get_train_dataloader(self) -> DataLoader:
        if self.batch_sampler is None:
            return super().get_train_dataloader()
        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator)
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper, if any
        inner.register_step_post_hook(lambda *_: self._after_optimizer_step())
        return optimizer

    def _after_optimizer_step(self) -> None:
        if self.masks is not None and not self._lean:
            lt_sft.reimpose_frozen(self.maskable, self._selected, self.reference, self._scratch)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.l1_coefficient and "loss" in logs:
            logs["l1_reg_loss"] = round(self.l1_last, 6)
        super().log(logs, *args, **kwargs)

    # -- phases --------------------------------------------------------------------------

    @torch.no_grad()
    def reset(self) -> None:
        """Every trainable parameter, heads included, back to theta_ref."""
        for name, p in self.trainable.items():
            p.copy_(self.reference[name])

    def run_phase(self, phase: str, length: PhaseLength, l1: float, out_dir: Path, n_examples: int) -> dict:
        """One phase with a fresh optimizer and schedule; resumes from its last checkpoint."""
        steps = length.steps(n_examples, self.recipe.batch_size, self.recipe.grad_accum, self.args.world_size)
        self.args.output_dir = str(out_dir / phase)
        self.args.max_steps = steps
        self.optimizer, self.lr_scheduler = None, None
        self.l1_coefficient = l1
        if steps == 0:
            return {"steps": 0}
        set_seed(self.recipe.seed)
        resume = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        result = self.train(resume_from_checkpoint=resume)
        return {"steps": result.global_step, "train_loss": round(float(result.training_loss), 6)}


def compute_dtype(recipe: Recipe) -> torch.dtype | None:
    """The autocast dtype of a recipe (None: plain fp32)."""
    return torch.bfloat16 if recipe.precision == "bf16" else None


def warn_if_bf16_is_emulated(recipe: Recipe) -> None:
    """bf16 autocast runs anywhere, but only CPUs with native bf16 (AVX512-BF16, AMX) or a
    CUDA device make it faster; elsewhere it is emulated and slower than fp32."""
    if recipe.precision != "bf16" or torch.cuda.is_available():
        return
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if native is not None and not native():
        log.warning("precision bf16: this CPU has no native bf16; autocast will be slower than fp32")


def _optimizer_name(name: str) -> str:
    """Fused AdamW needs torch >= 2.4 on CPU; fall back to the plain AdamW otherwise."""
    if name == "adamw_torch_fused" and tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 4):
        return "adamw_torch"
    return name


def training_arguments(recipe: Recipe, out_dir: Path, **overrides: Any) -> TrainingArguments:
    """TrainingArguments from a recipe (fixed: no eval loop, no hub, explicit max_steps)."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        optim=_optimizer_name(recipe.optimizer),
        max_grad_norm=recipe.max_grad_norm,
        warmup_steps=recipe.warmup_ratio,  # a float in [0, 1) is a ratio of the phase's steps
        lr_scheduler_type=recipe.lr_scheduler,
        max_steps=1,
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_steps=recipe.logging_steps,
        save_strategy="steps" if recipe.save_steps else "no",
        save_steps=recipe.save_steps or 500,
        save_total_limit=recipe.save_total_limit,
        report_to=[],
        remove_unused_columns=False,  # keep the multi-source "source" key for training_step
        dataloader_num_workers=0,
        disable_tqdm=False,  # progress bars even when the CLI quiets transformers logging
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    kwargs.update(overrides)
    args = TrainingArguments(**kwargs)
    if args.world_size < _launched_processes():
        args = TrainingArguments(**{**kwargs, "use_cpu": True})
    return args


def _launched_processes() -> int:
    """How many processes the launcher (``torchrun``, ``accelerate launch``) started.

    Accelerate forms a process group of several only on an accelerator device or when told
    ``use_cpu``; without a GPU each process would otherwise train alone on all the data
    (same seed: identical, wasted copies), so :func:`training_arguments` then asks for CPU
    processes (gloo) explicitly.
    """
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class LtSftResult:
    k: int
    masks: dict[str, torch.Tensor]
    phases: dict[str, dict] = field(default_factory=dict)


def _save_masks(path: Path, masks: Mapping[str, torch.Tensor], k: int) -> None:
    idx = {n: torch.nonzero(m.reshape(-1).cpu()).view(-1) for n, m in masks.items()}
    save_file(idx, str(path), metadata={"k": str(k)})


def _load_masks(path: Path, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    idx = load_file(str(path))
    masks = {}
    for n, p in like.items():
        m = torch.zeros(p.numel(), dtype=torch.bool)
        m[idx[n]] = True
        masks[n] = m.view(p.shape).to(p.device)
    return masks


def run_lt_sft(trainer: LtSftTrainer, recipe: Recipe, k: int, out_dir: Path, n_examples: int) -> LtSftResult:
    """Phase 1 (full) -> global top-K mask -> reset everything -> phase 2 (sparse).

    The mask is saved (``mask.safetensors``) as soon as it is chosen, so a run that dies in
    phase 2 resumes there without redoing phase 1.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_file = out_dir / "mask.safetensors"
    phases: dict[str, dict] = {}
    if mask_file.exists():
        masks = _load_masks(mask_file, trainer.maskable)
        log.info("resuming: mask found at %s, skipping phase 1", mask_file)
        phases["full"] = json.loads((out_dir / "phase1.json").read_text())
    else:
        trainer.masks = None
        phases["full"] = trainer.run_phase("phase1", recipe.full, recipe.full_l1_reg, out_dir, n_examples)
        masks = lt_sft.select_mask(trainer.maskable, trainer.reference, k)
        if trainer.args.should_save:
            _save_masks(mask_file, masks, k)
            (out_dir / "phase1.json").write_text(json.dumps(phases["full"]))
    trainer.reset()
    trainer.masks = masks
    phases["sparse"] = trainer.run_phase("phase2", recipe.sparse, recipe.sparse_l1_reg, out_dir, n_examples)
    return LtSftResult(k=k, masks=masks, phases=phases)


def run_full_finetune(trainer: LtSftTrainer, recipe: Recipe, out_dir: Path, n_examples: int) -> dict:
    """Dense fine-tuning of every trainable parameter (the baseline), phase-1 settings."""
    trainer.masks = None
    return trainer.run_phase("full", recipe.full, recipe.full_l1_reg, out_dir, n_examples)
