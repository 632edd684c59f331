"""Liveness, readiness and Prometheus metrics.

All three are ``async`` and touch no I/O: readiness comes from the registry watcher's last
poll and audit (service.registry_watch), so none of them can queue behind a hung Redis or a
busy thread pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

router = APIRouter(tags=["health"])

# Diff ids listed in /readyz at most (the metric has the count).
_MISSING_SHOWN = 20


class Alive(BaseModel):
    status: str = Field("alive", description="Always 'alive' while the process answers HTTP.")


class Readiness(BaseModel):
    status: str = Field(..., description="'ready', 'loading', 'registry unreachable', 'rebuilding the registry', "
                        "or 'degraded' (ready, but some registered diffs have no file: their pairs answer 503).")
    model: bool = Field(..., description="The base model is loaded.")
    registry: bool = Field(..., description="The registry answers and is not being rebuilt.")
    base_model: str | None = None
    base_fingerprint: str | None = None
    rebuilding: bool = Field(False, description="Redis lost its data; the registry is being rebuilt from the blob store.")
    missing_blobs: list[str] = Field(
        default_factory=list, description=f"Ids (at most {_MISSING_SHOWN}) of registered diffs whose file is missing "
        "from the blob store; csft_missing_blobs has the count.",
    )


@router.get("/healthz", response_model=Alive)
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """200 when requests can be served: the model is loaded and the registry answers. A
    registered diff without its file keeps the server ready (status 'degraded'): its pairs
    answer 503, every other pair is served, and every replica shares the blob store, so
    taking this one out of rotation would help nobody."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return JSONResponse(Readiness(status="loading", model=False, registry=False).model_dump(), status_code=503)
    watch = engine.watch
    ready = watch.up and not watch.rebuilding
    missing = sorted(watch.missing_blobs)
    if watch.rebuilding:
        status = "rebuilding the registry"
    elif not watch.up:
        status = "registry unreachable"
    else:
        status = "degraded" if missing else "ready"
    body = Readiness(status=status, model=True, registry=ready, base_model=engine.host.public_name,
                     base_fingerprint=engine.fingerprint, rebuilding=watch.rebuilding,
                     missing_blobs=missing[:_MISSING_SHOWN])
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format"}},
)
async def metrics(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        from service.metrics import QUEUE_DEPTH, REGISTRY_UP

        QUEUE_DEPTH.set(engine.scheduler.depth)
        REGISTRY_UP.set(1 if engine.watch.up else 0)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
