"""The scheduler alone: batching by pair, few switches, no starvation, failures contained."""

from __future__ import annotations

import threading
import time

import pytest

from service.scheduler import Job, Scheduler


class Recorder:
    """Executor that records batches and pretends to own a model (tracks the active pair)."""

    def __init__(self, delay: float = 0.0, fail_on=None) -> None:
        self.batches: list[tuple] = []
        self.active = None
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, key, jobs) -> None:
        self.active = key
        self.batches.append((key, [j.payload for j in jobs]))
        time.sleep(self.delay)
        if key == self.fail_on:
            raise RuntimeError("boom")
        for j in jobs:
            j.future.set_result((key, j.payload))


def make(rec: Recorder, **kw) -> Scheduler:
    s = Scheduler(rec, lambda: rec.active, **kw)
    s.start()
    return s


def test_requests_of_one_pair_are_batched_and_answered_in_order():
    rec = Recorder()
    s = make(rec, max_batch_size=8, max_wait=0.05)
    futures = [s.submit(Job("A", i, 1)) for i in range(5)]
    assert [f.result(5) for f in futures] == [("A", i) for i in range(5)]
    assert rec.batches == [("A", [0, 1, 2, 3, 4])]
    s.stop()


def test_batch_limit_counts_inputs():
    rec = Recorder()
    s = make(rec, max_batch_size=4, max_wait=0.05)
    futures = [s.submit(Job("A", i, 3)) for i in range(3)]
    for f in futures:
        f.result(5)
    assert [len(p) for _, p in rec.batches] == [1, 1, 1]
    s.stop()


def test_each_answer_comes_from_its_own_pair_under_interleaving():
    rec = Recorder(delay=0.001)
    s = make(rec, max_batch_size=4, max_wait=0.002, switch_after=0.01)
    futures = [(k, s.submit(Job(k, i, 1))) for i in range(200) for k in ("A", "B", "C")[i % 3]]
    for key, f in futures:
        assert f.result(10)[0] == key
    for key, payloads in rec.batches:
        assert all(p % 3 == "ABC".index(key) for p in payloads)
    s.stop()


def test_stays_on_active_pair_but_never_starves_another():
    rec = Recorder(delay=0.01)
    s = make(rec, max_batch_size=1, max_wait=0.0, switch_after=0.05)
    stop = threading.Event()

    def flood():
        i = 0
        while not stop.is_set():
            s.submit(Job("A", i, 1))
            i += 1
            time.sleep(0.002)

    t = threading.Thread(target=flood)
    t.start()
    time.sleep(0.05)
    batches_before = len(rec.batches)
    late = s.submit(Job("B", "b", 1))
    assert late.result(5) == ("B", "b")
    stop.set()
    t.join()
    keys = [k for k, _ in rec.batches]
    # A never ran dry, yet B was served once it had waited switch_after (50 ms = ~5 batches
    # of 10 ms), not after A's ever-growing queue.
    assert keys.index("B") - batches_before <= 10
    assert keys.count("B") == 1
    switches = sum(1 for a, b in zip(keys, keys[1:]) if a != b)
    assert switches <= 2
    s.stop()


def test_cancelled_jobs_are_skipped_and_failures_reach_only_their_batch():
    rec = Recorder(delay=0.05, fail_on="X")
    s = make(rec, max_batch_size=1, max_wait=0.0)
    first = s.submit(Job("A", 0, 1))
    time.sleep(0.01)  # the worker is busy with `first`
    abandoned = s.submit(Job("A", 1, 1))
    assert abandoned.cancel()
    failing = s.submit(Job("X", 2, 1))
    after = s.submit(Job("A", 3, 1))
    assert first.result(5) == ("A", 0)
    with pytest.raises(RuntimeError, match="boom"):
        failing.result(5)
    assert after.result(5) == ("A", 3)
    assert all(1 not in payloads for _, payloads in rec.batches)
    s.stop()


def test_cheapest_switch_first_among_pairs_that_may_go_but_starving_requests_first():
    """Ordering: with the applied pair idle, the pair whose switch costs least (sharing a
    diff) goes first even if younger; a request waiting 2 x switch_after goes first."""
    rec = Recorder()
    cost = {("L1", "T1"): 0, ("L2", "T1"): 1, ("L3", "T3"): 2}
    s = Scheduler(rec, lambda: rec.active, max_batch_size=1, max_wait=0, switch_after=0.5,
                  switch_cost=lambda current, target: cost[target])
    rec.active = ("L1", "T1")
    far = s.submit(Job(("L3", "T3"), "far", 1))  # oldest, but a full pair switch
    time.sleep(0.05)
    near = s.submit(Job(("L2", "T1"), "near", 1))  # one diff changes
    s.start()
    near.result(5), far.result(5)
    assert [k for k, _ in rec.batches] == [("L2", "T1"), ("L3", "T3")]
    s.stop()

    rec = Recorder()
    s = Scheduler(rec, lambda: rec.active, max_batch_size=1, max_wait=0, switch_after=0.05,
                  switch_cost=lambda current, target: cost[target])
    rec.active = ("L1", "T1")
    far = s.submit(Job(("L3", "T3"), "far", 1))
    time.sleep(0.15)  # now starving (> 2 x switch_after)
    near = s.submit(Job(("L2", "T1"), "near", 1))
    s.start()
    near.result(5), far.result(5)
    assert [k for k, _ in rec.batches] == [("L3", "T3"), ("L2", "T1")]
    s.stop()
