"""Readers (files -> examples) and encoders (examples -> features) for every job."""

from trainer.data.classification import ClassificationExample, class_labels, read_classification
from trainer.data.conll import TaggedSentence, label_list, read_conll, read_conllu
from trainer.data.squad import QAExample, qa_predict, qa_train_features, read_squad, squad_scores
from trainer.data.text import read_lines

__all__ = [
    "ClassificationExample", "QAExample", "TaggedSentence", "class_labels", "label_list", "qa_predict",
    "qa_train_features", "read_classification", "read_conll", "read_conllu", "read_lines", "read_squad",
    "squad_scores",
]
