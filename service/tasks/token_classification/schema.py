"""Answer shapes of token classification: the Hugging Face Inference API's entity, and
``/v1/predict``'s object per input."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Entity(BaseModel):
    """One entity (or one token, with ``aggregation_strategy`` none). ``start``/``end`` are
    character offsets into the input text: ``text[start:end]`` is what was labelled."""

    entity_group: str | None = Field(None, description="Label of a group of tokens (aggregation other than none).")
    entity: str | None = Field(None, description="Label of one token (aggregation none).")
    score: float
    word: str = Field(description="The tokens as the tokenizer turns them back into text (may differ from the input's case).")
    start: int
    end: int
    index: int | None = Field(None, description="Token position in its window (aggregation none).")


class TokenClassificationPrediction(BaseModel):
    entities: list[Entity]
    logits: list[list[list[float]]] | None = Field(None, description="Per window, per token (return_logits only).")

    model_config = {"json_schema_extra": {"examples": [{"entities": [
        {"entity_group": "PER", "score": 0.98, "word": "Barack Obama", "start": 0, "end": 12},
        {"entity_group": "LOC", "score": 0.97, "word": "Paris", "start": 21, "end": 26}]}]}}
