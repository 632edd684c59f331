"""Extractive QA: SQuAD-format JSON, training features, and a simple decoder + EM/F1.

Kept deliberately small: one best span per question (top-20 start/end logits, span of at
most ``max_answer_tokens`` inside the context), SQuAD v1 answers (no unanswerables).
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character start)


def read_squad(path: str | Path) -> list[QAExample]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    out = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = tuple((a["text"], int(a["answer_start"])) for a in qa.get("answers", []))
                out.append(QAExample(str(qa["id"]), qa["question"], para["context"], answers))
    return out


def _encode(tokenizer, examples: list[QAExample], max_len: int, stride: int):
    stride = min(stride, max_len // 4)  # the window overlap must leave room for new context
    return tokenizer(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def qa_train_features(tokenizer, examples: list[QAExample], max_len: int = 256, stride: int = 64) -> list[dict]:
    """Windows over each context with ``start_positions``/``end_positions`` (token indices of
    the first answer; 0, the [CLS] token, when the answer is not inside the window)."""
    enc = _encode(tokenizer, examples, max_len, stride)
    feats = []
    for i in range(len(enc["input_ids"])):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        seq = enc.sequence_ids(i)
        offsets = enc["offset_mapping"][i]
        start_tok = end_tok = 0
        if ex.answers:
            text, a_start = ex.answers[0]
            a_end = a_start + len(text)
            ctx = [j for j, s in enumerate(seq) if s == 1]
            if ctx and offsets[ctx[0]][0] <= a_start and offsets[ctx[-1]][1] >= a_end:
                start_tok = next(j for j in ctx if offsets[j][1] > a_start)
                end_tok = next(j for j in reversed(ctx) if offsets[j][0] < a_end)
        feat = {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        feat.update(start_positions=start_tok, end_positions=end_tok)
        feats.append(feat)
    return feats


@torch.no_grad()
def qa_predict(
    model, tokenizer, examples: list[QAExample], *, max_len: int = 256, stride: int = 64,
    batch_size: int = 16, max_answer_tokens: int = 30, device: str = "cpu",
) -> dict[str, str]:
    """Best span text per example id."""
    from trainer.evaluate import usable_length

    model.eval()
    enc = _encode(tokenizer, examples, usable_length(model, max_len), stride)
    best: dict[str, tuple[float, str]] = {}
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    for b in range(0, len(enc["input_ids"]), batch_size):
        batch = {k: torch.tensor(enc[k][b : b + batch_size], device=device) for k in keys}
        out = model(**batch)
        for j in range(batch["input_ids"].shape[0]):
            i = b + j
            ex = examples[enc["overflow_to_sample_mapping"][i]]
            seq, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
            s_log, e_log = out.start_logits[j].float(), out.end_logits[j].float()
            for s in torch.topk(s_log, min(20, s_log.numel())).indices.tolist():
                for e in torch.topk(e_log, min(20, e_log.numel())).indices.tolist():
                    if seq[s] != 1 or seq[e] != 1 or e < s or e - s + 1 > max_answer_tokens:
                        continue
                    score = float(s_log[s] + e_log[e])
                    if ex.id not in best or score > best[ex.id][0]:
                        best[ex.id] = (score, ex.context[offsets[s][0] : offsets[e][1]])
    return {ex.id: best.get(ex.id, (0.0, ""))[1] for ex in examples}


def _normalise(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def squad_scores(examples: list[QAExample], predictions: dict[str, str]) -> dict[str, float]:
    """SQuAD v1 exact match and token F1 (max over gold answers), in percent."""
    em = f1 = 0.0
    for ex in examples:
        pred = _normalise(predictions.get(ex.id, ""))
        golds = [_normalise(t) for t, _ in ex.answers] or [[]]
        em += max(float(pred == g) for g in golds)
        best = 0.0
        for g in golds:
            common = sum((collections.Counter(pred) & collections.Counter(g)).values())
            if common:
                p, r = common / len(pred), common / len(g)
                best = max(best, 2 * p * r / (p + r))
        f1 += best
    n = max(len(examples), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}
