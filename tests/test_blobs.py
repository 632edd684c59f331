"""LocalBlobStore: content addressing, atomic durable writes, id validation."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from diffs_store import errors
from diffs_store.blobs import BlobStore, InvalidBlobId, LocalBlobStore


@pytest.fixture
def store(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


def test_put_get_roundtrip_and_layout(store):
    data = b"some diff bytes"
    bid = store.put(data)
    assert bid == hashlib.sha256(data).hexdigest()
    assert store.get(bid) == data
    assert store.exists(bid)
    path = store.path(bid)
    assert path == store.root / bid[:2] / bid[2:]
    assert path.read_bytes() == data
    assert store.uri(bid).startswith("file://") and store.uri(bid).endswith(bid[2:])
    assert list(store.ids()) == [bid]
    assert isinstance(store, BlobStore)


def test_put_is_idempotent_and_does_not_rewrite(store):
    data = b"x" * 1000
    bid = store.put(data)
    before = os.stat(store.path(bid))
    assert store.put(data) == bid
    after = os.stat(store.path(bid))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert list(store.ids()) == [bid]


def test_different_bytes_different_ids(store):
    a, b = store.put(b"a"), store.put(b"b")
    assert a != b
    assert store.get(a) == b"a" and store.get(b) == b"b"
    assert sorted(store.ids()) == sorted([a, b])


def test_put_fsyncs_file_and_directory_and_leaves_no_temp(store, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    bid = store.put(b"durable")
    assert len(synced) >= 2  # the file, then its directory (plus the new fan-out dir)
    assert os.listdir(store.path(bid).parent) == [bid[2:]]


def test_failed_write_leaves_nothing(store, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    data = b"never lands"
    with pytest.raises(OSError, match="disk full"):
        store.put(data)
    bid = hashlib.sha256(data).hexdigest()
    assert not store.exists(bid)
    assert os.listdir(store.path(bid).parent) == []  # temp file cleaned up


def test_stray_temp_file_is_ignored(store):
    bid = store.put(b"real")
    (store.path(bid).parent / ".tmp-crashed").write_bytes(b"half")
    assert list(store.ids()) == [bid]


def test_get_unknown_raises_not_found(store):
    with pytest.raises(errors.NotFound):
        store.get("0" * 64)
    assert not store.exists("0" * 64)


@pytest.mark.parametrize(
    "bad",
    ["", "../../etc/passwd", "ab/../../x", "A" * 64, "0" * 63, "0" * 65, "g" * 64, "0" * 62 + "/x", None],
)
def test_bad_ids_are_rejected(store, bad):
    for op in (store.get, store.exists, store.delete, store.path):
        with pytest.raises(InvalidBlobId):
            op(bad)
    # both a NotFound (for the service) and a ValueError (bad input)
    assert issubclass(InvalidBlobId, errors.NotFound) and issubclass(InvalidBlobId, ValueError)


def test_delete_is_idempotent(store):
    bid = store.put(b"to delete")
    store.delete(bid)
    assert not store.exists(bid)
    with pytest.raises(errors.NotFound):
        store.get(bid)
    store.delete(bid)  # again: no error
    store.delete("f" * 64)  # never existed: no error
    assert store.put(b"to delete") == bid  # and it can come back
    assert store.get(bid) == b"to delete"


def test_concurrent_puts_of_same_bytes(store):
    data = os.urandom(1 << 16)
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(store.put(data))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert store.get(ids[0]) == data
    assert list(store.ids()) == [ids[0]]
