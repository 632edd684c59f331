"""Switching the live encoder between compositions, exactly.

The patcher owns "which composition is applied". ``activate(key)`` restores the current
one (copying saved originals back) and applies the next (copying composed values in); when
the key is already active nothing is written. Plans come from a byte-bounded LRU and are
built on a miss, always against pristine weights. Only the scheduler's worker calls this.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable

import torch

from diffs_store.compose import PatchPlan, apply_plan, build_patch_plan, restore_plan
from diffs_store.format import SparseDiff
from service import metrics

PairKey = Hashable  # (language diff id or None, task diff id or None)


class PlanCache:
    """LRU of patch plans bounded by their bytes (a single plan over budget is kept alone)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._plans: OrderedDict[PairKey, PatchPlan] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    def get(self, key: PairKey) -> PatchPlan | None:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def put(self, key: PairKey, plan: PatchPlan) -> None:
        """Insert and evict least recently used plans until within budget. Evicting the
        applied plan is safe: the patcher keeps its own reference until it restores."""
        with self._lock:
            if key in self._plans:
                return
            self._plans[key] = plan
            self.bytes += plan.nbytes
            while self.bytes > self.max_bytes and len(self._plans) > 1:
                victim = next(iter(self._plans))  # oldest; never `key`, which is newest
                self.bytes -= self._plans.pop(victim).nbytes
            metrics.PLAN_CACHE_BYTES.set(self.bytes)

    def __contains__(self, key: PairKey) -> bool:
        return key in self._plans

    def __len__(self) -> int:
        return len(self._plans)


class Patcher:
    def __init__(self, params: dict[str, torch.Tensor], cache: PlanCache) -> None:
        self.params = params
        self.cache = cache
        self.active: PairKey | None = None
        self._active_plan: PatchPlan | None = None

    def activate(self, key: PairKey, load_diffs: Callable[[], list[SparseDiff]]) -> None:
        """Make ``key``'s composition live. ``load_diffs`` is called only on a plan-cache miss."""
        if key == self.active:
            return
        self.restore()
        plan = self.cache.get(key)
        if plan is None:
            metrics.PLAN_CACHE.labels("miss").inc()
            plan = build_patch_plan(self.params, load_diffs())  # weights are pristine here
            self.cache.put(key, plan)
        else:
            metrics.PLAN_CACHE.labels("hit").inc()
        start = time.perf_counter()
        # Mark active before writing: if apply fails half-way, restore() still undoes it
        # (copying originals over a partly applied plan is exact).
        self.active, self._active_plan = key, plan
        apply_plan(self.params, plan)
        _sync(self.params)
        metrics.PATCH_SECONDS.labels("apply").observe(time.perf_counter() - start)

    def restore(self) -> None:
        """Back to the pristine base (idempotent)."""
        if self._active_plan is None:
            return
        start = time.perf_counter()
        restore_plan(self.params, self._active_plan)
        _sync(self.params)
        self.active, self._active_plan = None, None
        metrics.PATCH_SECONDS.labels("restore").observe(time.perf_counter() - start)


def _sync(params: dict[str, torch.Tensor]) -> None:
    """On CUDA, make the timing (and any error) belong to the patch, not the next forward."""
    first = next(iter(params.values()), None)
    if first is not None and first.is_cuda:
        torch.cuda.synchronize(first.device)
