-- wrk script of the API benchmark (bench/bench_api.py): POST one JSON body per request to PATH.
-- Usage: wrk -t T -c C -d Ds -s bench/predict.lua http://127.0.0.1:PORT -- BODIES_FILE T PATH
-- BODIES_FILE has one JSON request body per line. Thread k of T sends lines k, k+T, k+2T, ...
-- and cycles through the file: the benchmark wants a small set of repeated phrases.
-- Every answer outside 200-299 is counted ("non2xx"), so errors = socket errors + non2xx.
-- "issued" counts requests handed to a socket: issued - responses is what was still in flight
-- when wrk stopped (the server may have answered it; wrk no longer reads it).
-- At the end one line "WRK_JSON {...}" carries the figures.

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
   wrk.method = "POST"
   wrk.path = args[3]
   wrk.headers["Content-Type"] = "application/json"
   position = id + 1
   issued, responses, non2xx = 0, 0, 0
end

function request()
   local body = bodies[position]
   position = position + nthreads
   if position > #bodies then
      position = position - #bodies
   end
   issued = issued + 1
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   responses = responses + 1
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local issued_total, responses_total, non2xx_total = 0, 0, 0
   for _, thread in ipairs(threads) do
      issued_total = issued_total + (thread:get("issued") or 0)
      responses_total = responses_total + (thread:get("responses") or 0)
      non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_s": %.6f, "socket_errors": %d, "non2xx": %d, ' ..
      '"issued": %d, "responses": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, ' ..
      '"max_ms": %.3f}\n',
      summary.requests, summary.duration / 1e6,
      e.connect + e.read + e.write + e.timeout, non2xx_total,
      issued_total, responses_total,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000))
end
