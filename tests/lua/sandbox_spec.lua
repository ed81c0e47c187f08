-- The step sandbox, proven on real instances: every escape a step tries
-- fails, and with retries = 0 the failure becomes an incident whose error
-- says why; runaway and memory-hungry steps become incidents of their own
-- instance while the engine completes the others; vars that JSON cannot
-- hold fail the step naming the key path.
--
-- Fixtures: tests/fixtures/dsl/sandbox/. The pcall tricks run in a child
-- switchyard process killed after a few seconds, so an engine that cannot
-- stop them fails this spec instead of hanging it.
local T = require "switchyard.testing"
local D = require "testdb"

local DIR = "tests/fixtures/dsl/sandbox/"
local ESCAPE = DIR .. "escape.lua"
local POLITE = DIR .. "polite.lua"

local function contains(haystack, needle)
  assert.is_string(haystack)
  assert.is_truthy(haystack:find(needle, 1, true),
    ("expected %q to contain %q"):format(haystack, needle))
end

local remove_db = D.remove

-- Re-raises what a pcall caught (busted's failure objects intact), once
-- the engine it used is closed.
local function rethrow(ok, err)
  if not ok then
    error(err, 0)
  end
end

local function new_engine(opts)
  opts = opts or {}
  opts.db = D.new()
  local e = T.engine(opts)
  return e, function()
    e:close()
    remove_db(opts.db)
  end
end

-- Top-level vars, for failure messages.
local function show_vars(vars)
  local t = {}
  for k, v in pairs(vars or {}) do
    t[#t + 1] = k .. "=" .. (type(v) == "table" and "{...}" or tostring(v))
  end
  table.sort(t)
  return "{" .. table.concat(t, ", ") .. "}"
end

-- The instance is in `incident` after exactly one attempt (retries = 0),
-- and both its open incident and its history say `needle`.
local function assert_incident(e, id, needle)
  local inst = e:instance(id)
  assert.are.equal("incident", inst.state,
    ("instance %d is %s, vars %s"):format(id, inst.state, show_vars(inst.vars)))
  local incident
  for _, i in ipairs(e:incidents()) do
    if i.instance == id then
      incident = i
    end
  end
  assert.is_table(incident, "no open incident for instance " .. id)
  local hist = e:history(id)
  assert.are.equal(1, #hist)
  assert.are.equal("error", hist[1].outcome)
  contains(hist[1].error, needle)
  contains(incident.error, needle)
  return incident.error
end

-- Starts escape.lua with vars on a fresh engine, runs it to idle; calls
-- check(e, id) before the engine is closed.
local function probe(vars, check)
  local e, done = new_engine{ step_instructions = 1000000 }
  local ok, err = pcall(function()
    local id = assert(e:start(ESCAPE, vars))
    e:run()
    check(e, id)
  end)
  done()
  rethrow(ok, err)
end

local function refused(vars, needle)
  probe(vars, function(e, id)
    assert_incident(e, id, needle)
  end)
end

local function bytes_of(s)
  local t = {}
  for i = 1, #s do
    t[i] = s:byte(i)
  end
  return t
end

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function switchyard_binary()
  local bin = os.getenv("SWITCHYARD")
  if bin and bin ~= "" then
    return bin
  end
  -- Run by hand: this process is the binary, the shell's parent.
  local p = assert(io.popen("readlink /proc/$PPID/exe"))
  bin = p:read("l")
  p:close()
  return bin
end

-- Runs the Lua source `body` in a new switchyard process, SIGKILLed after
-- `seconds`. The body prints one line "RESULT <lua table constructor>".
-- Returns that table, or nil and what happened.
local function in_child(body, seconds)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write('local T = require "switchyard.testing"\n', body)
  f:close()
  local p = assert(io.popen(("timeout -s KILL %d %s lua %s 2>&1; echo \"exit=$?\"")
    :format(seconds, sh_quote(switchyard_binary()), sh_quote(script))))
  local out = p:read("a")
  p:close()
  os.remove(script)
  local result = out:match("RESULT (%b{})")
  if not result then
    local code = out:match("exit=(%d+)%s*$")
    return nil, code == "137"
      and ("still running after %ds, killed"):format(seconds)
      or ("exited %s: %s"):format(code, out:sub(-600))
  end
  return assert(load("return " .. result, "=result", "t", {}))()
end

describe("the step sandbox", function()
  describe("refuses", function()
    it("os.execute", function()
      local marker = os.tmpname()
      os.remove(marker)
      refused({ what = "os_execute", marker = marker },
              "attempt to call a nil value (field 'execute')")
      local leaked = io.open(marker)
      if leaked then
        leaked:close()
        os.remove(marker)
      end
      assert.is_nil(leaked, "os.execute ran: " .. marker .. " exists")
    end)

    it("io (it is nil)", function()
      local marker = os.tmpname()
      os.remove(marker)
      refused({ what = "io_open", marker = marker },
              "attempt to index a nil value (global 'io')")
      assert.is_nil(io.open(marker))
    end)

    it("require of os, io and ffi, with a clear message", function()
      for _, module in ipairs{ "os", "io", "ffi" } do
        refused({ what = "require", module = module },
                ("module '%s' is not available in a workflow"):format(module))
      end
    end)

    it("load of a binary chunk, whatever mode is asked for", function()
      local chunk = bytes_of(string.dump(function() return 42 end))
      for _, mode in ipairs{ false, "b", "bt" } do
        refused({ what = "load_binary", chunk = chunk, mode = mode or nil },
                "attempt to load a binary chunk")
      end
    end)

    it("debug (it is nil)", function()
      refused({ what = "debug_use" }, "attempt to index a nil value (global 'debug')")
    end)

    it("dofile and loadfile (they are nil)", function()
      refused({ what = "dofile" }, "attempt to call a nil value (global 'dofile')")
      refused({ what = "loadfile" }, "attempt to call a nil value (global 'loadfile')")
    end)

    it("string.dump", function()
      refused({ what = "string_dump" }, "attempt to call a nil value (field 'dump')")
    end)

    it("string.dump reached through the string metatable, ('').dump(f)", function()
      refused({ what = "string_method_dump" }, "attempt to call a nil value (field 'dump')")
    end)

    it("collectgarbage", function()
      refused({ what = "collectgarbage" }, "attempt to call a nil value (global 'collectgarbage')")
    end)

    it("setting a global inside a step", function()
      refused({ what = "set_global" }, "assignment to global 'leaked'")
    end)

    -- Globals are shared by every instance of a definition: a global set
    -- by one instance must not be seen by the next.
    for _, how in ipairs{ "rawset_global", "unfreeze_global" } do
      it(("smuggling a global to another instance (%s)"):format(how), function()
        local e, done = new_engine{}
        local writer = assert(e:start(ESCAPE, { what = how }))
        e:run()
        local reader = assert(e:start(ESCAPE, { what = "read_global" }))
        e:run()
        local w, r = e:instance(writer), e:instance(reader)
        done()
        assert.are.equal("completed", r.state)
        assert.is_nil(r.vars.leaked, ("instance %d read the global instance %d set (writer %s)")
          :format(reader, writer, w.state))
      end)
    end
  end)

  it("lets a step load text chunks, which run inside the sandbox", function()
    probe({ what = "load_text" }, function(e, id)
      local inst = e:instance(id)
      assert.are.equal("completed", inst.state)
      assert.are.equal(42, inst.vars.answer)
      assert.are.equal("nil nil nil function", inst.vars.seen)
    end)
  end)

  describe("instruction budget", function()
    it("stops an endless loop as an incident of that instance only", function()
      local e, done = new_engine{ step_instructions = 100000 }
      local ok, err = pcall(function()
        local before = assert(e:start(POLITE, {}))
        local bad = assert(e:start(DIR .. "runaway.lua", {}))
        local after = assert(e:start(POLITE, {}))
        local t0 = os.clock()
        local st = e:run()
        assert.is_true(os.clock() - t0 < 5)
        assert.are.equal(2, st.completed)
        assert.are.equal(1, st.incidents)
        assert.are.equal("completed", e:instance(before).state)
        assert.are.equal("completed", e:instance(after).state)
        assert.are.equal(1, #e:incidents())
        -- the engine keeps running
        local later = assert(e:start(POLITE, {}))
        e:run()
        assert.are.equal("completed", e:instance(later).state)
        assert.are.equal(500500, e:instance(later).vars.sum)
        assert_incident(e, bad, "instruction budget exceeded")
      end)
      done()
      rethrow(ok, err)
    end)

    local function child_body(db, how)
      return ([[
local e = T.engine{ db = %q, step_instructions = 100000 }
local bad = assert(e:start(%q, { how = %q }))
local good = assert(e:start(%q, {}))
e:run()
local h = e:history(bad)
print(("RESULT { state = %%q, attempts = %%d, error = %%q, other = %%q }"):format(
  e:instance(bad).state, #h, h[1] and h[1].error or "", e:instance(good).state))
e:close()
]]):format(db, DIR .. "pcall_runaway.lua", how, POLITE)
    end

    for _, how in ipairs{ "pcall", "xpcall", "coroutine" } do
      it(("is not swallowed forever by %s inside the step"):format(how), function()
        local db = D.new()
        local r, why = in_child(child_body(db, how), 5)
        remove_db(db)
        assert.is_table(r, why)
        assert.are.equal("incident", r.state)
        assert.are.equal(1, r.attempts)
        assert.are.equal("completed", r.other)
        contains(r.error, "instruction budget exceeded")
      end)
    end
  end)

  describe("vars that are not JSON", function()
    local cases = {
      { "a function", "function", "vars.bad: a function cannot be stored" },
      { "a table with mixed keys", "mixed", "vars.bad: a table with keys that are not strings" },
      { "an array with holes", "sparse", "vars.bad: a table with keys that are not strings" },
      { "NaN", "nan", "vars.bad: " },
      { "1/0", "inf", "vars.bad: inf cannot be stored as JSON" },
      { "a coroutine", "coroutine", "vars.bad: a thread cannot be stored" },
      { "a cycle", "cycle", "vars.bad.self.self" },
    }
    for _, c in ipairs(cases) do
      local label, what, needle = c[1], c[2], c[3]
      it(("fail the step naming the key: %s"):format(label), function()
        local e, done = new_engine{}
        local ok, err = pcall(function()
          local id = assert(e:start(DIR .. "badvars.lua", { what = what }))
          e:run()
          local msg = assert_incident(e, id, needle)
          if what == "nan" then
            contains(msg:lower(), "nan cannot be stored as json")
          end
          -- Nothing of the failed attempt was stored.
          local vars = e:instance(id).vars
          assert.are.equal(what, vars.what)
          assert.is_nil(vars.bad)
        end)
        done()
        rethrow(ok, err)
      end)
    end

    it("fail the step naming a nested key path", function()
      local e, done = new_engine{}
      local ok, err = pcall(function()
        local id = assert(e:start(DIR .. "badvars.lua", { what = "function", nested = true }))
        e:run()
        assert_incident(e, id, "vars.outer.list[2].bad: a function cannot be stored")
      end)
      done()
      rethrow(ok, err)
    end)
  end)

  describe("memory cap", function()
    it("turns unbounded allocation into an incident, and the engine goes on", function()
      local e, done = new_engine{ lua_memory = 64 * 1024 * 1024 }
      local ok, err = pcall(function()
        local before = assert(e:start(POLITE, {}))
        local hog = assert(e:start(DIR .. "hog.lua", {}))
        local st = e:run()
        assert.are.equal(1, st.incidents)
        assert.are.equal("completed", e:instance(before).state)
        assert_incident(e, hog, "memory limit of the Lua state exceeded")
        local ids = {}
        for i = 1, 20 do
          ids[i] = assert(e:start(POLITE, { n = i }))
        end
        e:run()
        for i = 1, 20 do
          assert.are.equal("completed", e:instance(ids[i]).state)
        end
      end)
      done()
      rethrow(ok, err)
    end)
  end)
end)
