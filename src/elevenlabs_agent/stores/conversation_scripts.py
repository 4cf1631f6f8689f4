"""The Lua scripts of the conversation store (`stores/conversations.py` owns the keys and the channel).

Each write is one script so that the message, its counters, the listing indexes (on one server) and the
Pub/Sub announcement change in one atomic step. The channel name is passed in by the store that owns it.
"""

from __future__ import annotations


def _index_and_announce(channel: str) -> str:
    """Shared head of the writing scripts: with the three index keys given (one server), index the
    conversation in the same atomic step, then announce the change. ARGV[2] = conversationId; `seq`,
    the message count, when the caller has it (else it is read: each call into Redis costs it 1-2 µs)."""
    return (
        """
local function index_and_announce(score_ms, created, payload, seq)
  if #KEYS == 4 then
    if created then redis.call('ZADD', KEYS[2], 'NX', score_ms, ARGV[2]) end
    redis.call('ZADD', KEYS[3], 'GT', score_ms, ARGV[2])
    redis.call('ZADD', KEYS[4], seq or tonumber(redis.call('HGET', KEYS[1], 'seq') or '0'), ARGV[2])
  end
  redis.call('PUBLISH', '"""
        + channel
        + """', payload)
end
"""
    )


def create_script(channel: str) -> str:
    """KEYS: conversation[, createdAt index, lastAccessedAt index, messageCount index];
    ARGV: now, conversationId, agentId, metadata json, now (ms), update payload.
    Returns 1 if created, 0 if it existed. A record with this very createdAt (ms), agentId and metadata
    is this create sent again after its reply was lost with the connection (MuxRedis and redis-py
    resend): it answers 1 again rather than a 409 for a create that succeeded."""
    return (
        _index_and_announce(channel)
        + """
if redis.call('HSETNX', KEYS[1], 'createdAt', ARGV[1]) == 0 then
  local was = redis.call('HMGET', KEYS[1], 'createdAt', 'agentId', 'metadata')
  if was[1] == ARGV[1] and (was[2] or '') == ARGV[3] and was[3] == ARGV[4] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'conversationId', ARGV[2], 'lastAccessedAt', ARGV[1], 'metadata', ARGV[4], 'seq', 0)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'agentId', ARGV[3]) end
index_and_announce(ARGV[5], true, ARGV[6])
return 1
"""
    )


def upsert_message_script(channel: str) -> str:
    """KEYS: conversation[, the three indexes]; ARGV: now, conversationId, message json, taskId or '',
    max messages (0 = no cap), create-if-missing ('1'/'0'), now (ms), update payload, append id or ''.
    Returns the msg field written, '' when the conversation is full, or false when it does not exist
    and may not be created. An append id already in `appends` (the same append sent again after its
    reply was lost) returns the field it wrote and changes nothing: a message is stored once."""
    return (
        _index_and_announce(channel)
        + """
local created = redis.call('EXISTS', KEYS[1]) == 0
if created and ARGV[6] ~= '1' then return false end
-- A conversation created here holds only what this call writes: no appends, no task link, seq 0.
local appends = nil
if ARGV[9] ~= '' then
  appends = created and '' or (redis.call('HGET', KEYS[1], 'appends') or '')
  local at = string.find(appends, ARGV[9] .. '=', 1, true)
  if at then return string.match(appends, '=(%S+)', at) end
end
if ARGV[4] ~= '' and not created then
  local existing = redis.call('HGET', KEYS[1], 'task:' .. ARGV[4])
  if existing then
    redis.call('HSET', KEYS[1], existing, ARGV[3], 'lastAccessedAt', ARGV[1])
    index_and_announce(ARGV[7], created, ARGV[8])
    return existing
  end
end
local max = tonumber(ARGV[5])
if not created and max > 0 and tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') >= max then return '' end
local seq = created and 1 or redis.call('HINCRBY', KEYS[1], 'seq', 1)
local field = string.format('msg:%06d', seq)
local fields = {field, ARGV[3], 'lastAccessedAt', ARGV[1]}
if ARGV[4] ~= '' then fields[5], fields[6] = 'task:' .. ARGV[4], field end
if appends then
  -- "<id>=<field> ", newest first; the newest ~50 are kept (a resend follows its first copy at once).
  appends = ARGV[9] .. '=' .. field .. ' ' .. appends
  if #appends > 4096 then appends = string.sub(appends, 1, string.find(appends, ' ', 2048, true)) end
  fields[#fields + 1], fields[#fields + 2] = 'appends', appends
end
if created then
  redis.call('HSET', KEYS[1], 'conversationId', ARGV[2], 'createdAt', ARGV[1], 'metadata', '{}', 'seq', 1,
    unpack(fields))
else
  redis.call('HSET', KEYS[1], unpack(fields))
end
index_and_announce(ARGV[7], created, ARGV[8], seq)
return field
"""
    )
