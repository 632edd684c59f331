"""What mixed traffic can reach against a pinned pair, by simulation (a model, not a
measurement): one model worker, closed-loop clients, per-pair queues.

Each of ``c`` clients has one request in flight on a pair drawn uniformly (or by Zipf
popularity) from ``pairs``. The worker serves a pair's queued requests in a batch of up to
``max_batch``. A batch costs ``fixed + per_input x size`` ms, and a batch of another pair
first pays a ``switch`` of ms. A served client sends its next request at once.

Policies:

* ``oldest``: the pair with the oldest queued request, which is what
  service/scheduler.py does under load (every head has waited past ``2 x
  switch_after``);
* ``largest``: the longest queue, bounded by ``--max-wait``.

The defaults are the MiniLM costs measured with ``bench/serving_load.py --client wrk
--threads 1`` (a fixed and a per-input forward cost, and a switch cost, fitted to that run's
``csft_forward_seconds`` and switch metrics); docs/BENCHMARKS.md, "Serving under mixed
traffic", compares the model's prediction with the measurement. It then answers what the
measurement cannot: what a cheaper switch, another policy or deeper load would give.

Usage: python bench/closed_loop_model.py [--switch 25 10 5 0] [--concurrency 64 256 1024]
"""

from __future__ import annotations

import argparse
import random


def simulate(*, c: int, pairs: int, switch: float, fixed: float, per_input: float, max_batch: int = 32,
             policy: str = "oldest", max_wait: float = float("inf"), zipf: bool = False,
             horizon: float = 100_000.0, seed: int = 0) -> dict:
    """Requests per second, p50/p99 latency (ms) and requests per switch over ``horizon`` ms."""
    rng = random.Random(seed)
    weights = [1 / (r + 1) for r in range(pairs)] if zipf else [1.0] * pairs
    draw = lambda: rng.choices(range(pairs), weights=weights)[0]  # noqa: E731
    queues: dict[int, list[float]] = {p: [] for p in range(pairs)}
    for _ in range(c):
        queues[draw()].append(0.0)
    now, active, switches, latencies = 0.0, None, 0, []
    while now < horizon:
        waiting = [p for p in queues if queues[p]]
        oldest = min(waiting, key=lambda p: queues[p][0])
        if policy == "oldest" or now - queues[oldest][0] >= max_wait:
            pair = oldest
        else:
            pair = max(waiting, key=lambda p: (p == active, len(queues[p]), -queues[p][0]))
        batch, queues[pair] = queues[pair][:max_batch], queues[pair][max_batch:]
        if pair != active:
            now += switch
            switches += 1
            active = pair
        now += fixed + per_input * len(batch)
        for arrived in batch:
            latencies.append(now - arrived)
            queues[draw()].append(now)
    latencies.sort()
    return {"rps": 1e3 * len(latencies) / now, "p50": latencies[len(latencies) // 2],
            "p99": latencies[int(0.99 * len(latencies))], "per_switch": len(latencies) / max(1, switches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--switch", type=float, nargs="+", default=[25.0, 10.0, 5.0, 0.0], help="ms per switch")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--fixed", type=float, default=12.0, help="ms per forward pass, whatever its size")
    ap.add_argument("--per-input", type=float, default=4.5, help="ms per input in a forward pass")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--policy", choices=["oldest", "largest"], default="oldest")
    ap.add_argument("--max-wait", type=float, default=float("inf"), help="ms; with --policy largest")
    ap.add_argument("--zipf", action="store_true")
    args = ap.parse_args()
    pinned = 1e3 * args.max_batch / (args.fixed + args.per_input * args.max_batch)
    print(f"pinned (full batches, no switches): {pinned:.1f} req/s")
    print("| switch ms | clients | req/s | x pinned | p50 ms | p99 ms | requests per switch |")
    print("|---|---|---|---|---|---|---|")
    for switch in args.switch:
        for c in args.concurrency:
            r = simulate(c=c, pairs=args.pairs, switch=switch, fixed=args.fixed, per_input=args.per_input,
                         max_batch=args.max_batch, policy=args.policy, max_wait=args.max_wait, zipf=args.zipf)
            print(f"| {switch:g} | {c} | {r['rps']:.1f} | {r['rps'] / pinned:.2f} | {r['p50']:.0f} | {r['p99']:.0f} "
                  f"| {r['per_switch']:.1f} |")


if __name__ == "__main__":
    main()
