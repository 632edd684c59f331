"""Parameters of extractive question answering: those of the Hugging Face Inference API
(and of the transformers question-answering pipeline)."""

from __future__ import annotations

from pydantic import Field

from service.tasks.base import Params


class QuestionAnsweringParams(Params):
    top_k: int = Field(1, ge=1, description="How many answers to return, best first (fewer if fewer spans qualify).")
    doc_stride: int | None = Field(
        None, ge=0, description="Tokens shared by consecutive windows of a long context. Unset: min(max_seq_len / 2, 128)."
    )
    max_answer_len: int = Field(15, ge=1, description="Longest answer, in tokens.")
    max_question_len: int = Field(64, ge=1, description="Longest question, in tokens; a longer one is cut to this.")
    max_seq_len: int | None = Field(
        None, ge=8, description="Tokens per window (question and context). Unset: min(the model's positions, 384)."
    )
    handle_impossible_answer: bool = Field(False, description="Allow the empty answer (start = end = 0).")
    align_to_words: bool = Field(True, description="Widen answers to whole words (space-separated languages).")
