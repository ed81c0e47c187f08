-- workflows/verify_identity.lua against the real switchyard-mock, in-process,
-- with the version forced to v1 and to v2 (the choose_version setting
-- `choose_version.force.verifymenow-v2`): a healthy API, the API failing
-- that version (incident at its verify step after the retries), /notify
-- failing (the soft dependency's fallback: the instance still completes),
-- and a request without a subject (incident at receive, no retry). Then
-- a routed run at 50% with v1 failing 30% of its requests, and the
-- per-version report (`switchyard report verifymenow-v2 --json`) seeing
-- the difference.
--
-- Each test opens its own engine on a fresh database and starts its own
-- mock; mocks are killed after each test whatever happened.
local T = require "switchyard.testing"
local D = require "testdb"
local M = require "mock"

local SWITCHYARD = assert(os.getenv("SWITCHYARD"),
  "SWITCHYARD is not set: run the specs through ctest")
local BUILD = assert(os.getenv("SY_BUILD_DIR"), "SY_BUILD_DIR is not set")
local WORKFLOW = "workflows/verify_identity.lua"
local FLAG = "verifymenow-v2"
local DECISIONS = { approved = true, manual_review = true, rejected = true }

local function has(haystack, needle, what)
  assert(type(haystack) == "string" and haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in: %s", what or "text", needle,
      tostring(haystack)))
end

describe("verify_identity", function()
  local dir, e, ndb = nil, nil, 0

  setup(function()
    dir = M.tmpdir("sy-verify")
  end)

  teardown(function()
    M.stop_all()
    if dir and dir:match("/sy%-verify%.") then
      M.exec("rm -rf " .. M.q(dir))
    end
  end)

  after_each(function()
    if e then
      e:close()
      e = nil
    end
    M.stop_all()
  end)

  local function fresh_db()
    ndb = ndb + 1
    return D.sqlite and string.format("%s/v%02d.db", dir, ndb) or D.new()
  end

  -- An engine on a fresh database (or `db`), the version forced if given.
  local function engine(forced, db)
    local settings = {}
    if forced then
      settings["choose_version.force." .. FLAG] = forced
    end
    e = T.engine { db = db or fresh_db(), workflows = "workflows",
                   plugins = BUILD .. "/plugins", settings = settings,
                   concurrency = 200 }
    return e
  end

  -- Starts n instances against the mock at `url` and runs them to the end.
  local function run_many(n, url, prefix)
    local ids = {}
    for k = 1, n do
      ids[k] = assert(e:start(WORKFLOW, { subject = prefix .. "-subject-" .. k,
        document = "passport-" .. k, api_base = url }))
    end
    e:run()
    return ids
  end

  local function incident_of(id)
    for _, i in ipairs(e:incidents(true)) do
      if i.instance == id then
        return i
      end
    end
  end

  local function decision_of(id)
    return e:sql("SELECT version, reason FROM cv_decisions WHERE " ..
      "instance_id = ?", id)[1]
  end

  for _, version in ipairs({ "v1", "v2" }) do
    local other = version == "v1" and "v2" or "v1"

    describe("with " .. version .. " forced", function()
      it("completes every instance against a healthy API", function()
        local m = M.start { "--seed", "5", "--v1-latency-ms", "5",
                            "--v2-latency-ms", "5" }
        engine(version)
        local ids = run_many(40, m.url, "ok")
        local seen = {}
        for _, id in ipairs(ids) do
          local i = e:instance(id)
          assert.are.equal("completed", i.state, "instance " .. id)
          local v = i.vars
          assert.is_true(DECISIONS[v.decision], tostring(v.decision))
          assert.are.equal(version, v.api_version)
          assert.is_true(v.notified, "instance " .. id)
          assert.is_nil(v.notify_error)
          assert.are.equal("req-" .. id, v.request_id)
          -- The decision follows the API's answer.
          if not v.verified then
            assert.are.equal("rejected", v.decision)
          elseif v.score >= 0.5 then
            assert.are.equal("approved", v.decision)
          else
            assert.are.equal("manual_review", v.decision)
          end
          assert.are.same({ version = version, reason = "forced" },
            decision_of(id))
          seen[v.decision] = true
        end
        assert.is_true(seen.approved and seen.rejected, "a mix of decisions")
        local st = M.stats(m)
        assert.are.equal(40, st[version].requests)
        assert.are.equal(40, st[version].ok)
        assert.are.equal(0, st[other].requests)
        assert.are.equal(0, #e:incidents())
      end)

      it("ends in an incident at verify_" .. version .. " after the " ..
        "retries when the API fails that version", function()
        local m = M.start { "--" .. version .. "-error-rate", "1" }
        engine(version)
        local ids = run_many(5, m.url, "fail")
        for _, id in ipairs(ids) do
          local i = e:instance(id)
          assert.are.equal("incident", i.state, "instance " .. id)
          assert.are.equal("verify_" .. version, i.step)
          local inc = assert(incident_of(id), "an incident")
          assert.are.equal("verify_" .. version, inc.step)
          local status = inc.error:match("answered (%d+)")
          assert.is_truthy(status == "500" or status == "503", inc.error)
          has(inc.error, "VerifyMeNow " .. version, "incident error")
          -- receive and route once, then 1 + 2 retries of the call.
          local h = e:history(id)
          local calls = {}
          for _, r in ipairs(h) do
            if r.step == "verify_" .. version then
              calls[#calls + 1] = r.attempt .. ":" .. r.outcome
            end
          end
          assert.are.same({ "1:error", "2:error", "3:error" }, calls)
          assert.is_nil(i.vars.decision)
        end
        local st = M.stats(m)
        assert.are.equal(15, st[version].requests)
        assert.are.equal(15, st[version].errors)
        assert.are.equal(0, st.v1.requests + st.v2.requests - 15)

        -- The API recovers (a healthy mock on the same port): retrying
        -- the incidents finishes them, on the version decided before.
        local port = m.port
        M.stop(m)
        local healthy = M.poll(5, 0.1, function()
          local ok, h = pcall(M.start, { "--port", tostring(port) })
          return ok and h
        end)
        assert.is_truthy(healthy, "a mock on port " .. port .. " again")
        for _, id in ipairs(ids) do
          assert.is_true(e:retry(id))
        end
        e:run()
        for _, id in ipairs(ids) do
          local i = e:instance(id)
          assert.are.equal("completed", i.state, "instance " .. id)
          assert.are.equal(version, i.vars.api_version)
          assert.is_true(DECISIONS[i.vars.decision])
          assert.are.equal(1, #e:sql("SELECT 1 FROM cv_decisions WHERE " ..
            "instance_id = ?", id), "decided once")
        end
        assert.are.equal(5, M.stats(healthy)[version].ok)
      end)

      it("ends in an incident at verify_" .. version .. " when the API " ..
        "hangs: each attempt times out", function()
        local m = M.start { "--" .. version .. "-hang-rate", "1",
                            "--hang-seconds", "30" }
        engine(version)
        local t0 = M.now()
        local ids = run_many(3, m.url, "hang")
        for _, id in ipairs(ids) do
          local i = e:instance(id)
          assert.are.equal("incident", i.state, "instance " .. id)
          assert.are.equal("verify_" .. version, i.step)
          has(assert(incident_of(id)).error, "timed out", "incident error")
        end
        -- Three attempts of 1.5 s each, the instances side by side.
        assert.is_true(M.now() - t0 < 15, "took " .. (M.now() - t0))
        local st = assert(M.poll(5, 0.05, function()
          local s = M.stats(m)
          return s.in_flight == 0 and s
        end), "hangs still held by the mock")
        assert.are.equal(9, st[version].hangs)
        assert.are.equal(9, st[version].client_gone)
      end)

      it("does not fail when the other version is down", function()
        local m = M.start { "--" .. other .. "-error-rate", "1" }
        engine(version)
        for _, id in ipairs(run_many(5, m.url, "other")) do
          local i = e:instance(id)
          assert.are.equal("completed", i.state, "instance " .. id)
          assert.are.equal(version, i.vars.api_version)
        end
      end)

      it("still completes when /notify fails, with notified false",
        function()
          local m = M.start { "--notify-error-rate", "1" }
          engine(version)
          for _, id in ipairs(run_many(10, m.url, "notify")) do
            local i = e:instance(id)
            assert.are.equal("completed", i.state, "instance " .. id)
            local v = i.vars
            assert.are.equal(version, v.api_version)
            assert.is_true(DECISIONS[v.decision], tostring(v.decision))
            assert.are.equal(false, v.notified)
            assert.are.equal("HTTP 503", v.notify_error)
            assert.is_nil(incident_of(id))
          end
          assert.are.equal(0, #e:incidents())
        end)

      it("raises an incident at receive, without retry, for a request " ..
        "with no subject", function()
        local m = M.start()
        engine(version)
        local cases = {
          { vars = { document = "passport-1", api_base = m.url },
            error = "the request has no subject" },
          { vars = { subject = "", document = "passport-1",
                     api_base = m.url },
            error = "the request has no subject" },
          { vars = { subject = "carol", api_base = m.url },
            error = "the request has no document" },
        }
        for _, c in ipairs(cases) do
          local id = assert(e:start(WORKFLOW, c.vars))
          e:run()
          local i = e:instance(id)
          assert.are.equal("incident", i.state, c.error)
          assert.are.equal("receive", i.step)
          has(assert(incident_of(id)).error, c.error, "incident error")
          local h = e:history(id)
          assert.are.equal(1, #h, "no retry")
          assert.are.equal("error", h[1].outcome)
          assert.is_nil(decision_of(id), "never routed")
        end
        local st = M.stats(m)
        assert.are.equal(0, st.v1.requests + st.v2.requests)
      end)
    end)
  end

  it("routes at 50% and the report sees v1 failing more than v2",
    function()
      local db = fresh_db()
      local function sh(cmd)
        local out = dir .. "/cmd.out"
        local rc = M.exec(cmd .. " >" .. M.q(out) .. " 2>&1")
        return rc, M.read(out) or ""
      end
      local rc, out = sh(M.q(SWITCHYARD) .. " --db " .. M.q(db) ..
        " rollout set " .. FLAG .. " 50% --reason r")
      assert.are.equal(0, rc, out)

      local m = M.start { "--seed", "9", "--v1-error-rate", "0.3",
                          "--v1-latency-ms", "5", "--v2-latency-ms", "5" }
      engine(nil, db)
      local n = 400
      local ids = run_many(n, m.url, "routed")
      local count = { v1 = 0, v2 = 0 }
      local failed = { v1 = 0, v2 = 0 }
      for _, id in ipairs(ids) do
        local d = assert(decision_of(id), "a decision for " .. id)
        assert.are.equal("rollout", d.reason)
        count[d.version] = count[d.version] + 1
        local i = e:instance(id)
        if i.state == "incident" then
          assert.are.equal("verify_" .. d.version, i.step)
          failed[d.version] = failed[d.version] + 1
        else
          assert.are.equal("completed", i.state, "instance " .. id)
          assert.are.equal(d.version, i.vars.api_version)
        end
      end
      -- Sticky buckets over distinct subjects: about half each.
      assert.is_true(count.v1 > 140 and count.v2 > 140,
        ("v1 %d, v2 %d"):format(count.v1, count.v2))
      assert.are.equal(0, failed.v2)
      assert.is_true(failed.v1 > 0.15 * count.v1 and
        failed.v1 < 0.45 * count.v1,
        ("v1 incidents %d of %d"):format(failed.v1, count.v1))
      e:close()
      e = nil

      rc, out = sh(M.q(SWITCHYARD) .. " --db " .. M.q(db) .. " report " ..
        FLAG .. " --json")
      assert.are.equal(0, rc, out)
      local r = assert(M.json.decode(out), "not JSON: " .. out)
      assert.are.equal(count.v1, r.versions.v1.routed)
      assert.are.equal(count.v2, r.versions.v2.routed)
      assert.are.equal(failed.v1, r.versions.v1.instances_with_incidents)
      assert.are.equal(0, r.versions.v2.instances_with_incidents)
      assert.is_true(math.abs(r.versions.v1.incident_rate -
        failed.v1 / count.v1) < 1e-9)
      assert.are.equal(0, r.versions.v2.incident_rate)
      assert.are.equal("v2_better", r.comparison.verdict, out)
      print(("# routed 50%%: v1 %d (%d incidents), v2 %d (0); verdict %s")
        :format(count.v1, failed.v1, count.v2, r.comparison.verdict))
    end)
end)
