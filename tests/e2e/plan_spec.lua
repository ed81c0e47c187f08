-- Rollout plans (`switchyard rollout plan`): running engines evaluate the
-- plan every 100 ms here (the setting choose_version.plan_every_ms) while
-- the test feeds batches of instances of a fixture whose versions fail
-- for known shares of instances; what is asserted is where the plan ends
-- and what it wrote: the flag's rate and kill switch, the audit trail
-- (actor `plan`, each step once however many engines run), and the
-- evaluations.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")

local CV = H.repo .. "/tests/fixtures/cv"
local C = dofile(H.repo .. "/tests/lua/counters.lua")
local FLAG = "guarded"

local function has(haystack, needle, what)
  assert(type(haystack) == "string" and haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, tostring(haystack)))
end

local function plan(env)
  return H.decode((env:ok("rollout", "plan", FLAG, "--json")))
end

-- Audit entries of the flag made by the plan: a list of {what, old, new}.
local function plan_changes(env)
  local t = {}
  for _, h in ipairs(H.decode((env:ok("rollout", "history", FLAG,
    "--json")))) do
    if h.actor == "plan" then
      t[#t + 1] = { h.what, h.old or "-", h.new, h.reason, h.numbers }
    end
  end
  return t
end

-- Runs `engines` engines and feeds them batches of `size` instances (new
-- subjects each time; v1 and v2 failing for the given percentages) until
-- the plan leaves 'running' or `batches` batches went by. Returns the
-- plan's last state.
local function drive(env, opts)
  local runs = {}
  for k = 1, opts.engines or 1 do
    runs[k] = env:spawn("--set", "choose_version.plan_every_ms=100", "run",
      "--concurrency", "64")
  end
  local p
  for b = 1, opts.batches or 20 do
    env:ok("start", "guarded", "--count", tostring(opts.size or 200),
      "--var", "user_id=" .. (opts.prefix or "b") .. b .. "-{n}",
      "--var", "n:={n}",
      "--var", "v1_fail:=" .. opts.v1, "--var", "v2_fail:=" .. opts.v2,
      "--var", "v2_unverified:=" .. (opts.v2_unverified or 0),
      "--var", "v1_unverified:=" .. (opts.v1_unverified or 0),
      "--var", "v2_sleep:=" .. (opts.v2_sleep or 0))
    assert(H.poll(30, 0.05, function()
      return env:scalar("SELECT count(*) FROM instances WHERE state IN " ..
        "('ready', 'running', 'waiting')") == 0
    end), "the batch did not finish")
    -- at least one evaluation after the batch
    local seen = env:scalar("SELECT coalesce(max(id), 0) FROM cv_plan_evals")
    H.poll(10, 0.05, function()
      return env:scalar("SELECT coalesce(max(id), 0) FROM cv_plan_evals") >
          seen
    end)
    p = plan(env)
    if p.state ~= "running" then
      break
    end
  end
  for _, r in ipairs(runs) do
    H.signal(r, "TERM")
    assert.are.equal(0, H.wait_exit(r, 30), H.read(r.log))
  end
  return p
end

local function start_plan(env, ...)
  env:ok("rollout", "set", FLAG, "0%", "--reason", "dark")
  return env:ok("rollout", "plan", FLAG, "--steps", "10%,50%,100%",
    "--reason", "ramp by plan", "--hold", "0s", "--min-instances", "100",
    ...)
end

describe("rollout plans", function()
  local env

  before_each(function()
    env = H.env { workflows = CV }
  end)

  after_each(function()
    H.reap()
    H.rmdir(env.dir)
  end)

  it("take a better V2 to 100%, each step applied once by two engines",
    function()
      has(start_plan(env), "plan 10%,50%,100% started at 10%", "plan")
      local p = drive(env, { engines = 2, v1 = 10, v2 = 0 })
      assert.are.equal("done", p.state)
      local get = H.decode((env:ok("rollout", "get", FLAG, "--json")))
      assert.are.equal(1000000, get.rate_ppm)
      assert.is_false(get.killed)
      -- one audit entry per change, whatever two engines evaluated
      local changes = plan_changes(env)
      local seen = {}
      for _, c in ipairs(changes) do
        seen[#seen + 1] = c[1] .. " " .. c[2] .. " -> " .. c[3]
      end
      assert.are.same({ "rate 0% -> 10%", "rate 10% -> 50%",
        "rate 50% -> 100%", "plan running -> done" }, seen)
      has(changes[2][4], "held and no worse, 10% -> 50%", "reason")
      has(changes[2][4], "V2 0.0% (0/", "reason")
      -- the numbers behind each change the plan made, beside its entry
      for k = 2, #changes do
        local n = changes[k][5]
        assert.are.equal(k - 1, n.step)
        assert.are.equal(0, n.v2.with_incidents)
        assert.is_true(n.v1.instances > 0 and n.v2.instances > 0)
        has(changes[k][4], string.format("V2 0.0%% (0/%d) vs V1",
          n.v2.instances), "reason")
      end
      assert.is_nil(changes[1][5]) -- the command's, not an evaluation
      -- every evaluation is stored; exactly three were applied
      assert.are.equal(3, env:scalar("SELECT count(*) FROM cv_plan_evals " ..
        "WHERE applied = 1"))
      assert.is_true(env:scalar("SELECT count(*) FROM cv_plan_evals") >= 3)
      has(env:ok("rollout", "plan", FLAG), "plan of guarded: done, step 3 " ..
        "of 3 (100%)", "show")
    end)

  it("roll a much worse V2 back at the step where it shows", function()
    start_plan(env)
    local p = drive(env, { v1 = 2, v2 = 40 })
    assert.are.equal("rolled_back", p.state)
    assert.are.equal(1, p.step)
    local get = H.decode((env:ok("rollout", "get", FLAG, "--json")))
    assert.is_true(get.killed)
    assert.are.equal(100000, get.rate_ppm)
    local changes = plan_changes(env)
    local last = changes[#changes]
    assert.are.same({ "kill", "off", "on" }, { last[1], last[2], last[3] })
    has(last[4], "worse by more than 1 point, rolled back", "reason")
    assert.is_truthy(last[4]:match("V2 %d+%.%d%% %(%d+/%d+%) vs V1 " ..
      "%d+%.%d%% %(%d+/%d+%), p=[%d.e-]+"), last[4])
    -- the smallest p-value so far is what decided, at most alpha
    assert.is_true(p.p_min <= 0.05)
  end)

  it("with --on-rollback reroute, send V2's instances waiting in " ..
    "incidents on to V1 at the rollback, where they complete", function()
    start_plan(env, "--on-rollback", "reroute")
    local p = drive(env, { v1 = 0, v2 = 40 })
    assert.are.equal("rolled_back", p.state)
    assert.are.equal("reroute", p.on_rollback)
    local changes = plan_changes(env)
    local last = changes[#changes]
    assert.are.same({ "kill", "off", "on" }, { last[1], last[2], last[3] })
    local n = tonumber(last[4]:match("; (%d+) V2 instances? waiting in " ..
      "incidents rerouted to V1"))
    assert.is_true(n ~= nil and n > 0, last[4])
    assert.are.equal(n, env:scalar("SELECT count(*) FROM cv_decisions " ..
      "WHERE reason = 'rerouted' AND version = 'v1'"))
    -- V1 fails nothing here: an engine completes every one of them
    env:ok("run", "--until-idle")
    assert.are.equal(n, env:scalar("SELECT count(*) FROM cv_decisions d " ..
      "JOIN instances i ON i.id = d.instance_id WHERE d.reason = " ..
      "'rerouted' AND i.state = 'completed'"))
    assert.are.same(env:sql(C.RECOUNT), env:sql(C.COUNTERS))
    assert.are.same(env:sql(C.RAMP_RECOUNT), env:sql(C.RAMP_TALLIES))
    local report = H.decode((env:ok("report", FLAG, "--json")))
    assert.are.equal(n, report.versions.v2.rerouted_away)
    assert.are.equal(n, report.versions.v1.rerouted_in.completed)
  end)

  it("survive kill -9 of the engine evaluating them", function()
    start_plan(env)
    local first = env:spawn("--set", "choose_version.plan_every_ms=100",
      "run")
    env:ok("start", "guarded", "--count", "200", "--var", "user_id=k{n}",
      "--var", "n:={n}", "--var", "v1_fail:=10", "--var", "v2_fail:=0")
    assert(H.poll(30, 0.05, function()
      return env:scalar("SELECT count(*) FROM cv_plan_evals") > 0 and
          env:scalar("SELECT count(*) FROM instances WHERE state IN " ..
            "('ready', 'running', 'waiting')") == 0
    end), "no evaluation before the kill")
    H.signal(first, "KILL")
    assert.are.equal(137, H.wait_exit(first, 10))
    local p = drive(env, { v1 = 10, v2 = 0, prefix = "after" })
    assert.are.equal("done", p.state)
    local rates = {}
    for _, c in ipairs(plan_changes(env)) do
      if c[1] == "rate" then rates[#rates + 1] = c[3] end
    end
    assert.are.same({ "10%", "50%", "100%" }, rates)
  end)

  it("roll back on the business outcome with --outcome-var, which " ..
    "incidents alone do not show", function()
      start_plan(env, "--outcome-var", "verified")
      local p = drive(env, { v1 = 0, v2 = 0, v1_unverified = 2,
        v2_unverified = 40 })
      assert.are.equal("rolled_back", p.state)
      -- before 100% (each guard gets alpha / 2: it may take a step more)
      assert.is_true(p.step < 3, "rolled back only at step " .. p.step)
      local last = plan_changes(env)
      last = last[#last]
      assert.are.same({ "kill", "off", "on" }, { last[1], last[2], last[3] })
      has(last[4], "verified falsy: V2 ", "reason")
      has(last[4], "verified worse by more than 1 point, rolled back",
        "reason")
      -- no incident anywhere: the incident guard saw nothing
      assert.are.equal(0, env:scalar("SELECT count(*) FROM incidents"))
      assert.are.equal("verified", p.outcome_var)
      assert.is_true(p.p_min_outcome <= 0.025)
      -- each guard's value against its bound
      local show = env:ok("rollout", "plan", FLAG)
      has(show, "each guard rolls back once its smallest p so far is at " ..
        "most alpha / 2 = 0.025", "show")
      has(show, string.format("- verified false or absent: V2 %.1f%% " ..
        "(%d/%d) vs V1", 100 * p.outcome.v2.falsy / p.outcome.v2.completed,
        p.outcome.v2.falsy, p.outcome.v2.completed), "show")
      has(show, "- incidents: V2 0.0% (0/", "show")
    end)

  it("roll back a V2 whose p95 latency is far above V1's, with " ..
    "--latency-p95-increase", function()
    has(start_plan(env, "--latency-p95-increase", "25%"), "started", "plan")
    local p = drive(env, { v1 = 0, v2 = 0, v2_sleep = 0.3 })
    assert.are.equal("rolled_back", p.state)
    assert.are.equal(25, p.latency_p95_increase_percent)
    -- no incidents anywhere: the latency guard alone decided, at its share
    -- of alpha (two guards: 0.025 each)
    assert.are.equal(0, p.v1.with_incidents + p.v2.with_incidents)
    assert.is_true(p.p_min_latency <= 0.025)
    local changes = plan_changes(env)
    local last = changes[#changes]
    assert.are.same({ "kill", "off", "on" }, { last[1], last[2], last[3] })
    has(last[4], "p95 latency more than 25% above V1's, rolled back",
      "reason")
    local l = last[5].latency
    assert.is_true(l.v2_p95_ms >= 300, "V2 sleeps 0.3 s")
    assert.is_true(l.limit_ms < 300, "the limit is V1's p95 plus 25%")
    assert.are.equal(l.v2_completed, l.v2_over_limit)
    has(env:ok("rollout", "plan", FLAG), string.format("- latency: p95 V2 " ..
      "%dms vs V1 %dms, bound V1 + 25%% (%dms)", p.latency.v2_p95_ms,
      p.latency.v1_p95_ms, p.latency.limit_ms), "show")
  end)

  it("do not roll back equal versions", function()
    start_plan(env, "--max-increase", "1", "--outcome-var", "verified")
    local p = drive(env, { v1 = 5, v2 = 5, v1_unverified = 10,
      v2_unverified = 10 })
    assert.are.equal("done", p.state)
    assert.is_false(H.decode((env:ok("rollout", "get", FLAG,
      "--json"))).killed)
  end)

  it("pause when inconclusive past --max-wait, and never advance", function()
    env:ok("rollout", "set", FLAG, "0%", "--reason", "dark")
    env:ok("rollout", "plan", FLAG, "--steps", "10%,100%", "--reason", "r",
      "--hold", "0s", "--min-instances", "100000", "--max-wait", "1s")
    local p = drive(env, { v1 = 5, v2 = 5, batches = 30, size = 20 })
    assert.are.equal("paused", p.state)
    assert.are.equal(1, p.step)
    assert.are.equal(100000, H.decode((env:ok("rollout", "get", FLAG,
      "--json"))).rate_ppm)
    local changes = plan_changes(env)
    has(changes[#changes][4], "inconclusive past --max-wait, paused",
      "reason")
    -- resume, abort
    env:ok("rollout", "plan", FLAG, "resume", "--reason", "look again")
    assert.are.equal("running", plan(env).state)
    env:ok("rollout", "plan", FLAG, "abort", "--reason", "enough")
    assert.are.equal("aborted", plan(env).state)
  end)

  it("wait at a --gate step until it is approved", function()
    start_plan(env, "--gate", "50%")
    local p = drive(env, { v1 = 10, v2 = 0, batches = 8 })
    -- it passed at 10% and waits: no further
    assert.are.equal("running", p.state)
    assert.are.equal(1, p.step)
    assert.are.equal("50%", p.gates)
    local last = p.evaluations[1]
    assert.are.equal("gate", last.outcome)
    has(last.reason, "50% waits for rollout plan guarded approve", "reason")
    assert.are.equal(100000, H.decode((env:ok("rollout", "get", FLAG,
      "--json"))).rate_ppm)
    has(env:ok("rollout", "plan", FLAG, "approve", "--reason", "looks good"),
      "50% approved", "approve")
    p = drive(env, { v1 = 10, v2 = 0, prefix = "approved" })
    assert.are.equal("done", p.state)
    -- approving where nothing waits is refused
    local code, _, err = env:run("rollout", "plan", FLAG, "approve",
      "--reason", "again")
    assert.are.equal(2, code)
    has(err, "no running plan whose next step waits for approval", "again")
    local whats = {}
    for _, h in ipairs(H.decode((env:ok("rollout", "history", FLAG,
      "--json")))) do
      whats[#whats + 1] = h.what .. ":" .. (h.new or "")
    end
    has(table.concat(whats, " "), "approve:50% rate:50%", "history")
  end)

  it("--dry-run says what the first step would do and writes nothing",
    function()
      env:ok("rollout", "set", FLAG, "5%", "--reason", "ramp")
      env:ok("start", "guarded", "--count", "300", "--var", "user_id=d{n}",
        "--var", "n:={n}", "--var", "v1_fail:=0", "--var", "v2_fail:=0")
      env:ok("run", "--until-idle")
      local before = env:snapshot()
      local d = H.decode((env:ok("rollout", "plan", FLAG, "--steps",
        "20%,100%", "--dry-run", "--json")))
      assert.are.equal(before, env:snapshot(), "the dry run wrote")
      -- the same answer as previewing the first step's rate by hand
      local by_hand = H.decode((env:ok("rollout", "set", FLAG, "20%",
        "--dry-run", "--json")))
      assert.are.equal(300, d.subjects)
      assert.is_true(d.to_v2 > 0)
      assert.are.equal(by_hand.to_v2, d.to_v2)
      assert.are.same(by_hand.examples_to_v2, d.examples_to_v2)
      has(d.change, "plan 20%,100%, its first step at once: rate 5% -> 20%",
        "change")
      local code, _, err = env:run("rollout", "plan", FLAG, "--steps", "1%",
        "--dry-run")
      assert.are.equal(2, code)
      has(err, "below the rate now", "dry run of a bad plan")
    end)

  it("refuse bad arguments with exit 2 and change nothing", function()
    env:ok("rollout", "set", FLAG, "5%", "--reason", "ramp")
    env:ok("rollout", "set", "killed", "5%", "--reason", "ramp")
    env:ok("rollout", "kill", "killed", "--reason", "bad")
    local before = env:snapshot()
    for _, c in ipairs {
      { { "--steps", "10%,50%" }, "--reason" },
      { { "--steps", "50%,10%", "--reason", "r" }, "above the one before" },
      { { "--steps", "0%,10%", "--reason", "r" }, "above 0%" },
      { { "--steps", "1%,10%", "--reason", "r" }, "below the rate now" },
      { { "--steps", "10%,2x", "--reason", "r" }, "--steps" },
      { { "--steps", "10%", "--reason", "r", "--hold", "soon" }, "--hold" },
      { { "--steps", "10%", "--reason", "r", "--alpha", "0.9" }, "--alpha" },
      { { "--steps", "10%", "--reason", "r", "--alpha", "0" }, "--alpha" },
      { { "--steps", "10%", "--reason", "r", "--min-instances", "1.5" },
        "--min-instances" },
      { { "--steps", "10%", "--reason", "r", "--max-increase", "-1" },
        "--max-increase" },
      { { "--steps", "10%,50%", "--reason", "r", "--gate", "20%" },
        "not a step after the first" },
      { { "--steps", "10%,50%", "--reason", "r", "--gate", "10%" },
        "not a step after the first" },
      { { "--steps", "10%", "--reason", "r", "--latency", "5" },
        "unknown option" },
      { { "--steps", "10%", "--reason", "r", "--latency-p95-increase", "0%" },
        "--latency-p95-increase" },
      { { "--steps", "10%", "--reason", "r", "--latency-p95-increase",
        "fast" }, "--latency-p95-increase" },
      { { "--latency-p95-increase", "25%" }, "go with --steps" },
      { { "--steps", "10%", "--reason", "r", "--on-rollback", "undo" },
        "--on-rollback" },
      { { "pause", "--reason", "r" }, "no running plan" },
      { { "frobnicate" }, "unknown plan action" },
      { { "--hold", "1m" }, "go with --steps" },
      { { "--dry-run" }, "go with --steps" },
      { { "--steps", "10%", "--reason", "r", "--outcome-var", "a.b" },
        "--outcome-var" },
      { { "--steps", "10%", "--reason", "r", "--outcome-var", "9x" },
        "--outcome-var" },
      { { "--steps", "10%", "--reason", "r", "--window", "7d" },
        "--window goes with --dry-run" },
    } do
      local args = { "rollout", "plan", FLAG }
      for _, a in ipairs(c[1]) do args[#args + 1] = a end
      local code, _, err = env:run(table.unpack(args))
      assert.are.equal(2, code, table.concat(args, " ") .. "\n" .. err)
      has(err, c[2], table.concat(args, " "))
    end
    for _, c in ipairs {
      { "nope", "no flag 'nope'" }, { "killed", "killed: unkill it first" },
    } do
      local code, _, err = env:run("rollout", "plan", c[1], "--steps", "50%",
        "--reason", "r")
      assert.are.equal(2, code, err)
      has(err, c[2], c[1])
    end
    assert.are.equal(before, env:snapshot(), "a refused plan wrote")
    -- a second plan while one runs
    env:ok("rollout", "plan", FLAG, "--steps", "10%", "--reason", "r")
    local code, _, err = env:run("rollout", "plan", FLAG, "--steps", "20%",
      "--reason", "r")
    assert.are.equal(2, code)
    has(err, "has a plan running already", "second plan")
  end)
end)
