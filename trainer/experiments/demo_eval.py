"""Entity F1 of the demo pairs as the server answers them: per target language, (a) the
task diff alone and (b) the target's language diff + the task diff, in float32 and in
bfloat16 (the composed model cast as the server casts it: values composed in float32,
then the whole model in bf16), for the trained diffs and for their compact shipped form
(:mod:`diffs_store.compact`, float16-rounded values).

    python -m trainer.experiments.demo_eval --data DATA --base multilingual-e5-small-demo \\
        --run runs/e5-demo --targets hau,swa --out quality.json

``--run`` holds ``lang-<lang>.safetensors`` and ``task-ner-en.safetensors`` (from
``trainer.experiments.masakhaner``). Test sets: seeded random subsets of ``--eval-max``
sentences (seed 42), as in docs/RESULTS.md. Writes the rows ``service.demo.pack --quality``
takes, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffs_store.base import load_base_model, load_tokenizer
from diffs_store.compact import decode, encode
from diffs_store.format import SparseDiff
from diffs_store.merge import build_composed_model
from diffs_store.validate import validate_diff_bytes
from trainer.data import read_conll
from trainer.evaluate import SUBSET_SEED, predict_tags, sample_subset, tagging_scores


def compact_copy(diff: SparseDiff, spec) -> SparseDiff:
    """The diff the server publishes from the shipped compact file."""
    return validate_diff_bytes(decode(encode(diff)).to_bytes(), spec)


def f1(base, spec, tokenizer, diffs: list[SparseDiff], test, dtype: torch.dtype) -> float:
    model = build_composed_model(base, spec, diffs).to(dtype)
    with torch.inference_mode():
        pred = predict_tags(model, tokenizer, test, batch_size=64, max_len=256)
    return round(100 * tagging_scores([s.tags for s in test], pred)["f1"], 1)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--base", default="multilingual-e5-small-demo")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--targets", default="hau,swa")
    p.add_argument("--eval-max", type=int, default=500)
    p.add_argument("--eval-seed", type=int, default=SUBSET_SEED)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, spec = load_base_model(args.base)
    tokenizer = load_tokenizer(args.base)
    trained = {"task": validate_diff_bytes((args.run / "task-ner-en.safetensors").read_bytes(), spec)}
    for lang in args.targets.split(","):
        trained[lang] = validate_diff_bytes((args.run / f"lang-{lang}.safetensors").read_bytes(), spec)
    shipped = {k: compact_copy(d, spec) for k, d in trained.items()}
    rows = []
    for lang in args.targets.split(","):
        test = sample_subset(read_conll(args.data / f"ner/{lang}/test.txt"), args.eval_max, args.eval_seed)
        row: dict = {"language": lang, "task": "ner",
                     "test": f"MasakhaNER {lang} test, {len(test)} sentences (seeded subset, seed {args.eval_seed})"}
        for form, diffs in (("trained", trained), ("shipped", shipped)):
            for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
                started = time.time()
                row[f"{form}_{dtype_name}_task_only_f1"] = f1(base, spec, tokenizer, [diffs["task"]], test, dtype)
                row[f"{form}_{dtype_name}_f1"] = f1(base, spec, tokenizer, [diffs[lang], diffs["task"]], test, dtype)
                print(f"{lang} {form:7s} {dtype_name:8s} task alone {row[f'{form}_{dtype_name}_task_only_f1']:5.1f} "
                      f"with {lang} diff {row[f'{form}_{dtype_name}_f1']:5.1f} ({time.time() - started:.0f} s)", flush=True)
        # the headline figures: what the server answers by default on this machine's kind (shipped diffs)
        row["f1"], row["task_only_f1"] = row["shipped_float32_f1"], row["shipped_float32_task_only_f1"]
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
