"""What the inference routes share: input limits, the HTTP status of each failure, request
metrics and JSON encoding off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

from fastapi import HTTPException
from fastapi.responses import Response

from service import metrics
from service.engine import Engine, RegistryDown, UnknownPair, Unservable
from service.inference import Inference, infer
from service.tasks import InputError

log = logging.getLogger(__name__)


ERROR_SCHEMA = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}},
                                                "required": ["detail"]}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown language or task (the detail lists what is available).", "content": ERROR_SCHEMA},
    413: {"description": "Too many inputs, or an input too long (the detail names it and the limit).", "content": ERROR_SCHEMA},
    422: {"description": "A malformed body, input or parameter (the detail names it).", "content": ERROR_SCHEMA},
    503: {"description": "The registry is unreachable and this pair is not cached, or the model is loading.", "content": ERROR_SCHEMA},
    504: {"description": "No answer within the request timeout.", "content": ERROR_SCHEMA},
}


def input_chars(raw: Any) -> int:
    """Characters of one input: a text, a list of words, or an object of texts (flat: no
    valid input nests deeper, so nothing here recurses)."""
    if isinstance(raw, str):
        return len(raw)
    if isinstance(raw, list):
        return sum(len(x) for x in raw if isinstance(x, str))
    if isinstance(raw, dict):
        return sum(len(x) for x in raw.values() if isinstance(x, str))
    return 0


async def run(engine: Engine, language: str | None, task: str | None, inputs: list[Any],
              parameters: dict[str, Any] | None, names: list[str]) -> Inference:
    """``infer`` with the server's limits, failures as HTTP errors, and request metrics."""
    start = time.perf_counter()
    comp = None
    code = 500
    limits = engine.settings
    try:
        if len(inputs) > limits.max_inputs:
            raise HTTPException(413, f"{len(inputs)} inputs; the limit is {limits.max_inputs} per request")
        for raw, name in zip(inputs, names):
            n = input_chars(raw)
            if n > limits.max_input_chars:
                raise HTTPException(413, f"{name} is {n} characters; the limit is {limits.max_input_chars}")
        try:
            result = await infer(engine, language, task, inputs, parameters, names)
        except UnknownPair as exc:
            raise HTTPException(404, str(exc)) from None
        except Unservable as exc:
            raise HTTPException(422, str(exc)) from None
        except RegistryDown as exc:
            raise HTTPException(503, str(exc)) from None
        except InputError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {limits.request_timeout_s} s") from None
        except Exception as exc:  # the worker has already restored the base
            log.error("inference failed: %s: %s", type(exc).__name__, exc)
            raise HTTPException(500, f"inference failed ({type(exc).__name__}); the base is restored") from None
        comp = result.comp
        code = 200
        return result
    except HTTPException as exc:
        code = exc.status_code
        raise
    finally:
        labels = metrics.pair_labels(language, task, comp)
        metrics.REQUESTS.labels(*labels, str(code)).inc()
        metrics.LATENCY.labels(*labels).observe(time.perf_counter() - start)


def _encode(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def json_response(build: Callable[[], Any]) -> Response:
    """``build()`` (the answer's views) run and encoded as JSON in a worker thread: an
    answer with logits can be megabytes."""
    return Response(await asyncio.to_thread(lambda: _encode(build())), media_type="application/json")
