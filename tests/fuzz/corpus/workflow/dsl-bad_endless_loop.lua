local sy = require "switchyard"

local n = 0
while true do n = n + 1 end --@line

return sy.workflow {
  name = "bad_endless_loop",
  start = "a",
  steps = { a = sy.task { run = function(ctx) end } },
}
