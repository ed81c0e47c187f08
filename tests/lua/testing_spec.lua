-- switchyard.testing as a workflow's author uses it: virtual time (sleeps,
-- parked waits, signal timeouts, backoffs and step timeouts take no
-- wall-clock time, yet the engine's clock says they passed), HTTP stubs
-- (matching, answers in turn, functions, transport errors, timeouts, the
-- requests they saw), stubs of other plugins' functions, signals, forced
-- versions and decisions.
--
-- These tests run on a database in memory, the kit's default, so they do
-- not run again in the PostgreSQL pass (tag #sqlite).
local T = require "switchyard.testing"

local FIXTURES = "tests/fixtures/kit"
local PLUGINS = assert(os.getenv("SY_TEST_PLUGINS"), "SY_TEST_PLUGINS is not set")
local BUILD = assert(os.getenv("SY_BUILD_DIR"), "SY_BUILD_DIR is not set")
local DAY = 86400

-- Whether `seconds` passed from a to b on the engine's clock: its times
-- are whole milliseconds, and two readings may each lose one.
local function lasted(a, b, seconds)
  return b - a >= seconds - 0.002
end

describe("switchyard.testing #sqlite", function()
  local e

  after_each(function()
    if e then
      e:close()
      e = nil
    end
  end)

  local function engine(opts)
    opts = opts or {}
    opts.workflows = opts.workflows or FIXTURES
    opts.plugins = opts.plugins or BUILD .. "/plugins"
    e = T.engine(opts)
    return e
  end

  describe("virtual time", function()
    it("runs a month of sleeps, a week's signal wait and hours of backoff at once", function()
      engine { virtual_time = true }
      local start = e:now()
      local wall = os.time()
      local id = assert(e:start("waits", { fail = true }))
      e:run()
      local i = e:instance(id)
      assert.equal("incident", i.state)
      assert.equal("flaky", i.step)
      local v = i.vars
      -- the sleeps: 0.5 s, then 30 days, as the engine's clock saw them
      assert.is_true(lasted(v.t0, v.t1, 30 * DAY + 0.5))
      assert.is_true(v.t1 - v.t0 < 30 * DAY + 60)
      -- nobody approved: the wait ended at its 7-day timeout
      assert.equal("nobody", v.approved_by)
      assert.is_true(lasted(v.t1, v.t2, 7 * DAY))
      -- three runs of flaky, 1 h then 2 h apart
      local runs = {}
      for _, h in ipairs(e:history(id)) do
        if h.step == "flaky" then
          runs[#runs + 1] = h
        end
      end
      assert.equal(3, #runs)
      assert.is_true(lasted(v.t2, e:now(), 3 * 3600))
      -- 37 days passed for the engine; far less for us (a loose bound,
      -- only to tell virtual from real time)
      assert.is_true(lasted(start, e:now(), 37 * DAY))
      assert.is_true(os.time() - wall < 600)
    end)

    it("fills the latency histograms with the branch times it saw", function()
      -- one instance low in each bucket from 50 ms up (ms: the bucket's
      -- bound), the last past the largest bound: the real time the steps
      -- take around their sleeps, loaded machine included, stays under the
      -- margin (the bounds themselves are checked in serve_spec)
      local cases = {
        { 30, 50 }, { 60, 100 }, { 120, 250 }, { 300, 500 }, { 600, 1000 },
        { 1200, 2500 }, { 3000, 5000 }, { 6000, 10000 }, { 12000, 30000 },
        { 35000, 60000 }, { 100000, 300000 }, { 400000, 3600000 },
        { 4000000, 86400000 }, { 100000000, 604800000 },
        { 700000000, math.maxinteger } }
      engine { virtual_time = true, force = { timed = "v2" } }
      for i, c in ipairs(cases) do
        assert(e:start("timed", { subject = "s" .. i, ms = c[1] }))
      end
      e:run()
      local branch = e:sql("SELECT le, n, sum_ms FROM cv_latency WHERE " ..
        "kind = 'branch' AND flag = 'timed' AND version = 'v2' ORDER BY le")
      assert.equal(#cases, #branch)
      for i, c in ipairs(cases) do
        assert.equal(c[2], branch[i].le)
        assert.equal(1, branch[i].n)
        -- the sleep, and the little real time the steps took around it
        assert.is_true(branch[i].sum_ms >= c[1] and branch[i].sum_ms < c[1] + 1000,
          c[1] .. " ms took " .. branch[i].sum_ms)
      end
      -- step time: every instance once, and parked time is not run time
      local steps = e:sql("SELECT sum(n) AS n, sum(sum_ms) AS ms, max(le) AS " ..
        "top FROM cv_latency WHERE kind = 'steps' AND flag = 'timed'")[1]
      assert.equal(#cases, steps.n)
      assert.is_true(steps.top < math.maxinteger)
      assert.is_true(steps.ms < 700000000)
    end)

    it("lets a signal in before the wait times out", function()
      engine { virtual_time = true }
      local id = assert(e:start("waits", {}))
      -- a day on the engine's clock: the month's sleep is still going
      e:run { for_ms = DAY * 1000 }
      assert.equal("waiting", e:instance(id).state)
      assert.equal("sleepy", e:instance(id).step)
      -- 31 days: past the sleep, into the week-long signal wait
      e:run { for_ms = 30 * DAY * 1000 }
      local i = e:instance(id)
      assert.equal("waiting", i.state)
      assert.equal("approval", i.step)
      local sent = assert(e:signal("approve", id, { by = "ana" }))
      assert.equal(1, sent)
      e:run()
      i = e:instance(id)
      assert.equal("completed", i.state)
      assert.equal("ana", i.vars.approved_by)
      assert.is_true(i.vars.t2 - i.vars.t1 < 7 * DAY)
    end)

    it("ends a step at its timeout before its sleep does", function()
      engine { virtual_time = true }
      local id = assert(e:start("slow", {}))
      e:run()
      local i = e:instance(id)
      assert.equal("incident", i.state)
      local h = e:history(id)
      assert.equal(1, #h)
      assert.equal("timeout", h[1].outcome)
    end)

    it("is off unless asked for: a real engine really waits", function()
      engine {}
      local id = assert(e:start("slow", {}))
      local t0 = e:now()
      e:run()
      assert.equal("incident", e:instance(id).state)
      assert.is_true(lasted(t0, e:now(), 0.25))
    end)
  end)

  describe("HTTP stubs", function()
    it("answers each call from the latest stub that matches, and records it", function()
      engine { virtual_time = true }
      e:http("GET", "/a", { status = 500 })
      e:http("GET", "/a", { status = 200, json = { ok = true },
                            headers = { ["X-Seen"] = "yes" } })
      e:http("POST", "api.test/b", function(req)
        return { status = 201, body = "made " .. req.json.n }
      end)
      local id = assert(e:start("calls", {}))
      e:run()
      local i = e:instance(id)
      assert.equal("completed", i.state)
      assert.equal(200, i.vars.a)
      assert.same({ ok = true }, i.vars.a_json)
      assert.equal(201, i.vars.b)
      assert.equal("made 1", i.vars.b_body)
      local reqs = e:requests()
      assert.equal(2, #reqs)
      assert.equal("GET", reqs[1].method)
      assert.equal("POST", reqs[2].method) -- upper-cased, as sent
      assert.same({ n = 1 }, reqs[2].json)
      assert.equal("call", reqs[2].step)
      assert.equal(2, reqs[2].seq) -- the second ctx call of the step
      assert.equal(1, #e:requests("/b"))
    end)

    it("gives a list of answers in turn, the last one repeating", function()
      engine { virtual_time = true }
      e:http("/a", { { status = 503 }, { status = 204 } })
      e:http("/b", { status = 200 })
      local ids = {}
      for k = 1, 3 do
        ids[k] = assert(e:start("calls", {}))
        e:run() -- one at a time, so the order is known
      end
      assert.equal(503, e:instance(ids[1]).vars.a)
      assert.equal(204, e:instance(ids[2]).vars.a)
      assert.equal(204, e:instance(ids[3]).vars.a)
    end)

    it("fails calls with transport errors and timeouts as the http plugin would", function()
      engine { virtual_time = true }
      e:http("/a", { status = 200 })
      e:http("/b", T.timeout())
      local id = assert(e:start("calls", {}))
      e:run()
      local inc = e:incidents()
      assert.equal(1, #inc)
      assert.equal(id, inc[1].instance)
      assert.matches("http: http://api.test/b: Operation timed out after 2000 milliseconds",
        inc[1].error, 1, true)
      e:close()
      engine { virtual_time = true }
      e:http("/a", T.transport_error("Could not resolve host: api.test"))
      id = assert(e:start("calls", {}))
      e:run()
      assert.matches("http: http://api.test/a: Could not resolve host: api.test",
        e:incidents()[1].error, 1, true)
    end)

    it("answers after a delay, and times out after the call's timeout, on the engine's clock", function()
      engine { virtual_time = true }
      e:http("/a", { status = 200, delay = 3600 })
      e:http("/b", T.timeout())
      local t0 = e:now()
      assert(e:start("calls", {}))
      e:run()
      assert.matches("Operation timed out after 2000 milliseconds",
        e:incidents()[1].error, 1, true)
      -- an hour for /a, then /b's two seconds
      assert.is_true(lasted(t0, e:now(), 3602))
      assert.is_true(e:now() - t0 < 3602 + 60)
    end)

    it("lets the step's timeout end a call slower than it", function()
      engine { virtual_time = true }
      e:http("/slow", { status = 200, delay = 30 })
      local t0 = e:now()
      local id = assert(e:start("slowcall", {}))
      e:run()
      local h = e:history(id)
      assert.equal(1, #h)
      assert.equal("timeout", h[1].outcome)
      assert.is_true(e:now() - t0 < 30)
      -- the stub's answer, abandoned, came to nothing
      assert.equal("incident", e:instance(id).state)
      assert.is_nil(e:instance(id).vars.status)
    end)

    it("fails a call no stub matches, naming it", function()
      engine { virtual_time = true }
      e:http("api.test/a", { status = 200 })
      local id = assert(e:start("calls", {}))
      e:run()
      assert.equal("incident", e:instance(id).state)
      assert.matches("no stub matches POST http://api.test/b",
        e:incidents()[1].error, 1, true)
    end)

    it("fails the call with a stub function's error", function()
      engine { virtual_time = true }
      e:http("/a", function() error("stub says no", 0) end)
      assert(e:start("calls", {}))
      e:run()
      assert.matches("stub says no", e:incidents()[1].error, 1, true)
    end)

    it("refuses stubs it cannot use", function()
      engine {}
      assert.has_error(function() e:http("GET", 42, {}) end,
        "e:http: the URL must be a string (a part of the URL) or a function(url)")
      assert.has_error(function() e:http("GET", "/a") end)
      assert.has_error(function() T.engine { force = { f = "v3" } } end,
        'T.engine: force["f"]: expected "v1" or "v2", got v3')
    end)
  end)

  it("stubs another plugin's function, and lets it answer when not stubbed", function()
    engine { virtual_time = true, plugins = PLUGINS }
    local real = assert(e:start("echoes", {}))
    e:run()
    assert.same({ word = "hello" }, e:instance(real).vars.echoed)
    e:stub("echo", { { word = "first" }, T.transport_error("echo is down") })
    local a = assert(e:start("echoes", {}))
    e:run()
    local b = assert(e:start("echoes", {}))
    e:run()
    assert.same({ word = "first" }, e:instance(a).vars.echoed)
    assert.equal("incident", e:instance(b).state)
    assert.matches("echo: echo is down", e:incidents()[1].error, 1, true)
  end)

  it("forces a flag's version, and shows the decision", function()
    for _, version in ipairs { "v1", "v2" } do
      engine { virtual_time = true, workflows = "workflows",
               plugins = BUILD .. "/plugins",
               force = { ["verifymenow-v2"] = version } }
      e:http("/verify", { status = 200, json = { verified = true, score = 1 } })
      e:http("/notify", { status = 202 })
      local id = assert(e:start("verify_identity",
        { subject = "s", document = "d" }))
      e:run()
      assert.equal(version, e:instance(id).vars.api_version)
      local d = e:decisions(id)
      assert.equal(1, #d)
      assert.equal(version, d[1].version)
      assert.equal("verifymenow-v2", d[1].flag)
      assert.equal(1, #e:requests("/" .. version .. "/verify"))
      e:close()
      e = nil
    end
  end)
end)
