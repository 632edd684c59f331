"""Token classification I/O.

Words and character offsets come from the tokenizer's offset mapping, so punctuation is
split as the model sees it ("Paris," is the entity "Paris" at 21-26, the comma outside) and
offsets always index the input text, whatever its spaces and newlines. A text longer than
the model's positions runs as overlapping windows (``stride`` tokens shared); entities
found twice in an overlap are resolved as the pipeline does: the longer one, then the
higher score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffs_store.metadata import TaskType
from service.tasks.base import InputError, Limits, Prepared, TaskIO, model_inputs, softmax, text_of
from service.tasks.token_classification.params import TokenClassificationParams


class TokenClassification(TaskIO):
    task_type = TaskType.TOKEN_CLASSIFICATION
    params_model = TokenClassificationParams

    # -- before the model ---------------------------------------------------------------

    def prepare(self, tokenizer, raw: Any, params: TokenClassificationParams, limits: Limits) -> Prepared:
        words: list[str] | None = None
        if isinstance(raw, list):  # pre-split words: joined by single spaces, offsets into that text
            if not raw or not all(isinstance(w, str) and w.strip() for w in raw):
                raise InputError("a list of words must hold non-empty strings")
            words, text = raw, " ".join(raw)
        else:
            text = text_of(raw, "a token-classification input")
        window = limits.max_tokens
        room = window - tokenizer.num_special_tokens_to_add(pair=False)
        stride = params.stride
        if stride is None:
            stride = 0 if params.aggregation_strategy == "none" else room // 4
        if stride >= room:
            raise InputError(f"parameters.stride: {stride} must be less than the {room} tokens a window holds")
        enc = tokenizer(
            words if words is not None else text, is_split_into_words=words is not None,
            truncation=True, max_length=window, stride=stride, return_overflowing_tokens=True,
            return_offsets_mapping=True, return_special_tokens_mask=True,
        )
        n = len(enc["input_ids"])
        context: dict[str, Any] = {
            "text": text,
            "offsets": [[tuple(o) for o in enc["offset_mapping"][i]] for i in range(n)],
            "special": [list(enc["special_tokens_mask"][i]) for i in range(n)],
        }
        if words is not None:  # offsets are within each word: shift them by the word's start
            starts, at = [], 0
            for w in words:
                starts.append(at)
                at += len(w) + 1
            context["word_ids"] = [enc.word_ids(i) for i in range(n)]
            context["word_starts"] = starts
        return Prepared([model_inputs(tokenizer, enc, i) for i in range(n)], context)

    # -- after the model ------------------------------------------------------------------

    def postprocess(self, tokenizer, prepared: Prepared, outputs, params: TokenClassificationParams,
                    labels: tuple[str, ...]) -> list[dict[str, Any]]:
        strategy = params.aggregation_strategy
        ignore = set(params.ignore_labels)
        found: list[dict[str, Any]] = []
        for w, out in enumerate(outputs):
            tokens = self._tokens(tokenizer, prepared, w, softmax(out["logits"]))
            if strategy in ("none", "simple"):
                entities = [_token_entity(t, labels) for t in tokens]
            else:
                entities = [_word_entity(tokenizer, group, strategy, labels) for group in _words(tokens)]
            if strategy != "none":
                entities = _group(tokenizer, entities)
            found += [e for e in entities if e.get("entity", e.get("entity_group")) not in ignore]
        if len(outputs) > 1:
            found = _resolve_overlaps(found)
        return [_plain(e) for e in found]

    def _tokens(self, tokenizer, prepared: Prepared, w: int, scores: np.ndarray) -> list[dict[str, Any]]:
        """The window's non-special tokens with their text span and whether each continues
        the word before it (the tokenizer's own continuation marker where it has one, such
        as WordPiece's ``##``; else: no space before it)."""
        ctx = prepared.context
        text = ctx["text"]
        ids = prepared.windows[w]["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        model = getattr(getattr(tokenizer, "_tokenizer", None), "model", None)
        word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        word_ids = ctx["word_ids"][w] if "word_ids" in ctx else None
        tokens = []
        for i, (piece, (start, end)) in enumerate(zip(pieces, ctx["offsets"][w])):
            if ctx["special"][w][i]:
                continue
            if word_ids is not None and word_ids[i] is not None:
                shift = ctx["word_starts"][word_ids[i]]
                start, end = start + shift, end + shift
            ref = text[start:end]
            subword = len(piece) != len(ref) if word_aware else start > 0 and " " not in text[start - 1 : start + 1]
            if ids[i] == tokenizer.unk_token_id:
                piece, subword = ref, False
            tokens.append({"word": piece, "scores": scores[i], "start": start, "end": end, "index": i, "subword": subword})
        return tokens

    def predict_view(self, answer, outputs, return_logits: bool) -> dict[str, Any]:
        view: dict[str, Any] = {"entities": answer}
        if return_logits:
            view["logits"] = [o["logits"].tolist() for o in outputs]
        return view


def _token_entity(token: dict[str, Any], labels: tuple[str, ...]) -> dict[str, Any]:
    best = int(token["scores"].argmax())
    return {"entity": labels[best], "score": token["scores"][best], "index": token["index"],
            "word": token["word"], "start": token["start"], "end": token["end"]}


def _words(tokens: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Tokens grouped into words: a token that continues a word joins the group before it."""
    groups: list[list[dict[str, Any]]] = []
    for token in tokens:
        if groups and token["subword"]:
            groups[-1].append(token)
        else:
            groups.append([token])
    return groups


def _word_entity(tokenizer, group: list[dict[str, Any]], strategy: str, labels: tuple[str, ...]) -> dict[str, Any]:
    """One label for a whole word: its first token's (first), its most confident token's
    (max) or the mean of its tokens' scores (average)."""
    if strategy == "average":
        scores = np.nanmean(np.stack([t["scores"] for t in group]), axis=0)
    elif strategy == "max":
        scores = max(group, key=lambda t: t["scores"].max())["scores"]
    else:
        scores = group[0]["scores"]
    best = int(scores.argmax())
    return {"entity": labels[best], "score": scores[best],
            "word": tokenizer.convert_tokens_to_string([t["word"] for t in group]),
            "start": group[0]["start"], "end": group[-1]["end"]}


def _tag(label: str) -> tuple[str, str]:
    """("B" | "I", type) of a label; a label without a B-/I- prefix continues its type."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _group(tokenizer, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent entities of one type become one group; a B- tag always starts a new one."""
    runs: list[list[dict[str, Any]]] = []
    for entity in entities:
        bi, tag = _tag(entity["entity"])
        if runs and bi != "B" and _tag(runs[-1][-1]["entity"])[1] == tag:
            runs[-1].append(entity)
        else:
            runs.append([entity])
    return [
        {"entity_group": run[0]["entity"].split("-", 1)[-1],
         "score": np.mean(np.nanmean([e["score"] for e in run])),
         "word": tokenizer.convert_tokens_to_string([e["word"] for e in run]),
         "start": run[0]["start"], "end": run[-1]["end"]}
        for run in runs
    ]


def _resolve_overlaps(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities of overlapping windows: where two overlap, keep the longer, then the more
    confident (the pipeline's rule)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    kept: list[dict[str, Any]] = []
    current = entities[0]
    for entity in entities:
        if current["start"] <= entity["start"] < current["end"]:
            length, current_length = entity["end"] - entity["start"], current["end"] - current["start"]
            if length > current_length or (length == current_length and entity["score"] > current["score"]):
                current = entity
        else:
            kept.append(current)
            current = entity
    kept.append(current)
    return kept


def _plain(entity: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: numpy scalars as Python numbers."""
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in entity.items()}
