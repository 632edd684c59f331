"""Pre- and post-processing per task type.

Each task type has a :class:`~service.tasks.common.TaskAdapter`: ``prepare`` runs in the
request handler (validates and tokenizes one input, so a bad or over-long input is refused
before it is queued) and ``run`` runs in the model worker on a micro-batch of prepared
inputs that share one composition.
"""

from diffs_store.metadata import TaskType
from service.tasks.common import InputError, TaskAdapter
from service.tasks.fill_mask import FillMask
from service.tasks.question_answering import QuestionAnswering
from service.tasks.sequence_classification import SequenceClassification
from service.tasks.token_classification import TokenClassification

ADAPTERS: dict[TaskType, TaskAdapter] = {
    TaskType.TOKEN_CLASSIFICATION: TokenClassification(),
    TaskType.SEQUENCE_CLASSIFICATION: SequenceClassification(),
    TaskType.QUESTION_ANSWERING: QuestionAnswering(),
    TaskType.FILL_MASK: FillMask(),
}

__all__ = ["ADAPTERS", "InputError", "TaskAdapter"]
