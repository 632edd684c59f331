"""Admin: upload, list and retire diffs. Behind a bearer token (see deps.require_admin).

The upload route takes the raw request (see :mod:`service.api.upload`) so the token and the
declared size are checked before any of the body is read. Parsing, hashing, validation and
the blob write run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import errno

import redis
from fastapi import APIRouter, Depends, HTTPException, Request, status

from diffs_store import errors
from service.api.catalog import registry_call
from service.api.deps import get_engine, require_admin
from service.api.errors import responses
from service.api.schemas import DiffEntry, DiffList, Retired
from service.api.upload import read_diff_upload
from service.engine import REBUILDING, Engine

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=responses(401, 403, 429, 503))

# Routes that read their own body, streamed under max_upload_bytes (service.api.body_guard
# leaves them alone).
STREAMED_UPLOADS = frozenset({("POST", "/v1/admin/diffs")})

_STATUS = {errors.FINGERPRINT_MISMATCH: 409, errors.FILE_TOO_LARGE: 413}


def _storage_error(exc: OSError) -> HTTPException:
    """The blob store could not take the file (full, read-only, ...): 507, nothing published."""
    why = exc.strerror or type(exc).__name__
    code = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM) else 503
    return HTTPException(code, f"the blob store cannot store the diff ({why}); nothing was published")


@router.post(
    "/diffs",
    status_code=status.HTTP_201_CREATED,
    response_model=DiffEntry,
    responses=responses(400, 408, 409, 413, 422, 507),
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}},
    }}}}},
)
async def upload_diff(request: Request, engine: Engine = Depends(get_engine)) -> dict:
    """Validate one diff file (multipart part ``file``) against the loaded base, store its
    blob, publish it."""
    from diffs_store.publish import validate_and_publish
    from diffs_store.redis_connection import RedisUnavailable

    settings = engine.settings
    if not engine.watch.up:  # before reading the body: it could not be published anyway
        raise HTTPException(503, "the registry is unreachable; nothing was published", headers={"Connection": "close"})
    if engine.watch.rebuilding:  # a version handed out now would sit below the rebuilt ones
        raise HTTPException(503, f"{REBUILDING}; nothing was published", headers={"Connection": "close"})
    data = await read_diff_upload(request, settings.max_upload_bytes, settings.upload_timeout_s)
    try:
        entry = await asyncio.to_thread(
            validate_and_publish, engine.registry, data, engine.host.spec, max_bytes=settings.max_upload_bytes
        )
    except errors.DiffError as exc:
        raise HTTPException(_STATUS.get(exc.code, 422), str(exc)) from None
    except (RedisUnavailable, redis.RedisError):
        engine.watch.record_failure()
        raise HTTPException(503, "the registry is unreachable; nothing was published") from None
    except OSError as exc:
        raise _storage_error(exc) from None
    await engine.changed_here()
    return entry.to_dict()


@router.get("/diffs", response_model=DiffList)
async def list_diffs(engine: Engine = Depends(get_engine)) -> dict:
    entries = await registry_call(engine, lambda: engine.registry.list(engine.fingerprint), calls=3)
    return {"base_fingerprint": engine.fingerprint, "diffs": [e.to_dict() for e in entries]}


@router.delete("/diffs/{diff_id}", response_model=Retired, responses=responses(404))
async def retire_diff(diff_id: str, engine: Engine = Depends(get_engine)) -> dict:
    try:
        entry = await registry_call(engine, lambda: engine.registry.retire(diff_id), calls=4)
    except errors.NotFound as exc:
        raise HTTPException(404, f"no diff with id {diff_id!r}") from exc
    await engine.changed_here()
    return {"retired": entry.to_dict()}
