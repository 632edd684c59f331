"""GET /v1/info (what is loaded, cache use, counters) and GET /v1/catalog (languages and tasks
with their latest versions, source languages and recorded dev scores): the two views the web
console needs that the other routes lack."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from service import metrics
from service.api.catalog import language_rows, registry_call
from service.api.deps import get_engine
from service.api.errors import responses
from service.api.schemas import Catalog, Info
from service.engine import Engine

router = APIRouter(prefix="/v1", tags=["catalog"], responses=responses(503))
_STARTED = time.time()


@router.get("/info", response_model=Info)
def info(engine: Engine = Depends(get_engine)) -> dict:
    host, settings = engine.host, engine.settings
    return {
        "base_model": host.public_name,
        "base_fingerprint": engine.fingerprint,
        "device": str(host.device),
        "dtype": settings.dtype,
        "mask_token": host.tokenizer.mask_token,
        "admin_enabled": settings.admin_token is not None,
        "plan_cache": {
            "bytes": engine.plans.bytes, "budget": engine.plans.max_bytes, "entries": len(engine.plans),
            "hot_pairs": engine.plans.spill_entries, "hot_bytes": engine.plans.spill_bytes,
        },
        "queue_depth": engine.scheduler.depth,
        "requests_total": metrics.counter_total(metrics.REQUESTS),
        "switches_total": metrics.counter_total(metrics.SWITCHES),
        "uptime_s": round(time.time() - _STARTED, 1),
    }


@router.get("/catalog", response_model=Catalog)
async def catalog(engine: Engine = Depends(get_engine)) -> dict:
    # Off the event loop, behind the breaker; a few round trips per language, bounded in
    # total by the time budget of 16 calls (a hung Redis fails the first one).
    return await registry_call(engine, lambda: {
        "base_fingerprint": engine.fingerprint,
        "languages": language_rows(engine),
        "tasks": engine.registry.tasks(engine.fingerprint),
    }, calls=16)
