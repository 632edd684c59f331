"""GET /v1/languages, /v1/tasks, /v1/pairs: what the registry offers for the loaded base.

Registry reads run off the event loop behind the engine's breaker (Engine.registry_call), so
a hung Redis costs these routes a bounded wait and never stalls other requests.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Request

from service.api.deps import get_engine
from service.api.inference import inference_path
from service.engine import Engine, RegistryDown

router = APIRouter(prefix="/v1", tags=["catalog"])


async def registry_call(engine: Engine, fn: Callable[[], Any], calls: int = 2) -> Any:
    """``fn()`` through the engine's registry pool; 503 naming the problem when Redis is down."""
    try:
        return await engine.registry_call(fn, calls=calls)
    except RegistryDown as exc:
        raise HTTPException(503, str(exc)) from None


@router.get("/languages")
async def languages(engine: Engine = Depends(get_engine)) -> dict:
    found = await registry_call(engine, lambda: engine.registry.languages(engine.fingerprint))
    return {"base_fingerprint": engine.fingerprint, "languages": found}


@router.get("/tasks")
async def tasks(engine: Engine = Depends(get_engine)) -> dict:
    found = await registry_call(engine, lambda: engine.registry.tasks(engine.fingerprint), calls=8)
    return {"base_fingerprint": engine.fingerprint, "tasks": found}


@router.get("/pairs")
async def pairs(request: Request, engine: Engine = Depends(get_engine)) -> dict:
    """Every (language, task) combination, each with the URL of its Hugging Face Inference
    API route (give it to ``InferenceClient(model=...)``)."""
    found = await registry_call(engine, lambda: engine.registry.pairs(engine.fingerprint))
    root = str(request.base_url).rstrip("/")
    return {"base_fingerprint": engine.fingerprint, "pairs": [
        {"language": l, "task": t, "inference_path": inference_path(l, t), "inference_url": root + inference_path(l, t)}
        for l, t in found
    ]}
