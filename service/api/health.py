"""Liveness, readiness and Prometheus metrics.

All three are ``async`` and touch no I/O: readiness comes from the registry watcher's last
poll (service.registry_watch), so none of them can queue behind a hung Redis or a busy
thread pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return JSONResponse({"status": "loading", "model": False, "registry": False}, status_code=503)
    registry_ok = engine.watch.up
    body = {"status": "ready" if registry_ok else "registry unreachable", "model": True, "registry": registry_ok,
            "base_model": engine.host.spec.name, "base_fingerprint": engine.fingerprint}
    return JSONResponse(body, status_code=200 if registry_ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        from service.metrics import QUEUE_DEPTH, REGISTRY_UP

        QUEUE_DEPTH.set(engine.scheduler.depth)
        REGISTRY_UP.set(1 if engine.watch.up else 0)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
