"""`csft registry rebuild` and the blob store's stale-temp cleanup: Redis loses its data, the
blobs are still on disk, and the registry is recomputed from the diffs' own metadata."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from diffs_store.blobs import LocalBlobStore
from diffs_store.metadata import DiffKind
from diffs_store.rebuild import rebuild, rebuild_if_empty
from diffs_store.redis_connection import connect, shutdown_embedded
from diffs_store.registry import Registry
from tests.support import random_diff, tiny_base
from service.cli import app

runner = CliRunner()


@pytest.fixture()
def data_dir(tmp_path):
    d = tmp_path / "data"
    yield d
    shutdown_embedded(d)


def _registry(data_dir) -> Registry:
    return Registry(connect(None, data_dir), LocalBlobStore(data_dir / "blobs"))


def _snapshot(reg: Registry, fp: str) -> list[tuple]:
    return [(e.id, e.kind.value, e.key, e.version) for e in reg.list(fp)]


def test_rebuild_restores_entries_in_version_order(data_dir):
    model, spec = tiny_base()
    reg = _registry(data_dir)
    for seed in (1, 2, 3):  # three versions of hau, created in this order (same second)
        reg.publish(random_diff(model, spec, DiffKind.LANGUAGE, language="hau", seed=seed).to_bytes())
    reg.publish(random_diff(model, spec, DiffKind.TASK, task="ner", seed=9).to_bytes())
    before = _snapshot(reg, spec.fingerprint)
    latest = reg.resolve(spec.fingerprint, DiffKind.LANGUAGE, "hau").id

    reg.redis.flushall()  # Redis lost its data; the blobs are still on disk
    assert reg.is_empty() and reg.list(spec.fingerprint) == []
    report = rebuild_if_empty(reg)
    assert report is not None and len(report.published) == 4 and not report.skipped
    assert _snapshot(reg, spec.fingerprint) == before  # same ids, same version numbers here
    assert reg.resolve(spec.fingerprint, DiffKind.LANGUAGE, "hau").id == latest

    again = rebuild(reg)  # idempotent: nothing is indexed twice
    assert again.published == [] and len(again.already_indexed) == 4
    assert rebuild_if_empty(reg) is None  # not empty: left alone
    assert _snapshot(reg, spec.fingerprint) == before


def test_rebuild_cli_skips_corrupt_blobs(data_dir):
    model, spec = tiny_base()
    reg = _registry(data_dir)
    good = reg.publish(random_diff(model, spec, DiffKind.LANGUAGE, language="yor").to_bytes())
    bad = reg.blobs.put(b"not a diff at all")
    reg.redis.flushall()
    res = runner.invoke(app, ["registry", "rebuild", "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    assert "1 published, 0 already indexed, 1 skipped" in res.stdout
    assert [e.id for e in reg.list(spec.fingerprint)] == [good.id] and not reg.exists(bad)


def test_rebuild_cli_unreachable_redis_is_one_line_exit_3(tmp_path):
    res = runner.invoke(app, ["registry", "rebuild", "--data-dir", str(tmp_path), "--redis-url", "redis://127.0.0.1:1/0"])
    assert res.exit_code == 3 and len(res.stderr.strip().splitlines()) == 1 and "unreachable" in res.stderr


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    kept = store.put(b"a blob")
    fan = store.path(kept).parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [fan / f".tmp-{dead.stdout.strip()}-abc", fan / ".tmp-oldstyle", fan / f".tmp-{os.getpid()}-mine"]
    live_writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        in_progress = fan / f".tmp-{live_writer.pid}-busy"
        for p in [*stale, in_progress]:
            p.write_bytes(b"partial")
        assert sorted(store.clean_stale_temp()) == sorted(stale)
        assert in_progress.exists() and list(store.ids()) == [kept]
    finally:
        live_writer.kill()
        live_writer.wait()


def test_push_to_unreachable_server_exits_3_and_validate_unknown_model_is_one_line(tmp_path, tiny_diffs):
    f = tmp_path / "d.safetensors"
    f.write_bytes(next(iter(tiny_diffs.values())))
    res = runner.invoke(app, ["diff", "push", str(f), "--url", "http://127.0.0.1:1", "--token", "t"])
    assert res.exit_code == 3 and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["diff", "validate", str(f), "--base", "no-such-org/no-such-model"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
