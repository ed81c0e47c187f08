-- `switchyard serve` on a database filled by a short routed run: its JSON
-- API says what the CLI's --json says; /metrics is well-formed Prometheus
-- text (promtool checks it too) whose values equal `status --json` and
-- `report --json`, and the shipped alert rule passes promtool's tests; bad
-- requests (unknown paths, bad ids and parameters, bad methods, a long
-- path, random junk) get a 4xx and never stop it; a retry without the
-- token (or with a wrong one) is refused and changes nothing, with it
-- succeeds; --listen off loopback needs --token-file.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") ..
  "/helpers.lua")

local CV = H.repo .. "/tests/fixtures/cv"
local TOKEN = "s3cret-token-for-the-serve-spec"

-- One request: status code and body (decoded when it is JSON).
local function request(base, method, path, headers)
  local out = os.tmpname()
  local words = { "curl", "-s", "-g", "-o", H.q(out), "-w", "'%{http_code}'",
                  "-X", method }
  for _, h in ipairs(headers or {}) do
    words[#words + 1] = "-H " .. H.q(h)
  end
  words[#words + 1] = H.q(base .. path)
  local code = tonumber(H.capture(table.concat(words, " ")))
  local body = H.read(out) or ""
  os.remove(out)
  if body:match("^[{%[]") then
    return code, H.decode(body)
  end
  return code, body
end

local function cli_json(env, ...)
  return assert(H.decode((env:ok("--json", ...))))
end

-- The samples of a text-format page, checked as they are read: every
-- sample's family has # HELP and # TYPE lines before it, names and labels
-- are well-formed, counters end in _total, a histogram's samples are its
-- _bucket, _sum and _count. { [name] = { {labels, value} } }
local function parse_metrics(text)
  local typed, helped, samples = {}, {}, {}
  for line in text:gmatch("[^\n]+") do
    local kind, name, rest = line:match("^# (%u+) ([%a_:][%w_:]*) (.+)$")
    if kind == "HELP" then
      helped[name] = true
    elseif kind == "TYPE" then
      assert(rest == "counter" or rest == "gauge" or rest == "histogram", line)
      assert(rest ~= "counter" or name:match("_total$"), line)
      typed[name] = rest
      if rest == "histogram" then
        for _, suffix in ipairs { "_bucket", "_sum", "_count" } do
          typed[name .. suffix], helped[name .. suffix] = "histogram", helped[name]
        end
      end
    else
      local n, labels, value = line:match("^([%a_:][%w_:]*)(%b{}) (%S+)$")
      if not n then
        n, value = line:match("^([%a_:][%w_:]*) (%S+)$")
        labels = "{}"
      end
      assert(n, "not a sample: " .. line)
      assert(typed[n] and helped[n], "no # HELP/# TYPE before " .. line)
      local l = {}
      for k, v in labels:sub(2, -2):gmatch('([%a_][%w_]*)="(.-)"') do
        l[k] = v
      end
      samples[n] = samples[n] or {}
      table.insert(samples[n], { labels = l, value = assert(tonumber(value), line) })
    end
  end
  return samples
end

local function value(samples, name, labels)
  for _, s in ipairs(samples[name] or {}) do
    local all = true
    for k, v in pairs(labels) do
      all = all and s.labels[k] == v
    end
    if all then
      return s.value
    end
  end
end

describe("switchyard serve", function()
  local env, server, base

  setup(function()
    env = H.env { workflows = CV }
    env:ok("rollout", "set", "checkout", "50%", "--reason", "serve spec")
    env:ok("start", "counted", "--count", "30", "--var", "user_id=u{n}")
    env:ok("start", "counted", "--count", "10", "--var", "user_id=f{n}",
      "--var", "fail:=true")
    env:ok("start", "counted", "--var", "user_id=<script>alert('x')</script>&")
    env:ok("run", "--until-idle")
    H.write(env:path("token"), TOKEN .. "\n")
    server, base = env:serve("--token-file", env:path("token"))
  end)

  teardown(function()
    H.reap()
    H.rmdir(env and env.dir)
  end)

  it("answers the API with what the CLI's --json says", function()
    local code, body = request(base, "GET", "/api/status")
    assert.equal(200, code)
    assert.same(cli_json(env, "status"), body)
    code, body = request(base, "GET", "/api/incidents")
    assert.equal(200, code)
    local incidents = cli_json(env, "incidents")
    assert.equal(10, #incidents)
    assert.same(incidents, body)
    code, body = request(base, "GET", "/api/instances?state=incident&limit=0")
    assert.equal(200, code)
    assert.same(cli_json(env, "instances", "--state", "incident"), body)
    local id = tostring(incidents[1].instance)
    code, body = request(base, "GET", "/api/instances/" .. id)
    assert.equal(200, code)
    assert.same(cli_json(env, "show", id), body)
  end)

  it("draws pages with the API's numbers, escaping what workflows hold", function()
    local code, html = request(base, "GET", "/")
    assert.equal(200, code)
    local status = cli_json(env, "status")
    for state, n in pairs(status.counted) do
      local cell = html:match('data%-state="' .. state .. '">(.-)</td>')
      assert.equal(n, tonumber(cell:match("(%d+)")), state)
    end
    -- the flags, with their verdict as the report gives it (from the kept
    -- tallies), on the overview and on the flags' page alike
    local report = cli_json(env, "report", "checkout")
    for _, page in ipairs { "/", "/flags" } do
      local _, body = request(base, "GET", page)
      local row = assert(body:match('<tr><td><a href="/flags/checkout">(.-)</tr>'), page)
      assert.matches("<td data-plan>none</td>", row, 1, true)
      assert.matches('<td data-verdict="' .. report.comparison.verdict .. '">' ..
        report.comparison.verdict_text .. "</td>", row, 1, true)
    end
    code, html = request(base, "GET", "/incidents")
    assert.equal(200, code)
    assert.equal(#cli_json(env, "incidents"), tonumber(html:match('id="count">(%d+)<')))
    local id = env:scalar("select id from instances where " ..
      H.jtext("vars", "user_id") .. " like '<script>%'")
    code, html = request(base, "GET", "/instances/" .. id)
    assert.equal(200, code)
    assert.equal("completed", html:match('id="state">(%a+)<'))
    assert.matches("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;", html, 1, true)
    assert.is_nil(html:find("<script>", 1, true))
    -- the decision choose_version recorded for it, under the engine's page
    local d = env:sql("select version, reason from cv_decisions where instance_id = " .. id)
    assert.equal(1, #d)
    local row = assert(html:match('<table id="decisions">.-<tr><td><a href="/flags/checkout">(.-)</tr>'))
    assert.matches("<td data-version>" .. d[1][1] .. "</td><td data-reason>" ..
      d[1][2] .. "</td>", row, 1, true)
    assert.equal(404, (request(base, "GET", "/instances/999999")))
    assert.equal(400, (request(base, "GET", "/instances/x")))
  end)

  it("draws a workflow's graph with the instances and incidents at each step, and each version's on its edge", function()
    local code, html = request(base, "GET", "/workflows/counted")
    assert.equal(200, code)
    assert.matches("<svg", html, 1, true)
    -- the edges of the choose_version node, labelled by version, with what
    -- the report counts of this workflow's instances routed there
    local report = cli_json(env, "report", "checkout", "--workflow", "counted")
    for _, v in ipairs { "v1", "v2" } do
      local r = report.versions[v]
      assert.is_true(r.routed > 0, v)
      assert.matches(">" .. v .. "</text>", html, 1, true)
      assert.matches(string.format(">%d routed</text>", r.routed), html, 1, true)
      assert.matches(string.format(">%d with incidents (%.1f%%)</text>",
        r.instances_with_incidents, 100 * r.instances_with_incidents / r.routed),
        html, 1, true)
    end
    for _, step in ipairs { "route", "old", "new" } do
      local row = html:match('<tr data%-step="' .. step .. '">(.-)</tr>')
      assert.is_string(row, step)
      assert.equal(env:scalar("select count(*) from instances where workflow = 'counted' " ..
        "and state = 'incident' and step = '" .. step .. "'"),
        tonumber(row:match('data%-now="incident">(%d+)<')), step)
      assert.equal(env:scalar("select count(*) from incidents where step = '" .. step .. "'"),
        tonumber(row:match("data%-raised>(%d+)<")), step)
    end
    local hash = env:scalar("select def_hash from instances limit 1")
    assert.equal(200, (request(base, "GET", "/workflows/counted?definition=" .. hash)))
    assert.equal(404, (request(base, "GET", "/workflows/counted?definition=abc")))
    assert.equal(404, (request(base, "GET", "/workflows/nope")))
    code, html = request(base, "GET", "/")
    assert.matches('href="/workflows/counted"', html, 1, true)
  end)

  it("shows a flag's report, as a page and as the report's JSON", function()
    local report = cli_json(env, "report", "checkout")
    local code, doc = request(base, "GET", "/api/flags/checkout/report")
    assert.equal(200, code)
    assert.equal("switchyard.report/1", doc.schema)
    doc.generated_at, report.generated_at = nil, nil
    assert.same(report, doc)
    local html
    code, html = request(base, "GET", "/flags/checkout")
    assert.equal(200, code)
    for _, v in ipairs { "v1", "v2" } do
      for _, key in ipairs { "routed", "completed", "in_flight", "incidents" } do
        local cell = html:match("data%-" .. v .. '="' .. key .. '">(%d+)<')
        assert.equal(report.versions[v][key], tonumber(cell), v .. " " .. key)
      end
    end
    assert.matches(report.comparison.verdict_text, html:match('id="verdict">(.-)</p>'), 1, true)
    assert.matches("serve spec", html, 1, true) -- the audit trail's reason
    -- the chart: a column per ramp step, with its rate and each version's
    -- share of instances with an incident
    local chart = assert(html:match('<svg id="ramp%-chart".-</svg>'), "no chart")
    local columns = {}
    for ppm, v1, v2 in chart:gmatch('<g class="step" data%-rate%-ppm="(%d+)" '
      .. 'data%-v1="([%d.]+)" data%-v2="([%d.]+)">') do
      columns[#columns + 1] = { tonumber(ppm), tonumber(v1), tonumber(v2) }
    end
    assert.equal(#report.ramp_steps, #columns)
    for i, s in ipairs(report.ramp_steps) do
      assert.equal(s.rate_ppm, columns[i][1])
      for k, v in ipairs { "v1", "v2" } do
        local want = s[v].instances > 0 and s[v].with_incidents / s[v].instances or 0
        assert.near(want, columns[i][k + 1], 1e-6, v .. " at step " .. i)
      end
    end
    code, html = request(base, "GET", "/flags")
    assert.equal(200, code)
    assert.matches('href="/flags/checkout"', html, 1, true)
    assert.matches('<nav>.*href="/flags">Flags</a>', html)
    assert.equal(404, (request(base, "GET", "/flags/nope")))
    assert.equal(404, (request(base, "GET", "/api/flags/nope/report")))
    assert.equal(404, (request(base, "GET", "/api/flags/checkout/other")))
    assert.equal(401, (request(base, "POST", "/flags")))
  end)

  it("shows a flag's plan and overrides, and approves its gate with the token", function()
    local auth = { "Authorization: Bearer " .. TOKEN }
    env:ok("rollout", "set", "gated", "0%", "--reason", "a new flag")
    env:ok("rollout", "plan", "gated", "--steps", "10%,50%,100%", "--gate", "50%",
      "--reason", "a gated plan")
    env:ok("rollout", "allow", "gated", "<vip>", "--reason", "tests v2 first")
    -- a reason longer than the escaper's buffer, escapes on either side
    local long = string.rep("a", 300) .. '"&' .. string.rep("b", 300)
    env:ok("rollout", "allow", "gated", "someone", "--reason", long)
    local code, html = request(base, "GET", "/flags/gated")
    assert.equal(200, code)
    local plan = assert(html:match('<p id="plan">(.-)</p>'), "no plan")
    assert.matches("running, step 1 of 10%,50%,100% (now 10%)", plan, 1, true)
    assert.matches('id="gate"', plan, 1, true)
    assert.matches('data-action="approve"', html, 1, true)
    local _, overview = request(base, "GET", "/")
    assert.matches('<td data-plan>running, step 1 of 10%,50%,100%, ' ..
      '<b>awaiting approval</b></td>', overview, 1, true)
    local overrides = assert(html:match('<table id="overrides">(.-)</table>'))
    assert.matches("<td>&lt;vip&gt;</td><td>allow</td>", overrides, 1, true)
    assert.matches("tests v2 first", overrides, 1, true)
    assert.matches("<td>" .. string.rep("a", 300) .. "&quot;&amp;" ..
      string.rep("b", 300) .. "</td>", overrides, 1, true)
    -- without the token: refused, nothing changes
    local before = env:snapshot()
    assert.equal(401, (request(base, "POST", "/api/flags/gated/approve?reason=go")))
    assert.equal(before, env:snapshot())
    assert.is_true(cli_json(env, "rollout", "plan", "gated", "show").awaiting_approval)
    -- with it: approved, by the console, with the reason
    assert.equal(200, (request(base, "POST", "/api/flags/gated/approve?reason=go%20on", auth)))
    assert.is_false(cli_json(env, "rollout", "plan", "gated", "show").awaiting_approval)
    local history = cli_json(env, "rollout", "history", "gated")
    assert.equal("approve", history[#history].what)
    assert.equal("console", history[#history].actor)
    assert.equal("go on", history[#history].reason)
    code, html = request(base, "GET", "/flags/gated")
    assert.is_nil(html:match('<p id="plan">(.-)</p>'):find('id="gate"', 1, true))
    -- no gate waits: nothing to approve, the other changes still offered
    assert.is_nil(html:find('data-action="approve"', 1, true))
    assert.matches('data-action="rate"', html, 1, true)
    -- a flag with no plan: no plan shown, nothing to approve
    code, html = request(base, "GET", "/flags/checkout")
    assert.is_nil(html:find('id="plan"', 1, true))
    assert.is_nil(html:find('data-action="approve"', 1, true))
    before = env:snapshot()
    assert.equal(400, (request(base, "POST", "/api/flags/checkout/approve?reason=x", auth)))
    assert.equal(before, env:snapshot())
  end)

  it("changes a flag's rate and kill switch with the token, as the CLI does", function()
    local auth = { "Authorization: Bearer " .. TOKEN }
    local before = env:snapshot()
    assert.equal(401, (request(base, "POST", "/api/flags/checkout/rate?rate=60%25&reason=more")))
    assert.equal(400, (request(base, "POST", "/api/flags/checkout/rate?rate=60%25", auth)))
    local code, body = request(base, "POST", "/api/flags/checkout/rate?rate=lots&reason=x", auth)
    assert.equal(400, code)
    assert.is_string(body.error)
    assert.equal(before, env:snapshot())
    code = request(base, "POST", "/api/flags/checkout/rate?rate=60%25&reason=more%20v2", auth)
    assert.equal(200, code)
    local flag = cli_json(env, "rollout", "get", "checkout")
    assert.equal(600000, flag.rate_ppm)
    code = request(base, "POST", "/api/flags/checkout/kill?reason=v2%20is%20down", auth)
    assert.equal(200, code)
    assert.is_true(cli_json(env, "rollout", "get", "checkout").killed)
    local history = cli_json(env, "rollout", "history", "checkout")
    local last = history[#history]
    assert.equal("kill", last.what)
    assert.equal("console", last.actor)
    assert.equal("v2 is down", last.reason)
    -- back as the other tests expect it
    assert.equal(200, (request(base, "POST", "/api/flags/checkout/unkill?reason=back", auth)))
    assert.equal(200, (request(base, "POST", "/api/flags/checkout/rate?rate=50%25&reason=back", auth)))
    assert.equal(404, (request(base, "POST", "/api/flags/checkout/explode?reason=x", auth)))
  end)

  it("serves /metrics whose values equal status and report", function()
    local code, text = request(base, "GET", "/metrics")
    assert.equal(200, code)
    local m = parse_metrics(text)
    local status = cli_json(env, "status")
    for state, n in pairs(status.counted) do
      assert.equal(n, value(m, "switchyard_instances",
        { workflow = "counted", state = state }), state)
    end
    local report = cli_json(env, "report", "checkout")
    local open = 0
    for _, v in ipairs { "v1", "v2" } do
      local r, l = report.versions[v], { workflow = "counted", flag = "checkout", version = v }
      assert.equal(r.routed, value(m, "switchyard_routed_total", l), v)
      assert.equal(r.completed, value(m, "switchyard_routed_completed_total", l), v)
      assert.equal(r.incidents, value(m, "switchyard_routed_incidents_total", l), v)
      assert.equal(r.in_flight, value(m, "switchyard_routed_in_flight", l), v)
      open = open + value(m, "switchyard_routed_open_incidents", l)
    end
    assert.equal(10, open)
    assert.equal(0.5, value(m, "switchyard_flag_rate_ratio", { flag = "checkout" }))
    assert.equal(0, value(m, "switchyard_flag_killed", { flag = "checkout" }))
    local by_step = (value(m, "switchyard_incidents_open", { step = "old" }) or 0) +
        (value(m, "switchyard_incidents_open", { step = "new" }) or 0)
    assert.equal(10, by_step)
  end)

  -- Each histogram bucket holds the completed decisions at or under its
  -- bound, recounted here from cv_decisions; le in seconds, cumulative.
  local function assert_histograms(m, db_env, report)
    local families = { branch_ms = "switchyard_routed_branch_seconds",
                       step_ms = "switchyard_routed_step_seconds" }
    for column, family in pairs(families) do
      for _, v in ipairs { "v1", "v2" } do
        local l = { workflow = "counted", flag = "checkout", version = v }
        local where = "from cv_decisions where flag = 'checkout' and version = '"
          .. v .. "' and outcome = 'completed'"
        local buckets = 0
        for _, s in ipairs(m[family .. "_bucket"] or {}) do
          if s.labels.version == v then
            buckets = buckets + 1
            local bound = s.labels.le == "+Inf" and "" or
              (" and " .. column .. " <= " .. math.floor(tonumber(s.labels.le) * 1000 + 0.5))
            assert.equal(db_env:scalar("select count(*) " .. where .. bound), s.value,
              family .. " " .. v .. " le=" .. s.labels.le)
          end
        end
        assert.equal(18, buckets, family .. " " .. v)
        assert.equal(report.versions[v].completed, value(m, family .. "_count", l))
        assert.near(db_env:scalar("select coalesce(sum(" .. column .. "), 0) " .. where) / 1000,
          value(m, family .. "_sum", l), 0.0005)
      end
    end
  end

  it("serves histograms of branch and step time that equal a recount", function()
    local code, text = request(base, "GET", "/metrics")
    assert.equal(200, code)
    local report = cli_json(env, "report", "checkout")
    assert.is_true(report.versions.v1.completed > 0 and report.versions.v2.completed > 0)
    assert_histograms(parse_metrics(text), env, report)
  end)

  it("sorts past decisions into the histograms and ramp tallies when it adds them", function()
    -- the buckets' bounds, in ms, as /metrics gives them
    local _, text = request(base, "GET", "/metrics")
    local bounds = {}
    for _, s in ipairs(parse_metrics(text).switchyard_routed_branch_seconds_bucket) do
      if s.labels.version == "v1" and s.labels.le ~= "+Inf" then
        bounds[#bounds + 1] = math.floor(tonumber(s.labels.le) * 1000 + 0.5)
      end
    end
    -- a database from before the histograms (no cv_latency, no
    -- cv_ramp_tallies, no shadow runs: schema 8) whose decisions took
    -- times on and just past the bounds
    local old = env:frozen()
    -- (PostgreSQL: the trigger on cv_flags names the shadow columns, and
    -- goes with them; migration 11 makes it again)
    local cascade = H.sqlite and "; " or " cascade; "
    H.db_exec(old.db, "drop table cv_shadow_runs; drop table cv_shadow_hours; "
      .. "drop table cv_shadow_skips; "
      .. "alter table cv_flags drop column shadow_ppm" .. cascade
      .. "alter table cv_flags drop column shadow_budget" .. cascade
      .. "drop table cv_latency; drop table cv_ramp_tallies; "
      .. "update cv_meta set value = 8 where key = 'schema_version'; "
      .. "update cv_decisions set branch_ms = case instance_id % 4 when 0 "
      .. "then 5 when 1 then 6 when 2 then 60000 else 604800001 end, step_ms = "
      .. "case instance_id % 3 when 0 then 10 when 1 then 11 else 2500 end "
      .. "where outcome = 'completed'")
    local want = {}
    for _, r in ipairs((old:sql("select version, branch_ms, step_ms from "
      .. "cv_decisions where outcome = 'completed'"))) do
      for kind, ms in pairs { branch = tonumber(r[2]), steps = tonumber(r[3]) } do
        local le = "9223372036854775807"
        for _, b in ipairs(bounds) do
          if ms <= b then
            le = tostring(b)
            break
          end
        end
        local k = table.concat({ r[1], kind, le }, " ")
        want[k] = want[k] or { n = 0, sum = 0 }
        want[k].n, want[k].sum = want[k].n + 1, want[k].sum + ms
      end
    end
    old:ok("status") -- opening it migrates
    local got = {}
    for _, r in ipairs((old:sql("select version, kind, le, n, sum_ms from cv_latency "
      .. "where flag = 'checkout'"))) do
      got[table.concat({ r[1], r[2], r[3] }, " ")] = { n = tonumber(r[4]), sum = tonumber(r[5]) }
    end
    assert.is_true(next(want) ~= nil)
    assert.are.same(want, got)
    -- and migration 10 counted the decisions into the ramp tallies
    local C = dofile(H.repo .. "/tests/lua/counters.lua")
    assert.are.same(old:sql(C.RAMP_RECOUNT), old:sql(C.RAMP_TALLIES))
    assert.is_true(#old:sql(C.RAMP_TALLIES) >= 2)
  end)

  it("passes promtool's check of /metrics", function()
    local page = env:path("metrics.txt")
    local code = H.exec("curl -s -o " .. H.q(page) .. " " .. H.q(base .. "/metrics"))
    assert.equal(0, code)
    local out = env:path("promtool.out")
    code = H.exec("promtool check metrics < " .. H.q(page) .. " > " .. H.q(out) .. " 2>&1")
    assert.equal(0, code, H.read(out))
    assert.equal("", H.read(out))
  end)

  it("ships an alert rule that fires when v2 fails more than v1", function()
    local out = env:path("rules.out")
    local code = H.exec("promtool check rules " ..
      H.q(H.repo .. "/plugins/choose_version/alerts.yml") .. " > " .. H.q(out) .. " 2>&1")
    assert.equal(0, code, H.read(out))
    code = H.exec("promtool test rules " ..
      H.q(H.repo .. "/tests/fixtures/serve/alerts_test.yml") .. " > " .. H.q(out) .. " 2>&1")
    assert.equal(0, code, H.read(out))
  end)

  it("gets a 4xx for bad requests, and stays up", function()
    local cases = {
      { "GET", "/nope", 404 },
      { "GET", "/api/", 404 },
      { "GET", "/api/instances/abc", 400 },
      { "GET", "/api/instances/0", 400 },
      { "GET", "/api/instances/-3", 400 },
      { "GET", "/api/instances/12345678901234567890123", 400 },
      { "GET", "/api/instances/99999999", 404 },
      { "GET", "/api/instances?limit=ten", 400 },
      { "GET", "/api/instances?after=-1", 400 },
      { "PUT", "/api/status", 405 },
      { "DELETE", "/api/instances/1", 405 },
      { "POST", "/api/status", 405 },
      { "POST", "/metrics", 401 }, -- a write path? only with the token
      { "GET", "/api/instances/1/retry", 405 },
      { "POST", "/api/instances/1/explode", 401 },
      { "GET", "/api/" .. string.rep("a", 3000), 414 },
    }
    for _, c in ipairs(cases) do
      local code, body = request(base, c[1], c[2])
      assert.equal(c[3], code, c[1] .. " " .. c[2])
      assert.is_string(body.error, c[1] .. " " .. c[2])
    end
    -- junk paths, the same every run
    local seed = 7
    for _ = 1, 200 do
      local len = 1 + seed % 40
      local chars = {}
      for k = 1, len do
        seed = (seed * 1103515245 + 12345) % 2147483648
        local b = 33 + seed % 94
        -- nothing curl would read as its own syntax or a query
        if b == 35 or b == 37 or b == 63 or b == 92 then
          b = 120
        end
        chars[k] = string.char(b)
      end
      local code = request(base, "GET", "/api/x" .. table.concat(chars))
      assert.is_true(code >= 400 and code < 500, table.concat(chars))
    end
    assert.equal(200, (request(base, "GET", "/api/status")))
  end)

  it("refuses a retry without the token, and changes nothing", function()
    local id = tostring(cli_json(env, "incidents")[1].instance)
    local before = env:snapshot()
    local code = request(base, "POST", "/api/instances/" .. id .. "/retry")
    assert.equal(401, code)
    code = request(base, "POST", "/api/instances/" .. id .. "/retry",
      { "Authorization: Bearer not-the-token" })
    assert.equal(401, code)
    assert.equal(before, env:snapshot())
    local body
    code, body = request(base, "POST", "/api/instances/" .. id .. "/retry",
      { "Authorization: Bearer " .. TOKEN })
    assert.equal(200, code)
    assert.equal("retried", body.done)
    assert.equal("ready", cli_json(env, "show", id).state)
    -- not in an incident any more
    code = request(base, "POST", "/api/instances/" .. id .. "/retry",
      { "Authorization: Bearer " .. TOKEN })
    assert.equal(409, code)
  end)

  it("lists the engines with the leases they hold", function()
    local plugins = assert(os.getenv("SY_TEST_PLUGINS"))
    local e2 = H.env { workflows = H.repo .. "/tests/fixtures/serve" }
    e2:ok("--plugins", plugins, "start", "held", "--count", "3")
    local engine = e2:spawn("--plugins", plugins, "run")
    local srv, url = e2:serve("--plugins", plugins)
    local leases = H.poll(20, 0.05, function()
      local _, html = request(url, "GET", "/")
      local n = tonumber(html:match("data%-leases>(%d+)<") or "")
      return n == 3 and n
    end)
    assert.equal(3, leases)
    -- (the engine waits a minute for its calls when stopped: killed here)
    H.signal(engine, "KILL")
    H.wait_exit(engine, 10)
    H.signal(srv, "TERM")
    assert.equal(0, H.wait_exit(srv, 10))
    H.rmdir(e2.dir)
  end)

  it("needs a token to listen off loopback, and refuses writes without one", function()
    local code, _, err = env:run("serve", "--listen", "0.0.0.0:0")
    assert.equal(2, code)
    assert.matches("is not loopback: give --token-file", err, 1, true)
    code, _, err = env:run("serve", "--listen", "nowhere")
    assert.equal(2, code)
    assert.matches("--listen: expected ADDR:PORT", err, 1, true)
    H.write(env:path("short"), "abc\n")
    code, _, err = env:run("serve", "--token-file", env:path("short"))
    assert.equal(2, code)
    assert.matches("at least 16 characters", err, 1, true)
    local open, url = env:serve()
    local id = tostring(cli_json(env, "incidents")[1].instance)
    local before = env:snapshot()
    assert.equal(403, (request(url, "POST",
      "/api/instances/" .. id .. "/cancel", { "Authorization: Bearer " .. TOKEN })))
    assert.equal(before, env:snapshot())
    H.signal(open, "TERM")
    assert.equal(0, H.wait_exit(open, 10))
  end)
end)
