-- End-to-end tests of the `switchyard` command line: every class of bad
-- input exits 2 with a message naming what was wrong and leaves the database
-- exactly as it was; the good paths (start, run, instances, show, incidents,
-- retry, cancel, definition pinning, SIGTERM, 10,000 instances) run the real
-- binary on temporary databases and check the result in the database.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")

local function count(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n
end

local function has(haystack, needle, what)
  assert(haystack:find(needle, 1, true),
    string.format("%s: expected to find %q in:\n%s", what or "output",
      needle, haystack))
end

local function instances_json(env, ...)
  local out = env:ok("--json", "instances", ...)
  return H.decode(out)
end

local function show_json(env, id)
  return H.decode((env:ok("--json", "show", tostring(id))))
end

local function steps_of(history)
  local s, o = {}, {}
  for i, r in ipairs(history) do
    s[i], o[i] = r.step, r.outcome
  end
  return table.concat(s, ","), table.concat(o, ",")
end

-- ---------------------------------------------------------------------
describe("switchyard rejects bad input with exit 2 and an untouched db", function()
  local env, done_id

  setup(function()
    -- One completed instance, so the db has content to keep unchanged and
    -- retry/cancel have a completed instance to refuse.
    env = H.env()
    done_id = assert(tonumber((env:ok("start", "hello", "--var",
      "user_id=seed")):match("^(%d+)\n$")))
    env:ok("run", "--until-idle")
    H.write(env:path("third_not_object.jsonl"),
      '{"user_id":"a"}\n{"user_id":"b"}\n[1, 2]\n{"user_id":"d"}\n')
    H.write(env:path("third_not_json.jsonl"),
      '{"user_id":"a"}\n{"user_id":"b"}\n{"user_id": oops\n{"user_id":"d"}\n')
    H.write(env:path("good.jsonl"), '{"user_id":"a"}\n')
  end)

  teardown(function()
    H.rmdir(env.dir)
  end)

  -- Runs `switchyard --db DB --workflows DIR <args>` (args may hold
  -- functions of env, resolved now); asserts exit 2, each expected string
  -- on stderr, and the database dump unchanged.
  local function rejects(args, expect, opts)
    local resolved = {}
    for i, a in ipairs(args) do
      resolved[i] = type(a) == "function" and a(env) or a
    end
    local before = env:snapshot()
    local code, out, err = env:raw(env:argv(table.unpack(resolved)), opts)
    assert.are.equal(2, code, "exit code; stdout: " .. out .. "stderr: " .. err)
    for _, e in ipairs(expect) do
      has(err, type(e) == "function" and e(env) or e, "stderr")
    end
    assert.are.equal(before, env:snapshot(), "the database changed")
    assert.are.equal(1, env:scalar("select count(*) from instances"))
    return err, out
  end

  local function file(name)
    return function(e)
      return e:path(name)
    end
  end

  local cases = {
    { "no command", {}, { "usage: switchyard" } },
    { "an unknown command", { "frobnicate" },
      { "unknown command 'frobnicate'", "usage:" } },
    { "start without a workflow", { "start" }, { "start: which workflow?" } },
    { "start with an unknown option", { "start", "hello", "--bogus" },
      { "start: unknown option '--bogus'" } },
    { "start with a stray argument", { "start", "hello", "extra" },
      { "unexpected argument 'extra'" } },
    { "--count 0", { "start", "hello", "--count", "0" },
      { "--count: expected an integer from 1 to 100000000, got '0'" } },
    { "--count -1", { "start", "hello", "--count", "-1" },
      { "--count: expected an integer", "got '-1'" } },
    { "--count abc", { "start", "hello", "--count", "abc" },
      { "--count: expected an integer", "got 'abc'" } },
    { "--count 5x", { "start", "hello", "--count", "5x" },
      { "--count: expected an integer", "got '5x'" } },
    { "--count without a value", { "start", "hello", "--count" },
      { "start: --count needs a value (N)" } },
    { "--var without =", { "start", "hello", "--var", "user_id" },
      { "--var: expected KEY=VALUE or KEY:=JSON, got 'user_id'" } },
    { "--var with an empty key", { "start", "hello", "--var", "=x" },
      { "--var: expected KEY=VALUE or KEY:=JSON, got '=x'" } },
    { "--var k:= with invalid JSON", { "start", "hello", "--var", "n:={oops" },
      { "--var n:={oops: invalid JSON" } },
    { "--var k:= with nothing", { "start", "hello", "--var", "n:=" },
      { "--var n:=: invalid JSON" } },
    { "--var k:={n}x (invalid JSON for every n) with --count 5",
      { "start", "hello", "--count", "5", "--var", "n:={n}x" },
      { "--var n:=1x: invalid JSON" } },
    { "--from a missing file", { "start", "hello", "--from", file("nope.jsonl") },
      { file("nope.jsonl"), "No such file or directory" } },
    { "--from a file whose 3rd line is not an object",
      { "start", "hello", "--from", file("third_not_object.jsonl") },
      { function(e)
        return e:path("third_not_object.jsonl") .. ":3:"
      end, "object" } },
    { "--from a file whose 3rd line is not JSON",
      { "start", "hello", "--from", file("third_not_json.jsonl") },
      { function(e)
        return e:path("third_not_json.jsonl") .. ":3:"
      end, "invalid JSON" } },
    { "--from - whose 3rd line is not an object", { "start", "hello", "--from", "-" },
      { "<stdin>:3:" }, { stdin = '{"user_id":"a"}\n{"user_id":"b"}\n"c"\n' } },
    { "--from with --var",
      { "start", "hello", "--from", file("good.jsonl"), "--var", "a=b" },
      { "--from takes vars from the file; it does not mix with --var" } },
    { "--from with --count",
      { "start", "hello", "--count", "2", "--from", file("good.jsonl") },
      { "does not mix with --var or --count" } },
    { "--from without a value", { "start", "hello", "--from" },
      { "start: --from needs a value (FILE|-)" } },
    { "start of a workflow that does not exist", { "start", "nosuch" },
      { "nosuch.lua: cannot open" } },
    { "run --concurrency 0", { "run", "--concurrency", "0" },
      { "--concurrency: expected an integer from 1 to 1000000, got '0'" } },
    { "run --concurrency abc", { "run", "--concurrency", "abc" },
      { "--concurrency: expected an integer", "got 'abc'" } },
    { "run with an unknown option", { "run", "--forever" },
      { "run: unknown option '--forever'" } },
    { "run with an operand", { "run", "now" },
      { "run: unexpected argument 'now'" } },
    { "a value given to an option that takes none", { "run", "--until-idle=yes" },
      { "run: unknown option '--until-idle=yes'" } },
    { "--sync bogus", { "--sync", "bogus", "run", "--until-idle" },
      { "--sync: expected full or normal, got 'bogus'" } },
    { "--db with no value", { "instances", "--db" }, { "--db needs a value" } },
    { "--db with an empty value", { "--db", "", "instances" },
      { "--db: empty path" } },
    { "show abc", { "show", "abc" },
      { "show: expected one instance id, got 'abc'" } },
    { "show 0", { "show", "0" }, { "got '0'" } },
    { "show 999 (no such instance)", { "show", "999" }, { "no instance 999" } },
    { "show without an id", { "show" }, { "got 'nothing'" } },
    { "retry 999", { "retry", "999" }, { "no instance 999" } },
    { "cancel 999", { "cancel", "999" }, { "no instance 999" } },
    { "retry abc", { "retry", "abc" }, { "retry: expected an instance id, got 'abc'" } },
    { "retry of a completed instance", { "retry", "1" },
      { "instance 1 is completed: only instances in an incident can be retried" } },
    { "cancel of a completed instance", { "cancel", "1" },
      { "instance 1 is completed: only ready, waiting or incident instances "
        .. "can be cancelled" } },
    { "instances --state bogus", { "instances", "--state", "bogus" },
      { "--state: expected ready, running, waiting, incident, completed or "
        .. "cancelled, got 'bogus'" } },
    { "instances --state without a value", { "instances", "--state" },
      { "instances: --state needs a value (S)" } },
    { "instances --limit -1", { "instances", "--limit", "-1" },
      { "--limit: expected a count (0 for all), got '-1'" } },
    { "instances --after x", { "instances", "--after", "x" },
      { "--after: expected an instance id, got 'x'" } },
    { "incidents with an unknown option", { "incidents", "--open" },
      { "incidents: unknown option '--open'" } },
    { "check with two workflows", { "check", "a.lua", "b.lua" },
      { "check: expected one workflow, got 'b.lua' too" } },
    { "check without a workflow", { "check" }, { "check: expected one workflow" } },
  }

  for _, c in ipairs(cases) do
    it(c[1], function()
      assert.are.equal(1, done_id)
      rejects(c[2], c[3], c[4])
    end)
  end

  -- Every class of bad workflow file: exit 2, file:line, nothing stored.
  local bad = {
    { "syntax.lua", 5, "'}' expected" },
    { "next_missing.lua", 6, "next step 'nowhere' does not exist" },
    { "start_missing.lua", 3, "start step 'begin' does not exist" },
    { "no_start.lua", 3, "has no start step" },
    { "option_type.lua", 6, "retries must be" },
    { "node_unknown.lua", 6, "unknown node type 'no_such_node'" },
    { "load_error.lua", 3, "boom while loading" },
    { "sandbox.lua", 3, "execute" },
    { "catch_missing.lua", 6,
      "catch['document_rejected'] names step 'manual_reveiw', which does " ..
      "not exist" },
    { "catch_self.lua", 6, "catch['*'] names the step itself" },
    { "retry_both.lua", 6, "retry_on and no_retry exclude each other" },
    { "code_bad.lua", 6, "no_retry: an error code is 1 to 64" },
    -- A plain table has no line of its own: the file is named.
    { "not_a_workflow.lua", nil, "must return sy.workflow" },
  }
  for _, b in ipairs(bad) do
    local path = H.fixtures .. "/bad/" .. b[1]
    local where = b[2] and (path .. ":" .. b[2] .. ":") or (path .. ":")
    it("a bad workflow file: " .. b[1] .. " (start)", function()
      rejects({ "start", path, "--count", "3" }, { where, b[3] })
      assert.are.equal(1, env:scalar("select count(*) from definitions"))
    end)
    it("a bad workflow file: " .. b[1] .. " (check)", function()
      rejects({ "check", path }, { where, b[3] })
    end)
  end

  -- Lua cuts chunk names to 60 bytes: a workflow deep in a company's tree
  -- must still be named whole, once, in every file:line the engine prints.
  it("a bad workflow under a path of over 150 characters is named whole",
    function()
      local deep = env.dir .. "/" .. string.rep("services-", 6) .. "/" ..
          string.rep("identity-team-", 5) .. "/" .. string.rep("w", 40)
      assert(#deep > 150)
      assert.are.equal(0, H.exec("mkdir -p " .. H.q(deep)))
      for _, b in ipairs(bad) do
        local path = deep .. "/" .. b[1]
        H.write(path, H.read(H.fixtures .. "/bad/" .. b[1]))
        local where = b[2] and (path .. ":" .. b[2] .. ":") or (path .. ":")
        local err = rejects({ "check", path }, { where, b[3] })
        local _, n = err:gsub(path:gsub("%p", "%%%0"), "")
        assert.are.equal(1, n, "the path once in: " .. err)
        assert.is_nil(err:find("%.%.%.[%w/_-]"), "a cut path in: " .. err)
      end
    end)

  it("a --from path that is a directory", function()
    -- Reading fails (EISDIR): that is bad input, not zero instances.
    local err = rejects({ "start", "hello", "--from", env.dir }, { env.dir })
    has(err, "--from", "stderr")
  end)
end)

-- ---------------------------------------------------------------------
describe("bad input on a fresh database", function()
  local env

  before_each(function()
    env = H.env()
  end)

  after_each(function()
    H.rmdir(env.dir)
  end)

  it("usage errors do not create the database file", function()
    for _, args in ipairs({ { "start" }, { "start", "hello", "--count", "0" },
      { "run", "--concurrency", "0" }, { "show", "abc" },
      { "instances", "--state", "bogus" } }) do
      local code = env:run(table.unpack(args))
      assert.are.equal(2, code, table.concat(args, " "))
    end
    assert.is_false(env:created(), "a usage error created " .. env.db)
  end)

  -- `start` is all or nothing ("One transaction: either every instance
  -- starts, or none does", cli.c); bad vars are found only after the
  -- workflow loaded, and its definition must not stay behind either.
  local function nothing_stored(args, opts)
    local code, _, err = env:raw(env:argv(table.unpack(args)), opts)
    assert.are.equal(2, code, err)
    if env:created() then
      assert.are.equal(0, env:scalar("select count(*) from instances"))
      assert.are.equal(0, env:scalar("select count(*) from definitions"),
        "a rejected start left its workflow's definition in the database")
    end
  end

  it("a rejected --var leaves no instance and no definition", function()
    nothing_stored({ "start", "hello", "--var", "n:={oops" })
  end)

  it("a rejected --from line 3 leaves no instance and no definition", function()
    nothing_stored({ "start", "hello", "--from", "-" },
      { stdin = '{"user_id":"a"}\n{"user_id":"b"}\nnope\n' })
  end)

  it("a --var key longer than 255 bytes is kept whole or rejected", function()
    local key = string.rep("k", 300)
    local code, out, err = env:run("start", "hello", "--var", key .. "=1")
    if code == 2 then
      has(err, "--var", "stderr")
      assert.are.equal(0, env:scalar("select count(*) from instances"))
    else
      assert.are.equal(0, code, err)
      local vars = show_json(env, tonumber(out:match("%d+"))).vars
      local got = next(vars)
      assert.are.equal(key, got, "the key was cut to " .. #got .. " bytes")
    end
  end)
end)

-- ---------------------------------------------------------------------
describe("start, run, instances, show", function()
  local env

  before_each(function()
    env = H.env()
  end)

  after_each(function()
    H.rmdir(env.dir)
  end)

  it("start prints the new instance's id and stores it ready", function()
    local out = env:ok("start", "hello", "--var", "user_id=u7", "--var",
      "tags:=[1,\"two\",{\"x\":null}]")
    local id = tonumber(out:match("^(%d+)\n$"))
    assert.is_not_nil(id, "stdout: " .. out)
    local list = instances_json(env)
    assert.are.equal(1, #list)
    assert.are.equal(id, list[1].id)
    assert.are.equal("hello", list[1].workflow)
    assert.are.equal("ready", list[1].state)
    assert.are.equal("greet", list[1].step)
    assert.are.equal("u7", list[1].vars.user_id)
    assert.are.same({ 1, "two", {} }, list[1].vars.tags)
    -- and a second one gets a different id
    local id2 = tonumber((env:ok("start", "hello", "--var", "user_id=u8"))
      :match("^(%d+)\n$"))
    assert.are_not.equal(id, id2)
  end)

  it("status reads kept counts; db recount makes them right after a hand edit",
    function()
      env:ok("start", "hello", "--count", "7", "--var", "user_id=u{n}")
      env:ok("run", "--until-idle")
      env:ok("start", "hello", "--count", "3", "--var", "user_id=v{n}")
      local status = H.decode((env:ok("--json", "status"))).hello
      assert.are.equal(7, status.completed)
      assert.are.equal(3, status.ready)
      assert.are.same({ corrected = 0 }, H.decode((env:ok("--json", "db", "recount"))))
      -- rows changed by hand, behind the store's back
      H.db_exec(env.db, "UPDATE instances SET state = 'cancelled' WHERE id <= 2")
      assert.are.equal(7, H.decode((env:ok("--json", "status"))).hello.completed)
      assert.has_error(function() env:assert_intact("after the hand edit") end)
      has(env:ok("db", "recount"), "2 (workflow, state) counts were wrong")
      status = H.decode((env:ok("--json", "status"))).hello
      assert.are.equal(5, status.completed)
      assert.are.equal(2, status.cancelled)
      assert.are.equal(3, status.ready)
      env:assert_intact("after the recount")
      has(env:ok("db", "recount"), "every count was right")
      local code, _, err = env:run("db", "recount", "extra")
      assert.are.equal(2, code)
      has(err, "unexpected argument 'extra'")
    end)

  it("--count 50 --var user_id=u{n}, run --until-idle, instances --json",
    function()
      local out = env:ok("start", "hello", "--count", "50", "--var",
        "user_id=u{n}", "--var", "n:={n}")
      has(out, "started 50 instances of hello")
      local _, err = env:ok("run", "--until-idle")
      has(err, "150 step runs, 50 instances completed, 0 retries, 0 incidents")
      local list = instances_json(env, "--state", "completed")
      assert.are.equal(50, #list)
      table.sort(list, function(a, b)
        return a.vars.n < b.vars.n
      end)
      for i, inst in ipairs(list) do
        assert.are.equal("completed", inst.state)
        assert.are.equal(i, inst.vars.n)
        assert.are.equal("u" .. i, inst.vars.user_id)
        assert.are.equal("hi u" .. i, inst.vars.greeting)
        assert.is_number(inst.ended_at)
      end
      assert.are.same({}, instances_json(env, "--state", "ready"))
      assert.are.equal(50, #instances_json(env, "--workflow", "hello"))
      assert.are.same({}, instances_json(env, "--workflow", "other"))
      -- the table form lists them too, one line each after the header
      local text = env:ok("instances", "--state", "completed")
      local lines = select(2, text:gsub("\n", ""))
      assert.are.equal(51, lines)
    end)

  it("--from - reads one object of vars per line from stdin", function()
    local code, out, err = env:run_stdin(
      '{"user_id":"a"}\n\n{"user_id":"b","n":2}\r\n{"user_id":"c"}', "start",
      "hello", "--from", "-")
    assert.are.equal(0, code, err)
    has(out, "started 3 instances of hello")
    env:ok("run", "--until-idle")
    local list = instances_json(env, "--state", "completed")
    assert.are.equal(3, #list)
    local users = {}
    for _, i in ipairs(list) do
      users[#users + 1] = i.vars.user_id .. "=" .. i.vars.greeting
    end
    table.sort(users)
    assert.are.same({ "a=hi a", "b=hi b", "c=hi c" }, users)
  end)

  it("--from FILE starts one instance per line", function()
    local lines = {}
    for i = 1, 25 do
      lines[i] = string.format('{"user_id":"f%d"}', i)
    end
    H.write(env:path("vars.jsonl"), table.concat(lines, "\n") .. "\n")
    local out = env:ok("start", "hello", "--from", env:path("vars.jsonl"))
    has(out, "started 25 instances of hello")
    assert.are.equal(25, #instances_json(env, "--state", "ready"))
  end)

  it("show ID --json has the instance and a history of 3 steps", function()
    local id = tonumber((env:ok("start", "hello", "--var", "user_id=s1"))
      :match("%d+"))
    env:ok("run", "--until-idle")
    local s = show_json(env, id)
    assert.are.equal(id, s.id)
    assert.are.equal("completed", s.state)
    assert.are.equal("hi s1", s.vars.greeting)
    assert.are.equal(64, #s.definition)
    assert.are.equal(3, #s.history)
    local steps, outcomes = steps_of(s.history)
    assert.are.equal("greet,nap,done", steps)
    assert.are.equal("ok,ok,ok", outcomes)
    for _, r in ipairs(s.history) do
      assert.are.equal(1, r.attempt)
      assert.is_true(r.ended_at >= r.started_at)
    end
    -- The nap step slept 50 ms on the loop: never less, since a sleep ends
    -- by the monotonic clock and a run's duration is measured by it,
    -- rounded down (a timer alone may fire up to 1 ms early).
    assert.is_true(s.history[2].duration_ms >= 50, "nap took " ..
      s.history[2].duration_ms .. " ms")
    assert.are.same({}, s.incidents)
    local text = env:ok("show", tostring(id))
    has(text, "instance " .. id)
    has(text, "history")
    has(text, "nap")
  end)

  it("check validates a workflow, and warns of unreachable steps", function()
    local out = env:ok("check", "hello")
    has(out, "workflow 'hello' is valid (3 steps, start 'greet'")
    local path = H.fixtures .. "/unreachable.lua"
    local code, out2, err = env:run("check", path)
    assert.are.equal(0, code, err)
    has(out2, "is valid")
    has(err, path .. ":10: warning: step 'orphan' is unreachable")
    assert.is_false(env:created(), "check touched the database")
    -- a warning does not stop a start
    code, _, err = env:run("start", path)
    assert.are.equal(0, code, err)
    has(err, "warning: step 'orphan' is unreachable")
  end)

  it("check warns when the file is not named after its workflow", function()
    local path = H.repo .. "/tests/fixtures/dsl/mismatch/x.lua"
    local code, out, err = env:run("check", path)
    assert.are.equal(0, code, err)
    has(out, "workflow 'y' is valid")
    has(err, path .. ":4: warning: the file declares workflow 'y': `start y` "
      .. "looks for y.lua")
    -- which is what start then does
    code, _, err = env:run("--workflows", H.repo .. "/tests/fixtures/dsl/mismatch",
      "start", "x")
    assert.are.equal(2, code)
    has(err, "declares workflow 'y', not 'x'")
    -- a file named after its workflow gets no such warning
    _, _, err = env:run("check", H.workflows .. "/hello.lua")
    assert.are.equal("", err)
  end)

  it("instances shows a page, says how many more, and pages with --after",
    function()
      env:ok("start", "hello", "--count", "250", "--var", "user_id=u{n}")
      local out = env:ok("instances")
      local lines = {}
      for line in out:gmatch("[^\n]+") do
        lines[#lines + 1] = line
      end
      assert.are.equal(102, #lines, "header, 100 rows and the trailer")
      assert.matches("^100 ", lines[101])
      assert.are.equal("... 150 more (the next page: --after 100; all: "
        .. "--limit 0)", lines[102])
      local page = instances_json(env, "--after", "100", "--limit", "100")
      assert.are.equal(100, #page)
      assert.are.equal(101, page[1].id)
      assert.are.equal(200, page[100].id)
      out = env:ok("instances", "--after", "200")
      has(out, "\n250 ")
      assert.is_nil(out:find("more", 1, true), "the last page says no more")
      -- JSON is not cut unless asked; the table gives everything with 0
      assert.are.equal(250, #instances_json(env))
      local _, n = env:ok("instances", "--limit", "0"):gsub("\n", "")
      assert.are.equal(251, n)
      -- filters apply to the count of what is left
      env:ok("run", "--until-idle")
      out = env:ok("instances", "--state", "completed", "--limit", "249")
      has(out, "... 1 more (the next page: --after 249;")
    end)

  it("takes global options after the command, and getopt forms", function()
    local out = env:ok("start", "hello", "--count=2", "--var=user_id=g{n}")
    has(out, "started 2 instances of hello")
    local rows = H.decode((env:ok("instances", "--json", "--limit=1")))
    assert.are.equal(1, #rows)
    assert.are.equal("g1", rows[1].vars.user_id)
  end)
end)

-- ---------------------------------------------------------------------
describe("help", function()
  it("lists every command, the plugins' included, and the global options",
    function()
      local env = H.env()
      local code, out = env:raw({ "--help" })
      assert.are.equal(0, code)
      for _, cmd in ipairs({ "start", "run", "check", "status", "instances",
        "show", "incidents", "retry", "cancel", "rollout", "report" }) do
        assert.matches("\n  " .. cmd .. " +%S", out)
      end
      has(out, "compare v1 and v2 of a flag")
      for _, opt in ipairs({ "--db PATH", "--workflows DIR", "--sync full|normal",
        "--set KEY=VALUE", "--json" }) do
        has(out, opt)
      end
      -- a command's own help: its synopsis and each of its options
      code, out = env:raw({ "instances", "--help" })
      assert.are.equal(0, code)
      has(out, "usage: switchyard [global options] instances [--state S]")
      has(out, "--after ID")
      has(out, "--limit N")
      -- a plugin's command answers its own --help
      code, out = env:raw({ "report", "--help" })
      assert.are.equal(0, code)
      has(out, "report FLAG")
      H.rmdir(env.dir)
    end)
end)

-- ---------------------------------------------------------------------
describe("incidents", function()
  it("name a workflow under a long path whole, in the list and in show",
    function()
      local env = H.env()
      local deep = env.dir .. "/" .. string.rep("a-long-directory-name/", 7)
      assert(#deep > 150)
      assert.are.equal(0, H.exec("mkdir -p " .. H.q(deep)))
      local path = deep .. "flaky.lua"
      H.write(path, H.read(H.fixtures .. "/flaky.lua"))
      local id = tonumber((env:ok("start", path, "--var",
        "fail_until:=99999999999")):match("^(%d+)\n$"))
      env:ok("run", "--until-idle")
      local inc = H.decode((env:ok("--json", "incidents")))
      assert.are.equal(1, #inc)
      local where = path .. ":15: not yet"
      assert.are.equal(where, inc[1].error:sub(1, #where))
      local s = show_json(env, id)
      assert.are.equal(where, s.history[1].error:sub(1, #where))
      H.rmdir(env.dir)
    end)

  it("are listed, retried back into the run, or cancelled", function()
    local env = H.env({ workflows = H.fixtures })
    local fail_until = os.time() + 3
    local function start(until_)
      return tonumber((env:ok("start", "flaky", "--var",
        "fail_until:=" .. until_)):match("^(%d+)\n$"))
    end
    local a, b, c = start(fail_until), start(fail_until), start(0)

    local code, _, err = env:run("run", "--until-idle")
    assert.are.equal(0, code, err)
    has(err, "1 instances completed, 0 retries, 2 incidents")
    assert(os.time() <= fail_until, "too slow: the run ended after fail_until")

    local inc = H.decode((env:ok("--json", "incidents")))
    assert.are.equal(2, #inc)
    table.sort(inc, function(x, y)
      return x.instance < y.instance
    end)
    assert.are.equal(a, inc[1].instance)
    assert.are.equal(b, inc[2].instance)
    for _, i in ipairs(inc) do
      assert.are.equal("flaky", i.workflow)
      assert.are.equal("check", i.step)
      has(i.error, "not yet: failing until " .. fail_until, "incident error")
      assert.is_nil(i.resolved_at)
    end
    local st = instances_json(env, "--state", "incident")
    assert.are.equal(2, #st)
    assert.are.equal("completed", show_json(env, c).state)

    -- cancel b: cancelled, its incident resolved as such
    local out = env:ok("cancel", tostring(b))
    has(out, "instance " .. b .. " cancelled")
    assert.are.equal("cancelled", show_json(env, b).state)
    inc = H.decode((env:ok("--json", "incidents")))
    assert.are.equal(1, #inc)
    assert.are.equal(a, inc[1].instance)
    local all = H.decode((env:ok("--json", "incidents", "--all")))
    assert.are.equal(2, #all)
    for _, i in ipairs(all) do
      if i.instance == b then
        assert.are.equal("cancelled", i.resolution)
        assert.is_number(i.resolved_at)
      end
    end
    code, _, err = env:run("cancel", tostring(b))
    assert.are.equal(2, code)
    has(err, "is cancelled")
    code, _, err = env:run("retry", tostring(b))
    assert.are.equal(2, code)
    has(err, "instance " .. b .. " is cancelled: only instances in an incident")

    -- retry a once its step can pass: back to ready, then completed
    assert(H.poll(10, 0.1, function()
      return os.time() > fail_until
    end))
    out = env:ok("retry", tostring(a))
    has(out, "instance " .. a .. " will run again")
    local sa = show_json(env, a)
    assert.are.equal("ready", sa.state)
    assert.are.equal("check", sa.step)
    assert.are.same({}, H.decode((env:ok("--json", "incidents"))))
    code, _, err = env:run("retry", tostring(a))
    assert.are.equal(2, code)
    has(err, "is ready: only instances in an incident can be retried")

    code, _, err = env:run("run", "--until-idle")
    assert.are.equal(0, code, err)
    has(err, "1 instances completed, 0 retries, 0 incidents")
    sa = show_json(env, a)
    assert.are.equal("completed", sa.state)
    assert.is_true(sa.vars.checked)
    assert.is_true(sa.vars.finished)
    local steps, outcomes = steps_of(sa.history)
    assert.are.equal("check,check,finish", steps)
    assert.are.equal("error,ok,ok", outcomes)
    has(sa.history[1].error, "not yet", "history error")
    assert.are.equal(1, #sa.incidents)
    assert.are.equal("retried", sa.incidents[1].resolution)
    -- the cancelled one did not run again
    local sb = show_json(env, b)
    assert.are.equal("cancelled", sb.state)
    assert.are.equal(1, #sb.history)
    H.rmdir(env.dir)
  end)
end)

-- ---------------------------------------------------------------------
describe("definition pinning", function()
  it("runs each instance on the definition it started with", function()
    local env = H.env()
    env.workflows = env:path("wf")
    H.exec("mkdir " .. H.q(env.workflows))
    local file = env.workflows .. "/pinned.lua"
    H.write(file, H.read(H.fixtures .. "/pinned_v1.lua"))
    local old = tonumber((env:ok("start", "pinned")):match("%d+"))
    H.write(file, H.read(H.fixtures .. "/pinned_v2.lua"))
    local new = tonumber((env:ok("start", "pinned")):match("%d+"))
    -- Once started, an instance needs its file no more.
    os.remove(file)
    local code, _, err = env:run("run", "--until-idle")
    assert.are.equal(0, code, err)
    local so, sn = show_json(env, old), show_json(env, new)
    assert.are.equal("completed", so.state)
    assert.are.equal("completed", sn.state)
    assert.are.equal("v1", so.vars.version)
    assert.is_nil(so.vars.extra)
    assert.are.equal("mark", (steps_of(so.history)))
    assert.are.equal("v2", sn.vars.version)
    assert.is_true(sn.vars.extra)
    assert.are.equal("mark,extra", (steps_of(sn.history)))
    assert.are_not.equal(so.definition, sn.definition)
    assert.are.equal(2, env:scalar("select count(*) from definitions " ..
      "where workflow = 'pinned'"))
    H.rmdir(env.dir)
  end)

  it("turns an instance whose stored definition no longer loads into an incident",
    function()
      local env = H.env()
      env.workflows = env:path("wf")
      H.exec("mkdir " .. H.q(env.workflows))
      local file = env.workflows .. "/pinned.lua"
      H.write(file, H.read(H.fixtures .. "/pinned_v1.lua"))
      local ids = {}
      for i = 1, 3 do
        ids[i] = tonumber((env:ok("start", "pinned")):match("%d+"))
      end
      H.write(file, H.read(H.fixtures .. "/pinned_v2.lua"))
      local good = tonumber((env:ok("start", "pinned")):match("%d+"))
      -- The first definition's stored source is damaged behind our back.
      local first = env:scalar("select def_hash from instances where id = " .. ids[1])
      env:sql("update definitions set source = 'return {' where hash = '" .. first .. "'")
      local code, _, err = env:run("run", "--until-idle")
      assert.are.equal(0, code, err)
      for _, id in ipairs(ids) do
        assert.are.equal("incident", show_json(env, id).state)
      end
      assert.are.equal("completed", show_json(env, good).state)
      assert.are.equal(3, env:scalar("select count(*) from incidents " ..
        "where step = 'mark' and error like '%no longer loads%'"))
      assert.are.equal(0, env:scalar("select count(*) from instances " ..
        "where owner is not null"))
      H.rmdir(env.dir)
    end)
end)

-- ---------------------------------------------------------------------
describe("SIGTERM", function()
  after_each(function()
    H.reap()
  end)

  it("stops a run promptly with exit 0; sleeping instances resume later",
    function()
      local env = H.env({ workflows = H.fixtures })
      local n, nap = 20, 8
      env:ok("start", "sleepy", "--count", tostring(n), "--var",
        "nap:=" .. nap)
      local p = env:spawn("run")
      -- every instance is parked in its long sleep, with its due time
      local asleep = H.poll(20, 0.05, function()
        return env:scalar("select count(*) from instances where step = 'nap' "
          .. "and state = 'waiting' and wake_at is not null") == n
      end)
      assert.is_truthy(asleep, "instances never all reached their sleep")
      local due = {}
      for _, r in ipairs(env:sql("select id, wake_at from instances")) do
        due[tonumber(r[1])] = tonumber(r[2])
      end
      local t0 = H.now()
      H.signal(p, "TERM")
      -- promptly: well before the sleeps (nap s) would have ended
      local rc = H.wait_exit(p, nap / 2)
      local took = H.now() - t0
      print(string.format("# SIGTERM: run exited after %.2f s", took))
      assert.are.equal(0, rc, "exit code (nil: still running); log:\n" ..
        (H.read(p.log) or ""))
      has(H.read(p.log), "SIGTERM received", "run's log")
      -- nothing is left 'running': the sleepers wait for their due time
      assert.are.same({ waiting = n }, env:states())
      assert.are.equal(n, env:scalar("select count(*) from step_runs"))

      local code, _, err = env:run("run", "--until-idle")
      assert.are.equal(0, code, err)
      assert.are.same({ completed = n }, env:states())
      for _, inst in ipairs(instances_json(env)) do
        assert.is_true(inst.vars.finished)
        -- the sleep was not cut short by the restart
        assert.is_true(inst.ended_at >= due[inst.id], "ended before due")
        local s = show_json(env, inst.id)
        local steps, outcomes = steps_of(s.history)
        assert.are.equal("begin,nap,finish", steps)
        assert.are.equal("ok,ok,ok", outcomes)
      end
      H.rmdir(env.dir)
    end)

  it("mid-run with many short sleeps in flight loses nothing", function()
    local env = H.env()
    local n = 3000
    env:ok("start", "hello", "--count", tostring(n), "--var", "user_id=u{n}")
    local p = env:spawn("run", "--concurrency", "200")
    local mid = H.poll(30, 0.01, function()
      return (env:states().completed or 0) >= 200
    end)
    assert.is_truthy(mid, "no progress")
    H.signal(p, "TERM")
    local rc = H.wait_exit(p, 10)
    assert.are.equal(0, rc, "log:\n" .. (H.read(p.log) or ""))
    local s = env:states()
    assert.is_nil(s.running, "instances left 'running' after SIGTERM")
    print(string.format("# SIGTERM mid-run: %d of %d completed", s.completed
      or 0, n))
    local code, _, err = env:run("run", "--until-idle")
    assert.are.equal(0, code, err)
    assert.are.same({ completed = n }, env:states())
    assert.are.equal(0, env:scalar("select count(*) from step_runs " ..
      "where outcome != 'ok'"))
    assert.are.equal(0, env:scalar("select count(*) from (select 1 from " ..
      "step_runs group by instance_id, step having count(*) != 1) t"))
    assert.are.equal(3 * n, env:scalar("select count(*) from step_runs"))
    H.rmdir(env.dir)
  end)
end)

-- ---------------------------------------------------------------------
describe("acceptance", function()
  it("10,000 instances of hello start, run until idle, and list", function()
    local env = H.env()
    local t0 = H.now()
    local out = env:ok("start", "hello", "--count", "10000", "--var",
      "user_id=u{n}")
    local t1 = H.now()
    has(out, "started 10000 instances of hello")
    local _, err = env:ok("run", "--until-idle")
    local t2 = H.now()
    has(err, "30000 step runs, 10000 instances completed")
    local list = instances_json(env, "--state", "completed")
    local t3 = H.now()
    assert.are.equal(10000, #list)
    local seen = {}
    for _, inst in ipairs(list) do
      local k = tonumber(inst.vars.user_id:match("^u(%d+)$"))
      assert.is_number(k)
      assert.is_nil(seen[k])
      seen[k] = true
      assert.are.equal("hi " .. inst.vars.user_id, inst.vars.greeting)
    end
    assert.are.equal(10000, count(seen))
    print(string.format("# 10,000 instances: start %.2f s, run --until-idle "
      .. "%.2f s, instances --json %.2f s", t1 - t0, t2 - t1, t3 - t2))
    H.rmdir(env.dir)
  end)
end)

-- ---------------------------------------------------------------------
describe("the sandbox and the limits", function()
  it("turn each misdeed into an incident of that instance only", function()
    local env = H.env({ workflows = H.fixtures })
    local marker = env:path("marker")
    local expect = {
      loop = "instruction budget exceeded",
      memory = "memory limit of the Lua state exceeded",
      os_execute = "attempt to call a nil value (field 'execute')",
      io = "attempt to index a nil value (global 'io')",
      require_c = "module 'lfs' is not available",
      debug = "attempt to index a nil value (global 'debug')",
      binary_chunk = "attempt to load a binary chunk",
      bad_var = "vars.callback: a function cannot be stored",
    }
    local ids = {}
    local function start(mode)
      local id = tonumber((env:ok("start", "limits", "--var", "mode=" .. mode,
        "--var", "marker=" .. marker)):match("%d+"))
      ids[id] = mode
    end
    start("ok")
    for mode in pairs(expect) do
      start(mode)
    end
    start("ok")
    -- small limits keep the runaway steps short
    local code, _, err = env:run("--step-instructions", "1000000",
      "--lua-memory", tostring(64 << 20), "run", "--until-idle")
    assert.are.equal(0, code, err)
    has(err, "2 instances completed, 0 retries, 8 incidents")
    for id, mode in pairs(ids) do
      local s = show_json(env, id)
      if mode == "ok" then
        assert.are.equal("completed", s.state)
      else
        assert.are.equal("incident", s.state, mode)
        assert.are.equal(1, #s.incidents, mode)
        has(s.incidents[1].error, expect[mode], "incident of mode " .. mode)
        assert.is_nil(s.vars.finished)
        assert.is_nil(s.vars.escaped)
      end
    end
    assert.is_false(H.exists(marker), "a step reached the file system")
    H.rmdir(env.dir)
  end)
end)

-- ---------------------------------------------------------------------
describe("more of the CLI", function()
  local env

  before_each(function()
    env = H.env({ workflows = H.fixtures })
  end)

  after_each(function()
    H.reap()
    H.rmdir(env.dir)
  end)

  it("incidents prints one line per incident", function()
    for _ = 1, 2 do
      env:ok("start", "flaky", "--var", "fail_until:=9999999999")
    end
    env:ok("run", "--until-idle")
    env:ok("cancel", "2")
    local out = env:ok("incidents", "--all")
    local lines = {}
    for l in out:gmatch("([^\n]*)\n") do
      lines[#lines + 1] = l
    end
    assert.are.equal(3, #lines, "header and 2 incidents, got:\n" .. out)
    assert.is_truthy(lines[3]:find("%[cancelled%]$"), lines[3])
  end)

  it("cancel stops a ready and a parked instance for good, not a running one",
    function()
      local ready = tonumber((env:ok("start", "sleepy")):match("%d+"))
      env:ok("cancel", tostring(ready))
      local parked = tonumber((env:ok("start", "sleepy", "--var", "nap:=30"))
        :match("%d+"))
      -- a sleep its step's timeout would end first stays in memory: running
      local held = tonumber((env:ok("start", H.fixtures .. "/held.lua"))
        :match("%d+"))
      local p = env:spawn("run")
      assert(H.poll(20, 0.05, function()
        return env:scalar("select count(*) from instances where (id = " ..
          parked .. " and state = 'waiting' and wake_at is not null) or (id = "
          .. held .. " and state = 'running' and step = 'hold')") == 2
      end), "never asleep")
      -- parked: no engine holds it, so it can go while the engine runs
      env:ok("cancel", tostring(parked))
      local code, _, err = env:run("cancel", tostring(held))
      assert.are.equal(2, code, "cancel of a running instance")
      has(err, "is running")
      H.signal(p, "TERM")
      assert.are.equal(0, H.wait_exit(p, 10))
      env:ok("cancel", tostring(held))
      env:ok("run", "--until-idle")
      for _, id in ipairs({ ready, parked, held }) do
        local s = show_json(env, id)
        assert.are.equal("cancelled", s.state)
        assert.is_number(s.ended_at)
        assert.is_nil(s.vars.finished)
      end
      assert.are.equal(0, #show_json(env, ready).history)
      assert.are.equal("begin", (steps_of(show_json(env, parked).history)))
    end)

  it("a running engine picks up instances started after it", function()
    local p = env:spawn("--sync", "normal", "run")
    env:ok("start", "sleepy", "--count", "5", "--var", "nap:=0.01")
    assert(H.poll(20, 0.05, function()
      return env:states().completed == 5
    end), "the running engine never completed the new instances")
    H.signal(p, "INT")
    assert.are.equal(0, H.wait_exit(p, 10))
    has(H.read(p.log), "SIGINT received", "run's log")
  end)

  -- Creating a new database races with any other process creating it:
  -- SQLite refuses some of those lock upgrades at once, without waiting,
  -- and each process must try again rather than fail (CI once saw `start`
  -- fail with "database is locked" beside a `run` that was just opening).
  it("processes opening one new database at once all succeed", function()
    local function cmd(e, out, ...)
      local words = { H.q(H.bin) }
      for _, a in ipairs(e:argv(...)) do
        words[#words + 1] = H.q(a)
      end
      return table.concat(words, " ") .. " >/dev/null 2>" .. H.q(out)
    end
    for round = 1, 20 do
      local e = H.env({ workflows = H.fixtures })
      local start = { "start", "sleepy", "--count", "3", "--var", "nap:=0.01" }
      -- one shell starts all three at the same moment, then waits for the
      -- two starts (the engine runs on, in the background)
      local script = "( " .. cmd(e, e:path("run.err"), "--sync", "normal",
          "run", "--until-idle") .. "; echo $? > " .. H.q(e:path("run.rc")) ..
          " ) & " ..
          cmd(e, e:path("a.err"), table.unpack(start)) .. " & a=$!; " ..
          cmd(e, e:path("b.err"), table.unpack(start)) .. "; b=$?; " ..
          "wait $a; a=$?; echo $a $b"
      local rcs = H.capture(script)
      assert.are.equal("0 0", rcs, string.format("round %d: %s%s", round,
        H.read(e:path("a.err")) or "", H.read(e:path("b.err")) or ""))
      local run_rc = H.poll(20, 0.02, function()
        local rc = H.read(e:path("run.rc"))
        return rc and tonumber(rc:match("%d+"))
      end)
      assert.are.equal(0, run_rc,
        "round " .. round .. ": run: " .. (H.read(e:path("run.err")) or ""))
      e:ok("run", "--until-idle")
      assert.are.same({ completed = 6 }, e:states(), "round " .. round)
      H.rmdir(e.dir)
    end
  end)

  it("instances --json of an empty database is an empty list", function()
    -- a database with no instances (reading commands refuse a missing one)
    env:ok("check", "limits")
    env:ok("rollout", "set", "empty", "1%", "--reason", "make the db")
    assert.are.same({}, instances_json(env))
    assert.are.same({}, H.decode((env:ok("--json", "incidents"))))
  end)

  it("reading commands refuse a database that does not exist", function()
    for _, cmd in ipairs { "instances", "incidents", "status" } do
      local code, _, err = env:run(cmd)
      assert.are.equal(2, code)
      has(err, "no database at", cmd)
    end
    assert.is_false(env:created())
  end)

  it("start rejects vars nested deeper than the engine can store", function()
    -- The engine refuses vars nested more than 64 levels when a step ends;
    -- accepted by start, such an instance could never take a step.
    local deep = string.rep("[", 100) .. string.rep("]", 100)
    local code, out, err = env:run("start", "limits", "--var", "mode=ok",
      "--var", "deep:=" .. deep)
    if code == 2 then
      has(err, "deep", "stderr")
      assert.are.equal(0, env:scalar("select count(*) from instances"))
      return
    end
    assert.are.equal(0, code, err)
    local id = tonumber(out:match("%d+"))
    env:ok("run", "--until-idle")
    local s = show_json(env, id)
    assert.are.equal("completed", s.state, "accepted, then: " ..
      ((s.history[1] or {}).error or s.state):sub(1, 200))
  end)

  it("a second engine on the same database does not run steps twice",
    function()
      -- Either the second `run` is refused while one is running, or the two
      -- share the work; never does a step of an instance run in both.
      local n = 20
      env:ok("start", "sleepy", "--count", tostring(n), "--var", "nap:=2")
      local p = env:spawn("run")
      assert(H.poll(20, 0.05, function()
        return env:scalar("select count(*) from instances where step = " ..
          "'nap' and state = 'waiting' and wake_at is not null") == n
      end), "never all asleep")
      local code, _, err = env:run("run", "--until-idle")
      H.signal(p, "TERM")
      assert.are.equal(0, H.wait_exit(p, 10))
      if code ~= 0 then
        print("# the second engine was refused: " .. err)
        env:ok("run", "--until-idle")
      end
      assert.are.same({ completed = n }, env:states())
      local dup = env:sql("select step, count(*) from step_runs group by " ..
        "instance_id, step having count(*) > 1")
      assert.are.equal(0, #dup, string.format("%d (instance, step) pairs ran "
        .. "more than once, e.g. step %s %s times", #dup,
        dup[1] and dup[1][1] or "", dup[1] and dup[1][2] or ""))
    end)
end)
