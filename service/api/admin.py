"""Admin: upload, list and retire diffs. Behind a bearer token (see deps.require_admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, UploadFile, status

from diffs_store import errors
from service.api.catalog import _registry_call
from service.api.deps import get_engine, require_admin
from service.engine import REGISTRY_DOWN, Engine

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])

_STATUS = {errors.FINGERPRINT_MISMATCH: 409, errors.FILE_TOO_LARGE: 413}
_CHUNK = 1024 * 1024


async def _read_capped(upload: UploadFile, cap: int) -> bytes:
    data = bytearray()
    while chunk := await upload.read(_CHUNK):
        data += chunk
        if len(data) > cap:
            raise HTTPException(413, f"upload is above the limit of {cap} bytes")
    return bytes(data)


@router.post("/diffs", status_code=status.HTTP_201_CREATED)
async def upload_diff(file: UploadFile, engine: Engine = Depends(get_engine)) -> dict:
    """Validate one diff file against the loaded base, store its blob, publish it."""
    from diffs_store.publish import validate_and_publish

    data = await _read_capped(file, engine.settings.max_upload_bytes)
    try:
        entry = validate_and_publish(engine.registry, data, engine.host.spec, max_bytes=engine.settings.max_upload_bytes)
    except errors.DiffError as exc:
        raise HTTPException(_STATUS.get(exc.code, 422), str(exc)) from None
    except REGISTRY_DOWN:
        raise HTTPException(503, "the registry is unreachable; nothing was published") from None
    return entry.to_dict()


@router.get("/diffs")
def list_diffs(engine: Engine = Depends(get_engine)) -> dict:
    entries = _registry_call(lambda: engine.registry.list(engine.fingerprint))
    return {"base_fingerprint": engine.fingerprint, "diffs": [e.to_dict() for e in entries]}


@router.delete("/diffs/{diff_id}")
def retire_diff(diff_id: str, engine: Engine = Depends(get_engine)) -> dict:
    try:
        entry = _registry_call(lambda: engine.registry.retire(diff_id))
    except errors.NotFound as exc:
        raise HTTPException(404, f"no diff with id {diff_id!r}") from exc
    return {"retired": entry.to_dict()}
