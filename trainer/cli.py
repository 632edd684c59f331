"""``csft train language|task`` and ``csft eval``.

Every failure prints one line on stderr (``error: ...``) and exits non-zero: 2 for bad
usage or unreadable inputs, 1 for a refused diff or a failed push. Defaults are the
reference recipes (see :mod:`trainer.recipe`); every option left unset keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from diffs_store.cli import EXIT_USAGE, fail, push_diff

train_app = typer.Typer(help="Train LT-SFT language and task diffs.", no_args_is_help=True)

TASK_TYPES = ("token-classification", "sequence-classification", "question-answering")
FORMATS = ("conll", "conllu", "classification", "squad")


def parse_k(value: Optional[str]) -> int | float | None:
    """``7667712`` or ``1e6`` (a count) or ``0.05`` (a proportion of the maskable entries)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        fail(f"--k {value!r} is neither a count nor a proportion", EXIT_USAGE)
    return int(number) if number.is_integer() else number


def split_source(value: str) -> tuple[str | None, Path]:
    """``LANG=PATH`` or ``PATH``."""
    lang, sep, path = value.partition("=")
    if sep and lang and "/" not in lang:
        return lang, Path(path)
    return None, Path(value)


# -- options shared by both train commands -----------------------------------------------

BASE = typer.Option(..., "--base", help="Base model: packaged name, Hugging Face name or local directory.")
OUTPUT = typer.Option(..., "-o", "--output", help="The diff file to write (.safetensors).")
WORK_DIR = typer.Option(None, "--work-dir", help="Checkpoints and mask (default: <output>.work/).")
K = typer.Option(None, "--k", help="Entries to tune: a count or a proportion (default: 13|24 x hidden^2).")
FULL_EPOCHS = typer.Option(None, "--full-epochs", help="Phase 1 length in epochs.")
FULL_MIN = typer.Option(None, "--full-min-steps")
FULL_MAX = typer.Option(None, "--full-max-steps")
SPARSE_EPOCHS = typer.Option(None, "--sparse-epochs", help="Phase 2 length in epochs.")
SPARSE_MIN = typer.Option(None, "--sparse-min-steps")
SPARSE_MAX = typer.Option(None, "--sparse-max-steps")
BATCH = typer.Option(None, "--batch-size")
ACCUM = typer.Option(None, "--grad-accum")
LR = typer.Option(None, "--lr")
WD = typer.Option(None, "--weight-decay")
FULL_L1 = typer.Option(None, "--full-l1", help="L1 towards theta0 in phase 1 (reference full_l1_reg).")
SPARSE_L1 = typer.Option(None, "--sparse-l1", help="L1 towards theta0 in phase 2 (reference sparse_l1_reg).")
SEQ = typer.Option(None, "--max-seq-len")
SEED = typer.Option(None, "--seed")
SAVE_STEPS = typer.Option(None, "--save-steps", help="Checkpoint every N steps (resume by rerunning).")
PRECISION = typer.Option(
    None, "--precision", help="fp32 (default) or bf16: forward/backward under bf16 autocast (CPUs with native bf16, "
    "CUDA). Weights, optimizer state, the top-K selection and the diff stay fp32.",
)
LAYER_NORM = typer.Option(False, "--include-layer-norm", help="Let LayerNorm entries be selected (default: frozen).")
PUSH = typer.Option(None, "--push", help="Service URL: POST the diff to <URL>/v1/admin/diffs.")
TOKEN = typer.Option(None, "--token", envvar="CSFT_ADMIN_TOKEN", help="Admin bearer token for --push.")


def _phase(epochs, min_steps, max_steps, default):
    from trainer.recipe import PhaseLength

    if epochs is None and min_steps is None and max_steps is None:
        return default
    if epochs is None and max_steps is None:
        return PhaseLength(default.epochs, min_steps, default.max_steps)
    return PhaseLength(epochs, min_steps, max_steps)


def _recipe(default, *, k, full, sparse, **changes):
    try:
        recipe = default.with_(k=parse_k(k), **changes)
    except ValueError as exc:  # e.g. an unknown --precision
        fail(str(exc), EXIT_USAGE)
    return recipe.with_(
        full=_phase(*full, recipe.full), sparse=_phase(*sparse, recipe.sparse)
    )


def _load_base(name: str):
    from trainer.jobs import Base

    try:
        return Base.load(name)
    except (OSError, ValueError) as exc:
        fail(f"cannot load base model {name!r}: {str(exc).splitlines()[0]}", EXIT_USAGE)


def _finish(result, output: Path, push: Optional[str], token: Optional[str]) -> None:
    """Report and push the written diff: once, from the main process under ``torchrun``."""
    if not result.trainer.is_world_process_zero():
        return
    d = result.diff
    typer.echo(f"wrote {output}: {d.meta.kind.value} diff, {d.nnz} entries, id {result.diff_id}")
    if push:
        push_diff(output, push, token)


def _run(fn, *args: Any, **kwargs: Any):
    """Run a job, turning expected failures into one-line errors."""
    from diffs_store.errors import DiffError

    try:
        return fn(*args, **kwargs)
    except DiffError as exc:
        fail(str(exc))
    except (ValueError, KeyError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_USAGE)


@train_app.command("language")
def language_cmd(
    base: str = BASE,
    language: str = typer.Option(..., "--language", help="Language tag (ISO 639), e.g. hau."),
    train: list[Path] = typer.Option(..., "--train", help="Raw text, a sentence or paragraph per line (repeatable)."),
    dev: Optional[Path] = typer.Option(None, "--dev", help="Raw text for the dev MLM loss."),
    dev_split: float = typer.Option(0.0, "--dev-split", help="Hold out this fraction of lines as dev (reference 0.05)."),
    max_lines: Optional[int] = typer.Option(None, "--max-lines", help="Use at most this many training lines."),
    output: Path = OUTPUT,
    work_dir: Optional[Path] = WORK_DIR,
    k: Optional[str] = K,
    full_epochs: Optional[float] = FULL_EPOCHS,
    full_min_steps: Optional[int] = FULL_MIN,
    full_max_steps: Optional[int] = FULL_MAX,
    sparse_epochs: Optional[float] = SPARSE_EPOCHS,
    sparse_min_steps: Optional[int] = SPARSE_MIN,
    sparse_max_steps: Optional[int] = SPARSE_MAX,
    batch_size: Optional[int] = BATCH,
    grad_accum: Optional[int] = ACCUM,
    lr: Optional[float] = LR,
    weight_decay: Optional[float] = WD,
    full_l1: Optional[float] = FULL_L1,
    sparse_l1: Optional[float] = SPARSE_L1,
    max_seq_len: Optional[int] = SEQ,
    seed: Optional[int] = SEED,
    save_steps: Optional[int] = SAVE_STEPS,
    include_layer_norm: bool = LAYER_NORM,
    precision: Optional[str] = PRECISION,
    store_decoder: bool = typer.Option(
        False, "--store-decoder/--no-store-decoder",
        help="Store the frozen MLM decoder (vocab x hidden) in the diff. By default it is recorded as the base's "
        "input embeddings at theta0, which fill-mask reproduces exactly at a fraction of the size.",
    ),
    line_by_line: bool = typer.Option(
        False, "--line-by-line", help="One line per example, truncated (the reference's --line_by_line). "
        "Default: the text is packed into blocks of --max-seq-len tokens, as the reference does by default.",
    ),
    head_warmup_steps: Optional[int] = typer.Option(
        None, "--head-warmup-steps", help="Train a fresh MLM head alone (encoder frozen) for N steps before phase 1. "
        "Default: as long as phase 1 when the base has no MLM head, 0 when it has one.",
    ),
    head_warmup_lr: Optional[float] = typer.Option(None, "--head-warmup-lr", help="Its learning rate (default: --lr)."),
    push: Optional[str] = PUSH,
    token: Optional[str] = TOKEN,
) -> None:
    """Train a language diff: LT-SFT masked language modelling on raw text.

    Defaults depend on the base. WITH a pretrained MLM head (mBERT, XLM-R): the reference
    recipe (packed blocks of 256 tokens, lr 5e-5, L1 0.1, 10k-100k steps per phase, no head
    warm-up); on little text, fewer steps rather than a higher lr. WITHOUT an MLM head
    (sentence encoders such as e5 or MiniLM): the CPU-sized recipe chosen on dev signals
    (docs/RESULTS.md): a head warm-up as long as phase 1 at 1e-3, so that phase 1 selects
    the entries the language moves rather than the ones that helped a random head, then
    100 + 100 steps at lr 3e-4 on blocks of 64 tokens, L1 0.1. Options given override.
    """
    from diffs_store.metadata import TaskType
    from trainer.data.text import read_lines
    from trainer.jobs import file_info, train_language_diff
    from trainer.models import head_is_fresh
    from trainer.recipe import PhaseLength, language_recipe, language_recipe_for

    def recipe_from(default):
        return _recipe(
            default, k=k, full=(full_epochs, full_min_steps, full_max_steps),
            sparse=(sparse_epochs, sparse_min_steps, sparse_max_steps), batch_size=batch_size, grad_accum=grad_accum,
            learning_rate=lr, weight_decay=weight_decay, full_l1_reg=full_l1, sparse_l1_reg=sparse_l1,
            max_seq_len=max_seq_len, seed=seed, save_steps=save_steps, precision=precision,
            freeze_layer_norm=False if include_layer_norm else None, mlm_packing=False if line_by_line else None,
            head_warmup=None if head_warmup_steps is None else PhaseLength(max_steps=head_warmup_steps),
            head_warmup_lr=head_warmup_lr,
        )

    recipe_from(language_recipe())  # bad options fail before anything is read or loaded
    lines = _run(lambda: [line for p in train for line in read_lines(p)])
    if max_lines is not None:
        lines = lines[:max_lines]
    dev_lines = _run(read_lines, dev) if dev else None
    if dev_split and not dev_lines:
        cut = max(1, int(len(lines) * dev_split))
        lines, dev_lines = lines[:-cut], lines[-cut:]
    if not lines:
        fail("no training lines", EXIT_USAGE)
    b = _load_base(base)
    recipe = recipe_from(language_recipe_for(head_is_fresh(b.spec, TaskType.FILL_MASK)))
    data = {"train": [file_info(p) for p in train], "train_lines": len(lines), "dev_lines": len(dev_lines or [])}
    result = _run(
        train_language_diff, b, language, lines, recipe=recipe, out_dir=work_dir or Path(f"{output}.work"),
        dev_lines=dev_lines, output=output, store_decoder=store_decoder, data=data,
    )
    _finish(result, output, push, token)


def read_task_data(path: Path, task_type: str, fmt: Optional[str], opts: dict) -> list:
    """Examples from a labelled file; the format defaults from the task type and suffix."""
    from trainer import data as d

    if fmt is None:
        from diffs_store.metadata import TaskType
        from trainer.task_types import trainer_task

        fmt = trainer_task(TaskType(task_type)).data_format
        if fmt == "conll" and path.suffix == ".conllu":
            fmt = "conllu"
    if fmt == "conll":
        return d.read_conll(path, token_column=opts["token_column"], tag_column=opts["tag_column"])
    if fmt == "conllu":
        return d.read_conllu(path, column=opts["conllu_column"])
    if fmt == "classification":
        return d.read_classification(
            path, text_field=opts["text_field"], pair_field=opts["pair_field"], label_field=opts["label_field"]
        )
    if fmt == "squad":
        return d.read_squad(path)
    fail(f"--format must be one of {', '.join(FORMATS)}", EXIT_USAGE)


FORMAT = typer.Option(None, "--format", help="conll | conllu | classification | squad (default: from task type).")
TOKEN_COL = typer.Option(0, "--token-column", help="CoNLL: column of the token.")
TAG_COL = typer.Option(-1, "--tag-column", help="CoNLL: column of the tag (-1: last).")
CONLLU_COL = typer.Option("upos", "--conllu-column", help="CoNLL-U: upos, xpos or deprel.")
TEXT_FIELD = typer.Option("text", "--text-field")
PAIR_FIELD = typer.Option("text_pair", "--pair-field")
LABEL_FIELD = typer.Option("label", "--label-field")
MAX_EXAMPLES = typer.Option(None, "--max-examples", help="Use at most this many examples per file.")


@train_app.command("task")
def task_cmd(
    base: str = BASE,
    task: str = typer.Option(..., "--task", help="Task name, e.g. ner, pos, nli."),
    task_type: str = typer.Option("token-classification", "--task-type", help=" | ".join(TASK_TYPES)),
    train: list[str] = typer.Option(..., "--train", help="Labelled data: PATH or LANG=PATH (repeat for multi-source)."),
    dev: list[str] = typer.Option([], "--dev", help="Dev data: PATH or LANG=PATH."),
    language_diff: list[str] = typer.Option([], "--language-diff", help="Source-language diff: PATH or LANG=PATH."),
    source_language: Optional[str] = typer.Option(None, "--source-language", help="Language of single-source data."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels in id order (default: from data)."),
    fmt: Optional[str] = FORMAT,
    token_column: int = TOKEN_COL,
    tag_column: int = TAG_COL,
    conllu_column: str = CONLLU_COL,
    text_field: str = TEXT_FIELD,
    pair_field: str = PAIR_FIELD,
    label_field: str = LABEL_FIELD,
    max_examples: Optional[int] = MAX_EXAMPLES,
    output: Path = OUTPUT,
    work_dir: Optional[Path] = WORK_DIR,
    k: Optional[str] = K,
    full_epochs: Optional[float] = FULL_EPOCHS,
    full_min_steps: Optional[int] = FULL_MIN,
    full_max_steps: Optional[int] = FULL_MAX,
    sparse_epochs: Optional[float] = SPARSE_EPOCHS,
    sparse_min_steps: Optional[int] = SPARSE_MIN,
    sparse_max_steps: Optional[int] = SPARSE_MAX,
    batch_size: Optional[int] = BATCH,
    grad_accum: Optional[int] = ACCUM,
    lr: Optional[float] = LR,
    weight_decay: Optional[float] = WD,
    full_l1: Optional[float] = FULL_L1,
    sparse_l1: Optional[float] = SPARSE_L1,
    max_seq_len: Optional[int] = SEQ,
    seed: Optional[int] = SEED,
    save_steps: Optional[int] = SAVE_STEPS,
    include_layer_norm: bool = LAYER_NORM,
    precision: Optional[str] = PRECISION,
    push: Optional[str] = PUSH,
    token: Optional[str] = TOKEN,
) -> None:
    """Train a task diff on one or several source languages.

    One source: its language diff (if given) is applied first and the diff is relative to
    theta0 + that diff. Several (LANG=PATH each): every batch comes from one source, with
    that source's language diff applied for its forward/backward and removed before the
    optimizer step.
    """
    from diffs_store.format import diff_id
    from diffs_store.metadata import TaskType
    from diffs_store.validate import validate_diff_bytes
    from trainer.jobs import Source, file_info, train_task_diff
    from trainer.recipe import task_recipe

    if task_type not in TASK_TYPES:
        fail(f"--task-type must be one of {', '.join(TASK_TYPES)}", EXIT_USAGE)
    tt = TaskType(task_type)
    opts = dict(token_column=token_column, tag_column=tag_column, conllu_column=conllu_column,
                text_field=text_field, pair_field=pair_field, label_field=label_field)
    recipe = _recipe(
        task_recipe(tt), k=k, full=(full_epochs, full_min_steps, full_max_steps),
        sparse=(sparse_epochs, sparse_min_steps, sparse_max_steps), batch_size=batch_size, grad_accum=grad_accum,
        learning_rate=lr, weight_decay=weight_decay, full_l1_reg=full_l1, sparse_l1_reg=sparse_l1,
        max_seq_len=max_seq_len, seed=seed, save_steps=save_steps, precision=precision,
        freeze_layer_norm=False if include_layer_norm else None,
    )
    trains = [split_source(t) for t in train]
    devs = dict(split_source(t) for t in dev)
    if len(trains) > 1 and any(lang is None for lang, _ in trains):
        fail("with several --train files, give each as LANG=PATH", EXIT_USAGE)
    examples = [_run(read_task_data, path, task_type, fmt, opts)[:max_examples] for _, path in trains]
    dev_sets = {lang: _run(read_task_data, path, task_type, fmt, opts) for lang, path in devs.items()}

    b = _load_base(base)
    diffs: dict[str | None, tuple] = {}
    for item in language_diff:
        lang, path = split_source(item)
        data = _run(path.read_bytes)
        diff = _run(validate_diff_bytes, data, b.spec)
        diffs[lang or diff.meta.language] = (diff, diff_id(data))

    sources = []
    for (lang, _), train_examples in zip(trains, examples):
        if lang is None:  # single source: from --source-language, else the one language diff's
            lang = source_language or (next(iter(diffs)) if len(diffs) == 1 else None)
        diff, did = diffs.get(lang, (None, None))
        if diff is None and len(diffs) == 1 and len(trains) == 1:
            diff, did = next(iter(diffs.values()))
        dev_examples = dev_sets.get(lang) or dev_sets.get(None)
        sources.append(Source(lang, train_examples, diff, did, dev_examples))
    data = {"train": [file_info(p) for _, p in trains]}
    result = _run(
        train_task_diff, b, task, tt, sources, recipe=recipe, out_dir=work_dir or Path(f"{output}.work"),
        labels=tuple(labels.split(",")) if labels else None, output=output, data=data,
    )
    _finish(result, output, push, token)


def eval_cmd(
    base: str = BASE,
    task_diff: Path = typer.Option(..., "--task-diff"),
    language_diff: Optional[Path] = typer.Option(None, "--language-diff"),
    data: Path = typer.Option(..., "--data", help="Labelled test file."),
    fmt: Optional[str] = FORMAT,
    token_column: int = TOKEN_COL,
    tag_column: int = TAG_COL,
    conllu_column: str = CONLLU_COL,
    text_field: str = TEXT_FIELD,
    pair_field: str = PAIR_FIELD,
    label_field: str = LABEL_FIELD,
    max_examples: Optional[int] = typer.Option(
        None, "--max-examples", help="Score a seeded random subset of this many examples (not the first N)."
    ),
    subset_seed: int = typer.Option(42, "--subset-seed", help="Seed of the --max-examples subset (printed with the scores)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_seq_len: int = typer.Option(512, "--max-seq-len"),
) -> None:
    """Compose base + language diff + task diff (the service's composition code) and print
    the scores on a labelled file as JSON: entity P/R/F1 (BIO tags, seqeval), accuracy, or
    SQuAD EM/F1."""
    from diffs_store.format import read_metadata
    from trainer.evaluate import evaluate_composition, sample_subset

    meta = _run(lambda: read_metadata(task_diff.read_bytes()))
    if meta.kind.value != "task":
        fail(f"{task_diff} is a {meta.kind.value} diff, given as --task-diff", EXIT_USAGE)
    opts = dict(token_column=token_column, tag_column=tag_column, conllu_column=conllu_column,
                text_field=text_field, pair_field=pair_field, label_field=label_field)
    examples = sample_subset(_run(read_task_data, data, meta.task_type.value, fmt, opts), max_examples, subset_seed)
    b = _load_base(base)
    paths = [p for p in (language_diff, task_diff) if p is not None]
    kw = {"batch_size": batch_size} if meta.task_type.value == "question-answering" else {"batch_size": batch_size, "max_len": max_seq_len}
    scores = _run(evaluate_composition, base, paths, examples, base=b.model, spec=b.spec, tokenizer=b.tokenizer, **kw)
    subset = {"subset_seed": subset_seed} if max_examples is not None else {}
    typer.echo(json.dumps({"examples": len(examples), **subset, **{k: round(v, 6) for k, v in scores.items()}}))


