-- End-to-end tests of `switchyard rollout`: every bad input exits 2 with a
-- message and changes nothing (the flag list, the audit trail and the whole
-- database dump compared before and after); the good paths (rates in %,
-- decimal % and ppm, get --json, the audit trail in order with actor and
-- reason, --group, retire and --force); and a running `switchyard run`
-- that sees rate changes and the kill switch made by other processes
-- without a restart, then stops cleanly on SIGTERM.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local R = dofile(H.repo .. "/tests/fixtures/cv/lib/murmur3.lua")

local CV = H.repo .. "/tests/fixtures/cv"

local function has(haystack, needle, what)
  assert(haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, haystack))
end

-- `rollout get FLAG --json`, decoded.
local function get(env, flag)
  return H.decode((env:ok("rollout", "get", flag, "--json")))
end

local function history(env, flag)
  return H.decode((env:ok("rollout", "history", flag, "--json")))
end

-- ---------------------------------------------------------------------
describe("switchyard rollout rejects bad input with exit 2", function()
  local env

  setup(function()
    env = H.env { workflows = CV }
    -- Something to keep unchanged: a live flag with an override, a
    -- retired one, and decisions of a finished run.
    env:ok("rollout", "set", "live", "10%", "--reason", "ramp", "--actor", "ops")
    env:ok("rollout", "allow", "live", "vip", "--reason", "beta")
    env:ok("rollout", "set", "old", "5%", "--reason", "ramp")
    env:ok("rollout", "retire", "old", "--reason", "done")
    env:ok("start", "sticky", "--count", "3", "--var", "user_id=u{n}")
    env:ok("run", "--until-idle")
  end)

  teardown(function()
    H.rmdir(env.dir)
  end)

  -- The state a bad command must leave alone, as the CLI and sqlite3 see it.
  local function state()
    return {
      list = env:ok("rollout", "list", "--json"),
      live = env:ok("rollout", "history", "live", "--json"),
      old = env:ok("rollout", "history", "old", "--json"),
      overrides = env:ok("rollout", "overrides", "live", "--json"),
      dump = env:snapshot(),
    }
  end

  local cases = {
    -- rates
    { "a negative rate", { "set", "live", "-5%", "--reason", "r" },
      { "bad rate '-5%'", "negative" } },
    { "a negative ppm rate", { "set", "live", "-1ppm", "--reason", "r" },
      { "bad rate '-1ppm'", "negative" } },
    { "a rate over 100%", { "set", "live", "100.5%", "--reason", "r" },
      { "bad rate '100.5%'", "above the maximum of 100%" } },
    { "a rate of 101%", { "set", "live", "101%", "--reason", "r" },
      { "above the maximum" } },
    { "a ppm rate over 1000000", { "set", "live", "1000001ppm", "--reason", "r" },
      { "above the maximum of 1000000ppm" } },
    { "NaN", { "set", "live", "NaN", "--reason", "r" },
      { "bad rate 'NaN'", "not a number" } },
    { "nan%", { "set", "live", "nan%", "--reason", "r" },
      { "bad rate 'nan%'", "not a number" } },
    { "inf%", { "set", "live", "inf%", "--reason", "r" },
      { "bad rate 'inf%'" } },
    { "garbage", { "set", "live", "lots", "--reason", "r" },
      { "bad rate 'lots'", "not a number" } },
    { "trailing junk after %", { "set", "live", "5%x", "--reason", "r" },
      { "bad rate '5%x'", "after the unit" } },
    { "a doubled %", { "set", "live", "5%%", "--reason", "r" },
      { "bad rate '5%%'" } },
    { "trailing junk after ppm", { "set", "live", "5ppmm", "--reason", "r" },
      { "bad rate '5ppmm'" } },
    { "an exponent", { "set", "live", "1e3ppm", "--reason", "r" },
      { "bad rate '1e3ppm'" } },
    { "an empty rate", { "set", "live", "", "--reason", "r" },
      { "bad rate ''", "empty" } },
    { "a bare number", { "set", "live", "5", "--reason", "r" },
      { "bad rate '5'", "without a unit is ambiguous" } },
    { "a bare fraction", { "set", "live", "0.05", "--reason", "r" },
      { "bad rate '0.05'", "ambiguous" } },
    { "a decimal comma", { "set", "live", "0,5%", "--reason", "r" },
      { "bad rate '0,5%'", "decimal separator" } },
    { "more than 1 ppm of precision", { "set", "live", "0.00001%", "--reason", "r" },
      { "finer than 1 ppm" } },
    { "a fractional ppm", { "set", "live", "2.5ppm", "--reason", "r" },
      { "ppm takes a whole number" } },
    { "a rate split in two words", { "set", "live", "5", "%", "--reason", "r" },
      { "expected 2 arguments" } },
    { "set without a rate", { "set", "live", "--reason", "r" },
      { "which rate?" } },
    -- reasons
    { "set without --reason", { "set", "live", "20%" },
      { "set needs --reason" } },
    { "set of a new flag without --reason", { "set", "brand-new", "20%" },
      { "set needs --reason" } },
    { "--reason with an empty value", { "set", "live", "20%", "--reason", "" },
      { "--reason needs a non-empty value" } },
    { "--reason without a value", { "set", "live", "20%", "--reason" },
      { "--reason needs a non-empty value" } },
    { "kill without --reason", { "kill", "live" }, { "kill needs --reason" } },
    { "unkill without --reason", { "unkill", "live" },
      { "unkill needs --reason" } },
    { "retire without --reason", { "retire", "live" },
      { "retire needs --reason" } },
    -- unknown flags
    { "get of an unknown flag", { "get", "nosuch" }, { "no flag 'nosuch'" } },
    { "kill of an unknown flag", { "kill", "nosuch", "--reason", "r" },
      { "no flag 'nosuch'" } },
    { "unkill of an unknown flag", { "unkill", "nosuch", "--reason", "r" },
      { "no flag 'nosuch'" } },
    { "retire of an unknown flag", { "retire", "nosuch", "--reason", "r" },
      { "no flag 'nosuch'" } },
    { "history of an unknown flag", { "history", "nosuch" },
      { "no flag 'nosuch'" } },
    { "allow on an unknown flag", { "allow", "nosuch", "u1", "--reason", "r" },
      { "no flag 'nosuch'" } },
    { "opt-out on an unknown flag", { "opt-out", "nosuch", "u1", "--reason", "r" },
      { "no flag 'nosuch'" } },
    { "clear on an unknown flag", { "clear", "nosuch", "u1", "--reason", "r" },
      { "no flag 'nosuch'" } },
    { "overrides of an unknown flag", { "overrides", "nosuch" },
      { "no flag 'nosuch'" } },
    -- flag names
    { "a flag name with a space", { "set", "bad name", "5%", "--reason", "r" },
      { "bad flag name 'bad name'" } },
    { "a flag name with a slash", { "get", "a/b" }, { "bad flag name 'a/b'" } },
    { "an empty flag name", { "set", "", "5%", "--reason", "r" },
      { "bad flag name ''" } },
    { "a flag name of 129 characters",
      { "set", string.rep("f", 129), "5%", "--reason", "r" },
      { "bad flag name" } },
    { "a non-ASCII flag name", { "set", "émoi", "5%", "--reason", "r" },
      { "bad flag name" } },
    { "a bad --group", { "set", "live", "5%", "--reason", "r", "--group", "g 1" },
      { "bad --group 'g 1'" } },
    -- commands and options
    { "no rollout command", {}, { "usage: switchyard rollout" } },
    { "an unknown rollout command", { "frobnicate", "live" },
      { "unknown command 'frobnicate'" } },
    { "an unknown option", { "get", "live", "--bogus" },
      { "unknown option '--bogus'" } },
    { "an unknown option on set", { "set", "live", "20%", "--reason", "r", "--now" },
      { "unknown option '--now'" } },
    { "get without a flag", { "get" }, { "which flag?" } },
    { "get with a stray argument", { "get", "live", "extra" },
      { "expected 1 argument" } },
    { "list with an argument", { "list", "live" },
      { "list takes no arguments" } },
    { "allow without a subject", { "allow", "live", "--reason", "r" },
      { "which subject?" } },
    { "allow of an empty subject", { "allow", "live", "", "--reason", "r" },
      { "empty subject" } },
    -- overrides and retired flags
    { "clear of a subject without an override",
      { "clear", "live", "nobody", "--reason", "r" },
      { "no override for subject 'nobody'" } },
    { "set on a retired flag without --force",
      { "set", "old", "5%", "--reason", "again" },
      { "flag 'old' was retired", "--force" } },
    { "kill of a retired flag", { "kill", "old", "--reason", "r" },
      { "flag 'old' is retired" } },
    { "retire of a retired flag", { "retire", "old", "--reason", "r" },
      { "retired already" } },
  }

  for _, c in ipairs(cases) do
    local name, args, expect = c[1], c[2], c[3]
    it(name, function()
      local before = state()
      local code, out, err = env:run("rollout", table.unpack(args))
      assert.are.equal(2, code, "exit code; stdout: " .. out .. "stderr: " .. err)
      for _, e in ipairs(expect) do
        has(err, e, "stderr")
      end
      local after = state()
      assert.are.equal(before.list, after.list, "rollout list changed")
      assert.are.equal(before.live, after.live, "history of 'live' changed")
      assert.are.equal(before.old, after.old, "history of 'old' changed")
      assert.are.equal(before.overrides, after.overrides, "overrides changed")
      assert.are.equal(before.dump, after.dump, "the database changed")
    end)
  end

  it("creates no database when the --db file does not exist", function()
    -- A typo in --db must not leave a stray database behind.
    local e2 = H.env { workflows = CV }
    for _, args in ipairs {
      { "get", "live" },
      { "set", "live", "-5%", "--reason", "r" },
      { "frobnicate" },
    } do
      local code, out, err = e2:run("rollout", table.unpack(args))
      assert.are.equal(2, code, "exit code; stdout: " .. out .. "stderr: " .. err)
      assert.are.equal("<no database>", e2:snapshot(),
        "rollout " .. table.concat(args, " ") .. " created " .. e2.db)
    end
    H.rmdir(e2.dir)
  end)
end)

-- ---------------------------------------------------------------------
describe("switchyard rollout, good paths", function()
  local env

  before_each(function()
    env = H.env { workflows = CV }
  end)

  after_each(function()
    H.rmdir(env.dir)
  end)

  it("sets rates in %, decimal % and ppm", function()
    for _, c in ipairs {
      { "5%", 50000, "5%" }, { "0.25%", 2500, "0.25%" },
      { "2500ppm", 2500, "0.25%" }, { "12.3456%", 123456, "12.3456%" },
      { "0.0001%", 1, "0.0001%" }, { "1ppm", 1, "0.0001%" },
      { "2500PPM", 2500, "0.25%" }, { "33.30%", 333000, "33.3%" },
      { "100%", 1000000, "100%" }, { "1000000ppm", 1000000, "100%" },
      { "0%", 0, "0%" }, { "0ppm", 0, "0%" }, { "7%", 70000, "7%" },
    } do
      env:ok("rollout", "set", "f", c[1], "--reason", "to " .. c[1])
      local g = get(env, "f")
      assert.are.equal(c[2], g.rate_ppm, c[1])
      assert.are.equal(c[3], g.rate, c[1])
      assert.are.equal(c[2], env:scalar(
        "SELECT rate_ppm FROM cv_flags WHERE name = 'f'"), c[1])
    end
  end)

  it("get --json gives every field", function()
    env:ok("rollout", "set", "checkout", "12.5%", "--reason", "first ramp",
      "--description", "new checkout", "--owner", "payments")
    env:ok("start", "sticky", "--count", "20", "--var", "user_id=u{n}")
    env:ok("run", "--until-idle")
    local g = get(env, "checkout")
    assert.are.equal("checkout", g.flag)
    assert.are.equal("12.5%", g.rate)
    assert.are.equal(125000, g.rate_ppm)
    assert.are.equal(false, g.killed)
    assert.are.equal(false, g.retired)
    assert.are.equal("checkout", g.group)
    assert.are.equal("new checkout", g.description)
    assert.are.equal("payments", g.owner)
    assert.is_true(math.type(g.created_at) == "integer" and g.created_at > 0)
    assert.is_true(g.updated_at >= g.created_at)
    local routed, completed = 0, 0
    for _, c in ipairs(g.counters) do
      assert.are.equal("sticky", c.workflow)
      assert.is_truthy(c.version == "v1" or c.version == "v2")
      for _, k in ipairs { "routed", "in_flight", "completed", "cancelled",
        "with_incidents", "incidents", "open_incidents" } do
        assert.are.equal("integer", math.type(c[k]), k)
      end
      routed, completed = routed + c.routed, completed + c.completed
    end
    assert.are.equal(20, routed)
    assert.are.equal(20, completed)
    env:ok("rollout", "kill", "checkout", "--reason", "stop")
    assert.are.equal(true, get(env, "checkout").killed)
    -- list --json holds the same flag fields.
    local l = H.decode((env:ok("rollout", "list", "--json")))
    assert.are.equal(1, #l)
    assert.are.equal("checkout", l[1].flag)
    assert.are.equal(125000, l[1].rate_ppm)
    assert.are.equal(true, l[1].killed)
  end)

  it("history lists every change in order, with actor and reason", function()
    local function r(...)
      env:ok("rollout", ...)
    end
    r("set", "f", "1%", "--reason", "start small", "--actor", "alice")
    r("set", "f", "5%", "--reason", "looks good", "--actor", "bob")
    r("kill", "f", "--reason", "errors up", "--actor", "carol")
    r("unkill", "f", "--reason", "fixed", "--actor", "carol")
    r("allow", "f", "vip", "--reason", "beta tester", "--actor", "dave")
    r("opt-out", "f", "vip", "--reason", "changed mind", "--actor", "dave")
    r("clear", "f", "vip", "--reason", "back to normal", "--actor", "erin")
    r("retire", "f", "--reason", "v2 everywhere", "--actor", "frank")
    local h = history(env, "f")
    local want = {
      { "create", nil, nil, "f", "start small", "alice" },
      -- a new flag's first rate has no old value
      { "rate", nil, nil, "1%", "start small", "alice" },
      { "rate", nil, "1%", "5%", "looks good", "bob" },
      { "kill", nil, "off", "on", "errors up", "carol" },
      { "unkill", nil, "on", "off", "fixed", "carol" },
      { "override", "vip", "none", "allow", "beta tester", "dave" },
      { "override", "vip", "allow", "opt-out", "changed mind", "dave" },
      { "clear", "vip", "opt-out", "none", "back to normal", "erin" },
      { "retire", nil, "active", "retired", "v2 everywhere", "frank" },
    }
    assert.are.equal(#want, #h)
    local last_id, last_at = 0, 0
    for n, w in ipairs(want) do
      local row = h[n]
      assert.are.equal(w[1], row.what, "row " .. n)
      assert.are.equal(w[2], row.subject, "row " .. n)
      assert.are.equal(w[3], row.old, "row " .. n)
      assert.are.equal(w[4], row.new, "row " .. n)
      assert.are.equal(w[5], row.reason, "row " .. n)
      assert.are.equal(w[6], row.actor, "row " .. n)
      assert.is_true(row.id > last_id and row.at >= last_at)
      last_id, last_at = row.id, row.at
    end
    -- The text form shows the same trail.
    local text = env:ok("rollout", "history", "f")
    local pos = 0
    for _, w in ipairs(want) do
      local at = text:find(w[5], pos + 1, true)
      assert(at, "history text lacks '" .. w[5] .. "' in order:\n" .. text)
      pos = at
    end
    has(text, "by alice")
  end)

  it("defaults the actor to the login name", function()
    env:ok("rollout", "set", "f", "1%", "--reason", "who am i")
    local me = H.capture("id -un")
    assert.are.equal(me, history(env, "f")[1].actor)
  end)

  it("lists overrides with kind, actor and reason", function()
    env:ok("rollout", "set", "f", "1%", "--reason", "r")
    env:ok("rollout", "allow", "f", "vip", "--reason", "beta", "--actor", "dave")
    env:ok("rollout", "opt-out", "f", "grumpy", "--actor", "erin")
    local o = H.decode((env:ok("rollout", "overrides", "f", "--json")))
    assert.are.equal(2, #o)
    assert.are.same({ "grumpy", "opt-out", "erin" },
      { o[1].subject, o[1].kind, o[1].actor })
    assert.are.same({ "vip", "allow", "dave", "beta" },
      { o[2].subject, o[2].kind, o[2].actor, o[2].reason })
  end)

  it("--group changes the bucket group", function()
    env:ok("rollout", "set", "checkout", "50%", "--reason", "half")
    env:ok("start", "sticky", "--count", "20", "--var", "user_id=u{n}")
    env:ok("run", "--until-idle")
    -- reshuffling cohorts takes --force, and is refused (changing
    -- nothing) without it
    local code, _, err = env:run("rollout", "set", "checkout", "50%",
      "--reason", "share cohorts", "--group", "cohort-a")
    assert.are.equal(2, code)
    assert.matches("reshuffles its cohorts", err, 1, true)
    assert.are.equal("checkout", get(env, "checkout").group)
    env:ok("rollout", "set", "checkout", "50%", "--reason", "share cohorts",
      "--group", "cohort-a", "--force")
    assert.are.equal("cohort-a", get(env, "checkout").group)
    env:ok("start", "sticky", "--count", "20", "--var", "user_id=u{n}")
    env:ok("run", "--until-idle")
    local rows = env:sql("SELECT instance_id, subject, bucket, version " ..
      "FROM cv_decisions ORDER BY instance_id")
    assert.are.equal(40, #rows)
    local differ = 0
    for n, row in ipairs(rows) do
      local group = n <= 20 and "checkout" or "cohort-a"
      local b = R.bucket(group, row[2])
      assert.are.equal(b, tonumber(row[3]), "bucket of " .. row[2] .. " in " ..
        group)
      assert.are.equal(b < 500000 and "v2" or "v1", row[4])
      if n > 20 and tonumber(rows[n - 20][3]) ~= b then
        differ = differ + 1
      end
    end
    assert.is_true(differ > 0, "the group did not change any bucket")
    local h = history(env, "checkout")
    assert.are.equal("group", h[#h].what)
    assert.are.equal("checkout", h[#h].old)
    assert.are.equal("cohort-a", h[#h].new)
    -- A new flag takes its group at creation.
    env:ok("rollout", "set", "other", "1%", "--reason", "r", "--group", "gr1")
    assert.are.equal("gr1", get(env, "other").group)
  end)

  it("set on a retired flag with --force revives it, audited", function()
    env:ok("rollout", "set", "checkout", "20%", "--reason", "ramp")
    env:ok("rollout", "kill", "checkout", "--reason", "stop")
    env:ok("rollout", "retire", "checkout", "--reason", "done")
    local g = get(env, "checkout")
    assert.are.equal(true, g.retired)
    assert.are.equal(0, g.rate_ppm)
    env:ok("rollout", "set", "checkout", "3%", "--reason", "reuse the name", "--force",
      "--actor", "zoe")
    g = get(env, "checkout")
    assert.are.equal(false, g.retired)
    assert.are.equal(false, g.killed)
    assert.are.equal(30000, g.rate_ppm)
    local h = history(env, "checkout")
    local n = #h
    assert.are.equal("unretire", h[n - 1].what)
    assert.are.equal("retired", h[n - 1].old)
    assert.are.equal("active", h[n - 1].new)
    assert.are.equal("zoe", h[n - 1].actor)
    assert.are.equal("reuse the name", h[n - 1].reason)
    assert.are.equal("rate", h[n].what)
    assert.are.equal("0%", h[n].old)
    assert.are.equal("3%", h[n].new)
    -- Routing follows the revived flag.
    env:ok("start", "sticky", "--var", "user_id=u1")
    env:ok("run", "--until-idle")
    local d = env:sql("SELECT reason, rate_ppm FROM cv_decisions")
    assert.are.same({ { "rollout", "30000" } }, d)
  end)
end)

-- ---------------------------------------------------------------------
describe("switchyard rollout list: what needs attention", function()
  local env
  local DAY = 86400000

  before_each(function()
    env = H.env { workflows = CV }
  end)

  after_each(function()
    H.rmdir(env.dir)
  end)

  -- `rollout list --json` as seen `days` days from now (time moved on by
  -- the test-only setting clock.advance_ms, on the database server's
  -- clock too): flag name -> attention (false: none).
  local function attention(days, ...)
    local out = env:ok("--set", "clock.advance_ms=" .. math.floor(days * DAY),
      "rollout", "list", "--json", ...)
    local t = {}
    for _, f in ipairs(H.decode(out)) do
      t[f.flag] = f.attention or false
    end
    return t
  end

  it("names flags left at 100%, killed, or at 0% with no decisions, " ..
    "past --stale-after", function()
      env:ok("rollout", "set", "done", "100%", "--reason", "v2 won")
      env:ok("rollout", "set", "broken", "5%", "--reason", "ramp")
      env:ok("rollout", "kill", "broken", "--reason", "v2 fails")
      env:ok("rollout", "set", "ramping", "25%", "--reason", "ramp")
      env:ok("rollout", "set", "retired", "100%", "--reason", "ramp")
      env:ok("rollout", "retire", "retired", "--reason", "done")
      -- 'checkout' (the fixture's flag) at 0%, deciding 10 days from now
      env:ok("rollout", "set", "checkout", "0%", "--reason", "not yet")
      env:ok("--set", "clock.advance_ms=" .. 10 * DAY, "start", "sticky",
        "--count", "3", "--var", "user_id=u{n}")
      env:ok("--set", "clock.advance_ms=" .. 10 * DAY, "run", "--until-idle")

      -- Within the 14 days: nothing.
      assert.are.same({ done = false, broken = false, ramping = false,
        retired = false, checkout = false }, attention(13))

      local t = attention(15)
      has(t.done, "at 100% for 15d: finish the migration: remove the " ..
        "node, retire the flag", "done")
      has(t.broken, "killed for 15d", "broken")
      assert.is_false(t.ramping)
      assert.is_false(t.retired)
      -- at 0% for 15 days, but its last decision is 5 days old
      assert.is_false(t.checkout)
      has(attention(25).checkout, "at 0% with no decision for 15d",
        "checkout")

      -- --stale-after moves the bar; --stale lists only those.
      assert.is_false(attention(15, "--stale-after", "16d").done)
      has(attention(3, "--stale-after", "2d").done, "at 100% for 3d")
      local only = attention(15, "--stale")
      assert.are.same({ "broken", "done" }, (function()
        local names = {}
        for k in pairs(only) do names[#names + 1] = k end
        table.sort(names)
        return names
      end)())
      -- The table says it too.
      local out = env:ok("--set", "clock.advance_ms=" .. 15 * DAY, "rollout",
        "list")
      has(out, "ATTENTION", "list")
      has(out, "finish the migration", "list")
    end)

  it("a bad --stale-after is exit 2", function()
    env:ok("rollout", "set", "f", "5%", "--reason", "r")
    for _, bad in ipairs { "x", "14", "-3d", "5w", "" } do
      local code, _, err = env:run("rollout", "list", "--stale-after", bad)
      assert.are.equal(2, code, bad)
      has(err, "--stale-after", bad)
    end
  end)
end)

-- ---------------------------------------------------------------------
describe("switchyard rollout --dry-run", function()
  local env
  local N = 300

  before_each(function()
    env = H.env { workflows = CV }
  end)

  after_each(function()
    H.rmdir(env.dir)
  end)

  -- Starts an instance of 'sticky' for each of subjects u1..uN and runs
  -- them: each subject's version in those new decisions.
  local function route_all()
    local last = env:scalar("SELECT coalesce(max(id), 0) FROM instances")
    env:ok("start", "sticky", "--count", tostring(N), "--var", "user_id=u{n}")
    env:ok("run", "--until-idle")
    local v = {}
    for _, r in ipairs(env:sql("SELECT subject, version FROM cv_decisions " ..
      "WHERE instance_id > " .. last)) do
      v[r[1]] = r[2]
    end
    return v
  end

  it("counts exactly the subjects a rate up, a rate down, a group change " ..
    "and a kill then move, and writes nothing", function()
      env:ok("rollout", "set", "checkout", "10%", "--reason", "ramp")
      env:ok("rollout", "allow", "checkout", "u5", "--reason", "vip")
      env:ok("rollout", "opt-out", "checkout", "u7", "--reason", "asked")
      local before = route_all()
      for _, change in ipairs {
        { "set", "checkout", "30%" },
        { "set", "checkout", "5%" },
        { "set", "checkout", "5%", "--group", "checkout-2", "--force" },
        { "kill", "checkout" },
      } do
        local what = table.concat(change, " ")
        local dump = env:snapshot()
        local args = { "rollout" }
        for _, a in ipairs(change) do args[#args + 1] = a end
        args[#args + 1] = "--dry-run"
        args[#args + 1] = "--json"
        local d = H.decode((env:ok(table.unpack(args))))
        assert.are.equal(dump, env:snapshot(), what .. ": the dry run wrote")
        assert.are.equal(N, d.subjects, what)
        -- the change itself, then every subject decided again
        args[#args - 1] = "--reason"
        args[#args] = "apply"
        env:ok(table.unpack(args))
        local after = route_all()
        local to_v2, to_v1 = {}, {}
        for subject, v in pairs(before) do
          if v ~= after[subject] then
            (v == "v1" and to_v2 or to_v1)[subject] = true
          end
        end
        local function size(t)
          local n = 0
          for _ in pairs(t) do n = n + 1 end
          return n
        end
        assert.are.equal(size(to_v2), d.to_v2, what .. ": v1 -> v2")
        assert.are.equal(size(to_v1), d.to_v1, what .. ": v2 -> v1")
        assert.is_true(d.to_v2 + d.to_v1 > 0, what .. ": nobody moved")
        for _, s in ipairs(d.examples_to_v2) do
          assert.is_true(to_v2[s], what .. ": example " .. s)
        end
        for _, s in ipairs(d.examples_to_v1) do
          assert.is_true(to_v1[s], what .. ": example " .. s)
        end
        assert.are.equal(N - d.to_v2 - d.to_v1,
          d.unchanged_v1 + d.unchanged_v2, what)
        before = after
      end
      -- the overrides held throughout: u5 on v2 until the kill, u7 on v1
      assert.are.equal("v1", before.u5)
      assert.are.equal("v1", before.u7)
    end)

  it("needs no --reason, is refused where it means nothing, and takes " ..
    "--window", function()
      env:ok("rollout", "set", "checkout", "10%", "--reason", "ramp")
      route_all()
      local out = env:ok("rollout", "set", "checkout", "20%", "--dry-run")
      has(out, "dry run of rate 10% -> 20% (nothing was changed)", "text")
      has(out, "instances in flight keep their version", "text")
      -- a window that ends before every decision: no subject
      local d = H.decode((env:ok("--set", "clock.advance_ms=" .. 2 * 86400000,
        "rollout", "kill", "checkout", "--dry-run", "--window", "1d",
        "--json")))
      assert.are.equal(0, d.subjects)
      for _, bad in ipairs {
        { "retire", "checkout", "--reason", "r", "--dry-run" },
        { "set", "checkout", "20%", "--window", "7d", "--reason", "r" },
        { "set", "checkout", "20%", "--dry-run", "--window", "week" },
      } do
        local code, _, err = env:run("rollout", table.unpack(bad))
        assert.are.equal(2, code, table.concat(bad, " "))
        has(err, bad[#bad] == "week" and "--window" or "dry", "stderr")
      end
      assert.are.equal(100000, get(env, "checkout").rate_ppm)
    end)
end)

-- ---------------------------------------------------------------------
describe("switchyard check --db", function()
  local env

  before_each(function()
    env = H.env { workflows = CV }
  end)

  after_each(function()
    H.rmdir(env.dir)
  end)

  -- `check` of a fixture: exit code, stderr; the database unchanged.
  local function check(name)
    local before = env:snapshot()
    local code, _, err = env:run("check", CV .. "/" .. name .. ".lua")
    assert.are.equal(before, env:snapshot(), "check changed the database")
    return code, err
  end

  it("names the closest flag when a node routes on one that is not there",
    function()
      env:ok("rollout", "set", "checkout", "5%", "--reason", "ramp")
      env:ok("rollout", "set", "payments", "5%", "--reason", "ramp")
      local code, err = check("typo")
      assert.are.equal(0, code, err)
      has(err, CV .. "/typo.lua:10: warning: step 'route': no flag " ..
        "'chekcout'; did you mean 'checkout'?", "check")
      -- the right name: no warning
      code, err = check("sticky")
      assert.are.equal(0, code, err)
      assert.is_nil(err:find("warning", 1, true), err)
    end)

  it("says when no flag is close, and when the flag is retired", function()
    env:ok("rollout", "set", "unrelated", "5%", "--reason", "ramp")
    local code, err = check("typo")
    assert.are.equal(0, code, err)
    has(err, "no flag 'chekcout' in this database: every instance goes " ..
      "to v1", "check")
    env:ok("rollout", "set", "checkout", "5%", "--reason", "ramp")
    env:ok("rollout", "retire", "checkout", "--reason", "done")
    code, err = check("sticky")
    assert.are.equal(0, code, err)
    has(err, "step 'route': flag 'checkout' is retired", "check")
  end)

  it("without a database there is nothing to check against, and none " ..
    "is made", function()
      local code, err = check("typo")
      assert.are.equal(0, code, err)
      assert.is_nil(err:find("warning", 1, true), err)
      assert.is_false(env:created())
    end)
end)

-- ---------------------------------------------------------------------
describe("a running engine", function()
  local env

  setup(function()
    env = H.env { workflows = CV }
  end)

  teardown(function()
    H.reap()
    H.rmdir(env.dir)
  end)

  -- Starts 100 instances of sticky from another process and waits
  -- (bounded) until the running engine has completed them all; returns
  -- their decisions as { version, reason, rate_ppm } rows.
  local batches = 0
  local function batch(p)
    batches = batches + 1
    local tag = "b" .. batches .. "-u{n}"
    env:ok("start", "sticky", "--count", "100", "--var", "user_id=" .. tag)
    local want = batches * 100
    local done, last = H.poll(30, 0.05, function()
      if H.exit_code(p) then
        error("the engine exited early:\n" .. (H.read(p.log) or ""))
      end
      local n = env:scalar("SELECT count(*) FROM instances " ..
        "WHERE state = 'completed'")
      return n == want and n or false
    end)
    assert(done, string.format("batch %d: not all completed in 30 s (%s)",
      batches, tostring(last)))
    return env:sql(string.format(
      "SELECT d.version, d.reason, d.rate_ppm, i.vars FROM cv_decisions d " ..
      "JOIN instances i ON i.id = d.instance_id " ..
      "WHERE d.subject LIKE 'b%d-u%%' ORDER BY d.instance_id", batches))
  end

  local function all(rows, version, reason, rate)
    assert.are.equal(100, #rows)
    for _, r in ipairs(rows) do
      assert.are.same({ version, reason, tostring(rate) },
        { r[1], r[2], r[3] })
      has(r[4], '"took":"' .. version .. '"', "vars")
    end
  end

  it("sees rate changes and the kill switch of other processes at once",
    function()
      env:ok("rollout", "set", "checkout", "0%", "--reason", "dark")
      local p = env:spawn("run")
      all(batch(p), "v1", "rollout", 0)
      env:ok("rollout", "set", "checkout", "100%", "--reason", "go")
      all(batch(p), "v2", "rollout", 1000000)
      env:ok("rollout", "kill", "checkout", "--reason", "stop")
      all(batch(p), "v1", "kill_switch", 1000000)
      env:ok("rollout", "unkill", "checkout", "--reason", "resume")
      all(batch(p), "v2", "rollout", 1000000)
      -- The engine never restarted, and stops cleanly on SIGTERM.
      assert.is_nil(H.exit_code(p))
      assert.are.equal(0, H.signal(p, "TERM"))
      local rc = H.wait_exit(p, 20)
      assert.are.equal(0, rc, "exit code after SIGTERM; log:\n" ..
        (H.read(p.log) or ""))
      -- The counters agree with what was decided.
      local g = get(env, "checkout")
      local by = {}
      for _, c in ipairs(g.counters) do
        by[c.version] = c
      end
      assert.are.equal(200, by.v1.routed)
      assert.are.equal(200, by.v1.completed)
      assert.are.equal(200, by.v2.routed)
      assert.are.equal(200, by.v2.completed)
      assert.are.equal(0, by.v1.in_flight + by.v2.in_flight)
    end)
end)
