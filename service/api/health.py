"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return JSONResponse({"status": "loading", "model": False, "registry": False}, status_code=503)
    try:
        registry_ok = bool(engine.registry.ping())
    except Exception:  # any failure to reach Redis means "not ready", never a 500
        registry_ok = False
    body = {"status": "ready" if registry_ok else "registry unreachable", "model": True, "registry": registry_ok,
            "base_model": engine.host.spec.name, "base_fingerprint": engine.fingerprint}
    return JSONResponse(body, status_code=200 if registry_ok else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        from service.metrics import QUEUE_DEPTH

        QUEUE_DEPTH.set(engine.scheduler.depth)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
