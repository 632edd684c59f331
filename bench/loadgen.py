"""A closed-loop load generator in C: wrk (``apt-get install wrk``) driven by a Lua script
that cycles through a request plan.

Why not only httpx: on this 2-core machine a Python client competes with the server for
the cores, and httpx's per-request cost grows with its connection count. Measured side by
side against one pinned MiniLM pair (session 4): at 64 connections the httpx client got
53-70 req/s with batches of 2.2 inputs and a p99 of 4-5 s, while the server itself held
each request ~145 ms; wrk got 206 req/s with full batches of 32 and a p99 of 0.67 s. So
httpx figures above ~16 clients measure the client, and wrk is the default where it is
installed.
"""

from __future__ import annotations

import json
import re
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
