-- The http plugin (plugins/http/http.c) as a workflow step sees it,
-- in-process: `ctx.http{...}` against the real switchyard-mock (and, where
-- request headers must be seen, a small echo server in python3,
-- tests/fixtures/http/echo_server.py, which scripts/setup installs). Success
-- with status,
-- lower-cased headers, body and decoded JSON; a 5xx handed to the step as
-- a status; a request timeout and a refused connection raised as step
-- errors that become incidents; a 2 MiB body arriving whole; headers and
-- JSON bodies reaching the server; the Idempotency-Key the plugin adds;
-- 500 requests in flight at once on the engine's one loop; a step timeout
-- cancelling the request in flight. All tests share one engine, which must
-- then close cleanly (the spec runs under ASan in CI).
--
-- The fixtures (tests/fixtures/http/) take the URL from the instance's
-- vars and have no retries unless they test them, to keep this fast.
local T = require "switchyard.testing"
local D = require "testdb"
local M = require "mock"

local BUILD = assert(os.getenv("SY_BUILD_DIR"), "SY_BUILD_DIR is not set: " ..
  "run the specs through ctest")
local FIX = "tests/fixtures/http/"

local function has(haystack, needle, what)
  assert(type(haystack) == "string" and haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in: %s", what or "text", needle,
      tostring(haystack)))
end

local function incident_of(e, id)
  for _, i in ipairs(e:incidents(true)) do
    if i.instance == id then
      return i
    end
  end
end

describe("ctx.http", function()
  local dir, e

  setup(function()
    dir = M.tmpdir("sy-http")
    e = T.engine { db = D.sqlite and dir .. "/http.db" or D.new(),
                   workflows = FIX,
                   plugins = BUILD .. "/plugins", concurrency = 500 }
  end)

  teardown(function()
    M.stop_all()
    if e then
      e:close()
    end
    if dir and dir:match("/sy%-http%.") then
      M.exec("rm -rf " .. M.q(dir))
    end
  end)

  after_each(function()
    M.stop_all()
  end)

  -- Starts one instance of fixture `name` with these vars, runs the engine
  -- until idle, and returns the id and the instance row.
  local function run_one(name, vars)
    local id = assert(e:start(FIX .. name, vars))
    e:run()
    return id, e:instance(id)
  end

  it("returns status, lower-cased headers, body and decoded JSON",
    function()
      local m = M.start { "--seed", "3" }
      local id, i = run_one("call.lua", { url = m.url .. "/health" })
      assert.are.equal("completed", i.state)
      local r = i.vars.res
      assert.are.equal(200, r.status)
      assert.are.equal('{"ok":true}', r.body)
      assert.are.same({ ok = true }, r.json)
      assert.are.equal("application/json", r.headers["content-type"])
      assert.are.equal(tostring(#r.body), r.headers["content-length"])
      assert.are.same({ { step = "call", attempt = 1, outcome = "ok" } },
        e:history(id))

      id, i = run_one("call.lua", { url = m.url .. "/v1/verify",
        method = "POST", json = { request_id = "ok-1", document = "p-1",
        subject = "alice" } })
      assert.are.equal("completed", i.state)
      r = i.vars.res
      assert.are.equal(200, r.status)
      assert.are.equal("v1", r.json.version)
      assert.are.equal("ok-1", r.json.request_id)
      assert.are.equal("boolean", type(r.json.verified))
      assert.are.equal(r.json.score >= 0.2, r.json.verified)
      for name in pairs(r.headers) do
        assert.are.equal(name:lower(), name, "header names are lower-case")
      end
      -- The raw body is there too, and says the same.
      has(r.body, '"request_id":"ok-1"', "body")
    end)

  it("hands a 5xx to the step as a status, without raising", function()
    local m = M.start { "--v1-error-rate", "1" }
    local seen = {}
    for k = 1, 8 do
      local id, i = run_one("call.lua", { url = m.url .. "/v1/verify",
        method = "POST", json = { request_id = "err-" .. k } })
      assert.are.equal("completed", i.state, "instance " .. id)
      local r = i.vars.res
      assert.is_true(r.status == 500 or r.status == 503, tostring(r.status))
      assert.are.equal("injected_fault", r.json.error)
      assert.are.equal(r.status, r.json.status)
      if r.status == 503 then
        assert.are.equal("1", r.headers["retry-after"])
      end
      assert.is_nil(incident_of(e, id))
      seen[r.status] = true
    end
    assert.is_true(seen[500] and seen[503], "both 500 and 503 were seen")
  end)

  it("raises when the request times out: an incident saying so", function()
    local m = M.start { "--v1-hang-rate", "1", "--hang-seconds", "30" }
    local t0 = M.now()
    local id, i = run_one("call.lua", { url = m.url .. "/v1/verify",
      method = "POST", json = { request_id = "hang-1" }, timeout = 0.3 })
    local took = M.now() - t0
    assert.are.equal("incident", i.state)
    assert.are.equal("call", i.step)
    local inc = assert(incident_of(e, id), "an open incident")
    assert.are.equal("call", inc.step)
    has(inc.error, "timed out", "incident error")
    has(inc.error, m.url .. "/v1/verify", "incident error names the URL")
    local h = e:history(id)
    assert.are.equal(1, #h)
    assert.are.equal("error", h[1].outcome)
    has(h[1].error, "timed out", "step error")
    -- Given up by the client, well before the mock would close it.
    assert.is_true(took < 10, "took " .. took .. " s")
    assert.is_truthy(M.poll(5, 0.05, function()
      local s = M.stats(m)
      return s.in_flight == 0 and s.v1.client_gone >= 1
    end), "the mock saw the client give up")
  end)

  it("raises when the connection is refused: an incident saying so",
    function()
      local port = M.closed_port()
      local url = "http://127.0.0.1:" .. port .. "/v1/verify"
      local id, i = run_one("call.lua", { url = url, method = "POST",
        json = { request_id = "refused-1" }, timeout = 5 })
      assert.are.equal("incident", i.state)
      local inc = assert(incident_of(e, id), "an open incident")
      assert.are.equal("call", inc.step)
      -- libcurl: "Failed to connect to 127.0.0.1 port N after 0 ms:
      -- Couldn't connect to server" (the wording varies by version).
      assert.is_truthy(inc.error:lower():find("connect", 1, true),
        "says it could not connect: " .. inc.error)
      has(inc.error, tostring(port), "incident error names the port")
      assert.are.equal("error", e:history(id)[1].outcome)
    end)

  it("receives a 2 MiB body whole", function()
    local m = M.start { "--large-body-kb", "2048" }
    local id, i = run_one("large.lua", { url = m.url .. "/v2/verify",
      request_id = "big-1" })
    assert.are.equal("completed", i.state, "instance " .. id)
    local v = i.vars
    assert.are.equal(200, v.status)
    assert.are.equal(v.content_length, v.length)
    assert.is_true(math.abs(v.length - 2048 * 1024) < 1024,
      "length " .. v.length)
    assert.is_true(v.padding_length > 2047 * 1024, "padding " ..
      v.padding_length)
    assert.is_true(v.padding_ok, "the padding is intact")
    assert.are.equal("big-1", v.request_id_seen)
  end)

  it("raises for a body above its 16 MiB cap, naming the cap", function()
    local m = M.start { "--large-body-kb", "17000" }
    local id, i = run_one("large.lua", { url = m.url .. "/v2/verify",
      request_id = "huge-1" })
    assert.are.equal("incident", i.state)
    has(assert(incident_of(e, id)).error, "larger than 16777216 bytes",
      "incident error")
  end)

  it("sends the JSON body to the server (the mock echoes request_id)",
    function()
      local m = M.start()
      local id, i = run_one("call.lua", { url = m.url .. "/v2/verify",
        method = "POST", json = { request_id = "body-1 ünï \"q\"",
        document = "passport", subject = "bob" } })
      assert.are.equal("completed", i.state)
      assert.are.equal(200, i.vars.res.status)
      assert.are.equal("v2", i.vars.res.json.version)
      assert.are.equal("body-1 ünï \"q\"", i.vars.res.json.request_id)

      -- A text body is sent as given (here: not JSON, so the mock says 400).
      id, i = run_one("call.lua", { url = m.url .. "/v2/verify",
        method = "POST", body = "not json" })
      assert.are.equal(400, i.vars.res.status, "instance " .. id)
      assert.are.equal("bad_request", i.vars.res.json.error)

      id, i = run_one("call.lua", { url = m.url .. "/notify",
        method = "POST", json = { request_id = "n-1", decision = "ok" } })
      assert.are.equal(202, i.vars.res.status, "instance " .. id)
      assert.are.same({ queued = true }, i.vars.res.json)
      local st = M.stats(m)
      assert.are.equal(1, st.v2.bad_requests)
    end)

  describe("seen by an echo server", function()
    it("sends the step's headers, method and JSON body", function()
      local s = M.start_echo()
      local id, i = run_one("call.lua", { url = s.url .. "/hook?x=1",
        method = "PUT", headers = { ["X-Trace"] = "abc-123",
        Authorization = "Bearer t0k3n" },
        json = { a = 1, nested = { b = "x" }, list = { 1, 2, 3 } } })
      assert.are.equal("completed", i.state, "instance " .. id)
      local got = i.vars.res.json
      assert.are.equal("PUT", got.method)
      assert.are.equal("/hook?x=1", got.path)
      assert.are.equal("abc-123", got.headers["x-trace"])
      assert.are.equal("Bearer t0k3n", got.headers["authorization"])
      assert.are.equal("application/json", got.headers["content-type"])
      assert.are.same({ a = 1, nested = { b = "x" }, list = { 1, 2, 3 } },
        M.json.decode(got.body))
      -- Without a method it is a GET with no body.
      id, i = run_one("call.lua", { url = s.url .. "/plain" })
      assert.are.equal("GET", i.vars.res.json.method, "instance " .. id)
      assert.are.equal("", i.vars.res.json.body)
    end)

    -- Bearer tokens (JWTs from some identity providers) are often 1.5 to
    -- 3 KiB: a header is sent whole or the step fails, never cut short.
    it("sends a 3 KiB header value whole", function()
      local s = M.start_echo()
      local token = "Bearer " .. ("abcdefghij"):rep(300)
      local id, i = run_one("call.lua", { url = s.url .. "/long",
        headers = { Authorization = token } })
      assert.are.equal("completed", i.state, "instance " .. id)
      local got = i.vars.res.json.headers["authorization"] or ""
      assert.are.equal(#token, #got, "length of the Authorization header " ..
        "the server got")
      assert.are.equal(token, got)
    end)

    -- Vars often carry outside input; a CR LF in a header value must not
    -- turn into a header of its own (the step may fail instead).
    it("does not let a header value inject another header", function()
      local s = M.start_echo()
      local id = assert(e:start(FIX .. "call.lua", { url = s.url ..
        "/inject", headers = { ["X-Note"] = "a\r\nX-Injected: 1" } }))
      e:run()
      for _, r in ipairs(M.echo_log(s)) do
        assert.is_nil(r.headers["x-injected"], "instance " .. id ..
          ": the server got a header from inside a value: " ..
          table.concat(r.header_lines, " | "))
      end
    end)

    it("sends one Content-Type, the step's own, with json =", function()
      local s = M.start_echo()
      local id, i = run_one("call.lua", { url = s.url .. "/ct",
        method = "PATCH", json = { a = 1 },
        headers = { ["Content-Type"] = "application/merge-patch+json" } })
      assert.are.equal("completed", i.state, "instance " .. id)
      local lines = {}
      for _, l in ipairs(i.vars.res.json.header_lines) do
        if l:lower():match("^content%-type:") then
          lines[#lines + 1] = l
        end
      end
      assert.are.same({ "Content-Type: application/merge-patch+json" },
        lines)
    end)

    -- House style: a bad argument raises. A header whose value is not a
    -- string is either sent (as its text) or an error, never dropped
    -- without a word.
    it("sends a number header value or raises, never drops it", function()
      local s = M.start_echo()
      local id, i = run_one("call.lua", { url = s.url .. "/num",
        headers = { ["X-Count"] = 5 } })
      if i.state == "incident" then
        has(assert(incident_of(e, id)).error, "X-Count", "incident error")
      else
        assert.are.equal("5", i.vars.res.json.headers["x-count"],
          "the X-Count header was dropped")
      end
    end)

    it("adds Idempotency-Key <instance>-<step>-<attempt>[.<n>], a new " ..
      "one per retry and incident retry, the same one when a step re-runs",
      function()
      local s = M.start_echo()
      local id, i = run_one("call.lua", { url = s.url .. "/one" })
      assert.are.equal(id .. "-call-1",
        i.vars.res.json.headers["idempotency-key"])

      -- The step's own key wins over the plugin's.
      id, i = run_one("call.lua", { url = s.url .. "/own",
        headers = { ["Idempotency-Key"] = "mine" } })
      assert.are.equal("mine", i.vars.res.json.headers["idempotency-key"])

      -- A retry is a new attempt, with a new key.
      id = assert(e:start(FIX .. "retry.lua",
        { url = s.url .. "/retry?status=500" }))
      e:run()
      assert.are.equal("incident", e:instance(id).state)
      local keys = {}
      for _, r in ipairs(M.echo_log(s)) do
        if r.path:match("^/retry") then
          keys[#keys + 1] = r.headers["idempotency-key"]
        end
      end
      assert.are.same({ id .. "-call-1", id .. "-call-2", id .. "-call-3" },
        keys)

      -- Retrying the incident starts the attempts again, with keys of
      -- their own (".1": the first incident retry), not the failed ones.
      assert.is_true(e:retry(id))
      e:run()
      assert.are.equal("incident", e:instance(id).state)
      keys = {}
      for _, r in ipairs(M.echo_log(s)) do
        if r.path:match("^/retry") then
          keys[#keys + 1] = r.headers["idempotency-key"]
        end
      end
      assert.are.same({ id .. "-call-1", id .. "-call-2", id .. "-call-3",
        id .. "-call-1.1", id .. "-call-2.1", id .. "-call-3.1" }, keys)

      -- A step interrupted while its request is in flight (the engine
      -- stops, as on SIGTERM) re-runs on the next start with the same key.
      id = assert(e:start(FIX .. "call.lua",
        { url = s.url .. "/rerun?delay=1.5" }))
      e:run { for_ms = 400 }
      assert.are_not.equal("completed", e:instance(id).state)
      e:run()
      i = e:instance(id)
      assert.are.equal("completed", i.state)
      keys = {}
      for _, r in ipairs(M.echo_log(s)) do
        if r.path:match("^/rerun") then
          keys[#keys + 1] = r.headers["idempotency-key"]
        end
      end
      assert.are.same({ id .. "-call-1", id .. "-call-1" }, keys)
    end)

    -- Two different requests from one step run are two operations for the
    -- server, yet the plugin gives both the same key: a server that
    -- de-duplicates by key (as Stripe-style APIs do) would answer the
    -- second with the first's stored response, or reject it for reusing
    -- a key with another body. The key needs a per-call part (the call's
    -- number within the step run, stable on re-run, e.g. "<id>-call-1#2").
    it("gives two different requests of one step run different keys",
      function()
        local s = M.start_echo()
        local id, i = run_one("two_calls.lua", { url = s.url })
        assert.are.equal("completed", i.state, "instance " .. id)
        local k1 = i.vars.first.headers["idempotency-key"]
        local k2 = i.vars.second.headers["idempotency-key"]
        assert.is_truthy(k1 and k1:match("^" .. id .. "%-call%-1"), k1)
        assert.is_truthy(k2 and k2:match("^" .. id .. "%-call%-1"), k2)
        assert.are_not.equal(k1, k2,
          "both requests of the step were sent Idempotency-Key " .. k1)
      end)
  end)

  it("keeps 500 requests in flight at once on one loop", function()
    -- Each answer takes 3 s: long enough that the count does not depend
    -- on how fast this machine issues 500 requests (a sanitizer build on a
    -- busy machine took longer than 300 ms).
    local m = M.start { "--v1-latency-ms", "3000", "--seed", "11" }
    local ids = {}
    for k = 1, 500 do
      ids[k] = assert(e:start(FIX .. "call.lua", { url = m.url ..
        "/v1/verify", method = "POST", json = { request_id = "c-" .. k },
        timeout = 20 }))
    end
    local t0 = M.now()
    e:run()
    local took = M.now() - t0
    for k, id in ipairs(ids) do
      local i = e:instance(id)
      assert.are.equal("completed", i.state, "instance " .. id)
      assert.are.equal(200, i.vars.res.status, "instance " .. id)
      assert.are.equal("c-" .. k, i.vars.res.json.request_id)
    end
    local st = M.stats(m)
    assert.are.equal(500, st.v1.requests)
    assert.are.equal(500, st.v1.ok)
    -- The structural proof: the server held at least 400 of them at the
    -- same moment, all sent by this one process and its one loop.
    assert.is_true(st.max_in_flight >= 400,
      "max in flight " .. st.max_in_flight)
    print(string.format("# 500 requests of 3 s: %.2f s, max in flight " ..
      "%d", took, st.max_in_flight))
  end)

  it("cancels the request in flight when the step times out", function()
    local m = M.start { "--v1-hang-rate", "1", "--hang-seconds", "30" }
    local t0 = M.now()
    local id, i = run_one("step_timeout.lua", { url = m.url .. "/v1/verify",
      request_id = "st-1" })
    assert.are.equal("incident", i.state)
    local h = e:history(id)
    assert.are.equal(1, #h)
    assert.are.equal("timeout", h[1].outcome)
    has(h[1].error, "timed out after 0.2s", "step error")
    has(assert(incident_of(e, id)).error, "timed out", "incident error")
    -- The request was aborted, not left to run into its own 5 s timeout:
    -- the mock sees its client leave while that is still far off.
    assert.is_truthy(M.poll(3, 0.05, function()
      local s = M.stats(m)
      return s.in_flight == 0 and s.v1.client_gone == 1
    end), "the mock saw the cancelled request's connection close")
    assert.is_true(M.now() - t0 < 4.5, "took " .. (M.now() - t0) .. " s")
  end)

  it("abandons requests in flight when the engine stops, and re-runs " ..
    "their steps on the next run", function()
    local m = M.start { "--v1-latency-ms", "1000" }
    local ids = {}
    for k = 1, 20 do
      ids[k] = assert(e:start(FIX .. "call.lua", { url = m.url ..
        "/v1/verify", method = "POST", json = { request_id = "stop-" .. k },
        timeout = 10 }))
    end
    e:run { for_ms = 300 } -- stops gracefully, as on SIGTERM
    for _, id in ipairs(ids) do
      assert.are_not.equal("completed", e:instance(id).state)
    end
    -- Every request that reached the mock was abandoned (on a loaded
    -- machine some may not have been sent within the 300 ms).
    local seen
    assert.is_truthy(M.poll(3, 0.05, function()
      local s = M.stats(m)
      seen = s.v1.requests
      return s.in_flight == 0 and s.v1.client_gone == s.v1.requests
    end), "the mock saw every abandoned connection close")
    e:run()
    for k, id in ipairs(ids) do
      local i = e:instance(id)
      assert.are.equal("completed", i.state, "instance " .. id)
      assert.are.equal("stop-" .. k, i.vars.res.json.request_id)
      -- The abandoned run left no step run behind: one, and it is ok.
      assert.are.same({ { step = "call", attempt = 1, outcome = "ok" } },
        e:history(id))
    end
    assert.are.equal(seen + 20, M.stats(m).v1.requests)
  end)

  it("closes the engine cleanly after all that", function()
    local n = e:sql("SELECT count(*) AS n FROM instances WHERE state " ..
      "NOT IN ('completed', 'incident')")[1].n
    assert.are.equal(0, n, "every instance ended")
    e:close()
    e:close() -- twice is fine
    e = nil
    -- The database is consistent for the next engine.
    local again = T.engine { db = dir .. "/http.db", workflows = FIX,
                             plugins = BUILD .. "/plugins" }
    local stats = again:run()
    assert.are.equal(0, stats.steps)
    again:close()
  end)
end)
