"""Switching the live encoder between compositions, exactly.

The patcher owns "which composition is applied". A composition is keyed by
``(language diff id or None, task diff id or None)``. ``activate(key)`` moves the live
weights there with :func:`diffs_store.compose.switch`, which writes only the layers that
change: switching the language under the same task leaves the task's entries alone. When
the key is already active nothing is written.

Two tiers of plans, both in one byte-bounded LRU (``PlanCache``, ``CSFT_PLAN_CACHE_BYTES``):

* **layers** (one per diff) and overlaps (one per pair, small): every composition can be
  served from them, and a one-diff switch writes only the diff that changes. A layer is
  built from pristine weights (the pristine copy, or the live base restored first).
* **hot pairs** (:mod:`service.hot_tier`): a union layer per pair switched to often, built
  off the worker, kept in the cache's slack. A switch that changes both diffs (or starts
  from or returns to the base) writes the union layers where they exist: one sweep per
  tensor and direction instead of one per layer and overlap.

Any representation of the applied composition holds the same weights, so the patcher picks
per switch the one that writes fewest entries: layers for a one-diff switch even when the pair is
hot (the applied union is then undone as its layers), union layers otherwise. Only the
scheduler's worker calls :meth:`Patcher.activate` and :meth:`Patcher.restore`.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from diffs_store.compose import DiffLayer, PatchPlan, build_layer, build_overlap, layer_nbytes, switch
from diffs_store.format import SparseDiff
from service import metrics
from service.hot_tier import HotTier, PairKey, is_union_key
from service.lru import ByteLRU


class PlanCache(ByteLRU):
    """Layers (keyed by diff id), overlaps (keyed by pair) and the hot pairs' union layers
    (keyed by :class:`service.hot_tier.UnionKey`, spillable: evicted first), bounded by
    their bytes together."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, size=lambda item: item.nbytes, gauge=metrics.PLAN_CACHE_BYTES,
                         spill_first=is_union_key)

    def _changed(self) -> None:
        super()._changed()
        metrics.HOT_PAIRS.set(self.spill_entries)
        metrics.HOT_PLAN_BYTES.set(self.spill_bytes)


def switch_kind(current: PairKey | None, target: PairKey) -> str:
    """What a switch from ``current`` to ``target`` changes: "language", "task", "pair"
    (both), or "base" (from or to the bare base, or a lone diff)."""
    cur = current or (None, None)
    changed = [a != b for a, b in zip(cur, target)]
    if all(changed):
        return "base" if None in cur or None in target else "pair"
    return "language" if changed[0] else "task"


class Patcher:
    def __init__(
        self,
        params: dict[str, torch.Tensor],
        cache: PlanCache,
        pristine: dict[str, torch.Tensor] | None = None,
        hot: HotTier | None = None,
    ) -> None:
        self.params = params
        self.cache = cache
        # Optional untouched copy of the base: dense diffs restore by whole-tensor copies.
        self.pristine = pristine
        # Optional hot-pair tier (union layers in ``cache``); None: layers only.
        self.hot = hot
        self.active: PairKey | None = None
        self._plan: PatchPlan | None = None
        # Every layer that may have been written since the base was last pristine: if a
        # switch fails half-way, writing all their originals back still restores exactly.
        self._touched: list[DiffLayer] = []

    def activate(self, key: PairKey, load_diff: Callable[[str], SparseDiff]) -> str:
        """Make ``key``'s composition live. ``load_diff(id)`` is called only on cache misses.
        Returns the tier that wrote the target: "union" (its hot plan), "layers", or "none"
        when ``key`` was already applied."""
        if key == self.active:
            return "none"
        one_diff = switch_kind(self.active, key) in ("language", "task")
        union = self.hot.plan(key) if self.hot is not None and not one_diff else None
        target = PatchPlan((union,)) if union is not None else self._plan_for(key, load_diff)
        current = self._plan  # read after planning: a miss without the pristine copy restores first
        if one_diff and _is_union(current):
            # Write only the diff that changes: undo the applied union as its layers (same weights).
            current = self._cached_layers(self.active, self.cache.peek) or current
        start = time.perf_counter()
        self._touched = list(current.layers if current else ()) + list(target.layers)
        switch(self.params, current, target, self.pristine)
        _sync(self.params)
        self.active, self._plan, self._touched = key, target, list(target.layers)
        metrics.PATCH_SECONDS.labels("apply").observe(time.perf_counter() - start)
        if self.hot is not None:
            self.hot.record(key)
        return "union" if _is_union(target) else "layers"

    def restore(self) -> None:
        """Back to the pristine base (idempotent, also after a failed switch)."""
        if not self._touched:
            return
        start = time.perf_counter()
        for layer in self._touched:
            switch(self.params, PatchPlan((layer,)), None, self.pristine)
        _sync(self.params)
        self.active, self._plan, self._touched = None, None, []
        metrics.PATCH_SECONDS.labels("restore").observe(time.perf_counter() - start)

    def pristine_tensor(self, name: str) -> torch.Tensor:
        """theta0 of one base tensor whatever composition is applied: the pristine copy
        itself when there is one (shared, never written), else a copy of the live tensor
        with the saved originals of every touched layer written back."""
        if self.pristine is not None:
            return self.pristine[name]
        out = self.params[name].detach().clone()
        flat = out.view(-1)
        for layer in self._touched:
            if name in layer.tensors:
                flat.index_copy_(0, layer.tensors[name].indices, layer.tensors[name].original)
        return out

    def _build(self, diff: SparseDiff) -> DiffLayer:
        """A layer reads theta0 at the diff's indices: from the pristine copy when there is
        one (no restore, any thread), else from the live base, which the caller restored."""
        return build_layer(self.pristine if self.pristine is not None else self.params, diff)

    def can_warm(self) -> bool:
        """Layers can be built off the worker only from the pristine copy (the live weights
        are the worker's alone)."""
        return self.pristine is not None

    def warm(self, diff_id: str, diff: SparseDiff) -> bool:
        """Build and cache ``diff``'s layer ahead of its first request, from any thread.

        Only with the pristine copy, and only while the layer fits in the budget next to
        what is cached: warming never evicts a layer somebody used (only hot pairs' union
        layers, which live in the budget's slack). True when it built one.
        """
        if not self.can_warm() or diff_id in self.cache:
            return False
        if self.cache.room_for(layer_nbytes(self.pristine, diff)) is None:
            return False
        return self.cache.put_if_room(diff_id, self._build(diff))

    def warm_overlap(self, key: PairKey, diffs: tuple[SparseDiff, SparseDiff]) -> bool:
        """Build and cache the overlap of a (language, task) pair whose two layers are
        cached, from any thread (it reads only the layers and the diffs), while the budget
        allows. True when it built one."""
        layers = [self.cache.peek(i) for i in key]
        if key in self.cache or any(layer is None for layer in layers):
            return False
        return self.cache.put_if_room(key, build_overlap(layers[0], layers[1], diffs[0], diffs[1]))

    def _cached_layers(self, key: PairKey, lookup: Callable) -> PatchPlan | None:
        """``key``'s layered plan if its layers (and overlap) are all cached, else None."""
        ids = [i for i in key if i is not None]
        layers = [lookup(i) for i in ids]
        overlap = lookup(key) if len(ids) == 2 else None
        if all(layer is not None for layer in layers) and (len(ids) < 2 or overlap is not None):
            return PatchPlan(tuple(layers), overlap)
        return None

    def _plan_for(self, key: PairKey, load_diff: Callable[[str], SparseDiff]) -> PatchPlan:
        cached = self._cached_layers(key, self.cache.get)
        if cached is not None:
            metrics.PLAN_CACHE.labels("hit").inc()
            return cached
        ids = [i for i in key if i is not None]
        layers = [self.cache.get(i) for i in ids]
        metrics.PLAN_CACHE.labels("miss").inc()
        diffs = {i: load_diff(i) for i in ids}
        if any(layer is None for layer in layers):
            if self.pristine is None:
                self.restore()  # layers read theta0: build them on the pristine base
            layers = [layer or self._build(diffs[i]) for i, layer in zip(ids, layers)]
            for i, layer in zip(ids, layers):
                self.cache.put(i, layer)
        overlap = None
        if len(ids) == 2:
            overlap = build_overlap(layers[0], layers[1], diffs[ids[0]], diffs[ids[1]])
            self.cache.put(key, overlap)
        return PatchPlan(tuple(layers), overlap)


def _is_union(plan: PatchPlan | None) -> bool:
    return plan is not None and any(layer.union for layer in plan.layers)


def _sync(params: dict[str, torch.Tensor]) -> None:
    """On CUDA, make the timing (and any error) belong to the patch, not the next forward."""
    first = next(iter(params.values()), None)
    if first is not None and first.is_cuda:
        torch.cuda.synchronize(first.device)
