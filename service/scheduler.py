"""One worker thread owns the model; requests queue per composition and run in micro-batches.

Why a single worker: the live encoder holds exactly one composition at a time, so whoever
patches must also be the only one running forwards (the PEFT #804 class of bug is two
requests sharing global adapter state). Requests wait in per-pair FIFO queues.

Choosing the next pair (the policy):

1. Stay on the applied pair while it has work and no request of another pair has waited
   ``switch_after`` seconds: a switch costs more than a small forward, so the worker spends
   its time on forwards, not on switches.
2. Bounded waiting: once another pair's head request has waited ``switch_after``, switch.
   A request that has waited ``2 x switch_after`` (starving) goes first, oldest first, so
   every request is served within about twice ``switch_after`` plus a few batches, and
   under overload the pairs take turns.
3. Otherwise, among the pairs that may go (the overdue ones, or any when the applied pair
   is idle), take the **cheapest switch** from the applied pair, as ``switch_cost`` prices
   it (the engine: entries written, a diff not yet planned costs more), the oldest first
   among equals. So consecutive batches share a diff where they can: only the language or
   only the task changes, which writes one layer instead of two.

Forming a batch: take queued jobs of that pair up to ``max_batch_size`` inputs, waiting up
to ``max_wait`` seconds after the first job's arrival for more to come.

What no policy here can do: make a batch larger than the requests of its pair that are
queued. Under load every head request is past ``2 x switch_after`` and the order is oldest
first, which already takes the longest queues more often than not. With 64 closed-loop
clients over 20 pairs that is ~6 requests per switch (measured 5.6). A longest-queue-first
policy with a wait bound would add ~5% throughput for a worse p99 (``bench/closed_loop_model.py``).
Mixed traffic approaches a pinned pair only when the queues are deep (hundreds of clients)
*and* a switch is cheap next to a forward pass; docs/BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from service import metrics

log = logging.getLogger(__name__)


@dataclass
class Job:
    key: Hashable
    payload: Any  # whatever the executor needs (the resolved composition, prepared inputs)
    size: int  # number of model windows (inputs, or parts of long ones), for batch limits
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(
        self,
        execute: Callable[[Hashable, list[Job]], None],
        active_key: Callable[[], Hashable | None],
        *,
        max_batch_size: int = 32,
        max_wait: float = 0.005,
        switch_after: float = 0.05,
        switch_cost: Callable[[Hashable | None, Hashable], float] | None = None,
    ) -> None:
        self._execute = execute
        self._active_key = active_key
        self._switch_cost = switch_cost or (lambda current, target: 0.0)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.switch_after = switch_after
        self._queues: OrderedDict[Hashable, deque[Job]] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="csft-model-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model worker is shutting down")
            self._queues.setdefault(job.key, deque()).append(job)
            metrics.QUEUE_DEPTH.inc()
            self._cond.notify_all()
        return job.future

    @property
    def depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    # -- worker side ------------------------------------------------------------------------

    def _pick_key(self, now: float) -> Hashable:
        """The next pair to serve, by the policy in the module docstring."""
        active = self._active_key()
        others = [k for k in self._queues if k != active]
        if not others:
            return active
        waited = {k: now - self._queues[k][0].enqueued for k in others}
        oldest = max(others, key=waited.__getitem__)
        if waited[oldest] >= 2 * self.switch_after:
            return oldest  # starving: strict age order
        due = [k for k in others if waited[k] >= self.switch_after]
        if active in self._queues and not due:
            return active
        candidates = due or others
        return min(candidates, key=lambda k: (self._switch_cost(active, k), -waited[k]))

    def _take_batch(self) -> tuple[Hashable, list[Job]] | None:
        with self._cond:
            while not self._queues and not self._stopping:
                self._cond.wait()
            if self._stopping and not self._queues:
                return None
            key = self._pick_key(time.monotonic())
            queue = self._queues[key]
            deadline = queue[0].enqueued + self.max_wait
            while sum(j.size for j in queue) < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs, size = [], 0
            while queue and (not jobs or size + queue[0].size <= self.max_batch_size):
                job = queue.popleft()
                metrics.QUEUE_DEPTH.dec()
                if job.future.set_running_or_notify_cancel():  # skip requests already abandoned
                    jobs.append(job)
                    size += job.size
            if not queue:
                del self._queues[key]
            return key, jobs

    def _run(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            key, jobs = taken
            if not jobs:
                continue
            metrics.BATCH_SIZE.observe(sum(j.size for j in jobs))
            try:
                self._execute(key, jobs)
            except BaseException as exc:  # the executor restores weights; never let the worker die
                log.exception("batch for %s failed", key)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
