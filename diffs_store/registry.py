"""The registry: which diffs exist, under which (base, kind, key, version), and which is latest.

Bytes live in a :class:`~diffs_store.blobs.BlobStore`; Redis holds the index. Every index
change is a single Lua script, so readers never see a half-published or half-retired diff,
and concurrent publishers on any number of processes get distinct, gap-free versions.

Ordering rules that keep the two stores consistent:

* publish writes the blob first (durably), then the index. A crash in between leaves an
  orphan blob, never an index entry without bytes.
* retire removes the index entry first, then the blob. While the blob is being deleted a
  short-lived *GC fence* is held in Redis; a concurrent publish of the very same bytes waits
  for it and re-writes the blob, so the delete cannot strand the new entry (see
  :meth:`Registry.publish`).

Key layout (``ns`` = namespace, default ``csft``; ``fp`` = base fingerprint ``sha256:...``;
``kind`` = ``language``/``task``; ``key`` = the language or task name)::

    ns:entry:<id>                        hash   one live diff (fields: see Entry, + labels and metrics JSON, status)
    ns:base:<fp>:seq:<kind>:<key>        string last version handed out (INCR; never reset, so a
                                                (key, version) pair always names the same bytes)
    ns:base:<fp>:versions:<kind>:<key>   zset   live ids scored by version
    ns:base:<fp>:latest:<kind>:<key>     string id of the highest live version
    ns:base:<fp>:languages               set    languages with at least one live version
    ns:base:<fp>:tasks                   set    tasks with at least one live version
    ns:base:<fp>:changes                 string change counter for this base
    ns:bases                             set    fingerprints with at least one live diff
    ns:changes                           string global change counter
    ns:gc:<id>:fence / ns:gc:<id>:gen    string GC fence token (30 s TTL) / fence generation (1 day TTL)
    channel ns:events                    pub/sub, one JSON message per publish/retire

Scripts build no key names themselves (all are passed as KEYS), but keys of one operation
span several bases' worth of names, so this targets a standalone Redis, not Redis Cluster.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, ParamSpec, TypeVar

import redis

from diffs_store import errors
from diffs_store.blobs import BlobStore, InvalidBlobId, blob_id, check_id
from diffs_store.format import read_metadata
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType, normalise_language, normalise_task
from diffs_store.redis_connection import RedisUnavailable, describe

log = logging.getLogger(__name__)

STATUS_LIVE = "live"
GC_FENCE_TTL_MS = 30_000  # far longer than unlinking one file takes
GC_GEN_TTL_S = 86_400  # only has to outlive one publish attempt
_POLL_S = 0.05

T = TypeVar("T")
P = ParamSpec("P")


# -- Lua ---------------------------------------------------------------------------------

# KEYS: 1 entry, 2 seq, 3 versions, 4 latest, 5 index set, 6 bases, 7 changes, 8 base changes,
#       9 gc fence, 10 gc gen
# ARGV: 1 id, 2 key, 3 base fp, 4 expected gc gen, 5 channel, 6 kind, 7.. field/value pairs
_PUBLISH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
if redis.call('EXISTS', KEYS[9]) == 1 then
  return {'gc'}
end
local gen = redis.call('GET', KEYS[10])
if not gen then gen = '0' end
if gen ~= ARGV[4] then
  return {'gc'}
end
local version = redis.call('INCR', KEYS[2])
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'version', version, unpack(fields))
redis.call('ZADD', KEYS[3], version, ARGV[1])
redis.call('SET', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('SADD', KEYS[6], ARGV[3])
local counter = redis.call('INCR', KEYS[7])
redis.call('INCR', KEYS[8])
redis.call('PUBLISH', ARGV[5], cjson.encode({event = 'publish', id = ARGV[1], base_fingerprint = ARGV[3],
  kind = ARGV[6], key = ARGV[2], version = version, counter = counter}))
return {'ok', version, counter}
"""

# KEYS: 1 entry, 2 versions, 3 latest, 4 index set, 5 languages, 6 tasks, 7 bases, 8 changes,
#       9 base changes, 10 gc fence, 11 gc gen
# ARGV: 1 id, 2 key, 3 base fp, 4 kind, 5 channel, 6 fence token, 7 fence ttl ms, 8 gen ttl s
_RETIRE_LUA = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return {'missing'}
end
local version = 0
for i = 1, #fields, 2 do
  if fields[i] == 'version' then version = tonumber(fields[i + 1]) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then
  local top = redis.call('ZREVRANGE', KEYS[2], 0, 0)
  if #top == 0 then redis.call('DEL', KEYS[3]) else redis.call('SET', KEYS[3], top[1]) end
end
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[2])
  if redis.call('SCARD', KEYS[5]) == 0 and redis.call('SCARD', KEYS[6]) == 0 then
    redis.call('SREM', KEYS[7], ARGV[3])
  end
end
redis.call('INCR', KEYS[11])
redis.call('EXPIRE', KEYS[11], ARGV[8])
redis.call('SET', KEYS[10], ARGV[6], 'PX', ARGV[7])
local counter = redis.call('INCR', KEYS[8])
redis.call('INCR', KEYS[9])
redis.call('PUBLISH', ARGV[5], cjson.encode({event = 'retire', id = ARGV[1], base_fingerprint = ARGV[3],
  kind = ARGV[4], key = ARGV[2], version = version, counter = counter}))
return {'ok', counter, fields}
"""

# KEYS: 1 gc fence. ARGV: 1 token. Release only our own fence.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# -- entries -----------------------------------------------------------------------------


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

    @property
    def dev_metrics(self) -> dict[str, Any]:
        """The recorded dev scores (``metrics["dev"]``): per source language for a task diff,
        masked-LM loss and perplexity for a language diff; {} when none were recorded."""
        dev = self.metrics.get("dev")
        return dict(dev) if isinstance(dev, Mapping) else {}
    tags: tuple[str, ...] = ()

    @property
    def demo(self) -> bool:
        """Installed by the server's demo (service.demo), not uploaded by a user."""
        return "demo" in self.tags

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


# -- helpers -----------------------------------------------------------------------------


def _s(v: Any) -> Any:
    """Decode Redis replies, so a client with ``decode_responses=False`` works too."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [_s(x) for x in v]
    if isinstance(v, dict):
        return {_s(k): _s(x) for k, x in v.items()}
    return v


def _pairs_to_dict(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2]))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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


# -- registry ----------------------------------------------------------------------------


class Registry:
    """Publish, resolve, list and retire diffs for any number of base models."""

    def __init__(self, redis_client: redis.Redis, blobs: BlobStore, namespace: str = "csft") -> None:
        self.redis = redis_client
        self.blobs = blobs
        self.ns = namespace
        self.channel = f"{namespace}:events"
        self._publish_script = redis_client.register_script(_PUBLISH_LUA)
        self._retire_script = redis_client.register_script(_RETIRE_LUA)
        self._release_script = redis_client.register_script(_RELEASE_LUA)

    # -- key names ---------------------------------------------------------------------------

    def _entry_key(self, diff_id: str) -> str:
        return f"{self.ns}:entry:{diff_id}"

    def _base(self, fp: str) -> str:
        return f"{self.ns}:base:{fp}"

    def _kkey(self, fp: str, what: str, kind: DiffKind, key: str) -> str:
        return f"{self._base(fp)}:{what}:{kind.value}:{key}"

    def _index_key(self, fp: str, kind: DiffKind) -> str:
        return f"{self._base(fp)}:{'languages' if kind is DiffKind.LANGUAGE else 'tasks'}"

    def _gc_keys(self, diff_id: str) -> tuple[str, str]:
        return f"{self.ns}:gc:{diff_id}:fence", f"{self.ns}:gc:{diff_id}:gen"

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
            return existing

        fp, kind, key = meta.base_fingerprint, meta.kind, meta.key
        fence_key, gen_key = self._gc_keys(did)
        fields = {
            "id": did,
            "kind": kind.value,
            "key": key,
            "language": meta.language or "",
            "task": meta.task or "",
            "task_type": meta.task_type.value if meta.task_type else "",
            "labels": json.dumps(list(meta.labels)),
            "metrics": json.dumps(meta.metrics),
            "size": str(len(data)),
            "nnz": str(meta.nnz),
            "base_model": meta.base_model,
            "base_fingerprint": fp,
            "created_at": meta.created_at,
            "tags": json.dumps(list(meta.tags)),
            "status": STATUS_LIVE,
        }
        keys = [
            self._entry_key(did),
            self._kkey(fp, "seq", kind, key),
            self._kkey(fp, "versions", kind, key),
            self._kkey(fp, "latest", kind, key),
            self._index_key(fp, kind),
            f"{self.ns}:bases",
            f"{self.ns}:changes",
            f"{self._base(fp)}:changes",
            fence_key,
            gen_key,
        ]
        deadline = time.monotonic() + gc_wait_s
        while True:
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(gen_key)
            pipe.exists(fence_key)
            gen, fenced = _s(pipe.execute())
            if not fenced:
                if self.blobs.put(data) != did:  # pragma: no cover - a broken BlobStore
                    raise errors.RegistryError("blob store returned an id that is not the sha256 of the bytes")
                fields["published_at"] = _now()
                flat = [x for kv in fields.items() for x in kv]
                res = _s(self._publish_script(keys=keys, args=[did, key, fp, gen or "0", self.channel, kind.value, *flat]))
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
        fp, kind, key = entry.base_fingerprint, entry.kind, entry.key
        fence_key, gen_key = self._gc_keys(diff_id)
        token = uuid.uuid4().hex
        keys = [
            self._entry_key(diff_id),
            self._kkey(fp, "versions", kind, key),
            self._kkey(fp, "latest", kind, key),
            self._index_key(fp, kind),
            self._index_key(fp, DiffKind.LANGUAGE),
            self._index_key(fp, DiffKind.TASK),
            f"{self.ns}:bases",
            f"{self.ns}:changes",
            f"{self._base(fp)}:changes",
            fence_key,
            gen_key,
        ]
        args = [diff_id, key, fp, kind.value, self.channel, token, GC_FENCE_TTL_MS, GC_GEN_TTL_S]
        res = _s(self._retire_script(keys=keys, args=args))
        if res[0] == "missing":  # retired by someone else since our read
            raise errors.NotFound(f"no diff with id {diff_id}")
        retired = Entry.from_hash(_pairs_to_dict(res[2]))
        try:
            # Re-check the fence just before unlinking: if it expired (we stalled for 30 s), a
            # publisher may already rely on the blob, so leave it as a harmless orphan.
            if _s(self.redis.get(fence_key)) == token:
                self.blobs.delete(diff_id)
            else:  # pragma: no cover - needs a 30 s stall
                log.warning("GC fence for %s expired before the delete; leaving the blob", diff_id)
        except Exception:  # the index change stands; a leftover blob is only an orphan
            log.exception("retired %s but could not delete its blob", diff_id)
        finally:
            try:
                self._release_script(keys=[fence_key], args=[token])
            except redis.RedisError:  # the fence's TTL releases it anyway
                log.warning("could not release the GC fence for %s; it expires in %d ms", diff_id, GC_FENCE_TTL_MS)
        return retired

    # -- reads -------------------------------------------------------------------------------

    def _get_or_none(self, diff_id: str) -> Entry | None:
        h = _s(self.redis.hgetall(self._entry_key(diff_id)))
        return Entry.from_hash(h) if h else None

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
        return bool(self.redis.exists(self._entry_key(diff_id)))

    @_redis_errors
    def is_empty(self) -> bool:
        """True when no base has a live diff (a fresh or a wiped Redis)."""
        return not self.redis.exists(f"{self.ns}:bases")

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
                did = _s(self.redis.get(self._kkey(base_fp, "latest", kind, key)))
            else:
                ids = _s(self.redis.zrangebyscore(self._kkey(base_fp, "versions", kind, key), version, version))
                did = ids[0] if ids else None
            if did is None:
                break
            entry = self._get_or_none(did)
            if entry is not None:
                return entry
        raise errors.NotFound(self._missing_message(base_fp, kind, key, version))

    def _missing_message(self, base_fp: str, kind: DiffKind, key: str, version: int | None) -> str:
        live = _s(self.redis.zrange(self._kkey(base_fp, "versions", kind, key), 0, -1, withscores=True))
        if live and version is not None:
            versions = ", ".join(str(int(score)) for _, score in live)
            return f"{kind.value} {key!r} on base {base_fp} has no version {version}; live versions: {versions}"
        available = sorted(_s(self.redis.smembers(self._index_key(base_fp, kind))))
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
            pipe.smembers(self._index_key(base_fp, k))
        key_sets = _s(pipe.execute())
        pipe = self.redis.pipeline(transaction=False)
        for k, keys in zip(kinds, key_sets):
            for key in sorted(keys):
                pipe.zrange(self._kkey(base_fp, "versions", k, key), 0, -1)
        ids = [i for group in _s(pipe.execute()) for i in group]
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self._entry_key(i))
        entries = [Entry.from_hash(h) for h in _s(pipe.execute()) if h]
        return sorted(entries, key=lambda e: (e.kind.value, e.key, e.version))

    @_redis_errors
    def bases(self) -> list[str]:
        """Fingerprints with at least one live diff."""
        return sorted(_s(self.redis.smembers(f"{self.ns}:bases")))

    @_redis_errors
    def languages(self, base_fp: str) -> list[str]:
        """Languages with at least one live version on this base, sorted."""
        return sorted(_s(self.redis.smembers(self._index_key(base_fp, DiffKind.LANGUAGE))))

    @_redis_errors
    def tasks(self, base_fp: str) -> list[dict[str, Any]]:
        """One dict per task with a live version: task, task_type, labels, latest_version (and
        its id), source_language (the language it was trained on, None for several or
        unknown) and dev_metrics (its recorded dev scores), all from the latest version,
        which is what a request would get."""
        out = []
        for task in sorted(_s(self.redis.smembers(self._index_key(base_fp, DiffKind.TASK)))):
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
                    "demo": e.demo,
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
        langs = self.languages(base_fp)
        tasks = sorted(_s(self.redis.smembers(self._index_key(base_fp, DiffKind.TASK))))
        combos: list[tuple[str | None, str | None]] = [(lang, None) for lang in langs]
        combos += [(None, t) for t in tasks]
        combos += [(lang, t) for lang in langs for t in tasks]
        return sorted(combos, key=lambda p: (p[0] or "", p[1] or ""))

    # -- change notification ------------------------------------------------------------------

    @_redis_errors
    def change_counter(self, base_fp: str | None = None) -> int:
        """Bumped by every publish and retire (globally, and per base). Replicas poll it and
        reload when it moves: cheaper than diffing listings, and robust to missed events."""
        key = f"{self.ns}:changes" if base_fp is None else f"{self._base(base_fp)}:changes"
        return int(_s(self.redis.get(key)) or 0)

    @_redis_errors
    def subscribe(self, timeout: float = 5.0) -> "ChangeFeed":
        """A live feed of change events; subscribed before this returns (so nothing
        published afterwards is missed)."""
        return ChangeFeed(self.redis, self.channel, timeout=timeout)

    def listen_changes(self, stop: threading.Event | None = None, poll_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """Change events until ``stop`` is set (checked every ``poll_s``).

        Subscribes *before* returning (a plain generator would only subscribe on the first
        ``next()`` and miss what happens in between). Pub/sub is fire-and-forget, so a
        replica should also poll :meth:`change_counter` to catch up after a disconnect.
        """
        return _drain(self.subscribe(), stop, poll_s)

    def ping(self) -> bool:
        """True when Redis answers; never raises (for health checks)."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False


def _drain(feed: "ChangeFeed", stop: threading.Event | None, poll_s: float) -> Iterator[dict[str, Any]]:
    with feed:
        while stop is None or not stop.is_set():
            msg = feed.get(timeout=poll_s)
            if msg is not None:
                yield msg


class ChangeFeed:
    """A pub/sub subscription to a registry's events, decoded from JSON."""

    def __init__(self, client: redis.Redis, channel: str, timeout: float = 5.0) -> None:
        self._pubsub = client.pubsub()
        self._pubsub.subscribe(channel)
        deadline = time.monotonic() + timeout
        while True:  # wait for the confirmation, so the subscription is live on return
            msg = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and _s(msg["type"]) == "subscribe":
                break
            if time.monotonic() > deadline:
                self.close()
                raise RedisUnavailable(f"no confirmation of the subscription to {channel} in {timeout} s")

    def get(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """The next event, or None when none arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and _s(msg["type"]) == "message":
                return json.loads(_s(msg["data"]))
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> "ChangeFeed":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
