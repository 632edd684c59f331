"""Request bodies are checked before any route parses them (ASGI middleware).

FastAPI reads a whole body into memory and hands it to ``json.loads`` before a route or a
model validator can refuse anything, so a size limit or a depth limit inside a route comes
too late: a 300 MB body is already in memory, 600 nested arrays already overflow whatever
walks them. :class:`BodyGuard` sits in front of every route except the diff upload (which
streams its multipart body under its own cap, :mod:`service.api.upload`) and refuses:

* a body above ``max_body_bytes``: 413 from the declared ``Content-Length`` before a byte
  is read, or as soon as the streamed bytes pass the cap (chunked bodies);
* for JSON bodies, before parsing: bytes that are not UTF-8 (422), nesting deeper than ``json_limits.MAX_DEPTH`` (422),
  ``NaN``/``Infinity`` (422, not JSON), and strings that are not valid Unicode, i.e. a
  lone UTF-16 surrogate escape such as ``"\\ud800"`` that no tokenizer or encoder can take
  (422, naming where it is).

Refusals answer ``{"detail": str}`` (the shared error body) and log one line, never a
traceback. The body a route sees is the one that was checked, replayed from memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffs_store.json_limits import MAX_DEPTH, nesting_depth, non_standard_constant
from service.api.errors import printable

log = logging.getLogger(__name__)

# Scans of bodies above this run in a thread, so a large body does not hold the event loop.
_INLINE_SCAN_BYTES = 256 * 1024
# A JSON escape of a UTF-16 surrogate: only these can produce a lone surrogate (raw
# surrogate bytes are invalid UTF-8, which the parser refuses already).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyTooLarge(Exception):
    """The body passed the cap while it was being read."""


class BodyGuard:
    """ASGI middleware enforcing the body cap and the JSON checks (see the module doc)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, exempt: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.exempt = exempt  # (method, path) of routes that stream their own body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], _route_path(scope)) in self.exempt:
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            detail = f"the request body declares {int(declared)} bytes; the limit is {self._limit}"
            return await self._refuse(scope, send, 413, detail, close=True)
        try:
            body, trailing = await self._read(receive)
        except BodyTooLarge:
            detail = f"the request body is larger than the limit of {self._limit}"
            return await self._refuse(scope, send, 413, detail, close=True)
        if trailing is not None:  # the client went away mid-body: nobody to answer
            return
        if body and _is_json(headers.get(b"content-type")):
            problem = await _json_problem(body) if len(body) > _INLINE_SCAN_BYTES else _json_problem_sync(body)
            if problem is not None:
                return await self._refuse(scope, send, 422, problem)
        await self.app(scope, _replay(body, receive), send)

    @property
    def _limit(self) -> str:
        return f"{self.max_body_bytes} bytes (CSFT_MAX_BODY_BYTES)"

    async def _read(self, receive: Receive) -> tuple[bytes, Message | None]:
        """The whole body, counting bytes as they stream in; (body, the disconnect message)
        when the client left before the end."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def _refuse(self, scope: Scope, send: Send, status: int, detail: str, *, close: bool = False) -> None:
        detail = printable(detail)  # it may quote a client's field names
        log.info("refused %s %s: %d %s", scope["method"], scope["path"], status, detail)
        # Close when the rest of the body was not read: the connection cannot be reused.
        headers = {"Connection": "close"} if close else None
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, _no_receive, send)


def _route_path(scope: Scope) -> str:
    """The path the app's routes see (without the prefix the app may be mounted under)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _is_json(content_type: bytes | None) -> bool:
    """What FastAPI parses as JSON: ``application/json`` and ``application/*+json``."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


async def _json_problem(body: bytes) -> str | None:
    return await asyncio.to_thread(_json_problem_sync, body)


def _json_problem_sync(body: bytes) -> str | None:
    """Why this JSON body is refused before parsing, or None. Malformed JSON is left to the
    route's parser, which names the position."""
    try:
        body.decode("utf-8")  # JSON on the wire is UTF-8 (RFC 8259)
    except UnicodeDecodeError as exc:
        return f"the JSON body is not valid UTF-8 (byte {exc.start})"
    depth = nesting_depth(body)
    if depth > MAX_DEPTH:
        return f"the JSON body nests arrays or objects {depth} levels deep; the limit is {MAX_DEPTH}"
    if (constant := non_standard_constant(body)) is not None:
        return f"the JSON body holds {constant}, which JSON does not allow"
    if _SURROGATE_ESCAPE.search(body) is None:  # the common case: no parse needed
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    where = lone_surrogate_path(doc)
    if where is None:
        return None
    return (f"{where}: a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape); text must be "
            "valid Unicode")


def lone_surrogate_path(doc: Any) -> str | None:
    """The location (``inputs[0]``, as the routes name inputs) of the first string, key or
    value, that cannot be encoded as UTF-8, or None. Iterative: the depth is bounded, but no
    recursion is needed."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return where or "the body"
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            for key in reversed(list(value)):
                if not _encodable(key):
                    return f"a key of {where or 'the body'}"
                stack.append((f"{where}.{key}" if where else key, value[key]))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands the app the checked body, then the real channel (for
    the disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse does not read
    return {"type": "http.disconnect"}
