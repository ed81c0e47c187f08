-- A step given as a plain table (sy.task forgotten).
local sy = require "switchyard"

return sy.workflow { --@line
  name = "bad_step_table",
  start = "a",
  steps = {
    a = { run = function(ctx) end },
  },
}
