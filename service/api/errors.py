"""The one error body every route answers with, ``{"detail": str}``, the handlers that keep
it so, and the schema that says so.

* Validation: FastAPI's own answer is a list of error objects that quote the offending
  input; an input the encoder cannot write (a NaN, a lone surrogate) then turns a 422 into
  a 500 with a traceback. Here a validation failure becomes one line naming where and what,
  built from the locations and messages only, never from the input.
* Methods: a wrong method gets 405 with ``Allow`` listing every method of that path (not
  only those of the first route that matched it), and ``OPTIONS`` answers 204 with it.
* Anything unexpected: 500 with the same body (the traceback goes to the log, once).
* The schema: :func:`responses` declares a route's error statuses with this body, and
  every 422 (any route with parameters or a body), 413 and 400 (any route with a body: the
  body guard, the parser) is documented with it too, so what the schema says is what clients get.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

# Errors named in one answer; the rest are counted.
_SHOWN = 5
_MAX_DETAIL_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of the JSON API."""

    detail: str = Field(..., description="What went wrong, in one line, naming the field or the limit.")


# What each error status means on this API (the schema's descriptions).
_MEANING = {
    400: "Malformed request (e.g. a Content-Length that is not a number, a body cut short)",
    401: "No bearer token",
    403: "Wrong admin token, or the admin API is disabled (no CSFT_ADMIN_TOKEN)",
    404: "Not found",
    408: "The body did not arrive in time",
    409: "The diff was made for another base model",
    413: "Above a limit (body size, inputs, characters, tokens); the detail names the limit",
    422: "Invalid request; the detail names the field and the problem",
    429: "Too many failed admin authentications; retry after the Retry-After header",
    500: "Unexpected server error",
    503: "Not available now (model loading, registry unreachable or being rebuilt, a diff file missing); retry",
    504: "No answer in time",
    507: "The blob store cannot store the diff (full or read-only)",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: these statuses, each with the error body."""
    return {code: {"model": ErrorResponse, "description": _MEANING[code]} for code in codes}


def location(loc: Sequence[Any]) -> str:
    """``("body", "inputs", 0)`` -> ``inputs[0]`` (body fields by their own names, as the
    routes name inputs); ``("path", "diff_id")`` -> ``path.diff_id``."""
    out = ""
    for part in loc[1:] if tuple(loc[:1]) == ("body",) and len(loc) > 1 else loc:
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
    """``text`` bounded in length, on one line and encodable as UTF-8 whatever it quotes
    (a client's field names end up in details and in the log)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 3] + "..."


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = describe_validation(exc.errors())
    log.info("refused %s %s: 422 %s", request.method, request.url.path, detail)
    return JSONResponse({"detail": detail}, status_code=422)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route fully matches at this path (asked of each route the way the
    router asks it, so included routers answer for their own routes)."""
    allowed = {
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in request.app.router.routes)
    }
    return sorted(allowed | {"OPTIONS"}) if allowed else []


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        return JSONResponse({"detail": f"{request.method} is not allowed here; allowed: {allow}"}, status_code=405,
                            headers={"Allow": allow})
    detail = exc.detail if isinstance(exc.detail, str) else printable(str(exc.detail))
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback after this answer; the body says nothing internal.
    return JSONResponse({"detail": "unexpected server error; the server log has the details"}, status_code=500)


def _document_shared_errors(schema: dict[str, Any]) -> None:
    """Every 422 has the error body; every operation with a body documents 413 (the body
    guard) and 400 (a body the JSON parser gives up on, e.g. a number of 5,000 digits)."""
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorResponse", ErrorResponse.model_json_schema())
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            if "422" in answers:
                answers["422"] = {"description": _MEANING[422], "content": {"application/json": {"schema": error_ref}}}
            for code in (400, 413) if "requestBody" in operation else ():
                answers.setdefault(str(code), {"description": _MEANING[code],
                                               "content": {"application/json": {"schema": error_ref}}})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_shared_errors(build())  # build() caches the schema it returns
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
