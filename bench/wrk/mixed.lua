-- Mixed traffic in a fixed cycle of 20 requests per thread: 9 POST /agent-tools, 9 POST /callback
-- (alternating; each callback completes a different pre-seeded task <run>-mix-<thread>-<n>), then
-- 2 GET /health: 45% / 45% / 10%.
local callbacks = 0
local run_id = os.getenv("BENCH_RUN")

function request()
  counter = counter + 1
  local slot = counter % 20
  if slot >= 18 then
    return wrk.format("GET", "/health")
  end
  if slot % 2 == 0 then
    local body = '{"agent_id":"agent_bench","session_id":"s-bench","tool_name":"code_task",' ..
                 '"tool_args":{"prompt":"Add a health check"},"conversation_id":"conv-mix-' ..
                 thread_id .. '-' .. counter .. '"}'
    return wrk.format("POST", "/agent-tools", {["Content-Type"] = "application/json",
                                               ["X-Webhook-Secret"] = os.getenv("BENCH_WEBHOOK_SECRET")}, body)
  end
  callbacks = callbacks + 1
  local id = string.format("%s-mix-%d-%d", run_id, thread_id, callbacks)
  local body = '{"success":true,"requestId":"' .. id .. '","repository":"r","command":["cursor-agent"],' ..
               '"output":"done","error":null,"exitCode":0,"duration":"1000ms","timestamp":"2026-01-01T00:00:00.000Z"}'
  return wrk.format("POST", "/callback", {["Content-Type"] = "application/json",
                                          ["X-Cursor-Runner-Secret"] = os.getenv("BENCH_TASK_SECRET")}, body)
end
