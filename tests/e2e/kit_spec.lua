-- `switchyard test`, as a workflow's author runs it: the example spec
-- beside workflows/verify_identity.lua passes with no server and no
-- environment to set; `--faults` lists every external call of
-- verify_identity with each fault kind, and finds that failing notify
-- still completes while failing verify ends in an incident after the
-- retries; a spec that does not handle a fault is reported, not crashed
-- on; a wrong expectation fails the run; broken specs get busted's
-- messages with file:line.
--
-- The kit runs on a database in memory whatever the backend, so these
-- tests do not run again in the PostgreSQL pass (tag #sqlite).
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") ..
  "/helpers.lua")

local KIT = H.repo .. "/tests/fixtures/kit"

-- Runs `switchyard ARGS` in `dir` with a bare environment (no variable of
-- the test suite's), returns its exit code and its output.
local function switchyard(dir, args)
  local out = os.tmpname()
  local code = H.exec(string.format(
    "cd %s && env -i PATH=/usr/bin:/bin HOME=/tmp %s %s > %s 2>&1",
    H.q(dir), H.q(H.bin), args, H.q(out)))
  local text = H.read(out)
  os.remove(out)
  return code, text
end

-- The rows of a --faults table, as { site, fault, did, spec, expected }.
local function rows(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local site, fault, did, spec, expected = line:match(
      "^(%S+ #%d+ %S+ %S+)  +(%S[%w ]-%S)  +(%S.-%S)  +(%a+)%s*(.-)$")
    if site then
      out[#out + 1] = { site = site, fault = fault, did = did, spec = spec,
                        expected = expected }
    end
  end
  return out
end

describe("switchyard test #sqlite", function()
  it("passes the example spec of verify_identity, with no server", function()
    local code, out = switchyard(H.repo, "test")
    assert.equal(0, code, out)
    assert.matches("6 successes / 0 failures / 0 errors", out, 1, true)
  end)

  it("fails each external call of verify_identity in turn and says what it did", function()
    local code, out = switchyard(H.repo, "test --faults")
    assert.equal(0, code, out)
    local r = rows(out)
    local seen = {}
    for _, row in ipairs(r) do
      local step = row.site:match("^verify_identity%.(%S+) #1 POST ")
      assert.is_not_nil(step, row.site)
      seen[step .. " " .. row.fault] = (seen[step .. " " .. row.fault] or 0) + 1
      if step == "notify" then
        assert.equal("completed", row.did, row.site)
      else
        assert.equal("incident at " .. step, row.did, row.site)
      end
      assert.equal("as expected", row.expected, row.site)
    end
    -- each call site, with each fault kind
    for _, step in ipairs { "verify_v1", "verify_v2", "notify" } do
      for _, fault in ipairs { "transport error", "HTTP 503", "timeout" } do
        assert.is_true((seen[step .. " " .. fault] or 0) >= 1,
          step .. " " .. fault .. " is missing from:\n" .. out)
      end
    end
    -- the spec that stubs a v1 outage outlasted by its retries: with the
    -- verify call failing every time, it fails, and the table says so
    assert.matches("verify_v1 #1 POST http://127.0.0.1:8089/v1/verify  transport error  incident at verify_v1  failed",
      out, 1, true)
  end)

  it("reports a fault the spec does not handle, and its spec failing", function()
    local code, out = switchyard(H.repo, "test --faults " .. H.q(KIT .. "/specs"))
    assert.equal(0, code, out)
    local r = rows(out)
    assert.equal(6, #r, out)
    local by = {}
    for _, row in ipairs(r) do
      by[row.site .. " / " .. row.fault] = row
    end
    local a = by["calls.call #1 GET http://api.test/a / transport error"]
    assert.equal("incident at call", a.did)
    assert.equal("failed", a.spec)
    -- a 503 is an answer the step takes: it completes, the spec passes
    local b = by["calls.call #2 POST http://api.test/b / HTTP 503"]
    assert.equal("completed", b.did)
    assert.equal("passed", b.spec)
    assert.equal("incident at call",
      by["calls.call #2 POST http://api.test/b / timeout"].did)
  end)

  it("fails the run when a fault does not do what the spec expects", function()
    local dir = H.tmpdir()
    local spec = H.read(KIT .. "/specs/calls_spec.lua")
    spec = spec:gsub('local here = [^\n]+', 'local here = ' .. string.format("%q", KIT))
    H.write(dir .. "/expects_spec.lua",
      spec .. '\nT.expect_fault("call", "completed")\n')
    local code, out = switchyard(H.repo, "test --faults " .. H.q(dir))
    H.rmdir(dir)
    assert.equal(1, code, out)
    assert.matches("UNEXPECTED: expected completed", out, 1, true)
    assert.matches("4 not as expected", out, 1, true)
  end)

  it("does not count the engine's own ctx.now as an external call", function()
    local code, out = switchyard(H.repo, "test --faults " .. H.q(KIT .. "/quiet"))
    assert.equal(0, code, out)
    assert.equal(0, #rows(out), out)
    assert.matches("0 runs, each with 1 call failing", out, 1, true)
  end)

  it("fails over two calls at once with --faults=2", function()
    local code, out = switchyard(H.repo, "test --faults=2 " .. H.q(KIT .. "/specs"))
    assert.equal(0, code, out)
    assert.matches("calls.call #1 GET http://api.test/a + calls.call #2 POST http://api.test/b  transport error  incident at call  failed",
      out, 1, true)
  end)

  it("gives busted's messages, with file:line, for broken specs", function()
    local code, out = switchyard(H.repo, "test " .. H.q(KIT .. "/broken"))
    assert.equal(1, code, out)
    assert.matches("broken/syntax_spec.lua:4: unexpected symbol near '='", out, 1, true)
    assert.matches("broken/failing_spec.lua:3: Expected objects to be equal.", out, 1, true)
    -- --faults will not start on specs that fail without faults
    code, out = switchyard(H.repo, "test --faults " .. H.q(KIT .. "/broken"))
    assert.equal(1, code, out)
    assert.matches("the specs fail without any fault", out, 1, true)
  end)

  it("refuses a bad --faults", function()
    local code, out = switchyard(H.repo, "test --faults=3")
    assert.equal(2, code)
    assert.matches("--faults: expected 1 or 2", out, 1, true)
  end)
end)
