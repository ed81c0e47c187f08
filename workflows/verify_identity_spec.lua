-- A spec for verify_identity.lua, as a workflow's author writes one: run it
-- with `switchyard test` (no server, no real waiting), and see what each
-- failing external call does with `switchyard test --faults`.
local T = require "switchyard.testing"

local FLAG = "verifymenow-v2"

-- What --faults must find: a failing notify (a soft dependency) still lets
-- the instance complete; a failing verify call ends in an incident once its
-- retries are spent.
T.expect_fault("notify", "completed")
T.expect_fault("verify_v1", "incident at verify_v1")
T.expect_fault("verify_v2", "incident at verify_v2")

describe("verify_identity", function()
  local e

  -- An engine on a database in memory, on virtual time, the version
  -- forced, and the API stubbed as healthy.
  local function engine(version)
    e = T.engine { virtual_time = true, force = { [FLAG] = version } }
    e:http("POST", "/verify", { status = 200,
                                json = { verified = true, score = 0.9 } })
    e:http("POST", "/notify", { status = 202, json = { queued = true } })
    return e
  end

  local function start(subject)
    return assert(e:start("verify_identity",
      { subject = subject or "subject-1", document = "passport-1" }))
  end

  after_each(function()
    if e then
      e:close()
      e = nil
    end
  end)

  for _, version in ipairs { "v1", "v2" } do
    it("approves a verified subject on " .. version, function()
      engine(version)
      local id = start()
      e:run()
      local i = e:instance(id)
      assert.equal("completed", i.state)
      assert.equal(version, i.vars.api_version)
      assert.equal("approved", i.vars.decision)
      assert.is_true(i.vars.notified)
      local calls = e:requests("/" .. version .. "/verify")
      assert.equal(1, #calls)
      assert.equal("subject-1", calls[1].json.subject)
      local d = e:decisions(id)
      assert.equal(1, #d)
      assert.equal(version, d[1].version)
    end)
  end

  it("raises an incident at verify_v2 when v2 keeps failing", function()
    engine("v2")
    e:http("POST", "/v2/verify", { status = 503 })
    local id = start()
    local t0 = e:now()
    e:run()
    local i = e:instance(id)
    assert.equal("incident", i.state)
    assert.equal("verify_v2", i.step)
    -- the first try and two retries, backing off in virtual time
    assert.equal(3, #e:requests("/v2/verify"))
    -- (the clock counts whole milliseconds)
    assert.is_true(e:now() - t0 >= 0.05 + 0.1 - 0.002)
    local inc = e:incidents()
    assert.equal(1, #inc)
    assert.matches("VerifyMeNow v2 answered 503", inc[1].error, 1, true)
  end)

  it("gets through a v1 outage that the retries outlast", function()
    engine("v1")
    e:http("POST", "/v1/verify", {
      T.transport_error(), { status = 502 },
      { status = 200, json = { verified = true, score = 0.3 } } })
    local id = start()
    e:run()
    local i = e:instance(id)
    assert.equal("completed", i.state)
    assert.equal("manual_review", i.vars.decision)
    assert.equal(3, #e:requests("/v1/verify"))
  end)

  it("completes when notify fails: a soft dependency", function()
    engine("v1")
    e:http("POST", "/notify", T.timeout())
    local id = start()
    e:run()
    local i = e:instance(id)
    assert.equal("completed", i.state)
    assert.is_false(i.vars.notified)
    assert.matches("timed out", i.vars.notify_error, 1, true)
  end)

  it("rejects a request without a subject at once", function()
    engine("v1")
    local id = assert(e:start("verify_identity", { document = "passport-1" }))
    e:run()
    local i = e:instance(id)
    assert.equal("incident", i.state)
    assert.equal("receive", i.step)
    assert.equal(0, #e:requests())
  end)
end)
