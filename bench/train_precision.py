"""Phase 1 of a language diff on a real base, fp32 against bf16 autocast, side by side:
optimizer step time, peak memory, and the loss on the same batches.

Each configuration runs the trainer's own phase 1 (``LtSftTrainer.run_phase``: MLM loss,
L1 0.1 towards theta0 over every parameter, clipping, fused AdamW, lr 1e-4 with the linear
schedule, batch 8 x ``--seq`` packed blocks) on a model set up as ``train_language_diff``
sets it up (fresh MLM head, decoder untied and frozen, LayerNorm frozen; bf16 with the
decoder cast once). Batches are identical across configurations: the sampler is seeded
and the MLM masks come from the collator's own seeded generator (dropout cannot shift
them). The head warm-up is not included (it is the cheaper head-only step).

Configurations (``--configs``, each ``LABEL=PRECISION[+thp]``): ``thp`` runs the child
with ``THP_MEM_ALLOC_ENABLE=1`` (torch's huge-page alignment for large tensors; see
BENCHMARKS "Allocator settings"), read at the child's first allocation. Every
configuration runs in its own process, once per round, rotating the order. Each step is
timed in CPU seconds of the training thread (``time.thread_time``; with one torch thread
that is all of the step's compute, so "steps per CPU hour" survives a machine shared with
other jobs) and in wall seconds; both are medians over the timed steps (the first
``--warm`` steps allocate AdamW state and are not timed), ratios the median of per-round
ratios against the first configuration.

    python -m trainer.experiments.e5_base --out runs/bases/multilingual-e5-small
    python bench/train_precision.py --base runs/bases/multilingual-e5-small \\
        --text ../shared/data/masakhaner/text/hau.txt --steps 20 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, loadavg, machine_info, median, rss_bytes, table  # noqa: E402

MiB = 2**20


def child(args: argparse.Namespace, precision: str) -> dict:
    import torch
    from transformers import TrainerCallback

    from diffs_store.metadata import TaskType
    from trainer import lt_sft
    from trainer.data import read_lines
    from trainer.data.encode import collator_for, encode_mlm
    from trainer.hf import LtSftTrainer, compute_dtype, training_arguments
    from trainer.jobs import Base
    from trainer.models import build_model, cast_once_frozen_decoder, mlm_loss, untie_and_freeze_decoder
    from trainer.recipe import PhaseLength, language_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    base = Base.load(args.base)
    steps = args.warm + args.steps
    recipe = language_recipe(full=PhaseLength(max_steps=steps), learning_rate=1e-4, max_seq_len=args.seq,
                             batch_size=args.batch, precision=precision, logging_steps=1)
    model, _ = build_model(base.model, base.spec, TaskType.FILL_MASK, seed=recipe.seed)
    untie_and_freeze_decoder(model)
    lt_sft.freeze_layer_norms(model)
    maskable = list(lt_sft.maskable_parameters(model))
    features = encode_mlm(base.tokenizer, read_lines(args.text)[: args.lines], args.seq, packed=True)
    collator = collator_for(TaskType.FILL_MASK, base.tokenizer, mlm_probability=recipe.mlm_probability, seed=1)

    times: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_a, **_k):
            self.t, self.c = time.perf_counter(), time.thread_time()

        def on_step_end(self, *_a, **_k):
            times.append(time.perf_counter() - self.t)
            cpu.append(time.thread_time() - self.c)

    out_dir = Path(tempfile.mkdtemp(prefix="train-precision-"))
    base_rss = rss_bytes()
    with cast_once_frozen_decoder(model, compute_dtype(recipe)), PeakRSS(0.01) as peak:
        trainer = LtSftTrainer(model=model, args=training_arguments(recipe, out_dir, disable_tqdm=True),
                               train_dataset=features, data_collator=collator, recipe=recipe, maskable=maskable,
                               loss_fn=mlm_loss, callbacks=[Clock()])
        started = time.perf_counter()
        trainer.run_phase("phase1", recipe.full, recipe.full_l1_reg, out_dir, len(features))
        wall = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    return {"precision": precision, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
            "step_s": times[args.warm:], "warm_s": times[: args.warm], "step_cpu_s": cpu[args.warm:], "losses": losses, "wall_s": wall,
            "base_rss_mib": base_rss / MiB, "peak_rss_mib": peak.peak / MiB, "examples": len(features),
            "threads": torch.get_num_threads()}


def parse_config(spec: str) -> tuple[str, str, dict[str, str]]:
    """``LABEL=PRECISION[+thp]`` -> (label, precision, extra environment)."""
    label, _, value = spec.partition("=")
    precision, _, flag = value.partition("+")
    return label, precision, {"THP_MEM_ALLOC_ENABLE": "1"} if flag == "thp" else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the demo base directory (trainer.experiments.e5_base)")
    ap.add_argument("--text", type=Path, required=True, help="raw text, one line a sentence")
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per process")
    ap.add_argument("--warm", type=int, default=2, help="untimed first steps (AdamW state allocation)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="fp32=fp32,bf16=bf16,fp32+thp=fp32+thp,bf16+thp=bf16+thp")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args, args.child)), flush=True)
        return

    configs = [parse_config(c) for c in args.configs.split(",")]
    print(machine_info(), flush=True)
    print(f"phase 1 of a language diff: {args.base}, batch {args.batch} x {args.seq} packed tokens from "
          f"{args.text.name} ({args.lines} lines); {args.warm} untimed + {args.steps} timed steps per process; "
          f"{args.rounds} rounds of {len(configs)} processes", flush=True)
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in configs}
    for r in range(args.rounds):
        shift = r % len(configs)
        for label, precision, env in configs[shift:] + configs[:shift]:
            cmd = [sys.executable, "-W", "ignore", __file__, "--child", precision, "--base", args.base,
                   "--text", str(args.text), "--lines", str(args.lines), "--seq", str(args.seq),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--warm", str(args.warm),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
            if proc.returncode:
                print(proc.stderr[-3000:])
                raise SystemExit(f"{label} child failed")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"[raw] {label} {json.dumps(res)}", flush=True)
            print(f"  loadavg {loadavg()}", flush=True)
            runs[label].append(res)
    summarise(runs, configs)


def summarise(runs: dict[str, list[dict]], configs) -> None:
    first = configs[0][0]
    def per_step(series):
        return lambda res: median(res[series])

    rows = []
    for label, _, _ in configs:
        rs = runs[label]
        row = [label]
        for series in ("step_cpu_s", "step_s"):
            value = median([x for r in rs for x in r[series]])
            ratio = median([per_step(series)(b) / per_step(series)(a) for a, b in zip(runs[first], rs)])
            row += [f"{value:.2f}", f"{3600 / value:,.0f}", f"{1 / ratio:.2f}x"]
        row += [f"{median([r['peak_rss_mib'] for r in rs]):,.0f}",
                f"{median([r['peak_rss_mib'] / a['peak_rss_mib'] for a, r in zip(runs[first], rs)]):.2f}x"]
        rows.append(row)
    print("\n## Phase-1 step time and peak memory (medians; ratios: median of per-round ratios)\n")
    print(table(["config", "CPU s / step", "steps per CPU hour", f"vs {first}", "wall s / step",
                 "steps per wall hour", f"vs {first}", "peak RSS MiB", f"peak RSS vs {first}"], rows))
    print("\n## Loss on the same batches (round 1; logged every step)\n")
    curves = {label: runs[label][0]["losses"] for label, _, _ in configs}
    n = min(len(c) for c in curves.values())
    marks = sorted({0, 1, 2, 4, 8, 12, 16, n - 1} & set(range(n)))
    print(table(["step", *curves], [[i + 1, *(f"{curves[k][i]:.4f}" for k in curves)] for i in marks]))
    for label in list(curves)[1:]:
        diffs = [abs(a - b) for a, b in zip(curves[first], curves[label])]
        print(f"- {label} vs {first}: max |loss difference| {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f} "
              f"over {len(diffs)} steps; final {curves[label][-1]:.4f} vs {curves[first][-1]:.4f}")
    print(f"\nloadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
