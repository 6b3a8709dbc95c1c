-- wrk script for POST /v1/route: rotates through distinct prompts (so the embedding cache, if
-- on, is not what is measured) and counts responses by status; `done` prints one JSON line.
local prompts = {
  "Where is my order #%d? It should have arrived by now.",
  "My package %d arrived damaged and the warranty expired, how do I get a refund?",
  "Write a Python function that returns the %dth Fibonacci number",
  "Translate 'order number %d is ready' into French",
  "How do I reset my password? I tried %d times",
  "What is %d divided by 7, rounded to two decimals?",
  "Can you recommend a restaurant near street %d?",
  "Summarize the following %d words of meeting notes",
}
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  n = 0
end

function request()
  n = n + 1
  local p = string.format(prompts[(n % #prompts) + 1], n * 7919 + id)
  local body = '{"prompt": "' .. p .. '"}'
  return wrk.format("POST", "/v1/route", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for status, c in pairs(t:get("statuses")) do
      counts[status] = (counts[status] or 0) + c
    end
  end
  local parts = {}
  for status, c in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, c))
  end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "socket_errors": %d, "timeouts": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout,
    table.concat(parts, ", ")))
end
