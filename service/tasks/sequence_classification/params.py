"""Parameters of sequence classification: those of the Hugging Face Inference API's text
classification (and of the transformers pipeline)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.tasks.base import Params


class SequenceClassificationParams(Params):
    top_k: int | None = Field(
        None, ge=1, description="How many labels to return, most probable first. Unset: every label."
    )
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = Field(
        None, description="Scores from logits. Unset: softmax for several labels, sigmoid for one."
    )
