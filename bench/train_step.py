"""Training step time and peak memory: LT-SFT phase 2 versus full fine-tuning.

Same model (mBERT-sized BertForTokenClassification, 7 labels, random weights, fp32,
LayerNorm frozen in both as every recipe does), same batch (random token ids, default 8 x 128),
AdamW (lr 5e-5, weight decay 0), gradient clipping at 1.0 -- the task recipe's settings.

Phase 2 uses the trainer package's own mechanics (trainer/lt_sft.py), exactly where
trainer/hf.py's LtSftTrainer calls them: ``mask_gradients`` after backward (before clipping
and the step) and ``reimpose_frozen`` after every optimizer step (a step post-hook there),
with theta_ref snapshotted for every trainable parameter and masks chosen by ``select_mask``
(global top-K, K = 14,155,776, over random "phase-1" deltas). The loop is written out here
instead of running the HF Trainer so each part can be timed; the operations are the same.

Each variant runs in its own process (so peak RSS is its own), alternating
full, lt-sft, full, lt-sft, ...; step times are medians over all timed steps.

Usage: python bench/train_step.py [--batch 8 --seq 128 --steps 3 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import K_TASK, MBERT, PeakRSS, loadavg, machine_info, median, rss_bytes, table  # noqa: E402

MiB = 2**20


def child(variant: str, batch: int, seq: int, steps: int, k: int) -> dict:
    from transformers import BertConfig, BertForTokenClassification

    from trainer import lt_sft

    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(**MBERT, num_labels=7)).train()
    lt_sft.freeze_layer_norms(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    maskable = lt_sft.maskable_parameters(model)
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(1000, MBERT["vocab_size"], (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.randint(0, 7, (batch, seq), generator=gen),
    }
    out = {"variant": variant, "trainable": sum(p.numel() for p in trainable.values()),
           "maskable": sum(p.numel() for p in maskable.values())}
    masks = reference = None
    if variant == "lt-sft":
        reference = lt_sft.snapshot(trainable)  # theta_ref, as LtSftTrainer keeps it
        start = time.perf_counter()
        fake_phase1 = {n: p.detach() + torch.randn_like(p) * 1e-3 for n, p in maskable.items()}
        masks = lt_sft.select_mask(fake_phase1, {n: reference[n] for n in maskable}, k)
        del fake_phase1
        out["select_mask_s"] = time.perf_counter() - start
        out["k"] = int(sum(int(m.sum()) for m in masks.values()))
        # What mask_gradients / reimpose_frozen take: per-tensor selected indices in the
        # current trainer (LtSftTrainer keeps both the bool masks and these); older versions
        # took the bool masks themselves.
        selected = lt_sft.selected_indices(masks) if hasattr(lt_sft, "selected_indices") else masks
        out["phase2_arg"] = "selected indices" if selected is not masks else "bool masks"
    optimizer = torch.optim.AdamW(trainable.values(), lr=5e-5, weight_decay=0.0)
    base_rss = rss_bytes()
    parts = {"fwd_bwd": [], "mask": [], "clip_step": [], "reimpose": [], "total": []}
    with PeakRSS(0.01) as peak:
        for i in range(steps + 1):  # step 0 allocates AdamW state: warm-up, not timed
            t0 = time.perf_counter()
            loss = model(**inputs).loss
            loss.backward()
            t1 = time.perf_counter()
            if masks is not None:
                lt_sft.mask_gradients(maskable, selected)
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            optimizer.step()
            t3 = time.perf_counter()
            if masks is not None:
                lt_sft.reimpose_frozen(maskable, selected, reference)
            t4 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if i:
                for key, v in (("fwd_bwd", t1 - t0), ("mask", t2 - t1), ("clip_step", t3 - t2),
                               ("reimpose", t4 - t3), ("total", t4 - t0)):
                    parts[key].append(v)
    out.update({key: v for key, v in parts.items()})
    out["base_rss_mib"] = base_rss / MiB
    out["peak_rss_mib"] = peak.peak / MiB
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if masks is not None:
        # Frozen entries must be exactly theta_ref after the steps.
        out["frozen_exact"] = all(
            bool(torch.equal(p.detach()[~masks[n]], reference[n][~masks[n]])) for n, p in maskable.items())
        out["changed_entries"] = int(sum(int((p.detach() != reference[n]).sum()) for n, p in maskable.items()))
        # Alternative re-impose with the same result, for comparison: one where() pass in place.
        with torch.no_grad():
            start = time.perf_counter()
            for n, m in masks.items():
                p = maskable[n]
                torch.where(m, p, reference[n], out=p)
            out["reimpose_inplace_s"] = time.perf_counter() - start
            start = time.perf_counter()
            lt_sft.reimpose_frozen(maskable, selected, reference)
            out["reimpose_again_s"] = time.perf_counter() - start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=2, help="processes per variant, alternating")
    ap.add_argument("--k", type=int, default=K_TASK)
    ap.add_argument("--child", choices=["full", "lt-sft"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq, args.steps, args.k)), flush=True)
        return

    print(machine_info(), flush=True)
    print(f"batch {args.batch} x seq {args.seq}; {args.steps} timed steps per process; {args.repeats} processes per variant",
          flush=True)
    results = {"full": [], "lt-sft": []}
    for r in range(args.repeats):
        for variant in ("full", "lt-sft"):
            cmd = [sys.executable, "-W", "ignore", __file__, "--child", variant, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--steps", str(args.steps), "--k", str(args.k)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:])
                raise SystemExit(f"{variant} child failed")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"[raw] {json.dumps(res)}", flush=True)
            print(f"  loadavg {loadavg()}", flush=True)
            results[variant].append(res)

    def med(variant, key):
        return median([x for res in results[variant] for x in res[key]])

    def med1(variant, key):
        return median([res[key] for res in results[variant]])

    print("\n## Summary: one training step, mBERT-sized token classification, "
          f"batch {args.batch} x {args.seq} (median of {args.steps * args.repeats} steps)\n")
    rows = []
    for v in ("full", "lt-sft"):
        rows.append([v, f"{med(v, 'total'):.2f}", f"{med(v, 'fwd_bwd'):.2f}", f"{med(v, 'mask'):.3f}",
                     f"{med(v, 'clip_step'):.2f}", f"{med(v, 'reimpose'):.3f}",
                     f"{med1(v, 'base_rss_mib'):.0f}", f"{med1(v, 'peak_rss_mib'):.0f}", f"{med1(v, 'maxrss_mib'):.0f}"])
    print(table(["variant", "step s", "fwd+bwd s", "mask grads s", "clip+AdamW s", "re-impose s",
                 "RSS before steps, MiB", "peak RSS in steps, MiB", "ru_maxrss, MiB"], rows))
    t_ratio = med("lt-sft", "total") / med("full", "total")
    m_ratio = med1("lt-sft", "peak_rss_mib") / med1("full", "peak_rss_mib")
    lt = results["lt-sft"]
    print(f"\nLT-SFT phase 2 / full: step time {t_ratio:.2f}x, peak RSS {m_ratio:.2f}x "
          f"(+{med1('lt-sft', 'peak_rss_mib') - med1('full', 'peak_rss_mib'):.0f} MiB: theta_ref copy, bool masks, "
          "selected indices, index_select temporaries)")
    print(f"phase-2 overhead per step: mask {med('lt-sft', 'mask'):.3f} s + re-impose {med('lt-sft', 'reimpose'):.3f} s; "
          f"alternative re-impose torch.where(mask, p, ref, out=p): {med1('lt-sft', 'reimpose_inplace_s'):.3f} s "
          f"(same result; lt_sft.reimpose_frozen measured again right after it: {med1('lt-sft', 'reimpose_again_s'):.3f} s); "
          f"phase-2 functions take {lt[0]['phase2_arg']}")
    print(f"select_mask (global top-K over {lt[0]['maskable']:,} entries, one-off per run): "
          f"{med1('lt-sft', 'select_mask_s'):.1f} s; K selected {lt[0]['k']:,}")
    print(f"frozen entries bit-identical to theta_ref after the steps: {all(x['frozen_exact'] for x in lt)}; "
          f"entries changed: {lt[0]['changed_entries']:,} (<= K)")
    print(f"loadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
