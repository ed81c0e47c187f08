-- End-to-end test of installing and packaging, as a user or a packager
-- does it: `cmake --install` of the build ctest runs ($SY_BUILD_DIR) into a
-- temporary prefix; a plugin built out of tree (tests/fixtures/install/)
-- against the installed header through pkg-config and put in the installed
-- plugin dir; a workflow run by the installed binary, with no --plugins and
-- no SWITCHYARD_PLUGINS, on that plugin and the installed choose_version;
-- then `cpack -G DEB` into a temporary directory, the package's files and
-- its Depends, and the packaged binary run from the unpacked package.
-- Nothing is built or written in the build tree but the
-- install_manifest.txt every CMake install writes there.
--
-- In the ASan build the installed binary is sanitized and the plugin is
-- not: loading a plain plugin into an ASan binary is what a user of that
-- build would do, so it is checked as is.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/e2e"
local H = dofile(here .. "/helpers.lua")

local BUILD = assert(os.getenv("SY_BUILD_DIR"),
  "SY_BUILD_DIR is not set: run the e2e specs through ctest")
local FIXTURES = H.repo .. "/tests/fixtures/install"

-- Every file an install puts under its prefix, and nothing else: no test
-- plugin, mock, benchmark program or static library.
local INSTALLED = {
  "bin/switchyard",
  "include/switchyard/plugin.h",
  "lib/switchyard/plugins/choose_version.so",
  "lib/switchyard/plugins/http.so",
  "share/doc/switchyard/LICENSE",
  "share/pkgconfig/switchyard-plugin.pc",
}

-- Debian packages the binary and the plugins link, which the .deb must
-- depend on (the ASan build adds libasan and libubsan: not checked).
local RUNTIME = { "libc6", "liblua5.4-0", "libuv1", "libsqlite3-0",
                  "libjansson4", "libcurl4", "libssl3", "libpq5",
                  "libmicrohttpd12", "libgvc6" }

local function has(haystack, needle, what)
  assert(haystack:find(needle, 1, true), string.format(
    "%s: expected to find %q in:\n%s", what or "output", needle, haystack))
end

local function lines(text)
  local t = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do
    if line ~= "" then
      t[#t + 1] = line
    end
  end
  return t
end

describe("an installed switchyard", function()
  local tmp, prefix, n = nil, nil, 0

  -- Runs a shell command line in tmp: its exit code and its output (stdout
  -- and stderr together).
  local function sh(cmd)
    n = n + 1
    local out = string.format("%s/sh%d.out", tmp, n)
    local code = H.exec("cd " .. H.q(tmp) .. " && (" .. cmd .. ") >" ..
      H.q(out) .. " 2>&1 </dev/null")
    return code, H.read(out) or ""
  end

  local function must(cmd)
    local code, out = sh(cmd)
    assert(code == 0, string.format("%s: exit %d\n%s", cmd, code, out))
    return out
  end

  -- The command line running a switchyard binary on a database with the
  -- fixtures as workflows dir, its plugins found only by its own location.
  local function sy_cmd(bin, db, ...)
    local words = { "env -u SWITCHYARD_PLUGINS", H.q(bin), "--db", H.q(db),
                    "--workflows", H.q(FIXTURES) }
    for _, a in ipairs({ ... }) do
      words[#words + 1] = H.q(a)
    end
    return table.concat(words, " ")
  end

  local function pkg_config(dir, args)
    return "PKG_CONFIG_PATH=" .. H.q(dir) .. " pkg-config " .. args
  end

  -- Regular files and links under dir, relative to it, sorted.
  local function files_under(dir)
    return lines(must("cd " .. H.q(dir) ..
      " && find . -type f -o -type l | sed 's|^\\./||' | LC_ALL=C sort"))
  end

  setup(function()
    tmp = H.tmpdir()
    prefix = tmp .. "/prefix"
    must("cmake --install " .. H.q(BUILD) .. " --prefix " .. H.q(prefix))
  end)

  teardown(function()
    H.rmdir(tmp)
  end)

  it("has the binary, the plugins, the header and the .pc, and no more",
    function()
      assert.are.same(INSTALLED, files_under(prefix))
      -- Nothing points back into the build tree: no RPATH/RUNPATH, and a
      -- .pc that finds its prefix from where it lies.
      for _, f in ipairs({ "bin/switchyard",
                           "lib/switchyard/plugins/choose_version.so",
                           "lib/switchyard/plugins/http.so" }) do
        local dyn = must("readelf -d " .. H.q(prefix .. "/" .. f))
        assert.is_nil(dyn:find("PATH", 1, true), f .. ":\n" .. dyn)
      end
      local pc = H.read(prefix .. "/share/pkgconfig/switchyard-plugin.pc")
      assert.is_nil(pc:find(BUILD, 1, true), pc)
      assert.is_nil(pc:find(H.repo, 1, true), pc)
      local pcdir = prefix .. "/share/pkgconfig"
      local requires = must(pkg_config(pcdir,
        "--print-requires switchyard-plugin"))
      -- plugins reach the database through the statement API alone
      assert.is_nil(requires:find("sqlite3", 1, true), requires)
      has(requires, "libuv")
      local plugindir = must(pkg_config(pcdir,
        "--variable=plugindir switchyard-plugin")):gsub("\n$", "")
      assert.are.equal(
        must("cd " .. H.q(prefix .. "/lib/switchyard/plugins") .. " && pwd -P"),
        must("cd " .. H.q(plugindir) .. " && pwd -P"))
    end)

  -- Before the next test adds a plugin to the prefix: the install as it is.
  it("manages rollouts with the installed choose_version", function()
    local bin, db = prefix .. "/bin/switchyard", tmp .. "/rollout.db"
    has(must(sy_cmd(bin, db, "rollout", "set", "installed-flag", "5%",
      "--reason", "install test")), "installed-flag")
    local flag = H.decode(must(sy_cmd(bin, db, "--json", "rollout", "get",
      "installed-flag")))
    assert.are.equal(50000, flag.rate_ppm)
    -- Without its plugin dir the command does not exist: it was the
    -- installed plugin that answered.
    local code, out = sh("env SWITCHYARD_PLUGINS=" .. H.q(tmp .. "/none") ..
      " " .. H.q(bin) .. " --db " .. H.q(db) .. " rollout get installed-flag")
    assert.are.equal(2, code, out)
    has(out, "unknown command 'rollout'")
  end)

  it("runs a workflow on a plugin built out of tree with pkg-config",
    function()
      local pcdir = prefix .. "/share/pkgconfig"
      -- A third party's build: the installed header through pkg-config, no
      -- sanitizer whatever the engine was built with.
      must(pkg_config(pcdir, "--exists switchyard-plugin"))
      must("cc -Wall -Wextra -Werror -O2 $(" ..
        pkg_config(pcdir, "--cflags switchyard-plugin") ..
        ") -shared -fPIC -o stamp.so " .. H.q(FIXTURES .. "/stamp.c"))
      assert.is_nil(must("readelf -d stamp.so"):find("libasan", 1, true))
      must("install -m 755 stamp.so \"$(" ..
        pkg_config(pcdir, "--variable=plugindir switchyard-plugin") .. ")\"")
      assert.is_true(H.exists(prefix .. "/lib/switchyard/plugins/stamp.so"))

      local bin, db = prefix .. "/bin/switchyard", tmp .. "/run.db"
      must(sy_cmd(bin, db, "rollout", "set", "install-check", "100%",
        "--reason", "install test"))
      local id = assert(tonumber(must(sy_cmd(bin, db, "start", "stamped",
        "--var", "user_id=u1", "--var", "n:=21")):match("^(%d+)\n$")))
      must(sy_cmd(bin, db, "run", "--until-idle"))
      local out = must(sy_cmd(bin, db, "show", tostring(id), "--json"))
      local inst = H.decode(out)
      assert.are.equal("completed", inst.state, out)
      assert.are.equal(42, inst.vars.doubled)            -- ctx.twice
      assert.are.same({ by = "stamp", instance = id, attempt = 1 },
        inst.vars.stamped)                               -- sy.stamp
      assert.are.equal("v2", inst.vars.branch)           -- choose_version
      -- the stamp's own row, written through the statement API
      assert.are.equal(id .. "|1", must("sqlite3 " .. H.q(db) ..
        " 'SELECT instance_id, attempt FROM stamp_log'"):gsub("\n$", ""))
    end)

  it("packages as a .deb under /usr that depends on its runtime libraries",
    function()
      local version = must(pkg_config(prefix .. "/share/pkgconfig",
        "--modversion switchyard-plugin")):gsub("\n$", "")
      -- With a Makefile build, cpack first runs `make preinstall` in the
      -- build tree, which builds `all`: other tests are running from that
      -- tree, so name a generator without that step (cpack asks the
      -- generator only for it) and package the tree as built, as `cmake
      -- --install` did. The package and its staging go to tmp (-B).
      must("cpack -G DEB -B " .. H.q(tmp .. "/pkg") .. " --config " ..
        H.q(BUILD .. "/CPackConfig.cmake") .. " -D CPACK_CMAKE_GENERATOR=Ninja")
      local debs = lines(must("ls " .. H.q(tmp .. "/pkg") ..
        " | grep '\\.deb$'"))
      assert.are.equal(1, #debs, table.concat(debs, "\n"))
      local deb = tmp .. "/pkg/" .. debs[1]
      has(debs[1], "switchyard_" .. version .. "_", "package file name")

      local listed = {}
      for _, line in ipairs(lines(must("dpkg-deb -c " .. H.q(deb)))) do
        local path = line:match(" %./(usr/.-[^/])$")
        if path then
          listed[#listed + 1] = path:gsub(" %-> .*", "")
        end
      end
      table.sort(listed)
      local expected = {}
      for i, f in ipairs(INSTALLED) do
        expected[i] = "usr/" .. f
      end
      assert.are.same(expected, listed)

      assert.are.equal("switchyard",
        (must("dpkg-deb -f " .. H.q(deb) .. " Package"):gsub("\n$", "")))
      assert.are.equal(version,
        (must("dpkg-deb -f " .. H.q(deb) .. " Version"):gsub("\n$", "")))
      local depends = must("dpkg-deb -f " .. H.q(deb) .. " Depends")
      local names = {}
      for item in depends:gmatch("[^,|]+") do
        names[item:match("^%s*([^%s(]+)") or ""] = true
      end
      for _, p in ipairs(RUNTIME) do
        assert.is_true(names[p] == true, "Depends lacks " .. p .. ": " ..
          depends)
      end

      -- The packaged (stripped) binary finds the packaged plugins next to
      -- it, as it will under /usr.
      must("dpkg-deb -x " .. H.q(deb) .. " root")
      local bin = tmp .. "/root/usr/bin/switchyard"
      has(must(sy_cmd(bin, tmp .. "/deb.db", "rollout", "set", "deb-flag",
        "1%", "--reason", "packaged")), "deb-flag")
    end)
end)
