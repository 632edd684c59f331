"""Answer shapes of question answering."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Answer(BaseModel):
    """A span of the context: ``context[start:end] == answer`` (character offsets)."""

    answer: str
    score: float
    start: int
    end: int


class QuestionAnsweringPrediction(BaseModel):
    answer: str | None = Field(description="The best answer (null when no span qualifies).")
    score: float | None
    start: int | None
    end: int | None
    answers: list[Answer] = Field(description="top_k answers, best first.")
    start_logits: list[list[float]] | None = Field(None, description="Per window (return_logits only).")
    end_logits: list[list[float]] | None = Field(None, description="Per window (return_logits only).")

    model_config = {"json_schema_extra": {"examples": [{"answer": "Lagos", "score": 0.83, "start": 15, "end": 20,
                                                        "answers": [{"answer": "Lagos", "score": 0.83, "start": 15, "end": 20}]}]}}
