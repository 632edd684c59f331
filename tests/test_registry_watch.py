"""The registry watcher's circuit breaker (service/registry_watch.py) against real Redis
servers: an embedded one that answers, then is shut down, and a port nothing listens on."""

from __future__ import annotations

import time


from diffs_store.blobs import LocalBlobStore
from diffs_store.redis_connection import connect, shutdown_embedded
from diffs_store.registry import Registry
from service.registry_watch import RegistryWatch
from tests.support import free_port, random_diff, tiny_base


def unreachable_registry(tmp_path) -> Registry:
    """A registry whose Redis URL points at a loopback port nothing listens on."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0", tmp_path, timeout_s=0.2)
    return Registry(client, LocalBlobStore(tmp_path / "blobs-down"))


def test_starts_open_and_the_first_good_read_closes_it_and_reports_the_counter(registry):
    seen: list[int] = []
    watch = RegistryWatch(registry, seen.append, poll_s=60)
    assert not watch.up and watch.last_change is None  # nothing read yet: not ready
    assert watch.poll_once() is True
    assert watch.up and seen == [0]
    first_flip = watch.last_change
    assert first_flip is not None

    model, spec = tiny_base()
    registry.publish(random_diff(model, spec).to_bytes())
    assert watch.poll_once() is True
    assert seen == [0, 1]  # the counter moved with the publish
    assert watch.last_change == first_flip  # still up: no flip


def test_an_unreachable_redis_keeps_it_open_and_reports_nothing(tmp_path):
    seen: list[int] = []
    watch = RegistryWatch(unreachable_registry(tmp_path), seen.append, poll_s=60)
    assert watch.poll_once() is False
    assert watch.poll_once() is False
    assert not watch.up and seen == []


def test_a_request_failure_opens_it_until_the_next_good_read(registry):
    watch = RegistryWatch(registry, lambda counter: None, poll_s=60)
    watch.poll_once()
    closed_at = watch.last_change
    watch.record_failure()
    assert not watch.up and watch.last_change >= closed_at
    opened_at = watch.last_change
    watch.record_failure()  # already open: no flip
    assert watch.last_change == opened_at
    assert watch.poll_once() is True and watch.up


def test_it_opens_when_redis_goes_away(registry, redis_dir):
    watch = RegistryWatch(registry, lambda counter: None, poll_s=60)  # no embedded_dir: no restart
    assert watch.poll_once()
    shutdown_embedded(redis_dir)
    assert watch.poll_once() is False
    assert not watch.up


def test_the_thread_polls_until_stopped(registry):
    seen: list[int] = []
    watch = RegistryWatch(registry, seen.append, poll_s=0.02)
    watch.start()
    try:
        assert watch.up  # start() reads once before returning
        model, spec = tiny_base()
        registry.publish(random_diff(model, spec).to_bytes())
        deadline = time.monotonic() + 5
        while 1 not in seen and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for another thread's poll, not synchronising with it
        assert 1 in seen  # the background poll saw the publish
    finally:
        watch.stop()
    assert not watch._thread.is_alive()
