"""Sequence classification (the Inference API's text classification): labels with scores
for a text or a text pair."""

from service.tasks.sequence_classification.io import SequenceClassification

__all__ = ["SequenceClassification"]
