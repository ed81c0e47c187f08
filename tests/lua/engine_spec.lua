-- The engine as a step sees it: the ctx API, transitions, retries and
-- backoff, incidents (retry, cancel), timeouts, durable sleeps, plugins.
local T = require "switchyard.testing"
local D = require "testdb"

local FIX = "tests/fixtures/engine/"
local PLUGINS = os.getenv("SY_TEST_PLUGINS")

local function new_engine(opts)
  opts = opts or {}
  local db = D.new()
  opts.db = db
  -- the test plugin reads the database on a connection of its own
  opts.settings = opts.settings or {}
  opts.settings["echo.db"] = db
  local e = T.engine(opts)
  return e, db
end

local function cleanup(e, db)
  e:close()
  D.remove(db)
end

local function outcomes(history)
  local out = {}
  for _, r in ipairs(history) do
    out[#out + 1] = r.step .. "#" .. r.attempt .. ":" .. r.outcome
  end
  return table.concat(out, " ")
end

describe("ctx", function()
  it("keeps vars across steps and gives the step its fields", function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "ctx.lua", { user_id = "u7" }))
    e:run()
    local i = e:instance(id)
    assert.are.equal("completed", i.state)
    assert.are.same({ "ctx", "first", 1, id }, i.vars.seen)
    assert.are.equal(1, i.vars.n)
    assert.are.same({ 1, 2, 3 }, i.vars.list)
    assert.are.same({ a = { b = true } }, i.vars.nested)
    assert.are.equal("u7", i.vars.user_id)
    assert.are.equal("a", i.vars.took)
    cleanup(e, db)
  end)

  it("makes idempotency keys for the running step only", function()
    local e, db = new_engine()
    local a = assert(e:start(FIX .. "keys.lua", {}))
    local b = assert(e:start(FIX .. "keys.lua", {}))
    e:run()
    local refused = 0
    for _, id in ipairs { a, b } do
      local v = e:instance(id).vars
      assert.are.equal(id .. "-one-1", v.key1)
      assert.are.equal(id .. "-two-1", v.key2)
      if v.other then
        assert.matches("only known while the ctx's own step runs", v.other, 1, true)
        refused = refused + 1
      end
    end
    assert.are.equal(1, refused)
    cleanup(e, db)
  end)

  it("follows a next function", function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "ctx.lua", { route = "b" }))
    e:run()
    assert.are.equal("b", e:instance(id).vars.took)
    assert.are.equal("first#1:ok branch_b#1:ok", outcomes(e:history(id)))
    cleanup(e, db)
  end)

  it("turns a next function naming no step into an incident", function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "badnext.lua", {}))
    e:run()
    assert.are.equal("incident", e:instance(id).state)
    assert.matches("next returned 'nowhere'", e:incidents()[1].error, 1, true)
    cleanup(e, db)
  end)
end)

describe("retries", function()
  it("retries with backoff and then succeeds", function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "flaky.lua", { fail_times = 2 }))
    local stats = e:run()
    local i = e:instance(id)
    assert.are.equal("completed", i.state)
    assert.are.equal(3, i.vars.succeeded_on)
    assert.are.equal("work#1:error work#2:error work#3:ok after#1:ok",
                     outcomes(e:history(id)))
    assert.matches("boom on attempt 1", e:history(id)[1].error, 1, true)
    assert.are.equal(2, stats.retries)
    cleanup(e, db)
  end)

  it("raises an incident when retries run out, discarding the failed attempt's vars",
     function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "flaky.lua", { fail_times = 99 }))
    local stats = e:run()
    local i = e:instance(id)
    assert.are.equal("incident", i.state)
    assert.are.equal("work", i.step)
    assert.is_nil(i.vars.touched)
    assert.are.equal(1, stats.incidents)
    local inc = e:incidents()
    assert.are.equal(1, #inc)
    assert.are.equal(id, inc[1].instance)
    assert.are.equal("work", inc[1].step)
    assert.matches("boom on attempt 3", inc[1].error, 1, true)
    cleanup(e, db)
  end)

  it("retry resolves the incident and runs the step again with a fresh budget",
     function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "flaky.lua", { fail_times = 5 }))
    e:run()
    assert.are.equal("incident", e:instance(id).state)
    assert.is_true(e:retry(id))
    local i = e:instance(id)
    assert.are.equal("ready", i.state)
    assert.are.equal(1, i.attempt)
    assert.are.equal(0, #e:incidents())
    e:run()
    -- attempts 1..3 fail twice over: a fresh budget of three attempts
    assert.are.equal(
      "work#1:error work#2:error work#3:error work#1:error work#2:error work#3:error",
      outcomes(e:history(id)))
    local all = e:incidents(true)
    assert.are.equal(2, #all)
    assert.are.equal("retried", all[1].resolution)
    assert.is_nil(all[2].resolution)
    cleanup(e, db)
  end)

  it("cancel ends an incident's instance; retry refuses what is not an incident",
     function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "flaky.lua", { fail_times = 99 }))
    local ok_id = assert(e:start(FIX .. "flaky.lua", {}))
    e:run()
    local ok, err = e:retry(ok_id)
    assert.is_nil(ok)
    assert.matches("only instances in an incident can be retried", err, 1, true)
    assert.is_true(e:cancel(id))
    assert.are.equal("cancelled", e:instance(id).state)
    assert.are.equal("cancelled", e:incidents(true)[1].resolution)
    ok, err = e:cancel(id)
    assert.is_nil(ok)
    assert.matches("is cancelled", err, 1, true)
    ok, err = e:retry(424242)
    assert.is_nil(ok)
    assert.matches("no instance 424242", err, 1, true)
    cleanup(e, db)
  end)
end)

describe("timeouts and sleeps", function()
  it("a step that outlives its timeout is stopped and recorded as a timeout",
     function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "slow.lua", {}))
    e:run()
    assert.are.equal("incident", e:instance(id).state)
    local h = e:history(id)
    assert.are.equal("timeout", h[1].outcome)
    assert.matches("timed out after 0.05s", h[1].error, 1, true)
    cleanup(e, db)
  end)

  it("a long sleep parks: the row waits for its due time, and the step goes "
     .. "on after it without sleeping twice", function()
    local e, db = new_engine()
    local id = assert(e:start(FIX .. "napper.lua", {}))
    e:run { for_ms = 300 }
    local i = e:instance(id)
    -- parked mid-sleep: waiting for the due time, the step not done, the
    -- sleep in the step run's journal
    assert.are.equal("waiting", i.state)
    assert.are.equal("nap", i.step)
    assert.is_nil(i.vars.woke)
    local due = i.wake_at
    assert.is_true(due > 0)
    local j = e:sql("SELECT seq, kind, due_at FROM journal WHERE instance_id "
                    .. "= ?1", id)
    assert.are.same({ { seq = 1, kind = 2, due_at = due } }, j)
    e:run()
    i = e:instance(id)
    assert.are.equal("completed", i.state)
    assert.is_true(i.vars.woke)
    -- one step run, from before the park to after the due time; it ran for
    -- a moment on each side of the park, and was run again once to go on
    local rows = e:sql("SELECT started_at, ended_at, run_ms FROM step_runs "
                       .. "WHERE instance_id = ?1 AND step = 'nap'", id)
    assert.are.equal(1, #rows)
    assert.is_true(rows[1].started_at < due and rows[1].ended_at >= due)
    assert.is_true(rows[1].run_ms < rows[1].ended_at - rows[1].started_at)
    -- run again from its start with the vars it started with: what the
    -- first run did to vars before parking is not kept
    assert.are.equal(1, i.vars.runs)
    assert.are.same({}, e:sql("SELECT * FROM journal"))
    cleanup(e, db)
  end)
end)

describe("plugins", function()
  it("runs a plugin node (async, with a predicate) and ctx functions", function()
    local e, db = new_engine { plugins = PLUGINS }
    local id = assert(e:start(FIX .. "plugin.lua", { user = "ok" }))
    local id2 = assert(e:start(FIX .. "plugin.lua", { user = "no" }))
    e:run()
    local i = e:instance(id)
    assert.are.equal("completed", i.state)
    assert.are.same({ instance = id, ok = true }, i.vars.echoed)
    assert.are.same({ x = 1 }, i.vars.sync)
    assert.are.same({ x = 2, delay_ms = 5 }, i.vars.async)
    assert.matches("echo told to fail", i.vars.caught, 1, true)
    assert.is_false(e:instance(id2).vars.echoed.ok)
    assert.are.equal("node#1:ok call#1:ok", outcomes(e:history(id)))
    cleanup(e, db)
  end)

  it("a failing node becomes an incident, and events land in the plugin's table",
     function()
    local e, db = new_engine { plugins = PLUGINS }
    local bad = assert(e:start(FIX .. "pluginfail.lua", {}))
    local good = assert(e:start(FIX .. "plugin.lua", { user = "ok" }))
    e:run()
    assert.are.equal("incident", e:instance(bad).state)
    assert.matches("echo node told to fail", e:incidents()[1].error, 1, true)
    assert.is_true(e:cancel(bad))
    local rows = e:sql("SELECT instance_id, type FROM echo_events ORDER BY seq")
    local got = {}
    for _, r in ipairs(rows) do got[#got + 1] = r.instance_id .. ":" .. r.type end
    -- 1 completed, 2 incident, 3 incident resolved, 4 cancelled
    table.sort(got)
    assert.are.same({ bad .. ":2", bad .. ":3", bad .. ":4", good .. ":1" }, got)
    cleanup(e, db)
  end)

  it("tells a plugin of an error a handler caught, with its code", function()
    local e, db = new_engine { plugins = PLUGINS }
    local id = assert(e:start("tests/fixtures/handlers/handled.lua",
                              { case = "rejected", user = "ann" }))
    e:run()
    assert.are.equal("completed", e:instance(id).state)
    local got = {}
    for _, r in ipairs(e:sql("SELECT type, step, code FROM echo_events " ..
                             "WHERE instance_id = " .. id .. " ORDER BY seq")) do
      got[#got + 1] = string.format("%d %s %s", r.type, r.step, tostring(r.code))
    end
    -- 5 caught (at the step that raised), then 1 completed
    assert.are.same({ "5 verify document_rejected", "1 done nil" }, got)
    cleanup(e, db)
  end)

  it("tells a plugin which instances are fresh, and keeps its memo while one " ..
     "stays in memory", function()
    local e, db = new_engine { plugins = PLUGINS }
    local ok = assert(e:start(FIX .. "plugin.lua", { user = "ok" }))
    local bad = assert(e:start(FIX .. "pluginfail.lua", {}))
    local nap = assert(e:start(FIX .. "pluginnap.lua", {}))
    -- ok completes and bad fails, both fresh; nap is stopped asleep, and
    -- its memo goes with it (a leak would fail the sanitizer build)
    e:run { for_ms = 300 }
    assert.are.equal("waiting", e:instance(nap).state)
    assert.is_true(e:retry(bad))
    e:run()
    local got = {}
    for _, r in ipairs(e:sql("SELECT instance_id, type, fresh, memo " ..
                             "FROM echo_events ORDER BY seq")) do
      got[#got + 1] = string.format("%d:%d fresh=%d memo=%s", r.instance_id,
                                    r.type, r.fresh, tostring(r.memo))
    end
    table.sort(got)
    assert.are.same({
      ok .. ":1 fresh=1 memo=" .. ok,     -- its own memo reached its event
      bad .. ":2 fresh=0 memo=nil",       -- retried: taken before
      bad .. ":2 fresh=1 memo=" .. bad,   -- the first incident
      bad .. ":3 fresh=0 memo=nil",       -- the retry, a command
      nap .. ":1 fresh=0 memo=nil",       -- taken again after the stop
    }, got)
    cleanup(e, db)
  end)

  it("holds a ctx call of a step that followed at once until the step " ..
     "before it is committed", function()
    local e, db = new_engine { plugins = PLUGINS }
    local ids = {}
    for k = 1, 20 do ids[k] = assert(e:start(FIX .. "chain.lua", {})) end
    e:run()
    for _, id in ipairs(ids) do
      local i = e:instance(id)
      assert.are.equal("completed", i.state)
      -- another connection saw 'second': 'first' was done and committed
      assert.are.equal("second", i.vars.seen)
    end
    cleanup(e, db)
  end)

  it("a failing ctx call raises in the step; settings reach the plugin", function()
    local e, db = new_engine { plugins = PLUGINS, settings = { ["echo.fail"] = "1" } }
    local id = assert(e:start(FIX .. "callfail.lua", {}))
    e:run()
    assert.are.equal("incident", e:instance(id).state)
    e:close()
    -- a second engine without the setting: the retried instance completes
    e = T.engine { db = db, plugins = PLUGINS }
    assert.is_true(e:retry(id))
    e:run()
    local i = e:instance(id)
    assert.are.equal("completed", i.state)
    assert.are.same({ y = 1 }, i.vars.r)
    cleanup(e, db)
  end)
end)

describe("the step journal's bounds", function()
  it("an answer past 16 MiB, or past 32 MiB for the step run, fails its " ..
     "call in the step, and a replay gives the same failure", function()
    local e, db = new_engine { plugins = PLUGINS }
    local id = assert(e:start(FIX .. "bigjournal.lua", {}))
    e:run()
    local i = e:instance(id)
    assert.are.equal("completed", i.state)
    -- the step parked once and ran again from its start: one step run
    assert.are.equal("big#1:ok", outcomes(e:history(id)))
    assert.matches("does not fit the step's journal", i.vars.first, 1, true)
    assert.matches("at most 16 MiB an answer", i.vars.first, 1, true)
    assert.matches("(17825800 bytes)", i.vars.first, 1, true)
    -- two answers of 12 MiB (and 8 bytes of JSON) held, and the first
    -- call's error: a third answer would pass 32 MiB
    assert.matches("does not fit the step's journal", i.vars.fourth, 1, true)
    assert.matches("(12582920 bytes)", i.vars.fourth, 1, true)
    local held = tonumber(i.vars.fourth:match("(%d+) bytes held"))
    assert.is_true(held > 2 * 12582920 and held < 2 * 12582920 + 1024, held)
    assert.is_true(held + 12582920 > 32 * 1048576)
    assert.are.same({ 12 * 1048576, 12 * 1048576 }, i.vars.sizes)
    cleanup(e, db)
  end)
end)

describe("chaining", function()
  it("a loop of Lua steps does not starve the other instances", function()
    local e, db = new_engine { concurrency = 8 }
    local loop = assert(e:start(FIX .. "loop.lua", {}))
    local ids = {}
    for n = 1, 20 do ids[n] = assert(e:start("hello", { user_id = "u" .. n })) end
    e:run { for_ms = 1500 }
    for _, id in ipairs(ids) do
      assert.are.equal("completed", e:instance(id).state)
    end
    -- the loop went on meanwhile, a bounded chain per transaction
    local runs = e:sql("SELECT count(*) AS n FROM step_runs WHERE instance_id = ?1",
                       loop)[1].n
    assert.is_true(runs > 100, "the loop ran " .. runs .. " steps")
    cleanup(e, db)
  end)
end)

describe("scale", function()
  it("runs many instances at once under a concurrency bound", function()
    local e, db = new_engine { concurrency = 25 }
    for n = 1, 500 do assert(e:start("hello", { user_id = "u" .. n })) end
    local stats = e:run()
    assert.are.equal(500, stats.completed)
    assert.are.equal(1500, stats.steps)
    local rows = e:sql("SELECT count(*) AS n FROM instances WHERE state = 'completed'")
    assert.are.equal(500, rows[1].n)
    cleanup(e, db)
  end)
end)

-- ---------------------------------------------------------------------
-- Shadow runs (sy_api.shadow), through the test plugin's node: a step run
-- beside the instance on a copy of its vars, writing nothing.
describe("a shadow run", function()
  local DONE, ERROR, TIMEOUT = 0, 1, 2
  local json = require "dkjson"

  -- Runs one instance of the fixture in mode `mode`, to the end; returns
  -- the instance, its history and its shadow report.
  local function shadowed(mode)
    local e, db = new_engine { plugins = PLUGINS }
    local id = assert(e:start(FIX .. "shadow.lua", { user = "ann", mode = mode }))
    e:run()
    local i, h = e:instance(id), e:history(id)
    local rows = e:sql("SELECT * FROM echo_shadows WHERE instance_id = " .. id)
    local ended = e:sql("SELECT ended_at FROM instances WHERE id = " .. id)[1].ended_at
    local incidents = #e:incidents()
    cleanup(e, db)
    assert.are.equal(1, #rows, "one report")
    local r = rows[1]
    r.p_vars = r.p_vars and json.decode(r.p_vars)
    r.c_vars = r.c_vars and json.decode(r.c_vars)
    return i, h, r, ended, incidents
  end

  -- What a run leaves whatever its shadow did: the primary's path, vars
  -- and history, no incident.
  local function untouched(i, h, incidents)
    assert.are.equal("completed", i.state)
    assert.are.same({ user = "ann", mode = i.vars.mode, answer = "v1:ann",
                      done = true,
                      echoed = i.vars.echoed }, i.vars)
    assert.are.equal("node#1:ok primary#1:ok after#1:ok", outcomes(h))
    assert.are.equal(0, incidents)
  end

  it("runs the candidate on a copy of the vars, and reports both sides", function()
    local i, h, r, _, incidents = shadowed(nil)
    untouched(i, h, incidents)
    assert.are.equal("primary", r.p_step)
    assert.are.equal(DONE, r.p_status)
    assert.are.equal("v1:ann", r.p_vars.answer)
    assert.are.equal("candidate", r.c_step)
    assert.are.equal(DONE, r.c_status)
    assert.are.equal("v2:ann", r.c_vars.answer)
    assert.are.same({ y = 1 }, r.c_vars.safe)
    -- the copy: what the candidate wrote stayed in its report
    assert.are.equal("changed in shadow", r.c_vars.user)
  end)

  it("keeps the candidate's error, timeout and refused calls out of the instance", function()
    for mode, want in pairs {
      fail = { ERROR, "the candidate broke" },
      slow = { TIMEOUT, "timed out" },
      signal = { ERROR, "ctx.wait_signal is not available in a shadow run" },
      unsafe = { ERROR, "ctx.echo is not available in a shadow run" },
    } do
      local i, h, r, _, incidents = shadowed(mode)
      untouched(i, h, incidents)
      assert.are.equal(DONE, r.p_status, mode)
      assert.are.equal(want[1], r.c_status, mode)
      assert.matches(want[2], r.c_error, 1, true)
      assert.is_nil(r.c_vars, mode)
    end
  end)

  it("lets the instance end first, and is recorded after", function()
    local i, h, r, ended, incidents = shadowed("late")
    untouched(i, h, incidents)
    assert.are.equal(DONE, r.c_status)
    assert.is_true(r.recorded_at >= ended, "recorded after the instance ended")
  end)
end)

describe("a shadow run's compare", function()
  local SAME, DIFFERENT, FAILED = 1, 2, 3

  -- The report of one instance of the compare fixture.
  local function compared(vars)
    local e, db = new_engine { plugins = PLUGINS }
    local id = assert(e:start(FIX .. "shadow_compare.lua", vars))
    e:run()
    local i = e:instance(id)
    local rows = e:sql("SELECT verdict, detail, c_status FROM echo_shadows")
    cleanup(e, db)
    assert.are.equal("completed", i.state)
    assert.are.equal(1, #rows)
    return rows[1], id
  end

  it("by a list: each var equal as JSON, and what differs", function()
    local r = compared { cmp = "list", user = "ann" }
    assert.are.equal(DIFFERENT, r.verdict)
    assert.are.equal('answer: "v1:ann" -> "v2:ann"; '
                     .. 'user: "ann" -> "changed in shadow"', r.detail)
    r = compared { cmp = "list", user = "ann", same = true }
    assert.are.equal(SAME, r.verdict)
    -- a compared var that neither side has is said, not hidden
    assert.are.equal("absent on both sides: nowhere", r.detail)
  end)

  it("by a function of ctx, primary and candidate", function()
    local r, id = compared { cmp = "fn", user = "bo" }
    assert.are.equal(SAME, r.verdict)
    assert.are.equal("fn on shadow_compare #" .. id .. ": primary vs candidate",
                     r.detail)
  end)

  it("that raises, or runs past the step limits, fails and touches nothing", function()
    local r = compared { cmp = "raises", user = "cy" }
    assert.are.equal(FAILED, r.verdict)
    assert.matches("shadow_compare.lua:%d+: no verdict here", r.detail)
    r = compared { cmp = "spins", user = "cy" }
    assert.are.equal(FAILED, r.verdict)
    assert.matches("instruction", r.detail)
  end)
end)

describe("a shadow run in flight when the engine stops", function()
  it("is reported abandoned, and the instance is as without it", function()
    local e, db = new_engine { plugins = PLUGINS }
    local id = assert(e:start(FIX .. "shadow.lua", { user = "bo", mode = "slow" }))
    -- the instance completes; its candidate sleeps 30 s (its timeout: 1 s)
    -- when the engine stops, after 300 ms
    e:run { for_ms = 300 }
    assert.are.equal("completed", e:instance(id).state)
    local rows = e:sql("SELECT c_status, c_error, p_status FROM echo_shadows")
    assert.are.equal(1, #rows)
    assert.are.equal(3, rows[1].c_status) -- abandoned
    assert.matches("the engine stopped first", rows[1].c_error, 1, true)
    assert.are.equal(0, rows[1].p_status) -- the primary's side was done
    cleanup(e, db)
  end)
end)
