"""Lua scripts shared by several stores.

Each script touches exactly one key, so every atomic step stays valid on Redis Cluster.
"""

from redis.asyncio.client import Pipeline

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


def queue_eval(pipe: Pipeline, script: str, keys: list[str], args: list[str | int]) -> None:
    """Queue a script on a pipeline as EVAL.

    redis-py's Script objects prefix every pipeline execution with a SCRIPT EXISTS round trip; EVAL
    of these short scripts costs a few hundred bytes instead and cannot hit NOSCRIPT after a Redis
    restart.
    """
    pipe.eval(script, len(keys), *keys, *args)
