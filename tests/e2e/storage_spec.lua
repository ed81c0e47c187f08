-- Hostile storage (issue 6, item 8): a read-only database, a locked
-- database, a full disk. Each time: a clear message and exit code 1 (no
-- crash, no usage error), nothing changed or corrupted (`PRAGMA
-- integrity_check`, a dump compared before and after, the fault harness's
-- audit of the rows), and the engine resumes when the condition clears.
--
-- The tests run as root, which ignores file permissions, so read-only is
-- made three ways: the immutable attribute (chattr +i), a read-only bind
-- mount, and a chmod 444 database used by an unprivileged user (setpriv).
-- The full disk is a small tmpfs, filled with a file that is removed to
-- free space. Whatever the sandbox cannot do is reported as pending.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")
local A = dofile(H.repo .. "/tests/fixtures/faults/lib/audit.lua")(H)

local FIXTURES = H.repo .. "/tests/fixtures/faults"

-- text (lower-cased) matches one of the patterns (one or a list).
local function has(text, patterns, what)
  patterns = type(patterns) == "table" and patterns or { patterns }
  for _, p in ipairs(patterns) do
    if text:lower():find(p) then
      return
    end
  end
  error(string.format("%s: expected a message matching %s in:\n%s", what,
    table.concat(patterns, " or "), text), 2)
end

local READ_ONLY = { "read%-?only" }
local LOCKED = { "locked", "busy" }
local FULL = { "full", "no space left" }

-- Cleanups of the current test (unmount, chattr -i, release a lock), run
-- in reverse order even when the test fails.
local cleanups = {}
local function on_cleanup(fn)
  cleanups[#cleanups + 1] = fn
end

local function run_cleanups()
  for i = #cleanups, 1, -1 do
    pcall(cleanups[i])
  end
  cleanups = {}
end

-- The end of a test that passed: undo what it did, remove its directory.
local function done(env)
  run_cleanups()
  H.rmdir(env.dir)
end

local function sh(cmd)
  return H.exec(cmd .. " >/dev/null 2>&1")
end

local function routed_env()
  return H.env { workflows = FIXTURES }
end

local function start(env, n)
  local out = env:ok("start", "routed", "--count", tostring(n), "--var",
    "user_id=u{n}", "--var", "n:={n}")
  assert(out:find("started " .. n .. " instances", 1, true), out)
end

-- What the database holds: its dump, and the bytes of its file (the dump
-- fails where sqlite3 cannot open the database either).
local function contents(env)
  return env:snapshot() .. "\n" .. H.capture("sha256sum < " .. H.q(env.db))
end

-- Runs a command; asserts the database did not change; returns its exit
-- code, stdout and stderr.
local function unchanged(env, ...)
  local before = contents(env)
  local code, out, err = env:run(...)
  local after = contents(env)
  assert(before == after, table.concat({ ... }, " ") ..
    ": the database changed:\n" .. err)
  return code, out, err
end

-- A failure as the brief wants it: exit 1 (a runtime failure: not 2, a
-- usage error, nor a signal), one message naming the condition.
local function clear_failure(code, err, pattern, what)
  has(err, "^switchyard", what)
  has(err, pattern, what)
  assert(code == 1, string.format("%s: exit %d, expected 1 (runtime "
    .. "failure); stderr:\n%s", what, code, err))
end

-- Runs `switchyard` as user nobody (uid 65534): the env's dir is handed to
-- it first. Returns exit code, stdout, stderr.
local function run_as_nobody(env, ...)
  env.n = env.n + 1
  local base = env:path(string.format("nobody%d", env.n))
  local words = { "setpriv", "--reuid=65534", "--regid=65534",
    "--clear-groups", H.q(H.bin) }
  for _, a in ipairs(env:argv(...)) do
    words[#words + 1] = H.q(a)
  end
  local code = H.exec(table.concat(words, " ") .. " </dev/null >" ..
    H.q(base .. ".out") .. " 2>" .. H.q(base .. ".err"))
  return code, H.read(base .. ".out") or "", H.read(base .. ".err") or ""
end

-- Holds the database's write lock from another process: a client shell
-- reading its commands from a fifo, in an open transaction that holds it
-- (sqlite3's BEGIN EXCLUSIVE; on PostgreSQL, psql holding the advisory
-- lock every writer takes, store_pg.c's WRITE_LOCK). Readers go on; every
-- writer waits for its busy timeout.
local function hold_lock(env)
  env.n = env.n + 1
  local fifo = env:path(string.format("lock%d.fifo", env.n))
  local out = env:path(string.format("lock%d.out", env.n))
  assert(H.exec("mkfifo " .. H.q(fifo)) == 0, "mkfifo")
  local shell = H.sqlite and "sqlite3 -batch " or "psql -X -q -A -t "
  assert(H.exec(shell .. H.q(env.db) .. " <" .. H.q(fifo) ..
    " >" .. H.q(out) .. " 2>&1 &") == 0)
  local w = assert(io.open(fifo, "w"))
  local lock = {}
  function lock.release()
    if w then
      w:write("ROLLBACK;\nSELECT 'released';\n")
      w:close()
      w = nil
      assert(H.poll(10, 0.01, function()
        return (H.read(out) or ""):find("released", 1, true)
      end), "the lock holder did not release: " .. (H.read(out) or ""))
    end
  end
  on_cleanup(lock.release)
  w:write(H.sqlite and ".timeout 30000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n"
    or "BEGIN;\nSELECT pg_advisory_xact_lock(7275627973776974);\n" ..
    "SELECT 'locked';\n")
  w:flush()
  assert(H.poll(35, 0.01, function()
    return (H.read(out) or ""):find("locked", 1, true)
  end), "could not take the lock: " .. (H.read(out) or ""))
  return lock
end

local function states_text(env)
  return H.json.encode(env:states())
end

-- Whether this sandbox lets us mount a tmpfs (root with CAP_SYS_ADMIN).
local function try_mount(dir, opts)
  sh("mkdir -p " .. H.q(dir))
  if sh("mount -t tmpfs -o " .. opts .. " tmpfs " .. H.q(dir)) ~= 0 then
    return false
  end
  on_cleanup(function()
    if sh("umount " .. H.q(dir)) ~= 0 then
      sh("umount -l " .. H.q(dir))
    end
  end)
  return true
end

describe("hostile storage", function()
  after_each(function()
    run_cleanups()
    H.reap()
  end)

  -- -------------------------------------------------------------------
  -- (#sqlite: a file's permissions and a full disk under it are SQLite's;
  -- a PostgreSQL server owns its files.)
  describe("a read-only database #sqlite", function()
    -- A database with work in it: 50 instances, 20 of them done.
    local function prepared()
      local env = routed_env()
      env:ok("rollout", "set", A.FLAG, "50%", "--reason", "ro")
      start(env, 20)
      env:ok("run", "--until-idle")
      start(env, 30)
      return env
    end

    local function immutable(env)
      if sh("chattr +i " .. H.q(env.db)) ~= 0 then
        return false
      end
      on_cleanup(function()
        sh("chattr -i " .. H.q(env.db))
      end)
      return true
    end

    it("(chattr +i) start fails with exit 1 and a clear message", function()
      local env = prepared()
      if not immutable(env) then
        pending("chattr +i does not work on " .. env.dir)
        return
      end
      local code, _, err = unchanged(env, "start", "routed", "--var",
        "user_id=x", "--var", "n:=1")
      env:assert_intact()
      -- Checked last: the exit code is the known bug (2, a usage error).
      clear_failure(code, err, READ_ONLY, "start on a read-only db")
      done(env)
    end)

    it("(chattr +i) run fails with exit 1; writable again, all works",
      function()
        local env = prepared()
        if not immutable(env) then
          pending("chattr +i does not work on " .. env.dir)
          return
        end
        local code, _, err = unchanged(env, "run", "--until-idle")
        clear_failure(code, err, READ_ONLY, "run on a read-only db")
        code, _, err = unchanged(env, "rollout", "set", A.FLAG, "60%",
          "--reason", "r")
        clear_failure(code, err, READ_ONLY, "rollout set on a read-only db")
        env:assert_intact()
        -- Reading still works.
        local st = H.decode((env:ok("status", "--json")))
        assert.are.equal(30, st.routed.ready)

        assert.are.equal(0, H.exec("chattr -i " .. H.q(env.db)))
        start(env, 10)
        env:ok("run", "--until-idle")
        local s = A.check(env)
        assert.are.equal(60, (s.states.completed or 0) +
          (s.states.incident or 0))
        done(env)
      end)

    it("(read-only bind mount) start and run fail with exit 1 and a clear "
      .. "message; read-write again, all works", function()
        local env = prepared()
        local src, ro = env:path("src"), env:path("ro")
        assert.are.equal(0, H.exec("mkdir " .. H.q(src) .. " " .. H.q(ro)))
        assert.are.equal(0, H.exec("mv " .. H.q(env.db) .. " " .. H.q(src)))
        if sh("mount --bind " .. H.q(src) .. " " .. H.q(ro)) ~= 0 then
          pending("cannot bind-mount in this sandbox")
          return
        end
        on_cleanup(function()
          sh("umount " .. H.q(ro))
        end)
        assert.are.equal(0, sh("mount -o remount,ro,bind " .. H.q(ro)))
        env.db = ro .. "/sy.db"
        local before = H.capture("sha256sum < " .. H.q(src .. "/sy.db"))
        local code1, _, err1 = env:run("start", "routed", "--var",
          "user_id=x", "--var", "n:=1")
        local code2, _, err2 = env:run("run", "--until-idle")
        assert.are.equal(before, H.capture("sha256sum < " ..
          H.q(src .. "/sy.db")))
        assert.are.equal(0, sh("mount -o remount,rw,bind " .. H.q(ro)))
        env:assert_intact()
        start(env, 10)
        env:ok("run", "--until-idle")
        local s = A.check(env)
        assert.are.equal(60, (s.states.completed or 0) +
          (s.states.incident or 0))
        -- Checked last: today the message is SQLite's "unable to open
        -- database file", which does not say why.
        clear_failure(code1, err1, READ_ONLY, "start on a read-only fs")
        clear_failure(code2, err2, READ_ONLY, "run on a read-only fs")
        done(env)
      end)

    it("(chmod 444, unprivileged user) start and run fail with exit 1; "
      .. "chmod 644 again, all works", function()
        local env = prepared()
        if sh("command -v setpriv") ~= 0 or
            sh("setpriv --reuid=65534 --regid=65534 --clear-groups true")
            ~= 0 then
          pending("setpriv cannot drop to uid 65534 here")
          return
        end
        assert.are.equal(0, H.exec("chown -R 65534:65534 " .. H.q(env.dir)))
        assert.are.equal(0, H.exec("chmod 444 " .. H.q(env.db)))
        -- Only that user touches the database until the end: a root
        -- sqlite3 would checkpoint and remove the files SQLite keeps
        -- beside it, and hide what the user would see.
        local function sum()
          return H.capture("sha256sum < " .. H.q(env.db))
        end
        local before = sum()
        local code1, _, err1 = run_as_nobody(env, "start", "routed", "--var",
          "user_id=x", "--var", "n:=1")
        local code2, _, err2 = run_as_nobody(env, "run", "--until-idle")
        assert.are.equal(before, sum())
        has(err1, READ_ONLY, "start on a chmod 444 db")
        has(err2, READ_ONLY, "run on a chmod 444 db")
        assert.are.equal(0, H.exec("chmod 644 " .. H.q(env.db)))
        -- The same user, the database writable again: everything works.
        -- (Known bug: the -shm file SQLite created while the database was
        -- read-only keeps mode 0444, so the database stays read-only.)
        local code3, _, err3 = run_as_nobody(env, "run", "--until-idle")
        local shm = H.capture("ls -l " .. H.q(env.db) .. "* 2>&1")
        assert.are.equal(0, code3, "run after chmod 644: " .. err3 ..
          "\n" .. shm)
        assert.are.equal(0, H.exec("chown -R 0:0 " .. H.q(env.dir)))
        local s = A.check(env)
        assert.are.equal(50, (s.states.completed or 0) +
          (s.states.incident or 0))
        clear_failure(code1, err1, READ_ONLY, "start on a chmod 444 db")
        clear_failure(code2, err2, READ_ONLY, "run on a chmod 444 db")
        done(env)
      end)
  end)

  -- -------------------------------------------------------------------
  describe("a locked database", function()
    local function prepared(n)
      local env = routed_env()
      env:ok("rollout", "set", A.FLAG, "50%", "--reason", "lock")
      start(env, n)
      return env
    end

    it("start fails with exit 1 and 'locked' after the busy timeout; "
      .. "nothing changes", function()
        local env = prepared(10)
        local before = env:snapshot()
        local lock = hold_lock(env)
        local t0 = H.now()
        local code, _, err = env:run("start", "routed", "--var", "user_id=x",
          "--var", "n:=1")
        local waited = H.now() - t0
        local rcode, _, rerr = env:run("run", "--until-idle")
        lock.release()
        assert.are.equal(before, env:snapshot())
        env:assert_intact()
        clear_failure(code, err, LOCKED, "start on a locked db")
        clear_failure(rcode, rerr, LOCKED, "run on a locked db")
        print(string.format("# start gave up after %.1f s: %s", waited,
          (err:gsub("\n$", ""))))
        assert.is_true(waited >= 4, "gave up before the 5 s busy timeout")
        -- Unlocked, it works.
        start(env, 5)
        assert.are.same({ ready = 15 }, env:states())
        done(env)
      end)

    it("status reads while another process holds the write lock",
      function()
        -- WAL readers never wait for a writer: a command that only reads
        -- has no reason to block behind one, or to fail.
        local env = prepared(10)
        local lock = hold_lock(env)
        local t0 = H.now()
        local code, out, err = env:run("status", "--json")
        local took = H.now() - t0
        lock.release()
        assert.are.equal(0, code, string.format("status failed after %.1f s "
          .. "(known bug: opening the store takes the write lock even to "
          .. "read):\n%s", took, err))
        assert.are.equal(10, H.decode(out).routed.ready)
        assert.is_true(took < 2, string.format("status took %.1f s", took))
        done(env)
      end)

    it("start waits for a lock released within the busy timeout", function()
      local env = prepared(10)
      local lock = hold_lock(env)
      local p = env:spawn("start", "routed", "--count", "5", "--var",
        "user_id=w{n}", "--var", "n:={n}")
      -- It is waiting, not done: nothing started while the lock is held.
      assert.is_nil(H.wait_exit(p, 1))
      assert.are.same({ ready = 10 }, env:states())
      lock.release()
      assert.are.equal(0, H.wait_exit(p, 10), H.read(p.log))
      assert.are.same({ ready = 15 }, env:states())
      env:assert_intact()
      done(env)
    end)

    -- Starts `run --until-idle`, takes the lock once it has made progress,
    -- holds it `hold` seconds, releases it; returns the run's handle.
    local function run_into_lock(env, hold)
      local p = env:spawn("run", "--until-idle", "--concurrency", "32")
      assert.is_truthy(H.poll(20, 0.01, function()
        return H.exit_code(p) or env:scalar("select count(*) from " ..
          "step_runs") >= 200
      end))
      assert.is_nil(H.exit_code(p), "the run ended before the lock")
      local lock = hold_lock(env)
      local runs = env:scalar("select count(*) from step_runs")
      H.sleep(hold) -- holding the lock: the engine must wait meanwhile
      assert.are.equal(runs, env:scalar("select count(*) from step_runs"),
        "the engine wrote while another process held the write lock")
      lock.release()
      return p
    end

    it("a running engine waits out a short lock and finishes the work",
      function()
        local env = prepared(1000)
        local p = run_into_lock(env, 2)
        local rc = H.wait_exit(p, 60)
        local log = H.read(p.log) or ""
        assert.are.equal(0, rc, log)
        assert.is_falsy(log:find("locked", 1, true), log)
        A.check(env, { final = 1000 })
        done(env)
      end)

    it("a running engine survives a lock held longer than its busy "
      .. "timeout, and finishes the work when it is released", function()
        local env = prepared(1000)
        local p = run_into_lock(env, 7)
        local rc = H.wait_exit(p, 60)
        local log = H.read(p.log) or ""
        -- Whatever it did, nothing is corrupt and a run finishes the work.
        local s = A.check(env)
        print(string.format("# engine exit %s after a 7 s lock: %s",
          tostring(rc), (log:gsub("\n", " | "))))
        if rc ~= 0 then
          assert.is_true(rc == 1, "the engine crashed: exit " ..
            tostring(rc) .. "\n" .. log)
          has(log, LOCKED, "the engine's message")
          local code, _, err = env:run("run", "--until-idle")
          assert.are.equal(0, code, err)
        end
        A.check(env, { final = 1000 })
        -- Checked last (known bug): the engine gave up with SQLITE_BUSY
        -- instead of waiting for the lock and going on.
        assert.are.equal(0, rc, "the running engine stopped on a lock held "
          .. "7 s (busy timeout 5 s) instead of waiting it out:\n" .. log ..
          "\nstate after the lock: " .. H.json.encode(s.states))
        done(env)
      end)
  end)

  -- -------------------------------------------------------------------
  describe("a full disk #sqlite", function()
    local N = 3000

    -- A database on a 16 MB tmpfs (a whole run needs about 6 MB: the
    -- database and a WAL of up to 4 MB), with N instances started; a filler
    -- file takes all the space but `free` KiB.
    local function prepared(free)
      local env = routed_env()
      local disk = env:path("disk")
      if not try_mount(disk, "size=16m") then
        return nil
      end
      env.db = disk .. "/sy.db"
      env:ok("rollout", "set", A.FLAG, "50%", "--reason", "full")
      start(env, N)
      local filler = disk .. "/filler"
      H.exec("dd if=/dev/zero of=" .. H.q(filler) .. " bs=4k 2>/dev/null")
      assert.are.equal(0, H.exec("df -k " .. H.q(disk) ..
        " | awk 'NR == 2 { exit !($4 == 0) }'"), "the disk is not full")
      if free > 0 then
        assert.are.equal(0, H.exec("truncate -s -" .. free .. "k " ..
          H.q(filler)))
      end
      env.filler = filler
      return env
    end

    it("start and run fail with exit 1 and 'full'; nothing changes; after "
      .. "freeing space a run completes everything", function()
        local env = prepared(0)
        if not env then
          pending("cannot mount a tmpfs in this sandbox")
          return
        end
        local code1, _, err1 = unchanged(env, "start", "routed", "--count",
          "500", "--var", "user_id=f{n}", "--var", "n:={n}")
        local code2, _, err2 = unchanged(env, "run", "--until-idle")
        local code3, _, err3 = unchanged(env, "status")
        print("# on a full disk: start: " .. (err1:gsub("\n", " | ")) ..
          " run: " .. (err2:gsub("\n", " | ")) .. " status: " ..
          (err3:gsub("\n", " | ")))
        assert.is_true(code1 == 1 and code2 == 1, "exit codes " .. code1 ..
          ", " .. code2)

        -- (sqlite3 cannot open the database on the full disk either.)
        os.remove(env.filler)
        assert.are.same({ ready = N }, env:states())
        env:assert_intact()
        local t0 = H.now()
        local code, _, err = env:run("run", "--until-idle")
        assert.are.equal(0, code, err)
        A.check(env, { final = N })
        print(string.format("# after freeing space: run --until-idle "
          .. "%.1f s", H.now() - t0))
        -- Checked last (known bug): the message is SQLite's "disk I/O
        -- error" (the -shm file cannot grow: ENOSPC), which does not say
        -- the disk is full.
        clear_failure(code1, err1, FULL, "start on a full disk")
        clear_failure(code2, err2, FULL, "run on a full disk")
        done(env)
      end)

    it("a start that does not fit fails with exit 1 and 'full' and starts "
      .. "none of its instances", function()
        -- 300 KiB free: the -shm file fits, 20,000 more instances do not
        -- (they overflow the page cache, so the write fails mid-way).
        local env = prepared(300)
        if not env then
          pending("cannot mount a tmpfs in this sandbox")
          return
        end
        local code, _, err = unchanged(env, "start", "routed", "--count",
          "20000", "--var", "user_id=big{n}", "--var", "n:={n}")
        clear_failure(code, err, FULL, "a start that does not fit")
        assert.are.same({ ready = N }, env:states())
        env:assert_intact()
        os.remove(env.filler)
        start(env, 20000)
        assert.are.same({ ready = N + 20000 }, env:states())
        env:assert_intact()
        done(env)
      end)

    -- The space left decides where the run stops (an early commit, after a
    -- few hundred steps, further); the concurrency, how big its
    -- transactions are.
    for _, case in ipairs({ { 600, 512 }, { 1200, 64 }, { 2400, 16 } }) do
      local free, conc = case[1], case[2]
      it(string.format("a run that fills the disk (%d KiB free, concurrency "
        .. "%d) stops with exit 1 and 'full', leaves a sound database, and a "
        .. "restart completes everything", free, conc), function()
          local env = prepared(free)
          if not env then
            pending("cannot mount a tmpfs in this sandbox")
            return
          end
          local p = env:spawn("run", "--until-idle", "--concurrency",
            tostring(conc))
          local rc = H.wait_exit(p, 60)
          local log = H.read(p.log) or ""
          clear_failure(rc, log, FULL, "run filling the disk")
          local s = A.check(env)
          print(string.format("# the run stopped on a full disk: %s; %d "
            .. "step runs; %s", states_text(env), s.runs,
            (log:gsub("\n", " | "))))
          assert.is_true((s.states.completed or 0) + (s.states.incident or 0)
            < N, "the run finished before the disk was full")
          -- Still full: a restart fails the same way. (Its recovery may
          -- fit in the space the WAL already has, and commit: consistently.)
          local code, _, err = env:run("run", "--until-idle")
          clear_failure(code, err, FULL, "restart on a full disk")
          A.check(env)

          os.remove(env.filler)
          code, _, err = env:run("run", "--until-idle")
          assert.are.equal(0, code, err)
          A.check(env, { final = N })
          done(env)
        end)
    end
  end)
end)
