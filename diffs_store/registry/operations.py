"""The registry's operations: publish, retire, resolve and list diffs.

Bytes live in a :class:`~diffs_store.blobs.BlobStore`; Redis holds the index (key names:
``keys.py``; every index change is one Lua script: ``scripts.py``). Ordering rules that keep
the two stores consistent:

* publish writes the blob first (durably), then the index. A crash in between leaves an
  orphan blob, never an index entry without bytes.
* retire removes the index entry first, then the blob. While the blob is being deleted a
  short-lived *GC fence* is held in Redis; a concurrent publish of the very same bytes waits
  for it and re-writes the blob, so the delete cannot strand the new entry (see
  :meth:`Registry.publish`).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import Any, Callable, ParamSpec, TypeVar

import redis

from diffs_store import errors
from diffs_store.blobs import BlobStore, InvalidBlobId, blob_id, check_id
from diffs_store.format import read_metadata
from diffs_store.metadata import DiffKind, DiffMetadata, normalise_language, normalise_task
from diffs_store.redis_connection import RedisUnavailable, describe
from diffs_store.registry.entries import Entry, decode, entry_fields, now, pairs_to_dict
from diffs_store.registry.keys import DEFAULT_NAMESPACE, KeyLayout
from diffs_store.registry.scripts import GC_FENCE_TTL_MS, Scripts

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a publish waiting on a GC fence looks again

T = TypeVar("T")
P = ParamSpec("P")


def _redis_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Report Redis outages as :class:`RedisUnavailable` (a ``RegistryError``), so callers
    handle one exception family; NotFound and friends pass through untouched."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            client = args[0].redis  # type: ignore[attr-defined]  # always a Registry method
            raise RedisUnavailable(f"Redis at {describe(client)} is unreachable: {exc}") from exc

    return wrapper


def _normalise_key(kind: DiffKind, key: str) -> str:
    """Accept ``HAU`` or ``pt_br`` as well as the stored spelling; leave junk as is (it
    simply will not be found)."""
    try:
        return normalise_language(key) if kind is DiffKind.LANGUAGE else normalise_task(key)
    except ValueError:
        return key


class Registry:
    """Publish, resolve, list and retire diffs for any number of base models."""

    def __init__(self, redis_client: redis.Redis, blobs: BlobStore, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.redis = redis_client
        self.blobs = blobs
        self.keys = KeyLayout(namespace)
        self._scripts = Scripts(redis_client, self.keys)

    # -- writes ------------------------------------------------------------------------------

    @_redis_errors
    def publish(self, data: bytes, meta: DiffMetadata | None = None, *, gc_wait_s: float = 35.0) -> Entry:
        """Store ``data`` and index it as the next version of its (base, kind, key).

        ``meta`` defaults to the file's own header; when given it must agree with the header
        on base, kind and key (the bytes are what gets served, so they decide). Publishing
        bytes that are already live returns the existing entry: no new version, no event.

        Steps: blob put (durable) -> one Lua script that allocates the version with INCR and
        writes entry, version set, latest, index sets, counters and the change event. The
        script refuses while a retire of the same bytes is deleting the blob (GC fence), or
        if such a retire ran since we wrote the blob (fence generation changed); we then
        wait and write the blob again, so an entry never outlives its bytes.
        """
        header = read_metadata(data)
        if meta is None:
            meta = header
        else:
            mine = (meta.base_fingerprint, meta.kind, meta.key)
            theirs = (header.base_fingerprint, header.kind, header.key)
            if mine != theirs:
                raise errors.DiffError(
                    errors.BAD_METADATA,
                    f"metadata given to publish says {mine} but the file header says {theirs}",
                )
        did = blob_id(data)
        existing = self._get_or_none(did)
        if existing is not None:
            if not self.blobs.exists(did):  # its file was lost: publishing the bytes again restores it
                self.blobs.put(data)
            return existing

        fence_key, gen_key = self.keys.gc(did)
        fields = entry_fields(did, meta, len(data))
        deadline = time.monotonic() + gc_wait_s
        while True:
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(gen_key)
            pipe.exists(fence_key)
            gen, fenced = decode(pipe.execute())
            if not fenced:
                if self.blobs.put(data) != did:  # pragma: no cover - a broken BlobStore
                    raise errors.RegistryError("blob store returned an id that is not the sha256 of the bytes")
                fields["published_at"] = now()
                res = self._scripts.publish(fields, gen or "0")
                if res[0] == "ok":
                    return Entry.from_hash({**fields, "version": res[1]})
                if res[0] == "exists":  # a concurrent publisher of the same bytes won
                    return self.get(did)
                # 'gc': a retire of these bytes interfered; go round again.
            if time.monotonic() > deadline:
                raise errors.RegistryError(
                    f"diff {did} is being deleted by a retire and the deletion did not finish in {gc_wait_s:.0f} s"
                )
            time.sleep(_POLL_S)

    @_redis_errors
    def retire(self, diff_id: str) -> Entry:
        """Withdraw a diff: out of every index at once, then its blob is deleted.

        If it was the latest version, latest falls back to the highest remaining one; if no
        version remains, the key leaves ``languages()``/``tasks()`` (the version counter is
        kept, so a later publish continues the numbering). Counters bump and an event is
        published. Unknown id: :class:`errors.NotFound` and nothing changes.

        An id names exactly one entry (the bytes carry base, kind and key), so once the entry
        is gone nothing in this namespace references the blob and it is deleted. A blob store
        must therefore not be shared between namespaces.
        """
        entry = self.get(diff_id)  # NotFound for unknown or malformed ids
        token = uuid.uuid4().hex
        res = self._scripts.retire(diff_id, entry.base_fingerprint, entry.kind, entry.key, token)
        if res[0] == "missing":  # retired by someone else since our read
            raise errors.NotFound(f"no diff with id {diff_id}")
        retired = Entry.from_hash(pairs_to_dict(res[2]))
        fence_key, _ = self.keys.gc(diff_id)
        try:
            # Re-check the fence just before unlinking: if it expired (we stalled for 30 s), a
            # publisher may already rely on the blob, so leave it as a harmless orphan.
            if decode(self.redis.get(fence_key)) == token:
                self.blobs.delete(diff_id)
            else:  # pragma: no cover - needs a 30 s stall
                log.warning("GC fence for %s expired before the delete; leaving the blob", diff_id)
        except Exception:  # the index change stands; a leftover blob is only an orphan
            log.exception("retired %s but could not delete its blob", diff_id)
        finally:
            try:
                self._scripts.release(diff_id, token)
            except redis.RedisError:  # the fence's TTL releases it anyway
                log.warning("could not release the GC fence for %s; it expires in %d ms", diff_id, GC_FENCE_TTL_MS)
        return retired

    # -- reads -------------------------------------------------------------------------------

    def _get_or_none(self, diff_id: str) -> Entry | None:
        h = decode(self.redis.hgetall(self.keys.entry(diff_id)))
        return Entry.from_hash(h) if h else None

    def _members(self, base_fp: str, kind: DiffKind) -> list[str]:
        return sorted(decode(self.redis.smembers(self.keys.index(base_fp, kind))))

    @_redis_errors
    def get(self, diff_id: str) -> Entry:
        """The live entry with this id; :class:`errors.NotFound` otherwise."""
        try:
            check_id(diff_id)
        except InvalidBlobId as exc:
            raise errors.NotFound(f"no diff with id {diff_id!r}: {exc}") from None
        entry = self._get_or_none(diff_id)
        if entry is None:
            raise errors.NotFound(f"no diff with id {diff_id}")
        return entry

    @_redis_errors
    def exists(self, diff_id: str) -> bool:
        """Whether a live entry has this id."""
        return bool(self.redis.exists(self.keys.entry(diff_id)))

    @_redis_errors
    def is_empty(self) -> bool:
        """True when no base has a live diff (a fresh or a wiped Redis)."""
        return not self.redis.exists(self.keys.bases)

    @_redis_errors
    def resolve(self, base_fp: str, kind: DiffKind | str, key: str, version: int | None = None) -> Entry:
        """The entry for (base, kind, key) at ``version``, or the latest when None.

        NotFound messages name what does exist (the available keys, or the live versions),
        because "not found" alone sends users guessing.
        """
        kind = DiffKind(kind)
        key = _normalise_key(kind, key)
        for _ in range(5):  # retry if a concurrent retire removes what we just looked up
            if version is None:
                did = decode(self.redis.get(self.keys.latest(base_fp, kind, key)))
            else:
                ids = decode(self.redis.zrangebyscore(self.keys.versions(base_fp, kind, key), version, version))
                did = ids[0] if ids else None
            if did is None:
                break
            entry = self._get_or_none(did)
            if entry is not None:
                return entry
        raise errors.NotFound(self._missing_message(base_fp, kind, key, version))

    def _missing_message(self, base_fp: str, kind: DiffKind, key: str, version: int | None) -> str:
        live = decode(self.redis.zrange(self.keys.versions(base_fp, kind, key), 0, -1, withscores=True))
        if live and version is not None:
            versions = ", ".join(str(int(score)) for _, score in live)
            return f"{kind.value} {key!r} on base {base_fp} has no version {version}; live versions: {versions}"
        available = self._members(base_fp, kind)
        what = "languages" if kind is DiffKind.LANGUAGE else "tasks"
        have = ", ".join(available) if available else "none"
        return f"no {kind.value} diff {key!r} on base {base_fp}; available {what}: {have}"

    @_redis_errors
    def load_bytes(self, diff_id: str) -> bytes:
        """The diff file, checked against its id (a corrupted blob is an error, not a model)."""
        data = self.blobs.get(diff_id)
        if blob_id(data) != diff_id:
            raise errors.RegistryError(f"blob {diff_id} is corrupt: its bytes hash to {blob_id(data)}")
        return data

    @_redis_errors
    def list(self, base_fp: str, kind: DiffKind | str | None = None) -> list[Entry]:
        """Every live entry of a base (optionally one kind), sorted by kind, key, version."""
        kinds = list(DiffKind) if kind is None else [DiffKind(kind)]
        pipe = self.redis.pipeline(transaction=False)
        for k in kinds:
            pipe.smembers(self.keys.index(base_fp, k))
        key_sets = decode(pipe.execute())
        pipe = self.redis.pipeline(transaction=False)
        for k, keys in zip(kinds, key_sets):
            for key in sorted(keys):
                pipe.zrange(self.keys.versions(base_fp, k, key), 0, -1)
        ids = [i for group in decode(pipe.execute()) for i in group]
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.entry(i))
        entries = [Entry.from_hash(h) for h in decode(pipe.execute()) if h]
        return sorted(entries, key=lambda e: (e.kind.value, e.key, e.version))

    @_redis_errors
    def bases(self) -> list[str]:
        """Fingerprints with at least one live diff."""
        return sorted(decode(self.redis.smembers(self.keys.bases)))

    @_redis_errors
    def languages(self, base_fp: str) -> list[str]:
        """Languages with at least one live version on this base, sorted."""
        return self._members(base_fp, DiffKind.LANGUAGE)

    @_redis_errors
    def tasks(self, base_fp: str) -> list[dict[str, Any]]:
        """One dict per task with a live version: task, task_type, labels, latest_version (and
        its id), source_language (the language it was trained on, None for several or
        unknown) and dev_metrics (its recorded dev scores), all from the latest version,
        which is what a request would get."""
        out = []
        for task in self._members(base_fp, DiffKind.TASK):
            try:
                e = self.resolve(base_fp, DiffKind.TASK, task)
            except errors.NotFound:  # retired between the two reads
                continue
            out.append(
                {
                    "task": task,
                    "task_type": e.task_type.value if e.task_type else None,
                    "labels": list(e.labels),
                    "latest_version": e.version,
                    "id": e.id,
                    "source_language": e.language,
                    "dev_metrics": e.dev_metrics,
                }
            )
        return out

    @_redis_errors
    def pairs(self, base_fp: str) -> list[tuple[str | None, str | None]]:
        """Every servable (language, task) combination on this base.

        Any language composes with any task of the same base, so this is the full cross
        product, plus ``(language, None)`` for each language (language diff alone, e.g.
        fill-mask with its MLM head) and ``(None, task)`` for each task (task diff alone on
        the bare base: zero-shot transfer). Whether a language diff actually carries a head
        for standalone use is the service's call (``Entry.task_type``). Sorted with None
        first.
        """
        langs = self._members(base_fp, DiffKind.LANGUAGE)
        tasks = self._members(base_fp, DiffKind.TASK)
        combos: list[tuple[str | None, str | None]] = [(lang, None) for lang in langs]
        combos += [(None, t) for t in tasks]
        combos += [(lang, t) for lang in langs for t in tasks]
        return sorted(combos, key=lambda p: (p[0] or "", p[1] or ""))

    # -- change notification ------------------------------------------------------------------

    @_redis_errors
    def change_counter(self, base_fp: str | None = None) -> int:
        """Bumped by every publish and retire (globally, and per base). Replicas poll it and
        reload when it moves: cheaper than diffing listings, and robust to missed events
        (the pub/sub message on ``keys.channel`` is fire-and-forget, for outside listeners)."""
        return int(decode(self.redis.get(self.keys.changes(base_fp))) or 0)

    def ping(self) -> bool:
        """True when Redis answers; never raises (for health checks)."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False
