local sy = require "switchyard"

return sy.workflow {
  name = "bad_backoff_key",
  start = "a",
  steps = {
    a = sy.task { run = function(ctx) end, next = "b" },
    b = sy.task { run = function(ctx) end, backoff = { initial = 1, factr = 2 } }, --@line
  },
}
