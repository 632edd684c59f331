"""Composition math, in one place: theta = theta0 + sum of sparse deltas (+ a head).

Used by the service (patch plans applied in place), ``csft merge`` (a composed state dict)
and evaluation. Both paths compute the composed value the same way, so a merged model and a
patched model hold bit-identical weights:

    patched[i] = cast_to_param_dtype( float32(theta0[i]) + (delta_a[i] + delta_b[i]) )

The deltas are summed in float32 in a canonical diff order (sorted by kind, then key), so
the result does not depend on the order the caller passes the diffs in. A plan stores the
original and the patched values at the union of touched indices; applying and restoring
are then two ``index_copy_`` calls per tensor. Restoring copies saved values back instead
of subtracting, so it is bit-exact in every dtype after any number of cycles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from diffs_store.format import SparseDiff


@dataclass(frozen=True)
class TensorPatch:
    """One parameter's touched entries: flat row-major int64 indices, sorted and unique."""

    indices: torch.Tensor
    original: torch.Tensor  # theta0 at indices, parameter dtype
    patched: torch.Tensor  # composed value at indices, parameter dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.indices, self.original, self.patched))


@dataclass(frozen=True)
class PatchPlan:
    """Everything needed to switch a base model to a composition and back."""

    tensors: dict[str, TensorPatch]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.tensors.values())

    @property
    def nnz(self) -> int:
        return sum(p.indices.numel() for p in self.tensors.values())


def canonical_order(diffs: Iterable[SparseDiff]) -> list[SparseDiff]:
    """Language diffs before task diffs, then by key: makes float32 summation order-free."""
    return sorted(diffs, key=lambda d: (d.meta.kind.value, d.meta.key or "", d.meta.created_at))


def summed_deltas(diffs: Sequence[SparseDiff]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per parameter: (union of indices as sorted int64, float32 sum of the deltas there)."""
    by_name: dict[str, list] = {}
    for diff in canonical_order(diffs):
        for name, part in diff.sparse.items():
            by_name.setdefault(name, []).append(part)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, parts in by_name.items():
        if len(parts) == 1:
            out[name] = (parts[0].indices.to(torch.int64), parts[0].values.to(torch.float32))
            continue
        idx = torch.cat([p.indices.to(torch.int64) for p in parts])
        val = torch.cat([p.values.to(torch.float32) for p in parts])
        union, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        delta = torch.zeros(union.numel(), dtype=torch.float32)
        # Each diff's indices are unique, so every union entry receives at most one value per
        # diff, added in canonical diff order (index_add_ walks its input in order on CPU).
        delta.index_add_(0, inverse, val)
        out[name] = (union, delta)
    return out


def composed_values(original: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The one formula for a composed entry (see module docstring)."""
    return (original.to(torch.float32) + delta).to(original.dtype)


def build_patch_plan(params: Mapping[str, torch.Tensor], diffs: Sequence[SparseDiff]) -> PatchPlan:
    """Plan a composition against *pristine* ``params`` (base-model names -> tensors).

    Reads the original values, so it must run while no other plan is applied.
    """
    tensors: dict[str, TensorPatch] = {}
    for name, (idx, delta) in summed_deltas(diffs).items():
        flat = params[name].detach().view(-1)
        idx = idx.to(flat.device)
        original = flat.index_select(0, idx)
        patched = composed_values(original, delta.to(flat.device))
        tensors[name] = TensorPatch(idx, original, patched)
    return PatchPlan(tensors)


@torch.no_grad()
def apply_plan(params: Mapping[str, torch.Tensor], plan: PatchPlan) -> None:
    for name, p in plan.tensors.items():
        params[name].view(-1).index_copy_(0, p.indices, p.patched)


@torch.no_grad()
def restore_plan(params: Mapping[str, torch.Tensor], plan: PatchPlan) -> None:
    for name, p in plan.tensors.items():
        params[name].view(-1).index_copy_(0, p.indices, p.original)


def composed_state_dict(
    params: Mapping[str, torch.Tensor], diffs: Sequence[SparseDiff]
) -> dict[str, torch.Tensor]:
    """Base parameters with the composition baked in (copies; ``params`` is untouched)."""
    out = {name: t.detach().clone() for name, t in params.items()}
    plan = build_patch_plan(params, diffs)
    apply_plan(out, plan)
    return out


def head_tensors(diffs: Sequence[SparseDiff]) -> dict[str, torch.Tensor]:
    """The dense head for a composition: the task diff's head when there is one, else the
    language diff's MLM head (a language head is never used under a task)."""
    tasks = [d for d in diffs if d.meta.kind.value == "task"]
    if len(tasks) > 1:
        raise ValueError("a composition takes at most one task diff")
    source = tasks or [d for d in diffs if d.dense]
    return dict(source[0].dense) if source else {}
