"""Reading a diff upload: refused as early as possible, never spooled to disk.

FastAPI's ``UploadFile`` parses (and spools to a temporary file) the whole multipart body
before the route or its dependencies run, so a client without a token could make the
server write a 1.5 GiB body before getting its 401. Routes that use :func:`read_diff_upload`
take the raw request instead: the token dependency runs first, the declared
``Content-Length`` is checked before any byte of the body is read, and the body is then
streamed through python-multipart's incremental parser with a hard byte cap and a deadline
(slow-loris clients get 408), keeping only the ``file`` part, in memory.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException, Request
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from service.connection_guard import EXTEND_BODY_DEADLINE

# Room for the multipart framing around the file (boundaries, part headers).
MULTIPART_OVERHEAD = 64 * 1024
# Errors sent while the client may still be sending: close the connection rather than
# reading (and discarding) the rest of its body.
CLOSE = {"Connection": "close"}


def _refuse(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail, headers=CLOSE)


def check_declared_length(request: Request, cap: int) -> None:
    """413 before reading anything when the declared body cannot hold a file under ``cap``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return  # chunked: the streaming cap below applies
    if not declared.isdigit():
        raise _refuse(400, f"Content-Length {declared!r} is not a number")
    if int(declared) > cap + MULTIPART_OVERHEAD:
        raise _refuse(413, f"the upload declares {int(declared)} bytes; the limit is {cap} bytes per diff")


class _FilePart:
    """Multipart callbacks that keep the single ``file`` part and refuse anything else odd."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.files = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._name: str | None = None
        self._in_file = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._name, self._in_file = None, False

    def _header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            _, params = parse_options_header(bytes(self._header_value))
            name = params.get(b"name")
            self._name = name.decode("utf-8", "replace") if name is not None else None
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        if self._name == "file":
            self.files += 1
            if self.files > 1:
                raise _refuse(422, "the upload has more than one 'file' part; send exactly one diff per request")
            self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.data += data[start:end]
            if len(self.data) > self.cap:
                raise _refuse(413, f"the uploaded file is above the limit of {self.cap} bytes")


async def read_diff_upload(request: Request, cap: int, timeout_s: float) -> bytes:
    """The bytes of the one ``file`` part of a multipart upload, at most ``cap`` of them."""
    check_declared_length(request, cap)
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise _refuse(422, "expected a multipart/form-data body with one 'file' part (curl -F file=@diff.safetensors)")
    part = _FilePart(cap)
    parser = MultipartParser(boundary, part.callbacks())
    limit = cap + MULTIPART_OVERHEAD
    # The server's body deadline (CSFT_BODY_TIMEOUT_S) is for ordinary requests; an authorised
    # upload may take this route's own, longer deadline, which answers 408 itself.
    extend_deadline = request.scope.get("extensions", {}).get(EXTEND_BODY_DEADLINE)
    if extend_deadline is not None:
        extend_deadline(timeout_s + 2)

    async def consume() -> None:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _refuse(413, f"the upload is above the limit of {cap} bytes per diff")
            parser.write(chunk)
        parser.finalize()

    try:
        await asyncio.wait_for(consume(), timeout_s)
    except asyncio.TimeoutError:
        raise _refuse(408, f"the upload did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise _refuse(400, "the client disconnected before the upload was complete") from None
    except ValueError as exc:  # python-multipart's parse errors
        raise _refuse(422, f"malformed multipart body: {exc}") from None
    if part.files == 0:
        raise HTTPException(422, "the upload has no 'file' part (curl -F file=@diff.safetensors)")
    return bytes(part.data)
