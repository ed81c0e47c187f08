-- A step that never ends.
local sy = require "switchyard"

return sy.workflow {
  name = "runaway",
  start = "spin",
  steps = {
    spin = sy.task {
      run = function(ctx) while true do end end,
      retries = 0,
    },
  },
}
