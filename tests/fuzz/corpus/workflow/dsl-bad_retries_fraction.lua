local sy = require "switchyard"

return sy.workflow {
  name = "bad_retries_fraction",
  start = "a",
  steps = {
    a = sy.task { run = function(ctx) end, next = "b" },
    b = sy.task { run = function(ctx) end, retries = 1.5 }, --@line
  },
}
