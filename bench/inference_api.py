"""The Hugging Face Inference API route of a pair against ``/v1/predict``, same server, same
pair, same inputs, same batch: does the per-pair route cost anything?

One real ``csft serve`` (MiniLM base, one language and one NER task diff, random), one
client on a kept-alive connection, requests one at a time (no queueing: the latency is the
server's time plus a constant loopback), the two routes interleaved request by request so
drift hits both alike. Reported: median and p90 per route and batch size, and the ratio of
medians (HF route / predict; the target is <= 1.05).

Usage: python bench/inference_api.py [--requests 300] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import machine_info, median, q, table  # noqa: E402
from serving_load import BASE, SENTENCES, Server, make_diffs  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per route and batch size")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args(argv)

    print(machine_info())
    with tempfile.TemporaryDirectory() as tmp:
        server = Server("api", BASE, Path(tmp), {"CSFT_TORCH_THREADS": "1"})
        try:
            server.wait_ready()
            _, _, files = make_diffs(0.01, 0.02)
            server.upload("hau.safetensors", files[("language", "hau")].to_bytes())
            server.upload("ner.safetensors", files[("task", "ner")].to_bytes())
            rows = []
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for batch in args.batches:
                    inputs = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
                    routes = {
                        "/v1/predict": ("/v1/predict", {"language": "hau", "task": "ner", "inputs": inputs}),
                        "/models/hau/ner": ("/models/hau/ner", {"inputs": inputs if batch > 1 else inputs[0]}),
                    }
                    for path, body in routes.values():  # warm both
                        for _ in range(10):
                            assert client.post(path, json=body).status_code == 200
                    times: dict[str, list[float]] = {name: [] for name in routes}
                    for _ in range(args.requests):
                        for name, (path, body) in routes.items():
                            start = time.perf_counter()
                            r = client.post(path, json=body)
                            times[name].append(time.perf_counter() - start)
                            assert r.status_code == 200, r.text
                    base = median(times["/v1/predict"])
                    for name, ts in times.items():
                        rows.append([batch, name, f"{median(ts) * 1e3:.2f}", f"{q(ts, 90) * 1e3:.2f}",
                                     f"{median(ts) / base:.3f}x"])
            print(table(["batch", "route", "median ms", "p90 ms", "/ predict"], rows))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
