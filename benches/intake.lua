-- wrk script: POST a firing Alertmanager notification with a new fingerprint
-- every request, so every request commits a new incident (no dedup shortcut).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  token = os.getenv("REMEDY_BENCH_TOKEN") or "bench-token"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
  run = os.time()
end

local template = [[{"receiver":"remedy","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"DatabaseIdleInTransaction","instance":"db-1:5432","severity":"warning","n":"%s"},"annotations":{"summary":"3+ connections idle in transaction"},"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus:9090/graph","fingerprint":"%s"}],"groupLabels":{"alertname":"DatabaseIdleInTransaction"},"commonLabels":{"alertname":"DatabaseIdleInTransaction"},"commonAnnotations":{},"externalURL":"http://alertmanager:9093","version":"4","groupKey":"{}:{alertname=\"DatabaseIdleInTransaction\"}","truncatedAlerts":0}
]]

function request()
  counter = counter + 1
  local fp = string.format("%04x%04x%08x", run % 65536, tid, counter)
  return wrk.format(nil, "/v1/alertmanager", nil, string.format(template, fp, fp))
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("requests/s: %.0f\n", summary.requests / (summary.duration / 1e6)))
  io.write(string.format("p50: %.2f ms  p99: %.2f ms  max: %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
  io.write(string.format("requests: %d  non-2xx or socket errors: %d\n", summary.requests, errors))
end
