-- End-to-end tests of waiting: long sleeps that park (the instance leaves
-- memory and its slot; its row waits for the due time) and the step
-- journal (a step run again from its start, after a park or a kill -9,
-- gets the answers of the calls it had made without making them again;
-- only a call whose answer was not committed is made again, with the same
-- idempotency key; a replay that asks for something else fails the run).
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
          "wake_at > strftime('%s', 'now') * 1000 + 3500000") == 600
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
end)
