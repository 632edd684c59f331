"""Question answering I/O.

A long context runs as windows of ``max_seq_len`` tokens sharing ``doc_stride`` tokens,
each holding the whole question. In each window the start and end logits of the tokens
that may answer (the context's, and the classifier token's) become probabilities; a span's
score is P(start) x P(end), spans longer than ``max_answer_len`` or ending before they start
are out. Answers are widened to whole words (``align_to_words``) and the same text found in
several windows adds its scores. This is the extractive pipeline of transformers (4.x; 5.x
dropped it), which the tests run as the oracle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffs_store.metadata import TaskType
from service.tasks.base import InputError, Limits, Prepared, TaskIO, model_inputs, text_of
from service.tasks.question_answering.params import QuestionAnsweringParams

DEFAULT_MAX_SEQ_LEN = 384
MASKED = -10000.0  # the logit of a token that cannot answer: exp() of it is 0 in float32
NULL_UNSEEN = 1_000_000.0  # the null score before any window is read (any real one is lower)


class QuestionAnswering(TaskIO):
    task_type = TaskType.QUESTION_ANSWERING
    params_model = QuestionAnsweringParams
    output_names = ("start_logits", "end_logits")

    # -- before the model ---------------------------------------------------------------

    def prepare(self, tokenizer, raw: Any, params: QuestionAnsweringParams, limits: Limits) -> Prepared:
        if not isinstance(raw, dict) or set(raw) != {"question", "context"}:
            raise InputError("a question-answering input is an object {question, context}")
        question, context = text_of(raw["question"], "question"), text_of(raw["context"], "context")
        for name, value in (("question", question), ("context", context)):
            if not value:
                raise InputError(f"{name} is empty")
        max_len = params.max_seq_len or min(limits.max_tokens, DEFAULT_MAX_SEQ_LEN)
        if max_len > limits.max_tokens:
            raise InputError(f"parameters.max_seq_len: {max_len} is more than the {limits.max_tokens} tokens this model takes")
        stride = params.doc_stride if params.doc_stride is not None else min(max_len // 2, 128)
        if stride > max_len:
            raise InputError(f"parameters.doc_stride: {stride} is larger than max_seq_len ({max_len})")
        question = _cut(tokenizer, question, params.max_question_len)
        question_first = tokenizer.padding_side == "right"
        try:
            enc = tokenizer(
                text=question if question_first else context, text_pair=context if question_first else question,
                truncation="only_second" if question_first else "only_first", max_length=max_len, stride=stride,
                return_token_type_ids=True, return_overflowing_tokens=True, return_offsets_mapping=True,
            )
        except Exception as exc:  # the tokenizer's words for "the question leaves no room"
            raise InputError(f"the question leaves no room for the context in {max_len} tokens "
                             f"(with doc_stride {stride}): {exc}") from None
        context_seq = 1 if question_first else 0
        windows, answerable, spans = [], [], []
        for w in range(len(enc["input_ids"])):
            encoding = enc[w]
            ids = encoding.ids
            # Tokens that may answer: the context's (every token when the context comes first,
            # as the pipeline has it) and the classifier token (the null answer).
            can = [1 if (not question_first or s == context_seq) else 0 for s in encoding.sequence_ids]
            for i, t in enumerate(ids):
                if t == tokenizer.cls_token_id:
                    can[i] = 1
            windows.append(model_inputs(tokenizer, enc, w))
            answerable.append(can)
            spans.append(_char_spans(encoding, context_seq))
        return Prepared(windows, {"context": context, "answerable": answerable, "spans": spans})

    # -- after the model ------------------------------------------------------------------

    def postprocess(self, tokenizer, prepared: Prepared, outputs, params: QuestionAnsweringParams,
                    labels: tuple[str, ...]) -> list[dict[str, Any]]:
        context = prepared.context["context"]
        candidates = params.top_k * 2 + 10 if params.align_to_words else params.top_k  # widening merges some
        null = NULL_UNSEEN
        answers: list[dict[str, Any]] = []
        for w, out in enumerate(outputs):
            can = np.asarray(prepared.context["answerable"][w], dtype=bool)
            p_start = _probabilities(out["start_logits"], can)
            p_end = _probabilities(out["end_logits"], can)
            null = min(null, float(p_start[0] * p_end[0]))
            p_start[0] = p_end[0] = 0.0  # the classifier token is the null answer, scored apart
            for s, e, score in _best_spans(p_start, p_end, can, candidates, params.max_answer_len):
                words, offsets = prepared.context["spans"][w]
                if params.align_to_words and words[s] is not None and words[e] is not None:
                    start, end = words[s][0], words[e][1]
                else:
                    start, end = offsets[s][0], offsets[e][1]
                text = context[start:end]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score
                else:
                    answers.append({"score": score, "start": start, "end": end, "answer": text})
        if params.handle_impossible_answer:
            answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
        return sorted(answers, key=lambda a: a["score"], reverse=True)[: params.top_k]

    def inference_api_view(self, answer):
        return answer[0] if len(answer) == 1 else answer  # one answer is an object, as in the pipeline

    def predict_view(self, answer, outputs, return_logits: bool) -> dict[str, Any]:
        best = answer[0] if answer else {}
        view: dict[str, Any] = {k: best.get(k) for k in ("answer", "score", "start", "end")}
        view["answers"] = answer
        if return_logits:
            view["start_logits"] = [o["start_logits"].tolist() for o in outputs]
            view["end_logits"] = [o["end_logits"].tolist() for o in outputs]
        return view


def _cut(tokenizer, question: str, max_tokens: int) -> str:
    """The question cut after its ``max_tokens``-th token (at that token's last character)."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return question
    return question[: enc["offset_mapping"][max_tokens - 1][1]]


def _char_spans(encoding, sequence: int) -> tuple[list[tuple[int, int] | None], list[tuple[int, int]]]:
    """Per token: the character span of its whole word in the context (None where the
    tokenizer knows no word), and its own span."""
    words: list[tuple[int, int] | None] = []
    for i in range(len(encoding.ids)):
        word = encoding.token_to_word(i)
        try:
            words.append(tuple(encoding.word_to_chars(word, sequence_index=sequence)) if word is not None else None)
        except Exception:  # a tokenizer without words: token offsets only
            words.append(None)
    return words, [tuple(o) for o in encoding.offsets]


def _probabilities(logits: np.ndarray, can: np.ndarray) -> np.ndarray:
    """Softmax over the tokens that may answer (the others get exp(-10000) = 0)."""
    x = np.where(can, logits, np.float32(MASKED)).astype(np.float32)
    x = np.exp(x - x.max())
    return x / x.sum()


def _best_spans(p_start: np.ndarray, p_end: np.ndarray, can: np.ndarray, k: int, max_len: int):
    """The ``k`` best (start, end, score) with start <= end < start + max_len, both ends on
    tokens that may answer (position 0, the classifier token, always may)."""
    scores = np.tril(np.triu(np.outer(p_start, p_end)), max_len - 1)
    flat = scores.ravel()
    if k == 1:
        order = np.array([np.argmax(flat)])
    elif flat.size < k:
        order = np.argsort(-flat)
    else:
        top = np.argpartition(-flat, k)[:k]
        order = top[np.argsort(-flat[top])]
    starts, ends = np.unravel_index(order, scores.shape)
    allowed = can.copy()
    allowed[0] = True
    for s, e in zip(starts, ends):
        if allowed[s] and allowed[e]:
            yield int(s), int(e), float(scores[s, e])
