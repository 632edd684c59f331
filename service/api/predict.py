"""POST /v1/predict: one composition, many inputs, with the diffs that answered.

Answers are the transformers pipelines' (character offsets, entity groups, scores; see
``service/tasks``) in an object per input; logits only when asked for. The Hugging Face
Inference API's shapes, one input at a time, are at ``/models/...`` (service.api.inference).
"""

from __future__ import annotations

from typing import Any, Union

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import get_engine
from service.api.serving import ERRORS, json_response, run
from service.engine import Engine
from service.tasks.fill_mask.schema import FillMaskPrediction
from service.tasks.question_answering.schema import QuestionAnsweringPrediction
from service.tasks.sequence_classification.schema import SequenceClassificationPrediction
from service.tasks.token_classification.schema import TokenClassificationPrediction

router = APIRouter(prefix="/v1", tags=["predict"])


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"language": "hau", "task": "ner", "inputs": ["Shugaba Muhammadu Buhari ya isa Kano"],
         "parameters": {"aggregation_strategy": "simple"}},
        {"language": "swa", "task": "nli", "inputs": [{"text": "Watoto wanacheza", "text_pair": "Watoto wamelala"}]},
        {"task": "qa", "inputs": [{"question": "Where does Mary live?", "context": "Mary lives in Lagos."}],
         "parameters": {"top_k": 2}},
    ]})

    language: str | None = Field(None, description="Target language (BCP-47 / ISO 639), e.g. 'hau'. Omit to use the task diff alone.")
    task: str | None = Field(None, description="Task name, e.g. 'ner'. Omit for fill-mask with a language's MLM head.")
    inputs: list[Any] = Field(
        ..., min_length=1,
        description="Per task type: token-classification: a text (or a list of words, joined by spaces); "
        "sequence-classification: a text or {text, text_pair}; question-answering: {question, context}; "
        "fill-mask: a text with the mask token.",
    )
    parameters: dict[str, Any] | None = Field(
        None, description="The task type's parameters, as the Hugging Face Inference API names them "
        "(token-classification: aggregation_strategy, ignore_labels, stride; sequence-classification: top_k, "
        "function_to_apply; question-answering: top_k, doc_stride, max_answer_len, max_question_len, max_seq_len, "
        "handle_impossible_answer, align_to_words; fill-mask: top_k, targets). An unknown one is a 422.",
    )
    return_logits: bool = Field(False, description="Add the model's logits per window to each prediction.")


class DiffRef(BaseModel):
    id: str
    version: int


Prediction = Union[TokenClassificationPrediction, SequenceClassificationPrediction,
                   QuestionAnsweringPrediction, FillMaskPrediction]


class PredictResponse(BaseModel):
    language: str | None
    task: str | None
    task_type: str
    diffs: dict[str, DiffRef] = Field(description="The diffs that answered, by kind (language, task).")
    predictions: list[Prediction] = Field(description="One per input, in order; the object of the task type.")


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(body: PredictRequest, engine: Engine = Depends(get_engine)) -> Response:
    names = [f"inputs[{i}]" for i in range(len(body.inputs))]
    result = await run(engine, body.language, body.task, body.inputs, body.parameters, names)
    comp = result.comp
    io = comp.io
    return await json_response(lambda: {
        "language": comp.language.key if comp.language else None,
        "task": comp.task.key if comp.task else None,
        "task_type": comp.task_type.value,
        "diffs": comp.describe(),
        "predictions": [io.predict_view(a, o, body.return_logits) for a, o in zip(result.answers, result.outputs)],
    })
