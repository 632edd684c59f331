"""Parameters of token classification: those of the Hugging Face Inference API (and of the
transformers pipeline of the same name)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.tasks.base import Params

Aggregation = Literal["none", "simple", "first", "average", "max"]


class TokenClassificationParams(Params):
    aggregation_strategy: Aggregation = Field(
        "simple",
        description="How tokens become entities: none (one per token), simple (adjacent tokens of one type), "
        "first / average / max (whole words, labelled by their first token, the mean scores, the best token).",
    )
    ignore_labels: list[str] = Field(["O"], description="Labels left out of the answer.")
    stride: int | None = Field(
        None, ge=0,
        description="Tokens shared by consecutive windows of a text longer than the model's positions. "
        "Unset: a quarter of a window (none when aggregation_strategy is none).",
    )
