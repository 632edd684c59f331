"""Failed admin authentications per client in a sliding window: past the limit, every admin
request from that client gets 429 with ``Retry-After`` until its oldest failure leaves the
window, and the token it sends is not even compared.

Why the token is not checked while a client is limited: if a correct token still passed,
an attacker would keep guessing at full speed (wrong guesses 429, the right one 200).
Successful authentications are not counted, so an admin client using the right token is
never limited; other clients are unaffected.

The client is the peer address uvicorn reports (behind a reverse proxy, every client shares
the proxy's address unless the proxy's headers are trusted). The state is in memory, per
process, bounded to :data:`MAX_CLIENTS` addresses (the least recently failing are dropped),
so a flood of source addresses costs a bounded amount of memory.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_CLIENTS = 10_000


class FailedAuthLimiter:
    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()  # dependencies may run in the thread pool

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again (whole, at least 1), or None when it may now."""
        now = self.clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return None
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if not times:
                del self._failures[client]
                return None
            if len(times) < self.limit:
                return None
            return max(1, math.ceil(times[0] + self.window_s - now))

    def failed(self, client: str) -> None:
        with self._lock:
            times = self._failures.pop(client, None) or deque(maxlen=self.limit)
            times.append(self.clock())
            self._failures[client] = times  # most recent last
            while len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)
