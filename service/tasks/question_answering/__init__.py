"""Extractive question answering: answer spans with character offsets into the context."""

from service.tasks.question_answering.io import QuestionAnswering

__all__ = ["QuestionAnswering"]
