"""Answer shapes of sequence classification."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LabelScore(BaseModel):
    label: str
    score: float


class SequenceClassificationPrediction(BaseModel):
    label: str = Field(description="The most probable label.")
    score: float
    labels: list[LabelScore] = Field(description="Labels by score, most probable first (top_k of them).")
    logits: list[float] | None = Field(None, description="return_logits only.")

    model_config = {"json_schema_extra": {"examples": [{"label": "entailment", "score": 0.91, "labels": [
        {"label": "entailment", "score": 0.91}, {"label": "neutral", "score": 0.06},
        {"label": "contradiction", "score": 0.03}]}]}}
