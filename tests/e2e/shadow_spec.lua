-- Shadow runs through the CLI: `rollout shadow` sets a flag's shadow rate
-- and budget; engines run v2's first step beside v1 for that share of the
-- instances routed to v1 and record each run; `report --shadow` counts
-- them. The fixture's v2 disagrees with v1 on the subjects whose number is
-- a multiple of 7, and vars.v2 makes it fail, time out or end late.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local C = dofile(H.repo .. "/tests/lua/counters.lua")
local M = dofile(H.repo .. "/tests/fixtures/cv/lib/murmur3.lua")

local FIX = H.repo .. "/tests/fixtures/shadow"

local function has(haystack, needle, what)
  assert(type(haystack) == "string" and haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, tostring(haystack)))
end

-- Starts instances of wf for subjects s<from>..s<to>, with more vars.
local function start(env, wf, from, to, vars)
  local lines = {}
  for n = from, to do
    local v = { subject = "s" .. n }
    for k, x in pairs(vars or {}) do v[k] = x end
    lines[#lines + 1] = H.json.encode(v)
  end
  local code, out, err = env:run_stdin(table.concat(lines, "\n") .. "\n",
    "start", wf, "--from", "-")
  assert(code == 0, "start: " .. tostring(out) .. tostring(err))
end

local function shadow_report(env)
  return H.decode(env:ok("report", "verify", "--shadow", "--json"))
end

-- The set of subjects whose runs have outcome o (all runs when o is nil).
local function subjects(env, o)
  local set = {}
  for _, row in ipairs(env:sql("SELECT subject FROM cv_shadow_runs" ..
      (o and (" WHERE outcome = '" .. o .. "'") or ""))) do
    set[row[1]] = true
  end
  return set
end

local function multiples_of_7(from, to)
  local set = {}
  for n = from, to do
    if n % 7 == 0 then set["s" .. n] = true end
  end
  return set
end

describe("shadow runs", function()
  local env

  before_each(function()
    env = H.env { workflows = FIX }
    env:ok("rollout", "set", "verify", "0%", "--reason", "v1 serves")
  end)

  after_each(function()
    H.reap()
    H.rmdir(env.dir)
  end)

  it("find exactly the subjects where v2 disagrees, and keep v1's answer", function()
    env:ok("rollout", "shadow", "verify", "100%", "--reason", "compare v2")
    start(env, "shadowed", 1, 70)
    env:ok("run", "--until-idle")
    -- every instance took v1's answer
    assert.are.same({ completed = 70 }, env:states())
    assert.are.equal(70, env:scalar(
      "SELECT count(*) FROM instances WHERE " .. H.jtext("vars", "took") ..
      " = 'v1'"))
    assert.are.same(multiples_of_7(1, 70), subjects(env, "mismatch"))
    local r = shadow_report(env)
    assert.are.equal("switchyard.shadow/1", r.schema)
    assert.are.equal(70, r.runs)
    assert.are.equal(60, r.outcomes.match)
    assert.are.equal(10, r.outcomes.mismatch)
    assert.are.equal(70, r.mismatch.compared)
    assert.is_true(math.abs(10 / 70 - r.mismatch.rate) < 1e-9)
    assert.is_true(r.mismatch.ci_low < 10 / 70 and 10 / 70 < r.mismatch.ci_high)
    assert.are.equal(10, #r.first_mismatches)
    for _, m in ipairs(r.first_mismatches) do
      assert.is_true(multiples_of_7(1, 70)[m.subject], m.subject)
      assert.are.equal("verified: true -> false", m.detail)
    end
    -- decision is set after the compared step: absent on both sides
    assert.are.equal(60, r.absent_on_both.matches)
    assert.are.equal("absent on both sides: decision", r.absent_on_both.example)
    assert.are.equal(70, r.latency_ms.primary.count)
    assert.are.equal(70, r.latency_ms.candidate.count)
    local text = env:ok("report", "verify", "--shadow")
    has(text, "14.29% (95% CI")
    has(text, "verified: true -> false")
    has(text, "neither side had (absent on both sides: decision)")
    -- an instance's shadow run, in show and on its page
    local d7 = H.decode(env:ok("show", "7", "--json")).decisions[1]
    assert.are.equal("mismatch", d7.shadow.outcome)
    assert.are.equal("verified: true -> false", d7.shadow.detail)
    assert.is_true(d7.shadow.primary_ms >= 0 and d7.shadow.candidate_ms >= 0)
    assert.are.equal("match", H.decode(env:ok("show", "8", "--json"))
      .decisions[1].shadow.outcome)
    has(env:ok("show", "7"), "shadow run: mismatch (verified: true -> " ..
      "false), v1 " .. d7.shadow.primary_ms .. " ms, v2 " ..
      d7.shadow.candidate_ms .. " ms")
    -- the console: the same document, and the flag's page shows it
    local p, base = env:serve()
    has(H.capture("curl -s " .. H.q(base .. "/instances/7")),
      "<td data-shadow>mismatch (verified: true -&gt; false), v1 ",
      "instance page")
    local api = H.decode(H.capture("curl -s " .. H.q(base ..
      "/api/flags/verify/shadow")))
    api.generated_at, r.generated_at = nil, nil
    assert.are.same(r, api)
    local page = H.capture("curl -s " .. H.q(base .. "/flags/verify"))
    has(page, '<td class="n" data-k="mismatch">10</td>', "flag page")
    has(page, '<a href="/instances/7">7</a></td><td>s7</td><td>verified: ' ..
      'true -&gt; false</td>', "flag page")
    has(page, string.format("14.29%% (%.2f-%.2f%%) of 70",
      r.mismatch.ci_low * 100, r.mismatch.ci_high * 100), "flag page")
    H.signal(p, "TERM")
    H.wait_exit(p, 10)
  end)

  it("shadow a sticky share of subjects, by a salt of their own", function()
    env:ok("rollout", "shadow", "verify", "30%", "--reason", "a third")
    start(env, "shadowed", 1, 200)
    start(env, "shadowed", 1, 200)
    env:ok("run", "--until-idle")
    local want, n = {}, 0
    for i = 1, 200 do
      if M.bucket("shadow:verify", "s" .. i) < 300000 then
        want["s" .. i] = true
        n = n + 1
      end
    end
    assert.are.same(want, subjects(env))
    -- both instances of each of those subjects, none of the others
    assert.are.equal(2 * n, env:scalar("SELECT count(*) FROM cv_shadow_runs"))
    assert.is_true(n > 30 and n < 100, "about a third: " .. n)
  end)

  it("shadow only v1's rollout decisions: not v2, a kill switch, an opt-out", function()
    env:ok("rollout", "set", "verify", "50%", "--reason", "half")
    env:ok("rollout", "opt-out", "verify", "s3", "--reason", "asked")
    env:ok("rollout", "shadow", "verify", "100%", "--reason", "all of v1")
    start(env, "shadowed", 1, 40)
    env:ok("run", "--until-idle")
    assert.are.equal(0, env:scalar([[
      SELECT count(*) FROM cv_shadow_runs r JOIN cv_decisions d
        ON d.instance_id = r.instance_id
      WHERE d.version <> 'v1' OR d.reason <> 'rollout']]))
    assert.are.equal(env:scalar([[
      SELECT count(*) FROM cv_decisions
      WHERE version = 'v1' AND reason = 'rollout']]),
      env:scalar("SELECT count(*) FROM cv_shadow_runs"))
    -- an instance on v2 had none: show says so
    local v2 = env:scalar("SELECT min(instance_id) FROM cv_decisions " ..
      "WHERE version = 'v2'")
    local d = H.decode(env:ok("show", tostring(v2), "--json")).decisions[1]
    assert.are.equal("v2", d.version)
    assert.is_nil(d.shadow)
    env:ok("rollout", "kill", "verify", "--reason", "stop")
    start(env, "shadowed", 41, 60)
    env:ok("run", "--until-idle")
    assert.are.equal(0, env:scalar(
      "SELECT count(*) FROM cv_shadow_runs WHERE subject IN (" ..
      "SELECT subject FROM cv_decisions WHERE reason = 'kill_switch')"))
  end)

  it("leave every instance as without shadow when v2 fails or times out", function()
    -- the same instances on a database without shadow
    local plain = H.env { workflows = FIX }
    plain:ok("rollout", "set", "verify", "0%", "--reason", "v1 serves")
    env:ok("rollout", "shadow", "verify", "100%", "--reason", "compare v2")
    for i, mode in ipairs { "fail", "slow" } do
      for _, e in ipairs { env, plain } do
        start(e, "shadowed", 20 * i - 19, 20 * i, { v2 = mode })
        e:ok("run", "--until-idle")
      end
    end
    local r = shadow_report(env)
    assert.are.equal(20, r.outcomes.candidate_error)
    assert.are.equal(20, r.outcomes.candidate_timeout)
    assert.are.equal(0, r.mismatch.compared)
    has(env:scalar("SELECT detail FROM cv_shadow_runs WHERE outcome = " ..
      "'candidate_error' LIMIT 1"), "v2 is down")
    -- vars as values: the order of keys in their text is Lua's
    local function vars(e)
      local t = {}
      for _, row in ipairs(e:sql("SELECT vars FROM instances ORDER BY id")) do
        t[#t + 1] = H.decode(row[1])
      end
      return t
    end
    assert.are.same(vars(plain), vars(env))
    for _, q in ipairs {
      "SELECT id, workflow, state, step, attempt FROM instances ORDER BY id",
      "SELECT instance_id, step, attempt, outcome FROM step_runs " ..
        "ORDER BY instance_id, id",
      "SELECT count(*) FROM incidents",
      "SELECT instance_id, version, reason, outcome, retries, incidents " ..
        "FROM cv_decisions ORDER BY instance_id",
      C.COUNTERS,
    } do
      assert.are.same(plain:sql(q), env:sql(q), q)
    end
    H.rmdir(plain.dir)
  end)

  it("let an instance end before its shadow, which is recorded after", function()
    env:ok("rollout", "shadow", "verify", "100%", "--reason", "compare v2")
    start(env, "shadowed", 1, 5, { v2 = "late" })
    env:ok("run", "--until-idle")
    local rows = env:sql([[
      SELECT r.outcome, r.ended_at - i.ended_at FROM cv_shadow_runs r
      JOIN instances i ON i.id = r.instance_id ORDER BY r.instance_id]])
    assert.are.equal(5, #rows)
    for _, row in ipairs(rows) do
      assert.are.equal("match", row[1])
      assert.is_true(tonumber(row[2]) > 0, "recorded after the instance ended")
    end
  end)

  it("spend at most the budget per hour across engines, counting the skips", function()
    env:ok("rollout", "shadow", "verify", "100%", "--budget", "25/h",
      "--reason", "paid API")
    start(env, "shadowed", 1, 300)
    local a = env:spawn("run", "--until-idle")
    local b = env:spawn("run", "--until-idle")
    assert.are.equal(0, H.wait_exit(a, 120), H.read(a.log))
    assert.are.equal(0, H.wait_exit(b, 120), H.read(b.log))
    assert.are.same({ completed = 300 }, env:states())
    local runs = env:scalar("SELECT count(*) FROM cv_shadow_runs")
    local r = shadow_report(env)
    -- an hour boundary between decisions starts a new hour's budget
    local hours = env:scalar("SELECT count(*) FROM cv_shadow_hours")
    assert.is_true(runs <= 25 * hours, runs .. " runs in " .. hours .. " hours")
    if hours == 1 then
      assert.are.equal(25, runs)
    end
    assert.are.equal(runs, r.runs)
    assert.are.equal(300 - runs, r.skipped_by_budget)
  end)

  it("keep at most shadow.max_in_flight per engine; the rest are counted", function()
    env:ok("rollout", "shadow", "verify", "100%", "--budget", "100/h",
      "--reason", "paid API")
    -- v2 sleeps 30 s in shadow: the first 5 shadows hold every slot
    start(env, "shadowed_long", 1, 40, { v2 = "slow" })
    local p = env:spawn("--set", "shadow.max_in_flight=5", "run")
    assert.is_truthy(H.poll(60, 0.05, function()
      return env:scalar("SELECT count(*) FROM instances WHERE state = " ..
        "'completed'") == 40
    end), H.read(p.log))
    H.signal(p, "TERM")
    assert.are.equal(0, H.wait_exit(p, 20), H.read(p.log))
    local r = shadow_report(env)
    assert.are.equal(5, r.runs)
    -- a stop abandons the shadows in flight: lost, as a crash would
    assert.are.equal(5, r.outcomes.lost)
    assert.are.equal(35, r.skipped_busy)
    -- what the engine had no room for did not spend the budget
    assert.are.equal(5, r.shadow.used_this_hour)
    assert.are.equal(0, r.skipped_by_budget)
    has(env:ok("report", "verify", "--shadow"), "shadow.max_in_flight")
  end)

  it("are set by rollout shadow, audited; bad input changes nothing", function()
    local before = env:snapshot()
    for _, c in ipairs {
      { { "shadow", "verify" }, "which rate?" },
      { { "shadow", "verify", "5%" }, "needs --reason" },
      { { "shadow", "verify", "5", "--reason", "x" }, "%" },
      { { "shadow", "verify", "101%", "--reason", "x" }, "100%" },
      { { "shadow", "verify", "5%", "--budget", "0/h", "--reason", "x" },
        "--budget: expected" },
      { { "shadow", "verify", "5%", "--budget", "10/m", "--reason", "x" },
        "--budget: expected" },
      { { "shadow", "nope", "5%", "--reason", "x" }, "no flag 'nope'" },
      { { "set", "verify", "5%", "--budget", "10/h", "--reason", "x" },
        "--budget goes with shadow" },
    } do
      local code, _, err = env:run("rollout", table.unpack(c[1]))
      assert.are.equal(2, code, table.concat(c[1], " "))
      has(err, c[2], table.concat(c[1], " "))
    end
    assert.are.equal(before, env:snapshot())
    has(env:ok("rollout", "shadow", "verify", "5%", "--budget", "1000/h",
      "--reason", "try v2"), "shadow off -> 5%, 1000/h")
    has(env:ok("rollout", "shadow", "verify", "10%", "--reason", "more"),
      "shadow 5%, 1000/h -> 10%, 1000/h")
    has(env:ok("rollout", "shadow", "verify", "10%", "--reason", "again"),
      "shadow unchanged")
    local g = H.decode(env:ok("rollout", "get", "verify", "--json"))
    assert.are.same({ rate = "10%", rate_ppm = 100000, budget_per_hour = 1000 },
      g.flag and g.flag.shadow or g.shadow)
    has(env:ok("rollout", "shadow", "verify", "0%", "--budget", "none",
      "--reason", "enough"), "-> off")
    local audit = env:sql("SELECT what, old_value, new_value, reason FROM " ..
      "cv_audit WHERE what = 'shadow' ORDER BY id")
    assert.are.same({
      { "shadow", "off", "5%, 1000/h", "try v2" },
      { "shadow", "5%, 1000/h", "10%, 1000/h", "more" },
      { "shadow", "10%, 1000/h", "off", "enough" },
    }, audit)
    -- a shadow change starts no ramp step: the one of `rollout set` only
    assert.are.equal(1, #H.decode(env:ok("report", "verify", "--json"))
      .ramp_steps)
  end)
end)

describe("shadow runs in flight when the engine is killed", function()
  it("are counted lost, and the instances lose nothing", function()
    local env = H.env { workflows = FIX }
    env:ok("rollout", "set", "verify", "0%", "--reason", "v1 serves")
    env:ok("rollout", "shadow", "verify", "100%", "--reason", "compare v2")
    start(env, "shadowed_long", 1, 30, { v2 = "slow" })
    local p = env:spawn("run")
    -- every instance completed, its shadow still asleep
    assert.is_truthy(H.poll(60, 0.05, function()
      return env:scalar("SELECT count(*) FROM instances WHERE state = " ..
        "'completed'") == 30
    end), H.read(p.log))
    assert.are.equal(30, env:scalar(
      "SELECT count(*) FROM cv_shadow_runs WHERE outcome IS NULL"))
    assert.are.equal(30, shadow_report(env).outcomes.in_flight)
    H.signal(p, "KILL")
    H.wait_exit(p, 10)
    env:assert_intact("after kill -9")
    -- a new engine on this host takes over from the dead one
    env:ok("run", "--until-idle")
    local r = shadow_report(env)
    assert.are.equal(30, r.outcomes.lost)
    assert.are.equal(0, r.outcomes.in_flight)
    assert.are.same({ completed = 30 }, env:states())
    -- each step ran once: nothing re-ran, nothing was lost
    assert.are.equal(0, env:scalar([[
      SELECT count(*) FROM (SELECT instance_id, step FROM step_runs
      GROUP BY instance_id, step HAVING count(*) <> 1) x]]))
    assert.are.same(env:sql(C.RECOUNT), env:sql(C.COUNTERS))
    H.reap()
    H.rmdir(env.dir)
  end)
end)
