-- kv.lua: the wrk (4.x) request generator used by bench/ravel-bench (and by bench/ravel-migrate to pre-load).
--
-- One script for both systems under test. Every request names a key "key%08d" drawn from a
-- fixed key space; puts carry a value of BENCH_VALUE_SIZE random alphanumeric bytes.
--
--   BENCH_SYSTEM      etcd  - POST /v3/kv/put {"key":b64,"value":b64}, POST /v3/kv/range {"key":b64}
--                             (the v3 JSON gateway; a range without "serializable" is linearizable)
--                     ravel - PUT /v1/kv/{key} with the value as a JSON string, GET /v1/kv/{key}
--   BENCH_OP          put | get | load   (load = puts walking the key space in order, see below)
--   BENCH_KEYS        size of the key space                      (default 100000)
--   BENCH_VALUE_SIZE  value size in bytes                        (default 100)
--   BENCH_THREADS     wrk threads (-t); load splits the key space between them   (default 1)
--
-- put and get pick keys uniformly at random. load makes thread t send keys t, t+T, t+2T, ...
-- and wraps around, so the whole key space is written once after about BENCH_KEYS requests;
-- the caller stops wrk (SIGINT) once the store reports every key.
--
-- When wrk ends, done() prints one line "BENCH_RESULT {json}" with the request count, the
-- duration, wrk's error counters and the latency percentiles in microseconds.

local function env_number(name, default)
  local v = tonumber(os.getenv(name) or "")
  if v == nil then return default end
  return v
end

local SYSTEM = os.getenv("BENCH_SYSTEM") or "ravel"
local OP = os.getenv("BENCH_OP") or "get"
local KEYS = env_number("BENCH_KEYS", 100000)
local VALUE_SIZE = env_number("BENCH_VALUE_SIZE", 100)
local THREADS = env_number("BENCH_THREADS", 1)

if SYSTEM ~= "etcd" and SYSTEM ~= "ravel" then error("BENCH_SYSTEM must be etcd or ravel") end
if OP ~= "put" and OP ~= "get" and OP ~= "load" then error("BENCH_OP must be put, get or load") end

-- Base64 (RFC 4648, padded), for the etcd gateway's byte fields.
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local function sym(shift) local k = math.floor(n / shift) % 64 + 1; return ALPHABET:sub(k, k) end
    out[#out + 1] = sym(262144) .. sym(4096) .. (b and sym(64) or "=") .. (c and sym(1) or "=")
  end
  return table.concat(out)
end

-- Main state: remember the threads so that each gets its index and done() can read them.
local threads = {}
function setup(thread)
  thread:set("thread_index", #threads)
  threads[#threads + 1] = thread
end

-- Per-thread state (each wrk thread runs its own copy of this script).
local VALUE_POOL = 32
local values = {}
local sent = 0

local function random_value()
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
  local buf = {}
  for i = 1, VALUE_SIZE do
    local k = math.random(1, #chars)
    buf[i] = chars:sub(k, k)
  end
  return table.concat(buf)
end

function init(args)
  math.randomseed(os.time() + 1000003 * (thread_index or 0))
  for i = 1, VALUE_POOL do values[i] = random_value() end
end

local function next_index()
  sent = sent + 1
  if OP == "load" then
    local t = thread_index or 0
    local per_thread = math.ceil((KEYS - t) / THREADS)
    return t + ((sent - 1) % per_thread) * THREADS
  end
  return math.random(0, KEYS - 1)
end

local JSON = { ["Content-Type"] = "application/json" }

local function etcd_request(key, put)
  if put then
    local v = values[math.random(1, VALUE_POOL)]
    return wrk.format("POST", "/v3/kv/put", JSON,
      '{"key":"' .. base64(key) .. '","value":"' .. base64(v) .. '"}')
  end
  return wrk.format("POST", "/v3/kv/range", JSON, '{"key":"' .. base64(key) .. '"}')
end

local function ravel_request(key, put)
  if put then
    local v = values[math.random(1, VALUE_POOL)]
    return wrk.format("PUT", "/v1/kv/" .. key, JSON, '"' .. v .. '"')
  end
  return wrk.format("GET", "/v1/kv/" .. key, nil, nil)
end

function request()
  local key = string.format("key%08d", next_index())
  local put = OP ~= "get"
  if SYSTEM == "etcd" then return etcd_request(key, put) end
  return ravel_request(key, put)
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({ 50, 90, 99, 99.9 }) do p[#p + 1] = string.format('"%s":%d', q, latency:percentile(q)) end
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"stdev":%.1f,"percentiles":{%s}}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency.stdev, table.concat(p, ",")))
end
