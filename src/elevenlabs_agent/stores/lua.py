"""Lua scripts shared by several stores, and what composes them.

Each script here touches exactly one key, so every atomic step stays valid on Redis Cluster. The
one-step scripts of stores/results.py and stores/tool_calls.py (one server only) call the stores'
scripts as Lua functions (`function`), and write JSON whose members only the script knows (`around`).
"""

import hashlib
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from elevenlabs_agent.redis.clients import is_cluster

# HSET field/value pairs and set the TTL in one atomic step, so a key is never left without its TTL.
# KEYS[1]; ARGV[1] = ttl seconds; ARGV[2..] = field, value, ...
HSET_WITH_TTL = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# HSET only if the key still exists: writing to an expired key would resurrect it without a TTL.
# KEYS[1]; ARGV = field, value, ...
HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def function(name: str, script: str) -> str:
    """`script` as a local Lua function `name(KEYS, ARGV)`: its parameters shadow the globals, so the
    script reads the keys and arguments it is given, and its `return` returns from the function."""
    return f"local function {name}(KEYS, ARGV)\n{script}\nend\n"


def around(obj: dict[str, Any], first: str, count: int = 1) -> tuple[str, str]:
    """`obj` as JSON in two parts around its `count` members from `first` on, which a script writes
    in between: '{…,' (or '{') and ',…}' (or '}'), so that the members keep their order."""
    names = list(obj)
    at = names.index(first)
    before = {name: obj[name] for name in names[:at]}
    after = {name: obj[name] for name in names[at + count :]}
    head = orjson.dumps(before).decode()[:-1] + ("," if before else "")
    tail = ("," if after else "") + orjson.dumps(after).decode()[1:]
    return head, tail


class Script:
    """A script run as EVALSHA, loaded when the server answers NOSCRIPT (a restarted or other server):
    redis-py's `register_script` without its per-call `isinstance(client, Pipeline)`, a Protocol check
    that cost about 1.5% of a callback's CPU (py-spy, issue 16)."""

    __slots__ = ("redis", "sha", "source")

    def __init__(self, redis: Redis, source: str) -> None:
        self.redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
        except NoScriptError:
            await self.redis.script_load(self.source)
            return await self.redis.execute_command(*command)  # type: ignore[no-untyped-call]


class OneKeyScript:
    """A script on one key, run as EVALSHA on one server and as EVAL on a Redis Cluster.

    On a cluster redis-py answers NOSCRIPT by loading the script on every master at once: a script
    first used while any master is down would then fail for keys on the healthy masters too (a
    callback recorded on a live master would be refused because another one is down)."""

    def __init__(self, redis: Redis, source: str) -> None:
        self.redis = redis
        self.source = source
        self.cluster = is_cluster(redis)
        self.script = Script(redis, source)

    async def __call__(self, key: str, args: list[Any]) -> Any:
        if self.cluster:
            return await self.redis.eval(self.source, 1, key, *args)
        return await self.script([key], args)
