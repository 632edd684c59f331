"""Shared helpers for the benchmarks: mBERT-sized models, uniformly spread random diffs,
timing and machine information. Not part of the installed packages (run from the repo root:
``python bench/<script>.py``)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffs_store.format import SparseDiff, SparseTensorDiff  # noqa: E402
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType  # noqa: E402

# mBERT (bert-base-multilingual-cased) sizes.
MBERT = dict(
    vocab_size=119547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
)
# XLM-R's 250,002-token vocabulary on a narrow 4-layer encoder: the language-diff (MLM)
# training step where the vocabulary-sized tensors (embedding gradient, logits, L1 term)
# dominate, at a size that runs in seconds per step on this CPU.
LARGE_VOCAB_BERT = dict(
    vocab_size=250002, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
    intermediate_size=1024, max_position_embeddings=512, type_vocab_size=1,
)
# A ~0.7M-parameter BERT for the 1,000-cycle drift checks (drift is per entry, so size only
# sets the sample: ~80k touched entries at the paper's densities).
EXACT_BERT = dict(
    vocab_size=2048, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=512, max_position_embeddings=128, type_vocab_size=2,
)
# A ~11M-parameter BERT for --quick smoke runs.
SMALL_BERT = dict(
    vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
    intermediate_size=1024, max_position_embeddings=512, type_vocab_size=2,
)
K_LANG = 7_667_712  # 13 x 768^2
K_TASK = 14_155_776  # 24 x 768^2
FAKE_FP = "sha256:" + "0" * 64
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")


def make_bert(sizes: Mapping, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A randomly initialised BertModel (the base encoder, AutoModel names), eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig(**sizes), add_pooling_layer=True)
    return model.to(dtype).eval()


def base_param_dict(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters()}


def maskable(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything except LayerNorm (as every reference recipe freezes LayerNorm)."""
    return {n: p for n, p in params.items() if "LayerNorm" not in n}


def n_maskable(params: Mapping[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in maskable(params).values())


def sample_sparse(params: Mapping[str, torch.Tensor], k: int, seed: int, scale: float = 0.01) -> dict[str, SparseTensorDiff]:
    """K entries drawn uniformly without replacement from all maskable entries (one global
    sample, so each tensor gets a share proportional to its size), sorted per tensor;
    float32 values ~ N(0, scale^2)."""
    names = list(maskable(params))
    sizes = torch.tensor([params[n].numel() for n in names], dtype=torch.int64)
    total = int(sizes.sum())
    if not 0 < k <= total:
        raise ValueError(f"K={k} not in 1..{total}")
    gen = torch.Generator().manual_seed(seed)
    picked = torch.empty(0, dtype=torch.int64)
    while picked.numel() < k:  # rejection of duplicates; a couple of rounds at most
        extra = torch.randint(0, total, (int((k - picked.numel()) * 1.1) + 1024,), generator=gen)
        picked = torch.unique(torch.cat([picked, extra]))
    if picked.numel() > k:
        keep = torch.randperm(picked.numel(), generator=gen)[:k]
        picked = picked[keep].sort().values
    values = torch.randn(k, generator=gen) * scale
    bounds = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    cuts = torch.searchsorted(picked, bounds).tolist()
    out = {}
    for i, name in enumerate(names):
        a, b = cuts[i], cuts[i + 1]
        if b > a:
            out[name] = SparseTensorDiff((picked[a:b] - bounds[i]).contiguous(), values[a:b].contiguous())
    return out


def make_diff(sparse: dict[str, SparseTensorDiff], kind: str, key: str) -> SparseDiff:
    """Wrap sparse parts in valid metadata (a fake base fingerprint: no validation here)."""
    nnz = sum(len(s) for s in sparse.values())
    if kind == "language":
        meta = DiffMetadata(kind=DiffKind.LANGUAGE, language=key, base_model="bench-bert", base_fingerprint=FAKE_FP, nnz=nnz)
    else:
        meta = DiffMetadata(kind=DiffKind.TASK, language="en", task=key, task_type=TaskType.TOKEN_CLASSIFICATION,
                            labels=NER_LABELS, base_model="bench-bert", base_fingerprint=FAKE_FP, nnz=nnz)
    return SparseDiff(meta=meta, sparse=sparse)


DEVICE = torch.device("cpu")  # set by use_device(); every timer waits for it


def use_device(name: str) -> torch.device:
    """Run a benchmark on ``name`` ("cpu", "cuda", "cuda:1"): the timers below then wait for
    the device's queued work, so a CUDA kernel is timed when it finishes, not when launched."""
    global DEVICE
    DEVICE = torch.device(name)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    return DEVICE


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median(xs) -> float:
    return statistics.median(xs)


def q(xs, p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    i = min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[i]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_info() -> str:
    cpu = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import transformers

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return (
        f"code: {commit} | "
        f"host: {platform.node()} | cpu: {cpu} x {os.cpu_count()} | python {platform.python_version()} | "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) | transformers {transformers.__version__} | "
        f"loadavg {loadavg()}"
    )


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """Samples this process's RSS in a thread (every ``interval`` s) and keeps the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:8.1f}"


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)
