-- `switchyard retry`: several instances by id in one transaction, or
-- every incident a selection holds (--all, --workflow, --step) in batches
-- of one transaction each, resumable; --dry-run says what it would do and
-- writes nothing. The fixtures fail at a step with no retries, so each
-- instance started with fail = true waits in an incident; counted.lua
-- routes first (flag checkout), so its counters must equal a recount
-- after every retry.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local C = dofile(H.repo .. "/tests/lua/counters.lua")

local CV = H.repo .. "/tests/fixtures/cv"

local function has(haystack, needle, what)
  assert(type(haystack) == "string" and haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, tostring(haystack)))
end

-- n instances of workflow wf that end in an incident.
local function incidents(env, wf, n, prefix)
  env:ok("start", wf, "--count", tostring(n), "--var",
    "user_id=" .. prefix .. "{n}", "--var", "fail:=true")
  env:ok("run", "--until-idle")
end

local function count(env, where)
  return env:scalar("SELECT count(*) FROM instances WHERE " .. where)
end

local function assert_counters(env)
  assert.are.same(env:sql(C.RECOUNT), env:sql(C.COUNTERS))
  assert.are.same(env:sql(C.RAMP_RECOUNT), env:sql(C.RAMP_TALLIES))
end

-- Every instance is wholly retried (ready, a new generation, its incident
-- resolved as retried) or wholly not (in its incident, still open).
local function assert_whole(env)
  local bad = env:scalar([[
    SELECT count(*) FROM instances i WHERE NOT (
      (i.state = 'ready' AND i.generation = 1 AND NOT EXISTS (
         SELECT 1 FROM incidents n WHERE n.instance_id = i.id
           AND (n.resolved_at IS NULL OR n.resolution <> 'retried')))
      OR (i.state = 'incident' AND i.generation = 0 AND EXISTS (
         SELECT 1 FROM incidents n WHERE n.instance_id = i.id
           AND n.resolved_at IS NULL)))]])
  assert.are.equal(0, bad)
end

describe("retry", function()
  local env

  before_each(function()
    env = H.env { workflows = CV }
    env:ok("rollout", "set", "checkout", "50%", "--reason", "half")
  end)

  after_each(function()
    H.reap()
    H.rmdir(env.dir)
  end)

  it("--all selects by workflow and step, one transaction per batch, and " ..
    "the counters equal a recount after", function()
    incidents(env, "counted", 40, "c")
    incidents(env, "plain_fail", 5, "p")
    local at_new = count(env, "workflow = 'counted' AND step = 'new' AND " ..
      "state = 'incident'")
    assert.is_true(at_new > 5 and at_new < 35, "both versions failed")
    assert.are.equal(45, count(env, "state = 'incident'"))

    -- --dry-run: the selection, and nothing written
    local before = env:snapshot()
    local dry = H.decode((env:ok("retry", "--all", "--workflow", "counted",
      "--step", "new", "--dry-run", "--json")))
    assert.are.equal(at_new, dry.instances)
    assert.are.same({ { workflow = "counted", step = "new", at = "new",
      instances = at_new } }, dry.by_step)
    assert.are.equal(at_new, #dry.ids)
    has(env:ok("retry", "--all", "--dry-run"), "would retry 45 instances",
      "dry run")
    assert.are.equal(before, env:snapshot())

    local out = env:ok("retry", "--all", "--workflow", "counted", "--step",
      "new", "--batch", "3")
    has(out, "retried " .. at_new .. " instances", "retry")
    local batches = select(2, out:gsub("retried %d+ %(through instance", ""))
    assert.are.equal(math.ceil(at_new / 3), batches)
    -- exactly the selected: the ids the dry run listed are ready now
    local ready = env:sql("SELECT id FROM instances WHERE state = 'ready' " ..
      "ORDER BY id")
    assert.are.equal(at_new, #ready)
    for k, r in ipairs(ready) do
      assert.are.equal(dry.ids[k], tonumber(r[1]))
    end
    assert.are.equal(45 - at_new, count(env, "state = 'incident'"))
    assert.are.equal(5, count(env, "workflow = 'plain_fail' AND state = " ..
      "'incident'"))
    assert_whole(env)
    assert_counters(env)

    -- the rest, all at once; then there is nothing left to retry
    has(env:ok("retry", "--all"), "retried " .. (45 - at_new) .. " instance",
      "rest")
    assert.are.equal(45, count(env, "state = 'ready'"))
    assert_whole(env)
    assert_counters(env)
    has(env:ok("retry", "--all"), "retried 0 instances", "nothing left")
  end)

  it("survives kill -9 between batches: each is whole, and the same " ..
    "command takes up the rest, retrying none twice", function()
    incidents(env, "counted", 300, "k")
    local p = env:spawn("retry", "--all", "--batch", "1")
    H.poll(30, 0.005, function()
      return count(env, "state = 'ready'") > 0
    end)
    H.signal(p, "KILL")
    H.wait_exit(p, 10)
    local done = count(env, "state = 'ready'")
    assert.is_true(done > 0)
    assert_whole(env)
    assert_counters(env)
    env:ok("retry", "--all")
    assert.are.equal(300, count(env, "state = 'ready' AND generation = 1"))
    assert.are.equal(300, env:scalar("SELECT count(*) FROM incidents " ..
      "WHERE resolution = 'retried'"))
    assert_whole(env)
    assert_counters(env)
  end)

  it("takes several ids in one transaction: one not in an incident, and " ..
    "none is retried", function()
    incidents(env, "plain_fail", 3, "i")
    env:ok("start", "plain_fail", "--var", "user_id=ok")
    env:ok("run", "--until-idle")
    local ids = env:sql("SELECT id FROM instances ORDER BY id")
    local a, b, c, ok = ids[1][1], ids[2][1], ids[3][1], ids[4][1]
    local before = env:snapshot()
    local code, _, err = env:run("retry", a, ok, b)
    assert.are.equal(2, code)
    has(err, "instance " .. ok .. " is completed", "mixed")
    has(env:ok("retry", a, b, "--dry-run"),
      "would retry 2 instances", "dry run")
    assert.are.equal(before, env:snapshot())
    local out = env:ok("retry", a, b)
    has(out, "instance " .. b .. " will run again", "retry")
    assert.are.same({ "ready", "ready", "incident" }, {
      env:scalar("SELECT state FROM instances WHERE id = " .. a),
      env:scalar("SELECT state FROM instances WHERE id = " .. b),
      env:scalar("SELECT state FROM instances WHERE id = " .. c) })
  end)

  it("--flag F --version v1 --reroute v2 moves exactly those incidents to " ..
    "V2, where they complete; nothing counted twice as routed", function()
    -- guarded.lua: V1 fails every instance, V2 none
    env:ok("rollout", "set", "guarded", "50%", "--reason", "half")
    env:ok("start", "guarded", "--count", "40", "--var", "user_id=g{n}",
      "--var", "n:={n}", "--var", "v1_fail:=100", "--var", "v2_fail:=0")
    incidents(env, "plain_fail", 3, "p")
    local on_v1 = count(env, "workflow = 'guarded' AND state = 'incident'")
    assert.is_true(on_v1 > 5 and on_v1 < 35, "both versions decided")
    local before = H.decode((env:ok("report", "guarded", "--json")))

    local snap = env:snapshot()
    local dry = H.decode((env:ok("retry", "--all", "--flag", "guarded",
      "--version", "v1", "--reroute", "v2", "--dry-run", "--json")))
    assert.are.same({ { workflow = "guarded", step = "old", at = "new",
      instances = on_v1 } }, dry.by_step)
    has(env:ok("retry", "--all", "--flag", "guarded", "--reroute", "v2",
      "--dry-run"), "to run again at new", "dry run")
    assert.are.equal(snap, env:snapshot())

    has(env:ok("retry", "--all", "--flag", "guarded", "--version", "v1",
      "--reroute", "v2", "--batch", "7"), "retried " .. on_v1 .. " ",
      "reroute")
    -- exactly the V1 incidents moved, to V2's step; the rest untouched
    assert.are.equal(on_v1, count(env, "workflow = 'guarded' AND state = " ..
      "'ready' AND step = 'new'"))
    assert.are.equal(3, count(env, "workflow = 'plain_fail' AND state = " ..
      "'incident'"))
    assert.are.equal(on_v1, env:scalar("SELECT count(*) FROM cv_decisions " ..
      "WHERE outcome = 'rerouted' AND version = 'v1' AND reroutes = 0"))
    assert.are.equal(on_v1, env:scalar("SELECT count(*) FROM cv_decisions " ..
      "WHERE reason = 'rerouted' AND version = 'v2' AND reroutes = 1 " ..
      "AND outcome IS NULL"))
    assert_counters(env)

    env:ok("run", "--until-idle")
    assert.are.equal(40, count(env, "workflow = 'guarded' AND state = " ..
      "'completed'"))
    assert_counters(env)
    local after = H.decode((env:ok("report", "guarded", "--json")))
    local v1, v2 = after.versions.v1, after.versions.v2
    -- routed as before: 40 instances, each routed once
    assert.are.equal(before.versions.v1.routed, v1.routed)
    assert.are.equal(before.versions.v2.routed, v2.routed)
    assert.are.equal(40, v1.routed + v2.routed)
    -- V1 keeps its incidents; the reroutes are a line of their own
    assert.are.equal(on_v1, v1.instances_with_incidents)
    assert.are.equal(on_v1, v1.rerouted_away)
    assert.are.same({ instances = on_v1, completed = on_v1, in_flight = 0,
      with_incidents = 0 }, v2.rerouted_in)
    has(env:ok("report", "guarded"), "rerouted here (not routed)", "report")
    -- `show` tells a rerouted instance's story: v1's decision, closed by
    -- the reroute, then the one that brought it to v2
    local id = env:scalar("SELECT min(instance_id) FROM cv_decisions " ..
      "WHERE reroutes = 1")
    local shown = H.decode((env:ok("show", id, "--json"))).decisions
    assert.are.equal(2, #shown)
    assert.are.same({ "v1", "rollout", "rerouted", 0 }, { shown[1].version,
      shown[1].reason, shown[1].outcome, shown[1].reroutes })
    assert.are.same({ "v2", "rerouted", "completed", 1 }, { shown[2].version,
      shown[2].reason, shown[2].outcome, shown[2].reroutes })
    local text = env:ok("show", id)
    has(text, "decisions\n", "show")
    assert.matches("guarded%s+v1  rollout%s+bucket %d+%s+rate [%d.]+%%%s+rerouted\n", text)
    assert.matches("guarded%s+v2  rerouted%s+bucket %d+%s+rate [%d.]+%%%s+completed\n", text)
  end)

  it("by id with --flag: an instance the options do not select is bad " ..
    "input, and none is retried", function()
    env:ok("rollout", "set", "guarded", "50%", "--reason", "half")
    env:ok("start", "guarded", "--count", "20", "--var", "user_id=h{n}",
      "--var", "n:={n}", "--var", "v1_fail:=100", "--var", "v2_fail:=100")
    env:ok("run", "--until-idle")
    local v1 = env:scalar("SELECT min(instance_id) FROM cv_decisions " ..
      "WHERE version = 'v1'")
    local v2 = env:scalar("SELECT min(instance_id) FROM cv_decisions " ..
      "WHERE version = 'v2'")
    local snap = env:snapshot()
    local code, _, err = env:run("retry", v1, v2, "--flag", "guarded",
      "--version", "v1")
    assert.are.equal(2, code)
    has(err, "instance " .. v2 .. " is not one the retry's options select",
      "mixed")
    assert.are.equal(snap, env:snapshot())
    env:ok("retry", v2, "--flag", "guarded", "--reroute", "v1")
    assert.are.equal("old", env:scalar("SELECT step FROM instances " ..
      "WHERE id = " .. v2))
    assert_counters(env)
  end)

  it("refuses bad arguments with exit 2", function()
    incidents(env, "plain_fail", 2, "b")
    local before = env:snapshot()
    for _, c in ipairs {
      { { "retry" }, "which instances?" },
      { { "retry", "1", "--all" }, "not both" },
      { { "retry", "1", "--workflow", "plain_fail" }, "go with --all" },
      { { "retry", "--all", "--batch", "0" }, "--batch" },
      { { "retry", "--all", "--batch", "x" }, "--batch" },
      { { "retry", "0" }, "expected an instance id, got '0'" },
      { { "retry", "--all", "--version", "v1" }, "go with --flag" },
      { { "retry", "--all", "--flag", "checkout", "--reroute", "v3" },
        "--reroute: v1 or v2" },
      { { "retry", "--all", "--flag", "checkout", "--version", "2" },
        "--version: v1 or v2" },
      { { "retry", "--all", "--flag", "bad flag" }, "bad --flag" },
      { { "retry", "--all", "--frob", "x" }, "unknown option" },
    } do
      local code, _, err = env:run(table.unpack(c[1]))
      assert.are.equal(2, code, table.concat(c[1], " ") .. ": " .. err)
      has(err, c[2], table.concat(c[1], " "))
    end
    assert.are.equal(before, env:snapshot())
  end)
end)
