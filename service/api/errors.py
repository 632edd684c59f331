"""The one error body every route answers with, ``{"detail": str}``, and the handlers that
keep it so.

FastAPI's own validation answer is a list of error objects that quote the offending input;
an input the encoder cannot write (a NaN, a lone surrogate) then turns a 422 into a 500 with
a traceback. Here a validation failure becomes one line naming where and what, built from
the locations and messages only, never from the input.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

# Errors named in one answer; the rest are counted.
_SHOWN = 5
_MAX_DETAIL_CHARS = 2000


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of the JSON API."""

    detail: str = Field(..., description="What went wrong, in one line, naming the field or the limit.")


def location(loc: Sequence[Any]) -> str:
    """``("body", "inputs", 0)`` -> ``body.inputs[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


def describe_validation(errors: Sequence[dict[str, Any]]) -> str:
    """One line for pydantic's error list: ``where: what`` for the first few."""
    parts = []
    for err in errors[:_SHOWN]:
        loc = list(err.get("loc") or ())
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":  # loc ends with the byte offset of the error
            at = f" at character {loc.pop()}" if loc and isinstance(loc[-1], int) else ""
            reason = (err.get("ctx") or {}).get("error")
            msg = f"invalid JSON{at}" + (f": {reason}" if reason else "")
        parts.append(f"{location(loc)}: {msg}")
    if len(errors) > _SHOWN:
        parts.append(f"and {len(errors) - _SHOWN} more")
    return printable("; ".join(parts))


def printable(text: str) -> str:
    """``text`` bounded in length and encodable as UTF-8 whatever it quotes."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 3] + "..."


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = describe_validation(exc.errors())
    log.info("refused %s %s: 422 %s", request.method, request.url.path, detail)
    return JSONResponse({"detail": detail}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
