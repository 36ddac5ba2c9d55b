"""The smallest Redis ACL that pubtasks and Celery's Redis transport work with (pure).

``rules`` builds the ``ACL SETUSER`` rules from the configuration the worker runs
with: the commands pubtasks and kombu's Redis transport send (Lua scripts run
their commands under the same ACL), the keys under ``STATS_PREFIX``, Celery's queue
lists (kombu's priority lists share their name as a prefix), its bindings
(``_kombu.binding*``) and its unacked keys, and the Pub/Sub channels of remote
control (``celery.pidbox``) and of events (``celeryev``). ``pubtasks redis-acl``
prints them; ``PROBE`` is the script the worker runs at start (``startup.check_access``)
so that a user without one of them is refused in one line, naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: The commands, by who sends them (seen with MONITOR on a worker with -B, and every
#: ``pubtasks`` command, and read in the source).
COMMANDS = (
    # connection (redis-py's HELLO; its CLIENT SETINFO of Redis 7.2 may be refused: it
    # goes on without)
    "hello", "ping", "select",
    # scripts: pubtasks' counting is Lua (EVALSHA, loaded with SCRIPT LOAD)
    "evalsha", "eval", "script|load", "script|exists",
    # transactions and replication (kombu's restore; WAIT and INFO with Sentinel)
    "multi", "exec", "discard", "watch", "unwatch", "wait", "info", "time",
    # strings and bitmaps
    "get", "set", "mget", "del", "exists", "expire", "pexpire", "pttl", "incr",
    "setbit", "getbit", "bitcount",
    # hashes
    "hget", "hset", "hsetnx", "hdel", "hexists", "hgetall", "hmget", "hkeys", "hvals",
    "hincrby", "hincrbyfloat", "hlen",
    # lists (Celery's queues: LPUSH, BRPOP)
    "lpush", "rpush", "brpop", "llen", "lrange", "ltrim", "lrem",
    # sets (kombu's bindings) and sorted sets
    "sadd", "srem", "smembers", "zadd", "zrem", "zrange", "zrangebyscore",
    "zremrangebyscore", "zscore", "zcard",
    # Pub/Sub (remote control and events)
    "publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe",
)  # fmt: skip

#: What kombu's Redis transport calls its unacked keys, unless the transport options say.
UNACKED = {
    "unacked_key": "unacked",
    "unacked_index_key": "unacked_index",
    "unacked_mutex_key": "unacked_mutex",
}


def queues(conf: Mapping[str, Any]) -> list[str]:
    """Celery's queues a tick's task may wait in: the default, and each entry's own."""
    found = [str(conf.get("task_default_queue") or "celery")]
    for spec in (conf.get("beat_schedule") or {}).values():
        queue = (spec.get("options") or {}).get("queue") if isinstance(spec, dict) else None
        if queue is not None and str(getattr(queue, "name", queue)) not in found:
            found.append(str(getattr(queue, "name", queue)))
    return found


def keys(stats_prefix: str, conf: Mapping[str, Any]) -> list[str]:
    """The key patterns: pubtasks' prefix, Celery's queues, bindings and unacked keys."""
    options = conf.get("broker_transport_options") or {}
    # kombu 5.7's binding tables, their deadlines and permanent sets: _kombu.binding*
    patterns = [f"{stats_prefix}*", *(f"{q}*" for q in queues(conf)), "_kombu.binding*"]
    patterns += [str(options.get(k, default)) for k, default in UNACKED.items()]
    if conf.get("worker_enable_remote_control", True):
        patterns.append("*.reply.celery.pidbox*")  # remote control's replies (and mingle's)
    return patterns


def channels(db: int, conf: Mapping[str, Any]) -> list[str]:
    """The Pub/Sub channels (kombu prefixes a fanout's with ``/db.``)."""
    found = [f"/{db}.celeryev/*", f"/{db}.celeryev/worker.*"]
    if conf.get("worker_enable_remote_control", True):
        found.insert(0, f"/{db}.celery.pidbox")
    return found


def rules(stats_prefix: str, conf: Mapping[str, Any], db: int) -> list[str]:
    """The rules after ``ACL SETUSER NAME``: none but these."""
    return [
        "reset",
        "on",
        "-@all",
        *(f"+{c}" for c in COMMANDS),
        *(f"~{k}" for k in keys(stats_prefix, conf)),
        *(f"&{c}" for c in channels(db, conf)),
    ]


def setuser(user: str, rules_: Iterable[str], password: str = "PASSWORD") -> str:
    """One ``ACL SETUSER`` line (``>PASSWORD``: replace it, or give ``#`` and its SHA-256)."""
    return " ".join(["ACL", "SETUSER", user, *rules_, f">{password}"])


#: The probe's Lua: each command on a key of its kind under the prefix (KEYS[1]);
#: returns the first refusal ("COMMAND key: error") or nothing. It deletes what it
#: wrote. (Each of Celery's keys is probed before, outside: ``Store.refusal``.)
PROBE = """
local k = KEYS[1]
local s, h, l, z, b, t = k .. ':s', k .. ':h', k .. ':l', k .. ':z', k .. ':b', k .. ':t'
local calls = {
  {'SET', s, '1'}, {'GET', s}, {'MGET', s}, {'EXISTS', s}, {'INCR', s},
  {'EXPIRE', s, '60'}, {'PEXPIRE', s, '60000'}, {'PTTL', s},
  {'SETBIT', b, '1', '1'}, {'GETBIT', b, '1'}, {'BITCOUNT', b},
  {'HSET', h, 'a', '1'}, {'HSETNX', h, 'b', '1'}, {'HGET', h, 'a'}, {'HMGET', h, 'a'},
  {'HEXISTS', h, 'a'}, {'HGETALL', h}, {'HKEYS', h}, {'HVALS', h}, {'HLEN', h},
  {'HINCRBY', h, 'a', '1'}, {'HINCRBYFLOAT', h, 'a', '1'}, {'HDEL', h, 'a'},
  {'LPUSH', l, '1'}, {'RPUSH', l, '1'}, {'LLEN', l}, {'LRANGE', l, '0', '0'},
  {'LTRIM', l, '0', '-1'}, {'LREM', l, '0', '2'}, {'BRPOP', l, '1'},
  {'SADD', t, '1'}, {'SMEMBERS', t}, {'SREM', t, '1'},
  {'ZADD', z, '1', 'a'}, {'ZSCORE', z, 'a'}, {'ZCARD', z}, {'ZRANGE', z, '0', '0'},
  {'ZRANGEBYSCORE', z, '0', '1'}, {'ZREMRANGEBYSCORE', z, '5', '6'}, {'ZREM', z, 'a'},
  {'TIME'}, {'DEL', s, h, l, z, b, t},
}
local refused = nil
for _, call in ipairs(calls) do
  local reply = redis.pcall(unpack(call))
  -- Redis 7.0 says "The user executing the script can't run this command", 7.2 NOPERM
  if type(reply) == 'table' and reply.err and (string.find(reply.err, 'NOPERM', 1, true)
      or string.find(reply.err, "can't run this command", 1, true)) then
    refused = call[1] .. ' ' .. (call[2] or '') .. ': ' .. reply.err
    break
  end
end
redis.pcall('DEL', s, h, l, z, b, t)
return refused
"""


def probe_keys(stats_prefix: str, conf: Mapping[str, Any]) -> list[str]:
    """KEYS of ``PROBE``: a key under the prefix, then one of each of Celery's patterns."""
    celery = [p.replace("*", "pubtasks-acl-probe") for p in keys(stats_prefix, conf)[1:]]
    return [f"{stats_prefix}acl-probe", *celery]
