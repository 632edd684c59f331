"""What training and evaluation need per task type, in one table: how labelled data is read
by default, how its label set is found, how it is encoded and batched, how a model is scored.

The serving side of a task type lives in ``service/tasks/<type>/``; a new task type is a
folder there plus a row here (and its reader in ``trainer/data``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from diffs_store.metadata import TaskType


@dataclass(frozen=True)
class TrainerTask:
    data_format: str  # the reader (``--format``) used when none is given
    labels: Callable[[list], tuple[str, ...]]  # the label set of training examples
    encode: Callable[..., list[dict]]  # (tokenizer, examples, label2id, max_len) -> features
    collator: Callable[[Any], Callable]  # tokenizer -> batch collator
    evaluate: Callable[..., dict[str, float]]  # (model, tokenizer, data, **kw) -> scores


def _token_classification() -> TrainerTask:
    from transformers import DataCollatorForTokenClassification

    from trainer.data.conll import label_list
    from trainer.data.encode import encode_tagged
    from trainer.evaluate import predict_tags, tagging_scores

    return TrainerTask(
        "conll", label_list, encode_tagged, DataCollatorForTokenClassification,
        lambda model, tok, data, **kw: tagging_scores([s.tags for s in data], predict_tags(model, tok, data, **kw)),
    )


def _sequence_classification() -> TrainerTask:
    from transformers import DataCollatorWithPadding

    from trainer.data.classification import class_labels
    from trainer.data.encode import encode_classification
    from trainer.evaluate import predict_classes

    def accuracy(model, tok, data: Sequence, **kw) -> dict[str, float]:
        pred = predict_classes(model, tok, data, **kw)
        return {"accuracy": sum(p == e.label for p, e in zip(pred, data)) / max(len(data), 1)}

    return TrainerTask("classification", class_labels, encode_classification, DataCollatorWithPadding, accuracy)


def _question_answering() -> TrainerTask:
    from transformers import default_data_collator

    from trainer.data.squad import qa_predict, qa_train_features, squad_scores

    return TrainerTask(
        "squad", lambda examples: (), lambda tok, examples, label2id, max_len: qa_train_features(tok, list(examples), max_len),
        lambda tok: default_data_collator,  # QA features are padded to max length already
        lambda model, tok, data, **kw: squad_scores(list(data), qa_predict(model, tok, list(data), **kw)),
    )


_BUILDERS: dict[TaskType, Callable[[], TrainerTask]] = {
    TaskType.TOKEN_CLASSIFICATION: _token_classification,
    TaskType.SEQUENCE_CLASSIFICATION: _sequence_classification,
    TaskType.QUESTION_ANSWERING: _question_answering,
}


def trainer_task(task_type: TaskType) -> TrainerTask:
    """The row of a task type that task diffs are trained for (fill-mask is the language
    job's own, see ``trainer.jobs``). Built on first use: the readers import lazily."""
    if task_type not in _BUILDERS:
        raise ValueError(f"{task_type.value} is not a task for a task diff")
    return _BUILDERS[task_type]()
