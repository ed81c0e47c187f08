-- switchyard report on databases built for the purpose, where the answer
-- is known. Rows are written straight into cv_decisions and cv_audit (the
-- tables the report reads), then the real CLI answers with --json.
local T = require "switchyard.testing"
local D = require "testdb"
local json = require "dkjson"

local SW = os.getenv("SWITCHYARD")
local PLUGINS = os.getenv("SY_BUILD_DIR") .. "/plugins"

local function fresh()
  local db = D.new()
  local e = T.engine { db = db, plugins = PLUGINS }
  e:sql("INSERT INTO cv_flags(name, rate_ppm, created_at, updated_at) "
        .. "VALUES('f', 500000, 0, 0)")
  return e, db
end

local function cleanup(e, db)
  e:close()
  D.remove(db)
end

local next_id = 0
-- n decisions of version v, `bad` of them with one incident; ramp and
-- time given; completed ones get a branch latency of lat ms.
local function add(e, v, n, bad, opts)
  opts = opts or {}
  e:sql("BEGIN")
  for i = 1, n do
    next_id = next_id + 1
    local inc = i <= bad and 1 or 0
    e:sql("INSERT INTO cv_decisions(instance_id, flag, workflow, step, subject, "
          .. "version, reason, rate_ppm, ramp_id, decided_at, outcome, ended_at, "
          .. "branch_ms, step_ms, incidents, open_incidents) VALUES(?1, 'f', "
          .. "?2, 'route', 's', ?3, 'rollout', 0, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?9)",
          next_id, opts.workflow or "wf", v, opts.ramp or 0, opts.at or 1000,
          inc == 0 and "completed" or nil, inc == 0 and (opts.at or 1000) + 5 or nil,
          inc == 0 and (opts.lat or i) or nil, inc)
  end
  e:sql("COMMIT")
end

local function report(db, args)
  local p = io.popen(string.format("'%s' --db '%s' report f --json %s 2>&1; echo \"rc=$?\"",
                                   SW, db, args or ""))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  local body = out:gsub("rc=%d+%s*$", "")
  return json.decode(body, 1, json.null), rc, body
end

describe("report", function()
  it("equal rates: no significant difference, p = 1", function()
    local e, db = fresh()
    -- 10,000 per version is more than the ~8,200 needed to detect 5% vs
    -- 6% (Fleiss, alpha 0.05, power 0.8), so the verdict can be "none"
    add(e, "v1", 10000, 500)
    add(e, "v2", 10000, 500)
    local r, rc = report(db)
    assert.are.equal(0, rc)
    assert.are.equal("switchyard.report/1", r.schema)
    assert.are.equal(10000, r.versions.v1.routed)
    assert.are.equal(500, r.versions.v2.instances_with_incidents)
    assert.are.equal(0.05, r.versions.v1.incident_rate)
    assert.are.equal(0, r.comparison.difference_points)
    assert.are.equal(1, r.comparison.ratio)
    -- identical rows of a 2x2 table: every table is at least as extreme,
    -- so Fisher's two-sided p is 1 (up to the 1e-7 tie tolerance)
    assert.is_true(math.abs(r.comparison.p_value - 1) < 1e-6)
    assert.are.equal("no_significant_difference", r.comparison.verdict)
    -- the same rates on 2,000 per version cannot rule out a 1-point gap
    local e2, db2 = fresh()
    add(e2, "v1", 2000, 100)
    add(e2, "v2", 2000, 100)
    assert.are.equal("not_enough_data", report(db2).comparison.verdict)
    cleanup(e2, db2)
    cleanup(e, db)
  end)

  it("v2 clearly worse, and --fail-if-worse exits 1", function()
    local e, db = fresh()
    add(e, "v1", 1000, 10)
    add(e, "v2", 1000, 60)
    local r, rc = report(db)
    assert.are.equal(0, rc)
    assert.are.equal("v2_worse", r.comparison.verdict)
    assert.are.equal(5, r.comparison.difference_points)
    assert.are.equal(6, r.comparison.ratio)
    -- 10/1000 vs 60/1000: p is far below 1e-6 by any test
    assert.is_true(r.comparison.p_value < 1e-6)
    local _, rc2 = report(db, "--fail-if-worse")
    assert.are.equal(1, rc2)
    cleanup(e, db)
  end)

  it("v2 clearly better", function()
    local e, db = fresh()
    add(e, "v1", 1000, 80)
    add(e, "v2", 1000, 20)
    local r, rc = report(db, "--fail-if-worse")
    assert.are.equal(0, rc)
    assert.are.equal("v2_better", r.comparison.verdict)
    assert.are.equal(0.25, r.comparison.ratio)
    cleanup(e, db)
  end)

  it("tiny samples: not enough data, with the instances still needed", function()
    local e, db = fresh()
    add(e, "v1", 5, 1)
    add(e, "v2", 5, 2)
    local r = report(db)
    assert.are.equal("not_enough_data", r.comparison.verdict)
    assert.are.equal("fisher", r.comparison.test)
    assert.is_true(r.comparison.needed_per_version > 0)
    assert.matches("not enough data yet: about %d+ more instances per version",
                   r.comparison.verdict_text)
    -- Wilson 95% interval of 1/5 (by hand: center (0.2 + 1.92/5) / 1.768,
    -- half-width 1.96 * sqrt(0.2*0.8/5 + 3.84/100) / 1.768) = 0.0362..0.6245
    local ci = r.versions.v1.incident_rate_ci95
    assert.is_true(math.abs(ci[1] - 0.0362) < 1e-3)
    assert.is_true(math.abs(ci[2] - 0.6245) < 1e-3)
    cleanup(e, db)
  end)

  it("zero incidents on both sides", function()
    local e, db = fresh()
    add(e, "v1", 1000, 0)
    add(e, "v2", 1000, 0)
    local r = report(db)
    assert.are.equal(0, r.versions.v1.incident_rate)
    assert.are.equal(json.null, r.comparison.ratio) -- 0/0
    assert.are.equal("no_significant_difference", r.comparison.verdict)
    cleanup(e, db)
  end)

  it("every instance in an incident", function()
    local e, db = fresh()
    add(e, "v1", 100, 100)
    add(e, "v2", 100, 100)
    local r = report(db)
    assert.are.equal(1, r.versions.v2.incident_rate)
    assert.are.equal(100, r.versions.v2.instances_with_open_incidents)
    assert.are.equal(0, r.versions.v2.completed)
    assert.are.equal(json.null, r.versions.v2.latency_ms.branch.p50)
    assert.are.equal("not_enough_data", r.comparison.verdict)
    cleanup(e, db)
  end)

  it("a version with no instances yet", function()
    local e, db = fresh()
    add(e, "v1", 50, 1)
    local r = report(db)
    assert.are.equal(0, r.versions.v2.routed)
    assert.are.equal(json.null, r.versions.v2.incident_rate)
    assert.are.equal("none", r.comparison.test)
    assert.are.equal("not_enough_data", r.comparison.verdict)
    cleanup(e, db)
  end)

  it("latency percentiles are nearest-rank over completed instances", function()
    local e, db = fresh()
    add(e, "v1", 100, 0) -- latencies 1..100 ms
    add(e, "v2", 10, 0, { lat = 7 })
    local r = report(db)
    assert.are.same({ p50 = 50, p95 = 95, p99 = 99, count = 100 },
                    r.versions.v1.latency_ms.branch)
    assert.are.equal(7, r.versions.v2.latency_ms.branch.p99)
    cleanup(e, db)
  end)

  it("breaks numbers down by ramp step, and filters by time and workflow",
     function()
    local e, db = fresh()
    -- three ramp steps: 1% at t=10 s, 25% at t=20 s, killed at t=30 s
    e:sql("INSERT INTO cv_audit(id, flag, what, old_value, new_value, rate_ppm, "
          .. "killed, actor, reason, at) VALUES "
          .. "(1, 'f', 'rate', '0%', '1%', 10000, 0, 'ann', 'start', 10000), "
          .. "(2, 'f', 'rate', '1%', '25%', 250000, 0, 'ann', 'more', 20000), "
          .. "(3, 'f', 'kill', 'off', 'on', 250000, 1, 'bob', 'bad', 30000)")
    add(e, "v1", 99, 1, { ramp = 1, at = 15000 })
    add(e, "v2", 1, 0, { ramp = 1, at = 15000 })
    add(e, "v1", 75, 2, { ramp = 2, at = 25000 })
    add(e, "v2", 25, 9, { ramp = 2, at = 25000, workflow = "other" })
    add(e, "v1", 40, 0, { ramp = 3, at = 35000 })
    local r = report(db)
    assert.are.equal(3, #r.ramp_steps)
    local s1, s2, s3 = r.ramp_steps[1], r.ramp_steps[2], r.ramp_steps[3]
    assert.are.equal("1%", s1.rate)
    assert.are.equal(10000, s1.started_at)
    assert.are.equal(20000, s1.ended_at)
    assert.are.same({ instances = 99, with_incidents = 1 }, s1.v1)
    assert.are.same({ instances = 25, with_incidents = 9 }, s2.v2)
    assert.are.equal("kill", s3.change)
    assert.is_true(s3.killed)
    assert.are.equal(json.null, s3.ended_at)
    assert.are.same({ instances = 0, with_incidents = 0 }, s3.v2)
    -- a window over the second step only
    local w = report(db, "--since 1970-01-01T00:00:20Z --until 1970-01-01T00:00:30Z")
    assert.are.equal(75, w.versions.v1.routed)
    assert.are.equal(25, w.versions.v2.routed)
    assert.are.equal(1, #w.ramp_steps)
    -- one workflow
    local o = report(db, "--workflow other")
    assert.are.equal(0, o.versions.v1.routed)
    assert.are.equal(25, o.versions.v2.routed)
    cleanup(e, db)
  end)

  it("rejects bad options with exit 2", function()
    local e, db = fresh()
    for _, args in ipairs { "--since yesterday", "--until 2026-13-01",
                            "--alpha 2", "--min-effect -1", "--bogus",
                            "--since 2h --until 3h" } do
      local _, rc, body = report(db, args)
      assert.are.equal(2, rc, args .. ": " .. body)
    end
    local p = io.popen(string.format("'%s' --db '%s' report nosuch 2>&1; echo rc=$?", SW, db))
    local out = p:read("a")
    p:close()
    assert.matches("no flag 'nosuch'", out, 1, true)
    assert.matches("rc=2", out, 1, true)
    cleanup(e, db)
  end)
end)
