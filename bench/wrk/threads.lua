-- Prepended to scenarios that need unique ids: each thread gets `thread_id`, each request `counter`.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

