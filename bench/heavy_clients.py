"""A light client beside heavy ones: does a request of maximum size starve the others?

One real ``csft serve`` (MiniLM base, one NER pair), three phases of ``--seconds`` each:

* quiet -- the light client alone (one short sentence per request, back to back) and a
  ``/healthz`` probe every 50 ms;
* heavy -- the same, while ``--heavy`` clients loop requests of the largest legal size
  (``CSFT_MAX_INPUTS`` inputs of ``CSFT_MAX_INPUT_CHARS`` characters each);
* heavy, 32-window turns -- the same against a second server without a token budget
  (``CSFT_MAX_BATCH_TOKENS`` unbounded): a heavy request's turn is 32 full windows.

Reported: the light client's p50/p99 and the probe's p50/p99 in each phase.

Usage: python bench/heavy_clients.py [--seconds 30] [--heavy 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import machine_info, q, table  # noqa: E402
from serving_load import BASE, SENTENCES, Server, make_diffs  # noqa: E402

WORDS = "Amina told reporters in Lagos that the market prices rose again on Monday".split()


def heavy_body(inputs: int, chars: int) -> dict:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(chars))[:chars]
    return {"language": "hau", "task": "ner", "inputs": [text] * inputs}


async def phase(url: str, seconds: float, heavy: int, body: dict) -> dict[str, list[float]]:
    stop = time.monotonic() + seconds
    light: list[float] = []
    light_failed: list[float] = []
    probe: list[float] = []
    heavy_done: list[float] = []
    limits = httpx.Limits(max_connections=heavy + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def light_loop():
            while time.monotonic() < stop:
                start = time.perf_counter()
                r = await client.post("/v1/predict", json={"language": "hau", "task": "ner", "inputs": [SENTENCES[0]]})
                (light if r.status_code == 200 else light_failed).append(time.perf_counter() - start)

        async def probe_loop():
            while time.monotonic() < stop:
                start = time.perf_counter()
                (await client.get("/healthz")).raise_for_status()
                probe.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)

        async def heavy_loop():
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", json=body)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    heavy_done.append(time.perf_counter() - start)

        tasks = [asyncio.create_task(heavy_loop()) for _ in range(heavy)]
        await asyncio.sleep(2 if heavy else 0)  # the heavy requests are in the queue first
        await asyncio.gather(light_loop(), probe_loop())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"light": light, "light_failed": light_failed, "probe": probe, "heavy": heavy_done}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--heavy", type=int, default=4)
    ap.add_argument("--inputs", type=int, default=64, help="inputs per heavy request (the server's limit)")
    ap.add_argument("--chars", type=int, default=20_000, help="characters per heavy input (the server's limit)")
    args = ap.parse_args(argv)
    print(machine_info())
    body = heavy_body(args.inputs, args.chars)
    with tempfile.TemporaryDirectory() as tmp:
        threads = {"CSFT_TORCH_THREADS": "1"}
        fair = Server("fair", BASE, Path(tmp), threads)
        whole = Server("whole", BASE, Path(tmp), threads | {"CSFT_MAX_BATCH_TOKENS": str(10**9)})
        try:
            _, _, files = make_diffs(0.01, 0.02)
            for server in (fair, whole):
                server.wait_ready()
                server.upload("hau.safetensors", files[("language", "hau")].to_bytes())
                server.upload("ner.safetensors", files[("task", "ner")].to_bytes())
            rows = []
            for name, server, heavy in (("quiet", fair, 0), ("heavy, fair share", fair, args.heavy),
                                        ("heavy, 32-window turns", whole, args.heavy)):
                r = asyncio.run(phase(server.url, args.seconds, heavy, body))
                ms = lambda xs, p: f"{q(xs, p) * 1e3:.0f}" if xs else "-"  # noqa: E731
                rows.append([name, f'{len(r["light"])} ({len(r["light_failed"])} failed)', ms(r["light"], 50), ms(r["light"], 99),
                             ms(r["probe"], 50), ms(r["probe"], 99), len(r["heavy"])])
            print(table(["phase", "light requests", "light p50 ms", "light p99 ms", "/healthz p50 ms",
                         "/healthz p99 ms", "heavy answered"], rows))
        finally:
            fair.stop()
            whole.stop()


if __name__ == "__main__":
    main()
