"""A tool call's conversation resolved and its task recorded in one script (one server).

The tool webhook names ElevenLabs' ids, not ours: our conversation id is the first of them that has an
alias (stores/aliases.py), else the conversation id the webhook carries. On one server (or Sentinel)
one script resolves it, creates the pending task, stores the pending tool message (indexes and
Pub/Sub announcement included) and notes the call on the live session, so a tool call costs one Redis
round trip before cursor-runner is called. The conversation and session keys are named from the
resolved id inside the script, which only one server allows: a Redis Cluster resolves first and
records in a second round trip. The script is the stores' own scripts wrapped as Lua functions
(`lua.function`), so both ways write the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson
from redis.asyncio import Redis

from elevenlabs_agent.redis.clients import is_cluster
from elevenlabs_agent.stores import aliases, conversations, lua, sessions, tasks
from elevenlabs_agent.stores.conversation_scripts import upsert_message_script
from elevenlabs_agent.stores.conversations import ConversationStore, Upserted
from elevenlabs_agent.stores.tasks import NewTask, TaskStore

# KEYS: task, the three conversation indexes, then the alias of each external id in order. ARGV: the
# fallback conversation id ('' for none), now, the message JSON, task id, max messages, score (ms),
# the announcement as JSON around its conversationId (`lua.around`), the key prefixes of conversations
# and sessions, then the task's creation ARGV (lua.HSET_WITH_TTL; its conversationId is written here).
# Returns {} when no conversation id was found (nothing written), else the id, '1' if it came from an
# alias ('0' if not) and the upsert's reply ('' when the conversation is full).
_RESOLVE_AND_RECORD = (
    "#!lua flags=no-cluster\n"
    + lua.function("create", lua.HSET_WITH_TTL)
    + lua.function("upsert", upsert_message_script(conversations.UPDATES_CHANNEL))
    + lua.function("note", lua.HSET_IF_EXISTS)
    + """
local id, aliased = nil, '0'
for i = 5, #KEYS do
  id = redis.call('GET', KEYS[i])
  if id then aliased = '1' break end
end
if not id then id = ARGV[1] end
if id == '' then return {} end
local task = {unpack(ARGV, 11)}
for i = 2, #task, 2 do
  if task[i] == 'conversationId' then task[i + 1] = id end
end
create({KEYS[1]}, task)
local announcement = ARGV[7] .. '"conversationId":' .. cjson.encode(id) .. ARGV[8]
local written = upsert({ARGV[9] .. id, KEYS[2], KEYS[3], KEYS[4]},
  {ARGV[2], id, ARGV[3], ARGV[4], ARGV[5], '1', ARGV[6], announcement, ''})
note({ARGV[10] .. id}, {'lastTaskId', ARGV[4], 'lastToolCallAt', ARGV[2]})
return {id, aliased, written or ''}
"""
)


@dataclass(frozen=True)
class Recorded:
    """Where a tool call went: our conversation id (None: none found, nothing written), whether an
    alias named it, and what storing its pending message did."""

    conversation_id: str | None
    aliased: bool = False
    written: Upserted = "stored"


class ToolCallRecorder:
    def __init__(self, tasks: TaskStore, conversations: ConversationStore) -> None:
        self.redis: Redis = tasks.redis
        self.tasks = tasks
        self.conversations = conversations
        # One server only: the script names keys in other hash slots (the module docstring).
        self.available = not is_cluster(self.redis)
        self.script = lua.Script(self.redis, _RESOLVE_AND_RECORD)

    async def resolve_and_record(
        self,
        external_ids: list[str],
        fallback: str | None,
        task: NewTask,
        *,
        message: dict[str, Any],
        reason: str,
    ) -> Recorded:
        """What `AliasStore.resolve`, then `TaskStore.queue_create`, `ConversationStore.queue_upsert_message`
        (create, capped) and `SessionStore.queue_note_task` do, in one step."""
        # The script writes the conversation id it resolves; `task.conversation_id` is not read.
        creation = self.tasks.creation_args(replace(task, conversation_id=""))
        task_id, now = task.task_id, task.now
        args: list[Any] = [fallback or "", now, orjson.dumps(message).decode(), task_id]
        args += [self.conversations.max_messages, conversations.score_ms(now)]
        args += [*conversations.announcement_around(reason)]
        args += [conversations.KEY_PREFIX, sessions.KEY_PREFIX, *creation]
        keys = [tasks.key(task_id), *conversations.INDEX_KEYS, *(aliases.key(i) for i in external_ids)]
        reply = await self.script(keys, args)
        if not reply:
            return Recorded(None)
        return Recorded(reply[0], reply[1] == "1", "stored" if reply[2] else "full")
