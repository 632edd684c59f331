"""Token classification (NER, POS): entities with character offsets, as the transformers
``token-classification`` pipeline gives them."""

from service.tasks.token_classification.io import TokenClassification

__all__ = ["TokenClassification"]
