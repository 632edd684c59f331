"""Composition math, in one place: theta = theta0 + language delta + task delta (+ a head).

Used by the service (switching the live encoder between compositions), ``csft merge`` and
evaluation (composed state dicts) and the trainer (a source-language diff applied while a
task trains). All of them compute a composed entry with the same formula,

    composed[i] = to_param_dtype( float32(theta0[i]) + (delta_language[i] + delta_task[i]) )

(deltas summed in float32, language first; an absent delta is exactly 0), so a merged model
and a patched model hold bit-identical weights.

Representation. A composition is at most one language and one task diff. Each diff becomes
a :class:`DiffLayer` (its indices, theta0 there, theta0 + its delta there) and the entries
both diffs touch an :class:`Overlap` (theta0 + both deltas, and each diff's value alone).
Layers are per diff, not per pair, so a cache of layers costs the diffs' size once however
many pairs they form, and :func:`switch` writes only what changes: going from (L1, T) to
(L2, T) touches L1 and L2 (plus their small overlaps with T), never the rest of T.
For a pair that switches often, :func:`build_union` folds its two layers and overlap into
one *union layer* (union indices, theta0 there, composed values there): the same weights,
written in one sweep per tensor and direction instead of three (the service's hot-pair tier).

Every write is an ``index_copy_`` of precomputed values; restoring copies saved originals
back instead of subtracting, so it is bit-exact in every dtype after any number of cycles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from diffs_store.format import SparseDiff
from diffs_store.metadata import DiffKind

Params = Mapping[str, torch.Tensor]


def composed_values(original: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The one formula for a composed entry (see module docstring)."""
    return (original.to(torch.float32) + delta).to(original.dtype)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class TensorLayer:
    indices: torch.Tensor  # flat row-major, int64, sorted unique (index_copy_ needs int64)
    original: torch.Tensor  # theta0 there, parameter dtype
    patched: torch.Tensor  # theta0 + this diff's delta there, parameter dtype


@dataclass(frozen=True)
class DiffLayer:
    """One diff planned against a pristine base, or (``union``) a whole pair's composition
    folded into one layer by :func:`build_union`."""

    tensors: dict[str, TensorLayer]
    union: bool = False

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(t.indices, t.original, t.patched) for t in self.tensors.values())

    @property
    def nnz(self) -> int:
        return sum(t.indices.numel() for t in self.tensors.values())


@dataclass(frozen=True)
class TensorOverlap:
    indices: torch.Tensor  # entries both diffs touch
    first: torch.Tensor  # value with the first (language) diff alone
    second: torch.Tensor  # value with the second (task) diff alone
    both: torch.Tensor  # composed value


@dataclass(frozen=True)
class Overlap:
    tensors: dict[str, TensorOverlap]

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(t.indices, t.first, t.second, t.both) for t in self.tensors.values())


@dataclass(frozen=True)
class PatchPlan:
    """A composition ready to switch to: its layers (language first) and their overlap."""

    layers: tuple[DiffLayer, ...]
    overlap: Overlap | None = None

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers) + (self.overlap.nbytes if self.overlap else 0)

    @property
    def nnz(self) -> int:
        """Entries written when switching to this composition from the pristine base."""
        shared = sum(t.indices.numel() for t in self.overlap.tensors.values()) if self.overlap else 0
        return sum(layer.nnz for layer in self.layers) - shared


def canonical_order(diffs: Iterable[SparseDiff]) -> list[SparseDiff]:
    """Language diff first, then the task diff: fixes the float32 summation order."""
    ordered = sorted(diffs, key=lambda d: 0 if d.meta.kind is DiffKind.LANGUAGE else 1)
    if len(ordered) > 2 or (len(ordered) == 2 and ordered[0].meta.kind is ordered[1].meta.kind):
        raise ValueError("a composition takes at most one language diff and one task diff")
    return ordered


def build_layer(params: Params, diff: SparseDiff) -> DiffLayer:
    """Plan one diff. Reads theta0, so the base must be pristine at the diff's indices."""
    tensors = {}
    for name, part in diff.sparse.items():
        flat = params[name].detach().view(-1)
        idx = part.indices.to(device=flat.device, dtype=torch.int64)
        original = flat.index_select(0, idx)
        patched = composed_values(original, part.values.to(device=flat.device, dtype=torch.float32))
        tensors[name] = TensorLayer(idx, original, patched)
    return DiffLayer(tensors)


def layer_nbytes(params: Params, diff: SparseDiff) -> int:
    """What :func:`build_layer` will hold for ``diff``, without building it."""
    return sum(len(part) * (8 + 2 * params[name].element_size()) for name, part in diff.sparse.items())


def build_overlap(first: DiffLayer, second: DiffLayer, first_diff: SparseDiff, second_diff: SparseDiff) -> Overlap:
    """The entries both diffs touch; the deltas come from the diffs (layers keep only values)."""
    tensors = {}
    for name in first.tensors.keys() & second.tensors.keys():
        a, b = first.tensors[name], second.tensors[name]
        if not a.indices.numel() or not b.indices.numel():
            continue
        pos_a = torch.searchsorted(a.indices, b.indices).clamp_(max=a.indices.numel() - 1)
        in_a = a.indices[pos_a] == b.indices
        if not bool(in_a.any()):
            continue
        pos_b = torch.nonzero(in_a).squeeze(1)
        pos_a = pos_a[in_a]
        delta_a = first_diff.sparse[name].values.to(device=pos_a.device, dtype=torch.float32)[pos_a]
        delta_b = second_diff.sparse[name].values.to(device=pos_b.device, dtype=torch.float32)[pos_b]
        both = composed_values(a.original[pos_a], delta_a + delta_b)
        tensors[name] = TensorOverlap(a.indices[pos_a], a.patched[pos_a], b.patched[pos_b], both)
    return Overlap(tensors)


def build_union(plan: PatchPlan) -> DiffLayer:
    """A (language, task) plan as one layer: per tensor the union of both layers' indices,
    theta0 there and the composed value there.

    Every value is copied from the plan (a layer's ``patched`` where one diff touches an
    entry, the overlap's ``both`` where both do), so the union layer writes bit-identical
    weights to the layered plan and to ``csft merge``, and restoring it writes theta0 back.
    It reads no diff and no live weight, so any thread may build it. A tensor only one diff
    touches is shared with that layer, not copied (its bytes are then counted twice while
    both are cached: the accounting errs on the safe side).
    """
    if len(plan.layers) != 2:
        raise ValueError("a union layer folds exactly two layers (a language and a task)")
    first, second = plan.layers
    overlaps = plan.overlap.tensors if plan.overlap else {}
    tensors = {}
    for name in first.tensors.keys() | second.tensors.keys():
        a, b = first.tensors.get(name), second.tensors.get(name)
        tensors[name] = _union_tensor(a, b, overlaps.get(name)) if a is not None and b is not None else (a or b)
    return DiffLayer(tensors, union=True)


def _union_tensor(a: TensorLayer, b: TensorLayer, overlap: TensorOverlap | None) -> TensorLayer:
    """Merge two sorted layers of one tensor by position arithmetic (no sort): after
    dropping the entries of ``b`` that ``a`` also has, an entry's place in the union is its
    place in its own layer plus the number of the other layer's entries below it."""
    b_idx, b_orig, b_patched = b.indices, b.original, b.patched
    if overlap is not None:
        only_b = torch.ones_like(b_idx, dtype=torch.bool)
        only_b[torch.searchsorted(b_idx, overlap.indices)] = False
        b_idx, b_orig, b_patched = b_idx[only_b], b_orig[only_b], b_patched[only_b]
    pos_a = torch.arange(a.indices.numel(), device=b_idx.device) + torch.searchsorted(b_idx, a.indices)
    pos_b = torch.arange(b_idx.numel(), device=b_idx.device) + torch.searchsorted(a.indices, b_idx)
    n = a.indices.numel() + b_idx.numel()
    out = TensorLayer(a.indices.new_empty(n), a.original.new_empty(n), a.patched.new_empty(n))
    for dst, from_a, from_b in ((out.indices, a.indices, b_idx), (out.original, a.original, b_orig),
                                (out.patched, a.patched, b_patched)):
        dst[pos_a] = from_a
        dst[pos_b] = from_b
    if overlap is not None:
        out.patched[pos_a[torch.searchsorted(a.indices, overlap.indices)]] = overlap.both
    return out


def union_nbytes(plan: PatchPlan) -> int:
    """What :func:`build_union` will hold for ``plan``, without building it."""
    first, second = plan.layers
    overlaps = plan.overlap.tensors if plan.overlap else {}
    total = 0
    for name in first.tensors.keys() | second.tensors.keys():
        parts = [t for t in (first.tensors.get(name), second.tensors.get(name)) if t is not None]
        n = sum(t.indices.numel() for t in parts) - (overlaps[name].indices.numel() if name in overlaps else 0)
        total += n * (parts[0].indices.element_size() + 2 * parts[0].original.element_size())
    return total


def build_patch_plan(params: Params, diffs: Sequence[SparseDiff]) -> PatchPlan:
    """Plan a composition of at most one language and one task diff against pristine ``params``."""
    ordered = canonical_order(diffs)
    layers = tuple(build_layer(params, d) for d in ordered)
    overlap = build_overlap(layers[0], layers[1], ordered[0], ordered[1]) if len(layers) == 2 else None
    return PatchPlan(layers, overlap)


# Cost of copying one element of a whole tensor relative to writing one indexed entry: the
# measured ratio of a dense copy_ per element to index_copy_ per entry at the paper's
# densities (docs/BENCHMARKS.md, "Switch cost"). With a pristine copy, a tensor is restored
# whole when that plus writing the whole target is cheaper than undoing and redoing entry
# by entry.
DENSE_COPY_COST = 0.08
# The same when what is restored is a union layer: its one dense index stream writes an
# entry about twice as fast as the layers' separate streams (same section), so copying a
# tensor whole pays off only at about twice the density.
UNION_DENSE_COPY_COST = 0.15


@torch.no_grad()
def switch(
    params: Params,
    current: PatchPlan | None,
    target: PatchPlan | None,
    pristine: Params | None = None,
    dense_copy_cost: float | None = None,
) -> None:
    """Move ``params`` from composition ``current`` (None: pristine) to ``target``.

    Layers are compared by identity (the patcher caches one layer object per diff), so a
    layer in both compositions is left in place and only the changing ones are written.
    With ``pristine`` (an untouched copy of the base), a tensor is copied back whole and the
    target written afresh when that writes less than undoing and redoing entry by entry
    (dense diffs, both layers changing); same bytes either way. ``dense_copy_cost`` defaults
    to the rate of what is restored (:data:`UNION_DENSE_COPY_COST` when that is only union
    layers, else :data:`DENSE_COPY_COST`).
    """
    cur = current.layers if current else ()
    tgt = target.layers if target else ()
    removed = [layer for layer in cur if not any(layer is t for t in tgt)]
    added = [layer for layer in tgt if not any(layer is c for c in cur)]
    if not removed and not added:
        return
    if dense_copy_cost is None:
        all_union = bool(removed) and all(layer.union for layer in removed)
        dense_copy_cost = UNION_DENSE_COPY_COST if all_union else DENSE_COPY_COST
    kept_first = None  # set when one of two layers stays: is it the first (language) one?
    if removed and len(removed) < len(cur):
        kept_first = cur[0] is not removed[0]
    names = {name for layer in removed + added for name in layer.tensors}
    for name in names:
        flat = params[name].detach().view(-1)
        restore = [layer.tensors[name] for layer in removed if name in layer.tensors]
        sparse_cost = sum(t.indices.numel() for t in restore) + _entries(added, name)
        dense_cost = dense_copy_cost * flat.numel() + _entries(tgt, name)
        if pristine is not None and dense_cost < sparse_cost:
            flat.copy_(pristine[name].detach().view(-1))
            to_apply, overlap = tgt, target.overlap if target else None
        else:
            for t in restore:
                flat.index_copy_(0, t.indices, t.original)
            if kept_first is not None and current.overlap is not None and name in current.overlap.tensors:
                # One layer stays: restoring the other overwrote the entries they share.
                o = current.overlap.tensors[name]
                flat.index_copy_(0, o.indices, o.first if kept_first else o.second)
            to_apply, overlap = added, target.overlap if added and target else None
        for layer in to_apply:
            if name in layer.tensors:
                t = layer.tensors[name]
                flat.index_copy_(0, t.indices, t.patched)
        if overlap is not None and name in overlap.tensors:
            o = overlap.tensors[name]
            flat.index_copy_(0, o.indices, o.both)


def _entries(layers: Sequence[DiffLayer], name: str) -> int:
    return sum(layer.tensors[name].indices.numel() for layer in layers if name in layer.tensors)


def apply_plan(params: Params, plan: PatchPlan) -> None:
    """Pristine -> ``plan``."""
    switch(params, None, plan)


def restore_plan(params: Params, plan: PatchPlan) -> None:
    """``plan`` (or any partial application of it) -> pristine. Idempotent."""
    switch(params, plan, None)


def composed_state_dict(params: Params, diffs: Sequence[SparseDiff]) -> dict[str, torch.Tensor]:
    """Base parameters with the composition baked in (copies; ``params`` is untouched)."""
    out = {name: t.detach().clone() for name, t in params.items()}
    apply_plan(out, build_patch_plan(out, diffs))
    return out
