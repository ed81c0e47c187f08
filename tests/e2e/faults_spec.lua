-- The fault harness (issue 6, items 6 and 7), on the fixture workflow
-- tests/fixtures/faults/routed.lua: a sticky 50% choose_version route, three
-- steps after it, deterministic retries and incidents, short sleeps.
--
--   * crash loop: ~3,000 instances, the engine killed with SIGKILL at 20
--     pseudo-random moments (fixed seed) and restarted each time, then run
--     until idle: every instance completed or in an incident, each step's
--     history exactly what an uninterrupted run writes, the per-version
--     counters equal to a recount, one sticky decision per instance, and a
--     sound database after every kill;
--   * two engines on one database: no step runs in both, SQLITE_BUSY never
--     surfaces, both stop cleanly; and when one is killed, the other takes
--     over its instances once their leases expire;
--   * an engine restarted as PID 1 of a PID namespace (a container), like
--     the one killed before it, takes the dead one's instances back at once.
--
-- Timing decides only *when* a kill lands; what is asserted is read from the
-- database (tests/fixtures/faults/lib/audit.lua) and the engines' logs.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local A = dofile(H.repo .. "/tests/fixtures/faults/lib/audit.lua")(H)
local C = dofile(H.repo .. "/tests/lua/counters.lua")

local FIXTURES = H.repo .. "/tests/fixtures/faults"

local function has_not(text, needle, what)
  assert(not text:find(needle, 1, true), string.format(
    "%s: found %q in:\n%s", what, needle, text))
end

local function routed_env()
  local env = H.env { workflows = FIXTURES }
  env:ok("rollout", "set", A.FLAG, "50%", "--reason", "fault harness")
  return env
end

local function start(env, first, count)
  local out
  if first == 1 then
    out = env:ok("start", "routed", "--count", tostring(count), "--var",
      "user_id=u{n}", "--var", "n:={n}")
  else
    -- {n} restarts at 1 in each command: number a later batch in a file.
    local lines = {}
    for n = first, first + count - 1 do
      lines[#lines + 1] = string.format('{"n":%d,"user_id":"u%d"}', n, n)
    end
    local file = env:path("batch" .. first .. ".jsonl")
    H.write(file, table.concat(lines, "\n") .. "\n")
    out = env:ok("start", "routed", "--from", file)
  end
  assert(out:find("started " .. count .. " instances", 1, true), out)
end

local function count(env, what)
  return env:scalar("select count(*) from " .. what)
end

local function summary(s)
  local st = s.states
  return string.format("completed %d, incident %d, running %d, waiting %d, "
    .. "ready %d; %d step runs; decisions v1 %d, v2 %d", st.completed or 0,
    st.incident or 0, st.running or 0, st.waiting or 0, st.ready or 0, s.runs,
    s.v1, s.v2)
end

-- "switchyard: 12 step runs, 3 instances completed, ..." of a run's log.
local function run_stats(log)
  local steps, completed = log:match("(%d+) step runs, (%d+) instances " ..
    "completed")
  return tonumber(steps), tonumber(completed)
end

-- Like env:spawn, but the engine runs as PID 1 of a new PID namespace, as
-- in a container: every restart gets the same pid. The handle's pid is
-- unshare's, which takes the engine down with it (--kill-child).
local in_ns = {}
local function spawn_pid1(env, ...)
  env.n = env.n + 1
  local base = env:path(string.format("ns%d", env.n))
  local p = { pidfile = base .. ".pid", log = base .. ".log",
              rcfile = base .. ".rc" }
  local words = {}
  for _, a in ipairs(env:argv(...)) do
    words[#words + 1] = H.q(a)
  end
  local inner = "sh -c 'echo $$ > \"$1\"; shift; exec \"$@\"' sh " ..
      H.q(p.pidfile) .. " unshare --pid --kill-child --mount-proc " ..
      H.q(H.bin) .. " " .. table.concat(words, " ")
  assert(H.exec("( " .. inner .. " </dev/null >" .. H.q(p.log) ..
    " 2>&1; echo $? > " .. H.q(p.rcfile .. ".tmp") .. "; mv " ..
    H.q(p.rcfile .. ".tmp") .. " " .. H.q(p.rcfile) ..
    " ) </dev/null >/dev/null 2>&1 &") == 0)
  p.pid = H.poll(10, 0.01, function()
    local t = H.read(p.pidfile)
    return t and tonumber(t:match("%d+"))
  end)
  assert(p.pid, "no pid")
  in_ns[#in_ns + 1] = p
  return p
end

describe("fault harness", function()
  after_each(function()
    for _, p in ipairs(in_ns) do
      if not H.exit_code(p) then
        H.signal(p, "KILL")
        H.wait_exit(p, 10)
      end
    end
    in_ns = {}
    H.reap()
  end)

  it("crash loop: 20 kills -9 at seeded moments, then run until idle",
    function()
      local N, KILLS = 3000, 20
      local t0 = H.now()
      local env = routed_env()
      start(env, 1, N)
      math.randomseed(6020)
      local versions = {}
      local mid_run = 0
      for k = 1, KILLS do
        -- Alternate the trigger: a delay after the start (start-up and
        -- recovery included), or a number of new step runs. The
        -- concurrency varies too: 8 keeps few in flight, 512 claims
        -- everything ready. (A delay at 512 would finish the run.)
        local delay = math.random(50, 400)
        local runs = math.random(100, 400)
        local conc = k % 2 == 1 and ({ 8, 16, 32 })[math.random(3)] or
            ({ 16, 64, 512 })[math.random(3)]
        local before = count(env, "step_runs")
        local p = env:spawn("run", "--concurrency", tostring(conc))
        local how
        if k % 2 == 1 then
          H.sleep(delay / 1000)
          how = string.format("after %d ms", delay)
        else
          H.poll(10, 0.005, function()
            return H.exit_code(p) or count(env, "step_runs") >= before + runs
          end)
          how = string.format("after %d step runs", runs)
        end
        H.signal(p, "KILL")
        local rc = H.wait_exit(p, 10)
        assert.are.equal(137, rc, "kill " .. k .. ": not killed by SIGKILL; "
          .. "log:\n" .. (H.read(p.log) or ""))
        local s = A.check(env, { versions = versions })
        local active = (s.states.running or 0) + (s.states.ready or 0) +
            (s.states.waiting or 0)
        if active > 0 then
          mid_run = mid_run + 1
        end
        print(string.format("# kill %2d %s, concurrency %d: %s", k, how, conc,
          summary(s)))
      end
      -- Most kills must have landed with work left, or the test proves little.
      assert.is_true(mid_run >= KILLS - 2, "only " .. mid_run .. " of " ..
        KILLS .. " kills landed with work left")

      local t1 = H.now()
      local p = env:spawn("run", "--until-idle")
      local rc = H.wait_exit(p, 60)
      local log = H.read(p.log) or ""
      assert.are.equal(0, rc, log)
      local s = A.check(env, { final = N, versions = versions })
      -- Each restart removed the row of the engine killed before it.
      assert.are.equal(0, count(env, "engines"))
      print(string.format("# final run --until-idle %.2f s; %s (whole test "
        .. "%.1f s)", H.now() - t1, summary(s), H.now() - t0))
      H.rmdir(env.dir)
    end)

  it("two engines on one database: no step runs in both, BUSY is handled",
    function()
      local N, BATCH = 2000, 500
      local t0 = H.now()
      local env = routed_env()
      -- Both engines up and registered before any work exists. A small
      -- concurrency each, so that neither claims everything at once and
      -- their transactions interleave all along the run.
      local a = env:spawn("run", "--concurrency", "32")
      local b = env:spawn("run", "--concurrency", "32")
      assert.is_truthy(H.poll(10, 0.02, function()
        return count(env, "engines") == 2
      end), "the engines never registered")
      -- A third process starts the work while both poll for it, in
      -- batches so that later ones contend with running engines.
      for first = 1, N, BATCH do
        start(env, first, BATCH)
      end
      local done = H.poll(60, 0.05, function()
        local s = env:states()
        return (s.completed or 0) + (s.incident or 0) == N
      end)
      assert.is_truthy(done, "not done in 60 s: " ..
        H.json.encode(env:states()))
      local t1 = H.now()
      H.signal(a, "TERM")
      H.signal(b, "TERM")
      local rca, rcb = H.wait_exit(a, 10), H.wait_exit(b, 10)
      local loga, logb = H.read(a.log) or "", H.read(b.log) or ""
      assert.are.equal(0, rca, loga)
      assert.are.equal(0, rcb, logb)
      for _, log in ipairs({ loga, logb }) do
        has_not(log, "database is locked", "engine log")
        has_not(log, "stopping:", "engine log")
        -- A fenced update: the engine ran a step it no longer held.
        has_not(log, "dropping instance", "engine log")
      end
      -- Both worked, and every step run either did is recorded: together
      -- they ran exactly the recorded ones, none of them twice.
      local sa, sb = run_stats(loga), run_stats(logb)
      assert.is_true(sa > 0 and sb > 0, "one engine did nothing:\n" .. loga
        .. logb)
      local s = A.check(env, { final = N })
      assert.are.equal(s.runs, sa + sb)
      assert.are.equal(0, env:scalar(A.OVERLAPS))
      assert.are.equal(0, count(env, "engines"))
      assert.are.equal(0, count(env, "instances where owner is not null"))
      print(string.format("# two engines: %d + %d step runs, done in %.2f s, "
        .. "stopped in %.2f s; %s", sa, sb, t1 - t0, H.now() - t1, summary(s)))
      H.rmdir(env.dir)
    end)

  it("two engines, one killed -9 mid-run: the other takes its instances over",
    function()
      local N = 2000
      local t0 = H.now()
      local env = routed_env()
      start(env, 1, N)
      -- Small concurrencies keep the run long enough to kill one mid-way.
      local a = env:spawn("run", "--concurrency", "32")
      local b = env:spawn("run", "--concurrency", "32")
      local ids = H.poll(20, 0.01, function()
        local rows = env:sql("select e.id, e.pid, (select count(*) from " ..
          "instances i where i.owner = e.id) from engines e")
        if #rows == 2 and tonumber(rows[1][3]) > 0 and
            tonumber(rows[2][3]) > 0 and
            count(env, "instances where state = 'completed'") >= 200 then
          return rows
        end
      end)
      assert.is_truthy(ids, "both engines never held instances at once")
      local victim_id
      for _, r in ipairs(ids) do
        if tonumber(r[2]) == a.pid then
          victim_id = r[1]
        end
      end
      assert.is_truthy(victim_id, "no engine row of pid " .. a.pid)
      H.signal(a, "KILL")
      assert.are.equal(137, H.wait_exit(a, 10))
      local t_kill = H.now()
      local held = count(env, "instances where owner = '" .. victim_id .. "'")
      local s_kill = A.check(env, { snapshot = true })
      print(string.format("# killed engine %s holding %d instances after "
        .. "%.2f s: %s", victim_id, held, t_kill - t0, summary(s_kill)))
      assert.is_true(held > 0)

      -- Leases last 30 s; the survivor claims them when they expire.
      local taken = H.poll(60, 0.1, function()
        return count(env, "instances where owner = '" .. victim_id .. "'")
            == 0
      end)
      assert.is_truthy(taken, "the survivor never took the dead engine's "
        .. "instances over")
      local t_taken = H.now()
      local done = H.poll(60, 0.05, function()
        local s = env:states()
        return (s.completed or 0) + (s.incident or 0) == N
      end)
      assert.is_truthy(done, "not done: " .. H.json.encode(env:states()))
      H.signal(b, "TERM")
      local rcb = H.wait_exit(b, 10)
      local logb = H.read(b.log) or ""
      assert.are.equal(0, rcb, logb)
      has_not(logb, "database is locked", "survivor log")
      has_not(logb, "dropping instance", "survivor log")
      local s = A.check(env, { final = N })
      assert.are.equal(0, env:scalar(A.OVERLAPS))
      -- The dead engine's row stays until an engine starts on this host.
      assert.are.equal(1, count(env, "engines"))
      print(string.format("# takeover %.1f s after the kill, all done %.1f s "
        .. "after it; %s", t_taken - t_kill, H.now() - t_kill, summary(s)))
      H.rmdir(env.dir)
    end)

  it("an engine restarted with the dead one's pid (PID 1 in a container) "
    .. "takes its instances back at once", function()
      if H.exec("unshare --pid --kill-child --mount-proc true " ..
        ">/dev/null 2>&1") ~= 0 then
        pending("cannot create a PID namespace here")
        return
      end
      local N = 300
      local env = routed_env()
      start(env, 1, N)
      local a = spawn_pid1(env, "run", "--concurrency", "16")
      assert.is_truthy(H.poll(20, 0.01, function()
        return count(env, "instances where state = 'completed'") >= 50 and
            count(env, "instances where owner is not null") > 0
      end), "no progress: " .. (H.read(a.log) or ""))
      H.signal(a, "KILL")
      assert.are.equal(137, H.wait_exit(a, 10))
      assert.are.equal(1, env:scalar("select pid from engines"))
      local held = count(env, "instances where owner is not null")
      assert.is_true(held > 0)
      -- The restart, also PID 1: the dead engine's row names a live pid.
      local t0 = H.now()
      local b = spawn_pid1(env, "run", "--until-idle")
      local rc = H.wait_exit(b, 60)
      local took = H.now() - t0
      assert.are.equal(0, rc, H.read(b.log))
      local s = A.check(env, { final = N })
      local left = count(env, "engines")
      print(string.format("# restart as PID 1 with %d instances held by the "
        .. "dead PID 1: done in %.1f s; engines rows left: %d; %s", held,
        took, left, summary(s)))
      -- Checked last (known bug): reap_dead takes a live pid for a live
      -- engine, and here that pid is the restarted engine itself, so the
      -- instances wait for their 30 s leases and the row stays forever.
      assert.is_true(took < 10, string.format("the restart took %.1f s: it "
        .. "waited for the dead engine's leases", took))
      assert.are.equal(0, left, "the dead engine's row was never removed")
      H.rmdir(env.dir)
    end)
end)

-- choose_version writes a fresh instance's decision and its outcome
-- without waiting for the server: the decision's row is written whatever
-- is there, and the outcome's update is checked with its answer (on
-- PostgreSQL, where writes are queued; at once on SQLite). Rows changed
-- by another hand meanwhile: the engine stops, having kept nothing of the
-- turn, or its own decision stands.
describe("a fresh instance's decision changed behind the engine", function()
  local env, plugins

  before_each(function()
    env = H.env { workflows = H.repo .. "/tests/fixtures/deferred" }
    -- the shipped plugins and the test plugin, in one directory
    plugins = env.dir .. "/plugins"
    assert.are.equal(0, H.exec("mkdir -p " .. H.q(plugins) .. " && ln -s " ..
      H.q(assert(os.getenv("SY_BUILD_DIR")) .. "/plugins") .. "/*.so " ..
      H.q(assert(os.getenv("SY_TEST_PLUGINS"))) .. "/*.so " .. H.q(plugins)))
    env:ok("rollout", "set", "dd", "50%", "--reason", "deferred checks")
  end)

  after_each(function()
    H.reap()
    H.rmdir(env.dir)
  end)

  it("gone before the instance ends: the turn that ends it fails", function()
    env:ok("--plugins", plugins, "start", "decided", "--var", "user_id=u1")
    local p = env:spawn("--plugins", plugins, "run")
    -- the decision is committed; the instance waits 3 s in memory
    assert.is_truthy(H.poll(20, 0.02, function()
      return env:scalar("SELECT count(*) FROM cv_decisions") == 1
    end), H.read(p.log))
    env:sql("DELETE FROM cv_decisions")
    local rc = H.wait_exit(p, 30)
    local log = H.read(p.log)
    assert.are_not.equal(0, rc, log)
    assert(log:find("is not where it was recorded", 1, true) or
      log:find("a write changed 0 rows where 1 were expected (UPDATE " ..
        "cv_decisions", 1, true), log)
    -- its end was not kept
    assert.are.equal(0, env:scalar(
      "SELECT count(*) FROM instances WHERE state = 'completed'"))
  end)

  it("there before a fresh instance decides: its own decision replaces it", function()
    env:ok("--plugins", plugins, "start", "decided", "--var", "user_id=u1")
    local id = env:scalar("SELECT max(id) FROM instances")
    env:sql("INSERT INTO cv_decisions(instance_id, flag, workflow, step, " ..
      "subject, version, reason, rate_ppm, decided_at, incidents) VALUES(" ..
      id .. ", 'dd', 'decided', 'route', 'u1', 'v2', 'allow', 0, 1, 7)")
    env:ok("--plugins", plugins, "run", "--until-idle")
    -- no engine ran it before: the row was nobody's decision
    local row = env:sql("SELECT version, reason, incidents, outcome FROM " ..
      "cv_decisions")
    assert.are.equal(1, #row)
    assert.are.same({ "rollout", "0", "completed" },
      { row[1][2], row[1][3], row[1][4] })
    assert.are.same({ { "completed", row[1][1] == "v1" and "a" or "b" } },
      env:sql("SELECT i.state, r.step FROM instances i JOIN step_runs r ON " ..
        "r.instance_id = i.id AND r.step IN ('a', 'b')"))
    assert.are.same(env:sql(C.RECOUNT), env:sql(C.COUNTERS))
  end)
end)
