local sy = require "switchyard"

return sy.workflow {
  name = "warn_unreachable",
  start = "a",
  steps = {
    a = sy.task { run = function(ctx) end, next = "b" },
    b = sy.task { run = function(ctx) end },
    orphan = sy.task { run = function(ctx) end, next = "b" }, --@line
  },
}
