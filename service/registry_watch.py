"""Keeps Redis off the request path: a background thread watches the registry.

Every ``poll_s`` it reads the change counter (one GET, bounded by the client's socket
timeout). That one read does three jobs:

* **change detection**: when the counter moves, ``on_change`` drops the engine's resolved
  pairs, so uploads on any replica take effect within one poll, and requests never wait for
  Redis to find out;
* **circuit breaker**: a failed read (or a failure reported by a request via
  :meth:`RegistryWatch.record_failure`) opens the breaker; while it is open, lookups of pairs
  not yet resolved fail fast with 503 instead of queueing behind a hung Redis, and
  ``/readyz`` says 503. The next successful read closes it: recovery needs no restart;
* **supervision**: while Redis does not answer and it is the embedded server, a dead
  process (kill -9, crash) is restarted on its AOF; a frozen one (SIGSTOP) is left alone.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from diffs_store.redis_connection import restart_embedded_if_dead
from diffs_store.registry import Registry

log = logging.getLogger(__name__)


class RegistryWatch:
    def __init__(
        self,
        registry: Registry,
        on_change: Callable[[int], None],
        *,
        poll_s: float,
        embedded_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self.on_change = on_change
        self.poll_s = poll_s
        self.embedded_dir = embedded_dir
        self._up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_change: float | None = None  # monotonic time of the last up/down flip

    @property
    def up(self) -> bool:
        """Closed breaker: the last read succeeded and no request has seen a failure since."""
        return self._up.is_set()

    def record_failure(self) -> None:
        """A request saw Redis fail: open the breaker until the next successful poll."""
        self._set(False)

    def poll_once(self) -> bool:
        """One read of the counter; True when Redis answered."""
        try:
            counter = self.registry.change_counter()
        except Exception as exc:  # any failure to read means "down"; never kill the thread
            if self.up:
                log.warning("registry unreachable: %s", exc)
            self._set(False)
            self._supervise()
            return False
        self.on_change(counter)
        if not self.up:
            log.info("registry reachable again")
        self._set(True)
        return True

    def wait_until(self, up: bool, timeout: float) -> bool:
        """Block until the breaker is closed (``up``) or open; for tests and start-up."""
        deadline = time.monotonic() + timeout
        while self.up != up:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="registry-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll_once()

    def _set(self, up: bool) -> None:
        if up != self.up:
            self.last_change = time.monotonic()
        (self._up.set if up else self._up.clear)()

    def _supervise(self) -> None:
        if self.embedded_dir is None:
            return
        try:
            if restart_embedded_if_dead(self.embedded_dir):
                log.warning("the embedded Redis had died; restarted it from its AOF")
        except Exception:
            log.exception("could not restart the embedded Redis")
