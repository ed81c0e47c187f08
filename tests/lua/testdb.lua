-- The database a spec runs on. By default a SQLite file; when ctest runs
-- the specs again on PostgreSQL (SY_TEST_BACKEND=pg), a new database of
-- the suite's throwaway cluster (its directory in SY_TEST_PG, its URL in
-- SY_TEST_PG/url), one per call of D.new, so specs running at once never
-- share one.
--
--   local D = require "testdb"
--   local db = D.new()          -- a file path, or a postgresql:// URL
--   D.exec(db, "UPDATE ...")    -- a write from another process
--   D.remove(db)
local D = {}

D.backend = os.getenv("SY_TEST_BACKEND") == "pg" and "pg" or "sqlite"
D.sqlite = D.backend == "sqlite"

-- Quotes one word for sh.
function D.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Output of a shell command, trailing newline removed.
function D.capture(cmd)
  local f = assert(io.popen(cmd, "r"))
  local s = f:read("a")
  f:close()
  return (s:gsub("\n$", ""))
end

local q, capture = D.q, D.capture

-- Whether db names a PostgreSQL database rather than a SQLite file.
function D.is_url(db)
  return db:match("^postgres") ~= nil
end

-- Rows a client printed a line each, fields separated by '|' (sqlite3's
-- and psql's unaligned output): a list of lists of strings.
function D.rows(out)
  local rows = {}
  for line in (out .. "\n"):gmatch("(.-)\n") do
    if line ~= "" then
      local row = {}
      for field in (line .. "|"):gmatch("(.-)|") do
        row[#row + 1] = field
      end
      rows[#rows + 1] = row
    end
  end
  return rows
end

-- Rows of a query on a PostgreSQL database, with psql; and its output.
function D.psql(url, query)
  local out = capture("psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 " ..
    q(url) .. " -c " .. q(query) .. " 2>&1")
  return D.rows(out), out
end

-- Rows of a query on either, from another process (sqlite3 waits up to
-- 10 s for a lock): a list of lists of strings, and the raw output.
function D.query(db, query)
  if D.is_url(db) then
    return D.psql(db, query)
  end
  local out = capture("sqlite3 -batch -noheader -separator '|' -cmd " ..
    q(".timeout 10000") .. " " .. q(db) .. " " .. q(query) .. " 2>&1")
  return D.rows(out), out
end

-- Runs SQL that must succeed, from another process.
function D.exec(db, sql)
  local ok
  if D.is_url(db) then
    ok = os.execute("psql -X -q -v ON_ERROR_STOP=1 " .. q(db) .. " -c " ..
      q(sql) .. " >/dev/null")
  else
    ok = os.execute("sqlite3 -batch -cmd '.timeout 10000' " .. q(db) ..
      " " .. q(sql) .. " >/dev/null")
  end
  assert(ok, "could not run: " .. sql)
end

local count = 0

-- A new, empty database of the suite's cluster named after `tag` (made
-- unique with this process's temp names): its URL.
function D.pg_database(tag)
  local dir = assert(os.getenv("SY_TEST_PG"),
    "SY_TEST_PG is not set: run the PostgreSQL specs through ctest")
  local f = assert(io.open(dir .. "/url"),
    "the suite's PostgreSQL cluster is not running")
  local base = f:read("a"):gsub("%s+$", "")
  f:close()
  local name = "t" .. tag:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end)
  D.psql(base, "DROP DATABASE IF EXISTS " .. name)
  local _, out = D.psql(base, "CREATE DATABASE " .. name)
  local url = base:gsub("/switchyard%?", "/" .. name .. "?")
  local rows = D.psql(url, "SELECT 1")
  assert(rows[1] and rows[1][1] == "1", "could not create database " ..
    name .. ": " .. out)
  return url
end

-- A new database: an empty temp file on SQLite.
function D.new()
  local path = os.tmpname()
  if D.sqlite then
    return path
  end
  os.remove(path)
  count = count + 1
  return D.pg_database(path:match("([^/.]*)$") .. count)
end

-- Removes a database D.new gave (its files; a server database is the
-- cluster's, gone with it).
function D.remove(db)
  if not D.is_url(db) then
    for _, suffix in ipairs { "", "-wal", "-shm" } do
      os.remove(db .. suffix)
    end
  end
end

return D
