-- Background servers for the specs that talk HTTP: switchyard-mock (the
-- VerifyMeNow mock, scripts/mock_api/) and a header-echo server
-- (tests/fixtures/http/echo_server.py, run by python3 or $SY_PYTHON). Each
-- is
-- started on port 0; its port is read from its `listening on
-- 127.0.0.1:PORT` line with a bounded wait. Everything started is
-- remembered, so a spec's after_each / teardown can kill it by pid with
-- M.stop_all(), whatever the test did.
--
--   local M = require "mock"
--   local m = M.start{ "--v1-latency-ms", "300" }   -- m.url, m.port, m.pid
--   M.stats(m)          -- GET /stats, decoded
--   M.stop(m)           -- SIGTERM, then SIGKILL if it lingers
--   M.stop_all()
--
-- The mock binary is $SY_MOCK if set, else $SY_BUILD_DIR/switchyard-mock.
local json = require "dkjson"

local M = {}

local build_dir = os.getenv("SY_BUILD_DIR")
M.MOCK = os.getenv("SY_MOCK") or (build_dir and build_dir ..
  "/switchyard-mock")
M.ECHO = "tests/fixtures/http/echo_server.py"
M.PYTHON = os.getenv("SY_PYTHON") or "python3"

local started = {}

-- ---- small shell helpers ------------------------------------------------

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.q = q

local function exec(cmd)
  local ok, how, code = os.execute(cmd)
  if how == "signal" then
    return 128 + code
  end
  return code or (ok and 0 or 1)
end
M.exec = exec

local function read(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end
M.read = read

local function capture(cmd)
  local f = assert(io.popen(cmd, "r"))
  local s = f:read("a")
  f:close()
  return (s:gsub("\n$", ""))
end
M.capture = capture

local ok_sys, system = pcall(require, "system")

function M.now()
  if ok_sys and system.gettime then
    return system.gettime()
  end
  return tonumber(capture("date +%s.%N"))
end

function M.sleep(s)
  if ok_sys and system.sleep then
    system.sleep(s)
  else
    exec(string.format("sleep %.3f", s))
  end
end

-- Calls fn until it returns a true value or `timeout` seconds pass.
function M.poll(timeout, interval, fn)
  local deadline = M.now() + timeout
  repeat
    local v = fn()
    if v then
      return v
    end
    M.sleep(interval)
  until M.now() > deadline
  return nil
end

-- A fresh scratch directory under $TMPDIR.
function M.tmpdir(prefix)
  local d = capture('mktemp -d "${TMPDIR:-/tmp}/' .. (prefix or "sy") ..
    '.XXXXXX"')
  assert(d ~= "" and exec("test -d " .. q(d)) == 0, "mktemp -d failed")
  return d
end

local nfile = 0
local scratch

local function path(name)
  scratch = scratch or M.tmpdir("sy-mockhelper")
  nfile = nfile + 1
  return string.format("%s/%d-%s", scratch, nfile, name)
end

-- ---- background processes -------------------------------------------------

-- Whether p's pid still runs p.match (and is not a reused pid).
local function alive(p)
  local cmdline = read("/proc/" .. p.pid .. "/cmdline")
  return cmdline ~= nil and cmdline:find(p.match, 1, true) ~= nil
end

local function exit_code(p)
  if not p.rc then
    local s = read(p.rcfile)
    p.rc = s and tonumber(s:match("%d+"))
  end
  return p.rc
end
M.exit_code = exit_code

-- Starts argv in the background: the handle has pid (of the command itself,
-- sh execs it), out/err files and rcfile (its exit code, once it ended).
local function spawn(argv, match)
  local base = path("bg")
  local p = { pidfile = base .. ".pid", out = base .. ".out",
              err = base .. ".err", rcfile = base .. ".rc", match = match }
  local words = {}
  for i, a in ipairs(argv) do
    words[i] = q(a)
  end
  local inner = "sh -c 'echo $$ > \"$1\"; shift; exec \"$@\"' sh " ..
      q(p.pidfile) .. " " .. table.concat(words, " ")
  local cmd = "( " .. inner .. " </dev/null >" .. q(p.out) .. " 2>" ..
      q(p.err) .. "; echo $? > " .. q(p.rcfile .. ".tmp") .. "; mv " ..
      q(p.rcfile .. ".tmp") .. " " .. q(p.rcfile) ..
      " ) </dev/null >/dev/null 2>&1 &"
  assert(exec(cmd) == 0, "could not spawn: " .. cmd)
  p.pid = M.poll(10, 0.01, function()
    local s = read(p.pidfile)
    return s and tonumber(s:match("%d+"))
  end)
  assert(p.pid, "the background process never wrote its pid")
  started[#started + 1] = p
  return p
end

local function listening(p, what)
  local port = M.poll(10, 0.01, function()
    local out = read(p.out) or ""
    return out:match("^listening on 127%.0%.0%.1:(%d+)\n")
  end)
  if not port then
    M.stop(p)
    error(what .. " did not start: rc " .. tostring(exit_code(p)) ..
      "\nstdout: " .. (read(p.out) or "") .. "\nstderr: " ..
      (read(p.err) or ""), 2)
  end
  p.port = tonumber(port)
  p.url = "http://127.0.0.1:" .. port
  return p
end

-- Starts switchyard-mock on port 0 with these extra options.
function M.start(opts)
  assert(M.MOCK, "set SY_BUILD_DIR (ctest does) or SY_MOCK")
  assert(exec("test -x " .. q(M.MOCK)) == 0, M.MOCK .. " is not built " ..
    "(the switchyard-mock target)")
  local argv = { M.MOCK, "--port", "0" }
  for _, o in ipairs(opts or {}) do
    argv[#argv + 1] = o
  end
  return listening(spawn(argv, M.MOCK), "switchyard-mock")
end

-- Starts the echo server; every request it gets is appended, one JSON
-- object a line, to the handle's `log` file.
function M.start_echo()
  local log = path("echo.log")
  local p = listening(spawn({ M.PYTHON, M.ECHO, log }, M.ECHO),
    "echo server")
  p.log = log
  return p
end

-- The requests the echo server got so far, decoded, in arrival order.
function M.echo_log(e)
  local t = {}
  for line in (read(e.log) or ""):gmatch("[^\n]+") do
    t[#t + 1] = assert(json.decode(line))
  end
  return t
end

-- Stops p: SIGTERM, then SIGKILL after a second; waits for it to exit.
function M.stop(p)
  if not p or exit_code(p) or not alive(p) then
    return
  end
  exec("kill -TERM " .. p.pid .. " 2>/dev/null")
  if not M.poll(1, 0.02, function() return exit_code(p) end) and alive(p) then
    exec("kill -KILL " .. p.pid .. " 2>/dev/null")
    M.poll(10, 0.02, function() return exit_code(p) end)
  end
end

-- Stops everything started so far and removes its scratch files.
function M.stop_all()
  for _, p in ipairs(started) do
    M.stop(p)
  end
  started = {}
  if scratch and scratch:match("/sy%-mockhelper%.") then
    exec("rm -rf " .. q(scratch))
  end
  scratch = nil
end

-- A TCP port on 127.0.0.1 that nothing listens on: one a mock had, after
-- the mock stopped.
function M.closed_port()
  local m = M.start()
  local port = m.port
  M.stop(m)
  return port
end

-- ---- talking to a server with the curl command line ------------------------

-- GET url -> status, body.
function M.get(url)
  local body = path("body")
  local code = capture("curl -s --max-time 10 -o " .. q(body) ..
    " -w '%{http_code}' " .. q(url))
  return tonumber(code) or 0, read(body) or ""
end

function M.get_json(p, what)
  local status, body = M.get(p.url .. what)
  assert(status == 200, what .. ": HTTP " .. status .. " " .. body)
  return assert(json.decode(body), what .. ": not JSON: " .. body)
end

function M.stats(m)
  return M.get_json(m, "/stats")
end

M.json = json

return M
