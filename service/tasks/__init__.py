"""Task types: one folder each (``params.py`` the Inference API parameters, ``io.py`` pre-
and post-processing, ``schema.py`` the answer shapes), registered here.

Adding a task type is a folder with a :class:`~service.tasks.base.TaskIO` and a line in
``TASKS`` (plus its training data reader in ``trainer/data``).
"""

from diffs_store.metadata import TaskType
from service.tasks.base import InputError, Limits, Params, Prepared, TaskIO
from service.tasks.fill_mask import FillMask
from service.tasks.question_answering import QuestionAnswering
from service.tasks.sequence_classification import SequenceClassification
from service.tasks.token_classification import TokenClassification

TASKS: dict[TaskType, TaskIO] = {
    io.task_type: io for io in (TokenClassification(), SequenceClassification(), QuestionAnswering(), FillMask())
}

__all__ = ["TASKS", "InputError", "Limits", "Params", "Prepared", "TaskIO"]
