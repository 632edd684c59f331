"""GET /v1/languages, /v1/tasks, /v1/pairs: what the registry offers for the loaded base."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from service.api.deps import get_engine
from service.engine import REGISTRY_DOWN, Engine

router = APIRouter(prefix="/v1", tags=["catalog"])


def _registry_call(fn):
    try:
        return fn()
    except REGISTRY_DOWN:
        raise HTTPException(503, "the registry is unreachable; retry shortly") from None


@router.get("/languages")
def languages(engine: Engine = Depends(get_engine)) -> dict:
    return {"base_fingerprint": engine.fingerprint, "languages": _registry_call(lambda: engine.registry.languages(engine.fingerprint))}


@router.get("/tasks")
def tasks(engine: Engine = Depends(get_engine)) -> dict:
    return {"base_fingerprint": engine.fingerprint, "tasks": _registry_call(lambda: engine.registry.tasks(engine.fingerprint))}


@router.get("/pairs")
def pairs(engine: Engine = Depends(get_engine)) -> dict:
    found = _registry_call(lambda: engine.registry.pairs(engine.fingerprint))
    return {"base_fingerprint": engine.fingerprint, "pairs": [{"language": l, "task": t} for l, t in found]}
