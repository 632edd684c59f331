"""Sequence classification data: JSON lines, CSV or TSV with ``text``, an optional
``text_pair`` and ``label`` (field names configurable)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    label: str
    text_pair: str | None = None


def read_classification(
    path: str | Path,
    *,
    text_field: str = "text",
    pair_field: str = "text_pair",
    label_field: str = "label",
) -> list[ClassificationExample]:
    """The format follows the suffix: ``.jsonl``/``.json`` (one object per line), ``.csv``,
    ``.tsv`` (with a header row). Labels are kept as strings (``0`` and ``entailment`` alike)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(p, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    elif suffix in (".csv", ".tsv"):
        with open(p, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise ValueError(f"{p}: classification data must be .jsonl, .json, .csv or .tsv")
    out = []
    for i, row in enumerate(rows, 1):
        if text_field not in row or label_field not in row:
            raise ValueError(f"{p}: row {i} lacks {text_field!r} or {label_field!r}")
        pair = row.get(pair_field)
        out.append(ClassificationExample(str(row[text_field]), str(row[label_field]), None if pair in (None, "") else str(pair)))
    return out


def class_labels(examples: list[ClassificationExample]) -> tuple[str, ...]:
    """Sorted label names (numerically when they all are numbers)."""
    labels = {e.label for e in examples}
    if all(label.lstrip("-").isdigit() for label in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))
