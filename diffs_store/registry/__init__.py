"""The registry: which diffs exist, under which (base, kind, key, version), and which is latest.

``operations`` (the :class:`Registry`: publish, retire, resolve, list), ``scripts`` (the Lua
scripts that make every index change atomic), ``keys`` (the Redis key layout) and
``entries`` (the :class:`Entry` record and its Redis-hash codec).
"""

from diffs_store.registry.entries import STATUS_LIVE, Entry
from diffs_store.registry.keys import DEFAULT_NAMESPACE, KeyLayout
from diffs_store.registry.operations import Registry

__all__ = ["DEFAULT_NAMESPACE", "STATUS_LIVE", "Entry", "KeyLayout", "Registry"]
