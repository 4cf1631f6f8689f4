-- Prepended to scenarios that need unique ids: each thread gets `thread_id`, each request `counter`.
-- `thread_id` must stay a global: thread:set() writes the thread's globals, and a chunk-level
-- `local thread_id` would shadow it (every thread would then be thread 0 and reuse the same ids).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

