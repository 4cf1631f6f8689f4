"""A callback's result stored, recorded and its live session looked up in one script (one server).

On one server (or Sentinel) a callback needs a single round trip: the task's atomic completion (secret
check, idempotency) and, when it accepted the result, the recording (the conversation's tool message,
the outbox entry, then `recordedAt`) and a look at the conversation's live session run as one script.
The conversation, outbox and session keys are named from the task's conversationId inside the script,
which only one server allows: a Redis Cluster keeps `TaskStore.complete` followed by a recording
`Batch` (the keys live in other slots). The script is the stores' own scripts, each wrapped in a Lua
function, so both ways write exactly the same thing.

Being one script, the recording can no longer be cut short after the completion (Redis runs a
script whole; under OOM it refuses it before it starts), and a resend after a lost reply finds the
task completed: a duplicate, as for the two-step way (redis/mux.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from elevenlabs_agent.redis.clients import is_cluster
from elevenlabs_agent.stores import conversations, lua, outbox, sessions, tasks
from elevenlabs_agent.stores.conversation_scripts import upsert_message_script
from elevenlabs_agent.stores.outbox import Outbox
from elevenlabs_agent.stores.tasks import Completion, TaskStore

# KEYS: task, the three conversation indexes. ARGV: the six of tasks.COMPLETE, task id, recordedAt,
# the message, event and announcement as JSON around the members the script writes (`lua.around`),
# score (ms), outbox maxlen and ttl, then the key prefixes of conversations, event streams, pending
# results and sessions. Returns what tasks.COMPLETE returns; when accepted, followed by '1'/'0' (a
# live session exists) and its pushUrl ('' without one).
_COMPLETE_AND_RECORD = (
    "#!lua flags=no-cluster\n"
    + lua.function("complete", tasks.COMPLETE)
    + lua.function("upsert", upsert_message_script(conversations.UPDATES_CHANNEL))
    + lua.function("publish", outbox.PUBLISH)
    + """
local done = complete({KEYS[1]}, {unpack(ARGV, 1, 6)})
if done[1] ~= 'accepted' then return done end
local id, task_id = done[2], ARGV[7]
local quoted = cjson.encode(id)
local message = ARGV[9] .. '"toolName":' .. cjson.encode(done[3]) .. ',"toolArgs":' .. done[4] .. ARGV[10]
local announcement = ARGV[13] .. '"conversationId":' .. quoted .. ARGV[14]
upsert({ARGV[18] .. id, KEYS[2], KEYS[3], KEYS[4]}, {ARGV[5], id, message, task_id, 0, '1', ARGV[15], announcement, ''})
local tag = '{' .. id .. '}'
local event = ARGV[11] .. '"conversationId":' .. quoted .. ARGV[12]
publish({ARGV[19] .. tag, ARGV[20] .. tag}, {task_id, event, ARGV[16], ARGV[17]})
-- The task was completed above in this same script: it exists (no need for HSET_IF_EXISTS's check).
redis.call('HSET', KEYS[1], 'recordedAt', ARGV[8])
local session = ARGV[21] .. id
if redis.call('EXISTS', session) == 0 then return {done[1], done[2], done[3], done[4], done[5], '0', ''} end
return {done[1], done[2], done[3], done[4], done[5], '1', redis.call('HGET', session, 'pushUrl') or ''}
"""
)


@dataclass(frozen=True)
class Recorded:
    """A completion; once accepted, its result is recorded and `push_url` tells the live session:
    None without one, '' for a relay session, its push bridge's URL otherwise."""

    completion: Completion
    push_url: str | None = None


class ResultRecorder:
    def __init__(self, tasks: TaskStore, outbox: Outbox) -> None:
        self.redis: Redis = tasks.redis
        # One server only: the script names keys in other hash slots (the module docstring).
        self.available = not is_cluster(self.redis)
        self.outbox = outbox
        self.script = lua.Script(self.redis, _COMPLETE_AND_RECORD)

    async def complete_and_record(
        self,
        task_id: str,
        completion: list[str],
        *,
        message: dict[str, Any],
        event: dict[str, Any],
        reason: str,
        now: str,
        recorded_at: str,
    ) -> Recorded:
        """`completion`: `tasks.completion_args`. `message` goes into the conversation with the task's
        toolName and toolArgs (written over its own adjacent `toolName` and `toolArgs` members), `event`
        into the outbox with the task's `conversationId` (likewise); subscribers learn it as `reason`."""
        args: list[Any] = [*completion, task_id, recorded_at]
        args += [*lua.around(message, "toolName", 2), *lua.around(event, "conversationId")]
        args += [*conversations.announcement_around(reason)]
        args += [conversations.score_ms(now), self.outbox.maxlen, self.outbox.ttl]
        args += [conversations.KEY_PREFIX, outbox.STREAM_PREFIX, outbox.PENDING_PREFIX, sessions.KEY_PREFIX]
        reply = await self.script([tasks.key(task_id), *conversations.INDEX_KEYS], args)
        done = tasks.completion_of(reply)
        if done.outcome != "accepted":
            return Recorded(done)
        return Recorded(done, reply[6] if reply[5] == "1" else None)
