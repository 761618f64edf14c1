"""The server-side (Lua) scripts of the redis engine: storing an entry within its cache's
bound, a hit that updates the entry's score, and a lease released only by its owner."""

from __future__ import annotations

from typing import Any

__all__ = ["scripts_of"]

# The score of KEYS[1] in the index KEYS[2]: its hit count under lfu, else the server's time
# in microseconds (store time for fifo, last use for lru). Shared by the scripts below.
_SCORE = """
local function score(policy)
  if policy == 'lfu' then
    redis.call('ZINCRBY', KEYS[2], 1, KEYS[1])
  else
    local now = redis.call('TIME')
    redis.call('ZADD', KEYS[2], now[1] * 1000000 + now[2], KEYS[1])
  end
end
"""

# Writing an entry and keeping the cache's index (a sorted set of its keys) in one atomic
# step. The index bounds one cache on a shared server, which the server's own eviction
# (maxmemory, across every key) cannot do: past `limit` entries, those with the lowest
# score leave. The score is the store time (fifo, lru: hits move it too) or the hit count
# (lfu). A new key makes room before it is added, so it is never its own victim.
_STORE = (
    _SCORE
    + """
local limit = tonumber(ARGV[3])
if limit > 0 and not redis.call('ZSCORE', KEYS[2], KEYS[1]) then
  local excess = redis.call('ZCARD', KEYS[2]) - limit + 1
  if excess > 0 then
    local old = redis.call('ZPOPMIN', KEYS[2], excess)
    for i = 1, #old, 2 do redis.call('UNLINK', old[i]) end
  end
end
local px = tonumber(ARGV[2])
if px > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
if limit > 0 then
  score(ARGV[4])
end
return 1
"""
)

# A hit under lru or lfu also updates the key's score: one round trip, one script.
_TOUCH = (
    _SCORE
    + """
local value = redis.call('GET', KEYS[1])
if value and redis.call('ZSCORE', KEYS[2], KEYS[1]) then
  score(ARGV[1])
end
return value
"""
)

# A lease is released only by its owner: a holder that outlived its lease must not
# release the lease another process took since.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def scripts_of(client: Any) -> dict[str, Any]:
    """The scripts registered on `client` (sync or asyncio), by name."""
    sources = (("store", _STORE), ("touch", _TOUCH), ("release", _RELEASE))
    return {name: client.register_script(source) for name, source in sources}
