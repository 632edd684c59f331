"""Memory of cached patch plans on an mBERT-sized model, versus (K_lang + K_task) x 8 bytes.

A plan (diffs_store.compose.PatchPlan) is one layer per diff -- int64 indices, theta0 and
theta0 + delta at those indices in the parameter dtype -- plus a per-pair overlap (entries
both diffs touch: int64 index + 3 values). The service's PlanCache stores layers once per
diff and overlaps once per pair, so a cache serving L languages x T tasks holds L + T layers
and L x T overlaps. Measured here for the paper's K and a small K (1% + 1%), in fp32, fp16
and bf16: PatchPlan.nbytes, PlanCache.bytes after one Patcher.activate, the process RSS
retained after building (glibc malloc_trim before each reading, so freed memory does not
hide growth) and the transient peak while building. The hot-pair tier adds, per hot pair,
one union layer (compose.build_union: union indices + theta0 + composed values), on top of
the layers it is built from: its bytes are reported per pair next to the layered tier's.

Usage: python bench/plan_memory.py [--small-frac 0.01] [--langs 5 --tasks 4]
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
    K_LANG, K_TASK, MBERT, PeakRSS, base_param_dict, loadavg, machine_info, make_bert, make_diff, n_maskable,
    rss_bytes, sample_sparse, table,
)

from diffs_store.compose import build_patch_plan, build_union  # noqa: E402
from service.patcher import Patcher, PlanCache  # noqa: E402

MiB = 2**20


def trim() -> None:
    """Return freed heap memory to the OS (glibc), so RSS deltas count live bytes only:
    without it, memory freed earlier (e.g. by diff sampling) is reused and hides growth."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(params, L, T):
    trim()
    before = rss_bytes()
    with PeakRSS() as peak:
        start = time.perf_counter()
        plan = build_patch_plan(params, [L, T])
        build_s = time.perf_counter() - start
    trim()
    after = rss_bytes()
    layers = [layer.nbytes for layer in plan.layers]
    overlap = plan.overlap.nbytes if plan.overlap else 0
    overlap_n = sum(t.indices.numel() for t in plan.overlap.tensors.values()) if plan.overlap else 0
    start = time.perf_counter()
    union = build_union(plan)
    union_s = time.perf_counter() - start
    res = dict(nbytes=plan.nbytes, lang_layer=layers[0], task_layer=layers[1], overlap=overlap, overlap_n=overlap_n,
               rss_retained=after - before, rss_peak=peak.peak - before, build_s=build_s, nnz=plan.nnz,
               union=union.nbytes, union_s=union_s)
    del plan, union
    gc.collect()
    # The server's accounting: PlanCache.bytes after one cold activate through the Patcher.
    cache = PlanCache(1 << 62)
    patcher = Patcher(params, cache)
    by_id = {"L": L, "T": T}
    patcher.activate(("L", "T"), by_id.__getitem__)
    patcher.restore()
    res["cache_bytes"] = cache.bytes
    del patcher, cache
    gc.collect()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small-frac", type=float, default=0.01)
    ap.add_argument("--langs", type=int, default=5, help="for the cache-footprint projection")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(), flush=True)

    model = make_bert(MBERT, torch.float32, seed=0)
    params = base_param_dict(model)
    n = n_maskable(params)
    small = round(args.small_frac * n)
    cases = {"paper K": (K_LANG, K_TASK), f"small K ({args.small_frac:.0%}+{args.small_frac:.0%})": (small, small)}
    diffs = {}
    for i, (label, (kl, kt)) in enumerate(cases.items()):
        diffs[label] = (make_diff(sample_sparse(params, kl, 10 + i), "language", "aaa"),
                        make_diff(sample_sparse(params, kt, 20 + i), "task", "ner"))
    print(f"mBERT-sized model: {n:,} maskable entries; diffs sampled; RSS {rss_bytes() / MiB:.0f} MiB", flush=True)

    rows, proj_rows, tier_rows = [], [], []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model.to(dtype)
        params = base_param_dict(model)
        gc.collect()
        name = str(dtype).removeprefix("torch.")
        for label, (kl, kt) in cases.items():
            L, T = diffs[label]
            r = measure(params, L, T)
            ref_bytes = (kl + kt) * 8
            print(f"[raw] {name} {label}: {r}", flush=True)
            rows.append([
                name, label, f"{kl + kt:,}", f"{ref_bytes / MiB:.0f}", f"{r['nbytes'] / MiB:.0f}",
                f"{r['nbytes'] / ref_bytes:.2f}", f"{r['nbytes'] / (kl + kt):.2f}", f"{r['cache_bytes'] / MiB:.0f}",
                f"{r['rss_retained'] / MiB:.0f}", f"{r['rss_peak'] / MiB:.0f}", f"{r['build_s']:.2f}",
            ])
            # Bytes per cached pair, both tiers: the layered tier shares layers between pairs
            # (per pair: its overlap + its share of the layers in an L x T cache); a hot pair
            # adds its union layer on top.
            nl, nt = args.langs, args.tasks
            layered_pair = r["overlap"] + r["lang_layer"] / nt + r["task_layer"] / nl
            tier_rows.append([name, label, f"{r['nbytes'] / MiB:.0f}", f"{layered_pair / MiB:.1f}",
                              f"{r['union'] / MiB:.0f}", f"{r['union'] / ref_bytes:.2f}",
                              f"{r['union'] / (kl + kt - r['overlap_n']):.1f}", f"{r['union_s']:.2f}",
                              f"{(layered_pair * nl * nt + r['union'] * nl * nt) / MiB:.0f}"])
            # Projection for a cache of L languages x T tasks: layers once per diff, overlaps per pair.
            cache_bytes = nl * r["lang_layer"] + nt * r["task_layer"] + nl * nt * r["overlap"]
            pair_plans = nl * nt * r["nbytes"]
            ref_all = nl * nt * ref_bytes
            proj_rows.append([name, label, f"{r['lang_layer'] / MiB:.0f}", f"{r['task_layer'] / MiB:.0f}",
                              f"{r['overlap'] / MiB:.1f} ({r['overlap_n']:,})", f"{cache_bytes / MiB:.0f}",
                              f"{pair_plans / MiB:.0f}", f"{ref_all / MiB:.0f}", f"{cache_bytes / ref_all:.2f}"])

    print("\n## Summary: memory per cached patch plan (one language + one task diff)\n")
    print(table(["dtype", "case", "K_lang+K_task", "(K_l+K_t) x 8 B, MiB", "PatchPlan.nbytes, MiB", "ratio",
                 "bytes/entry", "PlanCache.bytes, MiB", "RSS retained, MiB", "RSS peak while building, MiB",
                 "build s"], rows))
    print(f"\n## Cache footprint for {args.langs} languages x {args.tasks} tasks ({args.langs * args.tasks} pairs), "
          "from the measured layer and overlap sizes\n")
    print(table(["dtype", "case", "language layer, MiB", "task layer, MiB", "overlap per pair, MiB (entries)",
                 "PlanCache (layers once + overlaps), MiB", "if plans were per pair, MiB",
                 "pairs x (K_l+K_t) x 8 B, MiB", "cache / that"], proj_rows))
    print(f"\n## Bytes per cached pair, both tiers ({args.langs} x {args.tasks} cache for the layered share)\n")
    print(table(["dtype", "case", "one pair's layers + overlap, MiB", f"layered tier per pair in a {args.langs} x {args.tasks} "
                 "cache, MiB", "hot tier: union plan per pair, MiB", "union / ((K_l+K_t) x 8 B)", "union bytes / union entry",
                 "union build s (off the worker)", f"all {args.langs * args.tasks} pairs hot: layers + unions, MiB"],
                tier_rows))
    print(f"\nloadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
