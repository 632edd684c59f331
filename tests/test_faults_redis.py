"""Fault injection, Redis side: a frozen (SIGSTOP) and a killed (SIGKILL) Redis under
traffic, for an external redis-server and for the embedded one, against a real uvicorn
server on loopback.

For each fault: /healthz stays fast (p90 < 50 ms), the already-resolved pair keeps
answering 200, a pair not yet resolved gets a fast 503, /readyz turns 503, and the service
recovers by itself (no restart) when Redis comes back; the embedded Redis is restarted by
the service after kill -9, and the registry's contents survive. Figures are printed (run
with -s) and recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from diffs_store.redis_connection import embedded_pid, shutdown_embedded
from service.config import Settings
from tests.live_server import (
    RESOLVED, UNCACHED, ExternalRedis, LiveServer, Probe, p90, status, system_redis_server, wait_for,
)
from tests.support import TOKEN, upload_all

pytestmark = pytest.mark.faults

FAULT_S = 2.0  # how long each fault lasts under traffic


def _settings(base_dir, data_dir, redis_url=None) -> Settings:
    return Settings(base_model=str(base_dir), data_dir=data_dir, admin_token=TOKEN, device="cpu",
                    redis_url=redis_url, redis_timeout_s=0.5, registry_poll_ms=100, torch_threads=1)


def _inject(live: LiveServer, fault, recover, name: str, uncached_body: dict, self_heals: bool = False) -> dict:
    """Apply ``fault`` under traffic for FAULT_S, check what clients see, ``recover``, and
    time the recovery. ``self_heals``: the service ends the fault itself (it restarts a
    dead embedded Redis), possibly before the checks below run. Returns the figures."""
    url = live.url
    health = Probe(url, "/healthz").start()
    ready = Probe(url, "/readyz", pause_s=0.05).start()
    resolved = Probe(url, "/v1/predict", RESOLVED, pause_s=0.05).start()
    time.sleep(0.3)
    t0 = time.monotonic()
    fault()
    try:
        to_503 = wait_for(lambda: status(url, "GET", "/readyz") == 503, 5)
        t_uncached = time.monotonic()
        uncached = status(url, "POST", "/v1/predict", uncached_body)
        uncached_s = time.monotonic() - t_uncached
        catalog = status(url, "GET", "/v1/languages")
        time.sleep(max(0.0, FAULT_S - (time.monotonic() - t0)))
    finally:
        t_recover = time.monotonic()
        recover()
    recovery = wait_for(lambda: status(url, "POST", "/v1/predict", uncached_body) == 200
                        and status(url, "GET", "/readyz") == 200, 20)
    health.stop()
    resolved.stop()
    ready.stop()
    not_ready = [t for t, code, _ in ready.since(t0) if code != 200]
    during_h = [lat for _, code, lat in health.since(t0) if _ < t_recover]
    during_r = [code for t, code, _ in resolved.since(t0) if t < t_recover]
    figures = {
        "fault": name,
        "healthz_p90_ms": round(p90(during_h) * 1000, 1),
        "healthz_max_ms": round(max(during_h) * 1000, 1),
        "healthz_probes": len(during_h),
        "resolved_pair_ok": f"{during_r.count(200)}/{len(during_r)}",
        "readyz_503_after_s": None if to_503 is None else round(to_503, 2),
        "uncached_pair": uncached,
        "uncached_pair_s": round(uncached_s, 2),
        "catalog": catalog,
        "recovery_s": None if recovery is None else round(recovery, 2),
        "readyz_not_ready_s": round(max(not_ready) - t0, 2) if not_ready else 0.0,
    }
    print(json.dumps(figures))
    assert to_503 is not None, "readyz never turned 503"
    down = {503, 200} if self_heals else {503}
    assert uncached in down and catalog in down, figures
    assert uncached_s < 3.0, f"an uncached pair waited {uncached_s:.2f} s for a dead registry"
    assert len(during_h) >= 10 and p90(during_h) < 0.050, figures
    assert during_r and set(during_r) == {200}, figures
    assert recovery is not None, "no recovery without a restart"
    return figures


def _serve_then_fault(live: LiveServer, tiny_diffs, freeze, thaw, kill, restart, self_heals=False) -> None:
    upload_all(live.url, tiny_diffs)
    assert status(live.url, "POST", "/v1/predict", RESOLVED) == 200
    before = len(live.engine.registry.list(live.engine.fingerprint))
    _inject(live, freeze, thaw, "SIGSTOP", UNCACHED)
    time.sleep(1.2)  # appendfsync everysec (embedded): let the AOF catch up before kill -9
    _inject(live, kill, restart, "SIGKILL", {**UNCACHED, "language": "yor"}, self_heals)
    assert len(live.engine.registry.list(live.engine.fingerprint)) == before  # nothing lost


def test_external_redis_frozen_and_killed_under_traffic(tiny_base_dir, tiny_diffs, tmp_path):
    exe = system_redis_server()
    if exe is None:
        pytest.skip("no external redis-server installed (apt-get install redis-server)")
    server = ExternalRedis(exe, tmp_path)
    server.start()
    try:
        with LiveServer(_settings(tiny_base_dir, tmp_path / "data", server.url)) as live:
            _serve_then_fault(
                live, tiny_diffs,
                freeze=lambda: server.signal(signal.SIGSTOP), thaw=lambda: server.signal(signal.SIGCONT),
                kill=server.kill, restart=server.start,  # same port and AOF directory
            )
    finally:
        server.stop()


def test_embedded_redis_frozen_and_killed_under_traffic(tiny_base_dir, tiny_diffs, tmp_path):
    data = tmp_path / "data"
    pids: list[int] = []

    def sig(s):
        def send():
            pid = embedded_pid(data)
            pids.append(pid)
            import os

            os.kill(pid, s)
        return send

    try:
        with LiveServer(_settings(tiny_base_dir, data)) as live:
            _serve_then_fault(
                live, tiny_diffs,
                freeze=sig(signal.SIGSTOP), thaw=sig(signal.SIGCONT),
                kill=sig(signal.SIGKILL), restart=lambda: None, self_heals=True,  # the service restarts it
            )
            assert embedded_pid(data) not in pids  # a new server process serves now
    finally:
        for pid in pids:
            try:
                import os

                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        shutdown_embedded(data)
