-- The engine on PostgreSQL (--db postgresql://...): a throwaway cluster of
-- the test's own (tests/pg/cluster.sh: a temporary data directory, a Unix
-- socket in it, no TCP port), stopped at the end whatever happened; each
-- test on a database of its own. What is asserted is what the SQLite
-- tests assert, read with psql: every instance completed or in an
-- incident, each step run exactly once across kills, counters equal to a
-- recount, and each subject routed to the version SQLite gives it.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local A = dofile(H.repo .. "/tests/fixtures/faults/lib/audit.lua")(H)

local CLUSTER = H.repo .. "/tests/pg/cluster.sh"
local FAULTS = H.repo .. "/tests/fixtures/faults"
local HANDLERS = H.repo .. "/tests/fixtures/handlers"
local WAITING = H.repo .. "/tests/fixtures/waiting"

local function has(haystack, needle, what)
  assert(haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, haystack))
end

local cluster_dir, base_url
local ndb = 0

local psql = H.psql

local function scalar(url, query)
  local rows, out = psql(url, query)
  assert(rows[1], "no row from: " .. query .. "\n" .. out)
  return tonumber(rows[1][1]) or rows[1][1]
end

-- A test environment whose database is a new one of the cluster.
local function pg_env(opts)
  ndb = ndb + 1
  local name = "t" .. ndb
  local _, out = psql(base_url, "CREATE DATABASE " .. name)
  local env = H.env(opts)
  env.db = base_url:gsub("/switchyard%?", "/" .. name .. "?")
  env.url = env.db
  assert(scalar(env.url, "SELECT 1") == 1, out)
  return env
end

local function states(url)
  local t = {}
  for _, r in ipairs(psql(url, "SELECT state, count(*) FROM instances " ..
    "GROUP BY state")) do
    t[r[1]] = tonumber(r[2])
  end
  return t
end

local function start_routed(env, n)
  env:ok("rollout", "set", A.FLAG, "50%", "--reason", "postgres test")
  local out = env:ok("start", "routed", "--count", tostring(n), "--var",
    "user_id=u{n}", "--var", "n:={n}")
  has(out, "started " .. n .. " instances")
end

-- Each subject with its version, as one text: two runs compare equal
-- when every subject went to the same version.
local function versions(rows)
  local t = {}
  for _, r in ipairs(rows) do
    t[#t + 1] = r[1] .. "=" .. r[2]
  end
  table.sort(t)
  return table.concat(t, " ")
end

-- The checks of a finished routed run of n instances.
local function check_routed(url, n)
  local st = states(url)
  local permanent = 0
  for k = 1, n do
    permanent = permanent + (A.permanent(k) and 1 or 0)
  end
  assert.are.equal(n - permanent, st.completed or 0)
  assert.are.equal(permanent, st.incident or 0)
  -- every step run exactly once, across every kill
  assert.are.equal(A.expected_runs(n),
    scalar(url, "SELECT count(*) FROM step_runs"))
  -- every instance's vars carry the step counts its steps wrote
  assert.are.equal(0, scalar(url, "SELECT count(*) FROM instances WHERE " ..
    "vars NOT LIKE '%1%'"))
  assert.are.equal(n, scalar(url, "SELECT count(DISTINCT instance_id) " ..
    "FROM cv_decisions"))
  assert.are.equal(n, scalar(url, "SELECT count(*) FROM cv_decisions"))
  assert.are.equal(A.rows_text(psql(url, A.RECOUNT)),
    A.rows_text(psql(url, A.COUNTERS)))
  assert.are.equal(A.rows_text(psql(url, A.RAMP_RECOUNT)),
    A.rows_text(psql(url, A.RAMP_TALLIES)))
  -- and the counts by state, summed over every connection's shard
  assert.are.equal(
    A.rows_text(psql(url, "SELECT workflow, state, count(*) FROM instances " ..
      "GROUP BY 1, 2 ORDER BY 1, 2")),
    A.rows_text(psql(url, "SELECT workflow, state, sum(n) FROM " ..
      "instance_counts GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2")))
end

-- A database of its own and an engine holding 20 instances whose step
-- runs about three seconds (tests/fixtures/pg/busy.lua): the test's
-- environment and the engine's handle, once it holds them all.
local function busy_engine()
  local env = pg_env({ workflows = H.repo .. "/tests/fixtures/pg" })
  env:ok("start", "busy", "--count", "20")
  local p = env:spawn("run")
  assert(H.poll(30, 0.01, function()
    return scalar(env.url, "SELECT count(*) FROM instances WHERE " ..
      "state = 'running'") == 20
  end), "the engine never held them all: " .. (H.read(p.log) or ""))
  return env, p
end

describe("on PostgreSQL", function()
  setup(function()
    cluster_dir = H.tmpdir()
    local out = H.capture(H.q(CLUSTER) .. " start " .. H.q(cluster_dir) ..
      " 2>&1")
    base_url = out:match("(postgresql://%S+)")
    assert(base_url, "the cluster did not start:\n" .. out)
  end)

  teardown(function()
    H.reap()
    if cluster_dir then
      H.exec(H.q(CLUSTER) .. " stop " .. H.q(cluster_dir) ..
        " >/dev/null 2>&1")
      H.rmdir(cluster_dir)
    end
  end)

  after_each(function()
    H.reap()
  end)

  it("runs instances to their end, with their history", function()
    local env = pg_env({ workflows = H.workflows })
    env:ok("start", "hello", "--count", "50", "--var", "user_id=u{n}")
    env:ok("run", "--until-idle")
    assert.are.same({ completed = 50 }, states(env.url))
    local inst = H.decode((env:ok("--json", "show", "1")))
    assert.are.equal("completed", inst.state)
    assert.are.equal(3, #inst.history)
    assert.are.equal("hi u1", inst.vars.greeting)
    has(env:ok("instances", "--state", "completed", "--limit", "0"),
      "hello", "instances")
    H.rmdir(env.dir)
  end)

  it("routes each subject to the version SQLite gives it, and reports the " ..
    "same numbers", function()
      local N = 600
      local pg = pg_env({ workflows = FAULTS })
      local lite = H.env({ workflows = FAULTS })
      for _, env in ipairs({ pg, lite }) do
        start_routed(env, N)
        env:ok("run", "--until-idle")
      end
      check_routed(pg.url, N)
      local q = "SELECT subject, version FROM cv_decisions"
      assert.are.equal(versions(lite:sql(q)), versions(psql(pg.url, q)))
      local a = H.decode((pg:ok("report", A.FLAG, "--json")))
      local b = H.decode((lite:ok("report", A.FLAG, "--json")))
      for _, v in ipairs({ "v1", "v2" }) do
        for _, k in ipairs({ "routed", "completed", "in_flight", "cancelled",
          "instances_with_incidents", "incidents", "caught_errors" }) do
          assert.are.equal(b.versions[v][k], a.versions[v][k], v .. "." .. k)
        end
      end
      assert.are.equal(b.comparison.verdict, a.comparison.verdict)
      H.rmdir(pg.dir)
      H.rmdir(lite.dir)
    end)

  it("loses nothing and runs nothing twice across kills -9", function()
    local N, KILLS = 2000, 6
    local env = pg_env({ workflows = FAULTS })
    start_routed(env, N)
    math.randomseed(1515)
    for k = 1, KILLS do
      -- killed after a number of new step runs, or once done
      local runs = math.random(200, 800)
      local before = scalar(env.url, "SELECT count(*) FROM step_runs")
      local p = env:spawn("run", "--concurrency",
        tostring(({ 16, 64, 512 })[math.random(3)]))
      H.poll(30, 0.01, function()
        return H.exit_code(p) or scalar(env.url, "SELECT count(*) FROM " ..
          "step_runs") >= before + runs
      end)
      H.signal(p, "KILL")
      assert.are.equal(137, H.wait_exit(p, 10), H.read(p.log) or "")
      -- a sound database after each kill: one decision per instance
      assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM (SELECT " ..
        "instance_id FROM cv_decisions GROUP BY instance_id " ..
        "HAVING count(*) > 1) x"))
    end
    local p = env:spawn("run", "--until-idle")
    assert.are.equal(0, H.wait_exit(p, 120), H.read(p.log) or "")
    check_routed(env.url, N)
    -- each restart removed the row of the engine killed before it
    assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM engines"))
    H.rmdir(env.dir)
  end)

  it("keeps each connection's counts apart, and folds those of connections " ..
    "that are gone", function()
      local env = pg_env({ workflows = H.workflows })
      env:ok("start", "hello", "--count", "30", "--var", "user_id=u{n}")
      env:ok("start", "hello", "--count", "20", "--var", "user_id=v{n}")
      -- two commands, two connections: their own shards, both gone now
      local shards = psql(env.url, "SELECT DISTINCT shard FROM " ..
        "instance_counts WHERE shard <> 0 ORDER BY 1")
      assert.are.equal(2, #shards)
      assert.are.equal(50, H.decode((env:ok("--json", "status"))).hello.ready)
      -- an engine's start folds them into shard 0
      env:ok("run", "--until-idle")
      for _, s in ipairs(shards) do
        assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM " ..
          "instance_counts WHERE shard = " .. s[1]))
      end
      assert.are.equal(50, scalar(env.url, "SELECT n FROM instance_counts " ..
        "WHERE shard = 0 AND state = 'ready'"))
      env:assert_intact("after the fold")
      assert.are.equal(50, H.decode((env:ok("--json", "status"))).hello.completed)
      H.rmdir(env.dir)
    end)

  it("holds a waiting process: a signal, and an error handler", function()
    local env = pg_env({ workflows = H.workflows })
    local id = tonumber((env:ok("start", WAITING .. "/review.lua", "--var",
      "case=c1")):match("%d+"))
    env:ok("run", "--until-idle")
    assert.are.same({ waiting = 1 }, states(env.url))
    env:ok("signal", "reviewed", "--where", "case=c1", "--var", "by=ann",
      "--var", "verdict=approved")
    local h = tonumber((env:ok("start", HANDLERS .. "/handled.lua", "--var",
      "case=rejected", "--var", "user=bo")):match("%d+"))
    env:ok("run", "--until-idle")
    local inst = H.decode((env:ok("--json", "show", tostring(id))))
    assert.are.equal("completed", inst.state)
    assert.are.equal("approved", inst.vars.verdict)
    inst = H.decode((env:ok("--json", "show", tostring(h))))
    assert.are.equal("completed", inst.state)
    assert.are.equal("document_rejected", inst.vars.handled.code)
    H.rmdir(env.dir)
  end)

  it("db copy moves a SQLite database with work in flight to PostgreSQL, " ..
    "which then reports what SQLite does", function()
      local lite = H.env({ workflows = FAULTS })
      -- a ramp history, incidents, and instances not started yet
      lite:ok("rollout", "set", A.FLAG, "20%", "--reason", "first step")
      lite:ok("start", "routed", "--count", "300", "--var", "user_id=u{n}",
        "--var", "n:={n}")
      lite:ok("run", "--until-idle")
      lite:ok("rollout", "set", A.FLAG, "60%", "--reason", "second step")
      local batch = lite:path("batch.jsonl")
      local lines = {}
      for n = 301, 500 do
        lines[#lines + 1] = string.format('{"n":%d,"user_id":"u%d"}', n, n)
      end
      H.write(batch, table.concat(lines, "\n") .. "\n")
      lite:ok("start", "routed", "--from", batch)
      assert.is_true(#lite:sql("SELECT 1 FROM incidents") > 0)
      local pg = pg_env({ workflows = FAULTS })
      local out = pg:ok("db", "copy", lite.db, pg.url)
      has(out, "instances                         500          500  ok", "copy")
      has(out, "the counts of every table equal", "copy")
      -- a second copy into the same database is refused, changing nothing
      local code, _, err = pg:run("db", "copy", lite.db, pg.url)
      assert.are.equal(2, code)
      has(err, "the destination is not empty", "stderr")
      assert.are.equal(500, scalar(pg.url, "SELECT count(*) FROM instances"))
      -- both run the rest; their reports agree
      lite:ok("run", "--until-idle")
      pg:ok("run", "--until-idle")
      check_routed(pg.url, 500)
      local a = H.decode((lite:ok("report", A.FLAG, "--json")))
      local b = H.decode((pg:ok("report", A.FLAG, "--json")))
      for _, v in ipairs({ "v1", "v2" }) do
        for _, k in ipairs({ "routed", "completed", "in_flight",
          "instances_with_incidents", "incidents" }) do
          assert.are.equal(a.versions[v][k], b.versions[v][k], v .. "." .. k)
        end
      end
      assert.are.equal(#a.ramp_steps, #b.ramp_steps)
      for i, r in ipairs(a.ramp_steps) do
        assert.are.same(r.v1, b.ramp_steps[i].v1)
        assert.are.same(r.v2, b.ramp_steps[i].v2)
      end
      -- new instances go on from the copied ids
      assert.are.equal("501\n", (pg:ok("start", "routed", "--var",
        "user_id=x", "--var", "n:=1")))
      -- and back: PostgreSQL to a new SQLite file
      local back = lite:path("back.db")
      has(pg:ok("db", "copy", pg.url, back), "counts of every table equal",
        "copy back")
      H.rmdir(lite.dir)
      H.rmdir(pg.dir)
    end)

  it("db copy refuses a source an engine is running on", function()
    local env = pg_env({ workflows = FAULTS })
    start_routed(env, 3000)
    local p = env:spawn("run", "--concurrency", "8")
    assert(H.poll(30, 0.01, function()
      return scalar(env.url, "SELECT count(*) FROM instances WHERE " ..
        "state = 'running'") > 0
    end), "the engine never claimed")
    local dest = env:path("copy.db")
    local code, _, err = env:run("db", "copy", env.url, dest)
    assert.are.equal(2, code)
    has(err, "an engine holds", "stderr")
    H.signal(p, "KILL")
    H.wait_exit(p, 10)
    H.rmdir(env.dir)
  end)

  it("an engine whose host clock is ten minutes ahead steals no live lease",
    function()
      local env, a = busy_engine()
      -- the second looks for expired leases once a second, while the
      -- first engine's steps run for about three
      local b = env:spawn("--set", "clock.skew_ms=600000", "run")
      assert(H.poll(30, 0.02, function()
        return scalar(env.url, "SELECT count(*) FROM instances WHERE " ..
          "state = 'completed'") == 20
      end), "not done: " .. (H.read(a.log) or ""))
      H.signal(a, "TERM")
      H.signal(b, "TERM")
      assert.are.equal(0, H.wait_exit(a, 10))
      assert.are.equal(0, H.wait_exit(b, 10))
      local la, lb = H.read(a.log), H.read(b.log)
      assert.is_nil(la:find("dropping instance", 1, true), la)
      has(la, "20 step runs, 20 instances completed", "first engine")
      has(lb, "0 step runs", "the engine with the wrong clock")
      assert.are.equal(20, scalar(env.url, "SELECT count(*) FROM step_runs"))
      H.rmdir(env.dir)
    end)

  it("a lost connection: the engine reconnects, and what it held runs " ..
    "again as after a crash, once", function()
      local N = 2000
      local env = pg_env({ workflows = FAULTS })
      start_routed(env, N)
      local p = env:spawn("run", "--until-idle")
      assert(H.poll(30, 0.01, function()
        return H.exit_code(p) or scalar(env.url, "SELECT count(*) FROM " ..
          "step_runs") >= 1000
      end))
      assert.is_nil(H.exit_code(p), "done before the cut")
      -- the server ends the engine's connection (a restart, a failover)
      assert.are.equal("t", scalar(env.url, "SELECT bool_and(" ..
        "pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = " ..
        "current_database() AND pid <> pg_backend_pid()"))
      assert.are.equal(0, H.wait_exit(p, 120), H.read(p.log) or "")
      local log = H.read(p.log)
      has(log, "lost the database connection", "run's log")
      has(log, "reconnected", "run's log")
      check_routed(env.url, N)
      H.rmdir(env.dir)
    end)

  it("a rate set by another process reaches the next decision after its " ..
    "commit", function()
      local env = pg_env({ workflows = FAULTS })
      env:ok("rollout", "set", A.FLAG, "0%", "--reason", "all on v1")
      env:ok("start", "routed", "--count", "3000", "--var", "user_id=u{n}",
        "--var", "n:={n}")
      local p = env:spawn("run", "--concurrency", "16")
      assert(H.poll(30, 0.01, function()
        return scalar(env.url, "SELECT count(*) FROM cv_decisions") >= 200
      end), "no decisions")
      env:ok("rollout", "set", A.FLAG, "100%", "--reason", "all on v2")
      local change = psql(env.url, "SELECT id, at FROM cv_audit WHERE " ..
        "new_value = '100%'")[1]
      assert(H.poll(30, 0.01, function()
        return scalar(env.url, "SELECT count(*) FROM cv_decisions WHERE " ..
          "decided_at > " .. change[2]) >= 200
      end), "no decisions after the change")
      H.signal(p, "TERM")
      assert.are.equal(0, H.wait_exit(p, 20))
      -- Decided after the commit (50 ms for the two processes' clocks,
      -- both set by the server's): the new rate, the new ramp step.
      local late = psql(env.url, "SELECT count(*), sum(CASE WHEN rate_ppm " ..
        "= 1000000 AND ramp_id = " .. change[1] .. " AND version = 'v2' " ..
        "THEN 1 ELSE 0 END) FROM cv_decisions WHERE decided_at > " ..
        (tonumber(change[2]) + 50))[1]
      assert.is_true(tonumber(late[1]) > 0)
      assert.are.equal(late[1], late[2])
      assert.is_true(scalar(env.url, "SELECT count(*) FROM cv_decisions " ..
        "WHERE rate_ppm = 0 AND version = 'v1'") >= 200)
      H.rmdir(env.dir)
    end)

  -- Another session holding a transaction open in the background (psql,
  -- named by application_name), ended by the server when released.
  local function hold(env, name, sql)
    local url = env.url .. "&application_name=" .. name
    assert(H.exec("psql -X -q " .. H.q(url) .. " -c " ..
      H.q("BEGIN; " .. sql .. "; SELECT pg_sleep(600)") ..
      " >/dev/null 2>&1 &") == 0)
    assert(H.poll(30, 0.02, function()
      return scalar(env.url, "SELECT count(*) FROM pg_stat_activity WHERE " ..
        "application_name = '" .. name .. "' AND wait_event = 'PgSleep'") == 1
    end), name .. " never held its locks")
    return function()
      psql(env.url, "SELECT pg_terminate_backend(pid) FROM " ..
        "pg_stat_activity WHERE application_name = '" .. name .. "'")
    end
  end

  it("an engine claims past the rows another transaction has locked, and " ..
    "takes them once they are let go", function()
      local env = pg_env({ workflows = H.workflows })
      env:ok("start", "hello", "--count", "50", "--var", "user_id=u{n}")
      local release = hold(env, "rowlocks",
        "SELECT id FROM instances WHERE id <= 10 FOR UPDATE")
      finally(release)
      local p = env:spawn("run")
      assert(H.poll(60, 0.02, function()
        return states(env.url).completed == 40
      end), "the engine did not pass over the locked rows: " ..
        H.json.encode(states(env.url)) .. "\n" .. (H.read(p.log) or ""))
      assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM instances " ..
        "WHERE id <= 10 AND state <> 'ready'"))
      release()
      assert(H.poll(60, 0.02, function()
        return states(env.url).completed == 50
      end), "the let-go rows were never taken")
      H.signal(p, "TERM")
      assert.are.equal(0, H.wait_exit(p, 20), H.read(p.log) or "")
      assert.are.equal(150, scalar(env.url, "SELECT count(*) FROM step_runs"))
      H.rmdir(env.dir)
    end)

  it("engines' turns run beside each other, a command's alone", function()
    local env = pg_env({ workflows = FAULTS })
    start_routed(env, 200)
    -- another engine's turn, held open
    local release = hold(env, "turn",
      "SELECT pg_advisory_xact_lock_shared(7275627973776974)")
    finally(release)
    env:ok("run", "--until-idle")
    check_routed(env.url, 200)
    -- a command waits for it (5 s, the busy timeout), then gives up,
    -- changing nothing
    local code, _, err = env:run("rollout", "set", A.FLAG, "80%", "--reason",
      "waits for the turn")
    assert.are.equal(1, code, err)
    has(err, "database is locked", "stderr")
    assert.are.equal(500000, scalar(env.url, "SELECT rate_ppm FROM cv_flags " ..
      "WHERE name = '" .. A.FLAG .. "'"))
    release()
    env:ok("rollout", "set", A.FLAG, "80%", "--reason", "the turn ended")
    assert.are.equal(800000, scalar(env.url, "SELECT rate_ppm FROM cv_flags " ..
      "WHERE name = '" .. A.FLAG .. "'"))
    H.rmdir(env.dir)
  end)

  it("an idle engine hears of new work at once, without looking", function()
    local env = pg_env({ workflows = H.workflows })
    -- its periodic look an hour apart: only an announcement wakes it
    local p = env:spawn("--set", "engine.poll_ms=3600000", "run")
    assert(H.poll(30, 0.02, function()
      -- registered, so listening (it listens before it registers)
      return scalar(env.url, "SELECT count(*) FROM engines") == 1
    end), "the engine never started: " .. (H.read(p.log) or ""))
    env:ok("start", "hello", "--count", "5", "--var", "user_id=u{n}")
    assert(H.poll(60, 0.02, function()
      return states(env.url).completed == 5
    end), "the engine slept through the announcement: " ..
      H.json.encode(states(env.url)))
    H.signal(p, "TERM")
    assert.are.equal(0, H.wait_exit(p, 20), H.read(p.log) or "")
    H.rmdir(env.dir)
  end)

  it("a write the turn did not wait for fails the turn: nothing of it " ..
    "is committed", function()
      local env = pg_env({ workflows = H.workflows })
      env:ok("start", "hello", "--count", "50", "--var", "user_id=u{n}")
      -- the server refuses one step run's row; the engine sends those
      -- rows without waiting for their answers
      psql(env.url, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE " ..
        "plpgsql AS $$ BEGIN IF NEW.instance_id = 7 THEN RAISE EXCEPTION " ..
        "'refused by a trigger'; END IF; RETURN NEW; END $$; " ..
        "CREATE TRIGGER refuse BEFORE INSERT ON step_runs FOR EACH ROW " ..
        "EXECUTE FUNCTION refuse()")
      local code, _, err = env:run("run", "--until-idle")
      assert.are_not.equal(0, code)
      has(err, "refused by a trigger", "stderr")
      assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM step_runs " ..
        "WHERE instance_id = 7"))
      assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM instances " ..
        "WHERE id = 7 AND state = 'completed'"))
      -- what was committed is whole: each completed instance has its runs
      assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM instances i " ..
        "WHERE state = 'completed' AND (SELECT count(*) FROM step_runs r " ..
        "WHERE r.instance_id = i.id) <> 3"))
      env:assert_intact("after the failed turn")
      psql(env.url, "DROP TRIGGER refuse ON step_runs")
      env:ok("run", "--until-idle")
      assert.are.same({ completed = 50 }, states(env.url))
      assert.are.equal(150, scalar(env.url, "SELECT count(*) FROM step_runs"))
      H.rmdir(env.dir)
    end)

  it("an engine whose instance was taken from it records nothing of it",
    function()
      local env, p = busy_engine()
      -- while its steps run (about three seconds), another owner takes
      -- instance 5, with a lease of an hour
      psql(env.url, "UPDATE instances SET owner = 'another', lease_until = " ..
        "(extract(epoch FROM now()) * 1000)::bigint + 3600000 WHERE id = 5")
      assert(H.poll(60, 0.02, function()
        return states(env.url).completed == 19
      end), "not done: " .. H.json.encode(states(env.url)) .. "\n" ..
        (H.read(p.log) or ""))
      H.signal(p, "TERM")
      assert.are.equal(0, H.wait_exit(p, 20), H.read(p.log) or "")
      has(H.read(p.log), "instance 5 is no longer held", "run's log")
      assert.are.equal(19, scalar(env.url, "SELECT count(*) FROM step_runs"))
      assert.are.equal(0, scalar(env.url, "SELECT count(*) FROM step_runs " ..
        "WHERE instance_id = 5"))
      local row = psql(env.url, "SELECT state, owner FROM instances " ..
        "WHERE id = 5")[1]
      assert.are.same({ "running", "another" }, row)
      -- its fenced-out update did not move the counts either
      env:assert_intact("after the lost instance")
      H.rmdir(env.dir)
    end)

  -- Three hosts: three network namespaces, each with a host name of its
  -- own and a veth pair to the namespace where a second cluster listens on
  -- TCP (private addresses only). Root only (ip netns).
  it("three engines on three hosts over TCP, one killed -9: every instance " ..
    "once, each subject on SQLite's version", function()
      if not H.capture("id -u"):match("^0") then
        pending("needs root: ip netns")
        return
      end
      -- names unique to this run (a shell's pid), within 15 characters
      local N = 20000
      local tag = string.format("%05d", tonumber(H.capture("echo $$")) % 100000)
      local nets, cleanup = {}, {}
      finally(function()
        for i = #cleanup, 1, -1 do
          H.exec(cleanup[i] .. " >/dev/null 2>&1")
        end
      end)
      local function sh(cmd)
        local out = H.capture(cmd .. " 2>&1; echo rc=$?")
        assert(out:match("rc=0%s*$"), cmd .. ":\n" .. out)
      end
      for k = 1, 3 do
        local n = { ns = "sy" .. tag .. "h" .. k, hv = "sy" .. tag .. "v" .. k,
                    nv = "sy" .. tag .. "n" .. k,
                    server = "10.231." .. k .. ".1",
                    me = "10.231." .. k .. ".2" }
        nets[k] = n
        sh("ip netns add " .. n.ns)
        cleanup[#cleanup + 1] = "ip netns del " .. n.ns
        sh("ip link add " .. n.hv .. " type veth peer name " .. n.nv)
        cleanup[#cleanup + 1] = "ip link del " .. n.hv
        sh("ip link set " .. n.nv .. " netns " .. n.ns)
        sh("ip addr add " .. n.server .. "/24 dev " .. n.hv)
        sh("ip link set " .. n.hv .. " up")
        sh("ip netns exec " .. n.ns .. " ip addr add " .. n.me .. "/24 dev " ..
          n.nv)
        sh("ip netns exec " .. n.ns .. " ip link set " .. n.nv .. " up")
        sh("ip netns exec " .. n.ns .. " ip link set lo up")
      end
      local dir = H.tmpdir()
      local out = H.capture(H.q(CLUSTER) .. " start " .. H.q(dir) .. " " ..
        nets[1].server .. "," .. nets[2].server .. "," .. nets[3].server ..
        " 2>&1")
      cleanup[#cleanup + 1] = H.q(CLUSTER) .. " stop " .. H.q(dir) ..
          "; rm -rf " .. H.q(dir)
      local socket_url = assert(out:match("(postgresql://%S+)"), out)
      psql(socket_url, "CREATE DATABASE hosts")
      local env = H.env({ workflows = FAULTS })
      env.db = socket_url:gsub("/switchyard%?", "/hosts?")
      env.url = env.db
      start_routed(env, N)
      local engines = {}
      for k = 1, 3 do
        engines[k] = env:spawn_in({ "ip", "netns", "exec", nets[k].ns,
          "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
          "host" .. k }, "--db",
          "postgresql://postgres@" .. nets[k].server .. "/hosts", "run")
      end
      -- all three at work, then one killed mid-run
      assert(H.poll(60, 0.05, function()
        return scalar(env.url, "SELECT count(*) FROM engines") == 3 and
            scalar(env.url, "SELECT count(*) FROM step_runs") >= 20000
      end), "the engines did not get going:\n" .. (H.read(engines[2].log)
        or ""))
      H.signal(engines[2], "KILL")
      assert.are.equal(137, H.wait_exit(engines[2], 10))
      -- its instances wait for their leases to expire (30 s), then the
      -- others take them over
      assert(H.poll(120, 0.2, function()
        local st = states(env.url)
        return (st.completed or 0) + (st.incident or 0) == N
      end), "not done: " .. H.json.encode(states(env.url)))
      for _, k in ipairs({ 1, 3 }) do
        H.signal(engines[k], "TERM")
        assert.are.equal(0, H.wait_exit(engines[k], 20))
        local steps = tonumber((H.read(engines[k].log) or ""):match(
          "(%d+) step runs"))
        assert.is_true(steps and steps > 0, "engine " .. k .. " ran nothing")
      end
      check_routed(env.url, N)
      -- the version of each subject: what one engine on SQLite gives it
      local lite = H.env({ workflows = FAULTS })
      start_routed(lite, N)
      lite:ok("run", "--until-idle")
      local q = "SELECT subject, version FROM cv_decisions"
      assert.are.equal(versions(lite:sql(q)), versions(psql(env.url, q)))
      H.rmdir(lite.dir)
      H.rmdir(env.dir)
    end)

  it("says which database it cannot reach, and exits 1", function()
    local env = H.env({ workflows = H.workflows })
    local url = "postgresql://nobody@/nowhere?host=" .. cluster_dir ..
        "/no-such-dir"
    env.db = url
    local code, _, err = env:run("status")
    assert.are.equal(1, code)
    has(err, "cannot open database " .. url, "stderr")
    H.rmdir(env.dir)
  end)
end)
