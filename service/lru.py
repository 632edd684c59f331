"""A least-recently-used cache bounded by the bytes of what it holds.

Both caches of the serving path are bounded this way (patch-plan layers, task heads):
a count bound means nothing when one MLM head with a 250k-vocabulary decoder weighs as
much as a thousand classifier heads.

Optionally some entries are *spillable* (``spill_first(key)``): extras that live in the
budget's slack, such as the patcher's union plans for hot pairs. They are evicted before
any other entry, and they are inserted only into room left by the others
(:meth:`ByteLRU.put_in_room`), so they never cost an ordinary entry its place.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

from prometheus_client import Gauge


class ByteLRU:
    """LRU bounded by ``size(item)`` bytes in total; the newest entry is always kept.

    Evicting an item that is in use is safe: its user keeps its own reference.
    """

    def __init__(
        self,
        max_bytes: int,
        size: Callable[[Any], int],
        gauge: Gauge | None = None,
        spill_first: Callable[[Hashable], bool] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._gauge = gauge
        self._spill_first = spill_first or (lambda key: False)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.spill_bytes = 0  # held by spillable entries
        self.spill_entries = 0

    def get(self, key: Hashable) -> Any:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry[0]

    def peek(self, key: Hashable) -> Any:
        """The item, without making it recent (for cost estimates, not for use)."""
        with self._lock:
            entry = self._items.get(key)
            return None if entry is None else entry[0]

    def put(self, key: Hashable, item: Any) -> None:
        """Insert (a key already present is left as is) and evict until within budget:
        spillable entries first, then the least recently used."""
        with self._lock:
            if key in self._items:
                return
            self._insert(key, item, self._size(item))
            while self.bytes > self.max_bytes and len(self._items) > 1:
                victim = next((k for k in self._items if k != key and self._spill_first(k)), None)
                self._pop(victim if victim is not None else next(iter(self._items)))  # oldest is never `key`
            self._changed()

    def put_if_room(self, key: Hashable, item: Any) -> bool:
        """Insert only if it fits next to what is held, evicting at most spillable entries
        (for speculative work, such as prewarming, that must never evict an ordinary entry
        somebody used). True when inserted."""
        return self.put_in_room(key, item, self._size(item), admit=lambda victims: True)

    def room_for(self, nbytes: int) -> list[Hashable] | None:
        """The spillable entries, least recently used first, whose eviction would make room
        for ``nbytes`` ([] when it fits as is), or None when even evicting all of them would not."""
        with self._lock:
            return self._room_for(nbytes)

    def put_in_room(self, key: Hashable, item: Any, nbytes: int, admit: Callable[[list], bool]) -> bool:
        """Insert ``item`` (``nbytes``) into the room left by what is held, evicting only
        spillable entries (:meth:`room_for`) and only if ``admit(victims)``. True when inserted."""
        with self._lock:
            victims = None if key in self._items else self._room_for(nbytes)
            if victims is None or not admit(victims):
                return False
            for victim in victims:
                self._pop(victim)
            self._insert(key, item, nbytes)
            self._changed()
            return True

    def _room_for(self, nbytes: int) -> list[Hashable] | None:
        free, victims = self.max_bytes - self.bytes, []
        for key, (_, n) in self._items.items():
            if free >= nbytes:
                break
            if self._spill_first(key):
                victims.append(key)
                free += n
        return victims if free >= nbytes else None

    def _insert(self, key: Hashable, item: Any, n: int) -> None:
        self._items[key] = (item, n)
        self.bytes += n
        if self._spill_first(key):
            self.spill_bytes += n
            self.spill_entries += 1

    def _pop(self, key: Hashable) -> None:
        n = self._items.pop(key)[1]
        self.bytes -= n
        if self._spill_first(key):
            self.spill_bytes -= n
            self.spill_entries -= 1

    def _changed(self) -> None:
        """Called under the lock after every change (gauges)."""
        if self._gauge is not None:
            self._gauge.set(self.bytes)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
