-- End-to-end tests of waiting: long sleeps that park (the instance leaves
-- memory and its slot; its row waits for the due time) and the step
-- journal (a step run again from its start, after a park or a kill -9,
-- gets the answers of the calls it had made without making them again;
-- only a call whose answer was not committed is made again, with the same
-- idempotency key; a replay that asks for something else fails the run).
-- Signals: ctx.wait_signal takes the oldest signal of its name, sent before
-- or while it waits; `switchyard signal` queues one durably.
-- The engine is the real binary; calls go to the echo server
-- (tests/fixtures/http/echo_server.py), which logs every request it gets.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local M = require "mock"

local FIX = H.repo .. "/tests/fixtures/waiting"

local function has(haystack, needle, what)
  assert(haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, haystack))
end

local function show(env, id)
  return H.decode((env:ok("--json", "show", tostring(id))))
end

-- The echo server's requests by path (the query cut off): a list each.
local function requests(echo)
  local by = {}
  for _, r in ipairs(M.echo_log(echo)) do
    local path = r.path:match("^[^?]*")
    by[path] = by[path] or {}
    table.insert(by[path], r)
  end
  return by
end

local function count(by, path)
  return by[path] and #by[path] or 0
end

describe("waiting", function()
  local env

  before_each(function()
    env = H.env({ workflows = H.workflows })
  end)

  after_each(function()
    H.reap()
    M.stop_all()
    H.rmdir(env.dir)
  end)

  it("600 instances asleep for an hour hold no slot: 1,000 others all run",
    function()
      env:ok("start", FIX .. "/long_nap.lua", "--count", "600")
      env:ok("start", "hello", "--count", "1000", "--var", "user_id=u{n}")
      local p = env:spawn("run") -- the default concurrency, 512
      local done = H.poll(60, 0.1, function()
        return env:scalar("select count(*) from instances where workflow = " ..
          "'hello' and state = 'completed'") == 1000
      end)
      assert.is_truthy(done, "the hello instances did not all complete")
      -- the sleepers are parked: rows waiting for their due time, held by
      -- no engine
      assert(H.poll(30, 0.1, function()
        return env:scalar("select count(*) from instances where workflow = " ..
          "'long_nap' and state = 'waiting' and owner is null and " ..
          "wake_at > " .. H.now_ms_sql() .. " + 3500000") == 600
      end), "the sleepers are not all parked")
      assert.are.equal(0, env:scalar("select count(*) from instances where " ..
        "state = 'running'"))
      assert.are.equal(600, env:scalar("select count(*) from journal where " ..
        "kind = 2"))
      H.signal(p, "TERM")
      assert.are.equal(0, H.wait_exit(p, 10))
      has(H.read(p.log), "600 parked", "run's summary")
    end)

  it("a kill -9 while parked repeats no call: each reaches the server once",
    function()
      local echo = M.start_echo()
      local id = tonumber((env:ok("start", FIX .. "/calls.lua", "--var",
        "url=" .. echo.url)):match("%d+"))
      local p = env:spawn("run")
      assert(H.poll(20, 0.05, function()
        return env:scalar("select count(*) from instances where id = " .. id ..
          " and state = 'waiting'") == 1
      end), "never parked")
      H.signal(p, "KILL")
      H.wait_exit(p, 10)
      -- parked with its three answers and the sleep journaled
      assert.are.equal(4, env:scalar("select count(*) from journal"))
      local code, _, err = env:run("run", "--until-idle")
      assert.are.equal(0, code, err)
      local s = show(env, id)
      assert.are.equal("completed", s.state)
      assert.are.same({ 200, 200, 200, 200 }, s.vars.statuses)
      local by = requests(echo)
      for _, path in ipairs({ "/one", "/two", "/three", "/four" }) do
        assert.are.equal(1, count(by, path), path)
      end
      -- one step run, marked parked for most of it; no journal left
      assert.are.equal(1, #s.history)
      local run = s.history[1]
      assert.are.equal(run.duration_ms, run.run_ms + run.parked_ms)
      assert.is_true(run.parked_ms >= 1000, "parked " .. run.parked_ms)
      has(env:ok("show", tostring(id)), "parked " .. run.parked_ms .. " ms")
      assert.are.equal(0, env:scalar("select count(*) from journal"))
    end)

  it("a kill -9 between two calls repeats only the one not committed, with " ..
    "the same idempotency key", function()
    local echo = M.start_echo()
    local id = tonumber((env:ok("start", FIX .. "/calls.lua", "--var",
      "url=" .. echo.url, "--var", "slow=three", "--var", "delay:=2"))
      :match("%d+"))
    local p = env:spawn("run")
    -- the third call is at the server (which logs it before it answers)
    assert(H.poll(20, 0.05, function()
      return count(requests(echo), "/three") == 1
    end), "the third call never reached the server")
    H.signal(p, "KILL")
    H.wait_exit(p, 10)
    assert.are.equal(2, env:scalar("select count(*) from journal where " ..
      "instance_id = " .. id))
    local code, _, err = env:run("run", "--until-idle")
    assert.are.equal(0, code, err)
    assert.are.equal("completed", show(env, id).state)
    local by = requests(echo)
    assert.are.equal(1, count(by, "/one"))
    assert.are.equal(1, count(by, "/two"))
    assert.are.equal(2, count(by, "/three"))
    assert.are.equal(1, count(by, "/four"))
    local k1 = by["/three"][1].headers["idempotency-key"]
    local k2 = by["/three"][2].headers["idempotency-key"]
    assert.is_string(k1)
    assert.are.equal(k1, k2)
    assert.are.equal(id .. "-work-1#3", k1)
  end)

  it("a step that asks for something else when run again fails that run, " ..
    "naming both calls, and its retry starts afresh", function()
    local echo = M.start_echo()
    local id = tonumber((env:ok("start", FIX .. "/diverges.lua", "--var",
      "url=" .. echo.url)):match("%d+"))
    local code, _, err = env:run("run", "--until-idle")
    assert.are.equal(0, code, err)
    local s = show(env, id)
    assert.are.equal("completed", s.state)
    assert.are.equal("/late", s.vars.path)
    local work = {}
    for _, r in ipairs(s.history) do
      if r.step == "work" then
        work[#work + 1] = r
      end
    end
    assert.are.equal(2, #work)
    assert.are.equal("error", work[1].outcome)
    has(work[1].error, "not deterministic: call #1 was ctx.http", "error")
    has(work[1].error, "/early", "error")
    has(work[1].error, "/late", "error")
    assert.are.equal("ok", work[2].outcome)
    -- the first attempt called /early once; the replay never reached the
    -- server; the retry called /late once and did not call it again
    local by = requests(echo)
    assert.are.equal(1, count(by, "/early"))
    assert.are.equal(1, count(by, "/late"))
  end)

  it("math.random and ctx.now() give a step that goes on after a park " ..
    "what they gave it before", function()
    local echo = M.start_echo()
    local id = tonumber((env:ok("start", FIX .. "/replay.lua", "--var",
      "url=" .. echo.url)):match("%d+"))
    local code, _, err = env:run("run", "--until-idle")
    assert.are.equal(0, code, err)
    local s = show(env, id)
    assert.are.equal("completed", s.state)
    local drew = requests(echo)["/drew"]
    assert.are.equal(1, #drew)
    local sent = H.decode(drew[1].body)
    assert.are.equal(sent.r, s.vars.r)
    assert.are.equal(sent.t, s.vars.t)
    assert.are_not.equal(s.vars.r, s.vars.after)
  end)

  -- ---------------------------------------------------------------------
  -- signals

  local function start_review(...)
    return tonumber((env:ok("start", FIX .. "/review.lua", ...)):match("%d+"))
  end

  it("a signal sent before the instance waits is kept until it does",
    function()
      local id = start_review("--var", "case=c1")
      local out = env:ok("signal", "reviewed", "--instance", tostring(id),
        "--var", "by=alice", "--var", "verdict=ok")
      has(out, "kept until it waits for it")
      env:ok("run", "--until-idle")
      local s = show(env, id)
      assert.are.equal("completed", s.state)
      assert.are.equal("alice", s.vars.by)
      assert.are.equal("ok", s.vars.verdict)
      assert.are.same({}, s.signals)
    end)

  it("a signal wakes an instance parked waiting for it, and survives kill -9",
    function()
      local id = start_review("--var", "case=c2")
      local p = env:spawn("run")
      assert(H.poll(20, 0.05, function()
        return env:scalar("select count(*) from instances where id = " .. id ..
          " and state = 'waiting' and wait_signal = 'reviewed' and wake_at " ..
          "is null") == 1
      end), "never parked waiting for the signal")
      H.signal(p, "KILL")
      H.wait_exit(p, 10)
      -- no engine runs: the signal waits in the database, the instance is due
      local out = env:ok("signal", "reviewed", "--where", "case=c2", "--var",
        "by=bob")
      has(out, "sent to 1 instance (1 waiting for it, due now)")
      assert.are.equal(1, env:scalar("select count(*) from signals"))
      env:ok("run", "--until-idle")
      local s = show(env, id)
      assert.are.equal("completed", s.state)
      assert.are.equal("bob", s.vars.by)
      assert.are.equal(0, env:scalar("select count(*) from signals"))
    end)

  it("a wait with a timeout returns nil when no signal comes", function()
    local id = start_review("--var", "case=c3", "--var", "timeout:=1")
    env:ok("run", "--until-idle")
    local s = show(env, id)
    assert.are.equal("completed", s.state)
    assert.is_true(s.vars.timed_out)
  end)

  it("run --until-idle leaves an instance waiting for a signal with no " ..
    "timeout", function()
    local id = start_review("--var", "case=c4")
    env:ok("run", "--until-idle")
    local s = show(env, id)
    assert.are.equal("waiting", s.state)
    assert.are.equal("reviewed", s.waiting_for)
  end)

  it("refuses a signal for no instance, several, or an ended one: exit 2, " ..
    "nothing changed", function()
    local a = start_review("--var", "team=x")
    start_review("--var", "team=x")
    local ended = tonumber((env:ok("start", "hello", "--var",
      "user_id=u")):match("%d+"))
    env:ok("run", "--until-idle")
    local before = env:snapshot()
    local cases = {
      { { "--where", "team=x" }, "more than one live instance has team = 'x'" },
      { { "--where", "team=nobody" }, "no live instance has team = 'nobody'" },
      { { "--instance", "999" }, "no instance 999" },
      { { "--instance", tostring(ended) }, "is completed" },
      { { "--where", "team-x" }, "--where: expected VAR=VALUE" },
      { { "--where", "a.b=1" }, "--where: expected VAR=VALUE" },
      { {}, "name the instance with --instance ID or --where" },
      { { "--instance", tostring(a), "--where", "team=x" },
        "name the instance with --instance ID or --where" },
    }
    for _, c in ipairs(cases) do
      local args = { "signal", "reviewed" }
      for _, x in ipairs(c[1]) do
        args[#args + 1] = x
      end
      local code, _, err = env:run(table.unpack(args))
      assert.are.equal(2, code, table.concat(args, " ") .. ": " .. err)
      has(err, c[2], table.concat(args, " "))
    end
    assert.are.equal(before, env:snapshot(), "the database changed")
    -- --all sends to every one that matches
    has(env:ok("signal", "reviewed", "--where", "team=x", "--all", "--var",
      "by=carol"), "sent to 2 instances (2 waiting for it, due now)")
    env:ok("run", "--until-idle")
    assert.are.equal(2, env:scalar("select count(*) from instances where " ..
      "workflow = 'review' and state = 'completed' and " ..
      H.jtext("vars", "by") .. " = 'carol'"))
  end)

  it("show lists the signals an instance never took", function()
    local id = start_review("--var", "case=c5", "--var", "timeout:=0")
    env:ok("signal", "escalated", "--instance", tostring(id), "--var",
      "level:=2")
    env:ok("run", "--until-idle")
    local s = show(env, id)
    assert.are.equal("completed", s.state)
    assert.is_true(s.vars.timed_out)
    assert.are.equal(1, #s.signals)
    assert.are.equal("escalated", s.signals[1].name)
    assert.are.same({ level = 2 }, s.signals[1].vars)
    has(env:ok("show", tostring(id)), "signals queued (not taken)")
  end)

  it("the report's time in branch steps leaves parked time out; branch " ..
    "latency keeps it", function()
      env:ok("rollout", "set", "naps", "50%", "--reason", "parked time")
      env:ok("start", FIX .. "/routed_nap.lua", "--count", "20", "--var",
        "user_id=u{n}")
      env:ok("run", "--until-idle")
      assert.are.equal(20, env:scalar("select count(*) from instances " ..
        "where state = 'completed'"))
      -- every branch step parked once, for 1.2 s
      assert.are.equal(20, env:scalar("select count(*) from step_runs " ..
        "where step like 'nap_%' and ended_at - started_at >= 1200 " ..
        "and run_ms < 1000"))
      local report = H.decode((env:ok("report", "naps", "--json")))
      for _, v in ipairs({ "v1", "v2" }) do
        local lat = report.versions[v].latency_ms
        assert.is_true(lat.branch.count > 0, v .. " routed nothing")
        -- recounts of the history: the branch step's run_ms, and the
        -- decision to the end
        local runs = env:sql("select r.run_ms, i.ended_at - d.decided_at " ..
          "from cv_decisions d join step_runs r on r.instance_id = " ..
          "d.instance_id and r.step = 'nap_" .. v .. "' join instances i " ..
          "on i.id = d.instance_id where d.version = '" .. v .. "'")
        local max_run, min_branch = 0, math.huge
        for _, r in ipairs(runs) do
          max_run = math.max(max_run, tonumber(r[1]))
          min_branch = math.min(min_branch, tonumber(r[2]))
        end
        assert.are.equal(lat.branch.count, #runs)
        assert.is_true(lat.steps.p99 <= max_run + 50, string.format(
          "%s: steps p99 %s ms, the branch steps ran at most %d ms", v,
          lat.steps.p99, max_run))
        assert.is_true(lat.branch.p50 >= 1200, string.format(
          "%s: branch p50 %s ms, under the 1.2 s park", v, lat.branch.p50))
        assert.is_true(min_branch >= 1200)
      end
    end)
end)
