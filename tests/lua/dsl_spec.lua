-- Loading and validating workflow files: every class of bad file fails
-- with "path:line: what", warnings carry file:line too, good files load,
-- and a failed load or start writes nothing to the database.
--
-- Fixtures live in tests/fixtures/dsl/. In a bad fixture the line the error
-- must name carries the comment `--@line`, so the spec reads the expected
-- line from the file rather than hard-coding it.
local T = require "switchyard.testing"
local D = require "testdb"

local DIR = "tests/fixtures/dsl/"

local function fixture(name)
  return DIR .. name .. ".lua"
end

-- The line of `path` marked with --@line.
local function marked_line(path)
  local n = 0
  for line in assert(io.lines(path)) do
    n = n + 1
    if line:find("--@line", 1, true) then
      return n
    end
  end
  error(path .. ": no --@line marker")
end

local function contains(haystack, needle)
  assert.is_string(haystack)
  assert.is_truthy(haystack:find(needle, 1, true),
    ("expected %q to contain %q"):format(haystack, needle))
end

-- Asserts that err is "path:<marked line>: ..." and mentions every gist.
local function assert_located(err, path, ...)
  assert.is_string(err, "expected an error message")
  contains(err, ("%s:%d:"):format(path, marked_line(path)))
  for _, gist in ipairs{ ... } do
    contains(err, gist)
  end
end

-- T.check on a fixture must fail; the error is located and explains itself.
local function check_fails(name, ...)
  local path = fixture(name)
  local ok, err = T.check(path)
  assert.is_nil(ok, path .. " loaded but must not")
  assert_located(err, path, ...)
  return err
end

local function new_engine(opts)
  opts = opts or {}
  opts.db = D.new()
  local e = T.engine(opts)
  return e, function()
    e:close()
    D.remove(opts.db)
  end
end

local function count(e, tbl)
  return e:sql("SELECT count(*) AS n FROM " .. tbl)[1].n
end

describe("workflow loading", function()
  describe("rejects", function()
    it("a Lua syntax error", function()
      check_fails("bad_syntax", "unexpected symbol", "'='")
    end)

    it("a file that does not return sy.workflow{}", function()
      -- The returned value carries no position, so the message names the
      -- file (not a line) and what it returned instead.
      local path = fixture("bad_not_workflow")
      local ok, err = T.check(path)
      assert.is_nil(ok)
      contains(err, path .. ": ")
      contains(err, "must return sy.workflow")
      contains(err, "table")
    end)

    it("a workflow without a name", function()
      check_fails("bad_missing_name", "workflow name must be a non-empty string")
    end)

    it("a name with characters outside letters, digits, _ - .", function()
      check_fails("bad_name_chars", "'hello world/../x'", "may only use")
    end)

    it("a workflow without a start", function()
      check_fails("bad_missing_start", "no start step")
    end)

    it("a start naming a step that does not exist", function()
      check_fails("bad_start_unknown", "start step 'begin' does not exist")
    end)

    it("an empty string as a next step", function()
      check_fails("bad_empty_next", "step 'a': next is an empty string, not a step name")
    end)

    it("a next naming a step that does not exist", function()
      check_fails("bad_next_unknown", "step 'b'", "'nowhere' does not exist")
    end)

    it("a step that is a plain function", function()
      check_fails("bad_step_function", "step 'a' is a function, not a step")
    end)

    it("a step that is a plain table", function()
      check_fails("bad_step_table", "step 'a' is a table, not a step")
    end)

    it("an unknown step option (a typo)", function()
      check_fails("bad_option_typo", "step 'b'", "unknown option 'retires'")
    end)

    it("retries given as a string", function()
      check_fails("bad_retries_string", "step 'b'", "retries must be an integer")
    end)

    it("negative retries", function()
      check_fails("bad_retries_negative", "step 'b'", "retries must be an integer from 0")
    end)

    it("fractional retries", function()
      check_fails("bad_retries_fraction", "step 'b'", "retries must be an integer")
    end)

    it("timeout given as a string", function()
      check_fails("bad_timeout_string", "step 'b'", "timeout must be a number", "string")
    end)

    it("a negative timeout", function()
      check_fails("bad_timeout_negative", "step 'b'", "timeout must be >= 0", "-1")
    end)

    it("backoff given as a string", function()
      check_fails("bad_backoff_string", "step 'b'", "backoff must be seconds or a table")
    end)

    it("a backoff table with an unknown key", function()
      check_fails("bad_backoff_key", "step 'b'", "backoff takes initial, factor and max")
    end)

    it("an unknown node type", function()
      check_fails("bad_node_type", "unknown node type 'nosuch'")
    end)

    it("an unknown workflow option", function()
      check_fails("bad_workflow_option", "unknown workflow option 'version'")
    end)

    it("a runtime error at the top level of the file", function()
      check_fails("bad_runtime_error", "limits.max is too high for this fixture")
    end)

    it("an endless loop at the top level, by the instruction budget", function()
      local path = fixture("bad_endless_loop")
      local e, done = new_engine{ step_instructions = 100000 }
      local t0 = os.clock()
      local name, err = e:load(path)
      local took = os.clock() - t0
      done()
      assert.is_nil(name)
      assert.is_true(took < 2, ("load took %.2fs of CPU"):format(took))
      assert_located(err, path, "instruction budget exceeded")
      -- With the default budget (what T.check uses) it fails too, in time.
      local ok, err2 = T.check(path)
      assert.is_nil(ok)
      assert_located(err2, path, "instruction budget exceeded")
    end)

    it("a file whose workflow name differs from the name it is started by", function()
      local dir = DIR .. "mismatch"
      local path = dir .. "/x.lua"
      local e, done = new_engine{ workflows = dir }
      local id, err = e:start("x", {})
      local ok, err2 = T.check("x", dir)
      done()
      assert.is_nil(id)
      assert_located(err, path, "declares workflow 'y'", "'x'")
      assert.is_nil(ok)
      assert_located(err2, path, "declares workflow 'y'", "'x'")
    end)
  end)

  describe("warnings", function()
    it("name an unreachable step with file:line, and the file still loads", function()
      local path = fixture("warn_unreachable")
      local ok, warnings = T.check(path)
      assert.is_true(ok)
      assert_located(warnings, path, "warning", "step 'orphan' is unreachable", "start 'a'")
      -- Only the orphan is reported.
      local _, n = warnings:gsub("is unreachable", "")
      assert.are.equal(1, n)
      local e, done = new_engine{}
      local name, w2 = e:load(path)
      done()
      assert.are.equal("warn_unreachable", name)
      contains(w2, "step 'orphan' is unreachable")
    end)

    it("are not given when a next function can reach any step", function()
      local path = fixture("next_function")
      local ok, warnings = T.check(path)
      assert.is_true(ok)
      assert.is_falsy(warnings and warnings:find("unreachable"),
        "unexpected warning: " .. tostring(warnings))
      -- and the function's choice is honoured at run time
      local e, done = new_engine{}
      local id = assert(e:start(path, { go = true }))
      e:run()
      local inst, hist = e:instance(id), e:history(id)
      done()
      assert.are.equal("completed", inst.state)
      assert.are.same({ "a", "maybe" }, { hist[1].step, hist[2].step })
    end)
  end)

  describe("accepts", function()
    it("workflows/hello.lua by name", function()
      local ok, warnings = T.check("hello")
      assert.is_true(ok)
      assert.are.equal("", warnings)
      local e, done = new_engine{}
      local name = e:load("hello")
      done()
      assert.are.equal("hello", name)
    end)

    it("a workflow using every option, and runs it", function()
      local path = fixture("good_all_options")
      local ok, warnings = T.check(path)
      assert.is_true(ok, warnings)
      assert.are.equal("", warnings)
      local e, done = new_engine{}
      local id = assert(e:start(path, {}))
      e:run()
      local inst, hist = e:instance(id), e:history(id)
      done()
      assert.are.equal("completed", inst.state)
      assert.are.equal(1, inst.vars.first)
      assert.is_true(inst.vars.second)
      assert.are.same({ "first", "second", "third" },
                      { hist[1].step, hist[2].step, hist[3].step })
    end)
  end)

  describe("a failed load or start", function()
    local bad = { "bad_syntax", "bad_not_workflow", "bad_option_typo",
                  "bad_next_unknown", "bad_node_type", "bad_runtime_error",
                  "bad_endless_loop", "bad_backoff_key" }

    it("leaves the database untouched", function()
      local e, done = new_engine{ step_instructions = 100000,
                                  workflows = DIR .. "mismatch" }
      for _, name in ipairs(bad) do
        local path = fixture(name)
        local id, err = e:start(path, { n = 1 })
        assert.is_nil(id, path)
        assert.is_string(err)
        local loaded = e:load(path)
        assert.is_nil(loaded, path)
      end
      assert.is_nil(e:start("x", {}))
      local instances, definitions = count(e, "instances"), count(e, "definitions")
      local runs, incidents = count(e, "step_runs"), count(e, "incidents")
      -- The same checks see a good start, so they are not vacuous.
      assert(e:start(fixture("good_all_options"), {}))
      local after_i, after_d = count(e, "instances"), count(e, "definitions")
      done()
      assert.are.same({ 0, 0, 0, 0 }, { instances, definitions, runs, incidents })
      assert.are.same({ 1, 1 }, { after_i, after_d })
    end)
  end)
end)
