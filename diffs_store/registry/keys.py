"""Where the registry keeps what in Redis: every key name is built here and nowhere else.

Layout (``ns`` = namespace, default ``csft``; ``fp`` = base fingerprint ``sha256:...``;
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
    ns:gc:<id>:fence / ns:gc:<id>:gen    string GC fence token / fence generation (TTLs: scripts.py)
    channel ns:events                    pub/sub, one JSON message per publish/retire, for
                                                outside listeners (replicas poll the counters)

The Lua scripts build no key names themselves (all are passed as KEYS), but the keys of one
operation span several bases' worth of names, so this targets a standalone Redis, not Redis
Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffs_store.metadata import DiffKind

DEFAULT_NAMESPACE = "csft"


@dataclass(frozen=True)
class KeyLayout:
    """The key names of one registry namespace."""

    ns: str = DEFAULT_NAMESPACE

    @property
    def channel(self) -> str:
        """The pub/sub channel every publish and retire announces itself on."""
        return f"{self.ns}:events"

    @property
    def bases(self) -> str:
        return f"{self.ns}:bases"

    def changes(self, fp: str | None = None) -> str:
        """The change counter of one base, or the global one when ``fp`` is None."""
        return f"{self.ns}:changes" if fp is None else f"{self.base(fp)}:changes"

    def entry(self, diff_id: str) -> str:
        return f"{self.ns}:entry:{diff_id}"

    def base(self, fp: str) -> str:
        return f"{self.ns}:base:{fp}"

    def seq(self, fp: str, kind: DiffKind, key: str) -> str:
        return self._per_key(fp, "seq", kind, key)

    def versions(self, fp: str, kind: DiffKind, key: str) -> str:
        return self._per_key(fp, "versions", kind, key)

    def latest(self, fp: str, kind: DiffKind, key: str) -> str:
        return self._per_key(fp, "latest", kind, key)

    def index(self, fp: str, kind: DiffKind) -> str:
        """The set of keys (languages or tasks) with a live version on this base."""
        return f"{self.base(fp)}:{'languages' if kind is DiffKind.LANGUAGE else 'tasks'}"

    def gc(self, diff_id: str) -> tuple[str, str]:
        """The GC fence and fence-generation keys of one id."""
        return f"{self.ns}:gc:{diff_id}:fence", f"{self.ns}:gc:{diff_id}:gen"

    def _per_key(self, fp: str, what: str, kind: DiffKind, key: str) -> str:
        return f"{self.base(fp)}:{what}:{kind.value}:{key}"
