"""Rebuild the Redis registry from the blob store, for when Redis lost its data.

Blobs are the source of truth for *what* exists: each diff file carries its own metadata
(base fingerprint, kind, language or task, creation time), so the index can be recomputed
from them. Versions are handed out again in creation order (``created_at``, which has
one-second resolution, then the blob file's modification time, i.e. publish order), which
keeps "latest" the newest diff of each key; version numbers themselves restart at 1, since
the old numbering (and any retirements) lived only in Redis.

Publishing goes through :meth:`Registry.publish`, the same atomic Lua step as an upload, so
a rebuild running next to live traffic or a second rebuild never duplicates an entry: bytes
that are already indexed are left as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from diffs_store import errors
from diffs_store.blobs import LocalBlobStore
from diffs_store.format import read_metadata
from diffs_store.redis_connection import ensure_reachable
from diffs_store.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    published: list[str] = field(default_factory=list)
    already_indexed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # blob id -> why

    def summary(self) -> str:
        return (f"{len(self.published)} published, {len(self.already_indexed)} already indexed, "
                f"{len(self.skipped)} skipped")


def rebuild(registry: Registry) -> RebuildReport:
    """Index every readable diff blob that the registry does not know, oldest first."""
    if not isinstance(registry.blobs, LocalBlobStore):  # pragma: no cover - the only store today
        raise errors.RegistryError("rebuilding needs a blob store that can list its blobs")
    ensure_reachable(registry.redis)  # say so now, not after reading every blob
    report = RebuildReport()
    order: list[tuple[str, int, str]] = []
    for bid in registry.blobs.ids():
        try:
            created = read_metadata(registry.load_bytes(bid)).created_at
            order.append((created, registry.blobs.path(bid).stat().st_mtime_ns, bid))
        except (errors.DiffError, errors.RegistryError) as exc:  # corrupt or not a diff
            report.skipped[bid] = str(exc)
            log.warning("rebuild: skipping blob %s: %s", bid, exc)
    for *_, bid in sorted(order):
        if registry.exists(bid):
            report.already_indexed.append(bid)
            continue
        registry.publish(registry.load_bytes(bid))
        report.published.append(bid)
    return report


def rebuild_if_empty(registry: Registry) -> RebuildReport | None:
    """At start: rebuild when Redis holds no diffs at all but blobs exist (data loss)."""
    if not registry.is_empty() or not isinstance(registry.blobs, LocalBlobStore):
        return None
    if next(registry.blobs.ids(), None) is None:
        return None
    report = rebuild(registry)
    log.warning("the registry was empty but the blob store was not: rebuilt it (%s)", report.summary())
    return report
