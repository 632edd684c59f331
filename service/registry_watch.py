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
  process (kill -9, crash) is restarted on its AOF; a frozen one (SIGSTOP) is left alone;
* **data loss**: the counter only ever grows, so a read *below* the last one means Redis
  lost the index (FLUSHALL, a fresh server at the same address, an older snapshot). With
  ``rebuild_on_loss`` the index is rebuilt from the blob store (which the blobs' own
  metadata makes possible, :mod:`diffs_store.rebuild`) right here, while :attr:`rebuilding`
  makes ``/readyz`` say 503 and lookups answer 503 instead of 404s from a half-empty index.

Every ``audit_s`` (and after every change), the registered diffs of the loaded base are
checked against the blob store: :attr:`missing_blobs` names those whose file is gone, so the
engine answers 503 for their pairs (never a 500 from deep inside a load) and ``/readyz``
and ``csft_missing_blobs`` show them.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from diffs_store.rebuild import rebuild
from diffs_store.redis_connection import restart_embedded_if_dead
from diffs_store.registry import Registry
from service import metrics

log = logging.getLogger(__name__)


class RegistryWatch:
    def __init__(
        self,
        registry: Registry,
        on_change: Callable[[int], None],
        *,
        poll_s: float,
        embedded_dir: Path | None = None,
        fingerprint: str | None = None,
        audit_s: float = 5.0,
        rebuild_on_loss: bool = False,
    ) -> None:
        self.registry = registry
        self.on_change = on_change
        self.poll_s = poll_s
        self.embedded_dir = embedded_dir
        self.fingerprint = fingerprint  # the base whose diffs are audited; None: no audit
        self.audit_s = audit_s
        self.rebuild_on_loss = rebuild_on_loss
        self.missing_blobs: frozenset[str] = frozenset()  # registered ids without a blob
        self.rebuilding = False
        self._last_counter = 0
        self._next_audit = 0.0
        self._poll_lock = threading.Lock()
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
        """One read of the counter; True when Redis answered. Serialised: a request thread
        may poll too (Engine.changed_here), and a stale read compared with a newer one
        would look like data loss."""
        with self._poll_lock:
            return self._poll()

    def _poll(self) -> bool:
        try:
            counter = self.registry.change_counter()
            if counter < self._last_counter and self.rebuild_on_loss:
                counter = self._recover(counter)
        except Exception as exc:  # any failure to read means "down"; never kill the thread
            if self.up:
                log.warning("registry unreachable: %s", exc)
            self._set(False)
            self._supervise()
            return False
        changed = counter != self._last_counter
        self._last_counter = counter
        self.on_change(counter)
        if not self.up:
            log.info("registry reachable again")
        self._set(True)
        if changed or time.monotonic() >= self._next_audit:
            self.audit()
        return True

    def _recover(self, counter: int) -> int:
        """The index went backwards: rebuild it from the blob store; the counter after."""
        log.warning("the registry's change counter went back from %d to %d: Redis lost its data; "
                    "rebuilding the registry from the blob store", self._last_counter, counter)
        self.rebuilding = True
        try:
            report = rebuild(self.registry)
        finally:
            self.rebuilding = False
        metrics.REGISTRY_REBUILDS.inc()
        log.warning("registry rebuilt from the blob store: %s", report.summary())
        return self.registry.change_counter()

    def audit(self) -> None:
        """Which registered diffs of the loaded base have no blob (their pairs answer 503)."""
        self._next_audit = time.monotonic() + self.audit_s
        if self.fingerprint is None:
            return
        try:
            entries = self.registry.list(self.fingerprint)
            missing = frozenset(e.id for e in entries if not self.registry.blobs.exists(e.id))
        except Exception as exc:  # Redis trouble is the poll's business; try again next time
            log.warning("could not check the blob store against the registry: %s", exc)
            return
        if missing - self.missing_blobs:
            log.warning("registered diffs missing from the blob store (their pairs answer 503): %s",
                        ", ".join(sorted(missing - self.missing_blobs)))
        self.missing_blobs = missing
        metrics.MISSING_BLOBS.set(len(missing))

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
