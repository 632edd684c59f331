"""A registry entry and its codec: how one published diff is written to and read from its
Redis hash (``ns:entry:<id>``), and how Redis replies are decoded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from diffs_store.metadata import DiffKind, DiffMetadata, TaskType

STATUS_LIVE = "live"


@dataclass(frozen=True)
class Entry:
    """One published diff as the registry knows it."""

    id: str
    kind: DiffKind
    key: str
    version: int
    base_fingerprint: str
    base_model: str
    language: str | None
    task: str | None
    task_type: TaskType | None
    labels: tuple[str, ...]
    nnz: int
    size: int
    created_at: str
    published_at: str
    # The producer's recorded figures (training, and dev scores under "dev"), as the diff's
    # header carries them: what a person picking a diff compares.
    metrics: Mapping[str, Any] = field(default_factory=dict, hash=False)
    tags: tuple[str, ...] = ()

    @property
    def demo(self) -> bool:
        """Installed by the server's demo (service.demo), not uploaded by a user."""
        return "demo" in self.tags

    @property
    def dev_metrics(self) -> dict[str, Any]:
        """The recorded dev scores (``metrics["dev"]``): per source language for a task diff,
        masked-LM loss and perplexity for a language diff; {} when none were recorded."""
        dev = self.metrics.get("dev")
        return dict(dev) if isinstance(dev, Mapping) else {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their values, labels as a list."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "key": self.key,
            "version": self.version,
            "base_fingerprint": self.base_fingerprint,
            "base_model": self.base_model,
            "language": self.language,
            "task": self.task,
            "task_type": self.task_type.value if self.task_type else None,
            "labels": list(self.labels),
            "nnz": self.nnz,
            "size": self.size,
            "created_at": self.created_at,
            "published_at": self.published_at,
            "metrics": dict(self.metrics),
            "tags": list(self.tags),
        }

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> "Entry":
        """The entry stored in hash ``h`` (the fields :func:`entry_fields` wrote, + version)."""
        return cls(
            id=h["id"],
            kind=DiffKind(h["kind"]),
            key=h["key"],
            version=int(h["version"]),
            base_fingerprint=h["base_fingerprint"],
            base_model=h["base_model"],
            language=h.get("language") or None,
            task=h.get("task") or None,
            task_type=TaskType(h["task_type"]) if h.get("task_type") else None,
            labels=tuple(json.loads(h.get("labels") or "[]")),
            nnz=int(h["nnz"]),
            size=int(h["size"]),
            created_at=h["created_at"],
            published_at=h["published_at"],
            metrics=json.loads(h.get("metrics") or "{}"),  # absent in entries published before it was kept
            tags=tuple(json.loads(h.get("tags") or "[]")),
        )


def entry_fields(diff_id: str, meta: DiffMetadata, size: int) -> dict[str, str]:
    """The hash fields of a new entry, all but ``version`` (the publish script allocates it)
    and ``published_at`` (stamped when the script runs: see :func:`now`). Redis stores
    strings, so absent values are empty strings and labels and metrics are JSON."""
    return {
        "id": diff_id,
        "kind": meta.kind.value,
        "key": meta.key,
        "language": meta.language or "",
        "task": meta.task or "",
        "task_type": meta.task_type.value if meta.task_type else "",
        "labels": json.dumps(list(meta.labels)),
        "metrics": json.dumps(meta.metrics),
        "tags": json.dumps(list(meta.tags)),
        "size": str(size),
        "nnz": str(meta.nnz),
        "base_model": meta.base_model,
        "base_fingerprint": meta.base_fingerprint,
        "created_at": meta.created_at,
        "status": STATUS_LIVE,
    }


def now() -> str:
    """A publish time stamp: UTC, ISO 8601, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def decode(v: Any) -> Any:
    """Decode Redis replies, so a client with ``decode_responses=False`` works too."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [decode(x) for x in v]
    if isinstance(v, dict):
        return {decode(k): decode(x) for k, x in v.items()}
    return v


def pairs_to_dict(flat: list[str]) -> dict[str, str]:
    """``HGETALL``'s flat [field, value, ...] reply (as Lua returns it) as a dict."""
    return dict(zip(flat[::2], flat[1::2]))
