-- The choose_version plugin as a workflow sees it, in-process: the whole
-- precedence table (one test per row, each checking the decision's version
-- and reason), missing and mistyped keys, forcing, stickiness across
-- instances and across rate increases, the sticky bucket against an
-- independent murmur3, the random and every_nth strategies, no re-roll on
-- an incident retry, per-version counters against a recount, ctx.version,
-- and rate changes made by another process seen by an open engine.
--
-- Rates, kill switches and overrides are set through the real CLI
-- (`switchyard rollout ...`), a separate process and connection: every
-- decision after such a change must see it without reopening the engine.
local T = require "switchyard.testing"
local D = require "testdb"

local SWITCHYARD = assert(os.getenv("SWITCHYARD"),
  "SWITCHYARD is not set: run the specs through ctest")
local BUILD = assert(os.getenv("SY_BUILD_DIR"), "SY_BUILD_DIR is not set")
local PLUGINS = BUILD .. "/plugins"
local FIX = "tests/fixtures/cv/"

-- The reference murmur3 and bucket (plain Lua, no code shared with the
-- plugin); its own vectors are checked first below.
local R = dofile(FIX .. "lib/murmur3.lua")
local murmur3_32, bucket = R.murmur3_32, R.bucket

-- ---------------------------------------------------------------------
-- Helpers.

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local s = f:read("a")
  f:close()
  return s
end

local tmpdir = (function()
  local p = io.popen('mktemp -d "${TMPDIR:-/tmp}/sy-cv.XXXXXX"')
  local d = p:read("l")
  p:close()
  assert(d and d ~= "", "mktemp -d failed")
  return d
end)()

local ndb = 0
local function fresh_db()
  ndb = ndb + 1
  return D.sqlite and string.format("%s/cv%03d.db", tmpdir, ndb) or D.new()
end

-- Runs `switchyard --db DB rollout ...` in another process: exit code,
-- stdout, stderr.
local function rollout(db, ...)
  local words = { q(SWITCHYARD), "--db", q(db), "rollout" }
  for _, a in ipairs({ ... }) do
    words[#words + 1] = q(a)
  end
  local out, err = tmpdir .. "/rollout.out", tmpdir .. "/rollout.err"
  local ok, how, code = os.execute(table.concat(words, " ") .. " >" ..
    q(out) .. " 2>" .. q(err))
  if how == "signal" then
    code = 128 + code
  end
  return code or (ok and 0 or 1), slurp(out), slurp(err)
end

-- Same, and the command must succeed.
local function must(db, ...)
  local code, out, err = rollout(db, ...)
  assert(code == 0, string.format("rollout %s: exit %s\n%s%s",
    table.concat({ ... }, " "), tostring(code), out, err))
  return out
end

-- Writes to the database from yet another connection (sqlite3, psql).
local other_writer = D.exec

local function open(db, opts)
  opts = opts or {}
  return T.engine {
    db = db,
    workflows = FIX,
    plugins = PLUGINS,
    settings = opts.settings,
    seed = opts.seed,
    concurrency = opts.concurrency,
    sync = "normal",
  }
end

local function wf(name)
  return FIX .. name .. ".lua"
end

local function start(e, name, vars)
  return assert(e:start(wf(name), vars or {}))
end

local function decisions(e, id)
  return e:sql("SELECT * FROM cv_decisions WHERE instance_id = ?", id)
end

-- The one decision of an instance (asserts there is exactly one).
local function decision(e, id)
  local rows = decisions(e, id)
  assert.are.equal(1, #rows, "decision rows of instance " .. id)
  return rows[1]
end

-- Starts one instance of a workflow, runs until idle, returns the instance
-- and its decision.
local function route(e, name, vars)
  local id = start(e, name, vars)
  e:run()
  return e:instance(id), decision(e, id), id
end

local function expect(i, d, version, reason)
  assert.are.equal(version, d.version, "version")
  assert.are.equal(reason, d.reason, "reason")
  assert.are.equal("completed", i.state, "instance state")
  assert.are.equal(version, i.vars.took, "branch taken")
end

teardown(function()
  os.execute("rm -rf " .. q(tmpdir))
end)

-- ---------------------------------------------------------------------
describe("the Lua murmur3 used as the spec's reference", function()
  it("gives the published MurmurHash3_x86_32 vectors", function()
    assert.are.equal(0, murmur3_32("", 0))
    assert.are.equal(0x514e28b7, murmur3_32("", 1))
    assert.are.equal(0x81f16f39, murmur3_32("", 0xffffffff))
    assert.are.equal(0x248bfa47, murmur3_32("hello", 0))
    assert.are.equal(0x2e4ff723,
      murmur3_32("The quick brown fox jumps over the lazy dog", 0))
    assert.are.equal(0x2362f9de, murmur3_32("\0\0\0\0", 0))
    assert.are.equal(0x76293b50, murmur3_32("\xff\xff\xff\xff", 0))
    assert.are.equal(0xf55b516b, murmur3_32("\x21\x43\x65\x87", 0))
    assert.are.equal(0x7e4a8634, murmur3_32("\x21\x43\x65", 0))
    assert.are.equal(0xa0f7b07a, murmur3_32("\x21\x43", 0))
    assert.are.equal(0x72661cf4, murmur3_32("\x21", 0))
    assert.are.equal(0x24884cba, murmur3_32("Hello, world!", 0x9747b28c))
    assert.are.equal(0x2fa826cd, murmur3_32(
      "The quick brown fox jumps over the lazy dog", 0x9747b28c))
  end)

  it("gives Unleash's normalizedValue vectors at whole percentages", function()
    -- unleash-client-node: normalizedValue('123', 'gr1') == 73 and
    -- normalizedValue('999', 'groupX') == 25 (h % 100 + 1).
    assert.are.equal(72, bucket("gr1", "123") // 10000)
    assert.are.equal(24, bucket("groupX", "999") // 10000)
  end)
end)

-- ---------------------------------------------------------------------
describe("precedence (DESIGN.md), one row each", function()
  it("no flag row: v1, no_flag (new code ships dark)", function()
    local db = fresh_db()
    local e = open(db)
    local i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "no_flag")
    assert.are.equal(0, d.rate_ppm)
    assert.are.equal("u1", d.subject)
    assert.are.equal("checkout", d.flag)
    assert.are.equal("sticky", d.workflow)
    assert.are.equal("route", d.step)
    e:close()
  end)

  it("kill switch on beats an allow override at 100%: v1, kill_switch", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    must(db, "allow", "checkout", "u1", "--reason", "beta tester")
    must(db, "kill", "checkout", "--reason", "outage")
    local e = open(db)
    local i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "kill_switch")
    assert.are.equal(1000000, d.rate_ppm)
    e:close()
  end)

  it("opt-out (replacing an allow) at 100%: v1, opt_out", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    must(db, "allow", "checkout", "u1", "--reason", "first allowed")
    must(db, "opt-out", "checkout", "u1", "--reason", "then opted out")
    local e = open(db)
    -- A subject has one override at a time: the opt-out replaced the allow.
    local ov = e:sql("SELECT kind FROM cv_overrides WHERE flag = 'checkout'")
    assert.are.same({ { kind = "opt-out" } }, ov)
    local i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "opt_out")
    -- Everyone else still follows the rollout.
    i, d = route(e, "sticky", { user_id = "u2" })
    expect(i, d, "v2", "rollout")
    e:close()
  end)

  it("not eligible beats an allow override: v1, not_eligible", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    must(db, "allow", "checkout", "u1", "--reason", "beta tester")
    local e = open(db)
    local i, d = route(e, "eligible", { user_id = "u1", country = "DE" })
    expect(i, d, "v1", "not_eligible")
    -- The predicate is what decided: eligible, the same subject is allowed.
    i, d = route(e, "eligible", { user_id = "u1", country = "FR" })
    expect(i, d, "v2", "allow")
    -- Not eligible without an override, at 100%.
    i, d = route(e, "eligible", { user_id = "u2", country = "DE" })
    expect(i, d, "v1", "not_eligible")
    e:close()
  end)

  it("allow at 0%: v2, allow", function()
    local db = fresh_db()
    must(db, "set", "checkout", "0%", "--reason", "dark")
    must(db, "allow", "checkout", "u1", "--reason", "beta tester")
    local e = open(db)
    local i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v2", "allow")
    assert.are.equal(0, d.rate_ppm)
    i, d = route(e, "sticky", { user_id = "u2" })
    expect(i, d, "v1", "rollout")
    e:close()
  end)

  it("sticky at 0% sends everyone to v1, at 100% everyone to v2", function()
    local db = fresh_db()
    must(db, "set", "checkout", "0%", "--reason", "dark")
    local e = open(db)
    local ids = {}
    for k = 1, 300 do
      ids[k] = start(e, "sticky", { user_id = "s" .. k })
    end
    e:run()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    for k = 1, 300 do
      ids[300 + k] = start(e, "sticky", { user_id = "s" .. k })
    end
    e:run()
    for n, id in ipairs(ids) do
      local d = decision(e, id)
      local want = n <= 300 and "v1" or "v2"
      assert.are.equal(want, d.version, "instance " .. id)
      assert.are.equal("rollout", d.reason)
      assert.are.equal(n <= 300 and 0 or 1000000, d.rate_ppm)
      assert.are.equal(want, e:instance(id).vars.took)
    end
    e:close()
  end)

  it("retired flag: v1, retired", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    must(db, "retire", "checkout", "--reason", "v2 is the only version now")
    local e = open(db)
    local i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "retired")
    e:close()
  end)

  it("a missing key var raises an incident naming the var, never a silent v1",
    function()
      local db = fresh_db()
      must(db, "set", "checkout", "100%", "--reason", "all in")
      local e = open(db)
      local id = start(e, "sticky", { other = "x" })
      e:run()
      local i = e:instance(id)
      assert.are.equal("incident", i.state)
      assert.are.equal("route", i.step)
      local inc = e:incidents()
      assert.are.equal(1, #inc)
      assert.are.equal(id, inc[1].instance)
      assert.matches("var 'user_id' is missing", inc[1].error, 1, true)
      assert.matches("checkout", inc[1].error, 1, true)
      assert.are.equal(0, #decisions(e, id))
      e:close()
    end)

  it("a missing key var with on_missing_key = \"v1\": v1, missing_key",
    function()
      local db = fresh_db()
      must(db, "set", "checkout", "100%", "--reason", "all in")
      local e = open(db)
      local i, d = route(e, "missing_v1", {})
      expect(i, d, "v1", "missing_key")
      assert.is_nil(d.subject)
      -- A present key still follows the rollout.
      i, d = route(e, "missing_v1", { user_id = "u1" })
      expect(i, d, "v2", "rollout")
      e:close()
    end)

  it("a key var of a wrong type (a table, a boolean) raises an incident",
    function()
      local db = fresh_db()
      must(db, "set", "checkout", "100%", "--reason", "all in")
      local e = open(db)
      local t = start(e, "sticky", { user_id = { id = "u1" } })
      local b = start(e, "sticky", { user_id = true })
      e:run()
      for _, id in ipairs { t, b } do
        assert.are.equal("incident", e:instance(id).state)
        assert.are.equal(0, #decisions(e, id))
      end
      local inc = e:incidents()
      assert.are.equal(2, #inc)
      for _, n in ipairs(inc) do
        assert.matches("var 'user_id' is not a string or a number", n.error,
          1, true)
      end
      e:close()
    end)

  it("a numeric key works and lands in the string form's bucket", function()
    local db = fresh_db()
    must(db, "set", "checkout", "50%", "--reason", "half")
    local e = open(db)
    for _, n in ipairs { 0, 7, 42, 123456789, 9007199254740991 } do
      local _, dn = route(e, "sticky", { user_id = n })
      local _, ds = route(e, "sticky", { user_id = tostring(n) })
      assert.are.equal(tostring(n), dn.subject)
      assert.are.equal(ds.bucket, dn.bucket, "bucket of " .. n)
      assert.are.equal(ds.version, dn.version)
      assert.are.equal(bucket("checkout", tostring(n)), dn.bucket)
    end
    -- An override written as text applies to the numeric key.
    must(db, "set", "checkout", "0%", "--reason", "dark")
    must(db, "allow", "checkout", "42", "--reason", "numeric subject")
    local i, d = route(e, "sticky", { user_id = 42 })
    expect(i, d, "v2", "allow")
    e:close()
  end)

  it("forced through settings: v2 at 0% and v1 at 100%, reason forced",
    function()
      local db = fresh_db()
      must(db, "set", "checkout", "0%", "--reason", "dark")
      local e = open(db, { settings = { ["choose_version.force.checkout"] = "v2" } })
      local i, d = route(e, "sticky", { user_id = "u1" })
      expect(i, d, "v2", "forced")
      e:close()
      must(db, "set", "checkout", "100%", "--reason", "all in")
      e = open(db, { settings = { ["choose_version.force.checkout"] = "v1" } })
      i, d = route(e, "sticky", { user_id = "u1" })
      expect(i, d, "v1", "forced")
      e:close()
      -- The flag-less form forces every flag; the per-flag one wins.
      e = open(db, { settings = { ["choose_version.force"] = "v1" } })
      i, d = route(e, "sticky", { user_id = "u2" })
      expect(i, d, "v1", "forced")
      e:close()
      e = open(db, { settings = { ["choose_version.force"] = "v1",
        ["choose_version.force.checkout"] = "v2" } })
      i, d = route(e, "sticky", { user_id = "u3" })
      expect(i, d, "v2", "forced")
      e:close()
      -- Forcing works before the flag exists (new code tested while dark).
      local db2 = fresh_db()
      e = open(db2, { settings = { ["choose_version.force.checkout"] = "v2" } })
      i, d = route(e, "sticky", { user_id = "u1" })
      expect(i, d, "v2", "forced")
      e:close()
    end)
end)

-- ---------------------------------------------------------------------
describe("the node's own failures", function()
  it("turns an eligible predicate that raises into an incident", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    local e = open(db)
    local id = start(e, "bad_eligible", { user_id = "u1" })
    e:run()
    assert.are.equal("incident", e:instance(id).state)
    local inc = e:incidents()
    assert.are.equal(1, #inc)
    assert.matches("eligible", inc[1].error, 1, true)
    assert.matches("no country for u1", inc[1].error, 1, true)
    assert.are.equal(0, #decisions(e, id))
    e:close()
  end)

  it("refuses at load time a flag name `rollout` cannot manage", function()
    -- `rollout set 'Checkout V2!' ...` exits 2 (bad flag name): a workflow
    -- naming such a flag would stay on v1 forever, silently.
    local ok, err = T.check(wf("bad_flag_name"))
    assert.is_nil(ok, "the workflow loaded")
    assert.matches("flag", err, 1, true)
    assert.matches("bad_flag_name.lua", err, 1, true)
  end)
end)

-- ---------------------------------------------------------------------
describe("shadow options", function()
  -- A workflow whose node shadows `new` with the options `shadow`, `new`
  -- declared with `new_opts`, written where T.check reads it.
  local n = 0
  local function shadowed(shadow, new_opts)
    n = n + 1
    local path = tmpdir .. "/shadow" .. n .. ".lua"
    local f = assert(io.open(path, "w"))
    local text = ([[
local sy = require "switchyard"
return sy.workflow {
  name = "shadowed", start = "route",
  steps = {
    route = sy.choose_version {
      flag = "checkout", key = "user_id", v1 = "old", v2 = "new",
      shadow = SHADOW,
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = NEW,
  },
}
]]):gsub("SHADOW", shadow)
    text = text:gsub("NEW", new_opts or
      'sy.task { run = function(ctx) ctx.vars.took = "v2" end, shadow_safe = true }')
    f:write(text)
    f:close()
    return path
  end

  it("load with a list of vars or a function to compare, on a shadow_safe task", function()
    for _, shadow in ipairs {
      '{ compare = { "took" } }',
      '{ compare = { "took", "score" }, timeout = 0.5 }',
      '{ compare = function(ctx, primary, candidate) return true end }',
    } do
      local path = shadowed(shadow)
      local ok, err = T.check(path)
      assert.is_truthy(ok, shadow .. ": " .. tostring(err))
    end
  end)

  it("refuse a shadow of a step not marked shadow_safe, at the node's line", function()
    local cases = {
      { 'sy.task { run = function(ctx) end }', "not a task marked shadow_safe = true" },
      { 'sy.task { run = function(ctx) end, shadow_safe = false }', "not a task marked shadow_safe" },
      { 'sy.choose_version { flag = "other", key = "user_id", v1 = "old", v2 = "route" }',
        "not a task marked shadow_safe" },
    }
    for _, c in ipairs(cases) do
      local path = shadowed('{ compare = { "took" } }', c[1])
      local ok, err = T.check(path)
      assert.is_nil(ok, c[1])
      -- where: the node's line (5), naming the step and where it is (10)
      assert.matches(path .. ":5: step 'route': shadow runs step 'new', which is " ..
        "not a task", err, 1, true)
      assert.matches(c[2], err, 1, true)
      assert.matches(path .. ":10)", err, 1, true)
    end
  end)

  it("refuse bad shadow options, saying what is wrong", function()
    for _, c in ipairs {
      { "5", "shadow must be { compare" },
      { '{ timeout = 1 }', "compare names no var" },
      { '{ compare = {} }', "compare names no var" },
      { '{ compare = "took" }', "compare names no var" },
      { '{ compare = { "took", 3 } }', "shadow.compare[2] must be a var name" },
      { '{ compare = { "took", "" } }', "shadow.compare[2] must be a var name" },
      { '{ compare = { "took" }, budget = 3 }', "shadow has no option 'budget'" },
      { '{ compare = { "took" }, [1] = 3 }', "shadow has no option '?'" },
      { '{ compare = { "took" }, timeout = 0 }', "shadow.timeout must be seconds" },
      { '{ compare = { "took" }, timeout = "2" }', "shadow.timeout must be seconds" },
      { '{ compare = { "took" }, timeout = 3601 }', "shadow.timeout must be seconds" },
    } do
      local path = shadowed(c[1])
      local ok, err = T.check(path)
      assert.is_nil(ok, c[1])
      assert.matches(path .. ":5: step 'route': choose_version: ", err, 1, true)
      assert.matches(c[2], err, 1, true)
    end
    local ok, err = T.check(shadowed('{ compare = { "took" } }',
      'sy.task { run = function(ctx) end, shadow_safe = "yes" }'))
    assert.is_nil(ok)
    assert.matches("step 'new': shadow_safe must be true or false", err, 1, true)
  end)
end)

-- ---------------------------------------------------------------------
describe("sticky routing", function()
  it("sends every instance of a subject to the same version", function()
    local db = fresh_db()
    must(db, "set", "checkout", "50%", "--reason", "half")
    local e = open(db)
    local by_subject = {}
    for round = 1, 10 do
      for k = 1, 40 do
        local id = start(e, "sticky", { user_id = "s" .. k, round = round })
        by_subject[k] = by_subject[k] or {}
        table.insert(by_subject[k], id)
      end
    end
    e:run()
    local seen = {}
    for k, ids in pairs(by_subject) do
      local first = decision(e, ids[1])
      seen[first.version] = true
      for _, id in ipairs(ids) do
        local d = decision(e, id)
        assert.are.equal(first.version, d.version, "subject s" .. k)
        assert.are.equal(first.bucket, d.bucket)
        assert.are.equal(first.version, e:instance(id).vars.took)
      end
    end
    assert.is_true(seen.v1 and seen.v2, "40 subjects at 50% split both ways")
    e:close()
  end)

  it("raising the rate from 10% to 30% only adds subjects to v2", function()
    local db = fresh_db()
    local N = 2000
    must(db, "set", "checkout", "10%", "--reason", "ramp 1")
    local e = open(db)
    local first, second = {}, {}
    for k = 1, N do
      first[k] = start(e, "sticky", { user_id = "user-" .. k })
    end
    e:run()
    must(db, "set", "checkout", "30%", "--reason", "ramp 2")
    for k = 1, N do
      second[k] = start(e, "sticky", { user_id = "user-" .. k })
    end
    e:run()
    local v2_before, v2_after, moved_back = 0, 0, {}
    for k = 1, N do
      local a, b = decision(e, first[k]), decision(e, second[k])
      assert.are.equal(100000, a.rate_ppm)
      assert.are.equal(300000, b.rate_ppm)
      assert.are.equal(a.bucket, b.bucket)
      assert.are.equal(bucket("checkout", "user-" .. k), a.bucket)
      -- The version is exactly bucket < rate.
      assert.are.equal(a.bucket < 100000 and "v2" or "v1", a.version)
      assert.are.equal(b.bucket < 300000 and "v2" or "v1", b.version)
      if a.version == "v2" then
        v2_before = v2_before + 1
        if b.version ~= "v2" then
          moved_back[#moved_back + 1] = "user-" .. k
        end
      end
      if b.version == "v2" then
        v2_after = v2_after + 1
      end
    end
    assert.are.same({}, moved_back, "subjects moved back from v2 to v1")
    -- Binomial bounds, 5 standard deviations: 10% of 2000 is 200 +- 67,
    -- 30% is 600 +- 102.
    assert.is_true(v2_before >= 133 and v2_before <= 267,
      "v2 at 10%: " .. v2_before)
    assert.is_true(v2_after >= 498 and v2_after <= 702,
      "v2 at 30%: " .. v2_after)
    -- Each ramp step is the audit row that started it.
    local ramps = e:sql("SELECT id FROM cv_audit WHERE flag = 'checkout' " ..
      "AND what = 'rate' ORDER BY id")
    assert.are.equal(2, #ramps)
    assert.are.equal(ramps[1].id, decision(e, first[1]).ramp_id)
    assert.are.equal(ramps[2].id, decision(e, second[1]).ramp_id)
    e:close()
  end)

  it("records the bucket DESIGN.md defines (an independent murmur3)", function()
    local db = fresh_db()
    must(db, "set", "checkout", "37.5%", "--reason", "odd rate")
    local e = open(db)
    local keys = { "u1", "user-42", "a", "ab", "abc", "abcd", "abcde", "",
      "émilie@example.com", "9f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
      string.rep("x", 301) }
    for _, key in ipairs(keys) do
      local i, d = route(e, "sticky", { user_id = key })
      local want = bucket("checkout", key)
      assert.are.equal(want, d.bucket, "bucket of '" .. key .. "'")
      assert.are.equal(key, d.subject)
      assert.are.equal(want < 375000 and "v2" or "v1", d.version)
      assert.are.equal(d.version, i.vars.took)
    end
    e:close()
  end)

  it("hashes with the flag's group when it has one (--group), as Unleash does",
    function()
      local db = fresh_db()
      must(db, "set", "checkout", "73%", "--reason", "unleash parity",
        "--group", "gr1")
      local e = open(db)
      -- normalizedValue('123', 'gr1') == 73: in at 73%, out at 72%.
      local _, d = route(e, "sticky", { user_id = "123" })
      assert.are.equal(bucket("gr1", "123"), d.bucket)
      assert.are.equal(72, d.bucket // 10000)
      assert.are.equal("v2", d.version)
      must(db, "set", "checkout", "72%", "--reason", "one percent less")
      _, d = route(e, "sticky", { user_id = "123" })
      assert.are.equal("v1", d.version)
      e:close()
    end)
end)

-- ---------------------------------------------------------------------
describe("the random strategy", function()
  local function run_random(seed, n)
    local db = fresh_db()
    must(db, "set", "coin", "30%", "--reason", "coin")
    local e = open(db, { seed = seed })
    for k = 1, n do
      start(e, "random", { k = k })
    end
    e:run()
    local rows = e:sql("SELECT instance_id, version, reason, bucket " ..
      "FROM cv_decisions ORDER BY instance_id")
    local seq, v2 = {}, 0
    for k, r in ipairs(rows) do
      assert.are.equal("random", r.reason)
      assert.is_nil(r.bucket)
      seq[k] = r.version == "v2" and "2" or "1"
      if r.version == "v2" then
        v2 = v2 + 1
      end
    end
    assert.are.equal(n, #rows)
    e:close()
    return table.concat(seq), v2
  end

  it("routes a share within bounds, deterministically for a seed", function()
    local N = 5000
    local a, v2 = run_random(12345, N)
    -- 30% of 5000 = 1500, standard deviation 32.4; allow 5 of them.
    assert.is_true(v2 >= 1338 and v2 <= 1662, "v2 share at 30%: " .. v2)
    local b = run_random(12345, N)
    assert.are.equal(a, b, "two engines with the same seed decided differently")
    local c = run_random(54321, 500)
    assert.are_not.equal(a:sub(1, 500), c, "another seed, the same decisions")
  end)
end)

-- ---------------------------------------------------------------------
describe("the every_nth strategy", function()
  it("routes exactly every 4th instance at 25%, with a durable counter",
    function()
      local db = fresh_db()
      must(db, "set", "nth", "25%", "--reason", "every 4th")
      -- One instance at a time, so decisions come in instance order.
      local e = open(db, { concurrency = 1 })
      for k = 1, 10 do
        start(e, "nth", { k = k })
      end
      e:run()
      e:close()
      -- Reopened: the counter goes on from 10, not from 0.
      e = open(db, { concurrency = 1 })
      for k = 11, 22 do
        start(e, "nth", { k = k })
      end
      e:run()
      local rows = e:sql("SELECT version, reason FROM cv_decisions " ..
        "ORDER BY instance_id")
      assert.are.equal(22, #rows)
      local got, want = {}, {}
      for n, r in ipairs(rows) do
        assert.are.equal("every_nth", r.reason)
        got[n] = r.version
        want[n] = n % 4 == 0 and "v2" or "v1"
      end
      assert.are.same(want, got)
      assert.are.equal(22, e:sql("SELECT nth_counter FROM cv_flags " ..
        "WHERE name = 'nth'")[1].nth_counter)
      e:close()
    end)
end)

-- ---------------------------------------------------------------------
describe("a recorded decision", function()
  it("is reused on incident retry and re-entry: no re-roll", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    local e = open(db)
    local fail_until = os.time() + 2
    local id = start(e, "comeback", { user_id = "u1", fail_until = fail_until })
    e:run()
    local i = e:instance(id)
    assert.are.equal("incident", i.state)
    assert.are.equal("new", i.step)
    assert.are.equal("v2", decision(e, id).version)
    -- Back to 0%, and the v2 step stops failing once the clock passes.
    must(db, "set", "checkout", "0%", "--reason", "v2 is broken")
    local deadline = os.time() + 10
    while os.time() <= fail_until and os.time() < deadline do
      os.execute("sleep 0.05")
    end
    assert(e:retry(id))
    e:run()
    i = e:instance(id)
    assert.are.equal("completed", i.state)
    -- v2 twice: after the retry and when the node ran again.
    assert.are.equal("v2;v2;", i.vars.took)
    local steps = {}
    for _, r in ipairs(e:history(id)) do
      steps[#steps + 1] = r.step .. ":" .. r.outcome
    end
    assert.are.equal("route:ok new:error new:ok route:ok new:ok",
      table.concat(steps, " "))
    local d = decision(e, id)
    assert.are.equal("v2", d.version)
    assert.are.equal("rollout", d.reason)
    assert.are.equal(1000000, d.rate_ppm)
    -- A new instance of the same subject does follow the new rate.
    local i2, d2 = route(e, "sticky", { user_id = "u1" })
    expect(i2, d2, "v1", "rollout")
    local c = e:sql("SELECT * FROM cv_counters WHERE workflow = 'comeback'")
    assert.are.equal(1, #c)
    assert.are.equal("v2", c[1].version)
    assert.are.equal(1, c[1].routed)
    assert.are.equal(1, c[1].completed)
    assert.are.equal(0, c[1].in_flight)
    assert.are.equal(1, c[1].with_incidents)
    assert.are.equal(1, c[1].incidents)
    assert.are.equal(0, c[1].open_incidents)
    e:close()
  end)
end)

-- ---------------------------------------------------------------------
describe("per-version counters", function()
  local C = require "counters"
  local RECOUNT, COUNTERS = C.RECOUNT, C.COUNTERS

  -- Runs the engine in short slices until ready(e) holds (bounded): an
  -- instance asleep for an hour keeps run() from ever being idle.
  local function run_until(e, ready)
    local deadline = os.time() + 30
    repeat
      e:run { for_ms = 100 }
      if ready(e) then
        return
      end
    until os.time() > deadline
    error("the engine did not get there in 30 s")
  end

  it("equal a recount from the decisions and the instances", function()
    local db = fresh_db()
    must(db, "set", "checkout", "50%", "--reason", "half")
    local e = open(db)
    local failing, nappers = {}, {}
    for k = 1, 60 do
      local vars = { user_id = "s" .. k, fail = k % 3 == 0, nap = k <= 2 }
      local id = start(e, "counted", vars)
      if vars.fail then
        failing[#failing + 1] = id
      elseif vars.nap then
        nappers[#nappers + 1] = id
      end
    end
    -- Nothing left to run now: every instance completed, cancelled, in an
    -- incident, or asleep for an hour.
    local function settled(eng)
      return eng:sql("SELECT count(*) AS n FROM instances WHERE " ..
        "state IN ('ready', 'running')")[1].n == 0
    end
    run_until(e, settled)
    assert.are.equal(20, #e:incidents())
    -- Cancel some incidents, retry others (they fail again: a second
    -- incident for the same instance), leave the rest open.
    for n, id in ipairs(failing) do
      if n % 4 == 0 then
        assert(e:cancel(id))
      elseif n % 4 == 1 then
        assert(e:retry(id))
      end
    end
    -- One napper is cancelled while it waits; the other stays in flight.
    assert.are.equal("waiting", e:instance(nappers[1]).state)
    assert(e:cancel(nappers[1]))
    -- An instance cancelled before it was routed counts nowhere.
    local unrouted = start(e, "counted", { user_id = "never" })
    assert(e:cancel(unrouted))
    run_until(e, function(eng)
      return settled(eng) and #eng:incidents() == 15
    end)
    local recount, counters = e:sql(RECOUNT), e:sql(COUNTERS)
    assert.are.same(recount, counters)
    assert.are.same(e:sql(C.RAMP_RECOUNT), e:sql(C.RAMP_TALLIES))
    -- The scenario covered every column.
    local total = {}
    for _, r in ipairs(counters) do
      for k, v in pairs(r) do
        if type(v) == "number" then
          total[k] = (total[k] or 0) + v
        end
      end
    end
    assert.are.equal(60, total.routed)
    assert.are.equal(38, total.completed)
    assert.are.equal(6, total.cancelled)
    -- the napper; the 15 instances waiting in incidents are not in flight
    assert.are.equal(1, total.in_flight)
    assert.are.equal(20, total.with_incidents)
    assert.are.equal(25, total.incidents)
    assert.are.equal(15, total.open_incidents)
    assert.are.equal(0, #decisions(e, unrouted))
    -- Another engine on the same db agrees (the counters are in the db).
    e:close()
    e = open(db)
    assert.are.same(recount, e:sql(COUNTERS))
    e:close()
  end)
end)

-- ---------------------------------------------------------------------
describe("a decision's step time and retries", function()
  -- From the history: the branch's step runs, the deciding step excluded
  -- but for the part of its run after the decision (the router's own run
  -- ends within a millisecond or so of deciding).
  local RECOUNT = [[
    SELECT d.instance_id, d.step_ms, d.retries,
      (SELECT sum(r.ended_at - r.started_at) FROM step_runs r
       WHERE r.instance_id = d.instance_id AND r.step <> d.step)
      + (SELECT max(r.ended_at) FROM step_runs r
         WHERE r.instance_id = d.instance_id AND r.step = d.step)
      - d.decided_at AS ms,
      (SELECT count(*) FROM step_runs r
       WHERE r.instance_id = d.instance_id AND r.step <> d.step
         AND r.attempt > 1) AS re
    FROM cv_decisions d ORDER BY d.instance_id]]

  it("equal a recount from the step history", function()
    local db = fresh_db()
    must(db, "set", "checkout", "50%", "--reason", "half")
    local e = open(db)
    for k = 1, 12 do
      start(e, "timed", { user_id = "t" .. k, flaky = k % 2 == 1 })
    end
    e:run()
    local rows, retried, versions = e:sql(RECOUNT), 0, {}
    assert.are.equal(12, #rows)
    for _, r in ipairs(rows) do
      assert.are.equal(r.ms, r.step_ms, "step_ms of " .. r.instance_id)
      assert.are.equal(r.re, r.retries, "retries of " .. r.instance_id)
      -- two naps at least, three with the failed first attempt
      assert.is_true(r.step_ms >= 30, "naps counted")
      retried = retried + r.retries
    end
    assert.are.equal(6, retried)
    for _, d in ipairs(e:sql("SELECT DISTINCT version FROM cv_decisions")) do
      versions[#versions + 1] = d.version
    end
    assert.are.equal(2, #versions, "both branches ran")
    e:close()
  end)

  -- #sqlite: the previous schema is SQLite's (PostgreSQL databases began
  -- at the current one).
  it("are counted at an incident, and carried over from a database of the " ..
     "previous schema #sqlite", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    local e = open(db)
    local fail_until = os.time() + 1
    local ids = {}
    for k = 1, 4 do
      ids[k] = start(e, "timed", { user_id = "m" .. k, fail_until = fail_until })
    end
    e:run()
    for _, id in ipairs(ids) do
      assert.are.equal("incident", e:instance(id).state)
      -- attempts 2 and 3 of the branch step were retries
      assert.are.equal(2, decision(e, id).retries)
    end
    e:close()
    -- Back to the schema before the step-run totals existed: the decisions
    -- of instances in flight must carry what their branch has run.
    other_writer(db, "DROP TABLE instance_counts;" ..
      "ALTER TABLE instances DROP COLUMN caught;" ..
      "ALTER TABLE step_runs DROP COLUMN code;" ..
      "ALTER TABLE step_runs DROP COLUMN handler;" ..
      "ALTER TABLE cv_decisions DROP COLUMN caught;" ..
      "ALTER TABLE cv_counters DROP COLUMN caught;" ..
      "DROP TABLE journal; DROP TABLE signals;" ..
      "DROP TABLE cv_plans; DROP TABLE cv_plan_evals; DROP TABLE cv_latency;" ..
      "DROP TABLE cv_ramp_tallies;" ..
      "DROP TABLE cv_shadow_runs; DROP TABLE cv_shadow_hours;" ..
      "DROP TABLE cv_shadow_skips;" ..
      "ALTER TABLE cv_flags DROP COLUMN shadow_ppm;" ..
      "ALTER TABLE cv_flags DROP COLUMN shadow_budget;" ..
      "DROP TABLE cv_outbox; DROP TABLE cv_notify_targets;" ..
      "ALTER TABLE cv_audit DROP COLUMN numbers;" ..
      "DROP INDEX cv_decisions_instance;" ..
      "ALTER TABLE cv_decisions DROP COLUMN reroutes;" ..
      "CREATE UNIQUE INDEX cv_decisions_instance ON " ..
      "cv_decisions(instance_id, flag);" ..
      "ALTER TABLE cv_counters DROP COLUMN rerouted_in;" ..
      "ALTER TABLE cv_counters DROP COLUMN rerouted_out;" ..
      "ALTER TABLE instances DROP COLUMN wait_signal;" ..
      "ALTER TABLE instances ADD COLUMN wait_seq INTEGER;" ..
      "ALTER TABLE step_runs DROP COLUMN run_ms;" ..
      "ALTER TABLE cv_decisions DROP COLUMN base_run_ms;" ..
      "ALTER TABLE cv_decisions DROP COLUMN base_reruns;" ..
      "UPDATE cv_meta SET value = 1 WHERE key = 'schema_version';" ..
      "ALTER TABLE instances DROP COLUMN run_ms;" ..
      "ALTER TABLE instances DROP COLUMN reruns;" ..
      "ALTER TABLE instances DROP COLUMN claimed;" ..
      "PRAGMA user_version = 1")
    local deadline = os.time() + 10
    while os.time() <= fail_until and os.time() < deadline do
      os.execute("sleep 0.05")
    end
    e = open(db)
    for _, id in ipairs(ids) do
      assert(e:retry(id))
    end
    e:run()
    -- The branch's runs from the decision on, the deciding step excluded:
    -- what a decision of the previous schema counted.
    local rows = e:sql([[
      SELECT d.step_ms, d.retries,
        (SELECT sum(r.ended_at - r.started_at) FROM step_runs r
         WHERE r.instance_id = d.instance_id AND r.step <> d.step
           AND r.started_at >= d.decided_at) AS ms,
        (SELECT count(*) FROM step_runs r
         WHERE r.instance_id = d.instance_id AND r.step <> d.step
           AND r.started_at >= d.decided_at AND r.attempt > 1) AS re
      FROM cv_decisions d]])
    assert.are.equal(4, #rows)
    for _, r in ipairs(rows) do
      assert.are.equal(r.ms, r.step_ms)
      -- two failed retries, and the retried run after the incident is
      -- attempt 1 again
      assert.are.equal(2, r.retries)
      assert.are.equal(r.re, r.retries)
    end
    -- migration 10 counted the decisions it found into the ramp tallies,
    -- and the retries moved them on
    local C = require "counters"
    assert.are.same(e:sql(C.RAMP_RECOUNT), e:sql(C.RAMP_TALLIES))
    e:close()
  end)
end)

-- ---------------------------------------------------------------------
describe("ctx.version", function()
  it("is sticky per instance and recorded once", function()
    local db = fresh_db()
    must(db, "set", "checkout", "50%", "--reason", "half")
    local e = open(db)
    local ids = {}
    for k = 1, 100 do
      ids[k] = start(e, "asks", { k = k })
    end
    e:run()
    local seen = {}
    for _, id in ipairs(ids) do
      local i = e:instance(id)
      assert.are.equal("completed", i.state)
      assert.are.equal(i.vars.first, i.vars.second, "instance " .. id)
      local d = decision(e, id)
      assert.are.equal(i.vars.first, d.version)
      -- Without a key the subject is the instance.
      assert.are.equal(tostring(id), d.subject)
      assert.are.equal(bucket("checkout", tostring(id)), d.bucket)
      assert.are.equal("ask", d.step)
      seen[d.version] = true
    end
    assert.is_true(seen.v1 and seen.v2, "100 instances at 50% split both ways")
    local c = e:sql("SELECT sum(routed) AS n FROM cv_counters")
    assert.are.equal(100, c[1].n)
    e:close()
  end)

  it("with {flag, key} decides as the node does for the same subject",
    function()
      local db = fresh_db()
      must(db, "set", "checkout", "50%", "--reason", "half")
      local e = open(db)
      local node, asked = {}, {}
      for k = 1, 100 do
        node[k] = start(e, "sticky", { user_id = "s" .. k })
        asked[k] = start(e, "asks", { user_id = "s" .. k, by_subject = true })
      end
      e:run()
      for k = 1, 100 do
        local a, b = decision(e, node[k]), decision(e, asked[k])
        assert.are.equal(a.version, b.version, "subject s" .. k)
        assert.are.equal(a.bucket, b.bucket)
        assert.are.equal("s" .. k, b.subject)
        assert.are.equal(a.version, e:instance(asked[k]).vars.first)
      end
      e:close()
    end)

  it("honours overrides and forcing like the node", function()
    local db = fresh_db()
    must(db, "set", "checkout", "0%", "--reason", "dark")
    must(db, "allow", "checkout", "vip", "--reason", "beta tester")
    local e = open(db)
    local id = start(e, "asks", { user_id = "vip", by_subject = true })
    e:run()
    local d = decision(e, id)
    assert.are.equal("v2", d.version)
    assert.are.equal("allow", d.reason)
    e:close()
    e = open(db, { settings = { ["choose_version.force.checkout"] = "v2" } })
    id = start(e, "asks", {})
    e:run()
    assert.are.equal("v2", e:instance(id).vars.first)
    assert.are.equal("forced", decision(e, id).reason)
    e:close()
  end)

  it("raises in the step when the key var is missing", function()
    local db = fresh_db()
    must(db, "set", "checkout", "100%", "--reason", "all in")
    local e = open(db)
    local id = start(e, "asks", { by_subject = true })
    e:run()
    assert.are.equal("incident", e:instance(id).state)
    local inc = e:incidents()
    assert.are.equal(1, #inc)
    assert.matches("ctx.version checkout: var 'user_id' is missing",
      inc[1].error, 1, true)
    assert.are.equal(0, #decisions(e, id))
    e:close()
  end)
end)

-- ---------------------------------------------------------------------
describe("a change made by another process", function()
  it("applies to the next decision of an open engine", function()
    local db = fresh_db()
    must(db, "set", "checkout", "0%", "--reason", "dark")
    local e = open(db)
    local i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "rollout")
    must(db, "set", "checkout", "100%", "--reason", "all in")
    i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v2", "rollout")
    must(db, "kill", "checkout", "--reason", "outage")
    i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "kill_switch")
    must(db, "unkill", "checkout", "--reason", "fixed")
    i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v2", "rollout")
    must(db, "opt-out", "checkout", "u1", "--reason", "complained")
    i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "opt_out")
    must(db, "clear", "checkout", "u1", "--reason", "follows again")
    i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v2", "rollout")
    -- A plain sqlite3 shell is another writer too.
    other_writer(db, "UPDATE cv_flags SET rate_ppm = 0 WHERE name = 'checkout'")
    i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "rollout")
    assert.are.equal(0, d.rate_ppm)
    must(db, "retire", "checkout", "--reason", "done")
    i, d = route(e, "sticky", { user_id = "u1" })
    expect(i, d, "v1", "retired")
    e:close()
  end)
end)

-- ---------------------------------------------------------------------
describe("every fixture workflow", function()
  local cases = {
    { "sticky", { user_id = "u1" } },
    { "eligible", { user_id = "u1", country = "FR" } },
    { "missing_v1", { user_id = "u1" } },
    { "random", {} },
    { "nth", {} },
    { "counted", { user_id = "u1" } },
    { "comeback", { user_id = "u1" } },
    { "asks", {} },
    { "asks", { user_id = "u1", by_subject = true } },
  }
  for _, version in ipairs { "v1", "v2" } do
    it("completes with " .. version .. " forced", function()
      local db = fresh_db()
      -- The rollout says the opposite of what is forced.
      must(db, "set", "checkout", version == "v1" and "100%" or "0%",
        "--reason", "opposite")
      local e = open(db, { settings = { ["choose_version.force"] = version } })
      local ids = {}
      for n, c in ipairs(cases) do
        ids[n] = start(e, c[1], c[2])
      end
      e:run()
      for n, id in ipairs(ids) do
        local i = e:instance(id)
        assert.are.equal("completed", i.state, cases[n][1])
        local took = i.vars.took or i.vars.first
        assert.matches("^" .. version, took, 1, false)
        assert.are.equal("forced", decision(e, id).reason)
      end
      e:close()
    end)
  end
end)
