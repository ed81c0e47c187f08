-- A step that tries to survive the instruction budget by catching its
-- error, again and again (ctx.vars.how picks the trick).
local sy = require "switchyard"

local tricks = {
  pcall = function()
    while true do pcall(function() while true do end end) end
  end,
  xpcall = function()
    while true do
      xpcall(function() while true do end end, function(e) return e end)
    end
  end,
  coroutine = function()
    while true do
      coroutine.resume(coroutine.create(function() while true do end end))
    end
  end,
}

return sy.workflow {
  name = "pcall_runaway",
  start = "spin",
  steps = {
    spin = sy.task {
      run = function(ctx) tricks[ctx.vars.how]() end,
      retries = 0,
    },
  },
}
