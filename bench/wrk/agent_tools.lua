-- POST /agent-tools with the original body shape (SPEC §4); each request names its own conversation
-- (<BENCH_CONVERSATIONS or conv>-<thread>-<n>: scenarios sharing one service use different prefixes).
local conversations = os.getenv("BENCH_CONVERSATIONS") or "conv"

function request()
  counter = counter + 1
  local body = '{"agent_id":"agent_bench","session_id":"s-bench","tool_name":"code_task",' ..
               '"tool_args":{"prompt":"Add a health check"},"conversation_id":"' .. conversations .. '-' ..
               thread_id .. '-' .. counter .. '"}'
  return wrk.format("POST", "/agent-tools", {["Content-Type"] = "application/json",
                                             ["X-Webhook-Secret"] = os.getenv("BENCH_WEBHOOK_SECRET")}, body)
end
