-- Notifications of a flag's changes (`rollout notify`, `rollout
-- notifications`): the receiver is the echo server
-- (tests/fixtures/http/echo_server.py), which logs every request with the
-- status it answered; ?refuse=N makes it answer 503 to the first N
-- attempts of each Idempotency-Key, ?delay=S holds each request S seconds.
-- Engines run with short ticks and backoffs (settings), so nothing here
-- waits on the defaults.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local M = require "mock"

local CV = H.repo .. "/tests/fixtures/cv"
local FLAG = "checkout"
local FAST = { "--set", "choose_version.notify_every_ms=50",
               "--set", "choose_version.notify_backoff_ms=50" }

local function has(haystack, needle, what)
  assert(type(haystack) == "string" and haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, tostring(haystack)))
end

local function deliveries(env, flag)
  return H.decode((env:ok("rollout", "notifications", flag or FLAG,
    "--json")))
end

-- Waits until every delivery of the flag is delivered; returns them.
local function all_delivered(env, timeout)
  local ds
  assert(H.poll(timeout or 30, 0.05, function()
    ds = deliveries(env)
    for _, d in ipairs(ds) do
      if d.state ~= "delivered" then
        return false
      end
    end
    return #ds > 0
  end), "not all delivered: " .. H.json.encode(ds or {}))
  return ds
end

-- An engine with these settings (and FAST's) that runs until stopped.
local function engine(env, ...)
  local args = {}
  for _, a in ipairs(FAST) do
    args[#args + 1] = a
  end
  for _, a in ipairs({ ... }) do
    args[#args + 1] = a
  end
  args[#args + 1] = "run"
  return env:spawn(table.unpack(args))
end

local function stop(p)
  H.signal(p, "TERM")
  assert.are.equal(0, H.wait_exit(p, 30), "the engine did not stop cleanly")
end

-- HMAC-SHA256 of text under secret, in hex, by Python's hmac: an
-- implementation that is not the one under test.
local function hmac_hex(env, secret, text)
  local sf, bf = env:path("hmac.key"), env:path("hmac.body")
  H.write(sf, secret)
  H.write(bf, text)
  return H.capture(H.q(M.PYTHON) .. " -c " .. H.q(
    "import hmac, hashlib, sys\n" ..
    "k = open(sys.argv[1], 'rb').read(); b = open(sys.argv[2], 'rb').read()\n" ..
    "print(hmac.new(k, b, hashlib.sha256).hexdigest())") .. " " ..
    H.q(sf) .. " " .. H.q(bf))
end

describe("rollout notifications", function()
  local env, echo

  before_each(function()
    env = H.env { workflows = CV }
    echo = M.start_echo()
    env:ok("rollout", "set", FLAG, "1%", "--reason", "start")
  end)

  after_each(function()
    H.reap()
    M.stop_all()
    H.rmdir(env.dir)
  end)

  it("are delivered at least once, in order, signed, one key per change, " ..
    "through a receiver that refuses the first two attempts", function()
    H.write(env:path("secret"), "s3cret-key\n")
    local hook = echo.url .. "/hook?refuse=2"
    env:ok("rollout", "notify", FLAG, "--url", hook, "--secret-file",
      env:path("secret"), "--reason", "tell the team")
    env:ok("rollout", "notify", FLAG, "--url", echo.url .. "/slack",
      "--format", "slack")
    env:ok("rollout", "set", FLAG, "5%", "--reason", "step 2")
    env:ok("rollout", "set", FLAG, "25%", "--reason", "step 3")
    env:ok("rollout", "kill", FLAG, "--reason", "errors up")
    -- no engine yet: everything waits, nothing is lost
    local waiting = deliveries(env)
    assert.are.equal(5 + 4, #waiting) -- hook: 2 notify, 2 rates, kill
    for _, d in ipairs(waiting) do
      assert.are.equal("pending", d.state)
      assert.are.equal(0, d.attempts)
    end
    assert.are.equal(0, #M.echo_log(echo))

    local p = engine(env)
    local ds = all_delivered(env)
    stop(p)

    -- the audit entries since the first target, in order
    local changes = {}
    for _, h in ipairs(H.decode((env:ok("rollout", "history", FLAG,
      "--json")))) do
      if h.id >= ds[1].audit_id then
        changes[#changes + 1] = h
      end
    end
    assert.are.same({ "notify", "notify", "rate", "rate", "kill" },
      (function()
        local t = {}
        for i, c in ipairs(changes) do
          t[i] = c.what
        end
        return t
      end)())

    local hook_reqs, slack_reqs = {}, {}
    for _, r in ipairs(M.echo_log(echo)) do
      table.insert(r.path:find("^/hook") and hook_reqs or slack_reqs, r)
    end
    -- the hook was added first: it hears of both additions, then the rest
    local keys, order = {}, {}
    for _, r in ipairs(hook_reqs) do
      local key = r.headers["idempotency-key"]
      assert.is_truthy(key and key:match("^sy%-%x+$"), key)
      if not keys[key] then
        keys[key] = {}
        order[#order + 1] = key
      end
      table.insert(keys[key], r)
      -- every attempt carries the same body and a valid signature
      assert.are.equal("sha256=" .. hmac_hex(env, "s3cret-key", r.body),
        r.headers["x-switchyard-signature"])
      assert.are.equal("application/json", r.headers["content-type"])
    end
    assert.are.equal(#changes, #order)
    local last = 0
    for i, key in ipairs(order) do
      local tries = keys[key]
      assert.are.same({ 503, 503, 200 },
        { tries[1].status, tries[2].status, tries[3] and tries[3].status })
      assert.are.equal(3, #tries)
      assert.are.equal(tries[1].body, tries[3].body)
      -- in order: each change's attempts all come after the one before
      for _, t in ipairs(tries) do
        local at
        for k, r in ipairs(hook_reqs) do
          if r == t then
            at = k
          end
        end
        assert.is_true(at > last)
      end
      last = (function()
        for k, r in ipairs(hook_reqs) do
          if r == tries[3] then
            return k
          end
        end
      end)()
      local b = H.decode(tries[3].body)
      assert.are.equal("switchyard.rollout.change/1", b.schema)
      assert.are.equal(changes[i].id, b.id)
      assert.are.equal(FLAG, b.flag)
      assert.are.equal(changes[i].what, b.change)
      assert.are.equal(changes[i].new, b.new)
      assert.are.equal(changes[i].reason, b.reason)
      assert.are.equal(changes[i].actor, b.actor)
    end
    local kill = H.decode(keys[order[#order]][3].body)
    assert.are.same({ "on", true, "25%", "errors up" },
      { kill.new, kill.killed, kill.rate, kill.reason })

    -- the slack target: its own addition and the three changes, as text
    assert.are.equal(4, #slack_reqs)
    assert.is_nil(slack_reqs[1].headers["x-switchyard-signature"])
    has(H.decode(slack_reqs[2].body).text, "rate 1% -> 5% by ", "slack")
    has(H.decode(slack_reqs[4].body).text, "kill off -> on by ", "slack")

    -- what `notifications` says matches what the receiver saw
    for _, d in ipairs(ds) do
      if d.url == hook then
        assert.are.equal(3, d.attempts)
        assert.are.equal(200, d.last_status)
        assert.are.equal(3, #keys[d.idempotency_key])
      else
        assert.are.equal(1, d.attempts)
      end
    end
    has(env:ok("rollout", "notifications", FLAG), "delivered", "text")
    has(env:ok("rollout", "notify", FLAG), hook .. "  json, signed", "list")
  end)

  it("survive kill -9 of the engine between the change and the delivery",
    function()
      env:ok("rollout", "notify", FLAG, "--url", echo.url .. "/hook?refuse=1")
      local before = #deliveries(env)
      local p = engine(env, "--set", "choose_version.notify_backoff_ms=1500")
      assert(H.poll(30, 0.02, function()
        return #M.echo_log(echo) >= 1
      end), "the first attempt never came")
      H.signal(p, "KILL")
      H.wait_exit(p, 10)
      -- the refused attempt is on record; the change is still to deliver
      local d = deliveries(env)[1]
      assert.are.same({ "pending", 1, 503 },
        { d.state, d.attempts, d.last_status })
      env:ok("rollout", "set", FLAG, "2%", "--reason", "while it was down")
      assert.are.equal(before + 1, #deliveries(env))
      local q = engine(env)
      local ds = all_delivered(env)
      stop(q)
      local log = M.echo_log(echo)
      assert.are.equal(d.idempotency_key, log[2].headers["idempotency-key"])
      assert.are.equal(200, log[2].status)
      assert.are.equal(ds[2].idempotency_key,
        log[#log].headers["idempotency-key"])
      assert.are.equal(200, log[#log].status)
    end)

  it("never hold up routing: deliveries in flight are bounded, and " ..
    "instances run while a receiver holds every request", function()
    for _, path in ipairs { "/a", "/b", "/c", "/d" } do
      env:ok("rollout", "notify", FLAG, "--url",
        echo.url .. path .. "?delay=300")
    end
    env:ok("rollout", "set", FLAG, "50%", "--reason", "more")
    env:ok("start", "counted", "--count", "200", "--var", "user_id=u{n}")
    local p = engine(env, "--set", "choose_version.notify_max_in_flight=2",
      "--set", "choose_version.notify_timeout_ms=600000")
    assert(H.poll(60, 0.05, function()
      return env:scalar("SELECT count(*) FROM instances WHERE state = " ..
        "'completed'") == 200
    end), "the instances did not complete")
    assert(H.poll(30, 0.02, function()
      return #M.echo_log(echo) >= 2
    end), "no delivery started")
    -- all routed, while two requests are held and nothing more is sent
    assert.are.equal(200, env:scalar("SELECT count(*) FROM cv_decisions"))
    local log = M.echo_log(echo)
    assert.are.equal(2, #log)
    for _, r in ipairs(log) do
      assert.is_true(r.in_flight <= 2)
    end
    local started = 0
    for _, d in ipairs(deliveries(env)) do
      assert.are.equal("pending", d.state)
      started = started + d.attempts
    end
    assert.are.equal(2, started)
    -- and the engine stops at once, its deliveries abandoned to a lease
    stop(p)
  end)

  it("time out a receiver slower than notify_timeout_ms, and try again",
    function()
      env:ok("rollout", "notify", FLAG, "--url", echo.url .. "/slow?delay=5")
      local p = engine(env, "--set", "choose_version.notify_timeout_ms=200")
      local d
      assert(H.poll(30, 0.05, function()
        d = deliveries(env)[1]
        return d.attempts >= 2 and d.last_error
      end), "no second attempt")
      stop(p)
      assert.are.equal("pending", d.state)
      has(d.last_error, "timed out", "last_error")
    end)

  it("--remove drops what was not delivered; bad input is exit 2 and " ..
    "changes nothing", function()
    env:ok("rollout", "notify", FLAG, "--url", echo.url .. "/x")
    env:ok("rollout", "set", FLAG, "3%", "--reason", "r")
    env:ok("rollout", "notify", FLAG, "--url", echo.url .. "/x", "--remove")
    for _, d in ipairs(deliveries(env)) do
      assert.are.equal("dropped", d.state)
    end
    has(env:ok("rollout", "notify", FLAG), "no notification targets", "list")
    H.write(env:path("empty"), "")
    local before = env:snapshot()
    for _, c in ipairs {
      { { "notify", FLAG, "--url", "ftp://example.com/x" }, "--url" },
      { { "notify", FLAG, "--url", "not a url" }, "--url" },
      { { "notify", "nosuchflag", "--url", echo.url }, "no flag 'nosuchflag'" },
      { { "notify", "nosuchflag" }, "no flag 'nosuchflag'" },
      { { "notify", FLAG, "--url", echo.url, "--format", "xml" }, "--format" },
      { { "notify", FLAG, "--url", echo.url, "--secret-file",
        env:path("missing") }, "--secret-file" },
      { { "notify", FLAG, "--url", echo.url, "--secret-file",
        env:path("empty") }, "is empty" },
      { { "notify", FLAG, "--url", echo.url .. "/y", "--remove" },
        "has no target" },
      { { "notify", FLAG, "--remove" }, "which target" },
      { { "notify", FLAG, "--url" }, "needs a non-empty value" },
      { { "notifications", FLAG, "--url", echo.url }, "FLAG and --json" },
      { { "notifications" }, "which flag" },
    } do
      local args = { "rollout" }
      for _, a in ipairs(c[1]) do
        args[#args + 1] = a
      end
      local code, _, err = env:run(table.unpack(args))
      assert.are.equal(2, code, table.concat(args, " ") .. ": " .. err)
      has(err, c[2], table.concat(args, " "))
    end
    assert.are.equal(before, env:snapshot())
  end)
end)
