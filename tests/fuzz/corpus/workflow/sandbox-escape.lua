-- One step that tries the escape named by ctx.vars.what. Every probe but
-- load_text and read_global must fail, and with retries = 0 the failure
-- becomes an incident at once, its error message saying why.
local sy = require "switchyard"

local probes = {
  os_execute = function(ctx) os.execute("touch " .. ctx.vars.marker) end,
  io_open = function(ctx) io.open(ctx.vars.marker, "w"):write("escaped") end,
  require = function(ctx) require(ctx.vars.module) end,
  load_binary = function(ctx)
    -- ctx.vars.chunk: the bytes of a real string.dump() as a JSON array.
    local bytes = string.char(table.unpack(ctx.vars.chunk))
    assert(load(bytes, "=chunk", ctx.vars.mode))
  end,
  load_text = function(ctx)
    local f = assert(load("return 6 * 7"))
    ctx.vars.answer = f()
    -- Text chunks run in the workflow's sandbox, not the host's globals.
    ctx.vars.seen = assert(load(
      "return type(io) .. ' ' .. type(os.execute) .. ' ' .. type(debug) .. ' ' .. type(require)"))()
  end,
  debug_use = function(ctx) debug.sethook() end,
  dofile = function(ctx) dofile("/etc/hostname") end,
  loadfile = function(ctx) loadfile("/etc/hostname") end,
  string_dump = function(ctx) string.dump(function() end) end,
  string_method_dump = function(ctx)
    ctx.vars.dumped = #("").dump(function() end)
  end,
  set_global = function(ctx) leaked = ctx.instance_id end,
  rawset_global = function(ctx) rawset(_G, "leaked", ctx.instance_id) end,
  unfreeze_global = function(ctx)
    setmetatable(_G, nil)
    leaked = ctx.instance_id
  end,
  read_global = function(ctx) ctx.vars.leaked = rawget(_G, "leaked") end,
  collectgarbage = function(ctx) collectgarbage("stop") end,
}

return sy.workflow {
  name = "escape",
  start = "probe",
  steps = {
    probe = sy.task {
      run = function(ctx) probes[ctx.vars.what](ctx) end,
      retries = 0,
    },
  },
}
