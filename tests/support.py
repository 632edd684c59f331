"""What the tests and the benchmarks build and start: tiny models (in memory and as a Hugging
Face directory), random diffs, free ports, uploads and a `csft serve` process. No model hub,
no network. The benchmarks import it as ``tests.support``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import torch
from transformers import AutoModel, BertConfig, BertTokenizerFast, PreTrainedModel, XLMRobertaConfig

from diffs_store.base import BaseSpec, base_params, load_base_model
from diffs_store.format import SparseDiff, SparseTensorDiff
from diffs_store.heads import head_layout
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType
from service.readiness import free_port, wait_ready

__all__ = ["free_port"]  # re-exported: the one definition is service.readiness's

TOKEN = "s3cret-token"  # admin token of the test servers (conftest's ``app_client``, running_server, LiveServer)
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# -- tiny models ------------------------------------------------------------------------------


def tiny_bert_config(vocab_size: int = 120, **kw) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, **kw,
    )


def tiny_xlmr_config(vocab_size: int = 120) -> XLMRobertaConfig:
    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=70, pad_token_id=1,
    )


def tiny_base(config=None, seed: int = 0) -> tuple[PreTrainedModel, BaseSpec]:
    torch.manual_seed(seed)
    model = AutoModel.from_config(config or tiny_bert_config())
    model.eval()
    return model, BaseSpec.from_model("tiny-bert", model)


# -- random diffs -----------------------------------------------------------------------------


def random_sparse(params, density: float, gen: torch.Generator, dtype=torch.float32, scale: float = 0.05):
    sparse = {}
    for name, p in params.items():
        if "LayerNorm" in name:
            continue
        n = p.numel()
        k = max(1, int(n * density))
        idx = torch.randperm(n, generator=gen)[:k].sort().values
        val = (torch.randn(k, generator=gen) * scale).to(dtype)
        sparse[name] = SparseTensorDiff(idx, val)
    return sparse


def random_diff(
    model: PreTrainedModel,
    spec: BaseSpec,
    kind: DiffKind = DiffKind.LANGUAGE,
    *,
    language: str | None = "hau",
    task: str = "ner",
    task_type: TaskType = TaskType.TOKEN_CLASSIFICATION,
    labels: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
    density: float = 0.05,
    seed: int = 1,
    with_head: bool = True,
    metrics: dict | None = None,
) -> SparseDiff:
    """A valid diff for ``spec`` with random deltas (and a random head for task diffs);
    ``metrics`` as a producer would record them (e.g. ``{"dev": {"hau": {"f1": 0.8}}}``)."""
    gen = torch.Generator().manual_seed(seed)
    sparse = random_sparse(base_params(model), density, gen)
    if kind is DiffKind.LANGUAGE:
        meta = dict(kind=kind, language=language)
        if with_head:
            meta["task_type"] = TaskType.FILL_MASK
        head_type, n_labels = TaskType.FILL_MASK, 2
    else:
        if task_type is TaskType.QUESTION_ANSWERING:
            labels = ()
        meta = dict(kind=kind, language=language, task=task, task_type=task_type, labels=labels)
        head_type, n_labels = task_type, max(len(labels), 2)
    dense = {}
    if with_head or kind is DiffKind.TASK:
        layout = head_layout(spec, head_type, n_labels)
        dense = {name: torch.randn(layout.shapes[name], generator=gen) * 0.1 for name in sorted(layout.required)}
    nnz = sum(len(s) for s in sparse.values())
    return SparseDiff(
        meta=DiffMetadata(base_model=spec.name, base_fingerprint=spec.fingerprint, nnz=nnz, metrics=metrics or {}, **meta),
        sparse=sparse,
        dense=dense,
    )


# -- checks -----------------------------------------------------------------------------------


def state_sha(params) -> str:
    """sha256 over names and raw bytes: equal only for bit-identical weights."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def counted_index_copies() -> Iterator[list[int]]:
    """Inside the block, the entries written by every ``Tensor.index_copy_`` call, in order
    (to check that a switch writes only what changes)."""
    writes: list[int] = []
    original = torch.Tensor.index_copy_

    def counting(self, dim, index, source):
        writes.append(index.numel())
        return original(self, dim, index, source)

    torch.Tensor.index_copy_ = counting
    try:
        yield writes
    finally:
        torch.Tensor.index_copy_ = original


# -- a tiny base on disk and its diffs ----------------------------------------------------------

WORDS = (
    "the a of and in to is was for on with as by at from his her it that this "
    "john mary paris london kano lagos nairobi abuja google bank city river news said "
    "president went visited works lives told today yesterday market people new old "
    "who where what capital country ##s ##ed ##ing ##a ##o ##u ##i"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
LANGUAGES = ["hau", "swa", "yor", "pcm", "ibo"]
TASKS = {
    "ner": (TaskType.TOKEN_CLASSIFICATION, NER_LABELS),
    "pos": (TaskType.TOKEN_CLASSIFICATION, ("NOUN", "VERB", "ADJ", "DET", "ADP", "PROPN")),
    "nli": (TaskType.SEQUENCE_CLASSIFICATION, ("entailment", "neutral", "contradiction")),
    "qa": (TaskType.QUESTION_ANSWERING, ()),
}


def make_base_dir(root: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Save a tiny BERT and its WordPiece tokenizer (which knows ``WORDS``) as a normal
    Hugging Face model directory."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)  # transformers 5 ignores vocab_file=
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_bert_config(vocab_size=len(SPECIAL) + len(WORDS)))
    model.to(dtype).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def make_diffs(base_dir: Path, languages=LANGUAGES, tasks=TASKS, density: float = 0.1) -> dict[tuple[str, str], bytes]:
    """{(kind, key): file bytes} for every language (with MLM head) and task."""
    model, spec = load_base_model(str(base_dir))
    out = {}
    for i, lang in enumerate(languages):
        out[("language", lang)] = random_diff(model, spec, DiffKind.LANGUAGE, language=lang, seed=100 + i, density=density).to_bytes()
    for i, (task, (task_type, labels)) in enumerate(tasks.items()):
        out[("task", task)] = random_diff(
            model, spec, DiffKind.TASK, language="en", task=task, task_type=task_type, labels=labels,
            seed=200 + i, density=density,
        ).to_bytes()
    return out


# -- uploads ----------------------------------------------------------------------------------


def post_diff(client, data: bytes, headers=AUTH):
    """Upload ``data`` through an in-process client (FastAPI's TestClient)."""
    return client.post("/v1/admin/diffs", files={"file": ("d.safetensors", data)}, headers=headers)


def upload(url: str, token: str, name: str, data: bytes, timeout: float = 120) -> httpx.Response:
    """Upload ``data`` to a running server as ``<name>.safetensors``."""
    return httpx.post(f"{url}/v1/admin/diffs", files={"file": (f"{name}.safetensors", data)},
                      headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


def upload_all(url: str, diffs: dict, token: str = TOKEN) -> None:
    """Upload every file of ``diffs`` (e.g. :func:`make_diffs`'s) to a running server."""
    for i, data in enumerate(diffs.values()):
        r = upload(url, token, f"d{i}", data, timeout=30)
        assert r.status_code == 201, r.text


# -- a `csft serve` process -------------------------------------------------------------------


def server_env(base_model: str | Path, data_dir: Path, token: str, **settings: str) -> dict[str, str]:
    """The environment of a `csft serve` child: this one's, with the base, data directory,
    token and CSFT_* ``settings`` (names without the prefix), and no Redis URL inherited
    (the child starts its own embedded Redis in ``data_dir``)."""
    env = dict(os.environ, CSFT_BASE_MODEL=str(base_model), CSFT_DATA_DIR=str(data_dir), CSFT_ADMIN_TOKEN=token,
               CSFT_DEVICE="cpu", **{f"CSFT_{k}": v for k, v in settings.items()})
    env.pop("REDIS_URL", None)
    env.pop("CSFT_REDIS_URL", None)
    return env


def serve_command(port: int) -> list[str]:
    """`csft serve` on loopback ``port`` (the script installed beside this interpreter)."""
    cli = Path(sys.executable).with_name("csft")
    return [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


@contextmanager
def running_server(base_dir: Path, data_dir: Path, token: str, **settings: str):
    """A real `csft serve` on a free loopback port, ready when yielded (its URL); ``settings``
    are CSFT_* variables without the prefix (e.g. MAX_BATCH_SIZE="16")."""
    with server_process(base_dir, data_dir, token, **settings) as (_, url):
        yield url


@contextmanager
def server_process(base_dir: Path, data_dir: Path, token: str, *args: str, log: Path | None = None,
                   ready_s: float = 90, own_group: bool = False, **settings: str):
    """As :func:`running_server`, yielding ``(process, url)``; ``args`` are extra `csft serve`
    options (e.g. "--replicas", "2"); ``log`` takes the server's output (default: a pipe,
    read only when it fails to start, so keep the default to servers that log little);
    ``own_group`` starts it in a process group of its own, as a shell runs a foreground job
    (so the test can send Ctrl-C's SIGINT to the whole group)."""
    port = free_port()
    out = open(log, "wb") if log is not None else subprocess.PIPE
    proc = subprocess.Popen([*serve_command(port), *args], env=server_env(base_dir, data_dir, token, **settings),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=own_group)

    def exited() -> str | None:
        if proc.poll() is None:
            return None
        return log.read_text()[-2000:] if log is not None else proc.stdout.read().decode()[-2000:]

    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ready_s, exited=exited)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not None:
            out.close()
