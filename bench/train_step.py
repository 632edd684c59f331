"""Training step time, page faults and peak memory: LT-SFT phases versus full fine-tuning,
and this tree's per-step code against an earlier version of it, side by side.

Two models (``--model``), random weights, fp32, LayerNorm frozen as every recipe does:

* ``mbert-ner`` - mBERT-sized BertForTokenClassification, 7 labels; the task recipe (no L1).
* ``xlmr-mlm`` - BertForMaskedLM with XLM-R's 250,002-token vocabulary on a narrow 4-layer
  encoder (hidden 256), decoder untied and frozen, MLM loss on 15% of the positions through
  ``trainer.models.mlm_loss``; the language recipe (L1 0.1 in both phases).

Variants: ``full`` (dense fine-tuning), ``phase1`` (dense + the L1 term; only where the
recipe has one), ``phase2`` (L1, ``mask_gradients`` after backward, clipping, fused AdamW,
``reimpose_frozen`` after the step: where trainer/hf.py's LtSftTrainer calls them; theta_ref
snapshotted, masks from ``select_mask`` over random "phase-1" deltas). With weight decay 0,
as here, this tree's phase 2 keeps theta_ref only at the selected entries
(``SelectedReference``), adds L1 there only and copies nothing back, as the trainer does;
an implementation without it (``--impls baseline`` at an older ``--baseline-rev``) keeps
the dense theta_ref and re-imposes it. Implementations
(``--impls``): ``new`` is this tree's trainer/lt_sft.py (with a reused ``Scratch``);
``baseline`` is trainer/lt_sft.py as of ``--baseline-rev``, loaded from git. By default that
is the version before this tree's: ``HEAD`` when trainer/lt_sft.py has uncommitted changes,
else the parent of the last commit that changed it, so the comparison is never a file
against itself (the resolved commit is printed). Both must end with bit-identical
parameters (checked: a hash of every parameter). ``--env LABEL:VAR=V,VAR=V`` (repeatable) runs every variant
again under those environment variables (e.g. glibc malloc or torch allocator settings).

Each configuration runs in its own process (so peak RSS and faults are its own); every
round runs each configuration once, in rotating order. Per step we record time and minor
page faults (``getrusage``) for each part; medians over all timed steps, ratios as the
median of per-round ratios.

Usage: python bench/train_step.py [--model xlmr-mlm] [--batch 8 --seq 128 --steps 3 --repeats 2]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    K_TASK, LARGE_VOCAB_BERT, MBERT, ROOT, PeakRSS, loadavg, machine_info, median, rss_bytes, sync, table, use_device,
)

MiB = 2**20
PARTS = ("fwd_bwd", "l1", "mask", "clip_step", "reimpose", "zero_grad")
K_LANG_NARROW = 13 * 256**2  # the language K rule (13 x hidden^2) at hidden 256
L1_LANGUAGE = 0.1


def load_lt_sft(impl: str, rev: str) -> ModuleType:
    """This tree's trainer.lt_sft, or the file as of git ``rev`` as a separate module."""
    from trainer import lt_sft

    if impl == "new":
        return lt_sft
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:trainer/lt_sft.py"], capture_output=True,
                            text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("lt_sft_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:trainer/lt_sft.py", "exec"), module.__dict__)
    return module


def default_baseline_rev() -> str:
    """The trainer/lt_sft.py before this tree's: HEAD's when the file has uncommitted
    changes, else the one before the last commit that changed it."""
    path = "trainer/lt_sft.py"
    changed = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", path]).returncode != 0
    if changed:
        return "HEAD"
    last = subprocess.run(["git", "-C", str(ROOT), "log", "-n", "1", "--format=%H", "--", path],
                          capture_output=True, text=True, check=True).stdout.strip()
    return f"{last}^"


def resolve_rev(rev: str) -> str:
    """``rev`` as a commit hash (so every child process loads the same file)."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def build(model_name: str, batch: int, seq: int):
    """(model, inputs, loss function, L1 coefficient of the recipe) for one benchmark model."""
    from transformers import BertConfig, BertForMaskedLM, BertForTokenClassification

    from trainer.models import mlm_loss, untie_and_freeze_decoder

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if model_name == "mbert-ner":
        model = BertForTokenClassification(BertConfig(**MBERT, num_labels=7)).train()
        ids = torch.randint(1000, MBERT["vocab_size"], (batch, seq), generator=gen)
        labels = torch.randint(0, 7, (batch, seq), generator=gen)
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, \
            (lambda m, x: m(**x).loss), 0.0
    model = BertForMaskedLM(BertConfig(**LARGE_VOCAB_BERT)).train()
    untie_and_freeze_decoder(model)
    ids = torch.randint(1000, LARGE_VOCAB_BERT["vocab_size"], (batch, seq), generator=gen)
    labels = torch.where(torch.rand(batch, seq, generator=gen) < 0.15, ids, torch.full_like(ids, -100))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, mlm_loss, L1_LANGUAGE


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def params_hash(model) -> str:
    """sha256 over every parameter's bytes: equal hashes mean bit-identical weights."""
    h = hashlib.sha256()
    for _, p in sorted(model.named_parameters()):
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def frozen_hash(params, masks) -> str:
    """sha256 of every parameter with its selected entries zeroed: the frozen entries only."""
    h = hashlib.sha256()
    for name, p in sorted(params.items()):
        h.update(p.detach().masked_fill(masks[name], 0).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def child(model_name: str, variant: str, impl: str, batch: int, seq: int, steps: int, k: int, rev: str,
          device: str = "cpu") -> dict:
    lt = load_lt_sft(impl, rev)
    dev = use_device(device)
    model, inputs, loss_fn, l1 = build(model_name, batch, seq)
    model.to(dev)
    inputs = {key: value.to(dev) for key, value in inputs.items()}
    lt.freeze_layer_norms(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    maskable = lt.maskable_parameters(model)
    n_total = sum(p.numel() for p in model.parameters())
    l1 = l1 if variant != "full" else 0.0
    out = {"model": model_name, "variant": variant, "impl": impl, "trainable": sum(p.numel() for p in trainable.values()),
           "maskable": sum(p.numel() for p in maskable.values()), "l1": l1}
    extras = {"scratch": lt.Scratch()} if hasattr(lt, "Scratch") else {}
    reference = lt.snapshot(trainable) if variant != "full" else None  # theta_ref, as LtSftTrainer keeps it
    masks = selected = None
    if variant == "phase2":
        start = time.perf_counter()
        fake_phase1 = {n: p.detach() + torch.randn_like(p) * 1e-3 for n, p in maskable.items()}
        masks = lt.select_mask(fake_phase1, {n: reference[n] for n in maskable}, k)
        del fake_phase1
        out["select_mask_s"] = time.perf_counter() - start
        out["k"] = int(sum(int(m.sum()) for m in masks.values()))
        selected = lt.selected_indices(masks)
    optimizer = torch.optim.AdamW(trainable.values(), lr=5e-5, weight_decay=0.0, fused=True)  # adamw_torch_fused
    # Phase 2 as LtSftTrainer runs it: without weight decay, theta_ref only at the selected
    # entries (SelectedReference), L1 there only, nothing copied back (this tree's lt_sft).
    lean = masks is not None and hasattr(lt, "SelectedReference") and lt.frozen_entries_stay_put("adamw_torch_fused", 0.0)
    frozen_before = frozen_hash(maskable, masks) if masks is not None else None
    if lean:
        reference = lt.SelectedReference(reference, maskable, selected)
        heads = {n: p for n, p in trainable.items() if n not in maskable}
        l1_step = lambda: (lt.add_l1_gradient_selected(maskable, reference, l1, n_total, 1.0),  # noqa: E731
                           lt.add_l1_gradient(heads, reference, l1, n_total, 1.0, **extras))
    else:
        l1_step = lambda: lt.add_l1_gradient(trainable, reference, l1, n_total, 1.0, **extras)  # noqa: E731
    out["phase2_mode"] = "selected theta_ref" if lean else "dense theta_ref" if masks is not None else None
    actions = {
        "fwd_bwd": lambda: loss_fn(model, inputs).backward(),
        "l1": l1_step if l1 else None,
        "mask": (lambda: lt.mask_gradients(maskable, selected, **extras)) if masks is not None else None,
        "clip_step": lambda: (torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0), optimizer.step()),
        "reimpose": (lambda: lt.reimpose_frozen(maskable, selected, reference, **extras))
        if masks is not None and not lean else None,
        "zero_grad": lambda: optimizer.zero_grad(set_to_none=True),
    }
    times = {key: [] for key in (*PARTS, "total")}
    flts = {key: [] for key in (*PARTS, "total")}
    base_rss = rss_bytes()
    with PeakRSS(0.01) as peak:
        for i in range(steps + 1):  # step 0 allocates AdamW state: warm-up, not timed
            sync()
            step_t, step_f = time.perf_counter(), faults()
            for key in PARTS:
                t, f = time.perf_counter(), faults()
                if actions[key] is not None:
                    actions[key]()
                    sync()
                if i:
                    times[key].append(time.perf_counter() - t)
                    flts[key].append(faults() - f)
            if i:
                times["total"].append(time.perf_counter() - step_t)
                flts["total"].append(faults() - step_f)
    out.update(times=times, faults=flts, base_rss_mib=base_rss / MiB, peak_rss_mib=peak.peak / MiB,
               maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, params_hash=params_hash(model))
    if dev.type == "cuda":  # host RSS says little there: the device's own peak
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(dev) / MiB
    if masks is not None:  # frozen entries must be exactly theta_ref after the steps
        out["frozen_exact"] = frozen_hash(maskable, masks) == frozen_before
    return out


def parse_env(spec: str) -> tuple[str, dict[str, str]]:
    """``LABEL:VAR=V,VAR=V`` -> (label, variables); ``default`` alone -> no variables."""
    label, _, assignments = spec.partition(":")
    return label, dict(a.split("=", 1) for a in assignments.split(",") if a)


def configurations(args: argparse.Namespace) -> list[tuple[str, str, str, dict[str, str]]]:
    """(variant, impl, env label, env) for every process of a round: full once per env (it
    runs none of lt_sft's step code), the LT-SFT phases once per implementation."""
    phases = ["phase1", "phase2"] if args.model == "xlmr-mlm" else ["phase2"]
    out = []
    for label, env in map(parse_env, args.env or ["default"]):
        out.append(("full", "new", label, env))
        out += [(v, impl, label, env) for v in phases for impl in args.impls.split(",")]
    return out


def run_child(args: argparse.Namespace, variant: str, impl: str, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-W", "ignore", __file__, "--child", variant, "--impl", impl, "--model", args.model,
           "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--k", str(args.k),
           "--device", args.device,
           "--baseline-rev", args.baseline_rev]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode:
        print(proc.stderr[-3000:])
        raise SystemExit(f"{variant}/{impl} child failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(args: argparse.Namespace, runs: dict[tuple, list[dict]]) -> None:
    """Markdown tables: per configuration, then the ratios to full fine-tuning and to the baseline."""
    def med(key, series, part):
        return median([x for res in runs[key] for x in res[series][part]])

    def med1(key, field):
        return median([res[field] for res in runs[key]])

    def round_ratio(num, den, fn):
        return median([fn(a) / fn(b) for a, b in zip(runs[num], runs[den])])

    step = lambda res: median(res["times"]["total"])  # noqa: E731
    peak = lambda res: res["peak_rss_mib"]  # noqa: E731
    flt = lambda res: median(res["faults"]["total"])  # noqa: E731
    print(f"\n## Summary: {args.model}, batch {args.batch} x {args.seq}, "
          f"median of {args.steps * args.repeats} steps per configuration\n")
    rows = []
    for key in runs:
        variant, impl, label = key
        ours = sum(med(key, "faults", p) for p in ("l1", "mask", "reimpose"))
        rows.append([label, variant, impl if variant != "full" else "-", f"{med(key, 'times', 'total'):.3f}",
                     *(f"{med(key, 'times', p):.3f}" for p in PARTS), f"{med(key, 'faults', 'total'):,.0f}",
                     f"{ours:,.0f}", f"{med1(key, 'base_rss_mib'):.0f}", f"{med1(key, 'peak_rss_mib'):.0f}",
                     f"{med1(key, 'maxrss_mib'):.0f}"])
    print(table(["env", "variant", "impl", "step s", *(f"{p} s" for p in PARTS), "minor faults / step",
                 "of which l1+mask+reimpose", "RSS before, MiB", "peak RSS, MiB", "ru_maxrss, MiB"], rows))
    print()
    impls = args.impls.split(",")
    for key in runs:
        variant, impl, label = key
        if variant == "full":
            continue
        full = ("full", "new", label)
        line = (f"- [{label}] {variant} {impl} / full: step time {round_ratio(key, full, step):.2f}x, "
                f"peak RSS {round_ratio(key, full, peak):.2f}x")
        if impl != "baseline" and "baseline" in impls:
            base = (variant, "baseline", label)
            same = {r["params_hash"] for r in runs[key] + runs[base]}
            line += (f"; new / baseline: step time {round_ratio(key, base, step):.2f}x, minor faults "
                     f"{round_ratio(key, base, flt):.2f}x, peak RSS {round_ratio(key, base, peak):.2f}x, "
                     f"parameters bit-identical: {len(same) == 1}")
        print(line)
    labels = list(dict.fromkeys(label for _, _, label in runs))
    for label in labels[1:]:  # an env against the first (default) one, same variant and impl
        for variant, impl, lab in runs:
            if lab == label:
                ref = (variant, impl, labels[0])
                print(f"- {label} / {labels[0]}, {variant} {impl}: step time "
                      f"{round_ratio((variant, impl, label), ref, step):.2f}x, minor faults "
                      f"{round_ratio((variant, impl, label), ref, flt):.3f}x, peak RSS "
                      f"{round_ratio((variant, impl, label), ref, peak):.2f}x")
    frozen = [r["frozen_exact"] for rs in runs.values() for r in rs if "frozen_exact" in r]
    print(f"\nfrozen entries bit-identical to theta_ref after the steps: {all(frozen)}")
    print(f"loadavg at end: {loadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["mbert-ner", "xlmr-mlm"], default="mbert-ner")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds; each runs every configuration once")
    ap.add_argument("--k", type=int, default=None, help="default: 24 x 768^2 (mbert-ner), 13 x 256^2 (xlmr-mlm)")
    ap.add_argument("--impls", default="baseline,new", help="comma-separated: baseline (lt_sft at --baseline-rev), new")
    ap.add_argument("--baseline-rev", default=None,
                    help="git revision of the baseline lt_sft.py (default: the version before this tree's)")
    ap.add_argument("--env", action="append", help="LABEL:VAR=V,VAR=V - run every variant under these too (repeatable)")
    ap.add_argument("--child", choices=["full", "phase1", "phase2"])
    ap.add_argument("--impl", default="new")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (CUDA: the device's peak memory is reported too)")
    args = ap.parse_args()
    args.k = args.k or (K_TASK if args.model == "mbert-ner" else K_LANG_NARROW)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.child:  # children get the resolved commit
        args.baseline_rev = resolve_rev(args.baseline_rev or default_baseline_rev())
    if args.child:
        res = child(args.model, args.child, args.impl, args.batch, args.seq, args.steps, args.k, args.baseline_rev,
                    args.device)
        print(json.dumps(res), flush=True)
        return

    print(machine_info(), flush=True)
    print(f"baseline: trainer/lt_sft.py at {args.baseline_rev}", flush=True)
    configs = configurations(args)
    print(f"{args.model}: batch {args.batch} x seq {args.seq}; {args.steps} timed steps per process; "
          f"{args.repeats} rounds of {len(configs)} processes; K {args.k:,}", flush=True)
    runs: dict[tuple, list[dict]] = {(v, i, label): [] for v, i, label, _ in configs}
    for r in range(args.repeats):
        shift = r % len(configs)
        for variant, impl, label, env in configs[shift:] + configs[:shift]:
            res = run_child(args, variant, impl, env)
            print(f"[raw] {label} {json.dumps(res)}", flush=True)
            print(f"  loadavg {loadavg()}", flush=True)
            runs[(variant, impl, label)].append(res)
    summarise(args, runs)


if __name__ == "__main__":
    main()
