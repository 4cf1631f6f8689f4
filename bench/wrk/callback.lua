-- POST /callback with cursor-runner's completion body; each request completes a different
-- pre-seeded task (<run>-cb-<thread>-<n>), authenticated with that task's secret.
local run_id = os.getenv("BENCH_RUN")

function request()
  counter = counter + 1
  local id = string.format("%s-cb-%d-%d", run_id, thread_id, counter)
  local body = '{"success":true,"requestId":"' .. id .. '","repository":"r","command":["cursor-agent"],' ..
               '"output":"done","error":null,"exitCode":0,"duration":"1000ms","timestamp":"2026-01-01T00:00:00.000Z"}'
  return wrk.format("POST", "/callback", {["Content-Type"] = "application/json",
                                          ["X-Cursor-Runner-Secret"] = os.getenv("BENCH_TASK_SECRET")}, body)
end
