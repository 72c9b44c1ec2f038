-- wrk script for the embedder benchmark: POST /embed with one phrase per request.
-- Usage: wrk -t T -c C -d Ds -s bench/embed.lua http://127.0.0.1:PORT -- BODIES_FILE T
-- BODIES_FILE has one JSON request body per line. Thread k of T sends lines k, k+T, k+2T, ...
-- so threads never send the same line: a file of distinct phrases gives all cache misses.
-- At the end one line "WRK_JSON {...}" carries the figures for bench_embedder.py.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   bodies = {}
   for line in io.lines(args[1]) do
      bodies[#bodies + 1] = line
   end
   nthreads = tonumber(args[2])
   position = id + 1
   wrk.method = "POST"
   wrk.path = "/embed"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Accept"] = "application/octet-stream"
end

function request()
   local body = bodies[position]
   position = position + nthreads
   if position > #bodies then
      wrapped = (wrapped or 0) + 1
      position = id + 1
   end
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   if status ~= 200 then
      bad = (bad or 0) + 1
   end
end

function done(summary, latency, requests)
   local errors = summary.errors
   local wrapped_total = 0
   for _, thread in ipairs(threads) do
      wrapped_total = wrapped_total + (thread:get("wrapped") or 0)
   end
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_s": %.6f, "errors": %d, "wrapped": %d, ' ..
      '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f}\n',
      summary.requests, summary.duration / 1e6,
      errors.connect + errors.read + errors.write + errors.status + errors.timeout,
      wrapped_total,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
