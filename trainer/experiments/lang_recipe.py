"""Choosing the language-diff recipe on development signals only (never target test F1).

    python -m trainer.experiments.lang_recipe --data ../shared/data/masakhaner \\
        --base runs/bases/multilingual-e5-small --out runs/lang-recipe --langs hau,yor \\
        --candidates today,lr3e-4 --precision bf16 --threads 1

Each candidate recipe (steps per phase, learning rate, raw-text lines, head warm-up steps
and rate; :data:`CANDIDATES`, or ``NAME:steps=200,lr=2e-4,lines=4000,warmup=200,warmup_lr=1e-3``
on the command line) trains a language diff per language with ``train_language_diff`` (the
code of ``csft train language``), from the first ``lines`` lines of ``text/<lang>.txt``.
Every diff is then scored on one **fixed dev set per language: the last 200 lines of its
text file**, which no candidate trains on, as packed blocks with fixed MLM masks (the dev
MLM loss of ``trainer.jobs.mlm_dev_loss``), through base + diff composed by the service's
code. Diffs trained elsewhere (``--extra NAME=DIR``: ``DIR/lang-<lang>.safetensors``, e.g.
the masakhaner experiment's output) are scored the same way.

Selection rule, fixed before any target test F1 is read: the candidate with the lowest
mean dev MLM loss over the languages searched, among those every language finished. A
candidate trained on more lines may not overlap the dev lines (checked). Every result is
appended to ``<out>/selection.jsonl`` and the table is rewritten to ``<out>/selection.md``.
Stages whose diff file exists are skipped (a rerun resumes and rescores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffs_store.merge import build_composed_model
from diffs_store.validate import validate_diff_bytes
from trainer.data import read_lines
from trainer.data.encode import encode_mlm
from trainer.jobs import Base, file_info, mlm_dev_loss, train_language_diff
from trainer.recipe import PhaseLength, language_recipe

DEV_LINES = 200
# The RESULTS.md recipe ("today") and the levers the selection varies, one at a time.
CANDIDATES: dict[str, dict[str, float]] = {
    "today": dict(steps=100, lr=1e-4, lines=2000, warmup=100, warmup_lr=1e-3),
    "lr3e-4": dict(steps=100, lr=3e-4, lines=2000, warmup=100, warmup_lr=1e-3),
    "steps200-lines4000": dict(steps=200, lr=1e-4, lines=4000, warmup=200, warmup_lr=1e-3),
    "lines4000": dict(steps=100, lr=1e-4, lines=4000, warmup=100, warmup_lr=1e-3),
    "warmup200": dict(steps=100, lr=1e-4, lines=2000, warmup=200, warmup_lr=1e-3),
}


def parse_candidate(spec: str) -> tuple[str, dict[str, float]]:
    """``NAME`` (a preset) or ``NAME:key=value,...`` (presets' keys, over ``today``'s values)."""
    name, _, assignments = spec.partition(":")
    if not assignments:
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r}: one of {', '.join(CANDIDATES)} or NAME:key=value,...")
        return name, CANDIDATES[name]
    values = dict(CANDIDATES["today"])
    for item in assignments.split(","):
        key, _, value = item.partition("=")
        if key not in values:
            raise SystemExit(f"candidate {name!r}: unknown key {key!r} (keys: {', '.join(values)})")
        values[key] = float(value)
    return name, values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--langs", default="hau,yor")
    p.add_argument("--candidates", default="today,lr3e-4", help="Preset names, comma-separated.")
    p.add_argument("--candidate", action="append", default=[], help="NAME:key=value,... (repeatable).")
    p.add_argument("--extra", action="append", default=[], help="NAME=DIR of diffs trained elsewhere, to score too")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--score-only", action="store_true", help="Train nothing; score the diffs that exist.")
    return p.parse_args(argv)


def dev_set(data: Path, lang: str) -> tuple[list[str], list[str]]:
    """(training pool, fixed dev lines): the dev lines are the file's last DEV_LINES."""
    lines = read_lines(data / f"text/{lang}.txt")
    return lines[:-DEV_LINES], lines[-DEV_LINES:]


def score(base: Base, path: Path, dev_features: list[dict], seq: int, seed: int) -> dict:
    """Dev MLM loss of base + the language diff at ``path`` (composed as the service does)."""
    diff = validate_diff_bytes(path.read_bytes(), base.spec)
    model = build_composed_model(base.model, base.spec, [diff])
    result = mlm_dev_loss(model, base.tokenizer, dev_features, language_recipe(max_seq_len=seq, seed=seed))
    train = diff.meta.metrics.get("train", {})
    return {**result, "train_seconds": train.get("seconds"), "recipe": {
        k: diff.meta.recipe.get(k) for k in ("learning_rate", "full", "sparse", "head_warmup_steps", "head_warmup_lr",
                                             "precision", "data")}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    base = Base.load(args.base)
    langs = args.langs.split(",")
    candidates = dict(parse_candidate(c) for c in [*args.candidates.split(","), *args.candidate] if c)
    sources = {name: args.out / name for name in candidates}
    sources.update({name: Path(d) for name, _, d in (e.partition("=") for e in args.extra)})
    log = args.out / "selection.jsonl"
    table: dict[str, dict[str, dict]] = {}
    for lang in langs:
        pool, dev = dev_set(args.data, lang)
        dev_features = encode_mlm(base.tokenizer, dev, args.seq, packed=True)
        for name, values in candidates.items():
            path = sources[name] / f"lang-{lang}.safetensors"
            if path.exists() or args.score_only:
                continue
            n = int(values["lines"])
            if n > len(pool):
                raise SystemExit(f"{name}: {n} lines would overlap the dev lines of {lang} ({len(pool)} available)")
            recipe = language_recipe(
                full=PhaseLength(max_steps=int(values["steps"])), sparse=PhaseLength(max_steps=int(values["steps"])),
                batch_size=args.batch_size, learning_rate=values["lr"], max_seq_len=args.seq, seed=args.seed,
                head_warmup=PhaseLength(max_steps=int(values["warmup"])), head_warmup_lr=values["warmup_lr"],
                precision=args.precision,
            )
            began = time.time()
            train_language_diff(base, lang, pool[:n], recipe=recipe, out_dir=sources[name] / f"work-{lang}",
                                output=path, data={"train": file_info(args.data / f"text/{lang}.txt"),
                                                   "train_lines": n, "dev": f"last {DEV_LINES} lines (scored apart)"})
            print(f"[{name} {lang}] trained in {time.time() - began:.0f}s", flush=True)
        for name, directory in sources.items():
            path = directory / f"lang-{lang}.safetensors"
            if not path.exists():
                continue
            row = score(base, path, dev_features, args.seq, args.seed)
            table.setdefault(name, {})[lang] = row
            with log.open("a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "candidate": name, "language": lang,
                                    "file": str(path), "values": candidates.get(name), **row}) + "\n")
            print(f"[{name} {lang}] dev MLM loss {row['mlm_loss']:.4f}", flush=True)
    text = render(table, langs, candidates)
    (args.out / "selection.md").write_text(text)
    print(text)
    return table


def render(table: dict[str, dict[str, dict]], langs: list[str], candidates: dict) -> str:
    """The selection table and the candidate the rule picks."""
    lines = ["| candidate | recipe | " + " | ".join(f"{lang} dev MLM loss" for lang in langs) + " | mean | train s |",
             "|---|---|" + "---|" * (len(langs) + 2)]
    complete = {}
    for name, rows in table.items():
        losses = [rows[lang]["mlm_loss"] if lang in rows else None for lang in langs]
        mean = sum(losses) / len(losses) if None not in losses else None
        if mean is not None:
            complete[name] = mean
        secs = [r["train_seconds"] for r in rows.values() if r.get("train_seconds")]
        values = candidates.get(name) or "trained elsewhere"
        lines.append(f"| {name} | {values} | " + " | ".join("-" if x is None else f"{x:.4f}" for x in losses)
                     + f" | {'-' if mean is None else f'{mean:.4f}'} | {'/'.join(f'{s:.0f}' for s in secs)} |")
    if complete:
        best = min(complete, key=complete.get)
        lines.append(f"\nRule: lowest mean dev MLM loss over {', '.join(langs)} -> **{best}**")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
