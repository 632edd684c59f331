"""A least-recently-used cache bounded by the bytes of what it holds.

Both caches of the serving path are bounded this way (patch-plan layers, task heads):
a count bound means nothing when one MLM head with a 250k-vocabulary decoder weighs as
much as a thousand classifier heads.
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

    def __init__(self, max_bytes: int, size: Callable[[Any], int], gauge: Gauge | None = None) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._gauge = gauge
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

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
        """Insert (a key already present is left as is) and evict the least recently used
        entries until within budget."""
        with self._lock:
            if key in self._items:
                return
            n = self._size(item)
            self._items[key] = (item, n)
            self.bytes += n
            while self.bytes > self.max_bytes and len(self._items) > 1:
                victim = next(iter(self._items))  # oldest; never `key`, which is newest
                self.bytes -= self._items.pop(victim)[1]
            if self._gauge is not None:
                self._gauge.set(self.bytes)

    def put_if_room(self, key: Hashable, item: Any) -> bool:
        """Insert only if it fits next to what is held (for speculative work, such as
        prewarming, that must never evict what somebody used). True when inserted."""
        with self._lock:
            if key in self._items or self.bytes + self._size(item) > self.max_bytes:
                return False
        self.put(key, item)
        return True

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
