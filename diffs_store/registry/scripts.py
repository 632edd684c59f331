"""The registry's Lua scripts: every index change is one script, so readers never see a
half-published or half-retired diff, and concurrent publishers on any number of processes
get distinct, gap-free versions.

Each script's KEYS and ARGV order is a contract between its Lua text and the method that
calls it below; key names come from :class:`~diffs_store.registry.keys.KeyLayout`.
"""

from __future__ import annotations

from typing import Any

import redis

from diffs_store.metadata import DiffKind
from diffs_store.registry.entries import decode
from diffs_store.registry.keys import KeyLayout

GC_FENCE_TTL_MS = 30_000  # far longer than unlinking one file takes
GC_GEN_TTL_S = 86_400  # only has to outlive one publish attempt

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


class Scripts:
    """The three scripts registered on one client, called with their KEYS in order."""

    def __init__(self, client: redis.Redis, keys: KeyLayout) -> None:
        self.keys = keys
        self._publish = client.register_script(_PUBLISH_LUA)
        self._retire = client.register_script(_RETIRE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def publish(self, fields: dict[str, str], gc_gen: str) -> list[Any]:
        """Index the entry ``fields`` as the next version of its (base, kind, key).

        Replies ``['ok', version, counter]``; ``['exists']`` when the id is already live;
        ``['gc']`` when a retire of the same bytes holds the fence or ran since the caller
        read ``gc_gen`` (the caller writes the blob again and retries).
        """
        k = self.keys
        did, fp, kind, key = fields["id"], fields["base_fingerprint"], DiffKind(fields["kind"]), fields["key"]
        fence, gen = k.gc(did)
        keys = [k.entry(did), k.seq(fp, kind, key), k.versions(fp, kind, key), k.latest(fp, kind, key),
                k.index(fp, kind), k.bases, k.changes(), k.changes(fp), fence, gen]
        flat = [x for kv in fields.items() for x in kv]
        return decode(self._publish(keys=keys, args=[did, key, fp, gc_gen, k.channel, kind.value, *flat]))

    def retire(self, diff_id: str, fp: str, kind: DiffKind, key: str, token: str) -> list[Any]:
        """Remove an entry from every index and set the GC fence ``token``.

        Replies ``['ok', counter, flat entry hash]``, or ``['missing']`` when it is gone.
        """
        k = self.keys
        fence, gen = k.gc(diff_id)
        keys = [k.entry(diff_id), k.versions(fp, kind, key), k.latest(fp, kind, key), k.index(fp, kind),
                k.index(fp, DiffKind.LANGUAGE), k.index(fp, DiffKind.TASK), k.bases, k.changes(), k.changes(fp),
                fence, gen]
        args = [diff_id, key, fp, kind.value, k.channel, token, GC_FENCE_TTL_MS, GC_GEN_TTL_S]
        return decode(self._retire(keys=keys, args=args))

    def release(self, diff_id: str, token: str) -> None:
        """Drop the GC fence of ``diff_id`` if it is still ours."""
        self._release(keys=[self.keys.gc(diff_id)[0]], args=[token])
