-- The console in a real browser: Debian's headless Chromium, driven by
-- tests/console/console.mjs, against `switchyard serve` on a database
-- filled by a short routed run. Each page loads without a console error
-- or a failed request and shows the numbers of `status --json`,
-- `incidents --json`, `show --json` and `report --json`; a screenshot of
-- each is saved under the build directory (console/); a retry through the
-- incidents page without the token is refused and changes nothing, with
-- it the instance is retried.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") ..
  "/helpers.lua")

local BUILD = assert(os.getenv("SY_BUILD_DIR"), "SY_BUILD_DIR is not set")
local TOKEN = "console-spec-token-0123456789"

local function cli_json(env, ...)
  return assert(H.decode((env:ok("--json", ...))))
end

describe("the console in Chromium", function()
  local env, server, base

  setup(function()
    env = H.env { workflows = H.repo .. "/tests/fixtures/cv" }
    env:ok("rollout", "set", "checkout", "30%", "--reason", "console spec")
    env:ok("start", "counted", "--count", "40", "--var", "user_id=u{n}")
    env:ok("start", "counted", "--count", "8", "--var", "user_id=f{n}",
      "--var", "fail:=true")
    env:ok("run", "--until-idle")
    H.write(env:path("token"), TOKEN .. "\n")
    server, base = env:serve("--token-file", env:path("token"))
  end)

  teardown(function()
    H.reap()
    H.rmdir(env and env.dir)
  end)

  it("shows the CLI's numbers on every page, and retries only with the token", function()
    local incidents = cli_json(env, "incidents")
    local id = tostring(incidents[1].instance)
    local shots = BUILD .. "/console"
    assert.equal(0, H.exec("mkdir -p " .. H.q(shots)))
    local function browser(...)
      local out = env:path("browser.json")
      local args = {}
      for _, a in ipairs({ ... }) do
        args[#args + 1] = H.q(a)
      end
      local code = H.exec(string.format("node %s %s > %s 2> %s",
        H.q(H.repo .. "/tests/console/console.mjs"), table.concat(args, " "),
        H.q(out), H.q(out .. ".err")))
      assert.equal(0, code, (H.read(out) or "") .. (H.read(out .. ".err") or ""))
      return assert(H.decode(H.read(out)))
    end

    local before = env:snapshot()
    local got = browser(base, shots, id)
    for name, p in pairs(got.pages) do
      assert.equal(200, p.status, name)
      assert.same({}, p.errors, name)
      assert.is_true(H.exists(shots .. "/" .. name .. ".png"), name)
    end
    local status = cli_json(env, "status")
    assert.same(status.counted, got.pages.overview.states)
    assert.equal(#incidents, tonumber(got.pages.incidents.count))
    assert.equal(cli_json(env, "show", id).state, got.pages.instance.state)
    local report = cli_json(env, "report", "checkout")
    for _, v in ipairs { "v1", "v2" } do
      for key, n in pairs(got.pages.flag[v]) do
        assert.equal(report.versions[v][key], n, v .. " " .. key)
      end
    end
    assert.equal(report.comparison.verdict_text, got.pages.flag.verdict)
    -- the retry without the token: refused, and nothing changed
    assert.equal(401, got.retry.status)
    assert.equal(before, env:snapshot())

    got = browser(base, shots, id, TOKEN)
    assert.equal(200, got.retry.status)
    assert.matches("instance " .. id .. ": retried", got.retry.text, 1, true)
    assert.equal("ready", cli_json(env, "show", id).state)
  end)
end)
