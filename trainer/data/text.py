"""Raw text for masked language modelling: one example per non-empty line."""

from __future__ import annotations

from pathlib import Path


def read_lines(path: str | Path, *, max_lines: int | None = None) -> list[str]:
    """Non-empty, stripped lines (a sentence or a paragraph each), at most ``max_lines``."""
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(line)
                if max_lines is not None and len(out) >= max_lines:
                    break
    return out
