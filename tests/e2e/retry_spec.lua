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
    assert.are.same({ { workflow = "counted", step = "new",
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
    has(out, "instance " .. b .. " will run again at its step", "retry")
    assert.are.same({ "ready", "ready", "incident" }, {
      env:scalar("SELECT state FROM instances WHERE id = " .. a),
      env:scalar("SELECT state FROM instances WHERE id = " .. b),
      env:scalar("SELECT state FROM instances WHERE id = " .. c) })
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
    } do
      local code, _, err = env:run(table.unpack(c[1]))
      assert.are.equal(2, code, table.concat(c[1], " ") .. ": " .. err)
      has(err, c[2], table.concat(c[1], " "))
    end
    assert.are.equal(before, env:snapshot())
  end)
end)
