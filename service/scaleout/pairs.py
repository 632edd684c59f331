"""What crosses the ingress -> model boundary: the multiplexed model id of a pair, and the
model replica's reply (predictions plus who served them, for affinity checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SEPARATOR = "|"


def pair_id(language: str | None, task: str | None) -> str:
    """``hau|ner``; a missing side is empty (``hau|`` is fill-mask, ``|ner`` the task alone).
    Registry keys never contain the separator, so the id round-trips."""
    return f"{language or ''}{SEPARATOR}{task or ''}"


def parse_pair_id(model_id: str) -> tuple[str | None, str | None]:
    language, sep, task = model_id.partition(SEPARATOR)
    if not sep:
        raise ValueError(f"not a pair id: {model_id!r} (expected 'language|task')")
    return language or None, task or None


@dataclass(frozen=True)
class PairReply:
    """One answer from a model replica. ``switches`` is that replica's running count of
    applied-composition changes, and ``queue_depth`` the requests still waiting for its
    worker, both read after this request was served."""

    predictions: list[list[dict[str, Any]]]  # per input, per window: the model outputs kept
    replica: str
    switches: int
    queue_depth: int = 0
