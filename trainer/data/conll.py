"""Token-tagged corpora: CoNLL-style column files and UD CoNLL-U.

Both give :class:`TaggedSentence` lists, the input of token-classification training and
evaluation. Kept free of tokenizers so the readers are trivially testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]


def read_conll(
    path: str | Path,
    *,
    token_column: int = 0,
    tag_column: int = -1,
    separator: str | None = None,
    skip_docstart: bool = True,
) -> list[TaggedSentence]:
    """One token per line, columns split on whitespace (or ``separator``), a blank line
    between sentences. Covers MasakhaNER (``token TAG``) and CoNLL-2003 (``token POS CHUNK
    NER``, use the default ``tag_column=-1``). ``-DOCSTART-`` lines are document markers,
    not tokens, and are skipped. A line with too few columns is an error naming the line.
    """
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(tags)))
        words.clear()
        tags.clear()

    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                flush()
                continue
            cols = line.split(separator) if separator else line.split()
            if skip_docstart and cols[0] == "-DOCSTART-":
                flush()
                continue
            try:
                words.append(cols[token_column])
                tags.append(cols[tag_column])
            except IndexError:
                raise ValueError(
                    f"{path}:{lineno}: expected columns {token_column} and {tag_column}, got {len(cols)} columns"
                ) from None
    flush()
    return sentences


def read_conllu(path: str | Path, *, column: str = "upos") -> list[TaggedSentence]:
    """UD CoNLL-U: ``#`` comments, 10 tab-separated columns; multi-word token ranges
    (``1-2``) and empty nodes (``1.1``) are skipped so words match the tags. ``column`` is
    ``upos`` (POS tagging), ``xpos`` or ``deprel``."""
    index = {"upos": 3, "xpos": 4, "deprel": 7}[column]
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if words:
                    sentences.append(TaggedSentence(tuple(words), tuple(tags)))
                words, tags = [], []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise ValueError(f"{path}:{lineno}: CoNLL-U lines have 10 tab-separated columns, got {len(cols)}")
            if "-" in cols[0] or "." in cols[0]:
                continue
            words.append(cols[1])
            tags.append(cols[index])
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    return sentences


def label_list(sentences: list[TaggedSentence]) -> tuple[str, ...]:
    """A stable label order: ``O`` first (when present), then the rest sorted."""
    seen = {t for s in sentences for t in s.tags}
    rest = sorted(seen - {"O"})
    return (("O",) if "O" in seen else ()) + tuple(rest)
