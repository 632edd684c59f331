"""Training recipes: every knob of an LT-SFT run, with the reference scripts' defaults.

A recipe is written verbatim into the diff's metadata (``recipe``), so a diff always says how
it was made. Defaults follow cambridgeltl/composable-sft ``examples/*/train_*.sh``:

* language diffs (``train_mlm.sh``): K = 7,667,712 (13 x 768^2, a MAD-X language adapter's
  size) for base-size models, both phases up to 100 epochs clamped to 10k-100k optimizer
  steps, batch 8 (4 x 2 accumulation there), lr 5e-5, max sequence length 256, L1 0.1 in
  both phases, LayerNorm frozen, MLM decoder untied from the input embeddings and frozen;
* token classification (``train_ner.sh``, ``train_pos_tagging.sh``): K = 14,155,776
  (24 x 768^2), 3 full + 10 sparse epochs, batch 8, lr 5e-5, no L1;
* sequence classification (``train_nli.sh``): 5 + 5 epochs, batch 32, lr 2e-5;
* question answering (``train_qa.sh``): 2 + 2 epochs, batch 12, lr 3e-5.

For bases that are not 768 wide, :func:`default_k` keeps the reference's *shape* of budget:
13 (language) or 24 (task) hidden x hidden matrices, e.g. 1,916,928 / 3,538,944 for a
384-wide MiniLM. ``k`` may also be a proportion of the maskable entries (a float in (0, 1)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from diffs_store.metadata import TaskType

LANGUAGE_K_MATRICES = 13  # 13 * 768**2 = 7,667,712
TASK_K_MATRICES = 24  # 24 * 768**2 = 14,155,776
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class PhaseLength:
    """How long one phase runs: by epochs, clamped to [min_steps, max_steps] optimizer steps
    (the reference's ``*_max_epochs_per_iteration`` / ``*_min|max_steps_per_iteration``)."""

    epochs: float | None = None
    min_steps: int | None = None
    max_steps: int | None = None

    def steps(self, n_examples: int, batch_size: int, grad_accum: int = 1, world_size: int = 1) -> int:
        """Optimizer steps for this phase. Epochs are converted with the effective batch; a
        phase given only by steps uses ``max_steps``."""
        if self.epochs is None and self.max_steps is None:
            raise ValueError("a phase needs epochs or max_steps")
        if self.min_steps is not None and self.max_steps is not None and self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} > max_steps {self.max_steps}")
        if self.epochs is None:
            return int(self.max_steps)  # type: ignore[arg-type]
        per_step = batch_size * grad_accum * world_size
        n = math.ceil(self.epochs * n_examples / per_step)
        if self.max_steps is not None:
            n = min(n, self.max_steps)
        if self.min_steps is not None:
            n = max(n, self.min_steps)
        return max(int(n), 0)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a run's result (except the data, recorded separately)."""

    k: int | float | None = None  # None: default_k(kind, hidden size)
    full: PhaseLength = field(default_factory=lambda: PhaseLength(epochs=3))
    sparse: PhaseLength = field(default_factory=lambda: PhaseLength(epochs=10))
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    # AdamW either way; the fused kernel is the same update, ~5x faster on CPU (torch >= 2.4).
    optimizer: str = "adamw_torch_fused"
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.0  # fraction of each phase's steps
    lr_scheduler: str = "linear"
    full_l1_reg: float = 0.0
    sparse_l1_reg: float = 0.0
    l1_sparse_only: bool = False  # reference: apply_reg_to_sparse_only (default False: heads too)
    freeze_layer_norm: bool = True
    max_seq_len: int = 256
    mlm_probability: float = 0.15
    # MLM data: True packs the text into blocks of max_seq_len (the reference's default,
    # run_mlm's group_texts); False is one line per example (its --line_by_line).
    mlm_packing: bool = True
    # Dense training of a *fresh* MLM head alone (encoder frozen) before phase 1, so that
    # phase 1's |theta1 - theta0| measures language adaptation, not head fitting. None:
    # as long as phase 1 when the base has no pretrained MLM head, none when it has one;
    # PhaseLength(max_steps=0) turns it off. Its learning rate: head_warmup_lr (None: the
    # recipe's learning_rate).
    head_warmup: PhaseLength | None = None
    head_warmup_lr: float | None = None
    # Compute precision of forward and backward: "fp32", or "bf16" autocast (CPUs with
    # native bf16, CUDA). Master weights, gradients, optimizer state, theta_ref, the top-K
    # selection and the diff stay fp32 either way; only matmul inputs are rounded.
    precision: str = "fp32"
    seed: int = 42
    save_steps: int | None = None  # checkpoint every N optimizer steps (None: no checkpoints)
    save_total_limit: int = 2
    logging_steps: int = 50

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} must be one of {', '.join(PRECISIONS)}")

    def with_(self, **changes: Any) -> "Recipe":
        """A copy with ``changes``; ``None`` values are ignored so CLI options can pass through."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def language_recipe(**changes: Any) -> Recipe:
    """Reference ``train_mlm.sh`` defaults."""
    base = Recipe(
        full=PhaseLength(epochs=100, min_steps=10_000, max_steps=100_000),
        sparse=PhaseLength(epochs=100, min_steps=10_000, max_steps=100_000),
        full_l1_reg=0.1,
        sparse_l1_reg=0.1,
    )
    return base.with_(**changes)


# The language recipe for a base WITHOUT a pretrained MLM head (sentence encoders such as
# e5 or MiniLM), sized for a CPU and chosen on development signals only (dev MLM loss on
# held-out lines; docs/RESULTS.md "Choosing the language recipe", with its selection log):
# a head warm-up as long as phase 1 at 1e-3 (head_warmup None: as long as phase 1), then
# 100 + 100 LT-SFT steps at 3e-4 on packed blocks of 64 tokens (3e-4 beat 1e-4 on the dev
# MLM loss of yor and hau). A base with a pretrained head keeps the reference recipe
# (language_recipe()).
NO_MLM_HEAD_LANGUAGE: dict[str, Any] = dict(
    full=PhaseLength(max_steps=100), sparse=PhaseLength(max_steps=100), learning_rate=3e-4,
    head_warmup_lr=1e-3, max_seq_len=64,
)


def language_recipe_for(fresh_head: bool, **changes: Any) -> Recipe:
    """The default language recipe for a base with (``fresh_head=False``) or without a
    pretrained MLM head; ``changes`` override it."""
    return language_recipe(**{**(NO_MLM_HEAD_LANGUAGE if fresh_head else {}), **changes})


def task_recipe(task_type: TaskType, **changes: Any) -> Recipe:
    """Reference task-script defaults for ``task_type``."""
    if task_type is TaskType.SEQUENCE_CLASSIFICATION:
        base = Recipe(full=PhaseLength(epochs=5), sparse=PhaseLength(epochs=5), batch_size=32, learning_rate=2e-5)
    elif task_type is TaskType.QUESTION_ANSWERING:
        base = Recipe(full=PhaseLength(epochs=2), sparse=PhaseLength(epochs=2), batch_size=12, learning_rate=3e-5)
    else:
        base = Recipe(full=PhaseLength(epochs=3), sparse=PhaseLength(epochs=10))
    return base.with_(**changes)


def default_k(kind: str, hidden_size: int) -> int:
    """The reference budget scaled to the base's width: 13 or 24 hidden x hidden matrices."""
    per = LANGUAGE_K_MATRICES if kind == "language" else TASK_K_MATRICES
    return per * hidden_size * hidden_size


def resolve_k(k: int | float | None, n_maskable: int, *, kind: str, hidden_size: int) -> int:
    """K as a count. A float in (0, 1) is a proportion of the maskable entries (rounded down,
    like the reference's ``ft_params_proportion``); an integral value is a count."""
    if k is None:
        k = default_k(kind, hidden_size)
    if isinstance(k, float) and not k.is_integer():
        if not 0.0 < k < 1.0:
            raise ValueError(f"K={k}: a fractional K must be a proportion in (0, 1)")
        count = int(k * n_maskable)
    else:
        count = int(k)
    if count < 1:
        raise ValueError(f"K={k} selects no entries (of {n_maskable} maskable)")
    if count > n_maskable:
        raise ValueError(f"K={count} is more than the {n_maskable} maskable entries")
    return count
