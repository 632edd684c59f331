"""The patcher on a real ModelHost: exact restore after many switches, in every dtype."""

from __future__ import annotations

import random

import pytest
import torch

from diffs_store.format import parse_diff
from tests.support import counted_index_copies, state_sha
from service.model_host import ModelHost
from diffs_store.compose import PatchPlan, union_nbytes
from service.hot_tier import HotTier
from service.patcher import Patcher, PlanCache, switch_kind




class DeferredBuilds:
    """Stands in for the engine's prewarm thread: union plans are built later, at random
    moments between switches, so builds land while other pairs are applied, replace other
    pairs' union plans, or find their pair's layers gone."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.pending = rng, []

    def __call__(self, fn) -> None:
        self.pending.append(fn)

    def maybe_run(self) -> None:
        if self.pending and self.rng.random() < 0.3:
            self.pending.pop(self.rng.randrange(len(self.pending)))()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("pristine_copy", [False, True], ids=["sparse-restore", "dense-restore"])
@pytest.mark.parametrize("tier", ["layers", "hot"])
def test_10k_random_switches_leave_the_base_bit_identical(tiny_base_dir, tiny_diffs, dtype, pristine_copy, tier):
    host = ModelHost(str(tiny_base_dir), "cpu", dtype)
    assert next(iter(host.params.values())).dtype == getattr(torch, dtype)
    pristine = state_sha(host.params)
    diffs = {k: parse_diff(v) for (_, k), v in tiny_diffs.items()}
    langs = [k for kind, k in tiny_diffs if kind == "language"]
    tasks = [k for kind, k in tiny_diffs if kind == "task"]
    pairs = [(l, t) for l in langs for t in tasks] + [(l, None) for l in langs] + [(None, t) for t in tasks]
    rng = random.Random(0)
    copy = {k: v.clone() for k, v in host.params.items()} if pristine_copy else None
    if tier == "layers":
        # A small cache forces evictions and rebuilds of layers along the way.
        cache, hot = PlanCache(max_bytes=100_000), None
    else:
        # Room for every layer and overlap plus four or five union plans: hot pairs are
        # promoted, replaced by pairs switched to more often, and evicted while applied.
        cache = PlanCache(max_bytes=_layered_bytes(host, diffs, pairs) + int(4.5 * _union_bytes(host, diffs, pairs[0])))
        builds = DeferredBuilds(rng)
        hot = HotTier(cache, promote_after=2, submit=builds)
    patcher = Patcher(host.params, cache, copy, hot)
    patched = {}
    seen: dict[str, int] = {}
    previous = "base"
    for _ in range(10_000 if not pristine_copy else 3_000):
        pair = rng.choice(pairs)
        kind = "one-diff" if switch_kind(patcher.active, pair) in ("language", "task") else "pair"
        tier_used = patcher.activate(pair, diffs.__getitem__)
        if tier_used != "none":
            seen[f"{previous}->{tier_used} ({kind})"] = seen.get(f"{previous}->{tier_used} ({kind})", 0) + 1
            previous = tier_used
        if hot is not None:
            builds.maybe_run()
        if pair not in patched and len(patched) < 8:  # a sample: hashing every step would dominate
            patched[pair] = state_sha(host.params)
    patcher.restore()
    assert state_sha(host.params) == pristine
    if hot is not None:  # every transition of the tier happened, many times (eviction: test_hot_tier.py)
        for event in ("union->union (pair)", "union->layers (pair)", "layers->union (pair)", "union->layers (one-diff)"):
            assert seen.get(event, 0) >= 5, (event, seen)
    # Patched states are reproducible: re-applying a pair gives the same bytes as the first time.
    for pair, sha in patched.items():
        patcher.activate(pair, diffs.__getitem__)
        assert state_sha(host.params) == sha
    patcher.restore()
    assert state_sha(host.params) == pristine


def _layered_bytes(host, diffs, pairs) -> int:
    probe = Patcher(host.params, PlanCache(1 << 40))
    for pair in pairs:
        probe.activate(pair, diffs.__getitem__)
    probe.restore()
    return probe.cache.bytes


def _union_bytes(host, diffs, pair) -> int:
    probe = Patcher(host.params, PlanCache(1 << 40))
    probe.activate(pair, diffs.__getitem__)
    probe.restore()
    return union_nbytes(PatchPlan((probe.cache.get(pair[0]), probe.cache.get(pair[1])), probe.cache.get(pair)))


def test_same_pair_is_not_reapplied(tiny_base_dir, tiny_diffs):
    host = ModelHost(str(tiny_base_dir), "cpu", "float32")
    lang = parse_diff(tiny_diffs[("language", "hau")])
    calls = []
    patcher = Patcher(host.params, PlanCache(1 << 30))
    for _ in range(3):
        patcher.activate(("hau", None), lambda i: calls.append(i) or lang)
    assert calls == ["hau"] and patcher.active == ("hau", None)


def test_cache_evicts_by_bytes(tiny_base_dir, tiny_diffs):
    host = ModelHost(str(tiny_base_dir), "cpu", "float32")
    diffs = {k: parse_diff(v) for (kind, k), v in tiny_diffs.items() if kind == "language"}
    one = Patcher(host.params, PlanCache(1 << 30))
    one.activate(("hau", None), diffs.__getitem__)
    size = one.cache.get("hau").nbytes
    cache = PlanCache(max_bytes=int(size * 2.5))
    patcher = Patcher(host.params, cache)
    for lang in diffs:
        patcher.activate((lang, None), diffs.__getitem__)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert list(diffs)[0] not in cache and list(diffs)[-1] in cache


def test_switch_writes_only_the_layer_that_changes(tiny_base_dir, tiny_diffs):
    """(hau, ner) -> (swa, ner) must not rewrite the task's entries outside the overlaps,
    and must land on exactly the weights a fresh (swa, ner) application gives."""

    host = ModelHost(str(tiny_base_dir), "cpu", "bfloat16")
    diffs = {k: parse_diff(v) for (_, k), v in tiny_diffs.items()}
    patcher = Patcher(host.params, PlanCache(1 << 30))
    patcher.activate(("swa", "ner"), diffs.__getitem__)
    fresh = state_sha(host.params)
    patcher.activate(("hau", "ner"), diffs.__getitem__)
    with counted_index_copies() as writes:
        patcher.activate(("swa", "ner"), diffs.__getitem__)
    assert state_sha(host.params) == fresh
    lang_nnz = diffs["hau"].nnz + diffs["swa"].nnz
    assert lang_nnz <= sum(writes) < lang_nnz + diffs["ner"].nnz // 2
