"""The patcher's hot-pair tier: a union plan for each (language, task) pair switched to often.

Why a tier: a pair switch through per-diff layers writes the language layer, the task layer
and their overlap, one ``index_copy_`` sweep each, in both directions; one sweep over the
union of the pair's indices (:func:`diffs_store.compose.build_union`) moves fewer cache
lines: pair switches 1.25-1.3x faster on one CPU, ~2x on another (docs/BENCHMARKS.md,
"Hot-pair tier"). A union plan is per pair (L x T of them, each about as large as both
layers), while layers are per diff, shared by every pair, and also make one-diff switches
cheap. So layers stay the base tier and union plans are extras for the pairs that earn them:

* **Promotion by use.** A pair is promoted once it was switched to ``promote_after`` times
  among the last :data:`WINDOW` switches. Switches count, not requests: a pair that stays
  applied never switches and would gain nothing.
* **Built off the worker.** From the pair's cached layers and overlap (no diff, no live
  weight), through ``submit`` (the engine's prewarm thread). Until it exists, or when it
  cannot, the pair is served by its layers: a cold or lukewarm pair never waits for it.
* **Budget: the slack of the plan cache.** Union plans live in the same ``PlanCache``
  (``CSFT_PLAN_CACHE_BYTES``) as layers and overlaps, as *spillable* entries
  (:class:`service.lru.ByteLRU`): inserted only into room the layers and overlaps leave,
  possibly replacing union plans of pairs switched to less often in the window, and evicted
  first whenever a layer or overlap needs room. The tier never costs a pair its layers.
* **Eviction while applied is safe**: the patcher holds the applied plan itself, so an
  evicted union plan still restores exactly; it is freed after the next switch.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from diffs_store.compose import DiffLayer, PatchPlan, build_union, union_nbytes
from service import metrics
from service.lru import ByteLRU

PairKey = tuple  # (language diff id or None, task diff id or None)

# Switches remembered for promotion: enough to see a pair come back among 20-odd others.
WINDOW = 64


@dataclass(frozen=True)
class UnionKey:
    """Plan-cache key of a pair's union layer (the pair key alone names its overlap)."""

    pair: PairKey


def is_union_key(key: Hashable) -> bool:
    return isinstance(key, UnionKey)


class HotTier:
    """Promotion counts and union-plan building; the plans themselves sit in ``cache``."""

    def __init__(self, cache: ByteLRU, promote_after: int, submit: Callable[[Callable[[], Any]], None]) -> None:
        self.cache = cache
        self.promote_after = promote_after  # 0: the tier is off
        self._submit = submit
        self._recent: deque[PairKey] = deque()
        self._uses: Counter[PairKey] = Counter()
        self._building: set[PairKey] = set()
        self._lock = threading.Lock()

    def plan(self, key: PairKey) -> DiffLayer | None:
        """The pair's union layer when it is hot (and makes it recent)."""
        return self.cache.get(UnionKey(key)) if self.promote_after else None

    def record(self, key: PairKey) -> None:
        """The worker switched to ``key``: count it and, once due, build its union plan
        off the worker."""
        if not self.promote_after or None in key:
            return
        with self._lock:
            self._recent.append(key)
            self._uses[key] += 1
            if len(self._recent) > WINDOW:
                old = self._recent.popleft()
                self._uses[old] -= 1
                if not self._uses[old]:
                    del self._uses[old]
            due = self._uses[key] >= self.promote_after and key not in self._building
            due = due and UnionKey(key) not in self.cache
            if due:
                self._building.add(key)
        if due:
            try:
                self._submit(lambda: self.build(key))
            except RuntimeError:  # the executor is shutting down
                with self._lock:
                    self._building.discard(key)

    def build(self, key: PairKey) -> bool:
        """Fold the pair's cached layers and overlap into its union plan and cache it, if
        room allows (see the module docstring). Any thread. True when it cached one."""
        try:
            layers = tuple(self.cache.peek(i) for i in key)
            overlap = self.cache.peek(key)
            if overlap is None or any(layer is None for layer in layers) or UnionKey(key) in self.cache:
                return False  # lost its layers meanwhile: it stays on them until promoted again
            plan = PatchPlan(layers, overlap)
            nbytes = union_nbytes(plan)
            victims = self.cache.room_for(nbytes)
            if victims is None or not self._admit(key, victims):
                return False  # checked before building, so a refused pair costs no work
            admitted = self.cache.put_in_room(UnionKey(key), build_union(plan), nbytes, lambda v: self._admit(key, v))
            if admitted:
                metrics.HOT_PROMOTIONS.inc()
            return admitted
        finally:
            with self._lock:
                self._building.discard(key)

    def _admit(self, key: PairKey, victims: list[UnionKey]) -> bool:
        """A hot pair gives way only to a pair switched to more often in the window."""
        with self._lock:
            return all(self._uses[v.pair] < self._uses[key] for v in victims)
