"""LT-SFT core: which entries may move, which K of them do, and the diff they leave.

Pure tensor code, no training loop (that is :mod:`trainer.hf`), so each rule is testable
on its own:

* :func:`maskable_parameters`: the base encoder's trainable tensors (embeddings included),
  LayerNorm excluded unless asked. Heads are *not* maskable: they train densely.
* :func:`select_mask`: one **global** top-K over |theta1 - theta0| across all maskable
  tensors (not per tensor).
* :func:`mask_gradients`, :func:`reimpose_frozen`: the phase-2 mechanics (on the
  selected entries' flat indices, :func:`selected_indices`).
* :func:`frozen_entries_stay_put`, :class:`SelectedReference`,
  :func:`add_l1_gradient_selected`: phase 2 without a dense copy of theta_ref when the
  optimizer cannot move an entry whose gradient is always zero (the reference recipes).
* :func:`add_l1_gradient`: the reference's optional L1 pull towards theta0.
* :func:`extract_diff`: theta_final - theta_ref at the selected entries, heads dense.

The per-step functions take an optional :class:`Scratch`: buffers kept across steps, so a
step allocates no tensor of its own. Large tensors freed every step go back to the kernel
(glibc serves allocations over 32 MiB with ``mmap``) and fault their pages in again on the
next step; with a 250k-vocabulary embedding that is hundreds of MiB per step. Results are
bit-identical with or without it (``tests/test_train_step_buffers.py``).

Tie rule (differs from the reference, on purpose): the reference takes the K-th largest
|delta| as a threshold and keeps *every* entry ``>=`` it, so ties can select more than K.
Here exactly K are selected: every entry strictly above the threshold, then entries equal
to it in a fixed order (parameter order of the model, then flat row-major index) until K.
Ties are common only at 0 (entries phase 1 never moved, e.g. unseen vocabulary rows when
K exceeds the number of moved entries); the reference would then select *everything*.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from diffs_store.format import SparseDiff, SparseTensorDiff
from diffs_store.metadata import DiffMetadata


def maskable_parameters(model: nn.Module, *, include_layer_norm: bool = False) -> dict[str, nn.Parameter]:
    """Trainable tensors under the base-model prefix, by their *task-model* names.

    LayerNorm weights and biases are excluded by default, as every reference recipe does
    (``--freeze_layer_norm``); callers freeze them (``requires_grad=False``).
    """
    prefix = model.base_model_prefix + "."  # type: ignore[attr-defined]
    out = {}
    for name, p in model.named_parameters():
        if not name.startswith(prefix) or not p.requires_grad:
            continue
        if "LayerNorm" in name and not include_layer_norm:
            continue
        out[name] = p
    return out


def freeze_layer_norms(model: nn.Module) -> list[str]:
    """``requires_grad=False`` on every LayerNorm of the model (heads' included, like the
    reference's name-based loop). Returns the names frozen."""
    names = []
    for name, p in model.named_parameters():
        if "LayerNorm" in name:
            p.requires_grad_(False)
            names.append(name)
    return names


def snapshot(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies: theta_ref for the reset, the L1 term, re-imposing and extraction."""
    return {name: p.detach().clone() for name, p in params.items()}


@torch.no_grad()
def select_mask(
    current: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], k: int
) -> dict[str, torch.Tensor]:
    """Boolean masks selecting exactly ``k`` entries with the largest |current - reference|,
    one threshold over all tensors; ties broken by tensor order then flat index (see module
    docstring). Work happens on each tensor's device; the global ranking is done once."""
    names = list(current)
    n_total = sum(current[n].numel() for n in names)
    if not 0 < k <= n_total:
        raise ValueError(f"K={k} must be in 1..{n_total}")
    flat = torch.cat([(current[n].detach() - reference[n].to(current[n].device)).abs().reshape(-1).float().cpu() for n in names])
    # The k-th largest value is the (n - k + 1)-th smallest.
    threshold = flat.kthvalue(n_total - k + 1).values
    chosen = flat > threshold
    need = k - int(chosen.sum())
    if need > 0:
        ties = torch.nonzero(flat == threshold).view(-1)[:need]
        chosen[ties] = True
    masks, offset = {}, 0
    for n in names:
        size = current[n].numel()
        masks[n] = chosen[offset : offset + size].view(current[n].shape).to(current[n].device)
        offset += size
    return masks


class Scratch:
    """Flat buffers reused from step to step, one per (slot, dtype, device).

    A buffer grows to the largest request it has seen and is handed out as a view of the
    requested size, so every tensor of a loop shares it; slots separate buffers that must
    live at the same time (e.g. delta and its sign).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def take(self, slot: int, like: torch.Tensor, numel: int | None = None) -> torch.Tensor:
        """A 1-D buffer of ``numel`` (default: ``like.numel()``) elements of ``like``'s dtype
        and device; its contents are garbage until written."""
        numel = like.numel() if numel is None else numel
        key = (slot, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            self._buffers.pop(key, None)  # free the smaller one before allocating
            buf = self._buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel]

    def shaped(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """A buffer viewed in ``like``'s shape (contiguous)."""
        return self.take(slot, like).view(like.shape)


def _kept_values(flat: torch.Tensor, idx: torch.Tensor, scratch: Scratch | None) -> torch.Tensor:
    """``flat[idx]`` into a reused buffer (a fresh tensor without ``scratch``)."""
    if scratch is None:
        return flat.index_select(0, idx)
    return torch.index_select(flat, 0, idx, out=scratch.take(0, flat, idx.numel()))


def selected_indices(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat row-major indices of the selected entries, per tensor (int64, sorted)."""
    return {name: torch.nonzero(m.reshape(-1)).view(-1) for name, m in masks.items()}


@torch.no_grad()
def mask_gradients(
    params: Mapping[str, torch.Tensor], selected: Mapping[str, torch.Tensor], scratch: Scratch | None = None
) -> None:
    """Zero the gradient of every unselected entry (after backward, before clipping/step).

    Keeps the K selected values, zeroes the tensor, writes them back: with K a small share
    of the entries this is a memset plus two K-sized index ops, cheaper than a masked multiply.
    """
    for name, idx in selected.items():
        grad = params[name].grad
        if grad is not None:
            flat = grad.view(-1)
            kept = _kept_values(flat, idx, scratch)
            flat.zero_()
            flat.index_copy_(0, idx, kept)


@torch.no_grad()
def reimpose_frozen(
    params: Mapping[str, torch.Tensor], selected: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
    scratch: Scratch | None = None,
) -> None:
    """Copy theta_ref back into every unselected entry (after each optimizer step).

    Masked gradients alone do not keep entries still: AdamW's decoupled weight decay moves
    every parameter it holds, and momentum from earlier steps keeps moving an entry after
    its gradient is zeroed. Copying the reference values back (all of theta_ref, then the
    selected entries' new values over it) makes frozen entries bit-identical to theta_ref
    whatever the optimizer does, and leaves the selected ones exactly as the step left them.
    """
    for name, idx in selected.items():
        flat = params[name].detach().view(-1)
        kept = _kept_values(flat, idx, scratch)
        flat.copy_(reference[name].view(-1))
        flat.index_copy_(0, idx, kept)


# Optimizers whose update is exactly zero for a parameter whose gradient has been zero
# since the optimizer was created, when weight decay is 0: Adam/AdamW keep both moments at
# 0 and step by lr * 0 / (sqrt(0) + eps) = 0; SGD (with or without momentum) steps by 0.
# Gradient clipping scales a zero gradient to zero. (Trainer ``optim`` names.)
_ZERO_GRADIENT_STAYS_PUT = {"adamw_torch", "adamw_torch_fused", "adamw_hf", "sgd"}


def frozen_entries_stay_put(optimizer: str, weight_decay: float) -> bool:
    """Whether phase 2's frozen entries (gradient zeroed every step, fresh optimizer per
    phase) stay bit-identical to theta_ref with no copying back. Decoupled weight decay
    moves every entry, so any non-zero decay needs :func:`reimpose_frozen`."""
    return weight_decay == 0 and str(getattr(optimizer, "value", optimizer)) in _ZERO_GRADIENT_STAYS_PUT


class SelectedReference(Mapping[str, torch.Tensor]):
    """theta_ref for phase 2 that keeps, for maskable tensors, only the K selected values.

    Valid while the frozen entries stay at theta_ref (:func:`frozen_entries_stay_put`):
    then theta_ref of a maskable tensor *is* its current value with the selected entries
    set back, and it is rebuilt so on demand (one tensor at a time, e.g. to extract the
    diff). Phase 2 then holds K values instead of a copy of every maskable tensor, which
    brings its memory to full fine-tuning's. Heads (not maskable) stay dense.
    """

    def __init__(self, reference: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
                 selected: Mapping[str, torch.Tensor]) -> None:
        self.params, self.selected = params, selected
        self.values = {n: reference[n].reshape(-1).index_select(0, idx) for n, idx in selected.items()}
        self.dense = {n: t for n, t in reference.items() if n not in selected}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.dense:
            return self.dense[name]
        out = self.params[name].detach().clone()
        out.view(-1).index_copy_(0, self.selected[name], self.values[name])
        return out

    def __iter__(self) -> Iterator[str]:
        yield from self.dense
        yield from self.values

    def __len__(self) -> int:
        return len(self.dense) + len(self.values)


@torch.no_grad()
def add_l1_gradient_selected(
    params: Mapping[str, torch.Tensor],
    reference: SelectedReference,
    coefficient: float,
    n_total: int,
    grad_scale: float = 1.0,
) -> float:
    """:func:`add_l1_gradient` over maskable tensors in phase 2, touching only the K
    selected entries: every other entry equals theta_ref, so its L1 gradient is sign(0) = 0
    and its distance 0. The selected entries get exactly the dense function's values
    (``grad + alpha * sign``, the product exact); the rest is zeroed by the mask anyway."""
    alpha = coefficient * grad_scale / n_total
    distance = 0.0
    for name, idx in reference.selected.items():
        if not idx.numel():
            continue
        p = params[name]
        delta = p.detach().reshape(-1).index_select(0, idx).sub_(reference.values[name])
        distance += float(delta.abs().sum())
        sign = delta.sign_()
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.view(-1).index_add_(0, idx, sign.to(p.grad.dtype), alpha=alpha)
    return distance


@torch.no_grad()
def add_l1_gradient(
    params: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    coefficient: float,
    n_total: int,
    grad_scale: float = 1.0,
    scratch: Scratch | None = None,
) -> float:
    """Add the gradient of ``coefficient * sum|theta - theta_ref| / n_total`` to ``.grad``;
    return sum|theta - theta_ref| (for logging).

    The reference backpropagates ``l1_reg * grad_accum * sum|p - p0| / N_total`` once per
    optimizer step (``coefficient`` = l1_reg * grad_accum here). Its gradient is
    ``coefficient * sign(p - p0) / N`` (0 where p == p0, as autograd's ``abs`` gives), so we
    add it directly: no second backward pass, which keeps DDP's one-reduction-per-step
    contract and does not depend on how the Trainer scales the loss. ``grad_scale`` is the
    AMP loss scale when gradients are still scaled.

    One buffer the size of the largest tensor serves every tensor: the delta is computed,
    its absolute values summed in place, then computed again and turned into its sign in
    place (a second subtraction pass costs less than a second vocabulary-sized buffer).
    ``grad += alpha * sign`` is exact in the same way as ``grad += (sign * alpha)``: the
    product is +-alpha or 0, so the fused multiply-add rounds once, like the plain add.
    """
    alpha = coefficient * grad_scale / n_total
    scratch = scratch or Scratch()
    distance = 0.0
    for name, p in params.items():
        buf = scratch.shaped(0, p)
        distance += float(torch.sub(p.detach(), reference[name], out=buf).abs_().sum())
        sign = torch.sub(p.detach(), reference[name], out=buf).sign_()
        if p.grad is None:
            p.grad = sign.mul(alpha)
        elif p.grad.dtype == sign.dtype:
            p.grad.add_(sign, alpha=alpha)
        else:
            p.grad.add_(sign.mul(alpha).to(p.grad.dtype))
    return distance


def count_changed(params: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> int:
    return sum(int((p.detach() != reference[n]).sum()) for n, p in params.items())


@torch.no_grad()
def extract_diff(
    model: nn.Module,
    reference: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    meta: DiffMetadata,
    *,
    head_names: Iterable[str] | None = None,
    min_abs_delta: float = 0.0,
) -> SparseDiff:
    """The diff a run leaves: sparse theta_final - theta_ref at the selected entries, by
    base-model names, plus the dense head (its final absolute values).

    Selected entries whose delta is exactly 0 (or ``<= min_abs_delta``; the reference uses
    1e-7) are dropped: they would patch nothing. ``head_names`` defaults to every state-dict
    entry outside the base-model prefix, tied ones included (an untied MLM decoder and its
    bias must travel with the head for fill-mask to reproduce training).
    """
    prefix = model.base_model_prefix + "."  # type: ignore[attr-defined]
    params = dict(model.named_parameters())
    sparse: dict[str, SparseTensorDiff] = {}
    for name, mask in masks.items():
        delta = (params[name].detach() - reference[name]).reshape(-1).float().cpu()
        keep = mask.reshape(-1).cpu() & (delta.abs() > min_abs_delta)
        idx = torch.nonzero(keep).view(-1).to(torch.int64)  # row-major, sorted, unique
        if idx.numel():
            sparse[name[len(prefix) :]] = SparseTensorDiff(idx, delta[idx].contiguous())
    state = model.state_dict()
    names = list(head_names) if head_names is not None else [n for n in state if not n.startswith(prefix)]
    dense = {n: state[n].detach().float().cpu().clone().contiguous() for n in sorted(names)}
    nnz = sum(len(s) for s in sparse.values())
    return SparseDiff(meta=meta.model_copy(update={"nnz": nnz}), sparse=sparse, dense=dense)
