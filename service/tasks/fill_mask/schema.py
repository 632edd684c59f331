"""Answer shapes of fill-mask."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Filled(BaseModel):
    score: float
    token: int = Field(description="Token id.")
    token_str: str = Field(description="The token as text.")
    sequence: str = Field(description="The input with this token in the mask's place.")


class FillMaskPrediction(BaseModel):
    masks: list[list[Filled]] = Field(description="Per mask token in the input, top_k tokens, most probable first.")

    model_config = {"json_schema_extra": {"examples": [{"masks": [[
        {"score": 0.31, "token": 2154, "token_str": "shule", "sequence": "Watoto wanacheza shule"}]]}]}}
