"""Scale-out on Ray Serve: pair affinity vs random routing vs one replica, in one run.

One local Ray instance (all cores), the Serve application of service.scaleout with the real
MiniLM base and the 20 pairs of bench/serving_load.py (5 languages x 4 token-classification
tasks, random diffs uploaded through the ingress). Scenarios, interleaved per repeat:

* affinity -- 2 model replicas, requests multiplexed by pair (the default);
* random   -- the same 2 replicas, the ``x-csft-routing: random`` header per request
              (Serve's default choice of replica, no model id);
* budget   -- 2 replicas with affinity, each holding as many pairs as its plan budget allows
              (``pairs_per_replica`` = 1000: the behaviour before the share cap);
* single   -- the application redeployed with 1 model replica, affinity routing.

Each model replica reserves one CPU and runs one torch thread. Switches come from the
ingress's /metrics (each replica's switch counter as of its latest answer) before and after
each scenario; throughput and latency from the client (aiohttp, bench/loadgen.py: the httpx
client of earlier runs was itself the bottleneck at these concurrencies); *stickiness* is the share of each
pair's requests answered by the replica that answered most of them (1.0: a pair lives on
one replica; about 0.6 for 2 replicas chosen at random).

Usage: python bench/scaleout_load.py [--requests 300] [--concurrency 8 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import loadgen  # noqa: E402
from common import loadavg, machine_info, median, table  # noqa: E402
from serving_load import BASE, LANGUAGES, TASKS, TOKEN, make_diffs, request_plan  # noqa: E402

# Where the CPU goes, by process title (Ray sets them): the load generator is this process.
_ROLES = (("PairModel", "model"), ("Ingress", "ingress"), ("ProxyActor", "proxy"))


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) so far of every process on the machine, summed by role."""
    import psutil

    me = psutil.Process().pid
    out: dict[str, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:
            continue
        title = " ".join(proc.info["cmdline"] or [])
        role = "client" if proc.info["pid"] == me else next((r for key, r in _ROLES if key in title), "other")
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def replica_gauge(url: str, name: str, client=httpx) -> dict[str, float]:
    """One of the ingress's per-replica gauges (``csft_replica_<name>``), by replica id."""
    pattern = re.compile(rf'^csft_replica_{name}\{{replica="([^"]+)"\}}\s+([0-9.eE+-]+)$', re.M)
    return {r: float(v) for r, v in pattern.findall(client.get(f"{url}/metrics", timeout=10).text)}


async def run_load(url: str, plan: list, concurrency: int, routing: str | None) -> dict:
    """The aiohttp client of bench/loadgen.py, counting the replica that answered each pair;
    ``routing="random"`` sends the header that bypasses pair affinity."""
    from service.scaleout.ingress import REPLICA_HEADER, ROUTING_HEADER

    return await loadgen.run_aiohttp(url, plan, concurrency, header=REPLICA_HEADER,
                                     headers={ROUTING_HEADER: routing} if routing else None)


class QueueSampler(threading.Thread):
    """Samples each replica's worker queue depth (as of its latest answer, from the ingress's
    /metrics) every ``period`` seconds while a scenario runs: how deep the queues the
    scheduler sees really are."""

    def __init__(self, url: str, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.url, self.period, self.samples = url, period, []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stopped.wait(self.period):
                self.samples.append(replica_gauge(self.url, "queue_depth", client))

    def mean(self, replicas: set[str]) -> float:
        """Mean depth per replica over the samples, counting only ``replicas`` (those that
        answered in this scenario: the gauges of earlier deployments' replicas linger)."""
        self.stopped.set()
        self.join()
        per_sample = [sum(d[r] for r in replicas if r in d) / len(replicas) for d in self.samples if replicas & d.keys()]
        return sum(per_sample) / len(per_sample) if per_sample else float("nan")


def scenario(url: str, plan: list, concurrency: int, routing: str | None) -> dict:
    before, cpu_before = replica_gauge(url, "switches"), cpu_by_role()
    sampler = QueueSampler(url)
    sampler.start()
    out = asyncio.run(run_load(url, plan, concurrency, routing))
    by_pair = out.pop("by_pair")
    answered = {replica for counts in by_pair.values() for replica in counts}
    out["queue"] = sampler.mean(answered)
    out["replicas"] = len(answered)
    out["sticky"] = sum(max(c.values()) for c in by_pair.values()) / max(1, sum(sum(c.values()) for c in by_pair.values()))
    after, cpu_after = replica_gauge(url, "switches"), cpu_by_role()
    out["cpu_ms"] = {role: 1e3 * (cpu_after[role] - cpu_before.get(role, 0.0)) / out["n"] for role in cpu_after}
    switches = sum(v - before.get(r, 0.0) for r, v in after.items())
    out["switches_per_100"] = 100 * switches / out["n"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pattern", default="uniform", choices=["uniform", "zipf"])
    ap.add_argument("--lang-density", type=float, default=0.03)
    ap.add_argument("--task-density", type=float, default=0.05)
    args = ap.parse_args()

    import ray
    from ray import serve

    from service.config import Settings
    from service.readiness import free_port
    from service.scaleout.launch import deploy, shared_registry
    from service.scaleout.options import ScaleOutOptions, settings_args

    print(machine_info())
    print(loadavg())
    _, _, files = make_diffs(args.lang_density, args.task_density)
    pairs = [(lang, task) for lang in LANGUAGES for task in TASKS]
    workdir = Path(tempfile.mkdtemp(prefix="csft-scaleout-"))
    settings = Settings(base_model=BASE, data_dir=workdir / "data", admin_token=TOKEN, device="cpu", redis_url=None)
    results: dict[tuple[str, int], list[dict]] = {}
    with shared_registry(settings) as shared:
        ray.init(include_dashboard=False, log_to_driver=False)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            deployments = ((2, None, ("affinity", "random")), (2, 1000, ("budget",)), (1, None, ("single",)))
            for replicas, cap, names in deployments:
                options = ScaleOutOptions(replicas=replicas, replica_cpus=1, pairs_per_replica=cap,
                                          settings=settings_args(shared))
                t0 = time.perf_counter()
                deploy(options, "127.0.0.1", port)
                print(f"{replicas} replica(s) ready in {time.perf_counter() - t0:.1f} s")
                if (replicas, cap) == (2, None):
                    for (kind, key), diff in files.items():
                        r = httpx.post(f"{url}/v1/admin/diffs", files={"file": (f"{key}.safetensors", diff.to_bytes())},
                                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
                        assert r.status_code == 201, r.text
                scenario(url, request_plan(args.pattern, 2 * len(pairs), pairs, 0, 1.0), 4, None)  # warm every pair
                for rep in range(args.repeats):
                    for c in args.concurrency:
                        for name in (names if rep % 2 == 0 else names[::-1]):
                            plan = request_plan(args.pattern, args.requests, pairs, 1000 * rep + c, 1.0)
                            res = scenario(url, plan, c, "random" if name == "random" else None)
                            print(f"  {name:8s} c={c:3d} rep={rep}: {res['rps']:.1f} req/s, p50 {1e3 * res['p50']:.0f} ms, "
                                  f"p99 {1e3 * res['p99']:.0f} ms, {res['switches_per_100']:.1f} switches/100, "
                                  f"stickiness {res['sticky']:.2f}, worker queue {res['queue']:.1f} per replica, "
                                  f"{res['replicas']} replica(s) answered, {len(res['errors'])} errors")
                            print("    CPU ms per request: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(res["cpu_ms"].items())))
                            results.setdefault((name, c), []).append(res)
        finally:
            serve.shutdown()
            ray.shutdown()

    rows = []
    for c in args.concurrency:
        single = median([r["rps"] for r in results[("single", c)]])
        for name in ("affinity", "random", "budget", "single"):
            rs = results[(name, c)]
            rps = median([r["rps"] for r in rs])
            rows.append([name, c, f"{rps:.1f}", f"{rps / single:.2f}x", f"{1e3 * median([r['p50'] for r in rs]):.0f}",
                         f"{1e3 * median([r['p99'] for r in rs]):.0f}", f"{median([r['switches_per_100'] for r in rs]):.1f}",
                         f"{median([r['sticky'] for r in rs]):.2f}", f"{median([r['queue'] for r in rs]):.1f}", sum(len(r["errors"]) for r in rs)])
    print(f"\n{args.pattern} traffic over {len(pairs)} pairs, {args.requests} requests per scenario, "
          f"medians of {args.repeats} repeats")
    print(table(["routing", "concurrency", "req/s", "vs 1 replica", "p50 ms", "p99 ms", "switches/100 req", "stickiness", "worker queue per replica", "errors"], rows))

    roles = ("client", "proxy", "ingress", "model", "other")
    rows = []
    for c in args.concurrency:
        for name in ("affinity", "random", "budget", "single"):
            rs = results[(name, c)]
            per = {role: median([r["cpu_ms"].get(role, 0.0) for r in rs]) for role in roles}
            rps = median([r["rps"] for r in rs])
            rows.append([name, c, *(f"{per[role]:.1f}" for role in roles), f"{sum(per.values()) * rps / 1e3:.2f}"])
    print("\nCPU milliseconds per request by process (medians), and the cores they keep busy at the measured rate")
    print(table(["routing", "concurrency", *roles, "cores busy"], rows))


if __name__ == "__main__":
    main()
