"""A tiny real base model on disk (config + weights + WordPiece tokenizer) and diffs for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from transformers import AutoModel, BertTokenizerFast

from diffs_store.base import load_base_model
from diffs_store.metadata import DiffKind, TaskType
from service.readiness import wait_ready
from factories import random_diff, tiny_bert_config

WORDS = (
    "the a of and in to is was for on with as by at from his her it that this "
    "john mary paris london kano lagos nairobi abuja google bank city river news said "
    "president went visited works lives told today yesterday market people new old "
    "who where what capital country ##s ##ed ##ing ##a ##o ##u ##i"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKEN = "s3cret-token"  # admin token of the in-process app (conftest's ``app_client``)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post_diff(client, data: bytes, headers=AUTH):
    """Upload ``data`` through an in-process client (FastAPI's TestClient)."""
    return client.post("/v1/admin/diffs", files={"file": ("d.safetensors", data)}, headers=headers)


NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
LANGUAGES = ["hau", "swa", "yor", "pcm", "ibo"]
TASKS = {
    "ner": (TaskType.TOKEN_CLASSIFICATION, NER_LABELS),
    "pos": (TaskType.TOKEN_CLASSIFICATION, ("NOUN", "VERB", "ADJ", "DET", "ADP", "PROPN")),
    "nli": (TaskType.SEQUENCE_CLASSIFICATION, ("entailment", "neutral", "contradiction")),
    "qa": (TaskType.QUESTION_ANSWERING, ()),
}


def make_base_dir(root: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Save a tiny BERT and its tokenizer as a normal Hugging Face model directory."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    env = dict(os.environ, CSFT_BASE_MODEL=str(base_dir), CSFT_DATA_DIR=str(data_dir),
               CSFT_ADMIN_TOKEN=token, CSFT_DEVICE="cpu", **{f"CSFT_{k}": v for k, v in settings.items()})
    env.pop("REDIS_URL", None)
    cli = Path(sys.executable).with_name("csft")
    out = open(log, "wb") if log is not None else subprocess.PIPE
    proc = subprocess.Popen([str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=own_group)

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


def upload(url: str, token: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/admin/diffs", files={"file": (f"{name}.safetensors", data)},
                      headers={"Authorization": f"Bearer {token}"})
