-- switchyard.testing, the Lua half (the C half, testlua.c, hands it `core`):
-- what a workflow's busted spec uses to run it (README, "Testing your
-- workflows"). Built into the binary.
--
--   local T = require "switchyard.testing"
--   local e = T.engine { workflows = "workflows", virtual_time = true,
--                        force = { ["verifymenow-v2"] = "v2" } }
--   e:http("POST", "/v2/verify", { status = 200, json = { verified = true } })
--   local id = e:start("verify_identity", { subject = "s-1", document = "d" })
--   e:run()
--   e:instance(id).state, e:requests("/v2/verify"), e:decisions(id)
--
-- Under `switchyard test --faults`, the same hook that answers stubs also
-- records each external call (a ctx call that reaches a plugin) and, in the
-- runs that follow, fails the chosen one.
local core = ...
local shared = core.shared -- kept across spec files (see testlua.c)
local Engine = core.methods
local M = {}

local FAULT = {} -- the metatable of T.transport_error() and T.timeout()

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do
    c[k] = v
  end
  return c
end

-- ---------------------------------------------------------------------
-- Which spec test runs now (busted's events), kept in `shared`

-- The test's name as busted's --filter sees it, and its spec file.
local function full_name(busted, element)
  local names = { element.name or element.descriptor }
  local parent = busted.parent(element)
  while parent and (parent.name or parent.descriptor) and
      parent.descriptor ~= "file" do
    table.insert(names, 1, parent.name or parent.descriptor)
    parent = busted.parent(parent)
  end
  return table.concat(names, " "), parent and parent.name
end

local function append_line(path, value)
  local f = assert(io.open(path, "a"))
  f:write(core.json_encode(value), "\n")
  f:close()
end

local finish_test -- below: a fault run's result, written at the test's end

local function follow_busted()
  local ok, busted = pcall(require, "busted")
  if not ok or not pcall(function() return busted.subscribe end) or
      not busted.subscribe then
    return
  end
  shared.following = true
  busted.subscribe({ "test", "start" }, function(element)
    shared.test, shared.file = full_name(busted, element)
    return nil, true
  end)
  busted.subscribe({ "test", "end" }, function(element, parent, status)
    finish_test(status)
    shared.test = nil
    return nil, true
  end)
end

if not shared.following then
  shared.engines = setmetatable({}, { __mode = "k" }) -- open ones
  follow_busted()
end

-- ---------------------------------------------------------------------
-- Faults: recorded calls, and the one a fault run fails

local function site_of(call, arg)
  local s = { workflow = call.workflow, step = call.step, seq = call.seq,
              fn = call.fn }
  if call.fn == "http" and type(arg) == "table" then
    s.method = type(arg.method) == "string" and arg.method:upper() or "GET"
    s.url = tostring(arg.url)
  end
  return s
end

local function same_site(a, b)
  return a.workflow == b.workflow and a.step == b.step and a.seq == b.seq and
      a.fn == b.fn and a.method == b.method and a.url == b.url
end

-- The run's plan (--fault-run): which test, which sites, which fault.
local function fault_plan()
  if shared.run and shared.plan == nil then
    local f = assert(io.open(shared.run))
    shared.plan = assert(core.json_decode(f:read("a")))
    f:close()
  end
  return shared.plan
end

local function injected(call, arg)
  local plan = fault_plan()
  if not plan or shared.test ~= plan.test or shared.file ~= plan.file then
    return nil
  end
  local here = site_of(call, arg)
  for _, s in ipairs(plan.sites) do
    if same_site(s, here) then
      return plan.kind
    end
  end
end

local function call_timeout_ms(arg)
  local t = type(arg) == "table" and tonumber(arg.timeout) or nil
  return math.floor((t and t > 0 and t or 30) * 1000)
end

-- What a call gets for a fault of `kind`: as the http plugin would fail,
-- a timeout once the call's timeout has passed on the engine's clock.
local function fault_answer(kind, call, arg, message)
  local url = call.fn == "http" and type(arg) == "table" and
      tostring(arg.url) or nil
  local where = url and ("http: " .. url) or call.fn
  if kind == "http503" then
    return true, { status = 503, headers = {}, body = "" }
  elseif kind == "timeout" then
    local ms = call_timeout_ms(arg)
    return false, string.format(
      "%s: Operation timed out after %d milliseconds with 0 bytes received",
      where, ms), ms / 1000
  end
  return false, string.format("%s: %s", where,
    message or "Failed to connect: Connection refused")
end

-- ---------------------------------------------------------------------
-- Stubs

local function is_list(t)
  return type(t) == "table" and getmetatable(t) ~= FAULT and t[1] ~= nil
end

-- A response as the http plugin gives it.
local function response(answer)
  if type(answer) ~= "table" then
    error("a stub's answer must be a table (status, json, body, headers), " ..
      "a function, T.transport_error() or T.timeout(), not a " ..
      type(answer), 0)
  end
  local headers = {}
  for k, v in pairs(answer.headers or {}) do
    headers[tostring(k):lower()] = tostring(v)
  end
  local body = answer.body
  if answer.json ~= nil then
    body = body or core.json_encode(answer.json)
    headers["content-type"] = headers["content-type"] or "application/json"
  end
  return { status = answer.status or 200, headers = headers,
           body = body or "", json = answer.json }
end

-- The stub's next answer: the list's next one, the last repeating.
local function next_answer(stub)
  stub.used = stub.used + 1
  return stub.answers[math.min(stub.used, #stub.answers)]
end

local function resolve(answer, call, arg, req)
  if type(answer) == "function" then
    answer = answer(req or arg, call)
  end
  if getmetatable(answer) == FAULT then
    return fault_answer(answer.kind, call, arg, answer.message)
  end
  if call.fn == "http" then
    return true, response(answer), answer.delay
  end
  return true, answer
end

local function url_matches(matcher, url)
  if type(matcher) == "function" then
    return matcher(url) and true or false
  end
  return url:find(matcher, 1, true) ~= nil
end

local function http_call(st, call, arg)
  local a = type(arg) == "table" and arg or {}
  local req = { method = type(a.method) == "string" and a.method:upper() or
                    "GET",
                url = tostring(a.url), headers = a.headers or {},
                body = a.body, json = a.json, instance = call.instance,
                workflow = call.workflow, step = call.step,
                attempt = call.attempt, seq = call.seq }
  st.requests[#st.requests + 1] = req
  for i = #st.stubs, 1, -1 do
    local s = st.stubs[i]
    if (s.method == "*" or s.method == req.method) and
        url_matches(s.url, req.url) then
      return resolve(next_answer(s), call, arg, req)
    end
  end
  return false, string.format("http: no stub matches %s %s " ..
    "(switchyard.testing: add one with e:http)", req.method, req.url)
end

local function on_call(st, call, arg)
  local here
  if shared.record and shared.test then
    here = site_of(call, arg)
    here.file, here.test = shared.file, shared.test
    append_line(shared.record, here)
  end
  local kind = injected(call, arg)
  if kind then
    st.faulted[call.instance] = true
    shared.hits = (shared.hits or 0) + 1
    return fault_answer(kind, call, arg)
  end
  if call.fn == "http" and (st.offline or #st.stubs > 0) then
    return http_call(st, call, arg)
  end
  local s = st.fn_stubs[call.fn]
  if s then
    return resolve(next_answer(s), call, arg)
  end
  return nil
end

-- ---------------------------------------------------------------------
-- Engines

-- Per engine: its stubs, requests and faults (in `shared`, as the module
-- is opened again for each spec file while engines and methods stay).
shared.state = shared.state or setmetatable({}, { __mode = "k" })
local state = shared.state

local function st_of(e)
  return state[e] or error("not an engine of switchyard.testing", 3)
end

-- What an instance that got a fault did: completed (its step or a handler
-- coped, or a retry did), or where it stopped.
local function outcome_of(e, id)
  local i = e:instance(id)
  if not i then
    return "gone"
  end
  if i.state == "completed" then
    for _, r in ipairs(e:history(id)) do
      if r.handler then
        return "completed through handler " .. r.handler
      end
    end
    return "completed"
  end
  return i.state .. " at " .. tostring(i.step)
end

local function snapshot(e)
  local st = state[e]
  if st and next(st.faulted) then
    for id in pairs(st.faulted) do
      st.outcomes[id] = outcome_of(e, id)
    end
    shared.outcomes = shared.outcomes or {}
    shared.outcomes[st] = st.outcomes
  end
end

shared.core_run = shared.core_run or Engine.run
shared.core_close = shared.core_close or Engine.close
local core_run, core_close = shared.core_run, shared.core_close

-- T.engine { db =, workflows =, plugins =, settings =, concurrency =, seed =,
--            virtual_time = true, force = { [flag] = "v1" | "v2" },
--            offline = true }
-- db defaults to a database in memory; virtual_time makes sleeps, parked
-- waits, backoffs and timeouts take no wall-clock time; offline fails
-- every ctx.http no stub answers (as having any stub does).
function M.engine(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("T.engine: expected a table of options, got a " .. type(opts), 2)
  end
  local o = copy(opts)
  o.settings = copy(o.settings)
  o.db = o.db or ":memory:"
  if o.virtual_time then
    o.settings["clock.virtual"] = "1"
  end
  for flag, version in pairs(o.force or {}) do
    if version ~= "v1" and version ~= "v2" then
      error(string.format("T.engine: force[%q]: expected \"v1\" or \"v2\", " ..
        "got %s", tostring(flag), tostring(version)), 2)
    end
    o.settings["choose_version.force." .. flag] = version
  end
  local e = core.engine(o)
  local st = { stubs = {}, fn_stubs = {}, requests = {}, faulted = {},
               outcomes = {}, offline = o.offline }
  state[e] = st
  shared.engines[e] = true
  e:on_call(function(call, arg)
    return on_call(st, call, arg)
  end)
  return e
end

function Engine:run(...)
  local ok, r = pcall(core_run, self, ...)
  snapshot(self)
  if not ok then
    error(r, 2)
  end
  return r
end

function Engine:close()
  if state[self] then
    pcall(snapshot, self)
  end
  return core_close(self)
end

-- e:http([method,] url, answer): ctx.http calls whose method is `method`
-- ("*" or absent: any) and whose URL contains `url` (or for which the
-- function `url` returns true) get `answer`: a table { status = 200,
-- json = {...} | body = "...", headers = {...}, delay = seconds (of the
-- engine's time before it answers) }, a function(request)
-- returning one, T.transport_error([message]), T.timeout(), or a list of
-- those given in turn (the last one repeats). The latest matching stub
-- answers. Once an engine has a stub, a ctx.http no stub matches fails.
local function check_answer(answer, what)
  local t = type(answer)
  if t ~= "table" and t ~= "function" then
    error(what .. ": the answer must be a table, a list of them, a " ..
      "function, T.transport_error() or T.timeout(), not a " .. t, 3)
  end
end

function Engine:http(...)
  local st = st_of(self)
  local method, url, answer = ...
  if select("#", ...) == 2 then
    method, url, answer = "*", method, url
  end
  check_answer(answer, "e:http")
  if type(method) ~= "string" then
    error("e:http: the method must be a string such as \"POST\" or \"*\"", 2)
  end
  if type(url) ~= "string" and type(url) ~= "function" then
    error("e:http: the URL must be a string (a part of the URL) or a " ..
      "function(url)", 2)
  end
  st.stubs[#st.stubs + 1] = { method = method:upper(), url = url,
                              answers = is_list(answer) and answer or
                                  { answer },
                              used = 0 }
  return self
end

-- e:stub(fn, answer): every ctx.<fn> call (a plugin's function other than
-- http) gets `answer`: a value, a function(arg) returning one,
-- T.transport_error() or T.timeout(), or a list of those in turn.
function Engine:stub(fn, answer)
  local st = st_of(self)
  if type(fn) ~= "string" then
    error("e:stub: the name of a ctx function, such as \"notify\"", 2)
  end
  if answer == nil then
    error("e:stub: what should ctx." .. fn .. " answer?", 2)
  end
  st.fn_stubs[fn] = { answers = is_list(answer) and answer or { answer },
                      used = 0 }
  return self
end

-- e:requests([url]) -> the ctx.http requests the stubs saw (those whose URL
-- contains `url`), oldest first: { method, url, headers, body, json,
-- instance, workflow, step, attempt, seq }.
function Engine:requests(url)
  local out = {}
  for _, r in ipairs(st_of(self).requests) do
    if url == nil or r.url:find(url, 1, true) then
      out[#out + 1] = r
    end
  end
  return out
end

-- e:decisions(id) -> the choose_version decisions of the instance:
-- { flag, step, subject, version, reason, rate_ppm }, in order.
function Engine:decisions(id)
  return self:sql("SELECT flag, step, subject, version, reason, rate_ppm " ..
    "FROM cv_decisions WHERE instance_id = ? ORDER BY decided_at, step", id)
end

-- T.transport_error([message]) and T.timeout(): answers of a stub that
-- fail the call as a refused connection or a timeout would.
function M.transport_error(message)
  return setmetatable({ kind = "transport", message = message }, FAULT)
end

function M.timeout()
  return setmetatable({ kind = "timeout" }, FAULT)
end

M.check = core.check

-- T.expect_fault(step, outcome): under `switchyard test --faults`, a fault in
-- any call of `step` must leave the instance `outcome` ("completed",
-- "incident", "incident at verify_v1", ...: the start of what the table
-- says), or the run fails. Elsewhere it does nothing.
function M.expect_fault(step, outcome)
  if type(step) ~= "string" or type(outcome) ~= "string" then
    error("T.expect_fault(step, outcome): two strings, such as " ..
      "(\"notify\", \"completed\")", 2)
  end
  if shared.record then
    local src = debug.getinfo(2, "S").source
    append_line(shared.record, { expect = true, step = step,
                                 outcome = outcome,
                                 file = src:match("^@(.*)") or src })
  end
end

-- The end of a test in a fault run: what the faulted instances did.
finish_test = function(status)
  local plan = fault_plan()
  if not plan or shared.test ~= plan.test or shared.file ~= plan.file then
    return
  end
  for e in pairs(shared.engines) do
    if state[e] then
      pcall(snapshot, e)
    end
  end
  local outcomes = {}
  for _, per in pairs(shared.outcomes or {}) do
    for _, o in pairs(per) do
      outcomes[#outcomes + 1] = o
    end
  end
  table.sort(outcomes)
  append_line(shared.run .. ".out", { status = status, hits = shared.hits or 0,
                                      outcomes = outcomes })
end

-- ---------------------------------------------------------------------
-- switchyard test --faults: the driver (one process per run)

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_lines(path)
  local out = {}
  local f = io.open(path)
  if not f then
    return out
  end
  for line in f:lines() do
    out[#out + 1] = assert(core.json_decode(line))
  end
  f:close()
  return out
end

local function escape_pattern(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

local KINDS = { "transport", "http503", "timeout" }
local KIND_NAMES = { transport = "transport error", http503 = "HTTP 503",
                     timeout = "timeout" }

local function site_text(s)
  local t = string.format("%s.%s #%d", s.workflow, s.step, s.seq)
  if s.method then
    return t .. " " .. s.method .. " " .. s.url
  end
  return t .. " ctx." .. s.fn
end

-- The combinations of `n` (1 or 2) sites of one test, in recorded order.
local function combinations(sites, n)
  local out = {}
  for i = 1, #sites do
    if n == 1 then
      out[#out + 1] = { sites[i] }
    else
      for j = i + 1, #sites do
        out[#out + 1] = { sites[i], sites[j] }
      end
    end
  end
  return out
end

function M._faults_main(args, n, workflows, plugins)
  local exe = shared.exe
  local tmp = os.tmpname()
  os.remove(tmp)
  assert(os.execute("mkdir -m 700 " .. q(tmp)))
  local globals = "--workflows " .. q(workflows) ..
      (plugins ~= "" and (" --plugins " .. q(plugins)) or "")
  local passed = {}
  for i = 1, #args do
    passed[#passed + 1] = q(args[i])
  end
  local rest = table.concat(passed, " ")
  local function run(extra, filter, file, out)
    local cmd = string.format("%s %s test %s %s -o TAP %s > %s 2>&1", q(exe),
      globals, extra, filter and ("--filter=" .. q(filter)) or "",
      file and q(file) or rest, q(out))
    local ok = os.execute(cmd)
    return ok == true
  end

  -- The plain run: which calls each test makes, and what is expected.
  local record = tmp .. "/record"
  local plain_ok = run("--fault-record=" .. q(record), nil, nil,
    tmp .. "/plain.log")
  local tests, order, expects = {}, {}, {}
  for _, r in ipairs(read_lines(record)) do
    if r.expect then
      expects[#expects + 1] = r
    else
      local key = r.file .. "\0" .. r.test
      local t = tests[key]
      if not t then
        t = { file = r.file, test = r.test, sites = {} }
        tests[key] = t
        order[#order + 1] = t
      end
      local seen = false
      for _, s in ipairs(t.sites) do
        seen = seen or same_site(s, r)
      end
      if not seen then
        t.sites[#t.sites + 1] = r
      end
    end
  end
  if not plain_ok then
    local f = io.open(tmp .. "/plain.log")
    io.stderr:write(f and f:read("a") or "", "\n")
    if f then f:close() end
    io.stderr:write("switchyard test --faults: the specs fail without any " ..
      "fault; fix them first\n")
    os.execute("rm -rf " .. q(tmp))
    return 1
  end

  local rows, unexpected, runs = {}, 0, 0
  for _, t in ipairs(order) do
    for _, combo in ipairs(combinations(t.sites, n)) do
      for _, kind in ipairs(KINDS) do
        local applies = true
        for _, s in ipairs(combo) do
          applies = applies and (kind ~= "http503" or s.fn == "http")
        end
        if applies then
          runs = runs + 1
          local plan = tmp .. "/plan" .. runs
          local f = assert(io.open(plan, "w"))
          f:write(core.json_encode({ file = t.file, test = t.test,
                                     sites = combo, kind = kind }))
          f:close()
          local spec_ok = run("--fault-run=" .. q(plan),
            "^" .. escape_pattern(t.test) .. "$", t.file, plan .. ".log")
          local res = read_lines(plan .. ".out")[1]
          local did
          if not res then
            did = "(the test did not run)"
          elseif res.hits == 0 then
            did = "(call not made again)"
          else
            local seen, list = {}, {}
            for _, o in ipairs(res.outcomes) do
              if not seen[o] then
                seen[o] = true
                list[#list + 1] = o
              end
            end
            did = #list > 0 and table.concat(list, "; ") or "(no instance)"
          end
          local names = {}
          for _, s in ipairs(combo) do
            names[#names + 1] = site_text(s)
          end
          local verdict = ""
          for _, x in ipairs(expects) do
            for _, s in ipairs(combo) do
              if x.file == t.file and x.step == s.step then
                if did:sub(1, #x.outcome) == x.outcome then
                  verdict = "as expected"
                else
                  verdict = "UNEXPECTED: expected " .. x.outcome
                  unexpected = unexpected + 1
                end
              end
            end
          end
          rows[#rows + 1] = { table.concat(names, " + "), KIND_NAMES[kind],
                              did, spec_ok and "passed" or "failed", verdict,
                              t.test }
        end
      end
    end
  end

  local heads = { "call site", "fault", "instance did", "spec", "expected" }
  local width = {}
  for c = 1, #heads do
    width[c] = #heads[c]
    for _, r in ipairs(rows) do
      width[c] = math.max(width[c], #r[c])
    end
  end
  local function line(cells)
    local out = {}
    for c = 1, #heads do
      out[c] = cells[c] .. string.rep(" ", width[c] - #cells[c])
    end
    print((table.concat(out, "  "):gsub("%s+$", "")))
  end
  local last_test
  for _, r in ipairs(rows) do
    if r[6] ~= last_test then
      print((last_test and "\n" or "") .. "test: " .. r[6])
      last_test = r[6]
      line(heads)
    end
    line(r)
  end
  print(string.format("\n%d runs, each with %d call%s failing%s", runs, n,
    n > 1 and "s" or "",
    unexpected > 0 and string.format(": %d not as expected", unexpected)
      or ""))
  os.execute("rm -rf " .. q(tmp))
  return unexpected > 0 and 1 or 0
end

return M
