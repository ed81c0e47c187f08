-- End-to-end tests of switchyard-mock, the local VerifyMeNow mock
-- (scripts/mock_api/): each test starts the real binary on port 0, reads
-- the port from its `listening on` line, and talks to it with the curl
-- command line. They check the endpoints, fault injection and its shares,
-- determinism per (seed, version, request_id), hangs, 500 concurrent
-- requests, bad options and stopping on a signal. Every mock and curl
-- started in the background is killed after each test, whatever happened.
--
-- The binary is $SY_MOCK if set, else $SY_BUILD_DIR/switchyard-mock.
local json = require "dkjson"

local build_dir = os.getenv("SY_BUILD_DIR")
local MOCK = os.getenv("SY_MOCK") or (build_dir and build_dir ..
  "/switchyard-mock")
assert(MOCK, "set SY_BUILD_DIR (ctest does) or SY_MOCK")

-- ---- shell helpers ----------------------------------------------------

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function exec(cmd)
  local ok, how, code = os.execute(cmd)
  if how == "signal" then
    return 128 + code
  end
  return code or (ok and 0 or 1)
end

local function capture(cmd)
  local f = assert(io.popen(cmd, "r"))
  local s = f:read("a")
  f:close()
  return (s:gsub("\n$", ""))
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local ok_sys, system = pcall(require, "system")
local function now()
  if ok_sys and system.gettime then
    return system.gettime()
  end
  return tonumber(capture("date +%s.%N"))
end

local function sleep(s)
  exec(string.format("sleep %.3f", s))
end

-- Calls fn until it returns a true value or `timeout` seconds pass.
local function poll(timeout, interval, fn)
  local deadline = now() + timeout
  repeat
    local v = fn()
    if v then
      return v
    end
    sleep(interval)
  until now() > deadline
  return nil
end

local function decode(text)
  local v, _, err = json.decode(text or "", 1, nil)
  assert(v ~= nil, "not JSON (" .. tostring(err) .. "): " ..
    tostring(text):sub(1, 300))
  return v
end

local function has(haystack, needle, what)
  assert(haystack:find(needle, 1, true), string.format(
    "%s: expected to find %q in:\n%s", what or "output", needle, haystack))
end

-- ---- per-test scratch dir and background processes ----------------------

local dir -- this test's scratch directory
local started = {} -- background processes: { pid, match }
local nfile = 0

local function path(name)
  nfile = nfile + 1
  return string.format("%s/%d-%s", dir, nfile, name)
end

-- Whether pid is still running `match` (not a reused pid).
local function alive(p)
  local cmdline = read("/proc/" .. p.pid .. "/cmdline")
  return cmdline ~= nil and cmdline:find(p.match, 1, true) ~= nil
end

-- Starts a command in the background. The handle has pid (of the command
-- itself: sh execs it), out and err files, and rcfile, written with the exit
-- code when it ends (128 + n when killed by signal n).
local function spawn(argv, match)
  local base = path("bg")
  local p = { pidfile = base .. ".pid", out = base .. ".out",
              err = base .. ".err", rcfile = base .. ".rc", match = match }
  local words = {}
  for i, a in ipairs(argv) do
    words[i] = q(a)
  end
  local inner = "sh -c 'echo $$ > \"$1\"; shift; exec \"$@\"' sh " ..
      q(p.pidfile) .. " " .. table.concat(words, " ")
  local cmd = "( " .. inner .. " </dev/null >" .. q(p.out) .. " 2>" ..
      q(p.err) .. "; echo $? > " .. q(p.rcfile .. ".tmp") .. "; mv " ..
      q(p.rcfile .. ".tmp") .. " " .. q(p.rcfile) ..
      " ) </dev/null >/dev/null 2>&1 &"
  assert(exec(cmd) == 0, "could not spawn: " .. cmd)
  p.pid = poll(10, 0.01, function()
    local s = read(p.pidfile)
    return s and tonumber(s:match("%d+"))
  end)
  assert(p.pid, "the background process never wrote its pid")
  started[#started + 1] = p
  return p
end

local function exit_code(p)
  if not p.rc then
    local s = read(p.rcfile)
    p.rc = s and tonumber(s:match("%d+"))
  end
  return p.rc
end

local function wait_exit(p, timeout)
  return poll(timeout, 0.02, function()
    return exit_code(p)
  end)
end

local function signal(p, sig)
  return exec("kill -" .. sig .. " " .. p.pid .. " 2>/dev/null")
end

-- Starts the mock with these options on port 0 and waits (at most 10 s)
-- for its `listening on` line: the handle gets port and url.
local function start_mock(opts)
  local argv = { MOCK, "--port", "0" }
  for _, o in ipairs(opts or {}) do
    argv[#argv + 1] = o
  end
  local m = spawn(argv, MOCK)
  local port = poll(10, 0.01, function()
    local out = read(m.out) or ""
    return out:match("^listening on 127%.0%.0%.1:(%d+)\n")
  end)
  assert(port, "the mock did not start: rc " .. tostring(exit_code(m)) ..
    "\nstdout: " .. (read(m.out) or "") .. "\nstderr: " .. (read(m.err) or ""))
  m.port = tonumber(port)
  m.url = "http://127.0.0.1:" .. port
  return m
end

-- One request with curl: returns HTTP status (0 when none), body, curl's
-- exit code, seconds taken. opts: method, data, max_time.
local function request(url, opts)
  opts = opts or {}
  local body = path("body")
  local cmd = "curl -s -o " .. q(body) .. " -w '%{http_code}'"
  if opts.max_time then
    cmd = cmd .. " --max-time " .. opts.max_time
  end
  if opts.method then
    cmd = cmd .. " -X " .. opts.method
  end
  if opts.data then
    cmd = cmd .. " -H 'Content-Type: application/json' --data-binary " ..
        q(opts.data)
  end
  cmd = cmd .. " " .. q(url)
  local t0 = now()
  local f = assert(io.popen(cmd, "r"))
  local code = f:read("a")
  local _, _, rc = f:close()
  return tonumber(code) or 0, read(body) or "", rc, now() - t0
end

local function get_json(m, p)
  local status, body = request(m.url .. p)
  assert.are.equal(200, status, p .. ": " .. body)
  return decode(body)
end

local function verify(m, version, t, opts)
  opts = opts or {}
  opts.data = json.encode(t)
  return request(m.url .. "/" .. version .. "/verify", opts)
end

-- Sends one POST per id to /VERSION/verify, `parallel` at a time (over one
-- or more curl processes, each at most 250), and returns { [id] = { code =
-- HTTP status or 0, exit = curl exit code, body = text or nil } } and the
-- seconds taken. opts: parallel (default 100), max_time, processes,
-- body(id) -> extra fields.
local function batch(m, version, ids, opts)
  opts = opts or {}
  local procs = opts.processes or 1
  local per = math.ceil(#ids / procs)
  local outdir = path("batch")
  assert(exec("mkdir -p " .. q(outdir)) == 0)
  local cmds = {}
  for k = 1, procs do
    local lines = {}
    for i = (k - 1) * per + 1, math.min(k * per, #ids) do
      local id = ids[i]
      local t = { request_id = id, document = "passport-" .. id,
                  subject = "subject-" .. id }
      if opts.body then
        for key, v in pairs(opts.body(id)) do
          t[key] = v
        end
      end
      if #lines > 0 then
        lines[#lines + 1] = "next"
      end
      -- In a curl config file a quoted value takes \" and \\ escapes.
      local data = json.encode(t):gsub("\\", "\\\\"):gsub('"', '\\"')
      lines[#lines + 1] = string.format('url = "%s/%s/verify"', m.url, version)
      lines[#lines + 1] = 'header = "Content-Type: application/json"'
      lines[#lines + 1] = 'data-binary = "' .. data .. '"'
      lines[#lines + 1] = string.format('output = "%s/%d.json"', outdir, i)
      lines[#lines + 1] = string.format(
        'write-out = "%d %%{http_code} %%{exitcode}\\n"', i)
      if opts.max_time then
        lines[#lines + 1] = "max-time = " .. opts.max_time
      end
    end
    local cfg = string.format("%s/%d.cfg", outdir, k)
    write(cfg, table.concat(lines, "\n") .. "\n")
    local par = math.min(250, math.ceil((opts.parallel or 100) / procs))
    cmds[#cmds + 1] = string.format(
      "curl -s --parallel --parallel-immediate --parallel-max %d -K %s " ..
      "> %s/%d.codes 2>/dev/null", par, q(cfg), q(outdir), k)
  end
  local t0 = now()
  -- All curls at once, then wait for every one.
  assert(exec("( " .. table.concat(cmds, " & ") .. " & wait )") == 0)
  local took = now() - t0
  local res = {}
  for k = 1, procs do
    for line in (read(string.format("%s/%d.codes", outdir, k)) or "")
        :gmatch("[^\n]+") do
      local i, code, rc = line:match("^(%d+) (%d+) (%d+)$")
      assert(i, "unexpected curl output: " .. line)
      i = tonumber(i)
      res[ids[i]] = { code = tonumber(code), exit = tonumber(rc),
                      body = read(string.format("%s/%d.json", outdir, i)) }
    end
  end
  for _, id in ipairs(ids) do
    assert(res[id], "curl reported nothing for request " .. id)
  end
  return res, took
end

local function ids(prefix, n)
  local t = {}
  for i = 1, n do
    t[i] = prefix .. i
  end
  return t
end

-- Counts of results by HTTP status (0 = no answer).
local function tally(res)
  local t = {}
  for _, r in pairs(res) do
    t[r.code] = (t[r.code] or 0) + 1
  end
  return t
end

-- Asserts that count is within `sigmas` binomial standard deviations of
-- n * p.
local function within(count, n, p, sigmas, what)
  local mean, sd = n * p, math.sqrt(n * p * (1 - p))
  local lo, hi = mean - sigmas * sd, mean + sigmas * sd
  assert(count >= lo and count <= hi, string.format(
    "%s: %d of %d, expected %.1f +- %.1f (p = %g)", what, count, n, mean,
    sigmas * sd, p))
end

-- ---------------------------------------------------------------------
describe("switchyard-mock", function()
  before_each(function()
    assert(exec("test -x " .. q(MOCK)) == 0, MOCK .. " is not built " ..
      "(the switchyard-mock target, scripts/mock_api)")
    dir = capture('mktemp -d "${TMPDIR:-/tmp}/sy-mock.XXXXXX"')
    assert(dir ~= "" and exec("test -d " .. q(dir)) == 0, "mktemp -d failed")
    started, nfile = {}, 0
  end)

  -- Whatever a test did or failed to do: kill what it started, by pid.
  after_each(function()
    for _, p in ipairs(started) do
      if not exit_code(p) and alive(p) then
        signal(p, "KILL")
        wait_exit(p, 10)
      end
    end
    started = {}
    if dir and dir:match("/sy%-mock%.") then
      exec("rm -rf " .. q(dir))
    end
  end)

  it("serves health, v1 and v2 answers, 404, 405 and 400", function()
    local m = start_mock({ "--seed", "7" })
    assert.are.same({ ok = true }, get_json(m, "/health"))

    for _, v in ipairs({ "v1", "v2" }) do
      local status, body = verify(m, v, { request_id = "r-1",
        document = "passport-123", subject = "alice" })
      assert.are.equal(200, status, body)
      local r = decode(body)
      assert.are.equal(v, r.version)
      assert.are.equal("r-1", r.request_id)
      assert.are.equal("boolean", type(r.verified))
      assert.is_true(r.score >= 0 and r.score < 1, body)
      assert.are.equal(r.score >= 0.2, r.verified, body)
    end

    local status, body = request(m.url .. "/v3/verify", { data = "{}" })
    assert.are.equal(404, status)
    assert.are.equal("not_found", decode(body).error)
    status, body = request(m.url .. "/v1/verify")
    assert.are.equal(405, status)
    assert.are.equal("method_not_allowed", decode(body).error)
    status, body = request(m.url .. "/v1/verify", { data = "not json" })
    assert.are.equal(400, status)
    assert.are.equal("bad_request", decode(body).error)
    status, body = verify(m, "v2", { request_id = 17 })
    assert.are.equal(400, status)
    has(decode(body).message, "request_id")

    -- Without request_id the answer still comes, request_id null.
    status, body = verify(m, "v1", { subject = "bob" })
    assert.are.equal(200, status, body)
    has(body, '"request_id":null', "body")
  end)

  it("answers 5xx to every request at error rate 1, on that version only",
    function()
      local m = start_mock({ "--v1-error-rate", "1" })
      local seen = {}
      for i = 1, 20 do
        local status, body = verify(m, "v1", { request_id = "e" .. i })
        assert.is_true(status == 500 or status == 503, status .. " " .. body)
        local r = decode(body)
        assert.are.equal("injected_fault", r.error)
        assert.are.equal(status, r.status)
        assert.are.equal("e" .. i, r.request_id)
        seen[status] = true
      end
      assert.is_true(seen[500] and seen[503], "both 500 and 503 occur")
      local status = verify(m, "v2", { request_id = "e1" })
      assert.are.equal(200, status)
    end)

  it("gives the same answer to the same request_id, twice and across two " ..
    "processes with the same seed, in any order", function()
      local opts = { "--seed", "42", "--v1-error-rate", "0.3",
                     "--v2-error-rate", "0.3", "--v1-latency-ms", "5",
                     "--v1-latency-jitter-ms", "3" }
      local a, b = start_mock(opts), start_mock(opts)
      local list = ids("same-", 60)
      local reversed = {}
      for i = #list, 1, -1 do
        reversed[#reversed + 1] = list[i]
      end
      for _, v in ipairs({ "v1", "v2" }) do
        local ra1 = batch(a, v, list, { parallel = 30 })
        local ra2 = batch(a, v, reversed, { parallel = 7 })
        local rb = batch(b, v, reversed, { parallel = 60 })
        local codes = {}
        for _, id in ipairs(list) do
          assert.is_truthy(ra1[id].body, id)
          assert.are.equal(ra1[id].code, ra2[id].code, id)
          assert.are.equal(ra1[id].body, ra2[id].body, id)
          assert.are.equal(ra1[id].code, rb[id].code, id)
          assert.are.equal(ra1[id].body, rb[id].body, id)
          codes[ra1[id].code] = true
        end
        assert.is_true(codes[200] and (codes[500] or codes[503]),
          "a mix of outcomes")
      end
      -- v1 and v2 draw independently for the same id.
      local s1, b1 = verify(a, "v1", { request_id = "same-1" })
      local s2, b2 = verify(a, "v2", { request_id = "same-1" })
      assert.is_false(s1 == s2 and b1:gsub("v1", "v2") == b2)
    end)

  it("gives a subject one verdict from both versions, but for the " ..
    "--v2-disagree-rate share of subjects, the same ones in any process",
    function()
      local function verdicts(m, version, prefix)
        local got = {}
        local same_subject = function(id)
          return { subject = "subject-" .. id:match("(%d+)$") }
        end
        for _, r in pairs(batch(m, version, ids(prefix, 400),
          { body = same_subject })) do
          local b = decode(r.body)
          assert.are.equal(200, r.code, r.body)
          assert.are.equal(b.score >= 0.2, b.verified, r.body)
          got[b.request_id:match("(%d+)$")] = b
        end
        return got
      end
      -- which of subject-1..400 v2 judges otherwise than v1; each asked
      -- twice, under other request ids (a verdict is the subject's)
      local function disagreements(m)
        local v1, v2 = verdicts(m, "v1", "a-"), verdicts(m, "v2", "b-")
        local again = verdicts(m, "v2", "c-")
        local set, n, verified = {}, 0, 0
        for k, a in pairs(v1) do
          assert.are.equal(v2[k].score, again[k].score, "subject-" .. k)
          assert.are.equal(v2[k].verified, again[k].verified)
          verified = verified + (a.verified and 1 or 0)
          if a.verified ~= v2[k].verified then
            set[k], n = true, n + 1
          else
            assert.are.equal(a.score, v2[k].score, "subject-" .. k)
          end
        end
        return set, n, verified
      end
      local none, n0, verified = disagreements(start_mock({ "--seed", "5" }))
      assert.are.equal(0, n0)
      assert.is_nil(next(none))
      within(verified, 400, 0.8, 5, "verified subjects")
      local low, nl = disagreements(start_mock({ "--seed", "5",
        "--v2-disagree-rate", "0.1" }))
      local high, nh = disagreements(start_mock({ "--seed", "5",
        "--v2-disagree-rate", "0.3" }))
      local same = disagreements(start_mock({ "--seed", "5",
        "--v2-disagree-rate", "0.3" }))
      within(nl, 400, 0.1, 5, "disagreements at 0.1")
      within(nh, 400, 0.3, 5, "disagreements at 0.3")
      assert.are.same(high, same)
      -- raising the rate only adds subjects
      for k in pairs(low) do
        assert.is_true(high[k], "subject-" .. k)
      end
      print(string.format("# 400 subjects: %d verified; v2 disagrees on " ..
        "%d at 0.1, %d at 0.3", verified, nl, nh))
    end)

  it("changes which requests fail with the seed, not their share",
    function()
      local a = start_mock({ "--seed", "1", "--v1-error-rate", "0.5" })
      local b = start_mock({ "--seed", "2", "--v1-error-rate", "0.5" })
      local list = ids("seed-", 400)
      local ra = batch(a, "v1", list)
      local rb = batch(b, "v1", list)
      local fa, fb, differ = 0, 0, 0
      for _, id in ipairs(list) do
        local ea, eb = ra[id].code >= 500, rb[id].code >= 500
        fa = fa + (ea and 1 or 0)
        fb = fb + (eb and 1 or 0)
        differ = differ + ((ea ~= eb) and 1 or 0)
      end
      within(fa, 400, 0.5, 5, "seed 1 errors")
      within(fb, 400, 0.5, 5, "seed 2 errors")
      -- Independent draws disagree on about half of the ids.
      within(differ, 400, 0.5, 5, "ids whose outcome differs")
      assert.are_not.equal(fa, fb, "the share of errors moved with the seed")
      print(string.format("# error rate 0.5, 400 ids: seed 1 %d errors, " ..
        "seed 2 %d, outcome differs for %d ids", fa, fb, differ))
    end)

  it("keeps error and hang shares within bounds over 2,000 requests per " ..
    "version, with the documented latency, and counts them in /stats",
    function()
      local m = start_mock({ "--seed", "2024",
        "--v1-error-rate", "0.05", "--v1-latency-ms", "20",
        "--v1-latency-jitter-ms", "10",
        "--v2-error-rate", "0.01", "--v2-hang-rate", "0.02",
        "--v2-latency-ms", "10" })
      local n = 2000
      local plan = {
        v1 = { error = 0.05, hang = 0 },
        v2 = { error = 0.01, hang = 0.02 },
      }
      local t0 = now()
      local observed = {}
      for _, v in ipairs({ "v1", "v2" }) do
        -- Clients give up on a hang (after 1 s) long before the mock
        -- would close it (60 s): see the README on libcurl's retries.
        local res = batch(m, v, ids(v .. "-share-", n),
          { parallel = 200, processes = 2, max_time = 1 })
        local t = tally(res)
        local errors = (t[500] or 0) + (t[503] or 0)
        local hangs = t[0] or 0
        assert.are.equal(n, (t[200] or 0) + errors + hangs,
          v .. ": only 200, 5xx or no answer")
        within(errors, n, plan[v].error, 4.5, v .. " errors")
        within(hangs, n, plan[v].hang, 4.5, v .. " hangs")
        for _, r in pairs(res) do
          if r.code == 0 then
            assert.are.equal(28, r.exit, "curl: timed out")
          end
        end
        observed[v] = { ok = t[200] or 0, errors = errors, hangs = hangs,
                        e500 = t[500] or 0, e503 = t[503] or 0, res = res }
        print(string.format("# %s: %d requests, %d ok, %d errors " ..
          "(%d x 500, %d x 503), %d hangs", v, n, observed[v].ok, errors,
          observed[v].e500, observed[v].e503, hangs))
      end
      assert.is_true(now() - t0 < 30, "took " .. (now() - t0) .. " s")

      -- Latency: v1 log-normal, median 20, one sigma up 30, down 13.3;
      -- v2 no jitter: exactly 10.
      local lat = {}
      for _, r in pairs(observed.v1.res) do
        if r.code ~= 0 then
          lat[#lat + 1] = decode(r.body).latency_ms
        end
      end
      table.sort(lat)
      local median = lat[#lat // 2]
      assert.is_true(median > 18.5 and median < 21.5, "v1 median " .. median)
      local inside = 0
      for _, x in ipairs(lat) do
        if x >= 20 * 20 / 30 and x <= 30 then
          inside = inside + 1
        end
      end
      within(inside, #lat, 0.6827, 5, "v1 latencies within one sigma")
      print(string.format("# v1 latency median %.1f ms, %.1f%% within " ..
        "[13.3, 30] ms; 4,000 requests in %.1f s", median,
        100 * inside / #lat, now() - t0))
      for _, r in pairs(observed.v2.res) do
        if r.code ~= 0 then
          assert.are.equal(10, decode(r.body).latency_ms)
        end
      end

      -- Every hang ends when its client gives up.
      local stats = poll(5, 0.05, function()
        local st = get_json(m, "/stats")
        return st.in_flight == 0 and st
      end)
      assert.is_truthy(stats, "hangs still open")
      assert.are.equal(2024, stats.seed)
      for _, v in ipairs({ "v1", "v2" }) do
        local s, o = stats[v], observed[v]
        assert.are.equal(n, s.requests, v)
        assert.are.equal(o.ok, s.ok, v)
        assert.are.equal(o.errors, s.errors, v)
        assert.are.equal(o.hangs, s.hangs, v)
        assert.are.equal(o.hangs, s.client_gone, v)
        assert.are.equal(0, s.bad_requests, v)
        assert.are.equal(o.ok, s.by_status["200"] or 0, v)
        assert.are.equal(o.e500, s.by_status["500"] or 0, v)
        assert.are.equal(o.e503, s.by_status["503"] or 0, v)
      end
    end)

  it("holds a hang without answering until the client gives up", function()
    local m = start_mock({ "--v1-hang-rate", "1", "--hang-seconds", "60" })
    local status, body, rc, took = verify(m, "v1", { request_id = "h1" },
      { max_time = 1 })
    assert.are.equal(28, rc, "curl timed out")
    assert.are.equal(0, status)
    assert.are.equal("", body)
    assert.is_true(took >= 0.9 and took < 5, "took " .. took)
    -- The mock notices the client left and frees the request at once.
    local stats = poll(5, 0.05, function()
      local s = get_json(m, "/stats")
      return s.in_flight == 0 and s.v1.client_gone == 1 and s
    end)
    assert.is_truthy(stats, "the mock did not notice the client leaving")
    assert.are.equal(1, stats.v1.hangs)
    assert.are.same({}, stats.v1.by_status)
    -- Health still answers while hangs are open.
    assert.are.same({ ok = true }, get_json(m, "/health"))
  end)

  it("closes a hang unanswered after --hang-seconds", function()
    local m = start_mock({ "--v2-hang-rate", "1", "--hang-seconds", "0.5" })
    local status, _, rc, took = verify(m, "v2", { request_id = "h2" },
      { max_time = 10 })
    assert.are.equal(0, status)
    assert.are.equal(52, rc, "curl: empty reply from server")
    assert.is_true(took >= 0.45 and took < 5, "took " .. took)
  end)

  it("answers a large body of about --large-body-kb KiB", function()
    local m = start_mock({ "--large-body-kb", "256" })
    local status, body = verify(m, "v1", { request_id = "big", large = true })
    assert.are.equal(200, status)
    assert.is_true(math.abs(#body - 256 * 1024) < 1024, "size " .. #body)
    local r = decode(body)
    assert.are.equal("big", r.request_id)
    assert.are.equal("string", type(r.padding))
    local _, small = verify(m, "v1", { request_id = "big" })
    assert.is_true(#small < 200, "no padding without large")
  end)

  it("serves 500 concurrent requests of 100 ms without refusing any",
    function()
      local m = start_mock({ "--v1-latency-ms", "100",
                             "--v2-latency-ms", "1000" })
      local res, took = batch(m, "v1", ids("c", 500),
        { parallel = 500, processes = 2 })
      local t = tally(res)
      assert.are.equal(500, t[200], "all answered 200")
      -- One at a time this would take 50 s.
      assert.is_true(took < 5, "took " .. took)
      print(string.format("# 500 requests of 100 ms: %.2f s, max in " ..
        "flight %d", took, get_json(m, "/stats").max_in_flight))

      -- With 1 s each, all 500 are in flight at the same moment.
      res, took = batch(m, "v2", ids("d", 500),
        { parallel = 500, processes = 2 })
      assert.are.equal(500, tally(res)[200], "all answered 200")
      assert.is_true(took < 5, "took " .. took)
      local stats = get_json(m, "/stats")
      assert.are.equal(500, stats.max_in_flight)
      assert.are.equal(0, stats.in_flight)
      print(string.format("# 500 requests of 1 s: %.2f s, max in flight %d",
        took, stats.max_in_flight))
    end)

  it("writes --port-file and refuses a port in use with exit 1", function()
    local pf = path("port")
    local m = start_mock({ "--port-file", pf })
    assert.are.equal(tostring(m.port) .. "\n", read(pf))
    local other = spawn({ MOCK, "--port", tostring(m.port) }, MOCK)
    assert.are.equal(1, wait_exit(other, 10))
    has(read(other.err), "cannot listen on 127.0.0.1:" .. m.port, "stderr")
    assert.are.equal("", read(other.out))
  end)

  it("listens on 127.0.0.1 only", function()
    local m = start_mock()
    local ss = capture("ss -Hltn 'sport = :" .. m.port .. "' 2>/dev/null")
    if ss ~= "" then
      has(ss, "127.0.0.1:" .. m.port, "ss")
      assert.is_nil(ss:find("0.0.0.0:" .. m.port, 1, true), ss)
    end
    local ip = capture("hostname -I 2>/dev/null | cut -d' ' -f1")
    if ip ~= "" and ip ~= "127.0.0.1" then
      local _, _, rc = request("http://" .. ip .. ":" .. m.port .. "/health",
        { max_time = 2 })
      assert.are_not.equal(0, rc, "reachable on " .. ip)
    end
  end)

  it("rejects bad options with exit 2 and a message naming the option",
    function()
      local cases = {
        { { "--port", "abc" }, "--port" },
        { { "--port", "70000" }, "--port" },
        { { "--port" }, "option --port: needs a value" },
        { { "--port-file", "" }, "--port-file" },
        { { "--seed", "-1" }, "--seed" },
        { { "--seed", "18446744073709551616" }, "--seed" },
        { { "--v1-error-rate", "1.5" }, "--v1-error-rate" },
        { { "--v2-disagree-rate", "2" }, "--v2-disagree-rate" },
        { { "--v2-error-rate", "often" }, "--v2-error-rate" },
        { { "--v2-hang-rate=-0.1" }, "--v2-hang-rate" },
        { { "--v1-hang-rate", "nan" }, "--v1-hang-rate" },
        { { "--v1-latency-ms", "fast" }, "--v1-latency-ms" },
        { { "--v2-latency-jitter-ms", "-5" }, "--v2-latency-jitter-ms" },
        { { "--hang-seconds", "inf" }, "--hang-seconds" },
        { { "--large-body-kb", "1.5" }, "--large-body-kb" },
        { { "--v1-error-rate", "0.6", "--v1-hang-rate", "0.6" },
          "--v1-error-rate and --v1-hang-rate" },
        { { "--verbose=1" }, "--verbose" },
        { { "--bogus" }, "unknown option '--bogus'" },
        { { "stray" }, "unexpected argument 'stray'" },
      }
      for _, c in ipairs(cases) do
        local words = { q(MOCK) }
        for _, a in ipairs(c[1]) do
          words[#words + 1] = q(a)
        end
        local out, err = path("out"), path("err")
        local rc = exec("timeout 10 " .. table.concat(words, " ") ..
          " </dev/null >" .. q(out) .. " 2>" .. q(err))
        local what = table.concat(c[1], " ")
        assert.are.equal(2, rc, what .. ": " .. (read(err) or ""))
        has(read(err), c[2], what)
        assert.are.equal("", read(out), what .. ": nothing on stdout")
      end

      local out = path("help")
      assert.are.equal(0, exec(q(MOCK) .. " --help >" .. q(out)))
      local help = read(out)
      for _, o in ipairs({ "--port", "--port-file", "--seed",
        "--hang-seconds", "--large-body-kb", "--v1-error-rate",
        "--v1-hang-rate", "--v1-latency-ms", "--v1-latency-jitter-ms",
        "--v2-error-rate", "--v2-hang-rate", "--v2-latency-ms",
        "--v2-latency-jitter-ms", "--v2-disagree-rate", "log-normal",
        "/stats" }) do
        has(help, o, "--help")
      end
    end)

  it("stops promptly with exit 0 on SIGTERM while a hang is open",
    function()
      local m = start_mock({ "--v1-hang-rate", "1", "--hang-seconds", "60" })
      local client = spawn({ "curl", "-s", "--max-time", "30", "-d",
        '{"request_id":"held"}', m.url .. "/v1/verify" }, "curl")
      assert.is_truthy(poll(5, 0.05, function()
        return get_json(m, "/stats").in_flight == 1
      end), "the hang never started")
      local t0 = now()
      signal(m, "TERM")
      assert.are.equal(0, wait_exit(m, 5), "exit code")
      assert.is_true(now() - t0 < 2, "took " .. (now() - t0) .. " s")
      -- The held client sees the connection closed, unanswered.
      assert.are.equal(52, wait_exit(client, 5))
    end)

  it("stops with exit 0 on SIGINT", function()
    local m = start_mock()
    get_json(m, "/health")
    signal(m, "INT")
    assert.are.equal(0, wait_exit(m, 5))
  end)
end)
