"""Switch cost: apply + restore of a (language, task) pair on an mBERT-sized model.

Methods, timed side by side: each round runs every method once, in rotating order, so a
ratio compares measurements taken seconds apart; we report medians over rounds, medians of
per-round ratios and, as a noise-robust second view, best-of-rounds times:

* ours    -- service.patcher.Patcher.activate / restore with a warm plan cache: one layer per
             diff (indices, theta0 there, theta0 + delta there) plus a per-pair overlap;
             every write is an index_copy_ (diffs_store.compose.switch). Plan building (cache
             misses) is excluded from the switch timing and reported separately.
* ref     -- composable-sft SFT.apply / SFT.revert: per diff and tensor
             ``param += coo`` then ``param -= coo`` with a coalesced sparse COO tensor of the
             parameter's shape and float32 values (src/sft/sft.py), language then task.
* dense   -- merge/unmerge: one dense delta per touched tensor (pair summed, parameter dtype),
             ``param.add_(delta)`` then ``param.sub_(delta)``.
* bound   -- memory-traffic bound: one dense ``copy_`` pass over the touched tensors for apply
             and one for restore (copying the pristine values onto themselves).
* ours+pc -- the server's default (CSFT_PRISTINE_COPY=true): the same plans, switched by
             compose.switch with an untouched copy of the base, so a tensor with more than
             copied back whole when that writes less (compose.DENSE_COPY_COST).
* hot     -- the hot-pair tier (service.hot_tier, server default CSFT_HOT_PROMOTE_AFTER=2):
             Patcher.activate / restore with the pristine copy on a pair promoted to a union
             layer (compose.build_union: union indices, theta0, composed values), one
             index_copy_ sweep per tensor and direction. One-diff switches between hot pairs
             stay on layers (the patcher's rule); union build time is reported separately.

Switches between compositions (steady state, one composition always applied):
language only (L1,T1)<->(L2,T1), task only (L1,T1)<->(L1,T2), both (L1,T1)<->(L2,T2).
The reference and dense methods switch one diff by reverting it and applying the other.
With diffs spread uniformly every maskable tensor is touched by every diff, so the bound
for any switch is the same two dense passes.

Bit-exactness: ours is compared with the pristine weights after every round on the big model;
ref/dense drift is reported after their cycles there. The 1,000-cycle check in fp32, fp16 and
bf16 runs on a ~0.7M-parameter BERT at the same densities (1,000 mBERT cycles x 3 methods x 3
dtypes would take well over half an hour on a 2-core CPU: the reference's fp16/bf16 path, a
dense half-precision tensor += a float32 COO tensor, is slow per entry).

Usage: python bench/switch_cost.py [--rounds 15] [--inner 1] [--cycles 1000] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    EXACT_BERT, K_LANG, K_TASK, MBERT, SMALL_BERT, base_param_dict, loadavg, machine_info, make_bert, make_diff, median,
    n_maskable, sample_sparse, table, timed, use_device,
)

MBERT_MASKABLE = 177_815_040

import inspect  # noqa: E402

from diffs_store.compose import PatchPlan, build_patch_plan, build_union, switch  # noqa: E402
from service.hot_tier import HotTier, UnionKey  # noqa: E402
from service.patcher import Patcher, PlanCache  # noqa: E402


# ----------------------------------------------------------------------------- methods


def to_coo(sparse, params, dtype=torch.float32):
    """The reference's in-memory diff: a coalesced COO tensor of the parameter's shape."""
    out = {}
    for name, part in sparse.items():
        shape = params[name].shape
        coords = torch.stack(torch.unravel_index(part.indices, shape)) if len(shape) > 1 else part.indices.unsqueeze(0)
        out[name] = torch.sparse_coo_tensor(coords, part.values.to(dtype), size=shape).coalesce()
    return out


class Reference:
    """SFT.apply / SFT.revert of cambridgeltl/composable-sft, body only (no head)."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def apply(self, coo):
        for param_name, diff in coo.items():
            param_tensor = self.model.get_parameter(param_name)
            param_tensor += diff.to(param_tensor.device)

    @torch.no_grad()
    def revert(self, coo):
        for param_name, diff in coo.items():
            param_tensor = self.model.get_parameter(param_name)
            param_tensor -= diff.to(param_tensor.device)


def dense_delta(params, diffs):
    """Per touched tensor: the summed delta as a dense tensor in the parameter's dtype."""
    out = {}
    for diff in diffs:
        for name, part in diff.sparse.items():
            if name not in out:
                out[name] = torch.zeros(params[name].numel(), dtype=torch.float32, device=params[name].device)
            out[name].index_add_(0, part.indices.to(out[name].device), part.values.to(out[name].device))
    return {n: d.view(params[n].shape).to(params[n].dtype) for n, d in out.items()}


@torch.no_grad()
def dense_add(params, delta):
    for n, d in delta.items():
        params[n].add_(d)


@torch.no_grad()
def dense_sub(params, delta):
    for n, d in delta.items():
        params[n].sub_(d)


@torch.no_grad()
def copy_pass(params, pristine, names):
    for n in names:
        params[n].copy_(pristine[n])


@torch.no_grad()
def drift(params, pristine):
    """(max |theta - theta0| as float, number of entries that differ)."""
    worst, n = 0.0, 0
    for name, p in params.items():
        d = p != pristine[name]
        c = int(d.sum())
        if c:
            n += c
            worst = max(worst, float((p.float() - pristine[name].float()).abs().max()))
    return worst, n


def exact(params, pristine) -> bool:
    return all(torch.equal(p, pristine[n]) for n, p in params.items())


@torch.no_grad()
def reset(params, pristine):
    for n, p in params.items():
        p.copy_(pristine[n])


# ----------------------------------------------------------------------------- big model


def run_case(label, model, params, pristine, k_lang, k_task, rounds, inner, seed, log):
    t0 = time.perf_counter()
    L1 = make_diff(sample_sparse(params, k_lang, seed + 1), "language", "aaa")
    L2 = make_diff(sample_sparse(params, k_lang, seed + 2), "language", "bbb")
    T1 = make_diff(sample_sparse(params, k_task, seed + 3), "task", "ner")
    T2 = make_diff(sample_sparse(params, k_task, seed + 4), "task", "pos")
    log(f"[{label}] sampled 4 diffs in {time.perf_counter() - t0:.1f} s (K_lang={k_lang:,}, K_task={k_task:,})")

    # Plan build (language layer + task layer + their overlap) measured on its own: 3 builds, median.
    builds = []
    for _ in range(3):
        start = time.perf_counter()
        plan_a = build_patch_plan(params, [L1, T1])
        builds.append(time.perf_counter() - start)
    diffs = {"L1": L1, "L2": L2, "T1": T1, "T2": T2}
    keys = {"A": ("L1", "T1"), "B": ("L2", "T1"), "C": ("L1", "T2"), "D": ("L2", "T2")}
    cache = PlanCache(1 << 62)
    patcher = Patcher(params, cache)
    # Warm the cache through the patcher itself (misses build layers/overlaps), then time only hits.
    cold = _t(lambda: patcher.activate(keys["A"], diffs.__getitem__))
    for k in ("B", "C", "D"):
        patcher.activate(keys[k], diffs.__getitem__)
    patcher.restore()
    assert exact(params, pristine), "warm-up left the weights changed"
    union = plan_a.nnz
    touched = sorted(set(L1.sparse) | set(T1.sparse))
    touched_bytes = sum(params[n].numel() * params[n].element_size() for n in touched)
    log(f"[{label}] plan build (L1+T1) median of 3: {median(builds) * 1e3:.0f} ms; first activate (miss: "
        f"build + apply) {cold * 1e3:.0f} ms; union {union:,} entries ({union / n_maskable(params):.1%} of maskable); "
        f"pair plan {plan_a.nbytes / 2**20:.0f} MiB; cache for 4 pairs {cache.bytes / 2**20:.0f} MiB; "
        f"touched tensors {len(touched)} = {touched_bytes / 2**20:.0f} MiB")

    def loader(_id):  # never called: every layer and overlap is cached
        raise AssertionError("plan cache miss during timing")

    # The server's default path (CSFT_PRISTINE_COPY=true): Patcher.activate calls
    # compose.switch(params, current, target, pristine), which restores a tensor by copying it
    # whole from the pristine copy when that writes less (compose.DENSE_COPY_COST).
    # Timed here by calling switch() on the cached plans (what activate does, minus bookkeeping).
    has_pc = "pristine" in inspect.signature(switch).parameters
    plans = {k: PatchPlan(tuple(cache.get(i) for i in ids), cache.get(ids)) for k, ids in keys.items()}

    ref = Reference(model)
    coo = {n: to_coo(d.sparse, params) for n, d in (("L1", L1), ("L2", L2), ("T1", T1), ("T2", T2))}
    dense_pair = dense_delta(params, [L1, T1])
    dense_one = {n: dense_delta(params, [d]) for n, d in (("L1", L1), ("L2", L2), ("T1", T1), ("T2", T2))}
    del L1, L2, T1, T2, diffs
    gc.collect()
    log(f"[{label}] setup done in {time.perf_counter() - t0:.1f} s; loadavg {loadavg()}")

    # Each method: (setup, [timed step functions per rep], teardown). A rep's time is the
    # sum of its steps; for switches each rep is two switches (there and back), reported per switch.
    # ours_pair / ours_switch time a Patcher: ``patcher`` (layers) or ``hot`` (below).
    def ours_pair(p=patcher):
        def rep():
            a = _t(lambda: p.activate(keys["A"], loader))
            r = _t(p.restore)
            return a + r, {"apply": a, "restore": r}
        return None, rep, None

    def ours_switch(other, p=patcher):
        def setup():
            p.activate(keys["A"], loader)

        def rep():
            x = _t(lambda: p.activate(keys[other], loader))
            y = _t(lambda: p.activate(keys["A"], loader))
            return (x + y) / 2, {}
        return setup, rep, p.restore

    def pc_pair():
        def rep():
            a = _t(lambda: switch(params, None, plans["A"], pristine))
            r = _t(lambda: switch(params, plans["A"], None, pristine))
            return a + r, {"apply": a, "restore": r}
        return None, rep, None

    def pc_switch(other):
        def setup():
            switch(params, None, plans["A"], pristine)

        def rep():
            x = _t(lambda: switch(params, plans["A"], plans[other], pristine))
            y = _t(lambda: switch(params, plans[other], plans["A"], pristine))
            return (x + y) / 2, {}
        return setup, rep, lambda: switch(params, plans["A"], None, pristine)

    def ref_pair():
        def rep():
            a = _t(lambda: (ref.apply(coo["L1"]), ref.apply(coo["T1"])))
            r = _t(lambda: (ref.revert(coo["L1"]), ref.revert(coo["T1"])))
            return a + r, {"apply": a, "restore": r}
        return None, rep, None

    def ref_switch(old, new):
        def setup():
            ref.apply(coo["L1"]), ref.apply(coo["T1"])

        def rep():
            x = _t(lambda: ([ref.revert(coo[o]) for o in old], [ref.apply(coo[n]) for n in new]))
            y = _t(lambda: ([ref.revert(coo[n]) for n in new], [ref.apply(coo[o]) for o in old]))
            return (x + y) / 2, {}

        def teardown():
            ref.revert(coo["L1"]), ref.revert(coo["T1"])
        return setup, rep, teardown

    def dense_pair_m():
        def rep():
            a = _t(lambda: dense_add(params, dense_pair))
            r = _t(lambda: dense_sub(params, dense_pair))
            return a + r, {"apply": a, "restore": r}
        return None, rep, None

    def dense_switch(old, new):
        def setup():
            dense_add(params, dense_one["L1"]), dense_add(params, dense_one["T1"])

        def rep():
            x = _t(lambda: (dense_sub(params, dense_one[old]), dense_add(params, dense_one[new])))
            y = _t(lambda: (dense_sub(params, dense_one[new]), dense_add(params, dense_one[old])))
            return (x + y) / 2, {}

        def teardown():
            dense_sub(params, dense_one["L1"]), dense_sub(params, dense_one["T1"])
        return setup, rep, teardown

    def bound():
        def rep():
            a = _t(lambda: copy_pass(params, pristine, touched))
            r = _t(lambda: copy_pass(params, pristine, touched))
            return a + r, {"apply": a, "restore": r}
        return None, rep, None

    # The hot-pair tier, as the server runs it: pristine copy, union layers built by the
    # tier (here inline, in the server on the prewarm thread) for the four pairs, on the
    # same layer and overlap objects as "ours" (shared, not rebuilt).
    hcache = PlanCache(1 << 62)
    for ids in keys.values():
        for item_key in (*ids, ids):
            hcache.put(item_key, cache.get(item_key))
    hot = Patcher(params, hcache, pristine, HotTier(hcache, promote_after=1, submit=lambda fn: fn()))
    for k in ("A", "B", "C", "D", "A"):
        hot.activate(keys[k], loader)
    hot.restore()
    assert all(UnionKey(keys[k]) in hcache for k in keys), "union plans not built"
    union_builds = []
    for _ in range(3):
        start = time.perf_counter()
        build_union(PatchPlan(tuple(hcache.get(i) for i in keys["A"]), hcache.get(keys["A"])))
        union_builds.append(time.perf_counter() - start)
    union_mib = hcache.peek(UnionKey(keys["A"])).nbytes / 2**20
    gc.collect()
    log(f"[{label}] union plan build (off the worker) median of 3: {median(union_builds) * 1e3:.0f} ms; "
        f"union plan {union_mib:.0f} MiB per pair")

    methods = {
        "ours pair": ours_pair(), "ref pair": ref_pair(), "dense pair": dense_pair_m(), "bound pair": bound(),
        "hot pair": ours_pair(hot), "hot lang-switch": ours_switch("B", hot), "hot task-switch": ours_switch("C", hot),
        "hot pair-switch": ours_switch("D", hot),
        "ours lang-switch": ours_switch("B"), "ours task-switch": ours_switch("C"), "ours pair-switch": ours_switch("D"),
        "ref lang-switch": ref_switch(["L1"], ["L2"]), "ref task-switch": ref_switch(["T1"], ["T2"]),
        "ref pair-switch": ref_switch(["L1", "T1"], ["L2", "T2"]),
        "dense lang-switch": dense_switch("L1", "L2"), "dense task-switch": dense_switch("T1", "T2"),
    }
    if has_pc:
        methods.update({"ours+pc pair": pc_pair(), "ours+pc lang-switch": pc_switch("B"),
                        "ours+pc task-switch": pc_switch("C"), "ours+pc pair-switch": pc_switch("D")})
    names = list(methods)
    per_round = {m: [] for m in names}  # median of the round's reps
    parts = {m: {"apply": [], "restore": []} for m in names}
    ours_cycles, ours_exact, drifts = 0, True, {}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for m in order:
            setup, rep, teardown = methods[m]
            if setup:
                setup()
            times = []
            for _ in range(inner):
                total, split = rep()
                times.append(total)
                for k, v in split.items():
                    parts[m][k].append(v)
            if teardown:
                teardown()
            per_round[m].append(median(times))
            if m.startswith(("ours", "hot", "bound")):
                ok = exact(params, pristine)
                ours_exact &= ok if m.startswith(("ours", "hot")) else True
                if m.startswith(("ours", "hot")):
                    ours_cycles += inner * (1 if m.endswith(" pair") else 2)
                if not ok:
                    log(f"  !! {m} left the weights changed")
                    reset(params, pristine)
            else:
                if r == rounds - 1:
                    drifts[m] = drift(params, pristine)
                reset(params, pristine)
        log(f"[{label}] round {r + 1}/{rounds}: " + ", ".join(f"{m} {per_round[m][-1] * 1e3:.0f}" for m in names[:4])
            + f" ms; loadavg {loadavg()}")

    def ratio(a, b):
        return median([x / y for x, y in zip(per_round[a], per_round[b])])

    def best_ratio(a, b):
        return min(per_round[a]) / min(per_round[b])

    pc_ratios = {}
    if has_pc:
        pc_ratios = {
            "ours+pc/bound": ratio("ours+pc pair", "bound pair"), "ref/ours+pc": ratio("ref pair", "ours+pc pair"),
            "ours+pc/ours": ratio("ours+pc pair", "ours pair"),
            "ours+pc lang/pair": ratio("ours+pc lang-switch", "ours+pc pair"),
            "ours+pc task/pair": ratio("ours+pc task-switch", "ours+pc pair"),
            "ours+pc pair-switch/pair": ratio("ours+pc pair-switch", "ours+pc pair"),
        }

    res = {
        "label": label, "k_lang": k_lang, "k_task": k_task, "union": union, "build_ms": median(builds) * 1e3,
        "plan_mib": plan_a.nbytes / 2**20, "union_mib": union_mib, "union_build_ms": median(union_builds) * 1e3,
        "touched_mib": touched_bytes / 2**20,
        "ms": {m: median(v) * 1e3 for m, v in per_round.items()},
        "min_ms": {m: min(v) * 1e3 for m, v in per_round.items()},
        "parts": {m: {k: median(v) * 1e3 for k, v in p.items() if v} for m, p in parts.items()},
        "ratios": {
            "ours/bound": ratio("ours pair", "bound pair"), "ours/ref": ratio("ours pair", "ref pair"),
            "ref/ours": ratio("ref pair", "ours pair"), "ours/dense": ratio("ours pair", "dense pair"),
            "dense/bound": ratio("dense pair", "bound pair"), "ref/bound": ratio("ref pair", "bound pair"),
            "ours lang/pair": ratio("ours lang-switch", "ours pair"),
            "ours task/pair": ratio("ours task-switch", "ours pair"),
            "ours pair-switch/pair": ratio("ours pair-switch", "ours pair"),
            "hot/bound": ratio("hot pair", "bound pair"),
            "ref/hot": ratio("ref pair", "hot pair"),
            "ours+pc/hot": ratio("ours+pc pair", "hot pair") if has_pc else float("nan"),
            "hot pair-switch/bound": ratio("hot pair-switch", "bound pair"),
            "hot lang-switch/hot pair": ratio("hot lang-switch", "hot pair"),
            "hot task-switch/hot pair": ratio("hot task-switch", "hot pair"),
            "hot lang-switch/hot pair-switch": ratio("hot lang-switch", "hot pair-switch"),
            "hot lang-switch/ours+pc pair": ratio("hot lang-switch", "ours+pc pair") if has_pc else float("nan"),
            "ours lang-switch/bound": ratio("ours lang-switch", "bound pair"),
            "ref/ours lang-switch": ratio("ref lang-switch", "ours lang-switch"),
            "ref/ours task-switch": ratio("ref task-switch", "ours task-switch"),
            "ref lang/ref pair-switch": ratio("ref lang-switch", "ref pair-switch"),
            **pc_ratios,
        },
        "best_ratios": {
            "ours/bound": best_ratio("ours pair", "bound pair"), "ref/ours": best_ratio("ref pair", "ours pair"),
            "ours/dense": best_ratio("ours pair", "dense pair"), "ours lang/pair": best_ratio("ours lang-switch", "ours pair"),
            "hot/bound": best_ratio("hot pair", "bound pair"), "ref/hot": best_ratio("ref pair", "hot pair"),
            "ours task/pair": best_ratio("ours task-switch", "ours pair"),
            **({"ours+pc/bound": best_ratio("ours+pc pair", "bound pair"),
                "ref/ours+pc": best_ratio("ref pair", "ours+pc pair")} if has_pc else {}),
        },
        "ours_cycles": ours_cycles, "ours_exact": ours_exact, "drifts": drifts,
    }
    del coo, dense_pair, dense_one, cache, patcher, plan_a, hot, hcache
    gc.collect()
    return res


def _t(fn) -> float:
    return timed(fn)


# ----------------------------------------------------------------------------- exactness


def exactness(cycles, frac_lang, frac_task, log):
    """1,000 apply/restore cycles per method and dtype on a ~0.7M-parameter BERT."""
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model = make_bert(EXACT_BERT, dtype, seed=7)
        params = base_param_dict(model)
        pristine = {n: p.detach().clone() for n, p in params.items()}
        n = n_maskable(params)
        kl, kt = max(1, round(frac_lang * n)), max(1, round(frac_task * n))
        L = make_diff(sample_sparse(params, kl, 11), "language", "aaa")
        T = make_diff(sample_sparse(params, kt, 12), "task", "ner")
        union = build_patch_plan(params, [L, T]).nnz
        checkpoints = {1, 10, 100, cycles}

        patcher = Patcher(params, PlanCache(1 << 62))
        by_id = {"aaa": L, "ner": T}
        res = {}
        start = time.perf_counter()
        for i in range(1, cycles + 1):
            patcher.activate(("aaa", "ner"), by_id.__getitem__)
            patcher.restore()
            if i in checkpoints:
                res.setdefault("ours", {})[i] = drift(params, pristine)
        t_ours = time.perf_counter() - start

        ref = Reference(model)
        cl, ct = to_coo(L.sparse, params), to_coo(T.sparse, params)  # float32 values, as the reference loads them
        start = time.perf_counter()
        for i in range(1, cycles + 1):
            ref.apply(cl), ref.apply(ct)
            ref.revert(cl), ref.revert(ct)
            if i in checkpoints:
                res.setdefault("ref", {})[i] = drift(params, pristine)
        t_ref = time.perf_counter() - start
        reset(params, pristine)

        delta = dense_delta(params, [L, T])  # in the parameter dtype, as merge/unmerge does
        start = time.perf_counter()
        for i in range(1, cycles + 1):
            dense_add(params, delta)
            dense_sub(params, delta)
            if i in checkpoints:
                res.setdefault("dense", {})[i] = drift(params, pristine)
        t_dense = time.perf_counter() - start
        name = str(dtype).removeprefix("torch.")
        for m, tm in (("ours", t_ours), ("ref", t_ref), ("dense", t_dense)):
            d1, dn = res[m][1], res[m][cycles]
            rows.append([name, m, f"{d1[0]:.3g}", f"{d1[1]:,}", f"{dn[0]:.3g}", f"{dn[1]:,}",
                         f"{dn[1] / union:.2%}", "yes" if dn[1] == 0 else "no", f"{tm:.1f}"])
        log(f"[exact] {name}: union {union:,} of {n:,} maskable; " + "; ".join(
            f"{m}: after {c} cycles max|drift| {res[m][c][0]:.3g} over {res[m][c][1]:,} entries"
            for m in res for c in sorted(res[m])))
        del model, params, pristine, patcher, ref, cl, ct, delta
        gc.collect()
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="rounds; each times every method in rotating order")
    ap.add_argument("--inner", type=int, default=1, help="reps per method per round (median)")
    ap.add_argument("--small-frac", type=float, default=0.01, help="small-K case: fraction of maskable entries per diff")
    ap.add_argument("--cycles", type=int, default=1000, help="cycles for the exactness check (small model)")
    ap.add_argument("--quick", action="store_true", help="smoke test on the small model")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: the model, diffs and plans live there")
    args = ap.parse_args()
    device = use_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, flush=True)

    log(machine_info())
    sizes = SMALL_BERT if args.quick else MBERT
    start = time.perf_counter()
    model = make_bert(sizes, torch.float32, seed=0).to(device)
    params = base_param_dict(model)
    pristine = {n: p.detach().clone() for n, p in params.items()}
    n = n_maskable(params)
    total = sum(p.numel() for p in params.values())
    log(f"model: {total:,} parameters, {n:,} maskable (all but LayerNorm), fp32, built in {time.perf_counter() - start:.1f} s")
    # --quick keeps the paper's densities (K over mBERT's 177,815,040 maskable entries).
    k_lang, k_task = (K_LANG, K_TASK) if not args.quick else (round(n * K_LANG / MBERT_MASKABLE), round(n * K_TASK / MBERT_MASKABLE))
    small = max(1, round(args.small_frac * n))
    results = [
        run_case("paper K", model, params, pristine, k_lang, k_task, args.rounds, args.inner, 100, log),
        run_case(f"small K ({args.small_frac:.0%}+{args.small_frac:.0%})", model, params, pristine, small, small,
                 args.rounds, args.inner, 200, log),
    ]
    frac_lang, frac_task = k_lang / n, k_task / n
    del model, params, pristine
    gc.collect()
    rows_exact = exactness(args.cycles, frac_lang, frac_task, log)

    # ------------------------------------------------------------------ summary
    log("\n## Summary: switch cost (medians over rounds, ms; ratios are medians of per-round ratios)\n")
    for r in results:
        log(f"### {r['label']}: K_lang={r['k_lang']:,}, K_task={r['k_task']:,}, union {r['union']:,}; "
            f"touched tensors {r['touched_mib']:.0f} MiB; plan {r['plan_mib']:.0f} MiB; plan build {r['build_ms']:.0f} ms; "
            f"union plan {r['union_mib']:.0f} MiB, built in {r['union_build_ms']:.0f} ms (excluded below)\n")
        rows = []
        for m in ("ours pair", "ours+pc pair", "hot pair", "ref pair", "dense pair", "bound pair"):
            if m not in r["parts"]:
                continue
            p = r["parts"][m]
            rows.append([m.replace(" pair", ""), f"{r['ms'][m]:.1f}", f"{r['min_ms'][m]:.1f}",
                         f"{p.get('apply', float('nan')):.1f}", f"{p.get('restore', float('nan')):.1f}",
                         f"{r['ms'][m] / r['ms']['bound pair']:.2f}"])
        log(table(["method (apply+restore of the pair)", "median ms", "best ms", "apply ms", "restore ms", "x bound (of medians)"], rows))
        log("")
        rows = []
        for kind in ("lang", "task", "pair"):
            row = [f"{kind}-only switch" if kind != "pair" else "both (pair) switch"]
            for m in ("ours", "ours+pc", "hot", "ref", "dense"):
                key = f"{m} {kind}-switch"
                row.append(f"{r['ms'][key]:.1f}" if key in r["ms"] else "-")
            row.append(f"{r['ms']['bound pair']:.1f}")
            rows.append(row)
        log(table(["one switch (old -> new composition)", "ours", "ours+pc", "hot (both pairs hot)", "ref (COO)", "dense",
                   "bound (2 passes)"], rows))
        log("")
        log(table(["ratio", "median of per-round ratios", "ratio of best times"],
                  [[k, f"{v:.2f}", f"{r['best_ratios'][k]:.2f}" if k in r["best_ratios"] else "-"] for k, v in r["ratios"].items()]))
        log(f"\nours (both variants): bit-exact after {r['ours_cycles']} apply/restore cycles and switches on this model: "
            f"{r['ours_exact']}")
        log(f"ref/dense drift on this model after {args.inner} consecutive cycles (max |drift|, entries changed): " + "; ".join(
            f"{m}: {d[0]:.3g}, {d[1]:,}" for m, d in sorted(r["drifts"].items())))
        log("")
    log(f"### Exactness after {args.cycles} apply+restore cycles (~0.7M-parameter BERT, paper densities "
        f"{frac_lang:.2%} + {frac_task:.2%})\n")
    log(table(["dtype", "method", "max drift 1 cycle", "entries off 1 cycle", f"max drift {args.cycles}",
               f"entries off {args.cycles}", "of union", "bit-exact", "seconds"], rows_exact))
    paper, smallr = results
    log("\n### Targets\n")
    ob = paper["ratios"]["ours/bound"]
    ro = smallr["ratios"]["ref/ours"]
    log(f"- paper K: ours / bound = {ob:.2f} (target <= 1.30): {'MET' if ob <= 1.3 else 'MISSED'} "
        f"(best times: {paper['best_ratios']['ours/bound']:.2f})")
    log(f"- small K: ref / ours = {ro:.2f} (target >= 2.00): {'MET' if ro >= 2 else 'MISSED'} "
        f"(best times: {smallr['best_ratios']['ref/ours']:.2f})")
    if "ours+pc/bound" in paper["ratios"]:
        ob, ro = paper["ratios"]["ours+pc/bound"], smallr["ratios"]["ref/ours+pc"]
        log(f"- with the pristine copy (server default): paper K ours+pc / bound = {ob:.2f}: "
            f"{'MET' if ob <= 1.3 else 'MISSED'}; small K ref / ours+pc = {ro:.2f}: {'MET' if ro >= 2 else 'MISSED'}")
    hb, rh = paper["ratios"]["hot/bound"], smallr["ratios"]["ref/hot"]
    log(f"- hot-pair tier (union plan): paper K hot / bound = {hb:.2f} (target <= 0.85): {'MET' if hb <= 0.85 else 'MISSED'} "
        f"(best times {paper['best_ratios']['hot/bound']:.2f}); small K ref / hot = {rh:.2f} (target >= 2.00): "
        f"{'MET' if rh >= 2 else 'MISSED'} (best times {smallr['best_ratios']['ref/hot']:.2f}); "
        f"paper K ref / hot = {paper['ratios']['ref/hot']:.2f}")
    for r in results:
        lp = r["ratios"]["hot lang-switch/hot pair"]
        log(f"- {r['label']}: language-only switch (layers, between hot pairs) / hot pair apply+restore = {lp:.2f} "
            f"(target <= 0.60): {'MET' if lp <= 0.6 else 'MISSED'}; / hot pair switch = "
            f"{r['ratios']['hot lang-switch/hot pair-switch']:.2f}; / layered pair apply+restore (ours+pc) = "
            f"{r['ratios']['hot lang-switch/ours+pc pair']:.2f}")
    log(f"switch code: compose.switch with pristine support: {'pristine' in inspect.signature(switch).parameters}")
    for r in results:
        log(f"- {r['label']}: ours language-only switch / pair apply+restore = {r['ratios']['ours lang/pair']:.2f}, "
            f"task-only = {r['ratios']['ours task/pair']:.2f}, both = {r['ratios']['ours pair-switch/pair']:.2f} "
            f"(expected from entries written: lang {(2 * r['k_lang']) / (2 * (r['k_lang'] + r['k_task'])):.2f}, "
            f"task {(2 * r['k_task']) / (2 * (r['k_lang'] + r['k_task'])):.2f})")
    log(f"loadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
