"""Parameters of fill-mask: those of the Hugging Face Inference API (and the pipeline)."""

from __future__ import annotations

from pydantic import Field

from service.tasks.base import Params


class FillMaskParams(Params):
    top_k: int = Field(5, ge=1, le=100, description="How many tokens per mask, most probable first.")
    targets: list[str] | None = Field(
        None, min_length=1, max_length=100,
        description="Score only these tokens (one not in the vocabulary is replaced by its first sub-token).",
    )
