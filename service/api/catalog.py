"""GET /v1/languages, /v1/tasks, /v1/pairs: what the registry offers for the loaded base.

Registry reads run off the event loop behind the engine's breaker (Engine.registry_call), so
a hung Redis costs these routes a bounded wait and never stalls other requests.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Request

from diffs_store import errors
from diffs_store.metadata import DiffKind, TaskType
from service.api.deps import get_engine
from service.api.errors import responses
from service.api.inference import inference_path
from service.api.schemas import Languages, Pairs, Tasks
from service.engine import Engine, RegistryDown

router = APIRouter(prefix="/v1", tags=["catalog"], responses=responses(503))


async def registry_call(engine: Engine, fn: Callable[[], Any], calls: int = 2) -> Any:
    """``fn()`` through the engine's registry pool; 503 naming the problem when Redis is down."""
    try:
        return await engine.registry_call(fn, calls=calls)
    except RegistryDown as exc:
        raise HTTPException(503, str(exc)) from None


def language_rows(engine: Engine) -> list[dict]:
    """Each language of the base with its latest version (a few round trips per language)."""
    rows = []
    for language in engine.registry.languages(engine.fingerprint):
        try:
            e = engine.registry.resolve(engine.fingerprint, DiffKind.LANGUAGE, language)
        except errors.NotFound:  # retired between the two reads
            continue
        # a language answers alone (fill-mask) only when its diff carries an MLM head
        rows.append({"language": language, "latest_version": e.version, "id": e.id,
                     "task_type": e.task_type.value if e.task_type else None, "dev_metrics": e.dev_metrics})
    return rows


def servable_pairs(engine: Engine) -> list[dict]:
    """The pairs a request can name and get served: any language with any task, a task
    alone, a language alone only with an MLM head; none whose latest diff has no file."""
    missing = engine.watch.missing_blobs
    languages = [row for row in language_rows(engine) if row["id"] not in missing]
    tasks = [t["task"] for t in engine.registry.tasks(engine.fingerprint) if t["id"] not in missing]
    found = [(row["language"], None) for row in languages if row["task_type"] == TaskType.FILL_MASK.value]
    found += [(None, t) for t in tasks]
    found += [(row["language"], t) for row in languages for t in tasks]
    return [{"language": l, "task": t} for l, t in sorted(found, key=lambda p: (p[0] or "", p[1] or ""))]


@router.get("/languages", response_model=Languages)
async def languages(engine: Engine = Depends(get_engine)) -> dict:
    found = await registry_call(engine, lambda: engine.registry.languages(engine.fingerprint))
    return {"base_fingerprint": engine.fingerprint, "languages": found}


@router.get("/tasks", response_model=Tasks)
async def tasks(engine: Engine = Depends(get_engine)) -> dict:
    found = await registry_call(engine, lambda: engine.registry.tasks(engine.fingerprint), calls=8)
    return {"base_fingerprint": engine.fingerprint, "tasks": found}


@router.get("/pairs", response_model=Pairs)
async def pairs(request: Request, engine: Engine = Depends(get_engine)) -> dict:
    """Every (language, task) a request can be served, each with the URL of its Hugging Face
    Inference API route (give it to ``InferenceClient(model=...)``)."""
    found = await registry_call(engine, lambda: servable_pairs(engine), calls=16)
    root = str(request.base_url).rstrip("/")
    return {"base_fingerprint": engine.fingerprint, "pairs": [
        {**p, "inference_path": inference_path(p["language"], p["task"]),
         "inference_url": root + inference_path(p["language"], p["task"])}
        for p in found
    ]}
