"""The hot-pair tier: union layers write exactly the layered weights, promotion and
admission follow use, the slack of the plan budget is all they take, and an applied union
plan evicted from the cache still restores exactly."""

from __future__ import annotations

import pytest

from diffs_store.compose import PatchPlan, build_union, composed_state_dict, switch
from diffs_store.format import parse_diff
from tests.support import counted_index_copies, state_sha
from service.hot_tier import HotTier, UnionKey
from service.lru import ByteLRU
from service.model_host import ModelHost
from service.patcher import Patcher, PlanCache


def run_now(fn) -> None:
    fn()


@pytest.fixture
def diffs(tiny_diffs):
    return {k: parse_diff(v) for (_, k), v in tiny_diffs.items()}


def hot_patcher(host, promote_after=1, max_bytes=1 << 30, pristine=False):
    cache = PlanCache(max_bytes)
    copy = {k: v.clone() for k, v in host.params.items()} if pristine else None
    return Patcher(host.params, cache, copy, HotTier(cache, promote_after, submit=run_now))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_union_layer_writes_the_merged_weights_and_restores_them_exactly(tiny_base_dir, diffs, dtype):
    host = ModelHost(str(tiny_base_dir), "cpu", dtype)
    pristine = state_sha(host.params)
    patcher = Patcher(host.params, PlanCache(1 << 30))
    for pair in (("hau", "ner"), ("swa", "qa"), ("ibo", "nli")):
        merged = state_sha(composed_state_dict(host.params, [diffs[pair[0]], diffs[pair[1]]]))
        patcher.activate(pair, diffs.__getitem__)
        assert state_sha(host.params) == merged
        layered = patcher._plan
        patcher.restore()
        union = PatchPlan((build_union(layered),))
        switch(host.params, None, union)
        assert state_sha(host.params) == merged  # bit-identical to `csft merge`
        switch(host.params, union, None)
        assert state_sha(host.params) == pristine


@pytest.mark.parametrize("pristine_copy", [False, True], ids=["sparse-restore", "dense-restore"])
def test_promotion_by_switches_then_union_writes_the_pair(tiny_base_dir, diffs, pristine_copy):
    host = ModelHost(str(tiny_base_dir), "cpu", "bfloat16")
    pristine = state_sha(host.params)
    patcher = hot_patcher(host, promote_after=2, pristine=pristine_copy)
    tiers = []
    for pair in [("hau", "ner"), ("swa", "pos")] * 3:
        tiers.append(patcher.activate(pair, diffs.__getitem__))
    # Each pair's second switch promotes it (built right away here); its third is a union sweep.
    assert tiers == ["layers", "layers", "layers", "layers", "union", "union"]
    assert UnionKey(("hau", "ner")) in patcher.cache and patcher.cache.spill_entries == 2
    patcher.restore()
    assert state_sha(host.params) == pristine


def test_one_diff_switch_from_a_hot_pair_writes_only_the_diff_that_changes(tiny_base_dir, diffs):
    host = ModelHost(str(tiny_base_dir), "cpu", "float32")
    patcher = hot_patcher(host)
    patcher.activate(("swa", "ner"), diffs.__getitem__)
    fresh = state_sha(host.params)
    patcher.activate(("hau", "ner"), diffs.__getitem__)  # promoted: union built
    assert patcher.activate(("swa", "ner"), diffs.__getitem__) == "layers"  # one diff changes: layers
    patcher.activate(("yor", "pos"), diffs.__getitem__)
    assert patcher.activate(("hau", "ner"), diffs.__getitem__) == "union"  # both change: the union sweep
    with counted_index_copies() as writes:
        assert patcher.activate(("swa", "ner"), diffs.__getitem__) == "layers"
    assert state_sha(host.params) == fresh
    lang_nnz = diffs["hau"].nnz + diffs["swa"].nnz
    assert lang_nnz <= sum(writes) < lang_nnz + diffs["ner"].nnz // 2


@pytest.mark.parametrize("pristine_copy", [False, True], ids=["sparse-restore", "dense-restore"])
def test_an_applied_union_plan_evicted_from_the_cache_still_restores_exactly(tiny_base_dir, diffs, pristine_copy):
    host = ModelHost(str(tiny_base_dir), "cpu", "float16")
    pristine = state_sha(host.params)
    reference = Patcher(host.params, PlanCache(1 << 30))
    want = {}
    for pair in (("hau", "ner"), ("swa", "ner"), ("yor", "qa")):
        reference.activate(pair, diffs.__getitem__)
        want[pair] = state_sha(host.params)
    reference.restore()
    for then in (("swa", "ner"), ("yor", "qa"), None):  # one-diff switch, pair switch, restore
        patcher = hot_patcher(host, pristine=pristine_copy)
        patcher.activate(("hau", "ner"), diffs.__getitem__)
        patcher.activate(("yor", "qa"), diffs.__getitem__)
        assert patcher.activate(("hau", "ner"), diffs.__getitem__) == "union"
        # Something needs the whole budget: spillable union plans go first, then everything else.
        patcher.cache.put("pressure", Sized(patcher.cache.max_bytes))
        assert UnionKey(("hau", "ner")) not in patcher.cache and ("hau", "ner") not in patcher.cache
        assert state_sha(host.params) == want[("hau", "ner")]
        if then is None:
            patcher.restore()
            assert state_sha(host.params) == pristine
            continue
        patcher.activate(then, diffs.__getitem__)
        assert state_sha(host.params) == want[then]
        patcher.restore()
        assert state_sha(host.params) == pristine


class Sized:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def test_union_plans_live_in_the_slack_and_give_way_to_more_used_pairs():
    cache = ByteLRU(100, size=lambda item: item.nbytes, spill_first=lambda key: isinstance(key, UnionKey))
    cache.put("layer-a", Sized(40))
    assert cache.put_in_room(UnionKey(1), Sized(30), 30, admit=lambda victims: True)
    assert cache.room_for(40) == [UnionKey(1)]  # only spillable entries may make room
    assert cache.room_for(70) is None  # layers are never victims of a union plan
    assert not cache.put_in_room(UnionKey(2), Sized(40), 40, admit=lambda victims: not victims)
    assert cache.put_in_room(UnionKey(2), Sized(40), 40, admit=lambda victims: True)
    assert UnionKey(1) not in cache and cache.spill_entries == 1 and cache.spill_bytes == 40
    cache.get("layer-a")  # the union plan is now the least recently used... and a layer arrives
    cache.put("layer-b", Sized(30))
    assert UnionKey(2) not in cache and "layer-a" in cache and "layer-b" in cache  # union evicted first
    assert cache.bytes == 70 and cache.spill_bytes == 0
    assert not cache.put_if_room("layer-c", Sized(40))  # prewarming never evicts a layer


def test_a_hot_pair_is_replaced_only_by_a_pair_switched_to_more_often(tiny_base_dir, diffs):
    host = ModelHost(str(tiny_base_dir), "cpu", "float32")
    probe = hot_patcher(host)
    for pair in (("hau", "ner"), ("swa", "pos"), ("yor", "nli")):
        probe.activate(pair, diffs.__getitem__)
    layered, union = probe.cache.bytes - probe.cache.spill_bytes, max(
        probe.cache.peek(UnionKey(p)).nbytes for p in (("hau", "ner"), ("swa", "pos"), ("yor", "nli")))
    probe.restore()
    built = []
    cache = PlanCache(layered + union + union // 2)  # one union plan fits next to the layers
    tier = HotTier(cache, promote_after=2, submit=built.append)
    patcher = Patcher(host.params, cache, None, tier)
    for pair in [("hau", "ner"), ("swa", "pos"), ("yor", "nli")] + [("hau", "ner"), ("swa", "pos")]:
        patcher.activate(pair, diffs.__getitem__)
    assert len(built) == 2 and built[0]() and not built[1]()  # equal use: the first one stays
    assert cache.spill_entries == 1 and UnionKey(("hau", "ner")) in cache
    for pair in [("yor", "nli"), ("swa", "pos")] * 2:
        patcher.activate(pair, diffs.__getitem__)
    assert tier.build(("swa", "pos"))  # switched to 4 times in the window vs 2: it takes the place
    assert UnionKey(("swa", "pos")) in cache and UnionKey(("hau", "ner")) not in cache
    assert not tier.build(("yor", "nli"))  # 3 < 4: (swa, pos) stays
    patcher.restore()
