-- End-to-end tests of error handlers: an error can carry a code
-- (error({code = ..., message = ...}); a step's timeout is "timeout");
-- retry_on / no_retry say which codes a step retries; once an error is not
-- retried, catch sends the instance to a handler step, which runs with the
-- error in ctx.error, instead of an incident. Fixtures:
-- tests/fixtures/handlers/ (handled.lua, strict.lua, handled_routes.lua).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")

local FIX = H.repo .. "/tests/fixtures/handlers"

local function has(haystack, needle, what)
  assert(haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, haystack))
end

local function show(env, id)
  return H.decode((env:ok("--json", "show", tostring(id))))
end

-- Starts one instance of a fixture with these vars; returns its id.
local function start(env, file, vars)
  local args = { "start", FIX .. "/" .. file }
  for k, v in pairs(vars) do
    args[#args + 1] = "--var"
    args[#args + 1] = type(v) == "number" and (k .. ":=" .. v) or
        (k .. "=" .. v)
  end
  env:ok(table.unpack(args))
  return env:scalar("select max(id) from instances")
end

-- An instance's step runs as "step#attempt outcome [code] -> handler".
local function history(inst)
  local t = {}
  for _, r in ipairs(inst.history) do
    t[#t + 1] = string.format("%s#%d %s%s%s", r.step, r.attempt, r.outcome,
      r.code and (" [" .. r.code .. "]") or "",
      r.caught_by and (" -> " .. r.caught_by) or "")
  end
  return table.concat(t, ", ")
end

describe("error handlers", function()
  local env

  before_each(function()
    env = H.env({ workflows = FIX })
  end)

  after_each(function()
    H.reap()
    H.rmdir(env.dir)
  end)

  it("a coded error goes to its handler at once (no_retry), with ctx.error",
    function()
      local id = start(env, "handled.lua", { case = "rejected", user = "ann" })
      env:ok("run", "--until-idle")
      local inst = show(env, id)
      assert.are.equal("completed", inst.state)
      assert.are.equal("verify#1 error [document_rejected] -> manual_review, "
        .. "manual_review#1 ok, done#1 ok", history(inst))
      local h = inst.vars.handled
      assert.are.equal("manual_review", h.by)
      assert.are.equal("document_rejected", h.code)
      assert.are.equal("verify", h.step)
      assert.are.equal(1, h.attempt)
      -- where error() was called, and the message given
      has(h.message, FIX .. "/handled.lua:", "ctx.error.message")
      has(h.message, "blurry photo of ann", "ctx.error.message")
      -- the handler starts from the vars the failed run started with
      assert.is_false(h.touched)
      assert.is_nil(inst.vars.verified)
      -- and the step after the handler has no error to handle
      assert.is_false(inst.vars.error_after)
      assert.is_nil(inst.handling)
      assert.are.equal(0, env:scalar("select count(*) from incidents"))
      local text = env:ok("show", tostring(id))
      has(text, "error [document_rejected]: ", "show")
      has(text, "-> caught by manual_review", "show")
    end)

  it("'*' catches an error without a code once its retries are spent",
    function()
      local id = start(env, "handled.lua", { case = "crash", user = "bob" })
      local _, err = env:ok("run", "--until-idle")
      has(err, "1 errors caught", "run's summary")
      local inst = show(env, id)
      assert.are.equal("completed", inst.state)
      assert.are.equal("verify#1 error, verify#2 error, verify#3 error " ..
        "-> fallback, fallback#1 ok, done#1 ok", history(inst))
      local h = inst.vars.handled
      assert.are.equal("fallback", h.by)
      assert.are.equal("none", h.code)
      assert.are.equal(3, h.attempt)
      has(h.message, "verifier crashed on bob", "ctx.error.message")
    end)

  it("a step's timeout is the code 'timeout', and can be caught", function()
    local id = start(env, "handled.lua", { case = "late", user = "cy" })
    env:ok("run", "--until-idle")
    local inst = show(env, id)
    assert.are.equal("completed", inst.state)
    assert.are.equal("verify#1 timeout [timeout] -> late, late#1 ok, done#1 ok",
      history(inst))
    assert.are.equal("timeout", inst.vars.handled.code)
    has(inst.vars.handled.message, "timed out after 0.3s", "ctx.error.message")
  end)

  it("a code no rule excludes is retried as before, and no handler runs",
    function()
      local id = start(env, "handled.lua", { case = "limited", user = "di" })
      env:ok("run", "--until-idle")
      local inst = show(env, id)
      assert.are.equal("verify#1 error [rate_limited], verify#2 error " ..
        "[rate_limited], verify#3 ok, done#1 ok", history(inst))
      assert.is_true(inst.vars.verified)
      assert.is_nil(inst.vars.handled)
    end)

  it("retry_on: only the codes listed are retried; the rest are incidents " ..
    "at their first error", function()
      local limited = start(env, "strict.lua", { case = "limited" })
      local down = start(env, "strict.lua", { case = "down" })
      local plain = start(env, "strict.lua", { case = "plain" })
      env:ok("run", "--until-idle")
      local a, b, c = show(env, limited), show(env, down), show(env, plain)
      assert.are.equal("completed", a.state)
      assert.are.equal("call#1 error [rate_limited], call#2 ok", history(a))
      assert.are.equal("incident", b.state)
      assert.are.equal("call#1 error [vendor_down]", history(b))
      has(b.incidents[1].error, "503 from the vendor", "the incident")
      assert.are.equal("incident", c.state)
      assert.are.equal("call#1 error", history(c))
    end)

  it("a handler parked in a long sleep keeps ctx.error through kill -9",
    function()
      local id = start(env, "handled.lua",
        { case = "rejected", user = "eve", nap = 1.5 })
      local p = env:spawn("run")
      local parked = H.poll(20, 0.02, function()
        return env:scalar("select count(*) from instances where id = " .. id ..
          " and state = 'waiting' and step = 'manual_review'") == 1
      end)
      assert.is_truthy(parked, "the handler never parked")
      H.signal(p, "KILL")
      assert.are.equal(137, H.wait_exit(p, 10))
      -- the database holds the error the parked step handles
      local caught = H.decode(env:scalar("select caught from instances " ..
        "where id = " .. id))
      assert.are.equal("document_rejected", caught.code)
      assert.are.equal("verify", caught.step)
      env:ok("run", "--until-idle")
      local inst = show(env, id)
      assert.are.equal("completed", inst.state)
      assert.are.equal("document_rejected", inst.vars.handled.code)
      has(inst.vars.handled.message, "blurry photo of eve", "ctx.error")
      assert.are.equal(1, env:scalar("select count(*) from step_runs where " ..
        "instance_id = " .. id .. " and step = 'manual_review'"))
      assert.is_nil(inst.handling)
    end)

  it("the report's caught errors per version equal a recount", function()
    local N = 300
    env:ok("rollout", "set", "handlers", "50%", "--reason", "handler test")
    env:ok("start", FIX .. "/handled_routes.lua", "--count", tostring(N),
      "--var", "user_id=u{n}", "--var", "n:={n}")
    env:ok("run", "--until-idle")
    -- From the history: step runs a handler took, per version.
    local recount = {}
    for _, r in ipairs(env:sql([[
        SELECT d.version, count(r.instance_id),
          count(DISTINCT r.instance_id)
        FROM cv_decisions d LEFT JOIN step_runs r
          ON r.instance_id = d.instance_id AND r.handler IS NOT NULL
        WHERE d.flag = 'handlers' GROUP BY d.version]])) do
      recount[r[1]] = { tonumber(r[2]), tonumber(r[3]) }
    end
    -- From the fixture's rules: v1 fails n % 5 == 0, v2 n % 3 == 0.
    local expected = { v1 = 0, v2 = 0 }
    for _, r in ipairs(env:sql("SELECT d.version, " .. H.jtext("i.vars", "n")
      .. " FROM cv_decisions d JOIN instances i ON i.id = d.instance_id")) do
      local n = tonumber(r[2])
      if (r[1] == "v1" and n % 5 == 0) or (r[1] == "v2" and n % 3 == 0) then
        expected[r[1]] = expected[r[1]] + 1
      end
    end
    local report = H.decode((env:ok("report", "handlers", "--json")))
    local get = H.decode((env:ok("rollout", "get", "handlers", "--json")))
    local counters = {}
    for _, c in ipairs(get.counters) do
      counters[c.version] = c
    end
    for _, v in ipairs({ "v1", "v2" }) do
      assert.is_true(expected[v] > 0, "no caught error on " .. v)
      assert.are.equal(expected[v], recount[v][1], v .. ": history")
      assert.are.equal(recount[v][1], report.versions[v].caught_errors, v)
      assert.are.equal(recount[v][2],
        report.versions[v].instances_with_caught_errors, v)
      assert.are.equal(recount[v][1], counters[v].caught, v .. ": counters")
    end
    -- caught errors are not incidents: v2's plain crashes are
    assert.are.equal(0, report.versions.v1.incidents)
    assert.is_true(report.versions.v2.incidents > 0)
    has(env:ok("report", "handlers"), "errors caught by a handler", "report")
  end)
end)
