-- The kill -9 test: 2,000 instances of a three-step workflow, the engine
-- killed (SIGKILL, no chance to clean up) in the middle of the run and again
-- in the middle of the restart, then a run until idle must complete every
-- instance with each step recorded exactly once, in order: no step run
-- lost, none recorded twice, no instance completed twice, a sound database.
--
-- Timing decides only *when* the kills land (polling the database with a
-- bound); what the test asserts is read from the database afterwards.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")

local N = 2000
local CONCURRENCY = "64" -- the whole run takes ~1 s: room to land a kill

describe("kill -9", function()
  local env

  before_each(function()
    env = H.env({ workflows = H.fixtures })
  end)

  after_each(function()
    H.reap()
  end)

  local function completed()
    return env:scalar("select count(*) from instances where state = " ..
      "'completed'")
  end

  local function step_runs()
    return env:scalar("select count(*) from step_runs")
  end

  -- Starts `run`, waits (bounded) until `ready()` holds, kills it with
  -- SIGKILL, and returns the state counts seen after the kill.
  local function run_and_kill(what, ready, concurrency)
    local p = env:spawn("run", "--concurrency", concurrency or CONCURRENCY)
    local t0 = H.now()
    local hit = H.poll(30, 0.01, function()
      if H.exit_code(p) then
        return "exited"
      end
      return ready() and "ready"
    end)
    H.signal(p, "KILL")
    local rc = H.wait_exit(p, 10)
    local log = H.read(p.log) or ""
    assert.are.equal("ready", hit, what .. ": the moment to kill never "
      .. "came (the engine ended first, or 30 s passed); log:\n" .. log)
    assert.are.equal(137, rc, what .. ": not killed by SIGKILL; log:\n" .. log)
    local s = env:states()
    print(string.format("# %s: killed after %.2f s; completed %d, running %d, "
      .. "ready %d, waiting %d; %d step runs", what, H.now() - t0,
      s.completed or 0, s.running or 0, s.ready or 0, s.waiting or 0,
      step_runs()))
    env:assert_intact(what)
    return s
  end

  it("in a run of 2,000 instances, twice; a restart completes each once",
    function()
      local t0 = H.now()
      local out = env:ok("start", "crashy", "--count", tostring(N), "--var",
        "key=k{n}")
      assert.is_truthy(out:find("started " .. N .. " instances of crashy", 1,
        true), out)
      assert.are.same({ ready = N }, env:states())

      -- 1: in the first run, once a tenth has completed
      local s1 = run_and_kill("first kill", function()
        return completed() >= N / 10
      end)
      local c1 = s1.completed or 0
      assert.is_true(c1 > 0 and c1 < N, "not a partial state: " .. c1)
      -- (Whether some were in flight, claimed and unfinished, depends on
      -- where in the loop the kill landed: printed above, not asserted.)

      -- 2: in the restart, once it has made progress of its own
      local target = c1 + math.min(300, (N - c1) // 2)
      local s2 = run_and_kill("second kill", function()
        return completed() >= target
      end)
      local c2 = s2.completed or 0
      assert.is_true(c2 > c1 and c2 < N, "not a partial state: " .. c2)

      -- 3: early in the next restart, as soon as a step run is recorded
      local r2 = step_runs()
      local s3 = run_and_kill("third kill", function()
        return step_runs() > r2
      end)
      local c3 = s3.completed or 0
      assert.is_true(c3 < N, "the third run finished before the kill")

      -- and a run until idle finishes everything
      local t1 = H.now()
      local code, _, err = env:run("run", "--until-idle")
      print(string.format("# final run --until-idle: %.2f s (whole test "
        .. "%.2f s)", H.now() - t1, H.now() - t0))
      assert.are.equal(0, code, err)
      -- it completed exactly those not completed before
      assert.is_truthy(err:find(" " .. (N - c3) .. " instances completed", 1,
        true), "expected " .. (N - c3) .. " completions in: " .. err)

      -- every instance completed, once, with its vars of one run per step
      assert.are.same({ completed = N }, env:states())
      assert.are.equal(N, env:scalar("select count(*) from instances where "
        .. "state = 'completed' and step is null and ended_at is not null"))
      assert.are.equal(N, env:scalar("select count(*) from instances where "
        .. H.jtext("vars", "one") .. " = '1' and " .. H.jtext("vars", "two")
        .. " = '1' and " .. H.jtext("vars", "three") .. " = '1' and "
        .. H.jtext("vars", "key") .. " = 'k' || id"))
      assert.are.equal(0, env:scalar("select count(*) from incidents"))

      -- step runs: exactly one per (instance, step), all ok, 3 per instance
      assert.are.equal(3 * N, step_runs())
      assert.are.equal(0, env:scalar("select count(*) from step_runs where "
        .. "outcome != 'ok' or error is not null"))
      assert.are.equal(0, env:scalar("select count(*) from (select 1 from "
        .. "step_runs group by instance_id, step having count(*) != 1) t"))
      assert.are.equal(N, env:scalar("select count(*) from (select "
        .. "instance_id from step_runs group by instance_id having "
        .. "count(*) = 3 and count(distinct step) = 3 and "
        .. "sum(case when step in ('one', 'two', 'three') then 1 else 0 end) = 3) t"))
      assert.are.equal(0, env:scalar("select count(*) from step_runs r where "
        .. "not exists (select 1 from instances i where i.id = r.instance_id)"))
      -- in order: one, then two, then three, each after the last ended
      assert.are.equal(0, env:scalar("select count(*) from step_runs a "
        .. "join step_runs b on a.instance_id = b.instance_id where "
        .. "((a.step = 'one' and b.step = 'two') or "
        .. "(a.step = 'two' and b.step = 'three')) and "
        .. "(b.id < a.id or b.started_at < a.ended_at)"))
      -- the completion is the one of the recorded final step
      assert.are.equal(0, env:scalar("select count(*) from instances i join "
        .. "step_runs r on r.instance_id = i.id and r.step = 'three' "
        .. "where i.ended_at < r.ended_at"))

      env:assert_intact("after the restart")
      H.rmdir(env.dir)
    end)

  it("as soon as instances are claimed, then a restart finishes them",
    function()
      -- A smaller variant: the kill lands right after the first claim, while
      -- the first steps sleep.
      local n = 300
      env:ok("start", "crashy", "--count", tostring(n), "--var", "key=k{n}")
      run_and_kill("kill right after the first claim", function()
        return env:scalar("select count(*) from instances where state = " ..
          "'running'") > 0
      end)
      local code, _, err = env:run("run", "--until-idle")
      assert.are.equal(0, code, err)
      assert.are.same({ completed = n }, env:states())
      assert.are.equal(3 * n, step_runs())
      assert.are.equal(0, env:scalar("select count(*) from (select 1 from "
        .. "step_runs group by instance_id, step having count(*) != 1) t"))
      env:assert_intact("after the restart")
      H.rmdir(env.dir)
    end)

  it("again and again, at 512 in flight, until everything completed",
    function()
      -- A storm of kills, each once the run has recorded at least a hundred
      -- more step runs, lands at many different points of the loop. The
      -- count is read by another process, so a kill lands a thousand step
      -- runs later or more on a busy machine: three times the other tests'
      -- instances keep several kills landing with work left.
      local M = 3 * N
      env:ok("start", "crashy", "--count", tostring(M), "--var", "key=k{n}")
      local kills, partial = 0, 0
      while kills < 30 and (env:states().completed or 0) < M do
        local before = step_runs()
        local p = env:spawn("run", "--concurrency", "512")
        H.poll(30, 0.005, function()
          return H.exit_code(p) or step_runs() >= before + 100
        end)
        H.signal(p, "KILL")
        assert.are.equal(137, H.wait_exit(p, 10), H.read(p.log))
        kills = kills + 1
        local c = env:states().completed or 0
        if c < M then
          partial = partial + 1
        end
        env:assert_intact("kill " .. kills)
      end
      print(string.format("# kill storm: %d kills, %d with work left", kills,
        partial))
      assert.is_true(partial >= 3, "fewer than 3 kills landed mid-run")
      local code, _, err = env:run("run", "--until-idle")
      assert.are.equal(0, code, err)
      assert.are.same({ completed = M }, env:states())
      assert.are.equal(3 * M, step_runs())
      assert.are.equal(0, env:scalar("select count(*) from (select 1 from "
        .. "step_runs group by instance_id, step having count(*) != 1) t"))
      assert.are.equal(M, env:scalar("select count(*) from instances where "
        .. H.jtext("vars", "one") .. " = '1' and " .. H.jtext("vars", "two")
        .. " = '1' and " .. H.jtext("vars", "three") .. " = '1'"))
      env:assert_intact("after the restart")
      H.rmdir(env.dir)
    end)
end)
