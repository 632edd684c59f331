"""Closed-loop load generators: wrk (C, ``apt-get install wrk``) driven by a Lua script that
cycles through a request plan, and an aiohttp client for when each answer's headers matter
(which replica served it).

Why not httpx: on a 2-core machine its per-request cost grows with its connection count
until the client, not the server, sets the pace (the server holds a request a fraction of
the time the client sees), so httpx figures above a few dozen clients measure the client.
aiohttp (a dependency of Ray Serve, listed in the ``bench`` extra) keeps up with wrk and
sees each answer's headers. Figures: docs/BENCHMARKS.md, "Serving under mixed traffic".
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
import shutil
import subprocess
import tempfile
from pathlib import Path

_RESULT = re.compile(r"^CSFT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", re.M)

_SCRIPT = """
local bodies = {%(bodies)s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/json"}, bodies[(i - 1) %% #bodies + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("CSFT %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def run_wrk(url: str, plan: list[tuple[str | None, str | None, str]], concurrency: int, duration_s: float) -> dict:
    """``concurrency`` connections, one request in flight on each, for ``duration_s``
    seconds, cycling through ``plan`` in order. Latencies are wrk's (microsecond
    histogram); errors count connection failures, timeouts and non-2xx answers."""
    bodies = []
    for language, task, text in plan:
        body = {"task": task, "inputs": [text]}
        if language is not None:
            body["language"] = language
        bodies.append(_lua_string(json.dumps(body)))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plan.lua"
        script.write_text(_SCRIPT % {"bodies": ",\n".join(bodies)})
        out = subprocess.run(
            ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{duration_s:g}s", "--timeout", "60s", "-s", str(script),
             url],
            capture_output=True, text=True, check=True,
        ).stdout
    m = _RESULT.search(out)
    if m is None:
        raise RuntimeError(f"wrk printed no result line:\n{out[-2000:]}")
    n, duration_us, p50, p99, mean, errors = (int(x) for x in m.groups())
    wall = duration_us / 1e6
    return {"n": n, "wall": wall, "rps": n / wall, "p50": p50 / 1e6, "p99": p99 / 1e6, "mean": mean / 1e6,
            "errors": [f"{errors} failed requests"] if errors else [], "retries": 0}


async def run_aiohttp(url: str, plan: list[tuple[str | None, str | None, str]], concurrency: int,
                      header: str | None = None, headers: dict[str, str] | None = None) -> dict:
    """``concurrency`` workers, one request in flight each, through ``plan`` once. With
    ``header``, ``by_pair`` counts that header's values per (language, task); ``headers``
    go with every request."""
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    by_pair: dict[tuple, Counter] = {}
    it = iter(plan)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            for language, task, text in it:
                body = {"task": task, "inputs": [text]}
                if language is not None:
                    body["language"] = language
                start = time.perf_counter()
                async with session.post("/v1/predict", json=body) as r:
                    text_body = await r.text()
                latencies.append(time.perf_counter() - start)
                if r.status != 200:
                    errors.append(f"{r.status} {text_body[:200]}")
                elif header:
                    by_pair.setdefault((language, task), Counter())[r.headers.get(header, "?")] += 1

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]  # noqa: E731
    return {"n": len(latencies), "wall": wall, "rps": len(latencies) / wall, "p50": pick(50), "p99": pick(99),
            "mean": sum(latencies) / len(latencies), "errors": errors, "retries": 0, "by_pair": by_pair}
