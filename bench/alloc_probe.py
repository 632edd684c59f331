"""What glibc malloc and torch allocator settings do to a large tensor allocated and freed
in a loop (the pattern of a training step's vocabulary-sized tensors): minor page faults
and time per iteration, and how far RSS grows. Each setting runs in its own process.

Usage: python bench/alloc_probe.py [--mib 256 --iterations 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, machine_info, rss_bytes, table  # noqa: E402

SETTINGS = {
    "default": {},
    "glibc mmap threshold 4 GiB": {"MALLOC_MMAP_THRESHOLD_": str(4 << 30)},
    "glibc no mmap, no trim": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)},
    "torch THP_MEM_ALLOC_ENABLE=1": {"THP_MEM_ALLOC_ENABLE": "1"},
}


def child(mib: int, iterations: int) -> dict:
    """Allocate, touch and free ``mib`` MiB ``iterations`` times (after one warm-up)."""
    import torch

    n = mib * 2**20 // 4
    torch.empty(n).fill_(1.0)
    rss0, flt0, t0 = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(iterations):
        x = torch.empty(n)
        x.fill_(1.0)
        del x
    return {"faults_per_iter": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0) / iterations,
            "ms_per_iter": (time.perf_counter() - t0) / iterations * 1e3, "rss_growth_mib": (rss_bytes() - rss0) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.mib, args.iterations)))
        return
    print(machine_info())
    rows = []
    for label, env in SETTINGS.items():
        cmd = [sys.executable, __file__, "--child", "--mib", str(args.mib), "--iterations", str(args.iterations)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[raw] {label} {env} {json.dumps(res)}", flush=True)
        rows.append([label, f"{res['faults_per_iter']:,.0f}", f"{res['ms_per_iter']:.1f}", f"{res['rss_growth_mib']:.0f}"])
    print(f"\n{args.mib} MiB tensor allocated, filled and freed {args.iterations} times\n")
    print(table(["setting", "minor faults / iteration", "ms / iteration", "RSS growth, MiB"], rows))
    print(f"loadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
