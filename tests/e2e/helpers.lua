-- Helpers of the end-to-end specs: run the real `switchyard` binary (the
-- one ctest names in $SWITCHYARD) on temporary databases, read those
-- databases with the sqlite3 CLI (a separate process, so a check never
-- shares a connection with, or runs recovery for, the engine under test),
-- and run engines in the background to stop or kill them.
--
--   local H = dofile(spec_dir .. "/helpers.lua")
--   local env = H.env()                 -- a temp dir, a db, workflows dir
--   local code, out, err = env:run("start", "hello", "--var", "k=v")
--   env:scalar("select count(*) from instances")   -> "1"
--   local p = env:spawn("run")          -- p.pid; H.wait_exit(p, 10) -> rc
local H = {}

local json = require "dkjson"
H.json = json
-- busted's assert (this file runs outside a spec's environment)
local assert = require "luassert"

H.bin = assert(os.getenv("SWITCHYARD"),
  "SWITCHYARD is not set: run the e2e specs through ctest")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

-- The backend the specs run on: "sqlite" (a file per test environment),
-- or "pg" when ctest runs them again on PostgreSQL (tests/lua/testdb.lua),
-- which also quotes for sh and captures a command's output.
local D = require "testdb"
H.backend, H.sqlite = D.backend, D.sqlite
H.is_url, H.psql, H.rows = D.is_url, D.psql, D.rows
H.q, H.capture, H.db_exec = D.q, D.capture, D.exec

-- Runs a shell command, returns its exit code (128 + n for a signal).
function H.exec(cmd)
  local ok, how, code = os.execute(cmd)
  if how == "signal" then
    return 128 + code
  end
  return code or (ok and 0 or 1)
end


H.repo = H.capture("cd " .. H.q(here .. "/../..") .. " && pwd -P")
H.workflows = H.repo .. "/workflows"
H.fixtures = H.repo .. "/tests/fixtures/e2e"

function H.read(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end

function H.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

function H.exists(path)
  return H.exec("test -e " .. H.q(path)) == 0
end

function H.sleep(seconds)
  H.exec("sleep " .. string.format("%.3f", seconds))
end

-- Wall clock in seconds, with sub-second precision when lua-system (a busted
-- dependency) is there.
local ok_sys, system = pcall(require, "system")
function H.now()
  if ok_sys and system.gettime then
    return system.gettime()
  end
  return tonumber(H.capture("date +%s.%N"))
end

-- Calls fn until it returns a true value or `timeout` seconds pass; returns
-- that value, or nil and the last one on time-out. Polling with a bound,
-- never a bare sleep, decides what a test waits for.
function H.poll(timeout, interval, fn)
  local deadline = H.now() + timeout
  local last
  repeat
    local v = fn()
    if v then
      return v
    end
    last = v
    H.sleep(interval)
  until H.now() > deadline
  return nil, last
end

-- A fresh directory under $TMPDIR (the build's test-tmp under ctest).
function H.tmpdir()
  local d = H.capture('mktemp -d "${TMPDIR:-/tmp}/sy-e2e.XXXXXX"')
  assert(d ~= "" and H.exists(d), "mktemp -d failed")
  return d
end

function H.decode(text)
  local v, _, err = json.decode(text, 1, nil)
  assert(v ~= nil, "not JSON (" .. tostring(err) .. "): " .. text:sub(1, 300))
  return v
end

-- Every process spawned in the background, so a failing test can still
-- reap what it started (by pid, nothing else).
local spawned = {}

local Env = {}
Env.__index = Env


-- A new, empty database of the suite's cluster, named after dir (unique
-- while dir exists): its URL.
local function pg_database(dir)
  return D.pg_database(dir:match("([^.]*)$"))
end

-- A test environment: a temp dir holding the database and scratch files.
-- opts.workflows: the workflows dir (default: the repo's workflows/).
-- opts.db: the database (default: sy.db in the dir on SQLite, a new
-- database of the suite's cluster on PostgreSQL).
function H.env(opts)
  opts = opts or {}
  local dir = H.tmpdir()
  local db = opts.db
  if not db then
    db = H.sqlite and (dir .. "/sy.db") or pg_database(dir)
  end
  local env = setmetatable({
    dir = dir,
    db = db,
    workflows = opts.workflows or H.workflows,
    n = 0,
  }, Env)
  return env
end

-- SQL for the text of a top-level field of a JSON column, the same on
-- both backends: H.jtext("vars", "one") = '1'.
function H.jtext(column, key)
  if H.sqlite then
    return string.format("CAST(json_extract(%s, '$.%s') AS TEXT)", column,
      key)
  end
  return string.format("(%s::jsonb ->> '%s')", column, key)
end

-- SQL for the database's clock in milliseconds since the epoch.
function H.now_ms_sql()
  if H.sqlite then
    return "(strftime('%s', 'now') * 1000)"
  end
  return "(extract(epoch FROM now()) * 1000)"
end

function Env:path(name)
  return self.dir .. "/" .. name
end

-- The argument list of a command with this env's --db and --workflows.
function Env:argv(...)
  local args = { "--db", self.db, "--workflows", self.workflows }
  for _, a in ipairs({ ... }) do
    args[#args + 1] = a
  end
  return args
end

-- Runs `switchyard` with exactly these arguments (no --db added):
-- returns exit code, stdout, stderr. opts.stdin: text fed on stdin.
function Env:raw(args, opts)
  opts = opts or {}
  self.n = self.n + 1
  local base = self:path(string.format("cmd%d", self.n))
  local words = { H.q(H.bin) }
  for _, a in ipairs(args) do
    words[#words + 1] = H.q(a)
  end
  local input = "/dev/null"
  if opts.stdin then
    input = base .. ".in"
    H.write(input, opts.stdin)
  end
  local cmd = table.concat(words, " ") .. " <" .. H.q(input) .. " >" ..
      H.q(base .. ".out") .. " 2>" .. H.q(base .. ".err")
  local code = H.exec(cmd)
  return code, H.read(base .. ".out") or "", H.read(base .. ".err") or ""
end

-- Runs `switchyard --db DB --workflows DIR ...`.
function Env:run(...)
  return self:raw(self:argv(...))
end

-- Same, with text on stdin.
function Env:run_stdin(stdin, ...)
  return self:raw(self:argv(...), { stdin = stdin })
end

-- Runs a command that must succeed; returns its stdout.
function Env:ok(...)
  local code, out, err = self:run(...)
  assert(code == 0, string.format("switchyard %s: exit %d\n%s%s",
    table.concat({ ... }, " "), code, out, err))
  return out, err
end

-- Rows of a query, read with the sqlite3 CLI (psql for a PostgreSQL
-- database): a list of lists of strings.
function Env:sql(query, db)
  db = db or self.db
  return D.query(db, query)
end

-- The first column of the first row, as a number when it is one.
function Env:scalar(query, db)
  local rows, out = self:sql(query, db)
  assert(rows[1], "no row from: " .. query .. "\n" .. out)
  return tonumber(rows[1][1]) or rows[1][1]
end

-- Counts of instances per state: { completed = 12, ... }.
function Env:states(db)
  local t = {}
  for _, r in ipairs(self:sql(
    "select state, count(*) from instances group by state", db)) do
    t[r[1]] = tonumber(r[2])
  end
  return t
end

-- Everything the database holds, as text (the sqlite3 .dump, pg_dump's
-- on PostgreSQL), or a marker when there is no database file or no table
-- in it: two equal snapshots mean nothing changed.
function Env:snapshot()
  if H.is_url(self.db) then
    if self:scalar("SELECT count(*) FROM pg_tables WHERE " ..
        "schemaname = 'public'") == 0 then
      return "<no database>"
    end
    -- Without pg_dump's random \restrict key around its output, and the
    -- sequences' positions: PostgreSQL does not roll a sequence back with
    -- the transaction that drew from it (ids may skip, no row changes).
    return (H.capture("pg_dump --no-owner " .. H.q(self.db) .. " 2>&1")
      :gsub("\n\\u?n?restrict [^\n]*", "")
      :gsub("\nSELECT pg_catalog.setval[^\n]*", ""))
  end
  if not H.exists(self.db) then
    return "<no database>"
  end
  return H.capture("sqlite3 -batch " .. H.q(self.db) .. " .dump 2>&1")
end

-- Asserts the database file is sound after whatever the test did to its
-- writers (SQLite's integrity_check and foreign_key_check). On
-- PostgreSQL the server owns the files and a killed client cannot tear
-- them: there is no file of ours to check, and this checks nothing.
local RECOUNT = "select workflow, state, count(*) from instances "
  .. "group by workflow, state"
local COUNTS = "select workflow, state, sum(n) from instance_counts "
  .. "group by workflow, state having sum(n) <> 0"

function Env:assert_intact(what)
  -- the counts by state the store keeps equal a recount, on both backends
  assert.are.equal(0, self:scalar("select (select count(*) from (" .. RECOUNT
    .. " except " .. COUNTS .. ") a) + (select count(*) from (" .. COUNTS
    .. " except " .. RECOUNT .. ") b)"),
    (what or "") .. ": instance_counts differ from a recount")
  if H.is_url(self.db) then
    return
  end
  assert.are.equal("ok", self:scalar("pragma integrity_check"),
    (what or "") .. ": integrity_check")
  assert.are.same({}, (self:sql("pragma foreign_key_check")),
    (what or "") .. ": foreign_key_check")
end

-- A copy of the database as of one moment, taken while engines may write
-- (SQLite's backup API; pg_dump's snapshot restored into a new database):
-- an env reading that copy, so several queries see the same rows.
function Env:frozen()
  local copy
  if H.is_url(self.db) then
    copy = pg_database(self.dir .. "s" .. self.n)
    self.n = self.n + 1
    local out = H.capture("pg_dump --no-owner " .. H.q(self.db) ..
      " | psql -X -q -v ON_ERROR_STOP=1 " .. H.q(copy) .. " 2>&1 >/dev/null")
    assert(out == "", "snapshot: " .. out)
  else
    copy = self:path("snapshot.db")
    os.remove(copy)
    local rows, out = self:sql(".backup " .. H.q(copy))
    assert(#rows == 0 and H.exists(copy), "snapshot: " .. out)
  end
  return setmetatable({ db = copy }, { __index = self })
end

-- Whether a command created the database (a file on SQLite, tables on
-- PostgreSQL, where the test made the empty database).
function Env:created()
  return self:snapshot() ~= "<no database>"
end

-- Starts `switchyard --db DB --workflows DIR ...` in the background. The
-- returned handle has pid (of switchyard itself: sh execs it), log (stdout
-- and stderr) and rcfile (written with the exit code when it ends).
-- `serve` on a free loopback port, with more arguments (global options
-- too): the process, and its base URL once it listens.
function Env:serve(...)
  local p = self:spawn("serve", "--listen", "127.0.0.1:0", ...)
  local port = H.poll(10, 0.02, function()
    return (H.read(p.log) or ""):match("serving http://127%.0%.0%.1:(%d+)/")
  end)
  assert(port, "serve did not start: " .. (H.read(p.log) or ""))
  return p, "http://127.0.0.1:" .. port
end

function Env:spawn(...)
  return self:spawn_in({}, ...)
end

-- The same, the engine started by a command that execs it (prefix: its
-- words, e.g. { "ip", "netns", "exec", NS }): the pid stays the engine's.
function Env:spawn_in(prefix, ...)
  self.n = self.n + 1
  local base = self:path(string.format("bg%d", self.n))
  local p = { pidfile = base .. ".pid", log = base .. ".log",
              rcfile = base .. ".rc" }
  local words = {}
  for _, a in ipairs(self:argv(...)) do
    words[#words + 1] = H.q(a)
  end
  local pre = {}
  for _, w in ipairs(prefix) do
    pre[#pre + 1] = H.q(w) .. " "
  end
  local inner = "sh -c 'echo $$ > \"$1\"; shift; exec \"$@\"' sh " ..
      H.q(p.pidfile) .. " " .. table.concat(pre) .. H.q(H.bin) .. " " ..
      table.concat(words, " ")
  local cmd = "( " .. inner .. " </dev/null >" .. H.q(p.log) ..
      " 2>&1; echo $? > " .. H.q(p.rcfile .. ".tmp") .. "; mv " ..
      H.q(p.rcfile .. ".tmp") .. " " .. H.q(p.rcfile) ..
      " ) </dev/null >/dev/null 2>&1 &"
  assert(H.exec(cmd) == 0, "could not spawn: " .. cmd)
  local pid = H.poll(10, 0.01, function()
    local s = H.read(p.pidfile)
    return s and tonumber(s:match("%d+"))
  end)
  assert(pid, "the background switchyard never wrote its pid")
  p.pid = pid
  spawned[#spawned + 1] = p
  return p
end

-- The exit code of a spawned process once it has ended, else nil.
function H.exit_code(p)
  if not p.rc then
    local s = H.read(p.rcfile)
    p.rc = s and tonumber(s:match("%d+"))
  end
  return p.rc
end

-- Whether pid p.pid is still our switchyard (not a reused pid).
local function still_ours(p)
  local cmdline = H.read("/proc/" .. p.pid .. "/cmdline")
  return cmdline ~= nil and cmdline:find(H.bin, 1, true) == 1
end

-- Waits at most `timeout` seconds for a spawned process to end: its exit
-- code, or nil if it is still running.
function H.wait_exit(p, timeout)
  return H.poll(timeout, 0.02, function()
    return H.exit_code(p)
  end)
end

function H.signal(p, sig)
  return H.exec("kill -" .. sig .. " " .. p.pid .. " 2>/dev/null")
end

-- Kills (-9) whatever this spec spawned and is still running.
function H.reap()
  for _, p in ipairs(spawned) do
    if not H.exit_code(p) and still_ours(p) then
      H.signal(p, "KILL")
      H.wait_exit(p, 10)
    end
  end
  spawned = {}
end

function H.rmdir(dir)
  if dir and dir:match("/sy%-e2e%.") then
    H.exec("rm -rf " .. H.q(dir))
  end
end

return H
