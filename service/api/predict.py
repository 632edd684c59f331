"""POST /v1/predict: one composition, many inputs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from service import metrics
from service.api.deps import get_engine
from service.engine import Engine, RegistryDown, UnknownPair, Unservable
from service.tasks import InputError

router = APIRouter(prefix="/v1", tags=["predict"])


class PredictRequest(BaseModel):
    language: str | None = Field(None, description="Target language (BCP-47 / ISO 639), e.g. 'hau'. Omit to use the task diff alone.")
    task: str | None = Field(None, description="Task name, e.g. 'ner'. Omit for fill-mask with a language's MLM head.")
    inputs: list[Any] = Field(
        ..., min_length=1,
        description="Per task type: token-classification: text or list of words; sequence-classification: "
        "text or {text, text_pair}; question-answering: {question, context}; fill-mask: text with the mask token.",
    )


class PredictResponse(BaseModel):
    language: str | None
    task: str | None
    task_type: str
    diffs: dict[str, dict[str, Any]]
    predictions: list[dict[str, Any]]


def _chars(raw: Any) -> int:
    if isinstance(raw, str):
        return len(raw)
    if isinstance(raw, list):
        return sum(_chars(x) for x in raw)
    if isinstance(raw, dict):
        return sum(_chars(v) for v in raw.values())
    return 0


@router.post("/predict", response_model=PredictResponse)
async def predict(body: PredictRequest, engine: Engine = Depends(get_engine)) -> PredictResponse:
    start = time.perf_counter()
    comp = None
    code = 500
    try:
        limits = engine.settings
        if len(body.inputs) > limits.max_inputs:
            raise HTTPException(413, f"{len(body.inputs)} inputs; the limit is {limits.max_inputs} per request")
        for i, raw in enumerate(body.inputs):
            if _chars(raw) > limits.max_input_chars:
                raise HTTPException(413, f"input {i} is {_chars(raw)} characters; the limit is {limits.max_input_chars}")
        try:
            comp = await engine.resolve(body.language, body.task)
            prepared = engine.prepare(comp, body.inputs)
        except UnknownPair as exc:
            raise HTTPException(404, str(exc)) from None
        except Unservable as exc:
            raise HTTPException(422, str(exc)) from None
        except RegistryDown as exc:
            raise HTTPException(503, str(exc)) from None
        except InputError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        try:
            predictions = await engine.predict(comp, prepared)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {limits.request_timeout_s} s") from None
        except Exception as exc:  # the worker has already restored the base; say what failed
            raise HTTPException(500, f"inference failed: {type(exc).__name__}: {exc}") from None
        code = 200
        return PredictResponse(
            language=comp.language.key if comp.language else None,
            task=comp.task.key if comp.task else None,
            task_type=comp.task_type.value,
            diffs=comp.describe(),
            predictions=predictions,
        )
    except HTTPException as exc:
        code = exc.status_code
        raise
    finally:
        labels = metrics.pair_labels(body.language, body.task, comp)
        metrics.REQUESTS.labels(*labels, str(code)).inc()
        metrics.LATENCY.labels(*labels).observe(time.perf_counter() - start)
