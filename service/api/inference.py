"""The Hugging Face Inference API, one route per (language, task) pair and per task alone,
so ``huggingface_hub.InferenceClient(model=<route url>)`` works unchanged:

- ``POST /models/{language}/{task}``: the pair (``/models/hau/ner``);
- ``POST /models/{task}``: the task diff alone, i.e. its source language (``/models/ner``);
- ``POST /models/{language}/fill-mask``: a language diff alone, with its MLM head.

The body is the API's ``{"inputs": ..., "parameters": {...}}``; the answer is the API's
shape for the task type (token classification: a list of entities; text classification: a
list holding the labels; question answering: an answer, or a list for ``top_k`` > 1;
fill-mask: a list of tokens). ``inputs`` may also be a list of inputs: then the answer is a
list with one answer each.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import get_engine
from service.api.serving import ERRORS, json_response, run
from service.engine import Engine

router = APIRouter(prefix="/models", tags=["inference API"])

# The task segment that means "the language diff alone" (fill-mask with its MLM head).
LANGUAGE_ALONE = "fill-mask"


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": "Shugaba Muhammadu Buhari ya isa Kano", "parameters": {"aggregation_strategy": "simple"}},
        {"inputs": {"question": "Where does Mary live?", "context": "Mary lives in Lagos."}},
    ]})

    inputs: Any = Field(..., description="One input of the task type (as in /v1/predict), or a list of them.")
    parameters: dict[str, Any] | None = Field(None, description="The task type's parameters (see /v1/predict).")
    options: dict[str, Any] | None = Field(None, description="Accepted for compatibility (wait_for_model, use_cache); no effect.")


def inference_path(language: str | None, task: str | None) -> str:
    """The route of a (language, task) combination (task None: the language alone)."""
    if language is None:
        return f"/models/{task}"
    return f"/models/{language}/{task or LANGUAGE_ALONE}"


async def _answer(engine: Engine, language: str | None, task: str | None, body: InferenceRequest) -> Response:
    batch = isinstance(body.inputs, list)
    inputs = body.inputs if batch else [body.inputs]
    names = [f"inputs[{i}]" for i in range(len(inputs))] if batch else ["inputs"]
    if not inputs:
        raise HTTPException(422, "inputs is an empty list")
    result = await run(engine, language, task, inputs, body.parameters, names)
    io = result.comp.io
    if batch:
        return await json_response(lambda: [io.inference_api_view(a) for a in result.answers])
    return await json_response(lambda: io.inference_api_view(result.answers[0]))


@router.post("/{language}/{task}", responses=ERRORS, summary="A (language, task) pair, or a language alone")
async def pair(language: str, task: str, body: InferenceRequest, engine: Engine = Depends(get_engine)) -> Response:
    return await _answer(engine, language, None if task == LANGUAGE_ALONE else task, body)


@router.post("/{task}", responses=ERRORS, summary="A task diff alone (its source language)")
async def task_alone(task: str, body: InferenceRequest, engine: Engine = Depends(get_engine)) -> Response:
    return await _answer(engine, None, task, body)
